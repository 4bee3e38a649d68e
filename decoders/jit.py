"""What the numba kernels of every floor share: whether compiled code may be cached on disk."""

from __future__ import annotations

import os
from pathlib import Path


def cache_possible(module_file: str) -> bool:
    """Whether numba may cache the kernels of the module at ``module_file``: ``NUMBA_CACHE_DIR`` is set (the
    systemd unit sets it under its cache directory) or the module's ``__pycache__`` is writable (a checkout).
    On a read-only install without it, numba would warn at every compile; the kernels then compile at each start."""
    if os.environ.get("NUMBA_CACHE_DIR"):
        return True
    folder = Path(module_file).parent / "__pycache__"
    try:
        folder.mkdir(exist_ok=True)
    except OSError:
        return False
    return os.access(folder, os.W_OK)

"""The CM MAC -> subscriber map of IPDR usage: ``ipdr.cm_subscribers_file`` (CSV ``cm_mac,subscriber_id``)."""

from __future__ import annotations

import csv
import logging
import os
from pathlib import Path

import numpy as np

from decoders.ipdr.samis import parse_mac

log = logging.getLogger(__name__)


class CmSubscribers:
    """Static CM MAC -> subscriber map from a CSV file (``cm_mac,subscriber_id`` with a header), reloaded when
    the file changes. Lookup is vectorised (sorted MACs + searchsorted)."""

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        self.path = Path(path) if path else None
        self._mtime: float | None = None
        self.macs = np.zeros(0, np.uint64)
        self.names = np.array([""], dtype=object)  # always ends with '' (the name of unknown MACs)
        self.reload()

    @classmethod
    def from_dict(cls, mapping: dict[int, str]) -> CmSubscribers:
        self = cls(None)
        self._set(mapping)
        return self

    def _set(self, mapping: dict[int, str]) -> None:
        macs = np.array(sorted(mapping), dtype=np.uint64)
        self.macs = macs
        self.names = np.array([mapping[int(x)] for x in macs] + [""], dtype=object)

    def reload(self) -> bool:
        """Re-read the file if it changed; a malformed file is refused (logged) and the old map kept."""
        if self.path is None:
            return False
        try:
            mtime = self.path.stat().st_mtime
        except FileNotFoundError:
            log.warning("ipdr: CM MAC file %s not found", self.path)
            return False
        if mtime == self._mtime:
            return False
        mapping: dict[int, str] = {}
        try:
            with open(self.path, newline="") as f:
                for i, row in enumerate(csv.DictReader(f), start=2):
                    try:
                        mapping[parse_mac(row["cm_mac"])] = row["subscriber_id"].strip()
                    except (KeyError, ValueError, AttributeError) as exc:
                        raise ValueError(f"{self.path}:{i}: {exc}") from None
        except ValueError as exc:
            log.error("ipdr: CM MAC file refused, keeping the previous map: %s", exc)
            return False
        self._mtime = mtime
        self._set(mapping)
        log.info("ipdr: %d CM MAC bindings loaded from %s", len(mapping), self.path)
        return True

    def lookup_index(self, macs: np.ndarray) -> np.ndarray:
        """Index into :attr:`names` per MAC (``len(macs)`` of the map, whose name is '', when unknown)."""
        if not len(self.macs):
            return np.zeros(len(macs), dtype=np.int64)
        pos = np.minimum(np.searchsorted(self.macs, macs), len(self.macs) - 1)
        return np.where(self.macs[pos] == macs, pos, len(self.macs))

    def lookup(self, macs: np.ndarray) -> np.ndarray:
        """Subscriber id per MAC (object array; '' when unknown)."""
        names: np.ndarray = self.names[self.lookup_index(macs)]
        return names

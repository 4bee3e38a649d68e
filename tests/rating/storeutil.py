"""Writing usage into a store the way mediation does, for the job tests."""

from __future__ import annotations

import itertools

import numpy as np

from mediation.tables import USAGE
from tests.rating.helpers import ms

_ids = itertools.count(1)


def usage_batch(rows, *, source: str = "flow", exporter: int = 1, correction: int = 0):
    """USAGE record batch from (subscriber, start ISO, direction, class, bytes) tuples."""
    n = len(rows)
    start = np.array([ms(r[1]) for r in rows], dtype=np.int64)
    obj = lambda values: np.array(values, dtype=object)  # noqa: E731
    exp = np.zeros((n, 16), dtype=np.uint8)
    exp[:, 10:12] = 0xFF
    exp[:, 15] = exporter
    return USAGE.to_arrow({
        "interval_start": start, "interval_end": start + 300_000, "subscriber_id": obj([r[0] for r in rows]),
        "direction": obj([r[2] for r in rows]), "traffic_class": obj([r[3] for r in rows]),
        "bytes": np.array([r[4] for r in rows], dtype=np.uint64), "packets": np.ones(n, dtype=np.uint64),
        "flows": np.ones(n, dtype=np.uint64), "source": obj([source] * n), "exporter": exp.view("S16").reshape(n),
        "correction": np.full(n, correction, dtype=np.uint32), "created": start + 400_000,
        "row_id": np.array([next(_ids) for _ in range(n)], dtype=np.uint64),
    })

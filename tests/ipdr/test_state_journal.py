"""The IPDR state journal's undo: nothing is recorded before the first checkpoint; a rollback restores the rows and
forgets the keys added since the checkpoint."""

from __future__ import annotations

import numpy as np

from mediation.ipdr.journal import STATE_DTYPE, StateJournal


def _rows(*pairs: tuple[int, int]) -> np.ndarray:
    values = np.zeros(len(pairs), dtype=STATE_DTYPE)
    values["key"] = [k for k, _ in pairs]
    values["octets"] = [o for _, o in pairs]
    return values


def test_no_undo_before_a_checkpoint() -> None:
    j = StateJournal(None)
    j.upsert(j.lookup(np.array([7], dtype=np.uint64)), _rows((7, 100)))
    token = j.checkpoint()
    assert token[2] == []  # the upsert before the checkpoint left nothing to undo


def test_rollback_restores_changed_rows_and_drops_new_keys() -> None:
    j = StateJournal(None)
    j.upsert(j.lookup(np.array([7], dtype=np.uint64)), _rows((7, 100)))
    token = j.checkpoint()
    j.upsert(j.lookup(np.array([7, 8], dtype=np.uint64)), _rows((7, 250), (8, 5)))
    assert j.n == 2 and j.rows["octets"][: j.n].tolist() == [250, 5]
    j.rollback(token)
    assert j.n == 1 and j.rows["octets"][0] == 100
    assert j.index == {7: 0}

"""Bindings.subscriber_arrays: names and hashes by dense index plus the ("", 0) entry for index -1, cached until a
new name is registered."""

from __future__ import annotations

from mediation.hashing import string_hash
from mediation.subscribers.store import Bindings


def test_subscriber_arrays_follow_registered_names() -> None:
    b = Bindings(None)
    names, hashes = b.subscriber_arrays()
    assert names.tolist() == [""] and hashes.tolist() == [0]
    assert b.subscriber_arrays()[0] is names  # cached while no name is added
    assert b.subscriber_index("alice") == 0
    names, hashes = b.subscriber_arrays()
    assert names.tolist() == ["alice", ""]
    assert hashes.tolist() == [string_hash("alice"), 0]
    assert names[-1] == ""  # index -1: no subscriber
    assert b.subscriber_arrays()[0] is names

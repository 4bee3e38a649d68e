"""Static bindings file: CSV and TOML, reload on change, a broken file keeps the old bindings."""

from __future__ import annotations

import os

import numpy as np
import pytest

from mediation.subscribers.bindings import Bindings
from mediation.subscribers.static import StaticBindings, StaticFileError, parse_static_file
from tests.mediation.mediation_helpers import s16

JAN = 1_767_225_600_000  # 2026-01-01T00:00:00Z


def who(b: Bindings, addr: str, t: int) -> str:
    sub, _ = b.lookup(s16([addr]), np.array([t]))
    return b.subscriber_names[sub[0]] if sub[0] >= 0 else ""


def test_csv_and_toml_parse(tmp_path):
    csv = tmp_path / "subs.csv"
    csv.write_text("subscriber_id,network,valid_from,valid_to\nalice,192.0.2.7,,\n"
                   "bob,2001:db8:100::/56,2026-01-01T00:00:00Z,\n\n")
    entries = parse_static_file(csv)
    assert [(e.subscriber_id, e.network, e.valid_from) for e in entries] == [
        ("alice", "192.0.2.7", 0), ("bob", "2001:db8:100::/56", JAN)]
    toml = tmp_path / "subs.toml"
    toml.write_text('[[binding]]\nsubscriber_id = "carol"\nnetworks = ["198.51.100.0/28", "2001:db8:200::/56"]\n'
                    "valid_from = 2026-01-01T00:00:00Z\nvalid_to = 2026-02-01T00:00:00Z\n")
    entries = parse_static_file(toml)
    assert len(entries) == 2 and entries[0].valid_from == JAN and entries[0].valid_to > JAN


@pytest.mark.parametrize("text, message", [
    ("subscriber_id,network\nalice,not-an-ip\n", "bad address"),
    ("subscriber_id,network\n,192.0.2.1\n", "empty subscriber_id"),
    ("subscriber_id,network,valid_from,valid_to\nalice,192.0.2.1,2026-02-01,2026-01-01\n", "not after"),
    ("sub,net\nalice,192.0.2.1\n", "header"),
    ("subscriber_id,network,valid_from\nalice,192.0.2.1,yesterday\n", "bad time"),
])
def test_bad_files_are_refused_with_the_line(tmp_path, text, message):
    p = tmp_path / "subs.csv"
    p.write_text(text)
    with pytest.raises(StaticFileError, match=message):
        parse_static_file(p)


def test_reload_opens_new_entries_and_ends_removed_ones(tmp_path):
    p = tmp_path / "subs.csv"
    p.write_text("subscriber_id,network\nalice,192.0.2.7\nbob,192.0.2.8\n")
    b = Bindings(tmp_path / "b.sqlite")
    s = StaticBindings(p, b)
    assert s.reload(JAN) == (2, 0)
    assert s.reload(JAN + 1) == (0, 0)  # unchanged file: nothing happens
    p.write_text("subscriber_id,network\nalice,192.0.2.7\ncarol,192.0.2.9\n")
    assert s.reload(JAN + 1000) == (1, 1)
    assert who(b, "192.0.2.8", JAN + 999) == "bob"  # history kept for late flows
    assert who(b, "192.0.2.8", JAN + 1000) == ""
    assert who(b, "192.0.2.9", 5) == "carol" and who(b, "192.0.2.7", JAN * 2) == "alice"
    # bob comes back: valid again from the reload on, not retroactively
    p.write_text("subscriber_id,network\nalice,192.0.2.7\ncarol,192.0.2.9\nbob,192.0.2.8\n")
    assert s.reload(JAN + 5000) == (1, 0)
    assert [who(b, "192.0.2.8", t) for t in (JAN + 4999, JAN + 5000)] == ["", "bob"]


def test_maybe_reload_follows_the_file_and_keeps_bindings_when_it_breaks(tmp_path):
    p = tmp_path / "subs.toml"
    p.write_text('[[binding]]\nsubscriber_id = "alice"\nnetwork = "192.0.2.7"\n')
    b = Bindings()
    s = StaticBindings(p, b)
    assert s.maybe_reload(JAN) is True
    assert s.maybe_reload(JAN + 1) is False  # same mtime
    p.write_text("[[binding]]\nsubscriber_id = \n")  # broken TOML
    os.utime(p, (1, 1))
    assert s.maybe_reload(JAN + 2) is False
    assert s.errors == 1 and who(b, "192.0.2.7", JAN + 3) == "alice"

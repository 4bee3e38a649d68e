"""Log lines read the caller's extra= fields from the record's own mapping: structured ``fields`` and plain extras
both reach the line, and the flood filter finds the peer in either."""

from __future__ import annotations

import json
import logging

from collector.logflood import FloodFilter
from collector.logging import _Formatter


def _record(**extra: object) -> logging.LogRecord:
    record = logging.LogRecord("flowmed", logging.WARNING, __file__, 1, "bad packet", None, None)
    record.__dict__.update(extra)
    return record


def test_formatter_writes_fields_and_plain_extras() -> None:
    line = json.loads(_Formatter("json").format(_record(fields={"exporter": "10.0.0.1", "n": 3}, hint="x")))
    assert (line["msg"], line["exporter"], line["n"], line["hint"]) == ("bad packet", "10.0.0.1", 3, "x")
    assert "fields" not in line
    assert json.loads(_Formatter("json").format(_record()))["msg"] == "bad packet"  # no extras at all


def test_flood_filter_peer_from_plain_extra_or_fields() -> None:
    assert FloodFilter._peer(_record(client="10.0.0.9")) == "10.0.0.9"
    assert FloodFilter._peer(_record(fields={"exporter": "10.0.0.1"})) == "10.0.0.1"
    assert FloodFilter._peer(_record(peer=None, fields={"peer": "p"})) == "p"
    assert FloodFilter._peer(_record(fields="not a dict")) is None
    assert FloodFilter._peer(_record()) is None

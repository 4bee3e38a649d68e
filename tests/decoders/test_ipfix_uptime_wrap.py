"""IPFIX flowStart/EndSysUpTime (IEs 22/21) are 32-bit counters relative to systemInitTimeMilliseconds: the time is
the one nearest the export time modulo 2**32, as the v9 header's sysUptime settles it (issue 15: softflowd replays
had every record 2**32 ms ahead and rejected as ``future``)."""

from __future__ import annotations

import pytest

from decoders.netflow.decoder import FlowDecoder
from tests.decoders.packets import T0_MS, data_set, ip4, ipfix, options_template_set, template_set

EXP = "192.0.2.30"
FIELDS = [(8, 4), (1, 4), (2, 4), (22, 4), (21, 4)]
DAY = 86_400_000


def _decode(init_ms: int, start_ms: int, end_ms: int, export_ms: int = T0_MS) -> tuple[int, int]:
    """Decode one record whose times an exporter wrote as 32-bit uptimes relative to ``init_ms``."""
    opts = options_template_set(400, [(149, 4)], [(160, 8)], ipfix=True)
    odata = data_set(400, [(149, 4), (160, 8)], [{149: 1, 160: init_ms}])
    rec = {8: ip4("10.0.0.1"), 1: 1500, 2: 1, 22: (start_ms - init_ms) % (1 << 32), 21: (end_ms - init_ms) % (1 << 32)}
    dg = ipfix(opts, odata, template_set({256: FIELDS}, ipfix=True), data_set(256, FIELDS, [rec]),
               export_ms=export_ms)
    res = FlowDecoder().decode([(dg, EXP, export_ms + 5)])
    assert res.n_flows == 1 and not res.errors
    return int(res.flows["flow_start"][0]), int(res.flows["flow_end"][0])


@pytest.mark.parametrize("age_ms", [1_000, 60_000, 3_600_000, 6 * DAY, 24 * DAY])
def test_softflowd_replay_times_before_the_init_time(age_ms: int) -> None:
    """softflowd -r: init time = the wall clock at start, packets of the capture older than that."""
    init = T0_MS - 2_000
    start = T0_MS - age_ms
    assert _decode(init, start, start + 143) == (start, start + 143)


@pytest.mark.parametrize("uptime_days", [10, 49, 50, 120, 400])
def test_an_exporter_up_longer_than_the_counter_wraps(uptime_days: int) -> None:
    init = T0_MS - uptime_days * DAY
    assert _decode(init, T0_MS - 30_000, T0_MS - 1_000) == (T0_MS - 30_000, T0_MS - 1_000)


def test_a_record_ending_just_after_the_export_second() -> None:
    """The IPFIX export time has whole seconds: a flow may end within the second after it."""
    export = T0_MS // 1000 * 1000
    assert _decode(export - 5_000, export - 2_000, export + 700, export_ms=export) == (export - 2_000, export + 700)


@pytest.mark.parametrize("init_ms", [12_345, T0_MS + 3 * DAY])
def test_a_garbage_init_time_is_left_alone(init_ms: int) -> None:
    """A clock near zero or an init time after the export: the plain sum, visibly wrong, not moved near now (an
    init time of 0 counts as unknown: missing_init_time)."""
    start, end = 7_000, 9_000
    assert _decode(init_ms, init_ms + start, init_ms + end) == (init_ms + start, init_ms + end)

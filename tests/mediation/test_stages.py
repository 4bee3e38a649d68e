"""The stages as the daemon runs them: the Mediator picks up other processes' bindings in ``tick`` only (by the
``now`` it is given, never by a clock), and ``flow_stages`` arranges mediation before compliance with the lookups
handed over."""

from __future__ import annotations

from collector.config import load
from mediation import Mediator
from mediation.compliance.stage import ComplianceStage
from mediation.flow_stages import FlowCompliance, FlowMediation, flow_stages
from mediation.subscribers.bindings import Bindings
from tests.mediation.mediation_helpers import T0, flows, usage_totals

S = 1000


def _flow(src: str, nbytes: int) -> object:
    return flows([dict(src=src, dst="8.8.8.8", start=T0 + 10 * S, end=T0 + 20 * S, bytes=nbytes, packets=1,
                       received=T0 + 30 * S)])


def test_process_does_not_refresh_the_bindings_tick_does(tmp_path) -> None:
    db = tmp_path / "bindings.sqlite"
    mediator = Mediator(load(None, ["subscribers.refresh_interval_s=10"]), Bindings(db))
    other = Bindings(db)  # another process (the RADIUS listener) binds addresses after the Mediator started
    other.open("zoe", "100.64.0.9", T0 - 3600 * S)
    other.commit()
    outs = [mediator.process(_flow("100.64.0.9", 1), T0 + 30 * S)]  # process does not refresh: unattributed
    mediator.tick(T0)  # the first tick refreshes
    outs.append(mediator.process(_flow("100.64.0.9", 10), T0 + 30 * S))
    other.open("yves", "100.64.0.10", T0 - 3600 * S)
    other.commit()
    mediator.tick(T0 + 5 * S)  # within refresh_interval_s of the last refresh (by the given now): not yet
    outs.append(mediator.process(_flow("100.64.0.10", 100), T0 + 30 * S))
    mediator.tick(T0 + 10 * S)
    outs.append(mediator.process(_flow("100.64.0.10", 1000), T0 + 30 * S))
    outs.append(mediator.close(T0 + 3600 * S))
    assert usage_totals([o.get("usage") for o in outs]) == {
        ("", T0, "unattributed"): 101, ("zoe", T0, "up"): 10, ("yves", T0, "up"): 1000}
    other.close()


def test_flow_stages_run_mediation_then_compliance_with_the_lookups_handed_over() -> None:
    cfg = load(None, [])
    b = Bindings()
    mediator = Mediator(cfg, b)
    compliance = ComplianceStage(cfg, b)
    stages = flow_stages(mediator, compliance)
    assert [name for name, _ in stages] == ["mediation", "compliance"]
    (_, first), (_, second) = stages
    assert isinstance(first, FlowMediation) and isinstance(second, FlowCompliance)
    assert first.hand_over is second.hand_over is not None
    assert [name for name, _ in flow_stages(mediator, None)] == ["mediation"]
    alone = flow_stages(mediator, None)[0][1]
    assert isinstance(alone, FlowMediation) and alone.hand_over is None
    assert [name for name, _ in flow_stages(None, compliance)] == ["compliance"]

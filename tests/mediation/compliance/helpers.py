"""Build the CGNAT scenario into flowmed's outputs the way the daemon does: RADIUS sessions from radclient through
the RADIUS listener, the static bindings file, then the scenario's datagrams through ``collector.pipeline.Pipeline``
(decoder -> Mediator -> compliance stage -> Sink)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import ModuleType

from prometheus_client import CollectorRegistry

from collector import metrics as metrics_mod
from collector.components import make_mediator, make_sink, make_static
from collector.config import Config, load
from collector.pipeline import Pipeline
from collector.radius_listener import start_radius
from mediation.compliance.stage import make_compliance
from tests.fixtures.peers import free_port, require_tool
from tests.mediation.compliance import scenario
from tests.mediation.subscribers.test_radius import radclient


def scenario_config(tmp: Path, *extra: str, scen: ModuleType = scenario) -> Config:
    """A configuration for ``scen`` (a scenario module: RADIUS sessions, static and directory files, datagrams) with
    its outputs under ``tmp``."""
    (tmp / "static.csv").write_text(scen.STATIC_CSV)
    (tmp / "directory.csv").write_text(scen.DIRECTORY_CSV)
    port = free_port()
    return load(None, [f"store.path={tmp / 'data'}", "mediation.enabled=true", "radius.enabled=true",
                       f'radius.listen=["127.0.0.1:{port}"]',
                       'radius.clients=[{address="127.0.0.1", secret="testing123"}]',
                       "radius.max_event_age_s=0",  # (the scenario's sessions are on a fixed day in the past)
                       f"subscribers.static_file={tmp / 'static.csv'}", "subscribers.refresh_interval_s=0.001",
                       f"compliance.directory_file={tmp / 'directory.csv'}", "compliance.nat_event_codes=rfc8158",
                       *extra])


def build(cfg: Config, scen: ModuleType = scenario) -> Pipeline:
    """Run the scenario ``scen`` into ``cfg``'s outputs; returns the pipeline (its sink closed)."""
    require_tool("radclient")
    metrics = metrics_mod.Metrics(CollectorRegistry())
    sink = make_sink(cfg, metrics)
    port = int(cfg.radius.listen[0].rsplit(":", 1)[1])

    async def sessions() -> None:
        server = await start_radius(asyncio.get_running_loop(), cfg, None, sink.add, flush=sink.flush)
        try:
            for text in scen.radius_requests():
                code, out = await radclient(port, "testing123", text + "\n")
                assert code == 0 and "Received Accounting-Response" in out, out
        finally:
            await server.stop()

    asyncio.run(sessions())
    mediator = make_mediator(cfg)
    pipeline = Pipeline(cfg, metrics, sink, mediator, compliance=make_compliance(cfg, mediator),
                        static=make_static(cfg, mediator))
    mediator.bindings.refresh()
    for name, batch in pipeline.compliance.tick(scen.T0).items():  # the static file's bindings
        sink.add(name, batch)
    for datagram in scen.datagrams():
        pipeline.process([datagram])
    sink.flush()
    for output in sink.outputs:  # the ClickHouse output delivers from its spool: wait until the server has it all
        drain = getattr(output, "drain", None)
        if drain is not None:
            assert drain(120), output.status()
    sink.close()
    return pipeline

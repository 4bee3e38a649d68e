"""What every mediation stage is to the process that runs it: batches in, table batches out, and a clock given.

A stage (the flow :class:`mediation.mediator.Mediator`, :class:`mediation.compliance.stage.ComplianceStage`,
:class:`mediation.ipdr.usage.IpdrUsage`) takes its input with :meth:`Stage.process` and returns batches by table
name (a table is absent when it has no rows) for the sink. The process calls :meth:`Stage.tick` about once a second
(what is due by time: closing intervals, picking up binding changes), :meth:`Stage.reload` on SIGHUP and
:meth:`Stage.close` at shutdown. Every call is given ``now`` (UTC milliseconds): a stage reads no clock of its own,
so a test or a replay drives it with any time it likes.

:class:`Sections` names the settings a stage is reloaded with: the sections of collector.toml that mediation owns,
as the process's whole configuration holds them.
"""

from __future__ import annotations

from typing import Protocol, TypeVar

import pyarrow as pa

from mediation.compliance.settings import ComplianceConfig
from mediation.settings import MediationConfig
from mediation.subscribers.settings import SubscribersConfig

Tables = dict[str, pa.RecordBatch]
"""Output batches by table name."""

In_contra = TypeVar("In_contra", contravariant=True)


class Sections(Protocol):
    """The sections of the configuration that mediation owns (``collector.config.Config`` has them)."""

    @property
    def mediation(self) -> MediationConfig: ...

    @property
    def subscribers(self) -> SubscribersConfig: ...

    @property
    def compliance(self) -> ComplianceConfig: ...


class Stage(Protocol[In_contra]):
    """A mediation stage taking batches of ``In_contra`` (see the module docstring)."""

    def process(self, batch: In_contra, now: int, /) -> Tables:
        """The tables made from one input batch."""
        ...

    def tick(self, now: int, /) -> Tables:
        """What is due by time (about once a second)."""
        ...

    def reload(self, settings: Sections, now: int, /) -> None:
        """Apply reloaded settings (SIGHUP); a setting that cannot change while running is logged and kept."""
        ...

    def close(self, now: int, /) -> Tables:
        """Everything still held (shutdown); the stage is not used afterwards."""
        ...

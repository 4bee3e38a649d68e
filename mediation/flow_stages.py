"""The stages the daemon runs on every batch of decoded flows, as mediation arranges them.

:func:`flow_stages` gives the daemon's ``Pipeline`` a typed list of :class:`mediation.stage.Stage` to run in
order, each under its own name (a failing stage is counted and logged under it, and the others still run). The
decisions about flows are made here, not by the process:

* :class:`FlowMediation` runs the :class:`mediation.mediator.Mediator` on the records that are usage: pure NAT
  events (a natEvent and no traffic) are left out (:func:`mediation.compliance.nat.without_nat_only`), and a batch
  is mediated in slices of bounded interval parts (:func:`mediation.bounded.mediate_bounded`), so long records cannot
  make one call use gigabytes. It also applies the static bindings file, in the one process that owns it.
* :class:`FlowCompliance` runs the :class:`mediation.compliance.stage.ComplianceStage` on the whole batch, with the
  Mediator's subscriber lookups of the same batch when the Mediator ran first (:class:`AttributionHandOver`): the
  stage then looks up only the records the Mediator did not. A Mediator that failed on a batch hands over nothing
  (a partial attribution is dropped) and the stage looks every record up itself.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import pyarrow as pa

from mediation import bounded
from mediation.compliance.nat import without_nat_only
from mediation.compliance.stage import ComplianceStage
from mediation.ipdr.usage import IpdrRecords, IpdrUsage
from mediation.mediator import Attribution, Mediator
from mediation.stage import Sections, Stage, Tables
from mediation.subscribers.static import StaticBindings

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    def _stages_implement_stage(m: Mediator, c: ComplianceStage, u: IpdrUsage) -> object:
        """Never called: mypy checks here that the three stages implement :class:`Stage`."""
        flows: list[Stage[pa.RecordBatch]] = [m, c]
        records: Stage[IpdrRecords] = u
        return flows, records

NamedStages = list[tuple[str, Stage[pa.RecordBatch]]]
"""Stages in the order they run, each with the name its errors are counted under (``flowmed_pipeline_errors``)."""


class AttributionHandOver:
    """The Mediator's lookups of the current batch, from :class:`FlowMediation` to :class:`FlowCompliance`."""

    def __init__(self) -> None:
        self._attribution: Attribution | None = None

    def put(self, attribution: Attribution | None) -> None:
        """Hand over the lookups of the batch just mediated (None: none to reuse)."""
        self._attribution = attribution

    def take(self) -> Attribution | None:
        """The lookups handed over for this batch, once (None when there are none)."""
        attribution, self._attribution = self._attribution, None
        return attribution


class FlowMediation:
    """The Mediator as the daemon runs it on ``flows`` batches (see the module docstring)."""

    def __init__(self, mediator: Mediator, *, hand_over: AttributionHandOver | None = None,
                 static: StaticBindings | None = None, static_check_interval_s: float = 5.0) -> None:
        """``hand_over``: where the Mediator's lookups go for the compliance stage (None: it does not run).
        ``static``: the static bindings file, checked for changes every ``static_check_interval_s`` (only in the
        process that applies it)."""
        self.mediator = mediator
        self.hand_over = hand_over
        self.static = static
        self._static_check_ms = int(static_check_interval_s * 1000)
        self._static_checked = 0

    def process(self, flows: pa.RecordBatch, now: int, /) -> Tables:
        """The Mediator's tables of the batch's usage records, in slices of bounded work."""
        mediator, hand_over = self.mediator, self.hand_over
        mediator.keep_attribution = hand_over is not None
        if hand_over is not None:
            hand_over.put(None)  # nothing from an earlier batch, whatever happens below
        try:
            out = bounded.mediate_bounded(mediator, without_nat_only(flows), now, mediator.interval_ms)
        except Exception:
            if hand_over is not None:
                mediator.take_attribution()  # a partial one: the compliance stage looks everything up itself
            raise
        if hand_over is not None:
            hand_over.put(mediator.take_attribution())
        return out

    def tick(self, now: int, /) -> Tables:
        """The static file's changes (every ``static_check_interval_s``), then the Mediator's tick."""
        if self.static is not None and now - self._static_checked >= self._static_check_ms:
            self._static_checked = now
            self.static.maybe_reload(now)
        return self.mediator.tick(now)

    def reload(self, settings: Sections, now: int, /) -> None:
        """The Mediator's settings, then the static file (a bad one is logged and the previous bindings kept)."""
        self.mediator.reload(settings, now)
        self._static_check_ms = int(settings.subscribers.static_check_interval_s * 1000)
        if self.static is not None:
            try:
                self.static.reload(now)
            except ValueError as exc:
                log.error("static bindings file refused; keeping the previous bindings: %s", exc)

    def close(self, now: int, /) -> Tables:
        """Every open interval and pending reconciliation row."""
        return self.mediator.close(now)


class FlowCompliance:
    """The compliance stage on ``flows`` batches, reusing the Mediator's lookups when they are handed over."""

    def __init__(self, stage: ComplianceStage, hand_over: AttributionHandOver | None = None) -> None:
        self.stage = stage
        self.hand_over = hand_over

    def process(self, flows: pa.RecordBatch, now: int, /) -> Tables:
        """``nat_events`` and ``ip_detail_records`` of the batch."""
        attribution = self.hand_over.take() if self.hand_over is not None else None
        return self.stage.process(flows, now, attribution)

    def tick(self, now: int, /) -> Tables:
        """Static binding changes mirrored to the ``bindings`` table (in the process that owns the file)."""
        return self.stage.tick(now)

    def reload(self, settings: Sections, now: int, /) -> None:
        """The compliance settings that take effect at once."""
        self.stage.reload(settings, now)

    def close(self, now: int, /) -> Tables:
        """Nothing is held between batches."""
        return self.stage.close(now)


def flow_stages(mediator: Mediator | None, compliance: ComplianceStage | None, *,
                static: StaticBindings | None = None, static_check_interval_s: float = 5.0) -> NamedStages:
    """The daemon's stages on ``flows`` batches, in order: mediation, then compliance (those that run; the
    Mediator's lookups are handed over when both do). ``static``: see :class:`FlowMediation`."""
    hand_over = AttributionHandOver() if mediator is not None and compliance is not None else None
    stages: NamedStages = []
    if mediator is not None:
        stages.append(("mediation", FlowMediation(mediator, hand_over=hand_over, static=static,
                                                  static_check_interval_s=static_check_interval_s)))
    if compliance is not None:
        stages.append(("compliance", FlowCompliance(compliance, hand_over)))
    return stages

"""Mediation: flows to subscriber usage (see docs/architecture.md).

``Mediator`` is imported lazily: the wings (subscribers, compliance, IPDR) import without the mediation pipeline.
"""

from __future__ import annotations

from typing import Any

__all__ = ["Mediator"]


def __getattr__(name: str) -> Any:
    if name == "Mediator":
        from mediation.mediator import Mediator

        return Mediator
    raise AttributeError(f"module 'mediation' has no attribute {name!r}")

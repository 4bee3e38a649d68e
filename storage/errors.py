"""The errors of the storage floor that more than one of its modules raises."""

from __future__ import annotations


class QueryError(Exception):
    """A query failed (syntax, unknown column, server unreachable, ...); the message is the backend's."""

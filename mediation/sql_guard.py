"""Read-only guard for SQL typed by a person (``flowmed query``): nothing it runs may change data or files.

Two layers, because neither is enough alone on chDB (measured with chDB 4.4 / ClickHouse 26.9):

1. The session runs with ``readonly = 2`` (:func:`seal_chdb_session`): DDL, ``DROP``, ``ALTER``, ``SYSTEM``,
   ``INSERT INTO`` a table and changing ``readonly`` back are refused by the engine. (``readonly = 1`` would also
   refuse the ``file()`` table function our views are made of, so every query would fail.)
2. A lexical check (:func:`check_read_only`) before anything runs: one statement, starting with ``SELECT``,
   ``WITH``, ``SHOW``, ``DESCRIBE``/``DESC``, ``EXPLAIN`` or ``EXISTS``, and without ``INTO OUTFILE`` or
   ``INSERT``. chDB writes ``INTO OUTFILE`` on the client side, where ``readonly`` does not apply, and it lets
   ``INSERT INTO FUNCTION file(...)`` through under ``readonly = 2``; both would write wherever the user running
   the command may write.

On a ClickHouse server the query backend already sends ``readonly = 2`` with every query
(:mod:`mediation.clickhouse_query`); the lexical check applies there too. Reading files through table functions
(``file('/etc/...')``) is not prevented: the command runs with the invoking user's own file permissions.
"""

from __future__ import annotations

import re

from mediation.query import QueryError, chdb_session, chdb_session_users

ALLOWED_FIRST = ("SELECT", "WITH", "SHOW", "DESCRIBE", "DESC", "EXPLAIN", "EXISTS")

# String literals, quoted identifiers and comments: their content is not SQL and must not be matched.
_OPAQUE = re.compile(r"""'(?:[^'\\]|\\.|'')*'|"(?:[^"\\]|\\.|"")*"|`(?:[^`\\]|\\.|``)*`|--[^\n]*|#[^\n]*|/\*.*?\*/""",
                     re.S)
_WRITE = re.compile(r"\bINTO\s+OUTFILE\b|\bINSERT\b", re.I)


def _code(sql: str) -> str:
    """``sql`` with every literal, quoted identifier and comment replaced by a space."""
    return _OPAQUE.sub(" ", sql)


def check_read_only(sql: str) -> None:
    """Raise :class:`QueryError` unless ``sql`` is one read-only statement (see the module docstring)."""
    code = _code(sql).strip().rstrip(";").strip()
    if ";" in code:
        raise QueryError("one statement at a time (flowmed query is read-only)")
    first = code.lstrip("( \t\r\n").split(None, 1)[0].upper() if code.lstrip("( \t\r\n") else ""
    if first not in ALLOWED_FIRST:
        raise QueryError(f"flowmed query is read-only: {first or 'an empty statement'} is not allowed "
                         f"(start with {', '.join(ALLOWED_FIRST)})")
    found = _WRITE.search(code)
    if found:
        raise QueryError(f"flowmed query is read-only: {' '.join(found.group(0).split()).upper()} is not allowed")


def seal_chdb_session() -> bool:
    """Put this process's chDB session into ``readonly = 2`` for good (it cannot be undone in the session).

    Only for processes that run nothing but read queries afterwards (the ``flowmed query`` command): the store's
    views must exist already, as creating them is refused from now on. When another user holds the shared session
    (the command run in-process by a test or an embedding program), the session is left as it is, since sealing it
    would break that user; :func:`check_read_only` still applies. Returns whether the session was sealed.
    """
    with chdb_session() as s:
        if chdb_session_users() > 1:
            return False
        s.query("SET readonly = 2")
    return True

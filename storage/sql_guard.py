"""Read-only guard for SQL typed by a person (``flowmed query``): nothing it runs may write, and nothing it runs
reaches outside flowmed's tables unless the operator allows it.

The statement is classified by ClickHouse's own parser (chDB, in-process), never by pattern matching on what the
user typed, so heredocs (``$$...$$``), comments, nested quotes and multi-statement tricks read exactly as the
engine that runs them reads them:

1. ``formatQuerySingleLine`` parses the text, handed over hex-encoded so that no quoting can escape it. It refuses
   more than one statement and gives the statement back in canonical form: keywords upper case, every literal in
   ``'...'``, every unusual name in backquotes, comments gone.
2. The canonical tokens (:func:`tokenize`) are checked for what the formatter prints as plain keywords: an output
   clause (``INTO OUTFILE``, ``FORMAT``), a ``SETTINGS`` clause, names in the file-system database, names with
   control characters (the parse tree below prints names unescaped, so one with a line break could fake a node).
3. ``EXPLAIN AST`` of the canonical statement gives the parse tree (:func:`parse_tree`): the statement must be one
   ``SELECT`` (``WITH``, ``UNION``, ...), ``SHOW``, ``DESCRIBE``, ``EXISTS`` or ``EXPLAIN`` of one of these; no
   output clause or ``SETTINGS`` may hang on any query in it; table functions must be in
   :data:`SAFE_TABLE_FUNCTIONS` (or be a store view such as ``flows_between``), and those that read files, URLs or
   other servers (:data:`EXTERNAL_TABLE_FUNCTIONS`, the ``file()`` function) only with ``allow_external``.

Anything the guard cannot classify is refused. Under it the engines refuse writes themselves: the chDB session of
``flowmed query`` is sealed at ``readonly = 2`` (:func:`seal_chdb_session`; ``readonly = 1`` would also refuse the
``file()`` table function the store's views are made of), and a ClickHouse server gets ``readonly = 1`` with every
query (``2`` with ``allow_external``, as ``1`` refuses every table function there; see
:mod:`storage.clickhouse.query`). Both layers are needed on chDB: it writes ``INTO OUTFILE`` on the client side,
where ``readonly`` does not apply, and lets ``INSERT INTO FUNCTION file(...)`` through under ``readonly = 2``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field

from decoders.schema import TABLES
from storage.errors import QueryError
from storage.query import chdb_session, chdb_session_users, holding_chdb_session

MAX_SQL_CHARS = 100_000
"""Longest statement accepted (its hex form must fit ClickHouse's default ``max_query_size`` of 256 KiB)."""

ALLOWED = "one SELECT, WITH, SHOW, DESCRIBE, EXISTS or EXPLAIN statement"

SAFE_TABLE_FUNCTIONS = frozenset({
    "numbers", "numbers_mt", "zeros", "zeros_mt", "generate_series", "generateSeries", "generateRandom", "values",
    "null", "view", "format",
})
"""Table functions that produce rows from their arguments alone (``view()``'s query is checked like the rest)."""

EXTERNAL_TABLE_FUNCTIONS = frozenset({
    "file", "fileCluster", "url", "urlCluster", "remote", "remoteSecure", "cluster", "clusterAllReplicas",
    "s3", "s3Cluster", "gcs", "hdfs", "hdfsCluster", "azureBlobStorage", "azureBlobStorageCluster", "mysql",
    "postgresql", "sqlite", "mongodb", "redis", "jdbc", "odbc", "iceberg", "icebergS3", "icebergAzure", "icebergHDFS",
    "icebergLocal", "deltaLake", "hudi", "merge",
})
"""Table functions that read files, URLs, other servers or other databases: only with ``allow_external``."""

EXTERNAL_FUNCTIONS = frozenset({"file", "hasColumnInTable", "joinGet", "joinGetOrNull"})
"""Ordinary functions that read a file or name a table of any database: only with ``allow_external``."""

STORE_FILE_DATABASES = frozenset({"default", "_local"})
"""chDB's ``default`` database overlays the file system: ``default.`/etc/passwd``` reads that file."""

_ROOT_KINDS = ("SelectWithUnionQuery", "Show", "Describe", "Exists", "Explain")


@dataclass(frozen=True)
class Token:
    """One lexical token: ``kind`` is ``word``, ``name`` (quoted identifier), ``string``, ``number`` or ``op``."""

    kind: str
    value: str


@dataclass
class Node:
    """One node of ``EXPLAIN AST`` output: its label (``Function file (alias f) (children 1)``) and children."""

    label: str
    children: list[Node] = field(default_factory=list)

    @property
    def kind(self) -> str:
        return self.label.split(" ", 1)[0]

    @property
    def name(self) -> str:
        """The second word of the label: a function's or identifier's name."""
        parts = self.label.split(" ")
        return parts[1] if len(parts) > 1 else ""

    def walk(self, parent: Node | None = None) -> Iterator[tuple[Node, Node | None]]:
        """Every ``(node, parent)`` pair of the subtree, this node first."""
        yield self, parent
        for child in self.children:
            yield from child.walk(self)


@dataclass(frozen=True)
class Statement:
    """A statement the guard let through: its ``kind`` (``select``, ``show``, ``describe``, ``exists`` or
    ``explain``), its canonical text and the table functions it uses."""

    kind: str
    canonical: str
    table_functions: tuple[str, ...]


# --- lexer ------------------------------------------------------------------------------------------------------------

_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "0": "\0", "b": "\b", "f": "\f", "a": "\a", "v": "\v", "e": "\x1b"}
_HEREDOC = re.compile(r"\$([A-Za-z0-9_]*)\$")
_NUMBER = re.compile(r"(?:0[xX][0-9a-fA-F_]+|0[bB][01_]+|(?:\d[\d_]*)?\.?\d[\d_]*(?:[eE][+-]?\d+)?)[A-Za-z_]*")
_OPS = ("<=>", "::", "->", "<=", ">=", "!=", "<>", "==", "||")


def _quoted(sql: str, i: int) -> tuple[int, str]:
    """Read the quoted token starting at ``sql[i]`` (its quote character); return its end and decoded value."""
    quote, j, out = sql[i], i + 1, []
    while j < len(sql):
        ch = sql[j]
        if ch == "\\" and j + 1 < len(sql):
            nxt = sql[j + 1]
            if nxt in "xX" and re.fullmatch(r"[0-9a-fA-F]{2}", sql[j + 2:j + 4]):
                out.append(chr(int(sql[j + 2:j + 4], 16)))
                j += 4
                continue
            out.append(_ESCAPES.get(nxt, nxt))
            j += 2
            continue
        if ch == quote:
            if sql[j + 1:j + 2] == quote:  # a doubled quote stands for itself
                out.append(quote)
                j += 2
                continue
            return j + 1, "".join(out)
        out.append(ch)
        j += 1
    raise QueryError("unterminated quoted text")


def tokenize(sql: str) -> list[Token]:
    """ClickHouse's lexical rules: whitespace; ``--``, ``#!``/``# `` and nested ``/* */`` comments; ``'strings'``,
    ``"names"`` and ```names``` with backslash escapes and doubled quotes; ``$tag$heredocs$tag$``; words (which may
    contain ``$``), numbers and operators. Comments are dropped."""
    tokens: list[Token] = []
    i, n = 0, len(sql)
    while i < n:
        ch = sql[i]
        if ch.isspace():
            i += 1
        elif sql.startswith(("--", "#!", "# "), i):
            end = sql.find("\n", i)
            i = n if end < 0 else end + 1
        elif sql.startswith("/*", i):
            depth, i = 1, i + 2
            while depth and i < n:
                if sql.startswith("/*", i):
                    depth, i = depth + 1, i + 2
                elif sql.startswith("*/", i):
                    depth, i = depth - 1, i + 2
                else:
                    i += 1
            if depth:
                raise QueryError("unterminated comment")
        elif ch in "'\"`":
            i, value = _quoted(sql, i)
            tokens.append(Token("string" if ch == "'" else "name", value))
        elif ch == "$" and (m := _HEREDOC.match(sql, i)):
            end = sql.find(m.group(0), m.end())
            if end < 0:
                raise QueryError("unterminated heredoc")
            tokens.append(Token("string", sql[m.end():end]))
            i = end + len(m.group(0))
        elif ch.isalpha() or ch == "_" or ord(ch) > 127:
            j = i + 1
            while j < n and (sql[j].isalnum() or sql[j] in "_$" or ord(sql[j]) > 127):
                j += 1
            tokens.append(Token("word", sql[i:j]))
            i = j
        elif ch.isdigit() or (ch == "." and sql[i + 1:i + 2].isdigit()):
            m = _NUMBER.match(sql, i)
            j = m.end() if m and m.end() > i else i + 1
            tokens.append(Token("number", sql[i:j]))
            i = j
        else:
            op = next((o for o in _OPS if sql.startswith(o, i)), ch)
            tokens.append(Token("op", op))
            i += len(op)
    return tokens


# --- ClickHouse's parser through chDB ---------------------------------------------------------------------------------

def _chdb_error(exc: BaseException) -> str:
    """A chDB error without the wrapper query around the user's statement and without the exception class."""
    text = str(exc).strip()
    text = re.split(r":? In scope SELECT formatQuerySingleLine|\. \(SYNTAX_ERROR\)", text)[0]
    return re.sub(r"^Code: \d+\. DB::Exception: ", "", text).strip()


def canonical_form(sql: str) -> str:
    """``sql`` parsed by ClickHouse (chDB) and formatted back on one line; :class:`QueryError` unless it is exactly
    one statement that parses."""
    if len(sql) > MAX_SQL_CHARS:
        raise QueryError(f"statement too long: {len(sql):,} characters (at most {MAX_SQL_CHARS:,})")
    hexed = sql.encode("utf-8", "surrogatepass").hex()
    with holding_chdb_session(), chdb_session() as s:
        try:
            result = s.query(f"SELECT formatQuerySingleLine(unhex('{hexed}'))", "TSVRaw")
        except Exception as exc:  # chDB raises its own error class (or RuntimeError)
            message = _chdb_error(exc)
            if "Multi-statements are not allowed" in message:
                raise QueryError(f"flowmed query runs one statement at a time: {message}") from None
            if "Empty query" in message:
                raise QueryError(f"flowmed query is read-only: an empty statement is not allowed ({ALLOWED})") \
                    from None
            raise QueryError(f"cannot parse the statement: {message}") from None
    canonical: str = result.bytes().decode("utf-8", "replace").rstrip("\n")
    if not canonical or "\n" in canonical:
        raise QueryError("cannot classify the statement (flowmed query is read-only)")
    return canonical


def parse_tree(canonical: str) -> Node:
    """The ``EXPLAIN AST`` tree of a canonical statement (one output row per node, indented one space a level)."""
    with holding_chdb_session(), chdb_session() as s:
        try:
            text = s.query(f"EXPLAIN AST {canonical}", "TSVRaw").bytes().decode("utf-8", "replace")
        except Exception as exc:
            raise QueryError(f"cannot classify the statement: {_chdb_error(exc)}") from None
    stack: list[Node] = []
    root: Node | None = None
    for row in text.split("\n"):  # not splitlines(): that also splits at U+2028 and friends inside literals
        if not row.strip():
            continue
        depth = len(row) - len(row.lstrip(" "))
        node = Node(row.strip())
        if depth == 0 and root is None:
            root = node
        elif 0 < depth <= len(stack):
            stack[depth - 1].children.append(node)
        else:  # a second root or a jump of more than one level: not a tree we understand
            raise QueryError("cannot classify the statement (flowmed query is read-only)")
        del stack[depth:]
        stack.append(node)
    # Every node states its number of children: a row that does not fit (a name printed with a line break in it,
    # which the token check refuses first) makes the tree one we do not trust.
    if root is None or any(len(n.children) != _stated_children(n.label) for n, _ in root.walk()):
        raise QueryError("cannot classify the statement (flowmed query is read-only)")
    return root


def _stated_children(label: str) -> int:
    m = re.search(r" \(children (\d+)\)$", label)
    return int(m.group(1)) if m else 0


# --- the checks -------------------------------------------------------------------------------------------------------

def _refuse(what: str) -> QueryError:
    return QueryError(f"flowmed query is read-only: {what} is not allowed")


def _check_tokens(tokens: list[Token], file_databases: frozenset[str]) -> None:
    words = [t.value.upper() if t.kind == "word" else None for t in tokens]
    depth = 0
    for i, t in enumerate(tokens):
        nxt = tokens[i + 1] if i + 1 < len(tokens) else None
        if t.kind == "op":
            depth += t.value == "("
            depth -= t.value == ")"
        if t.kind == "name" and any(ord(c) < 32 or ord(c) == 127 for c in t.value):
            raise _refuse("a name with control characters")
        if words[i] == "INTO" and i + 1 < len(tokens) and words[i + 1] == "OUTFILE":
            raise _refuse("INTO OUTFILE (the result goes to standard output)")
        if words[i] == "SETTINGS" and nxt is not None and nxt.kind in ("word", "name") \
                and i + 2 < len(tokens) and tokens[i + 2].value == "=":
            raise _refuse("a SETTINGS clause")
        if words[i] == "FORMAT" and depth == 0 and nxt is not None and nxt.kind in ("word", "name") \
                and (i + 2 == len(tokens) or words[i + 2] == "SETTINGS"):
            raise QueryError("flowmed query does not take a FORMAT clause: choose the output with --format "
                             "(table, csv or json)")
        if t.kind in ("word", "name") and t.value in file_databases and nxt is not None and nxt.value == "." \
                and nxt.kind == "op":
            raise _refuse(f"the {t.value} database (on the embedded store it reads files)")


def _query_kind(node: Node) -> str:
    """The statement kind of a root (or an explained) node; :class:`QueryError` unless it is allowed."""
    kind = node.kind
    if kind == "SelectWithUnionQuery":
        return "select"
    for prefix in _ROOT_KINDS[1:]:
        if kind.startswith(prefix):
            if prefix == "Explain":
                options = node.children[:1] if node.children and node.children[0].kind == "Set" else []
                rest = node.children[len(options):]
                if len(rest) != 1:
                    raise _refuse("an output clause (INTO OUTFILE, FORMAT) on EXPLAIN")
                _query_kind(rest[0])
            return prefix.lower()
    what = re.sub(r"Query$", "", kind).upper() or "this"
    raise QueryError(f"flowmed query is read-only: {what} statements are not allowed (it runs {ALLOWED})")


def _check_tree(root: Node, *, allow_external: bool, file_databases: frozenset[str]) -> tuple[str, ...]:
    views = {f"{name}_between" for name in TABLES}
    used: list[str] = []
    for node, parent in root.walk():
        kind = node.kind
        if kind == "SelectWithUnionQuery" and len(node.children) != 1:
            raise _refuse("an output clause (INTO OUTFILE, FORMAT, SETTINGS)")
        if kind == "Set" and not (parent is not None and parent.kind == "Explain" and parent.children[0] is node):
            raise _refuse("a SETTINGS clause")
        if kind == "TableIdentifier" and node.name.split(".", 1)[0] in file_databases and "." in node.name:
            raise _refuse(f"the {node.name.split('.', 1)[0]} database (on the embedded store it reads files)")
        if kind != "Function":
            continue
        name = node.name
        table_function = parent is not None and parent.kind == "TableExpression"
        if table_function:
            used.append(name)
        # Checked wherever the name appears (deny when in doubt: no ordinary function shares these names).
        if name in EXTERNAL_TABLE_FUNCTIONS or name in EXTERNAL_FUNCTIONS:
            if not allow_external:
                raise QueryError(f"{'table function' if table_function else 'function'} {name}() reads files, URLs, "
                                 "other servers or databases: flowmed query allows it only with --allow-external")
        elif table_function and name not in SAFE_TABLE_FUNCTIONS and name not in views:
            raise _refuse(f"table function {name}()")
    return tuple(used)


def classify(sql: str, *, allow_external: bool = False, target: str = "store") -> Statement:
    """Classify ``sql`` with ClickHouse's parser and return it if it is read-only (see the module docstring);
    raise :class:`QueryError` otherwise. ``target`` ``store`` (chDB) also refuses names in the ``default``
    database, which reads files there."""
    canonical = canonical_form(sql)
    file_databases = STORE_FILE_DATABASES if target == "store" else frozenset()
    _check_tokens(tokenize(canonical), file_databases)  # before EXPLAIN: no output clause reaches chDB's client
    root = parse_tree(canonical)
    kind = _query_kind(root)
    used = _check_tree(root, allow_external=allow_external, file_databases=file_databases)
    return Statement(kind, canonical, used)


def check_read_only(sql: str, *, allow_external: bool = False, target: str = "store") -> None:
    """Raise :class:`QueryError` unless ``sql`` is one read-only statement (see :func:`classify`)."""
    classify(sql, allow_external=allow_external, target=target)


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

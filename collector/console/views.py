"""What a page hands its template: charts, tables and messages, plus number formatting.

Every number in a table keeps its exact value in ``data-value`` (the text may be grouped or scaled); the browser
tests compare those with their own SQL answers.
"""

from __future__ import annotations

import ipaddress
import itertools
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, TypeVar, cast

import pyarrow as pa

from collector.config import Config
from collector.console.charts import Spec
from collector.console.data import ConsoleStore, StoreError
from collector.console.queries import Query, rows_in_window
from collector.console.window import Window, WindowError, iso, window_from

_ids = itertools.count(1)
T = TypeVar("T")

PageValues = dict[str, Any]
"""What a page handler hands its template: title, charts, tables, messages and the page's own values."""

Row = dict[str, Any]
"""A row of a query answer as pyarrow's ``to_pylist`` gives it (column name -> value)."""


class PageError(Exception):
    """A request the page cannot answer (bad parameter, window too large); shown on the page with ``status``."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class Cell:
    text: str
    value: str | None = None
    """Exact value (``data-value``) for numbers and times."""
    numeric: bool = False
    title: str = ""


@dataclass
class TableView:
    title: str
    columns: list[str]
    rows: list[list[Cell]] = field(default_factory=list)
    queries: list[Query] = field(default_factory=list)
    row_classes: list[str] = field(default_factory=list)
    details: list[list[str]] = field(default_factory=list)
    """Per row, lines shown in a folding row below it (the subscriber page's explain); empty: none."""
    id: str = ""
    note: str = ""

    def __post_init__(self) -> None:
        self.id = self.id or f"table-{next(_ids)}"


@dataclass
class ChartView:
    title: str
    figure: Spec | None
    queries: list[Query] = field(default_factory=list)
    note: str = ""
    id: str = ""

    def __post_init__(self) -> None:
        self.id = self.id or f"chart-{next(_ids)}"

    @property
    def has_data(self) -> bool:
        return bool(self.figure and any(trace.get("y") or trace.get("x") for trace in self.figure["data"]))


@dataclass
class Context:
    """What every page handler gets: the store, the configuration and the clock."""

    store: ConsoleStore
    config: Config
    clock: Callable[[], float] = time.time
    memo: Memo = field(default_factory=lambda: Memo())

    def now_ms(self) -> int:
        return int(self.clock() * 1000)

    def window(self, params: dict[str, str]) -> Window:
        try:
            return window_from(params, self.now_ms(), self.config.console.max_window_h)
        except WindowError as exc:
            raise PageError(str(exc)) from None

    def run(self, q: Query) -> pa.Table:
        try:
            return self.store.query(q.sql)
        except StoreError as exc:
            raise PageError(f"{q.title}: the query failed: {exc}", 502) from None

    def guard(self, table: str, w: Window) -> Query:
        """Refuse (before reading more) a window holding more than ``console.max_rows`` rows of ``table``."""
        q = rows_in_window(self.store.source, table, w)
        n = int(self.run(q).column("n")[0].as_py())
        limit = self.config.console.max_rows
        if n > limit:
            raise PageError(f"the window {iso(w.t0_ms)} .. {iso(w.t1_ms)} holds {n:,} rows of {table}; the console "
                            f"reads at most {limit:,} at a time (console.max_rows): choose a shorter window", 413)
        return q


def number(value: int | None, title: str = "") -> Cell:
    v = int(value or 0)
    return Cell(f"{v:,}", str(v), True, title)


def nbytes(value: int | None) -> Cell:
    v = int(value or 0)
    return Cell(f"{v:,}", str(v), True, human_bytes(v))


def money(micros: int, currency: str) -> str:
    """Micro-units as an exact decimal amount with its currency (``1.566610 EUR``)."""
    return f"{Decimal(micros).scaleb(-6).quantize(Decimal('0.000001'))} {currency}"


def money_value(micros: int) -> str:
    """Micro-units as an exact decimal string (for charts: Plotly reads it as a number)."""
    return str(Decimal(micros).scaleb(-6).quantize(Decimal("0.000001")))


def human_bytes(v: int) -> str:
    for unit, size in (("TB", 10**12), ("GB", 10**9), ("MB", 10**6), ("kB", 10**3)):
        if abs(v) >= size:
            return f"{v / size:.2f} {unit}"
    return f"{v} B"


def time_cell(seconds: int | None) -> Cell:
    if not seconds:
        return Cell("-", "0")
    return Cell(iso(int(seconds) * 1000).replace("T", " "), str(int(seconds)))


def text(value: Any) -> Cell:
    return Cell("" if value is None else str(value))


PROTOCOLS = {1: "ICMP", 2: "IGMP", 6: "TCP", 17: "UDP", 41: "IPv6", 47: "GRE", 50: "ESP", 51: "AH", 58: "ICMPv6",
             89: "OSPF", 103: "PIM", 112: "VRRP", 132: "SCTP"}


def protocol_name(n: int) -> str:
    return f"{PROTOCOLS.get(int(n), 'proto')} ({int(n)})" if int(n) in PROTOCOLS else f"proto {int(n)}"


def key_text(by: str, key: Any) -> str:
    """How a traffic grouping's value is shown (protocol names, AS numbers, addresses as text)."""
    if by == "protocol":
        return protocol_name(key)
    if by in ("src_as", "dst_as"):
        return f"AS{int(key)}"
    if by in ("src_addr", "dst_addr", "exporter"):
        return address_text(key)
    return str(key)


def address_text(value: Any) -> str:
    """An address as text (IPv4 without ``::ffff:``; ``::`` for none)."""
    try:
        a = ipaddress.ip_address(str(value))
    except ValueError:
        return str(value)
    if a.version == 6 and a.ipv4_mapped is not None:
        return str(a.ipv4_mapped)
    return str(a)


def column(table: pa.Table, name: str) -> list[Any]:
    values: list[Any] = table.column(name).to_pylist() if table.num_rows else []
    return values


class Memo:
    """A small time-limited cache (the subscriber page's explain output, which takes a rating of the cycle)."""

    def __init__(self, ttl_s: float = 60.0, size: int = 32, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl_s, self.size, self.clock = ttl_s, size, clock
        self._items: OrderedDict[tuple[Hashable, ...], tuple[float, object]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple[Hashable, ...], make: Callable[[], T]) -> T:
        """The value ``make()`` gave for ``key`` less than ``ttl_s`` ago, else ``make()`` now (one key, one make)."""
        with self._lock:
            hit = self._items.get(key)
            if hit is not None and self.clock() - hit[0] < self.ttl_s:
                return cast(T, hit[1])  # stored by make() of this key
        value = make()
        with self._lock:
            self._items[key] = (self.clock(), value)
            while len(self._items) > self.size:
                self._items.popitem(last=False)
        return value

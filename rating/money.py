"""Exact money arithmetic on integer arrays.

Prices are decimals per plan unit (GB, GiB, ...). A price becomes an exact rational number of micro-units per byte,
``N / D``, with one denominator ``D`` per plan version (:func:`price_fractions`). The exact amount of a record is then
the integer ``X = sum(bytes_in_tier * N_tier)`` over ``D``; it is rounded ONCE, to an integer number of micro-units,
with the plan's rounding mode (:func:`round_div`). No float is ever involved.

``X`` is computed in int64 when the bound check proves it cannot overflow, otherwise in Python integers (numpy object
arrays): the result is identical, only slower (e.g. GiB prices with many decimals on very large volumes).
"""

from __future__ import annotations

import math
from decimal import Decimal
from fractions import Fraction

import numpy as np

MICROS = 10**6
SAFE = 2**62


def price_fractions(prices: list[Decimal], unit_bytes: int) -> tuple[list[int], int]:
    """Numerators ``N_i`` and a common denominator ``D``: price_i per unit = N_i / D micro-units per byte."""
    fracs = [Fraction(p) * MICROS / unit_bytes for p in prices]
    den = 1
    for f in fracs:
        den = den * f.denominator // math.gcd(den, f.denominator)
    return [int(f * den) for f in fracs], den


def decimal_micros(amount: Decimal, mode: str = "half_up") -> int:
    """A decimal currency amount as integer micro-units (rounded with ``mode`` beyond 6 decimals)."""
    f = Fraction(amount) * MICROS
    return int(round_div(np.array([f.numerator], dtype=object), f.denominator, mode)[0])


def products(quantities: np.ndarray, factors: np.ndarray) -> np.ndarray:
    """``quantities * factors`` exactly: int64 when safe, else Python integers (object array)."""
    q = np.asarray(quantities)
    f = np.asarray(factors)
    qmax = int(q.max()) if len(q) else 0
    fmax = int(f.max()) if len(f) else 0
    if f.dtype != object and q.dtype != object and qmax * fmax < SAFE:
        exact: np.ndarray = q.astype(np.int64) * f.astype(np.int64)
    else:
        exact = q.astype(object) * f.astype(object)
    return exact


def round_div(x: np.ndarray, den: int, mode: str) -> np.ndarray:
    """``x / den`` rounded to an integer (x >= 0): half_up (half away from zero), half_even, down or up."""
    q, r = x // den, x % den  # (np.divmod has no object-array loop)
    if mode == "down":
        bump = np.zeros(len(q), dtype=bool)
    elif mode == "up":
        bump = r > 0
    elif mode == "half_up":
        bump = 2 * r >= den
    elif mode == "half_even":
        bump = (2 * r > den) | ((2 * r == den) & (q % 2 == 1))
    else:
        raise ValueError(f"unknown rounding mode {mode!r}")
    bump = np.asarray(bump, dtype=bool)
    return (q + bump.astype(np.int64)).astype(np.int64)


def prorate(value: int, part_ms: np.ndarray, whole_ms: np.ndarray) -> np.ndarray:
    """``floor(value * part / whole)`` per element, exactly (object arithmetic when int64 could overflow)."""
    part = np.asarray(part_ms, dtype=np.int64)
    whole = np.asarray(whole_ms, dtype=np.int64)
    out = np.full(len(part), value, dtype=np.int64)
    short = np.flatnonzero(part != whole)  # most rows belong to whole cycles: nothing to compute
    if len(short) == 0:
        return out
    p, w = part[short], whole[short]
    if value * int(p.max()) < SAFE:
        out[short] = (value * p) // w
    else:
        out[short] = ((p.astype(object) * value) // w.astype(object)).astype(np.int64)
    return out

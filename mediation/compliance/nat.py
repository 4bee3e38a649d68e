"""CGNAT logging: natEvent codes, and ``nat_events`` rows from decoded ``flows`` columns, vectorised.

natEvent (IPFIX IE 230) codes differ between RFC 8158 and the pre-RFC draft (draft-ietf-behave-ipfix-nat-logging)
that Juniper and older Cisco/A10 releases follow:

====  ==============================  ==============================
code  RFC 8158 (IANA registry)        pre-RFC draft
====  ==============================  ==============================
1/2   NAT translation create/delete   NAT44 session create/delete
3     NAT addresses exhausted         NAT addresses exhausted
4/5   NAT44 session create/delete     NAT64 session create/delete
6/7   NAT64 session create/delete     NAT44 BIB create/delete
8/9   NAT44 BIB create/delete         NAT64 BIB create/delete
10    NAT64 BIB create                NAT ports exhausted
11    NAT64 BIB delete                quota exceeded
12    NAT ports exhausted             address binding create
13    quota exceeded                  address binding delete
14    address binding create          port block allocation
15    address binding delete          port block de-allocation
16    port block allocation           threshold reached
17    port block de-allocation        -
18    threshold reached               -
====  ==============================  ==============================

Codes 1-9 mean "a session or BIB starts / ends" in both. A record carrying a port range (IEs 361/362/364) is a port
block whatever the dialect: 14 or 16 allocate it, 15 or 17 release it. Only 10-13 (and 14/15 without a port range)
depend on the dialect, chosen by ``compliance.nat_event_codes``.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

OTHER, START, END, OBSERVED = 0, 1, 2, 3
SCOPES = ("other", "session", "block", "address", "flow")
S_OTHER, S_SESSION, S_BLOCK, S_ADDRESS, S_FLOW = range(5)

_COMMON = {1: (START, S_SESSION), 2: (END, S_SESSION), 4: (START, S_SESSION), 5: (END, S_SESSION),
           6: (START, S_SESSION), 7: (END, S_SESSION), 8: (START, S_SESSION), 9: (END, S_SESSION)}
_DIALECTS = {
    "rfc8158": {10: (START, S_SESSION), 11: (END, S_SESSION), 14: (START, S_ADDRESS), 15: (END, S_ADDRESS),
                16: (START, S_BLOCK), 17: (END, S_BLOCK)},
    "draft": {12: (START, S_ADDRESS), 13: (END, S_ADDRESS), 14: (START, S_BLOCK), 15: (END, S_BLOCK)},
}


def _tables(dialect: str) -> tuple[np.ndarray, np.ndarray]:
    if dialect not in _DIALECTS:
        raise ValueError(f"unknown natEvent dialect {dialect!r}: expected one of {sorted(_DIALECTS)}")
    action = np.zeros(256, dtype=np.uint8)
    scope = np.zeros(256, dtype=np.uint8)
    for code, (a, s) in {**_COMMON, **_DIALECTS[dialect]}.items():
        action[code], scope[code] = a, s
    return action, scope


def classify(nat_event: np.ndarray, has_range: np.ndarray, dialect: str = "rfc8158"
             ) -> tuple[np.ndarray, np.ndarray]:
    """``(action, scope)`` per natEvent code (uint8 each; see :data:`SCOPES`), vectorised.

    A record with a port range is a block: 14/16 allocate and 15/17 release in either dialect; other codes keep
    their start/end meaning. Codes with no start/end meaning (exhaustion, quota, threshold) are ``OTHER``.
    """
    action_of, scope_of = _tables(dialect)
    code = np.asarray(nat_event, dtype=np.uint8)
    action = action_of[code]
    scope = scope_of[code]
    block_start = has_range & np.isin(code, (14, 16))
    block_end = has_range & np.isin(code, (15, 17))
    action = np.where(block_start, START, np.where(block_end, END, action)).astype(np.uint8)
    scope = np.where(has_range & (action != OTHER), S_BLOCK, scope).astype(np.uint8)
    return action, scope


def port_range(start: np.ndarray, end: np.ndarray, step: np.ndarray, ports: np.ndarray
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(first, last, step)`` of port blocks from IEs 361-364: ``portRangeEnd`` when sent, else computed from
    ``portRangeNumPorts`` and the step (RFC 8158 section 4.3: step 1 when absent)."""
    start = np.asarray(start, dtype=np.int64)
    step = np.maximum(np.asarray(step, dtype=np.int64), 1)
    ports = np.asarray(ports, dtype=np.int64)
    end = np.asarray(end, dtype=np.int64)
    computed = start + np.maximum(ports - 1, 0) * step
    last = np.where(end > 0, end, np.where(ports > 0, computed, start))
    last = np.clip(np.maximum(last, start), 0, 65535)
    return start.astype(np.uint16), last.astype(np.uint16), step.astype(np.uint16)


def without_nat_only(flows: pa.RecordBatch) -> pa.RecordBatch:
    """``flows`` without the records that are pure NAT events (a natEvent and no traffic), which are not usage:
    the Mediator would otherwise reject them as zero_counters. The batch itself when there are none."""
    import pyarrow.compute as pc

    nat_event = flows.column("nat_event")
    if nat_event.null_count == 0 and not nat_event.to_numpy(zero_copy_only=False).any():
        return flows  # the usual case, a batch with no natEvent at all: one pass over one column
    nat_only = pc.and_(pc.greater(flows.column("nat_event"), 0),
                       pc.and_(pc.equal(flows.column("bytes"), 0), pc.equal(flows.column("packets"), 0)))
    if not pc.any(nat_only).as_py():
        return flows
    return flows.filter(pc.invert(nat_only))

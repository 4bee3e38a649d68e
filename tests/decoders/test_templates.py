"""Template compilation and the variable-length record walkers."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from decoders.netflow import templates as T
from decoders.netflow.decoder import FlowDecoder
from decoders.netflow.templates import Field, Template, compile_template, walk_sets, walk_variable
from tests.decoders.packets import T0_MS, data_set, ipfix, options_template_set, template_set

FIELD = st.builds(Field, st.sampled_from([1, 2, 8, 96, 999]), st.sampled_from([0, 1, 2, 3, 4, 16, 65535]))
BODY = st.binary(max_size=120).map(lambda b: bytes(x if x % 7 else 255 for x in b))  # 255s: long length forms


@settings(max_examples=300, deadline=None)
@given(st.lists(FIELD, min_size=1, max_size=5), st.lists(BODY, min_size=1, max_size=24),
       st.sampled_from([1, 2, 8, 100]))
def test_vectorised_walk_agrees_with_the_record_by_record_walk(fields, sets, min_sets):
    compiled = compile_template(Template(256, tuple(fields)))
    if compiled.fixed or compiled.reclen == 0:
        return
    buf = b"".join(sets)
    lengths = np.array([len(s) for s in sets], dtype=np.int64)
    ends = np.cumsum(lengths)
    old, T.VECTOR_MIN_SETS = T.VECTOR_MIN_SETS, min_sets
    try:
        counts, starts, broken = walk_sets(compiled, buf, ends - lengths, ends)
    finally:
        T.VECTOR_MIN_SETS = old
    want_counts, want_broken, want_offsets = [], [], []
    for s, e in zip(ends - lengths, ends, strict=True):
        out: list[int] = []
        n, bad = walk_variable(compiled, buf, int(s), int(e), out)
        want_counts.append(n)
        want_broken.append(bad)
        want_offsets += out
    assert counts.tolist() == want_counts and broken.tolist() == want_broken
    assert starts.ravel().tolist() == want_offsets


def test_identical_templates_share_one_compiled_form():
    a = Template(256, (Field(8, 4), Field(1, 4)))
    b = Template(999, (Field(8, 4), Field(1, 4)))
    assert compile_template(a) is compile_template(b)
    assert compile_template(a).reclen == 8 and compile_template(a).fast


def test_templates_without_any_known_field_still_decode():
    fields = [(999, 4), (1000, 2)]
    res = FlowDecoder().decode([(ipfix(template_set({256: fields}, ipfix=True),
                                       data_set(256, fields, [{999: 1}] * 3),
                                       options_template_set(300, [(999, 4)], [(1000, 4)], ipfix=True),
                                       data_set(300, [(999, 4), (1000, 4)], [{}])), "192.0.2.1", T0_MS)])
    assert res.n_flows == 3 and not res.errors and set(res.flows["raw_bytes"]) == {0}

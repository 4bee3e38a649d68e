"""Every flow decoder gives each record its datagram's identity (``datagram``) and where it starts in it
(``datagram_offset``): the same for an identical resend, different for any other datagram (issue 17 item 2)."""

from __future__ import annotations

import numpy as np
import pytest

from bench.sflow import FlowSample, Packet, SflowAgent
from decoders.dispatch import DispatchDecoder
from decoders.netflow.decoder import FlowDecoder
from decoders.sflow.decoder import SflowDecoder
from tests.decoders.packets import (
    T0_MS,
    V4_FIELDS,
    data_set,
    encode_record,
    ipfix,
    template_set,
    v4_record,
    v5,
    v9,
)

EXPORTER = "192.0.2.1"
V6_FIELDS = [(27, 16), (28, 16), (7, 2), (11, 2), (4, 1), (1, 8), (2, 8), (152, 8), (153, 8)]
V4_LEN = len(encode_record(V4_FIELDS, v4_record()))


def _v5(seq: int, n: int = 3) -> bytes:
    return v5([{"sport": 1000 + i + seq} for i in range(n)], seq=seq)


def _v9(seq: int, n: int = 3, template: bool = False) -> bytes:
    sets = [template_set({256: V4_FIELDS}, ipfix=False)] if template else []
    return v9(*sets, data_set(256, V4_FIELDS, [v4_record(i + seq) for i in range(n)]), seq=seq)


def _ipfix(seq: int, n: int = 3, template: bool = False) -> bytes:
    sets = [template_set({256: V4_FIELDS, 257: V6_FIELDS}, ipfix=True)] if template else []
    v6 = {27: bytes(15) + b"\1", 28: bytes(15) + b"\2", 7: 1, 11: 2, 4: 17, 1: 100, 2: 1, 152: T0_MS - 10, 153: T0_MS}
    return ipfix(*sets, data_set(256, V4_FIELDS, [v4_record(i + seq) for i in range(n)]),
                 data_set(257, V6_FIELDS, [v6]), seq=seq)


def _decode(decoder, datagrams: list[bytes], exporter: str = EXPORTER) -> dict[str, np.ndarray]:
    result = decoder.decode([(d, exporter, T0_MS + i) for i, d in enumerate(datagrams)])
    assert not result.errors, result.errors
    return result.flows


def _sflow(agent: SflowAgent, n: int = 2) -> bytes:
    return agent.datagram([FlowSample(Packet("10.1.2.3", "203.0.113.9", 6, 40000 + i, 443, payload=100))
                           for i in range(n)])


@pytest.mark.parametrize("batched", [False, True], ids=["one-by-one", "fast-path"])
@pytest.mark.parametrize("kind", ["v5", "v9", "ipfix"])
def test_netflow_records_carry_their_datagram(kind: str, batched: bool) -> None:
    make = {"v5": _v5, "v9": _v9, "ipfix": _ipfix}[kind]
    decoder = FlowDecoder()
    if kind != "v5":  # the templates first, in a datagram of their own (no records)
        _decode(decoder, [make(0, template=True)])
    grams = [make(s) for s in range(1, 7)] if batched else [make(1)]
    flows = _decode(decoder, grams)
    per = len(flows["datagram"]) // len(grams)
    ident = flows["datagram"]
    assert (ident != 0).all()
    # v5 and v9 have one set: a datagram's records are consecutive, and datagrams differ
    if kind != "ipfix":
        assert len(np.unique(ident)) == len(grams)
        assert (ident.reshape(len(grams), per) == ident[::per, None]).all()
    else:  # two sets (IPv4 and IPv6 templates): the records of one datagram are in two groups
        assert len(np.unique(ident)) == len(grams)
    offsets = flows["datagram_offset"][flows["datagram"] == ident[0]]
    if kind == "v5":
        assert offsets.tolist() == [24, 72, 120]
    elif kind == "v9":
        assert offsets.tolist() == [24 + i * V4_LEN for i in range(3)]
    else:
        assert sorted(offsets.tolist()) == [20 + i * V4_LEN for i in range(3)] + [20 + 3 * V4_LEN + 4]
    # the same datagrams again (a resend), in another batch, decode to the same identities and offsets
    again = _decode(decoder, grams)
    assert (again["datagram"] == ident).all()
    assert (again["datagram_offset"] == flows["datagram_offset"]).all()


def test_another_exporter_or_another_byte_is_another_datagram() -> None:
    decoder = FlowDecoder()
    one = _decode(decoder, [_v5(1)])["datagram"][0]
    assert _decode(decoder, [_v5(1)], exporter="192.0.2.2")["datagram"][0] != one
    changed = bytearray(_v5(1))
    changed[-1] ^= 1
    assert _decode(decoder, [bytes(changed)])["datagram"][0] != one
    assert _decode(decoder, [_v5(2)])["datagram"][0] != one


def test_identical_datagrams_in_one_batch_share_the_identity() -> None:
    flows = _decode(FlowDecoder(), [_v5(1), _v5(2), _v5(1), _v5(3), _v5(1)])
    ident = flows["datagram"].reshape(5, 3)
    assert (ident[0] == ident[2]).all() and (ident[0] == ident[4]).all() and (ident[0] != ident[1]).all()


def test_a_held_set_replayed_later_has_an_identity_of_its_own() -> None:
    decoder = FlowDecoder()
    data = v9(data_set(256, V4_FIELDS, [v4_record(0)]), seq=1)
    assert not len(_decode(decoder, [data])["datagram"])  # held: no template yet
    flows = _decode(decoder, [v9(template_set({256: V4_FIELDS}, ipfix=False), seq=2)])
    assert len(flows["datagram"]) == 1 and flows["datagram"][0] not in (0,)
    assert flows["datagram_offset"].tolist() == [0]  # where it starts in the held set
    # a second datagram with only the template: nothing held any more, nothing decoded
    assert not len(_decode(decoder, [v9(template_set({256: V4_FIELDS}, ipfix=False), seq=3)])["datagram"])


def test_sflow_records_carry_their_datagram() -> None:
    agent = SflowAgent(EXPORTER, sub_agent=1)
    grams = [_sflow(agent) for _ in range(3)]
    decoder = SflowDecoder()
    flows = _decode(decoder, grams)
    ident = flows["datagram"]
    assert (ident != 0).all() and len(np.unique(ident)) == 3
    assert (ident.reshape(3, 2) == ident[::2, None]).all()
    first, second = flows["datagram_offset"][:2].tolist()
    assert 0 < first < second < len(grams[0])
    again = _decode(decoder, [grams[1]])
    assert (again["datagram"] == ident[2:4]).all() and (again["datagram_offset"] == flows["datagram_offset"][2:4]).all()


def test_dispatch_keeps_both_protocols_identities() -> None:
    agent = SflowAgent(EXPORTER)
    flows = _decode(DispatchDecoder(), [_v5(1), _sflow(agent), _v5(2)])
    ident = flows["datagram"]
    assert len(ident) == 8 and (ident != 0).all() and len(np.unique(ident)) == 3


def test_a_held_set_of_an_identical_resend_has_the_same_identity():
    def replayed(data: bytes) -> int:
        decoder = FlowDecoder()
        _decode(decoder, [data])
        return int(_decode(decoder, [v9(template_set({256: V4_FIELDS}, ipfix=False), seq=9)])["datagram"][0])

    body = data_set(256, V4_FIELDS, [v4_record(0)])
    first = replayed(v9(body, seq=1))
    assert replayed(v9(body, seq=1)) == first
    assert replayed(v9(body, seq=1, export_ms=T0_MS + 1000)) != first  # the same set in another datagram

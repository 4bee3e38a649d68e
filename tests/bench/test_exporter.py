"""The exporter simulator's wire format, byte by byte where tshark is not needed (RFC 3954, RFC 7011, v5)."""

from __future__ import annotations

import struct

import pytest

from bench.exporter import (
    NTP_EPOCH_OFFSET_S,
    VARLEN,
    IpfixExporter,
    V5Exporter,
    V9Exporter,
    encode_value,
    fld,
    flow_template,
    ntp_timestamp,
    random_flows,
    template,
)
from bench.pcapwrite import Datagram, frame, write_pcap

T0 = 1_764_000_000_000


def test_varlen_uses_one_byte_lengths_below_255_and_three_bytes_above() -> None:
    f = fld("interfaceName")
    assert f.length == VARLEN
    assert encode_value(f, "ge-0/0/1") == b"\x08ge-0/0/1"
    assert encode_value(f, "") == b"\x00"
    assert encode_value(f, "x" * 254)[:1] == b"\xfe"
    assert encode_value(f, "x" * 255)[:3] == b"\xff\x00\xff"
    assert encode_value(f, "abc", varlen_long=True) == b"\xff\x00\x03abc"


def test_fixed_fields_are_big_endian_and_addresses_packed() -> None:
    assert encode_value(fld("octetDeltaCount", 4), 0x01020304) == b"\x01\x02\x03\x04"
    assert encode_value(fld("sourceIPv4Address"), "192.0.2.1") == bytes([192, 0, 2, 1])
    assert encode_value(fld("sourceIPv6Address"), "2001:db8::1") == bytes.fromhex("20010db8" + "00" * 11 + "01")
    assert encode_value(fld("sourceIPv4Address"), "") == b"\0\0\0\0"


def test_ntp_timestamps() -> None:
    assert ntp_timestamp(0) == NTP_EPOCH_OFFSET_S << 32
    half = ntp_timestamp(500_000, nanoseconds=True)
    assert half & 0xFFFFFFFF == 1 << 31
    assert ntp_timestamp(123_456) & 0x7FF == 0  # dateTimeMicroseconds: low 11 fraction bits zero


def test_enterprise_field_specifier() -> None:
    f = fld(12345, enterprise=9)
    assert f.spec(10) == struct.pack("!HHI", 12345 | 0x8000, VARLEN, 9)
    with pytest.raises(ValueError):
        f.spec(9)


def test_v9_header_counts_records_and_sequence_counts_packets() -> None:
    e = V9Exporter(7, boot_ms=T0 - 60_000, sequence=41)
    t = flow_template(256, octets_len=4)
    d = e.datagram(e.templates(t), e.flows(t, random_flows(3, export_ms=T0), T0), export_ms=T0)
    version, count, uptime, secs, seq, source = struct.unpack_from("!HHIIII", d)
    assert (version, count, uptime, secs, seq, source) == (9, 4, 60_000, T0 // 1000, 41, 7)
    assert e.sequence == 42
    pos = 20
    while pos < len(d):  # every flowset padded to 32 bits (RFC 3954 5.3)
        set_id, length = struct.unpack_from("!HH", d, pos)
        assert length % 4 == 0
        pos += length
    assert pos == len(d)


def test_ipfix_header_length_and_sequence_counts_data_records() -> None:
    e = IpfixExporter(3, sequence=10)
    t = flow_template(300, time_form="milliseconds")
    d = e.datagram(e.templates(t), e.flows(t, random_flows(5, export_ms=T0), T0), export_ms=T0)
    version, length, export, seq, domain = struct.unpack_from("!HHIII", d)
    assert (version, length, export, seq, domain) == (10, len(d), T0 // 1000, 10, 3)
    assert e.sequence == 15


def test_ipfix_withdrawal_and_options_template() -> None:
    e = IpfixExporter(1)
    assert e.withdraw(256).payload == struct.pack("!HHHH", 2, 8, 256, 0)
    assert e.withdraw(3, options=True).payload == struct.pack("!HHHH", 3, 8, 3, 0)
    opt = template(400, "samplingPacketInterval", "samplingPacketSpace", scope=["selectorId"])
    body = e.templates(opt).payload
    assert struct.unpack_from("!HHHHH", body) == (3, len(body), 400, 3, 1)
    assert struct.unpack_from("!HH", body, 10) == (302, 8)  # the scope field first


def test_v9_options_template_lengths_are_bytes() -> None:
    e = V9Exporter(1)
    opt = template(260, "samplingInterval", "samplingAlgorithm", scope=[fld(1, 4)])
    body = e.templates(opt).payload
    assert struct.unpack_from("!HHHHH", body) == (1, len(body), 260, 4, 8)


def test_v5_records_and_restart() -> None:
    e = V5Exporter(engine_type=1, engine_id=2, sampling_interval=100, sampling_mode=1, boot_ms=T0 - 1000)
    flows = random_flows(30, export_ms=T0)
    d = e.datagram(flows, export_ms=T0 + 250)
    assert len(d) == 24 + 30 * 48
    header = struct.unpack_from("!HHIIIIBBH", d)
    assert header == (5, 30, 1250, T0 // 1000, 250_000_000, 0, 1, 2, (1 << 14) | 100)
    assert e.sequence == 30
    e.restart(T0)
    d2 = e.datagram(flows[:1], export_ms=T0 + 5000)
    assert struct.unpack_from("!I", d2, 4)[0] == 5000 and struct.unpack_from("!I", d2, 16)[0] == 0
    with pytest.raises(ValueError):
        e.datagram(random_flows(31, export_ms=T0), export_ms=T0)


def _checksum_ok(data: bytes) -> bool:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total == 0xFFFF


def test_pcap_frames_have_valid_checksums_and_read_back(tmp_path) -> None:
    from decoders.pcap import read_udp

    v4 = frame(Datagram(b"hello", "192.0.2.1", "127.0.0.1", 1234, 2055))
    assert _checksum_ok(v4[14:34])
    v6 = frame(Datagram(b"hello!", "2001:db8::1", "::1", 1234, 4739))
    ip6, udp = v6[14:54], v6[54:]
    pseudo = ip6[8:40] + struct.pack("!IxxxB", len(udp), 17)
    assert _checksum_ok(pseudo + udp)
    path = tmp_path / "x.pcap"
    write_pcap(path, [Datagram(b"a", "192.0.2.1", time_ms=T0 + 5), Datagram(b"bb", "2001:db8::1", "::1", 9, 4739,
                                                                            T0 + 7)])
    got = [(d.payload, d.src, d.dst_port, d.ts_ms) for d in read_udp(path)]
    assert got == [(b"a", "192.0.2.1", 2055, T0 + 5), (b"bb", "2001:db8::1", 4739, T0 + 7)]

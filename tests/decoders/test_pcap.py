"""decoders.pcap: UDP payloads out of captures written by independent writers (scapy, editcap)."""

import subprocess

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6, IPv6ExtHdrHopByHop
from scapy.layers.l2 import CookedLinux, CookedLinuxV2, Dot1Q, Ether, Loopback
from scapy.packet import Raw
from scapy.utils import PcapNgWriter, PcapWriter

from decoders.netflow.decoder import FlowDecoder
from decoders.pcap import PcapError, datagrams, read_udp
from tests.decoders.packets import T0_MS, v5
from tests.fixtures.peers import require_tool

T_S = T0_MS / 1000 + 0.25  # capture time: 250 ms after T0


def udp4(payload, sport=40000, dport=2055, src="192.0.2.1"):
    return IP(src=src, dst="127.0.0.1") / UDP(sport=sport, dport=dport) / Raw(payload)


def write(path, packets, **kw):
    w = PcapWriter(str(path), **kw)
    for p in packets:
        p.time = T_S
        w.write(p)
    w.close()
    return path


@pytest.mark.parametrize("wrap,linktype", [
    (lambda p: Ether() / p, None),
    (lambda p: Ether() / Dot1Q(vlan=7) / p, None),
    (lambda p: CookedLinux() / p, None),
    (lambda p: CookedLinuxV2() / p, None),
    (lambda p: Ether() / Dot1Q(vlan=7) / Dot1Q(vlan=8) / p, None),
    (lambda p: p, 101),
    (lambda p: Loopback() / p, None),
])
def test_link_types(tmp_path, wrap, linktype):
    kw = {"linktype": linktype} if linktype else {}
    path = write(tmp_path / "c.pcap", [wrap(udp4(b"hello")), wrap(udp4(b"world", dport=4739))], **kw)
    got = list(read_udp(path))
    assert [(d.payload, d.src, d.src_port, d.dst, d.dst_port, d.ts_ms) for d in got] == [
        (b"hello", "192.0.2.1", 40000, "127.0.0.1", 2055, T0_MS + 250),
        (b"world", "192.0.2.1", 40000, "127.0.0.1", 4739, T0_MS + 250)]
    assert [d.payload for d in read_udp(path, ports={4739})] == [b"world"]


def test_ipv6_with_extension_header_nanosecond_big_endian(tmp_path):
    p = Ether() / IPv6(src="2001:db8::1", dst="::1") / IPv6ExtHdrHopByHop() / UDP(sport=1, dport=4739) / Raw(b"six")
    path = write(tmp_path / "c.pcap", [p], nano=True, endianness=">")
    (d,) = read_udp(path)
    assert (d.payload, d.src, d.dst, d.ts_ms) == (b"six", "2001:db8::1", "::1", T0_MS + 250)


def test_skips_fragments_and_other_protocols(tmp_path):
    frag = IP(src="192.0.2.1", dst="127.0.0.1", flags="MF", frag=0) / UDP(dport=2055) / Raw(b"x" * 50)
    tcp = IP(src="192.0.2.1", dst="127.0.0.1") / TCP(dport=2055) / Raw(b"tcp")
    path = write(tmp_path / "c.pcap", [Ether() / frag, Ether() / tcp, Ether() / udp4(b"ok")])
    assert [d.payload for d in read_udp(path)] == [b"ok"]


def test_pcapng_from_scapy(tmp_path):
    path = tmp_path / "c.pcapng"
    w = PcapNgWriter(str(path))
    for payload in (b"a", b"b"):
        p = Ether() / udp4(payload)
        p.time = T_S
        w.write(p)
    w.close()
    assert [(d.payload, d.ts_ms) for d in read_udp(path)] == [(b"a", T0_MS + 250), (b"b", T0_MS + 250)]


@pytest.mark.external
def test_pcapng_from_editcap_decodes_like_the_pcap(tmp_path):
    editcap = require_tool("editcap")
    dgs = [Ether() / udp4(v5([{"bytes": 100 + i}], seq=i)) for i in range(5)]
    pcap = write(tmp_path / "c.pcap", dgs)
    ng = tmp_path / "c.pcapng"
    subprocess.run([editcap, "-F", "pcapng", str(pcap), str(ng)], check=True, capture_output=True)
    assert ng.read_bytes()[:4] == b"\x0a\x0d\x0d\x0a"
    a = FlowDecoder().decode(datagrams(pcap))
    b = FlowDecoder().decode(datagrams(ng))
    assert a.flows["raw_bytes"].tolist() == b.flows["raw_bytes"].tolist() == [100, 101, 102, 103, 104]
    assert set(b.flows["time_received"]) == {T0_MS + 250}


def test_not_a_capture(tmp_path):
    bad = tmp_path / "x.pcap"
    bad.write_bytes(b"GIF89a....")
    with pytest.raises(PcapError):
        list(read_udp(bad))
    bad.write_bytes(b"")
    with pytest.raises(PcapError):
        list(read_udp(bad))


def test_cut_capture_keeps_complete_packets(tmp_path):
    path = write(tmp_path / "c.pcap", [Ether() / udp4(b"one"), Ether() / udp4(b"two")])
    data = path.read_bytes()
    path.write_bytes(data[:-5])
    assert [d.payload for d in read_udp(path)] == [b"one"]

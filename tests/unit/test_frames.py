"""haagent.net.frames without sockets: building, parsing, round trips, checksums, garbage.

Reference frames were produced once with scapy 2.8.0 (an independent implementation),
e.g. ``Ether(src=M, dst=B)/ARP(op=1, hwsrc=M, psrc=V, hwdst=Z, pdst=V)`` and
``Ether(...)/IPv6(src=S, dst="ff02::1", hlim=255)/ICMPv6ND_NA(R=0, S=0, O=1, tgt=V)
/ICMPv6NDOptDstLLAddr(lladdr=M)``; scapy leaves ARP frames at 42 bytes, frames.py pads
them to the Ethernet minimum with zeros.
"""

from __future__ import annotations

import random
import struct
from collections.abc import Callable
from ipaddress import IPv4Address, IPv6Address

import pytest

from haagent.net import frames as f

MAC = bytes.fromhex("020000000034")
CLIENT = bytes.fromhex("02000000000c")
VIP4 = IPv4Address("198.51.100.34")
VIP6 = IPv6Address("2001:db8::34")
CLIENT6 = IPv6Address("2001:db8::c")
GROUP = IPv6Address("ff02::1:ff00:34")

REF_GARP_REQUEST = bytes.fromhex(
    "ffffffffffff02000000003408060001080006040001020000000034c6336422000000000000c6336422"
)
REF_GARP_REPLY = bytes.fromhex(
    "ffffffffffff02000000003408060001080006040002020000000034c6336422020000000034c6336422"
)
REF_NA_FROM_VIP = bytes.fromhex(
    "33330000000102000000003486dd6000000000203aff20010db8000000000000000000000034"
    "ff0200000000000000000000000000018800f8912000000020010db8000000000000000000000034"
    "0201020000000034"
)
REF_NA_FROM_LINK_LOCAL = bytes.fromhex(
    "33330000000102000000003486dd6000000000203afffe80000000000000000000000000000b"
    "ff020000000000000000000000000001880027f52000000020010db8000000000000000000000032"
    "0201020000000034"
)
REF_NS = bytes.fromhex(
    "3333ff00003402000000000c86dd6000000000203aff20010db800000000000000000000000c"
    "ff0200000000000000000001ff00003487001bad0000000020010db8000000000000000000000034"
    "010102000000000c"
)
REF_DAD_NS = bytes.fromhex(
    "3333ff00003402000000000c86dd6000000000183aff00000000000000000000000000000000"
    "ff0200000000000000000001ff00003487004c870000000020010db8000000000000000000000034"
)


def padded(frame: bytes) -> bytes:
    return frame + b"\x00" * (f.MIN_FRAME - len(frame))


def words_checksum(data: bytes) -> int:
    """RFC 1071 the slow, obvious way: add 16-bit words, fold the carries, complement."""
    if len(data) % 2:
        data += b"\x00"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def icmp_frame(
    icmp: bytes,
    *,
    src: IPv6Address = CLIENT6,
    dst: IPv6Address = GROUP,
    eth_dst: bytes | None = None,
    hlim: int = 255,
    nxt: int = 58,
    plen: int | None = None,
    checksum: int | None = None,
) -> bytes:
    """Any ICMPv6 message in a frame, with a correct checksum unless one is given."""
    csum = (
        f.icmpv6_checksum(src, dst, icmp[:2] + b"\0\0" + icmp[4:]) if checksum is None else checksum
    )
    icmp = icmp[:2] + struct.pack("!H", csum) + icmp[4:]
    ip6 = struct.pack("!IHBB", 6 << 28, len(icmp) if plen is None else plen, nxt, hlim)
    eth = (eth_dst or f.multicast_mac(dst)) + CLIENT + b"\x86\xdd"
    return eth + ip6 + src.packed + dst.packed + icmp


def ns_icmp(target: IPv6Address = VIP6, options: bytes = b"", code: int = 0) -> bytes:
    return struct.pack("!BBHI", 135, code, 0, 0) + target.packed + options


SLLA = bytes([1, 1]) + CLIENT
SO = f.NA_SOLICITED | f.NA_OVERRIDE


# -- building: byte-for-byte against the reference ---------------------------------------------


def test_gratuitous_arp_request_and_reply_match_reference() -> None:
    assert f.garp_request(MAC, VIP4) == padded(REF_GARP_REQUEST)
    assert f.garp_reply(MAC, VIP4) == padded(REF_GARP_REPLY)
    assert len(f.garp_request(MAC, VIP4)) == f.MIN_FRAME


def test_unsolicited_na_matches_reference() -> None:
    assert f.unsolicited_na(MAC, VIP6, VIP6) == REF_NA_FROM_VIP
    link_local = IPv6Address("fe80::b")
    assert f.unsolicited_na(MAC, link_local, IPv6Address("2001:db8::32")) == REF_NA_FROM_LINK_LOCAL


def test_solicitations_match_reference() -> None:
    assert f.ns_frame(f.multicast_mac(GROUP), CLIENT, CLIENT6, GROUP, VIP6) == REF_NS
    assert f.ns_frame(f.multicast_mac(GROUP), CLIENT, f.UNSPECIFIED6, GROUP, VIP6) == REF_DAD_NS
    assert f.dad_probe(CLIENT, VIP6) == REF_DAD_NS


def test_arp_probe() -> None:
    arp = f.parse_arp(f.arp_probe(MAC, VIP4))
    assert arp is not None
    assert (arp.eth_dst, arp.eth_src, arp.op) == (f.BROADCAST, MAC, f.ARP_REQUEST)
    assert (arp.sha, arp.spa, arp.tha, arp.tpa) == (MAC, IPv4Address(0), f.ZERO_MAC, VIP4)
    unicast = f.parse_arp(f.arp_probe(MAC, VIP4, eth_dst=CLIENT))
    assert unicast is not None and unicast.eth_dst == CLIENT


def test_dad_probe_to_one_mac() -> None:
    nd = f.parse_nd(f.dad_probe(CLIENT, VIP6, eth_dst=MAC))
    assert nd is not None
    assert (nd.eth_dst, nd.src, nd.dst, nd.lladdr) == (MAC, f.UNSPECIFIED6, GROUP, None)


# -- addresses ----------------------------------------------------------------------------------


def test_multicast_addresses() -> None:
    assert f.solicited_node(VIP6) == GROUP
    assert f.solicited_node(IPv6Address("fe80::1:2345:6789")) == IPv6Address("ff02::1:ff45:6789")
    assert f.multicast_mac(GROUP) == bytes.fromhex("3333ff000034")
    assert f.multicast_mac(f.ALL_NODES) == f.ALL_NODES_MAC


@pytest.mark.parametrize("text", ["02:00:00:00:00:34", "02:00:00:00:00:34".upper()])
def test_mac_bytes_accepts_either_case(text: str) -> None:
    assert f.mac_bytes(text) == MAC
    assert f.mac_str(f.mac_bytes(text)) == "02:00:00:00:00:34"


@pytest.mark.parametrize(
    "text",
    ["", "02:00:00:00:00", "02:00:00:00:00:34:56", "02-00-00-00-00-34", "02:00:00:00:00:3g",
     "02:00:00:00:00:34\n", " 02:00:00:00:00:34", "020000000034", "2:0:0:0:0:34"],
)  # fmt: skip
def test_mac_bytes_refuses_anything_else(text: str) -> None:
    with pytest.raises(ValueError, match="bad MAC address"):
        f.mac_bytes(text)


@pytest.mark.parametrize(
    "build",
    [
        lambda: f.garp_request(MAC[:5], VIP4),
        lambda: f.arp_frame(f.ARP_REQUEST, b"\xff" * 7, MAC, VIP4, f.ZERO_MAC, VIP4),
        lambda: f.arp_frame(0x10000, f.BROADCAST, MAC, VIP4, f.ZERO_MAC, VIP4),
        lambda: f.arp_frame(-1, f.BROADCAST, MAC, VIP4, f.ZERO_MAC, VIP4),
        lambda: f.unsolicited_na(b"", VIP6, VIP6),
        lambda: f.ns_frame(b"\x33\x33", MAC, CLIENT6, GROUP, VIP6),
    ],
)
def test_builders_refuse_what_they_cannot_encode(build: Callable[[], bytes]) -> None:
    with pytest.raises(ValueError):
        build()


# -- checksums ----------------------------------------------------------------------------------


def test_internet_checksum_rfc1071_example() -> None:
    # RFC 1071 section 3: the words 0001 f203 f4f5 f6f7 sum to ddf2 (carries folded).
    assert f.internet_checksum(bytes.fromhex("0001f203f4f5f6f7")) == 0x220D


def test_internet_checksum_edge_cases() -> None:
    assert f.internet_checksum(b"") == 0xFFFF
    assert f.internet_checksum(b"\x00\x00\x00") == 0xFFFF
    assert f.internet_checksum(b"\xff\xff") == 0x0000  # the sum is -0: checksum +0
    assert f.internet_checksum(b"\x12") == 0xEDFF  # odd length: padded with a zero byte


def test_internet_checksum_agrees_with_word_sums() -> None:
    rng = random.Random(4861)
    for n in [*range(0, 80), 1500, 9000]:
        data = rng.randbytes(n)
        assert f.internet_checksum(data) == words_checksum(data), data.hex()
    for data in (b"\xff" * 64, b"\xff\xfe" * 3, b"\x00\x01" * 0xFFFF):
        assert f.internet_checksum(data) == words_checksum(data)


def test_icmpv6_checksums_of_reference_frames() -> None:
    for frame, want in (
        (REF_NA_FROM_VIP, 0xF891),
        (REF_NA_FROM_LINK_LOCAL, 0x27F5),
        (REF_NS, 0x1BAD),
        (REF_DAD_NS, 0x4C87),
    ):
        src, dst = IPv6Address(frame[22:38]), IPv6Address(frame[38:54])
        icmp = frame[54:]
        assert f.icmpv6_checksum(src, dst, icmp[:2] + b"\0\0" + icmp[4:]) == want
        assert f.icmpv6_checksum_ok(src, dst, icmp)
        assert not f.icmpv6_checksum_ok(src, dst, icmp[:2] + b"\0\0" + icmp[4:])


def test_a_zero_checksum_may_be_sent_as_either_zero() -> None:
    """One's complement has two zeros; receivers (and parse_nd) accept both."""
    for low in range(0x10000):
        target = IPv6Address(int(VIP6) & ~0xFFFF | low)
        if f.icmpv6_checksum(CLIENT6, GROUP, ns_icmp(target, SLLA)) == 0:
            break
    else:
        pytest.fail("no target gives checksum 0")
    for field in (0x0000, 0xFFFF):
        nd = f.parse_nd(icmp_frame(ns_icmp(target, SLLA), checksum=field))
        assert nd is not None and nd.target == target


# -- round trips --------------------------------------------------------------------------------


def test_parse_gratuitous_arp() -> None:
    for frame, op, tha in (
        (f.garp_request(MAC, VIP4), f.ARP_REQUEST, f.ZERO_MAC),
        (f.garp_reply(MAC, VIP4), f.ARP_REPLY, MAC),
        (REF_GARP_REQUEST, f.ARP_REQUEST, f.ZERO_MAC),  # unpadded is fine too
    ):
        arp = f.parse_arp(frame)
        assert arp == f.ArpPacket(MAC, f.BROADCAST, op, MAC, VIP4, tha, VIP4)
        assert f.parse_nd(frame) is None


def test_arp_answer_is_unicast_to_the_asker() -> None:
    asker = IPv4Address("198.51.100.100")
    for sender in (asker, IPv4Address(0)):  # a who-has, an RFC 5227 probe
        request = f.parse_arp(
            f.arp_frame(f.ARP_REQUEST, f.BROADCAST, CLIENT, sender, f.ZERO_MAC, VIP4)
        )
        assert request is not None
        reply = f.parse_arp(f.arp_answer(request, MAC))
        assert reply == f.ArpPacket(MAC, CLIENT, f.ARP_REPLY, MAC, VIP4, CLIENT, sender)


def test_parse_unsolicited_na() -> None:
    nd = f.parse_nd(f.unsolicited_na(MAC, VIP6, VIP6))
    assert nd == f.NdPacket(
        MAC, f.ALL_NODES_MAC, f.ND_NA, VIP6, f.ALL_NODES, f.NA_OVERRIDE, VIP6, MAC
    )
    assert f.parse_arp(f.unsolicited_na(MAC, VIP6, VIP6)) is None


@pytest.mark.parametrize("solicited", [True, False])
@pytest.mark.parametrize("override", [True, False])
def test_na_flags(solicited: bool, override: bool) -> None:
    assert (f.NA_ROUTER, f.NA_SOLICITED, f.NA_OVERRIDE) == (0x80, 0x40, 0x20)  # RFC 4861 4.4
    frame = f.na_frame(CLIENT, MAC, VIP6, CLIENT6, VIP6, solicited=solicited, override=override)
    nd = f.parse_nd(frame)
    assert nd is not None
    want = (f.NA_SOLICITED if solicited else 0) | (f.NA_OVERRIDE if override else 0)
    assert nd.flags == want  # never R: we speak for hosts
    assert struct.unpack_from("!I", frame, 58)[0] == want << 24


def test_na_answers_resolution_unicast_probe_and_dad() -> None:
    # Address resolution: multicast NS with SLLA -> to the asker at its SLLA.
    ns = f.parse_nd(REF_NS)
    assert ns is not None and ns.lladdr == CLIENT
    na = f.parse_nd(f.na_answer(ns, MAC, VIP6))
    assert na == f.NdPacket(MAC, CLIENT, f.ND_NA, VIP6, CLIENT6, SO, VIP6, MAC)

    # A Linux NUD probe: unicast to the VIP and the cached MAC. Without SLLA (it may be
    # omitted) the answer goes to the Ethernet source.
    other = bytes.fromhex("02000000abcd")
    probe = f.parse_nd(icmp_frame(ns_icmp(), dst=VIP6, eth_dst=MAC))
    assert probe is not None and probe.dst == VIP6 and probe.eth_dst == MAC and probe.lladdr is None
    na = f.parse_nd(f.na_answer(probe, MAC, VIP6))
    assert na is not None and (na.eth_dst, na.dst, na.flags) == (CLIENT, CLIENT6, SO)
    with_slla = f.parse_nd(icmp_frame(ns_icmp(options=bytes([1, 1]) + other), dst=VIP6))
    assert with_slla is not None
    na = f.parse_nd(f.na_answer(with_slla, MAC, VIP6))
    assert na is not None and na.eth_dst == other

    # DAD: nobody to answer to, so all-nodes and S=0 (RFC 4861 7.2.4).
    dad = f.parse_nd(REF_DAD_NS)
    assert dad is not None and dad.src == f.UNSPECIFIED6
    na = f.parse_nd(f.na_answer(dad, MAC, IPv6Address("fe80::a")))
    assert na == f.NdPacket(
        MAC, f.ALL_NODES_MAC, f.ND_NA, IPv6Address("fe80::a"), f.ALL_NODES, f.NA_OVERRIDE, VIP6, MAC
    )


def test_unknown_and_padding_options_are_skipped() -> None:
    nonce = bytes([14, 1]) + b"\x01" * 6  # RFC 3971 nonce, as a DAD probe may carry
    frame = icmp_frame(ns_icmp(options=nonce + SLLA))
    nd = f.parse_nd(frame + b"\x00" * 10)  # Ethernet padding after the payload
    assert nd is not None and nd.lladdr == CLIENT


def test_offsets_point_at_the_fields() -> None:
    arp, na = f.garp_request(MAC, VIP4), f.unsolicited_na(MAC, VIP6, VIP6)
    assert struct.unpack_from("!H", arp, f.OFF_ETHERTYPE)[0] == f.ETH_P_ARP
    assert struct.unpack_from("!H", arp, f.OFF_ARP_OP)[0] == f.ARP_REQUEST
    assert struct.unpack_from("!H", na, f.OFF_ETHERTYPE)[0] == f.ETH_P_IPV6
    assert na[f.OFF_IPV6_NEXT_HEADER] == f.ICMPV6
    assert REF_NS[f.OFF_ICMPV6_TYPE] == f.ND_NS


# -- malformed frames: None, never an exception -------------------------------------------------


@pytest.mark.parametrize(
    "frame",
    [
        icmp_frame(ns_icmp(options=SLLA), hlim=254),  # forwarded
        icmp_frame(ns_icmp(options=SLLA), hlim=64),
        icmp_frame(ns_icmp(options=SLLA), checksum=0x1234),
        icmp_frame(ns_icmp(options=SLLA, code=1)),
        icmp_frame(ns_icmp(target=GROUP, options=SLLA)),  # multicast target
        icmp_frame(ns_icmp(options=bytes([1, 0]) + CLIENT)),  # zero-length option
        icmp_frame(ns_icmp(options=bytes([1, 2]) + CLIENT)),  # option overruns the packet
        icmp_frame(ns_icmp(options=SLLA), src=f.UNSPECIFIED6),  # DAD with SLLA
        icmp_frame(ns_icmp(), src=f.UNSPECIFIED6, dst=VIP6),  # DAD not to the group
        icmp_frame(struct.pack("!BBHI", 135, 0, 0, 0) + VIP6.packed[:12]),  # ICMP < 24 bytes
        icmp_frame(ns_icmp(options=SLLA), nxt=0),  # hop-by-hop extension header
        icmp_frame(ns_icmp(options=SLLA), plen=33),  # payload length beyond the frame
        icmp_frame(ns_icmp(options=SLLA), plen=20),
        icmp_frame(struct.pack("!BBHI", 134, 0, 0, 0) + VIP6.packed),  # router advertisement
        icmp_frame(struct.pack("!BBHI", 136, 0, 0, 0x60 << 24) + VIP6.packed, dst=f.ALL_NODES),
        REF_NS[:12] + b"\x08\x00" + REF_NS[14:],  # not IPv6
        REF_NS[:14] + b"\x45" + REF_NS[15:],  # IP version 4 inside
    ],
)
def test_invalid_neighbour_discovery_is_none(frame: bytes) -> None:
    assert f.parse_nd(frame) is None


@pytest.mark.parametrize(
    "field, value",
    [(14, b"\x00\x06"), (16, b"\x86\xdd"), (18, b"\x08"), (19, b"\x06")],  # htype ptype hlen plen
)
def test_arp_of_another_hardware_or_protocol_is_none(field: int, value: bytes) -> None:
    frame = REF_GARP_REQUEST[:field] + value + REF_GARP_REQUEST[field + len(value) :]
    assert f.parse_arp(frame) is None
    assert f.parse_arp(REF_GARP_REQUEST[:12] + b"\x08\x00" + REF_GARP_REQUEST[14:]) is None


def test_every_truncation_is_none() -> None:
    valid = [REF_NS, REF_DAD_NS, REF_NA_FROM_VIP, f.unsolicited_na(MAC, VIP6, VIP6)]
    for frame in valid:
        assert f.parse_nd(frame) is not None
        for n in range(len(frame)):
            assert f.parse_nd(frame[:n]) is None, n
    for n in range(42):
        assert f.parse_arp(REF_GARP_REQUEST[:n]) is None, n


def test_garbage_never_raises() -> None:
    rng = random.Random(826)
    seeds = [REF_NS, REF_DAD_NS, REF_NA_FROM_VIP, padded(REF_GARP_REQUEST)]
    for i in range(30000):
        if i % 3 == 0:
            data = rng.randbytes(rng.randrange(0, 200))
        elif i % 3 == 1:
            # A real frame with a few bytes changed (and maybe cut): past the early checks.
            frame = bytearray(rng.choice(seeds))
            for _ in range(rng.randrange(1, 4)):
                frame[rng.randrange(len(frame))] = rng.randrange(256)
            if rng.random() < 0.5:
                del frame[rng.randrange(len(frame)) :]
            data = bytes(frame)
        else:
            # Random NS/NA bodies with a correct checksum: the option and DAD checks run.
            body = bytes([rng.choice((135, 136)), 0, 0, 0]) + rng.randbytes(rng.randrange(60))
            src = rng.choice((CLIENT6, f.UNSPECIFIED6))
            data = icmp_frame(body, src=src, dst=rng.choice((GROUP, VIP6, f.ALL_NODES)))
        assert f.parse_arp(data) is None or data[12:14] == b"\x08\x06"
        nd = f.parse_nd(data)
        assert nd is None or isinstance(nd, f.NdPacket)


def test_flipped_bits_in_a_solicitation_are_rejected_or_still_consistent() -> None:
    """The checksum covers the addresses and the ICMPv6 message: a flip there is caught;
    a flip in the Ethernet header or the traffic class/flow label is harmless."""
    for byte in range(len(REF_NS)):
        for bit in range(8):
            frame = bytearray(REF_NS)
            frame[byte] ^= 1 << bit
            nd = f.parse_nd(bytes(frame))
            if byte >= 22:
                assert nd is None, (byte, bit)
            elif nd is not None:
                assert (nd.src, nd.dst, nd.target, nd.lladdr) == (CLIENT6, GROUP, VIP6, CLIENT)

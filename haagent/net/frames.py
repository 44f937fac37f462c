"""The ARP and IPv6 neighbour-discovery wire format: the one place that knows it.

Everything haagent sends or reads at layer 2 is built and parsed here with ``struct``:
the gratuitous ARP and unsolicited neighbour advertisements of ``announce.py``, the ARP
replies, neighbour advertisements and probe questions of ``responder.py``, and the parsing
of what the responder reads. No sockets and no imports beyond the standard library: a
frame is bytes in, bytes out, and importing the module costs nothing. scapy built the
announcements before; hand-built frames are 100-400x faster to make and spare the agent
scapy's import (docs/net.md has the measurements).

Errors, by contract:

* ``parse_arp`` / ``parse_nd`` never raise for any ``bytes``: a frame that is short,
  truncated, of another protocol, or invalid by RFC 4861 7.1 gives ``None``.
* Builders raise ``ValueError`` for arguments that cannot be encoded (a MAC that is not
  six bytes); ``mac_bytes`` raises it for text that is not a MAC address.
"""

from __future__ import annotations

import re
import struct
from ipaddress import IPv4Address, IPv6Address
from typing import NamedTuple

# -- Ethernet --------------------------------------------------------------------------------

ETH_P_IP = 0x0800
ETH_P_ARP = 0x0806
ETH_P_IPV6 = 0x86DD
ETH_HLEN = 14
#: Ethernet minimum without FCS. AF_PACKET does not pad and veth/bridges forward short
#: frames as they are; a physical NIC would pad them with zeros, so padding here puts
#: the same bytes on every kind of link.
MIN_FRAME = 60

BROADCAST = b"\xff" * 6
ZERO_MAC = b"\x00" * 6

# Offsets into an untagged Ethernet frame, for code that looks at frames without parsing
# them (the responder's classic BPF filter).
OFF_ETHERTYPE = 12
OFF_ARP_OP = ETH_HLEN + 6
OFF_IPV6_NEXT_HEADER = ETH_HLEN + 6
OFF_ICMPV6_TYPE = ETH_HLEN + 40

# -- ARP (RFC 826) ---------------------------------------------------------------------------

ARPHRD_ETHER = 1
ARP_REQUEST, ARP_REPLY = 1, 2

# -- IPv6 neighbour discovery (RFC 4861) -----------------------------------------------------

ICMPV6 = 58  # next header
ND_NS, ND_NA = 135, 136  # ICMPv6 types
OPT_SLLA, OPT_TLLA = 1, 2  # source / target link-layer address options
#: Receivers drop ND messages with any other hop limit: proof they were not forwarded.
ND_HOP_LIMIT = 255
# NA flags as they appear in the first byte after the checksum (``NdPacket.flags``).
NA_ROUTER, NA_SOLICITED, NA_OVERRIDE = 0x80, 0x40, 0x20

ALL_NODES = IPv6Address("ff02::1")
ALL_NODES_MAC = b"\x33\x33\x00\x00\x00\x01"
UNSPECIFIED6 = IPv6Address("::")

_ETHERTYPE_ARP = ETH_P_ARP.to_bytes(2, "big")
_ETHERTYPE_IPV6 = ETH_P_IPV6.to_bytes(2, "big")
_ARP = struct.Struct("!HHBBH6s4s6s4s")
_IPV6 = struct.Struct("!IHBB16s16s")
_ND = struct.Struct("!BBHI16s")  # type, code, checksum, flags/reserved, target
_LLA_OPT = struct.Struct("!BB6s")
_IPV6_VERSION = 6 << 28  # version 6, traffic class 0, flow label 0
_ARP_ETHER_IPV4 = (ARPHRD_ETHER, ETH_P_IP, 6, 4)
# Fixed parts of every frame built here, packed once: the hot path only joins bytes.
_ARP_FIXED = _ETHERTYPE_ARP + struct.pack("!HHBB", *_ARP_ETHER_IPV4)
_ARP_PAD = b"\x00" * (MIN_FRAME - ETH_HLEN - _ARP.size)
_ICMP_START = ETH_HLEN + _IPV6.size
_MIN_ND = _ICMP_START + _ND.size

_MAC = re.compile(r"[0-9a-fA-F]{2}(?::[0-9a-fA-F]{2}){5}")


# -- addresses -------------------------------------------------------------------------------


def mac_bytes(mac: str) -> bytes:
    """'aa:bb:cc:dd:ee:ff' (either case) -> 6 bytes; ValueError for anything else."""
    if not _MAC.fullmatch(mac):
        raise ValueError(f"bad MAC address {mac!r}")
    return bytes.fromhex(mac.replace(":", ""))


def mac_str(mac: bytes) -> str:
    """6 bytes -> 'aa:bb:cc:dd:ee:ff'."""
    return mac.hex(":")


def solicited_node(ip: IPv6Address) -> IPv6Address:
    """ff02::1:ffXX:XXXX, the group an NS for ``ip`` is sent to (RFC 4291 2.7.1)."""
    return IPv6Address(b"\xff\x02" + b"\x00" * 9 + b"\x01\xff" + ip.packed[13:])


def multicast_mac(ip: IPv6Address) -> bytes:
    """33:33 + the low 32 bits of an IPv6 multicast address (RFC 2464 7)."""
    return b"\x33\x33" + ip.packed[12:]


# -- checksums -------------------------------------------------------------------------------


def _word_sum_residue(data: bytes) -> int:
    # The one's-complement sum of 16-bit words is the number the bytes spell, modulo
    # 0xFFFF (2**16 is 1 modulo 0xFFFF): one C-speed conversion instead of unpacking and
    # adding every word in Python.
    if len(data) % 2:
        data += b"\x00"
    return int.from_bytes(data, "big") % 0xFFFF


def internet_checksum(data: bytes) -> int:
    """The RFC 1071 checksum of ``data`` (odd lengths padded with a zero byte)."""
    if not any(data):
        return 0xFFFF  # one's-complement sum of nothing but zeros is +0, not -0
    return (-_word_sum_residue(data)) % 0xFFFF


def _pseudo_header(src: IPv6Address, dst: IPv6Address, length: int) -> bytes:
    return src.packed + dst.packed + struct.pack("!I3xB", length, ICMPV6)


def icmpv6_checksum(src: IPv6Address, dst: IPv6Address, icmp: bytes) -> int:
    """RFC 4443 2.3 checksum of ``icmp`` (its checksum field zero) from ``src`` to ``dst``."""
    return internet_checksum(_pseudo_header(src, dst, len(icmp)) + icmp)


def icmpv6_checksum_ok(src: IPv6Address, dst: IPv6Address, icmp: bytes) -> bool:
    """Does the checksum field of ``icmp`` match? Either zero (0x0000 or 0xFFFF) counts."""
    return _word_sum_residue(_pseudo_header(src, dst, len(icmp)) + icmp) == 0


# -- building --------------------------------------------------------------------------------


def _check_macs(*macs: bytes) -> None:
    for mac in macs:
        if len(mac) != 6:
            raise ValueError(f"a MAC address is 6 bytes, not {len(mac)}: {mac.hex()}")


def arp_frame(
    op: int, eth_dst: bytes, sha: bytes, spa: IPv4Address, tha: bytes, tpa: IPv4Address
) -> bytes:
    """An Ethernet/IPv4 ARP frame, padded to 60 bytes; the Ethernet source is ``sha``."""
    _check_macs(eth_dst, sha, tha)
    if not 0 <= op <= 0xFFFF:
        raise ValueError(f"ARP op {op} does not fit in 16 bits")
    return b"".join(
        (
            eth_dst,
            sha,
            _ARP_FIXED,
            op.to_bytes(2, "big"),
            sha,
            spa.packed,
            tha,
            tpa.packed,
            _ARP_PAD,
        )
    )


def garp_request(mac: bytes, ip: IPv4Address) -> bytes:
    """The RFC 5227 ARP announcement: broadcast request, sender IP = target IP = ``ip``.

    Target MAC zero, as RFC 5227 asks (receivers ignore it). Linux lets a request whose
    sender and target IP are equal override an entry even within ``locktime``.
    """
    return arp_frame(ARP_REQUEST, BROADCAST, mac, ip, ZERO_MAC, ip)


def garp_reply(mac: bytes, ip: IPv4Address) -> bytes:
    """The reply form of a gratuitous ARP, broadcast, with target MAC = sender MAC.

    Linux treats a reply as gratuitous (and honours it within ``locktime``) only when its
    target hardware address equals the sender's; a broadcast target would be ignored.
    """
    return arp_frame(ARP_REPLY, BROADCAST, mac, ip, mac, ip)


def arp_answer(request: ArpPacket, mac: bytes) -> bytes:
    """The reply to ``request``: its target IP is at ``mac``, unicast to the asker.

    Addressed to the asker's sender addresses, also when its sender IP is 0.0.0.0 (an
    RFC 5227 probe): that is how the kernel defends an address it owns.
    """
    return arp_frame(ARP_REPLY, request.sha, mac, request.tpa, request.sha, request.spa)


def _icmpv6_frame(
    eth_dst: bytes, eth_src: bytes, src: IPv6Address, dst: IPv6Address, icmp: bytes
) -> bytes:
    csum = icmpv6_checksum(src, dst, icmp)
    ip6 = _IPV6.pack(_IPV6_VERSION, len(icmp), ICMPV6, ND_HOP_LIMIT, src.packed, dst.packed)
    return b"".join(
        (eth_dst, eth_src, _ETHERTYPE_IPV6, ip6, icmp[:2], csum.to_bytes(2, "big"), icmp[4:])
    )


def na_frame(
    eth_dst: bytes,
    mac: bytes,
    src: IPv6Address,
    dst: IPv6Address,
    target: IPv6Address,
    *,
    solicited: bool,
    override: bool = True,
) -> bytes:
    """A neighbour advertisement that ``target`` is at ``mac``, with a TLLA option.

    R=0 always: haagent speaks for hosts, and a receiver seeing R=1 would treat the VIP
    as a router. The Ethernet source is ``mac``.
    """
    _check_macs(eth_dst, mac)
    flags = (NA_SOLICITED if solicited else 0) | (NA_OVERRIDE if override else 0)
    icmp = _ND.pack(ND_NA, 0, 0, flags << 24, target.packed) + _LLA_OPT.pack(OPT_TLLA, 1, mac)
    return _icmpv6_frame(eth_dst, mac, src, dst, icmp)


def unsolicited_na(mac: bytes, src: IPv6Address, target: IPv6Address) -> bytes:
    """RFC 4861 7.2.6: to all-nodes, S=0 (S must be 0 to a multicast destination), O=1 so
    receivers replace the link-layer address they cached; ``src`` must be assigned to the
    sending interface."""
    return na_frame(ALL_NODES_MAC, mac, src, ALL_NODES, target, solicited=False)


def na_answer(ns: NdPacket, mac: bytes, src: IPv6Address) -> bytes:
    """The NA answering the solicitation ``ns``: its target is at ``mac``, sent from ``src``.

    An ordinary NS (address resolution or a unicast reachability probe) gets a solicited
    NA (S=1, O=1) to the asker's address, at the MAC of its SLLA option or else at its
    Ethernet source. A DAD probe (source ::) has nobody to answer to: RFC 4861 7.2.4 wants
    an NA to all-nodes with S=0, which defends the address.
    """
    if ns.src == UNSPECIFIED6:
        return na_frame(ALL_NODES_MAC, mac, src, ALL_NODES, ns.target, solicited=False)
    return na_frame(ns.lladdr or ns.eth_src, mac, src, ns.src, ns.target, solicited=True)


def ns_frame(
    eth_dst: bytes, mac: bytes, src: IPv6Address, dst: IPv6Address, target: IPv6Address
) -> bytes:
    """A neighbour solicitation for ``target``; with SLLA unless the source is :: (DAD,
    where RFC 4861 7.1.1 forbids it)."""
    _check_macs(eth_dst, mac)
    icmp = _ND.pack(ND_NS, 0, 0, 0, target.packed)
    if src != UNSPECIFIED6:
        icmp += _LLA_OPT.pack(OPT_SLLA, 1, mac)
    return _icmpv6_frame(eth_dst, mac, src, dst, icmp)


def arp_probe(mac: bytes, ip: IPv4Address, *, eth_dst: bytes | None = None) -> bytes:
    """An RFC 5227 ARP probe for ``ip``: sender IP 0.0.0.0, so no receiver learns from it.

    Broadcast unless ``eth_dst`` names one MAC to ask.
    """
    return arp_frame(ARP_REQUEST, eth_dst or BROADCAST, mac, IPv4Address(0), ZERO_MAC, ip)


def dad_probe(mac: bytes, target: IPv6Address, *, eth_dst: bytes | None = None) -> bytes:
    """A DAD-form NS for ``target`` (source ::, no SLLA): no receiver learns from it.

    To the target's solicited-node group, at its multicast MAC unless ``eth_dst`` is given.
    """
    group = solicited_node(target)
    return ns_frame(eth_dst or multicast_mac(group), mac, UNSPECIFIED6, group, target)


# -- parsing ---------------------------------------------------------------------------------


# NamedTuples, not frozen dataclasses: a third of the construction cost (0.4 vs 1.3 µs),
# paid for every question the responder reads.
class ArpPacket(NamedTuple):
    eth_src: bytes
    eth_dst: bytes
    op: int
    sha: bytes
    spa: IPv4Address
    tha: bytes
    tpa: IPv4Address


class NdPacket(NamedTuple):
    """A neighbour solicitation or advertisement, validated as in RFC 4861 7.1."""

    eth_src: bytes
    eth_dst: bytes
    type: int  # ND_NS or ND_NA
    src: IPv6Address
    dst: IPv6Address
    flags: int  # NA_ROUTER | NA_SOLICITED | NA_OVERRIDE (NA), the same bits of an NS
    target: IPv6Address
    lladdr: bytes | None  # SLLA option of an NS, TLLA option of an NA


def parse_arp(frame: bytes) -> ArpPacket | None:
    """An Ethernet/IPv4 ARP packet of any op, or None."""
    if len(frame) < ETH_HLEN + _ARP.size or frame[12:14] != _ETHERTYPE_ARP:
        return None
    htype, ptype, hlen, plen, op, sha, spa, tha, tpa = _ARP.unpack_from(frame, ETH_HLEN)
    if (htype, ptype, hlen, plen) != _ARP_ETHER_IPV4:
        return None
    return ArpPacket(frame[6:12], frame[0:6], op, sha, IPv4Address(spa), tha, IPv4Address(tpa))


def parse_nd(frame: bytes) -> NdPacket | None:
    """A valid NS or NA without extension headers, or None (RFC 4861 7.1.1 / 7.1.2).

    Checked: hop limit 255, ICMPv6 code 0, the checksum, length of at least 24 bytes,
    a target that is not multicast, options of non-zero length within the packet, S=0 in
    an NA to a multicast group, and for a DAD probe (source ::) a solicited-node
    destination and no SLLA option.
    """
    if len(frame) < _MIN_ND or frame[12:14] != _ETHERTYPE_IPV6 or frame[14] >> 4 != 6:
        return None
    _, plen, nxt, hlim, src_b, dst_b = _IPV6.unpack_from(frame, ETH_HLEN)
    if nxt != ICMPV6 or hlim != ND_HOP_LIMIT or plen < _ND.size or len(frame) < _ICMP_START + plen:
        return None
    kind, code, _, reserved, target_b = _ND.unpack_from(frame, _ICMP_START)
    if kind not in (ND_NS, ND_NA) or code != 0:
        return None
    src, dst = IPv6Address(src_b), IPv6Address(dst_b)
    flags = reserved >> 24
    if kind == ND_NA and flags & NA_SOLICITED and dst.is_multicast:
        return None
    icmp = frame[_ICMP_START : _ICMP_START + plen]
    if not icmpv6_checksum_ok(src, dst, icmp):
        return None
    target = IPv6Address(target_b)
    if target.is_multicast:
        return None
    lladdr = None
    want = OPT_SLLA if kind == ND_NS else OPT_TLLA
    pos = _ND.size
    while pos + 2 <= plen:
        otype, olen = icmp[pos], icmp[pos + 1] * 8
        if olen == 0 or pos + olen > plen:
            return None  # RFC 4861 7.1: a zero-length option invalidates the packet
        if otype == want and olen >= 8:
            lladdr = icmp[pos + 2 : pos + 8]
        pos += olen
    if (
        kind == ND_NS
        and src == UNSPECIFIED6
        and (lladdr is not None or dst != solicited_node(target))
    ):
        return None
    return NdPacket(frame[6:12], frame[0:6], kind, src, dst, flags, target, lladdr)

"""Count the frames each host sends on the lab segment, by kind, for a bounded window.

``python -m bench.capture --seconds 10 --port h1 --port h2 …`` runs *inside the switch
namespace* (``ip netns exec <id>-sw …``): one AF_PACKET socket per switch-side veth (the port is
named after the host's role). A frame the host sends arrives on its port as received traffic;
what the bridge forwards to the host leaves through the same port and is marked
``PACKET_OUTGOING``, so it is skipped: each port's count is what that host put on the wire.
Prints one JSON object: per port the counts by kind (:func:`classify`), the kernel's packet and
drop counters of the socket, and the window length. No tcpdump, nothing but the standard
library.
"""

from __future__ import annotations

import argparse
import json
import select
import socket
import struct
import time
from collections import Counter
from collections.abc import Sequence

ETH_P_ALL = 0x0003
PACKET_OUTGOING = 4
SOL_PACKET = 263
PACKET_STATISTICS = 6
RCVBUF = 8 << 20

ETH_ARP, ETH_IPV4, ETH_IPV6, ETH_VLAN = 0x0806, 0x0800, 0x86DD, 0x8100
# IPv6 extension headers that may precede ICMPv6 (an MLD report follows a hop-by-hop header
# with the router alert option).
_EXT_HEADERS = {0, 43, 60}
_FRAGMENT = 44
ICMPV6 = 58
ICMPV6_KINDS = {136: "na", 135: "ns", 143: "mld", 131: "mld", 132: "mld", 130: "mld"}

# What the benchmark reports as its own columns; everything else is "other".
KINDS = ("arp", "na", "mld", "other")


def classify(frame: bytes) -> str:
    """The kind of an Ethernet frame: ``arp``, ``na`` (ICMPv6 neighbour advertisement),
    ``ns`` (solicitation), ``mld`` (MLD reports and queries, v1 and v2: ICMPv6 130-132, 143),
    ``ipv4``, ``ipv6`` (anything else of those families) or ``other``."""
    if len(frame) < 14:
        return "other"
    ethertype = struct.unpack_from("!H", frame, 12)[0]
    offset = 14
    if ethertype == ETH_VLAN and len(frame) >= 18:
        ethertype = struct.unpack_from("!H", frame, 16)[0]
        offset = 18
    if ethertype == ETH_ARP:
        return "arp"
    if ethertype == ETH_IPV4:
        return "ipv4"
    if ethertype != ETH_IPV6 or len(frame) < offset + 40:
        return "other"
    next_header = frame[offset + 6]
    pos = offset + 40
    for _ in range(8):  # bounded: a chain of more extension headers is not ours to decode
        if next_header in _EXT_HEADERS and len(frame) >= pos + 2:
            next_header, length = frame[pos], frame[pos + 1]
            pos += (length + 1) * 8
        elif next_header == _FRAGMENT and len(frame) >= pos + 8:
            next_header = frame[pos]
            pos += 8
        else:
            break
    if next_header == ICMPV6 and len(frame) > pos:
        return ICMPV6_KINDS.get(frame[pos], "ipv6")
    return "ipv6"


def report_kind(kind: str) -> str:
    """The column of :data:`KINDS` a :func:`classify` kind is reported in."""
    return kind if kind in KINDS else "other"


def capture(ports: Sequence[str], seconds: float) -> dict[str, object]:
    """Count frames sent by the host behind each port for ``seconds``."""
    socks: dict[int, tuple[str, socket.socket]] = {}
    try:
        for port in ports:
            s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
            s.bind((port, 0))
            s.setblocking(False)
            socks[s.fileno()] = (port, s)
        counts: dict[str, Counter[str]] = {port: Counter() for port in ports}
        started = time.monotonic()
        deadline = started + seconds
        while (left := deadline - time.monotonic()) > 0:
            ready, _, _ = select.select(list(socks), [], [], min(left, 0.5))
            for fd in ready:
                port, s = socks[fd]
                for _ in range(256):  # drain what is queued, bounded per turn
                    try:
                        frame, addr = s.recvfrom(256)  # headers are all we look at
                    except BlockingIOError:
                        break
                    if addr[2] != PACKET_OUTGOING:
                        counts[port][classify(frame)] += 1
        elapsed = time.monotonic() - started
        out: dict[str, object] = {"seconds": round(elapsed, 3)}
        for port, s in socks.values():
            # struct tpacket_stats {unsigned tp_packets, tp_drops}; reading resets it.
            packets, drops = struct.unpack("II", s.getsockopt(SOL_PACKET, PACKET_STATISTICS, 8))
            out[port] = {"kinds": dict(counts[port]), "socket_packets": packets, "drops": drops}
        return out
    finally:
        for _port, s in socks.values():
            s.close()


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.capture", description=__doc__)
    p.add_argument("--seconds", type=float, required=True)
    p.add_argument("--port", action="append", required=True, help="switch port (repeatable)")
    args = p.parse_args(argv)
    if not 0 < args.seconds <= 600:
        p.error("--seconds must be in (0, 600]")
    print(json.dumps(capture(args.port, args.seconds)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

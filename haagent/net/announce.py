"""Gratuitous ARP and unsolicited neighbour advertisements for a freshly bound VIP.

Binding an address does not tell anybody: clients and routers keep their cached IP->MAC
mapping for the old holder until it times out (Linux ~30-60 s, other systems minutes).
The new holder therefore announces the mapping itself:

* IPv4: a gratuitous ARP *request* (op 1, sender IP = target IP = VIP, broadcast). Linux
  treats an ARP packet whose sender and target IP are equal as gratuitous and lets it
  override an existing neighbour entry even within ``locktime`` (1 s by default) of the
  last update; a *reply* only gets that treatment when its target hardware address equals
  its sender hardware address, and a broadcast-target reply does not. The optional reply
  form is built accordingly (target MAC = sender MAC).
* IPv6: an unsolicited neighbour advertisement to all-nodes (RFC 4861 7.2.6) with the
  Override flag, so receivers replace the cached link-layer address.

Packets are built with scapy (imported lazily: it costs ~0.4 s) and written to one
AF_PACKET socket per interface that stays open between calls: scapy's ``sendp()`` opens
and closes a socket per call (12-30 ms), a kept socket sends in microseconds.
"""

from __future__ import annotations

import errno
import logging
import re
import socket
import threading
from collections.abc import Iterable, Iterator
from ipaddress import IPv4Address, IPv6Address
from typing import Any

from haagent.net.addresses import NetError

IPAddress = IPv4Address | IPv6Address

BROADCAST_MAC = "ff:ff:ff:ff:ff:ff"
ZERO_MAC = "00:00:00:00:00:00"
ALL_NODES = IPv6Address("ff02::1")
ALL_NODES_MAC = "33:33:00:00:00:01"  # RFC 2464: 33:33 + low 32 bits of ff02::1
ARP_REQUEST, ARP_REPLY = 1, 2

# linux/if_addr.h: an address in one of these states must not be used as a source.
IFA_F_DADFAILED = 0x08
IFA_F_TENTATIVE = 0x40

_MAC = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")
# Per-thread view of the network namespace: a thread that setns()'d elsewhere reads its own.
IF_INET6 = "/proc/thread-self/net/if_inet6"


class _Layers:
    """The scapy classes we build packets from, imported on first use."""

    def __init__(self) -> None:
        # scapy logs "No route found", missing-libpcap and similar notes while it loads;
        # none concern building frames for a socket we own.
        for name in ("scapy.runtime", "scapy.loading"):
            logging.getLogger(name).setLevel(logging.ERROR)
        try:
            from scapy.layers.inet6 import ICMPv6ND_NA, ICMPv6NDOptDstLLAddr, IPv6
            from scapy.layers.l2 import ARP, Ether
        except ImportError as exc:
            raise NetError(f"cannot build announcements: scapy is not importable ({exc})") from exc

        self.Ether: Any = Ether
        self.ARP: Any = ARP
        self.IPv6: Any = IPv6
        self.NA: Any = ICMPv6ND_NA
        self.TLLA: Any = ICMPv6NDOptDstLLAddr


def ipv6_addresses(ifname: str) -> dict[IPv6Address, int]:
    """IPv6 addresses on ``ifname`` with their IFA_F_* flags, from /proc/net/if_inet6."""
    out: dict[IPv6Address, int] = {}
    try:
        with open(IF_INET6) as f:
            lines = f.read().splitlines()
    except FileNotFoundError:  # IPv6 disabled in this kernel
        return out
    for line in lines:
        # "20010db8000000000000000000000010 03 80 00 80       eth0"
        # address, ifindex, prefix length, scope, flags (all hex), name
        fields = line.split()
        if len(fields) == 6 and fields[5] == ifname:
            out[IPv6Address(int(fields[0], 16))] = int(fields[4], 16)
    return out


def ipv6_source(ifname: str, vip: IPv6Address) -> IPv6Address:
    """The source address for an unsolicited NA announcing ``vip`` on ``ifname``.

    RFC 4861 7.2.6 asks for "an address assigned to the interface from which the
    advertisement is sent". The VIP itself qualifies once bound, and is our first choice:
    it is what the Linux kernel uses for its own unsolicited NAs (ndisc_notify), it is valid
    whatever the scope of the receivers, and a firewall on the path sees the very address
    being announced. The interface's link-local address is the fallback when the VIP is not
    (yet) bound, e.g. an announcement on behalf of an address that lives on another
    interface. Tentative or DAD-failed addresses are not assigned in RFC 4862's sense and
    are skipped. Without a usable address we refuse rather than send from "::", which
    RFC 4861 does not allow as the source of an advertisement.
    """
    usable = {
        ip
        for ip, flags in ipv6_addresses(ifname).items()
        if not flags & (IFA_F_TENTATIVE | IFA_F_DADFAILED)
    }
    if vip in usable:
        return vip
    link_local = sorted(ip for ip in usable if ip.is_link_local)
    if link_local:
        return link_local[0]
    raise NetError(
        f"cannot announce {vip} on {ifname}: neither {vip} nor a link-local address is "
        "assigned and usable there (tentative, DAD failed, or IPv6 disabled)"
    )


FRAME_CACHE_SIZE = 256  # distinct (VIP, MAC, source) frames kept; a host has a handful
_FrameKey = tuple[IPAddress, str, bool, IPv6Address | None]  # ip, mac, arp_reply, src


class Announcer:
    """Sends gratuitous ARP (IPv4) and unsolicited neighbour advertisements (IPv6) through
    one kept-open L2 socket per interface: scapy's sendp() opens a socket per call (12-30 ms
    measured), a kept socket sends in well under a millisecond (~0.3 ms IPv4, ~0.5 ms IPv6,
    nearly all of it scapy building the frame — so each VIP's frames are built once and kept).

    Thread-safe. Sockets are opened on first use per interface and reopened once,
    transparently, if the interface was deleted and re-created meanwhile.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._layers: _Layers | None = None
        self._sockets: dict[str, socket.socket] = {}
        # Frames are the same bytes every time for one VIP on one interface: scapy builds
        # them once (0.3-2 ms each, more on a busy host), not on every failover.
        self._frames_built: dict[_FrameKey, list[tuple[str, bytes]]] = {}
        #: how many sockets this announcer has opened in its lifetime (tests, metrics)
        self.sockets_opened = 0

    @property
    def open_interfaces(self) -> frozenset[str]:
        """Interfaces that currently have a kept socket."""
        with self._lock:
            return frozenset(self._sockets)

    def announce(
        self, ifname: str, ip: IPv4Address | IPv6Address, mac: str, *, arp_reply: bool = False
    ) -> None:
        """Tell the link that ``ip`` is now at ``mac``; raises NetError when sending fails.

        ``mac`` is the Ethernet source and the advertised link-layer address: the
        interface's own MAC, or a virtual MAC when the VIP lives on a macvlan.
        """
        mac = mac.lower()
        if not _MAC.match(mac):
            raise NetError(f"cannot announce {ip} on {ifname}: bad MAC address {mac!r}")
        src = ipv6_source(ifname, ip) if isinstance(ip, IPv6Address) else None
        key = (ip, mac, arp_reply, src)
        with self._lock:
            frames = self._frames_built.get(key)
            if frames is None:
                if self._layers is None:
                    self._layers = _Layers()
                frames = list(self._frames(self._layers, ip, mac, arp_reply, src))
                if len(self._frames_built) >= FRAME_CACHE_SIZE:
                    self._frames_built.clear()
                self._frames_built[key] = frames
            for what, frame in frames:
                self._send(ifname, frame, what)

    def prepare(self, ifnames: Iterable[str]) -> None:
        """Pay the one-off costs now, not during a failover.

        Importing scapy takes 0.1-0.4 s and the first frame it builds is slower still; done
        lazily, that lands on the first announcement after winning a VIP, exactly when every
        millisecond is client downtime. Opening the sockets early also surfaces a missing
        interface or capability at start-up. Raises NetError like announce().
        """
        with self._lock:
            if self._layers is None:
                self._layers = _Layers()
            layers = self._layers
            bytes(layers.Ether(src=ZERO_MAC, dst=BROADCAST_MAC) / layers.ARP())
            bytes(layers.Ether() / layers.IPv6() / layers.NA() / layers.TLLA(lladdr=ZERO_MAC))
            for ifname in ifnames:
                if ifname not in self._sockets:
                    self._open(ifname)

    def close(self) -> None:
        with self._lock:
            for sock in self._sockets.values():
                sock.close()
            self._sockets.clear()

    def __enter__(self) -> Announcer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- internals (caller holds the lock) -----------------------------------------------

    def _frames(
        self, layers: _Layers, ip: IPAddress, mac: str, arp_reply: bool, src: IPv6Address | None
    ) -> Iterator[tuple[str, bytes]]:
        if isinstance(ip, IPv4Address):
            # RFC 5227 "ARP announcement": target hardware address zero, ignored anyway.
            request = layers.Ether(src=mac, dst=BROADCAST_MAC) / layers.ARP(
                op=ARP_REQUEST, hwsrc=mac, psrc=str(ip), hwdst=ZERO_MAC, pdst=str(ip)
            )
            yield f"gratuitous ARP request for {ip}", bytes(request)
            if arp_reply:
                # Target MAC = sender MAC: what Linux requires to treat a reply as gratuitous.
                reply = layers.Ether(src=mac, dst=BROADCAST_MAC) / layers.ARP(
                    op=ARP_REPLY, hwsrc=mac, psrc=str(ip), hwdst=mac, pdst=str(ip)
                )
                yield f"gratuitous ARP reply for {ip}", bytes(reply)
            return
        assert src is not None
        # Hop limit 255 proves the packet was not forwarded (receivers drop anything else).
        # scapy's NA defaults to R=1: a host is not a router, so every flag is set explicitly.
        na = (
            layers.Ether(src=mac, dst=ALL_NODES_MAC)
            / layers.IPv6(src=str(src), dst=str(ALL_NODES), hlim=255)
            / layers.NA(R=0, S=0, O=1, tgt=str(ip))
            / layers.TLLA(lladdr=mac)
        )
        yield f"unsolicited neighbour advertisement for {ip} from {src}", bytes(na)

    def _open(self, ifname: str) -> socket.socket:
        # Protocol 0: the socket only sends; the kernel queues nothing for us to read.
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        try:
            sock.bind((ifname, 0))
        except OSError as exc:
            sock.close()
            why = "no such interface" if exc.errno == errno.ENODEV else exc.strerror
            raise NetError(f"cannot open a packet socket on {ifname}: {why}") from exc
        # Announcing is best effort; never stall the agent's loop on a full queue.
        sock.setblocking(False)
        self._sockets[ifname] = sock
        self.sockets_opened += 1
        return sock

    def _drop(self, ifname: str) -> None:
        sock = self._sockets.pop(ifname, None)
        if sock is not None:
            sock.close()

    def _send(self, ifname: str, frame: bytes, what: str) -> None:
        for attempt in (1, 2):
            sock = self._sockets.get(ifname) or self._open(ifname)
            try:
                sock.send(frame)
                return
            except OSError as exc:
                self._drop(ifname)
                # ENXIO/ENODEV: the interface this socket was bound to is gone (perhaps
                # re-created under the same name with a new index); one fresh socket may do.
                if attempt == 1 and exc.errno in (errno.ENXIO, errno.ENODEV):
                    continue
                raise NetError(f"cannot send {what} on {ifname}: {exc.strerror}") from exc

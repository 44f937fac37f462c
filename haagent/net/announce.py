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

The frames come from ``haagent.net.frames`` (a few microseconds each, so nothing is
cached) and are written to one AF_PACKET socket per interface that stays open between
calls: opening a socket per frame costs milliseconds, a kept socket sends in microseconds.
"""

from __future__ import annotations

import errno
import socket
import threading
from collections.abc import Iterable, Iterator
from ipaddress import IPv4Address, IPv6Address

from haagent.net import frames
from haagent.net.addresses import AddressManager, NetError

IPAddress = IPv4Address | IPv6Address

# linux/if_addr.h: an address in one of these states must not be used as a source.
IFA_F_DADFAILED = 0x08
IFA_F_TENTATIVE = 0x40

_UNUSABLE = IFA_F_TENTATIVE | IFA_F_DADFAILED


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

    Asked of the kernel on a netlink socket opened for the call, so the answer is that of
    the calling thread's network namespace: one RTM_GETADDR for the VIP, whatever the
    number of addresses on the host, and a dump of the interface's IPv6 addresses (only its
    link-local ones parsed) only when the VIP is not usable there.
    """
    with AddressManager() as net:
        flags = net.ipv6_flags(ifname, vip)
        if flags is not None and not flags & _UNUSABLE:
            return vip
        link_local = sorted(
            ip for ip, f in net.link_local_flags(ifname).items() if not f & _UNUSABLE
        )
    if link_local:
        return link_local[0]
    raise NetError(
        f"cannot announce {vip} on {ifname}: neither {vip} nor a link-local address is "
        "assigned and usable there (tentative, DAD failed, or IPv6 disabled)"
    )


class Announcer:
    """Sends gratuitous ARP (IPv4) and unsolicited neighbour advertisements (IPv6) through
    one kept-open L2 socket per interface.

    Thread-safe. Sockets are opened on first use per interface (or by ``prepare``) and
    reopened once, transparently, if the interface was deleted and re-created meanwhile.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sockets: dict[str, socket.socket] = {}
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
        try:
            raw = frames.mac_bytes(mac)
        except ValueError:
            raise NetError(f"cannot announce {ip} on {ifname}: bad MAC address {mac!r}") from None
        src = ipv6_source(ifname, ip) if isinstance(ip, IPv6Address) else None
        built = list(_frames(ip, raw, arp_reply, src))
        with self._lock:
            for kind, frame in built:
                try:
                    self._send(ifname, frame)
                except OSError as exc:
                    # Formatted here only: str() of an IPv6 address costs ~10 µs, more than
                    # building the frame.
                    what = f"{kind} for {ip}" + (f" from {src}" if src else "")
                    raise NetError(f"cannot send {what} on {ifname}: {exc.strerror}") from exc

    def prepare(self, ifnames: Iterable[str]) -> None:
        """Open the sockets now, not during a failover.

        A missing interface or capability then surfaces at start-up, and the first
        announcement after winning a VIP only sends. Raises NetError like announce().
        """
        with self._lock:
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

    def _send(self, ifname: str, frame: bytes) -> None:
        """Send on the kept socket; OSError if that fails (NetError if none can be opened)."""
        for attempt in (1, 2):
            sock = self._sockets.get(ifname) or self._open(ifname)
            try:
                sock.send(frame)
                return
            except OSError as exc:
                self._drop(ifname)
                # ENXIO/ENODEV: the interface this socket was bound to is gone (perhaps
                # re-created under the same name with a new index); one fresh socket may do.
                if attempt == 2 or exc.errno not in (errno.ENXIO, errno.ENODEV):
                    raise


def _frames(
    ip: IPAddress, mac: bytes, arp_reply: bool, src: IPv6Address | None
) -> Iterator[tuple[str, bytes]]:
    """(kind, frame) of one announcement round."""
    if isinstance(ip, IPv4Address):
        yield "gratuitous ARP request", frames.garp_request(mac, ip)
        if arp_reply:
            yield "gratuitous ARP reply", frames.garp_reply(mac, ip)
        return
    assert src is not None
    yield "unsolicited neighbour advertisement", frames.unsolicited_na(mac, src, ip)

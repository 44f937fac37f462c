"""Answer ARP and neighbour solicitations for VIPs that are not bound on this host.

Announce-only mode: the VIP is taken by IPVS, an nftables DNAT or an XDP program, so the
kernel owns no such address and answers nobody. The ``Responder`` does it instead, for the
VIPs the agent holds:

* IPv4: ARP who-has (broadcast or unicast, including RFC 5227 probes from 0.0.0.0) ->
  an ARP reply unicast to the asker.
* IPv6: neighbour solicitations to the solicited-node multicast address *and* unicast to
  the VIP (the reachability probes a Linux client sends when its entry goes STALE -> PROBE;
  left unanswered, the client drops its entry and traffic stalls until it re-resolves)
  -> a solicited NA (S=1, O=1, R=0) unicast to the asker. A DAD probe (source ::) gets
  the RFC 4861 7.2.4 answer: an NA to all-nodes with S=0, which defends the address.

Design:

* One ``AF_PACKET`` socket per interface, opened by the first ``hold()`` on it and kept
  until ``close()``. It is opened with protocol 0 (it receives nothing), gets a classic
  BPF filter that passes only incoming ARP requests and ICMPv6 neighbour solicitations,
  and only then is bound to ETH_P_ALL: no unfiltered frame is ever queued. When the last
  VIP of an interface is released the filter is swapped for one that drops everything
  (~0.05 ms) instead of closing the socket: closing a packet socket waits for an RCU grace
  period (6-8 ms measured), and so does binding one created with a protocol (10-16 ms),
  time during which the thread would answer nobody.
* One thread waits on all sockets with epoll, parses and answers with
  ``haagent.net.frames`` (a few ``struct`` calls) from the same socket: ~0.1 ms from the
  kernel's receive timestamp to the reply handed back to it, see ``stats()``.
* The solicited-node group of every held IPv6 VIP is joined with ``PACKET_ADD_MEMBERSHIP``
  / ``PACKET_MR_MULTICAST``: a NIC with a multicast filter then delivers those NS while
  the host kernel, which owns no such address, never joined the group. Chosen over
  ``PACKET_MR_ALLMULTI`` (every multicast frame of the link woken up into Python) and
  ``PACKET_MR_PROMISC`` (every frame). The kernel reference-counts these memberships per
  socket and drops them when the socket closes, so a crashed agent leaves none behind.
  A MAC other than the interface's own gets ``PACKET_MR_UNICAST`` the same way, so
  unicast NUD probes to it are delivered too.
* ``hold``/``release`` only change a table and memberships under a lock that the thread
  also takes around "look up, then send": once ``release()`` returns, no answer for that
  VIP leaves, not even one already being parsed.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import errno
import logging
import os
import select
import socket
import statistics
import struct
import threading
import time
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address, ip_address

from haagent.net import frames
from haagent.net.addresses import NetError
from haagent.net.announce import ipv6_source

log = logging.getLogger(__name__)

IPAddress = IPv4Address | IPv6Address

# <linux/if_ether.h>, <linux/if_packet.h>, <asm-generic/socket.h>: the packet-socket API.
# The frames themselves, their constants and offsets are haagent.net.frames'.
ETH_P_ALL = 0x0003
PACKET_OUTGOING = 4
SOL_PACKET = 263
PACKET_ADD_MEMBERSHIP, PACKET_DROP_MEMBERSHIP = 1, 2
PACKET_MR_MULTICAST, PACKET_MR_UNICAST = 0, 3
SO_ATTACH_FILTER = 26
SO_TIMESTAMPNS = 35
SCM_TIMESTAMPNS = SO_TIMESTAMPNS

_TIMESPEC = struct.Struct("=qq")
_ANCBUF = socket.CMSG_SPACE(_TIMESPEC.size)
_LATENCY_SAMPLES = 4096
_REOPEN_INTERVAL = 1.0


# -- classic BPF ---------------------------------------------------------------------------


class _SockFilter(ctypes.Structure):
    _fields_ = [
        ("code", ctypes.c_uint16),
        ("jt", ctypes.c_uint8),
        ("jf", ctypes.c_uint8),
        ("k", ctypes.c_uint32),
    ]


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_uint16), ("filter", ctypes.POINTER(_SockFilter))]


_LD_W, _LD_H, _LD_B = 0x20, 0x28, 0x30  # BPF_LD | size | BPF_ABS
_JEQ, _RET = 0x15, 0x06
_SKF_AD_PKTTYPE = 0xFFFFF000 + 4  # SKF_AD_OFF + SKF_AD_PKTTYPE


def _requests_filter() -> list[tuple[int, int, int, int]]:
    """Pass incoming ARP requests and ICMPv6 NS (next header 58, no extension headers).

    (code, jt, jf, k); jumps count from the next instruction.
    """
    return [
        (_LD_W, 0, 0, _SKF_AD_PKTTYPE),  # 0
        (_JEQ, 10, 0, PACKET_OUTGOING),  # 1: our own transmissions -> 12 drop
        (_LD_H, 0, 0, frames.OFF_ETHERTYPE),  # 2
        (_JEQ, 0, 2, frames.ETH_P_ARP),  # 3 -> 4 | 6
        (_LD_H, 0, 0, frames.OFF_ARP_OP),  # 4
        (_JEQ, 5, 6, frames.ARP_REQUEST),  # 5 -> 11 accept | 12 drop
        (_JEQ, 0, 5, frames.ETH_P_IPV6),  # 6 -> 7 | 12 drop
        (_LD_B, 0, 0, frames.OFF_IPV6_NEXT_HEADER),  # 7
        (_JEQ, 0, 3, frames.ICMPV6),  # 8 -> 9 | 12 drop
        (_LD_B, 0, 0, frames.OFF_ICMPV6_TYPE),  # 9
        (_JEQ, 0, 1, frames.ND_NS),  # 10 -> 11 accept | 12 drop
        (_RET, 0, 0, 0x40000),  # 11: accept the whole frame
        (_RET, 0, 0, 0),  # 12: drop
    ]


#: An idle socket: nothing is queued, the thread is never woken.
_DROP_ALL = [(_RET, 0, 0, 0)]


def _attach_filter(sock: socket.socket, prog: list[tuple[int, int, int, int]]) -> None:
    insns = (_SockFilter * len(prog))(*(_SockFilter(*i) for i in prog))
    fprog = _SockFprog(len(prog), ctypes.cast(insns, ctypes.POINTER(_SockFilter)))
    # The kernel copies the program during setsockopt; ``insns`` outlives the call.
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, bytes(fprog))


def _membership(sock: socket.socket, ifindex: int, kind: int, mac: bytes, add: bool) -> None:
    mreq = struct.pack("iHH8s", ifindex, kind, len(mac), mac)
    opt = PACKET_ADD_MEMBERSHIP if add else PACKET_DROP_MEMBERSHIP
    sock.setsockopt(SOL_PACKET, opt, mreq)


# -- the responder ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Held:
    ifname: str
    ip: IPAddress
    mac: bytes
    source: IPv6Address | None  # IPv6: source address of our NAs


@dataclass(frozen=True)
class ResponderStats:
    arp_replies: int
    neighbour_advertisements: int
    conflicts: int  # gratuitous ARP / unsolicited NA from someone else for a held VIP
    errors: int
    samples: int
    latency_p50: float | None  # seconds, kernel receive timestamp -> reply sent
    latency_p99: float | None
    latency_max: float | None


class _Iface:
    """The kept socket of one interface and what it has joined."""

    def __init__(self, ifname: str) -> None:
        self.ifname = ifname
        self.sock: socket.socket | None = None
        self.ifindex = 0
        self.mac = frames.ZERO_MAC
        self.groups: collections.Counter[bytes] = collections.Counter()  # PACKET_MR_MULTICAST
        self.unicast: collections.Counter[bytes] = collections.Counter()  # PACKET_MR_UNICAST
        self.broken_since: float | None = None
        self.active = True  # filter passes requests (False: drops everything)

    def set_active(self, active: bool) -> None:
        if active != self.active and self.sock is not None:
            _attach_filter(self.sock, _requests_filter() if active else _DROP_ALL)
        self.active = active

    def open(self) -> socket.socket:
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        try:
            _attach_filter(sock, _requests_filter() if self.active else _DROP_ALL)
            sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
            sock.bind((self.ifname, ETH_P_ALL))
            sock.setblocking(False)
            name = sock.getsockname()
            ifindex = socket.if_nametoindex(self.ifname)
            for mac in self.groups:
                _membership(sock, ifindex, PACKET_MR_MULTICAST, mac, True)
            for mac in self.unicast:
                _membership(sock, ifindex, PACKET_MR_UNICAST, mac, True)
        except OSError as exc:
            sock.close()
            why = "no such interface" if exc.errno in (errno.ENODEV, errno.ENXIO) else exc.strerror
            raise NetError(f"cannot open a packet socket on {self.ifname}: {why}") from exc
        self.sock, self.ifindex, self.mac = sock, ifindex, bytes(name[4][:6])
        self.broken_since = None
        return sock

    def join(self, counter: collections.Counter[bytes], kind: int, mac: bytes) -> None:
        if counter[mac] == 0 and self.sock is not None:
            _membership(self.sock, self.ifindex, kind, mac, True)
        counter[mac] += 1

    def leave(self, counter: collections.Counter[bytes], kind: int, mac: bytes) -> None:
        counter[mac] -= 1
        if counter[mac] <= 0:
            del counter[mac]
            if self.sock is not None:
                # OSError: the interface is gone, and the membership with it.
                with contextlib.suppress(OSError):
                    _membership(self.sock, self.ifindex, kind, mac, False)


class Responder:
    """Answers ARP requests and neighbour solicitations for held, unbound VIPs.

    Thread-safe; ``hold``/``release`` return in microseconds and never wait for the
    network. Errors that concern the caller's request (no such interface, no usable IPv6
    source address) are raised from ``hold`` as NetError; errors of the thread later on
    (an interface deleted and re-created) are logged and repaired: the socket is reopened
    by name, with its memberships, every second until that works.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._held: dict[tuple[str, IPAddress], Held] = {}
        self._ifaces: dict[str, _Iface] = {}
        self._by_fd: dict[int, _Iface] = {}
        self._closing: list[socket.socket] = []
        self._latencies: collections.deque[int] = collections.deque(maxlen=_LATENCY_SAMPLES)
        self._counts = collections.Counter[str]()
        self._closed = False
        self._epoll = select.epoll()
        self._wake = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._epoll.register(self._wake, select.EPOLLIN)
        self._thread = threading.Thread(target=self._run, name="haagent-responder", daemon=True)
        self._thread.start()

    # -- public API ----------------------------------------------------------------------

    def hold(self, ifname: str, ip: IPAddress | str, mac: str) -> None:
        """Answer for ``ip`` on ``ifname`` with ``mac`` from now on (idempotent).

        Holding an IP again with another MAC switches the answers to the new MAC.
        ``mac`` is normally the interface's own: another MAC is answered with (and added
        to the NIC's unicast filter so that unicast probes to it arrive), but the kernel
        drops IP traffic to a MAC that is not the interface's unless something else (XDP,
        a macvlan) takes it.
        """
        addr = ip_address(ip) if isinstance(ip, str) else ip
        try:
            raw = frames.mac_bytes(mac)
        except ValueError:
            raise NetError(f"cannot answer for {addr}: bad MAC address {mac!r}") from None
        if raw[0] & 1 or raw == frames.ZERO_MAC:
            raise NetError(f"cannot answer for {addr} with {mac}: not a unicast MAC address")
        source = ipv6_source(ifname, addr) if isinstance(addr, IPv6Address) else None
        with self._lock:
            if self._closed:
                raise NetError("the responder is closed")
            iface = self._ifaces.get(ifname)
            new_iface = iface is None
            if iface is None:
                iface = _Iface(ifname)
                iface.open()
            old = self._held.get((ifname, addr))
            held = Held(ifname, addr, raw, source)
            if old == held:
                return
            try:
                self._join(iface, held)  # join the new before leaving the old: no gap
                if old is not None:
                    self._unjoin(iface, old)
                iface.set_active(True)
            except OSError as exc:
                if new_iface and iface.sock is not None:
                    iface.sock.close()
                raise NetError(f"cannot answer for {addr} on {ifname}: {exc.strerror}") from exc
            self._held[(ifname, addr)] = held
            if new_iface:
                self._add_iface(iface)

    def release(self, ifname: str, ip: IPAddress | str) -> bool:
        """Stop answering for ``ip`` on ``ifname``; True if it was held.

        When this returns no further answer for it is sent. Its solicited-node group is
        left (unless another held VIP shares it); once nothing on the interface is held,
        its socket stays open but drops everything in the kernel.
        """
        addr = ip_address(ip) if isinstance(ip, str) else ip
        with self._lock:
            held = self._held.pop((ifname, addr), None)
            if held is None:
                return False
            iface = self._ifaces[ifname]
            self._unjoin(iface, held)
            if not any(key[0] == ifname for key in self._held):
                with contextlib.suppress(OSError):  # a broken socket is reopened idle
                    iface.set_active(False)
            return True

    def held(self) -> dict[tuple[str, IPAddress], str]:
        """(ifname, ip) -> MAC of everything answered for."""
        with self._lock:
            return {key: frames.mac_str(h.mac) for key, h in self._held.items()}

    def stats(self) -> ResponderStats:
        with self._lock:
            lat = sorted(self._latencies)
            counts = dict(self._counts)

        def pct(p: float) -> float | None:
            return lat[min(len(lat) - 1, int(p * len(lat)))] / 1e9 if lat else None

        return ResponderStats(
            arp_replies=counts.get("arp", 0),
            neighbour_advertisements=counts.get("na", 0),
            conflicts=counts.get("conflict", 0),
            errors=counts.get("error", 0),
            samples=len(lat),
            latency_p50=statistics.median(lat) / 1e9 if lat else None,
            latency_p99=pct(0.99),
            latency_max=lat[-1] / 1e9 if lat else None,
        )

    def close(self) -> None:
        """Stop the thread and close every socket; idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._held.clear()
        os.eventfd_write(self._wake, 1)
        self._thread.join(5)
        with self._lock:
            for iface in self._ifaces.values():
                if iface.sock is not None:
                    iface.sock.close()
            self._ifaces.clear()
            self._by_fd.clear()
            for sock in self._closing:
                sock.close()
            self._closing.clear()
        self._epoll.close()
        os.close(self._wake)

    def __enter__(self) -> Responder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- bookkeeping (caller holds the lock) ---------------------------------------------

    def _join(self, iface: _Iface, held: Held) -> None:
        if isinstance(held.ip, IPv6Address):
            group = frames.multicast_mac(frames.solicited_node(held.ip))
            iface.join(iface.groups, PACKET_MR_MULTICAST, group)
        if held.mac != iface.mac:
            iface.join(iface.unicast, PACKET_MR_UNICAST, held.mac)

    def _unjoin(self, iface: _Iface, held: Held) -> None:
        if isinstance(held.ip, IPv6Address):
            group = frames.multicast_mac(frames.solicited_node(held.ip))
            iface.leave(iface.groups, PACKET_MR_MULTICAST, group)
        if held.mac in iface.unicast:
            iface.leave(iface.unicast, PACKET_MR_UNICAST, held.mac)

    def _add_iface(self, iface: _Iface) -> None:
        self._ifaces[iface.ifname] = iface
        if iface.sock is not None:
            self._by_fd[iface.sock.fileno()] = iface
            self._epoll.register(iface.sock.fileno(), select.EPOLLIN)

    def _detach_sock(self, iface: _Iface) -> None:
        """Take the socket out of the poll set; the thread closes it (never under its feet)."""
        sock, iface.sock = iface.sock, None
        if sock is not None:
            self._by_fd.pop(sock.fileno(), None)
            with contextlib.suppress(OSError, ValueError):
                self._epoll.unregister(sock.fileno())
            self._closing.append(sock)
            os.eventfd_write(self._wake, 1)

    # -- the thread ------------------------------------------------------------------------

    def _run(self) -> None:
        timeout: float | None = None
        while True:
            try:
                events = self._epoll.poll(timeout if timeout is not None else -1)
            except OSError as exc:
                if exc.errno == errno.EINTR:
                    continue
                log.error("responder: epoll failed: %s", exc)
                return
            for fd, _ in events:
                if fd == self._wake:
                    with contextlib.suppress(BlockingIOError):
                        os.eventfd_read(self._wake)
                    continue
                iface = self._by_fd.get(fd)
                if iface is not None and iface.sock is not None:
                    self._drain(iface, iface.sock)
            with self._lock:
                if self._closed:
                    return
                for sock in self._closing:
                    sock.close()
                self._closing.clear()
                timeout = self._repair()

    def _repair(self) -> float | None:
        """Reopen sockets of interfaces that went away; the next poll timeout (seconds)."""
        now = time.monotonic()
        broken = [i for i in self._ifaces.values() if i.broken_since is not None]
        for iface in broken:
            assert iface.broken_since is not None
            if now - iface.broken_since < _REOPEN_INTERVAL:
                continue
            try:
                iface.open()
            except NetError as exc:
                iface.broken_since = now
                log.debug("responder: %s", exc)
                continue
            self._add_iface(iface)
            log.warning("responder: %s is back, answering on it again", iface.ifname)
        return _REOPEN_INTERVAL if any(i.broken_since for i in self._ifaces.values()) else None

    def _drain(self, iface: _Iface, sock: socket.socket) -> None:
        while True:
            try:
                frame, anc, _flags, addr = sock.recvmsg(2048, _ANCBUF)
            except BlockingIOError:
                return
            except OSError as exc:
                self._sock_error(iface, sock, exc)
                return
            if addr[2] == PACKET_OUTGOING:
                continue
            stamp = 0
            for level, kind, data in anc:
                if level == socket.SOL_SOCKET and kind == SCM_TIMESTAMPNS:
                    sec, nsec = _TIMESPEC.unpack(data[: _TIMESPEC.size])
                    stamp = sec * 1_000_000_000 + nsec
            try:
                self._answer(iface, sock, frame, stamp)
            except Exception:  # one odd frame must never stop the responder
                log.exception("responder: cannot handle a frame on %s", iface.ifname)
                with self._lock:
                    self._counts["error"] += 1

    def _sock_error(self, iface: _Iface, sock: socket.socket, exc: OSError) -> None:
        """ENETDOWN: the interface went down (the socket resumes when it comes up again)
        or was deleted (the socket is dead for good: reopen it by name)."""
        with self._lock:
            if iface.sock is not sock:
                return
            try:
                same = socket.if_nametoindex(iface.ifname) == iface.ifindex
            except OSError:
                same = False
            if exc.errno == errno.ENETDOWN and same:
                log.warning("responder: %s is down", iface.ifname)
                return
            log.warning("responder: socket on %s failed (%s), reopening", iface.ifname, exc)
            self._counts["error"] += 1
            self._detach_sock(iface)
            iface.broken_since = time.monotonic() - _REOPEN_INTERVAL
            try:
                iface.open()
                self._add_iface(iface)
            except NetError:
                iface.broken_since = time.monotonic()

    def _held_here(self, iface: _Iface, sock: socket.socket, ip: IPAddress) -> Held | None:
        """What is held for ``ip`` on ``iface``, if ``sock`` still answers for it there.

        Caller holds the lock; a socket replaced meanwhile (reopened after a failure) must
        not answer from a frame it read before.
        """
        held = self._held.get((iface.ifname, ip))
        return held if iface.sock is sock else None

    def _answer(self, iface: _Iface, sock: socket.socket, frame: bytes, stamp: int) -> None:
        arp = frames.parse_arp(frame)
        if arp is not None:
            if arp.op != frames.ARP_REQUEST:
                return
            with self._lock:
                held = self._held_here(iface, sock, arp.tpa)
                if held is None:
                    return
                if arp.spa == arp.tpa:  # a gratuitous ARP: someone else claims our VIP
                    self._conflict(held, arp.sha)
                    return
                if arp.eth_dst not in (frames.BROADCAST, held.mac):
                    return  # unicast to somebody else (seen in promiscuous mode)
                self._send(sock, frames.arp_answer(arp, held.mac), stamp, "arp")
            return
        nd = frames.parse_nd(frame)
        if nd is None or nd.type != frames.ND_NS:
            return
        with self._lock:
            held = self._held_here(iface, sock, nd.target)
            if held is None:
                return
            assert held.source is not None
            # Only questions addressed to the VIP: its solicited-node group (resolution,
            # DAD) or the VIP itself (unicast reachability probe), at a MAC we listen on.
            if nd.eth_dst not in (held.mac, frames.multicast_mac(nd.dst)) or not (
                nd.dst == nd.target or nd.dst == frames.solicited_node(nd.target)
            ):
                return
            self._send(sock, frames.na_answer(nd, held.mac, held.source), stamp, "na")

    def _send(self, sock: socket.socket, frame: bytes, stamp: int, what: str) -> None:
        try:
            sock.send(frame)
        except OSError as exc:
            self._counts["error"] += 1
            log.warning("responder: cannot send %s: %s", what, exc.strerror)
            return
        self._counts[what] += 1
        if stamp:
            self._latencies.append(time.time_ns() - stamp)

    def _conflict(self, held: Held, mac: bytes) -> None:
        self._counts["conflict"] += 1
        if mac != held.mac:
            log.warning(
                "responder: %s announces %s held here (%s) on %s",
                frames.mac_str(mac),
                held.ip,
                frames.mac_str(held.mac),
                held.ifname,
            )


# -- probing -------------------------------------------------------------------------------


def who_answers(
    ifname: str,
    ip: IPAddress,
    *,
    eth_dst: str | None = None,
    timeout: float = 0.2,
    first: bool = False,
) -> list[str]:
    """MACs that answer for ``ip`` on ``ifname``, asked without disturbing any cache.

    IPv4 asks with an RFC 5227 ARP probe (sender IP 0.0.0.0), IPv6 with a DAD-style NS
    (source ::, to the solicited-node group), so no receiver learns anything about us.
    ``eth_dst`` sends the question to one MAC only (a virtual MAC: "is it live anywhere
    else?"); by default it is broadcast / the solicited-node group. Waits ``timeout``
    seconds, or until the first answer with ``first``. Our own transmissions never count.
    """
    proto = frames.ETH_P_ARP if isinstance(ip, IPv4Address) else frames.ETH_P_IPV6
    try:
        dst = frames.mac_bytes(eth_dst) if eth_dst else None
    except ValueError as exc:
        raise NetError(f"cannot ask who has {ip} on {ifname}: {exc}") from None
    try:
        # Protocol 0, then bind with the protocol: a socket created with one is already
        # receiving, and binding it waits for an RCU grace period (10-16 ms measured).
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
    except OSError as exc:
        raise NetError(f"cannot ask who has {ip} on {ifname}: {exc.strerror}") from exc
    with sock:
        try:
            sock.bind((ifname, proto))  # CPython applies htons() here
            own = bytes(sock.getsockname()[4][:6])
            if isinstance(ip, IPv4Address):
                sock.send(frames.arp_probe(own, ip, eth_dst=dst))
            else:
                sock.send(frames.dad_probe(own, ip, eth_dst=dst))
        except OSError as exc:
            raise NetError(f"cannot ask who has {ip} on {ifname}: {exc.strerror}") from exc
        found: list[str] = []
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            sock.settimeout(left)
            try:
                frame, addr = sock.recvfrom(2048)
            except TimeoutError:
                break
            if addr[2] == PACKET_OUTGOING:
                continue
            mac: bytes | None = None
            if isinstance(ip, IPv4Address):
                arp = frames.parse_arp(frame)
                if arp and arp.op == frames.ARP_REPLY and arp.spa == ip:
                    mac = arp.sha
            else:
                nd = frames.parse_nd(frame)
                if nd and nd.type == frames.ND_NA and nd.target == ip:
                    mac = nd.lladdr or nd.eth_src
            if mac is not None and frames.mac_str(mac) not in found:
                found.append(frames.mac_str(mac))
                if first:
                    break
        return found

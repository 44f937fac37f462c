"""Does any host on this segment still answer for these addresses?

Asked by a new holder after a quorum verdict and before it binds a VIP: the old holder's
agent and fence may both be dead (SIGKILLed) while its host is up, and then its kernel still
has the address and answers for it. The question is put without teaching anybody anything:

* IPv4: an RFC 5227 ARP probe per address (sender IP 0.0.0.0, broadcast). A host that has
  the address answers it with a reply unicast to us; an ARP reply *or request* whose sender
  IP is the address, from a MAC that is not ours, means it is in use.
* IPv6: a DAD-form neighbour solicitation per address (source ``::``, no SLLA option, to the
  solicited-node group). A host that has the address defends it with a neighbour
  advertisement to all-nodes (``ff02::1``, RFC 4861 7.2.4; Linux does so even for an
  address added with ``nodad``). Any valid NA (hop limit 255, ICMPv6 checksum right) for the
  address, from a MAC that is not ours, means in use.

Neither probe carries a sender address, so no neighbour cache anywhere learns from it.

``Prober(ifname)`` keeps one ``AF_PACKET`` socket on the interface, the way the responder
does: opened with protocol 0, given a filter that drops everything, then bound to ETH_P_ALL,
so it never queues a frame between probes. ``probe()`` swaps in a classic BPF program that
passes only incoming ARP whose sender IP is one of the addresses and incoming NAs whose
target ends in one of theirs (so unrelated traffic costs nothing in Python), sends the
probes, waits, and swaps the drop-all filter back. The socket is also a member of the
all-nodes group (``PACKET_MR_MULTICAST``), so a NIC with a multicast filter delivers the
defending NAs even where the host's own IPv6 has not joined it; the kernel drops the
membership with the socket. Keeping the socket matters: closing a packet socket waits for an
RCU grace period (docs/net.md has the figures), which the module-level ``probe()``, opening
and closing one per call, pays every time.

In vmac mode the probe goes out of the parent interface: a packet socket on the parent sees
every frame the parent receives, also those a macvlan child takes over. The answer then
comes from the old holder's virtual MAC, the same MAC the new holder's own vmac has: never
put the virtual MAC in ``own_macs``.

Errors of the interface or the socket (no such interface, down, no permission) are raised as
``ProbeError``, an ``OSError`` whose ``str()`` is one line. Bad arguments raise ValueError.
"""

from __future__ import annotations

import contextlib
import errno
import math
import select
import socket
import threading
import time
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address
from typing import Self

from haagent.net import frames
from haagent.net.responder import (
    _DROP_ALL,
    _JEQ,
    _LD_B,
    _LD_H,
    _LD_W,
    _RET,
    _SKF_AD_PKTTYPE,
    ETH_P_ALL,
    PACKET_MR_MULTICAST,
    PACKET_OUTGOING,
    _attach_filter,
    _membership,
)

IPAddress = IPv4Address | IPv6Address
Insn = tuple[int, int, int, int]  # classic BPF: (code, jt, jf, k)

# Offsets into an untagged Ethernet frame for the filter.
OFF_ARP_SPA = frames.ETH_HLEN + 14
OFF_NA_TARGET_LOW = frames.OFF_ICMPV6_TYPE + 8 + 12  # last 4 bytes of the NA's target
#: Addresses of one family the filter compares one by one (every comparison is a
#: conditional jump of at most 255 instructions); with more, the filter passes every ARP /
#: every NA and parsing sorts them out.
FILTER_MAX = 100
_ACCEPT = 0x40000
_FRAME_CACHE = 4096  # probe frames a Prober keeps (1-3 us each to build)
_ARPHRD_ETHER = 1


class ProbeError(OSError):
    """The interface or the socket failed; ``str()`` is the one-line message."""

    def __str__(self) -> str:
        return str(self.strerror)


@dataclass(frozen=True)
class InUse:
    address: IPAddress
    mac: str  # the answering MAC, "aa:bb:cc:dd:ee:ff"
    elapsed: float  # seconds from the first probe sent to the answer read


# -- pure parts ----------------------------------------------------------------------------


def check_addresses(addresses: Iterable[IPAddress]) -> frozenset[IPAddress]:
    """The addresses as a set; ValueError for one that no host can have."""
    out = set()
    for a in addresses:
        # Integer tests: ipaddress's is_multicast & co. cost ~2 us each.
        if isinstance(a, IPv4Address):
            n = int(a)
            bad = n == 0 or n >> 28 == 0xE or n == 0xFFFFFFFF
        elif isinstance(a, IPv6Address):
            bad = int(a) == 0 or a.packed[0] == 0xFF
        else:
            raise ValueError(f"not an IP address: {a!r}")
        if bad:
            raise ValueError(f"cannot probe for {a}: not a unicast address")
        out.add(a)
    return frozenset(out)


def probe_frames(mac: bytes, addresses: Iterable[IPAddress]) -> list[bytes]:
    """The probes for ``addresses``, sent from ``mac``: ARP probes and DAD-form NSs."""
    return [
        frames.arp_probe(mac, a) if isinstance(a, IPv4Address) else frames.dad_probe(mac, a)
        for a in addresses
    ]


def _unicast(mac: bytes) -> bool:
    return len(mac) == 6 and not mac[0] & 1 and mac != frames.ZERO_MAC


def match_answer(
    frame: bytes, wanted: Collection[IPAddress], ignore: Collection[bytes]
) -> tuple[IPAddress, bytes] | None:
    """(address, MAC) if ``frame`` shows a host using one of ``wanted``, else None.

    An ARP request or reply with the address as sender IP, or a valid neighbour
    advertisement for it as target; the MAC is the ARP sender hardware address, or the NA's
    target link-layer address option (its Ethernet source without one). Frames whose MAC or
    Ethernet source is in ``ignore`` (ours) do not count, nor do ones with a multicast or
    zero MAC. Never raises for any ``bytes``.
    """
    if frame[12:14] == frames.ETH_P_ARP.to_bytes(2, "big"):
        arp = frames.parse_arp(frame)
        if arp is None or arp.op not in (frames.ARP_REQUEST, frames.ARP_REPLY):
            return None
        address: IPAddress = arp.spa
        mac = arp.sha
    else:
        nd = frames.parse_nd(frame)
        if nd is None or nd.type != frames.ND_NA:
            return None
        address, mac = nd.target, nd.lladdr or nd.eth_src
    if address not in wanted or not _unicast(mac) or mac in ignore or frame[6:12] in ignore:
        return None
    return address, mac


def _assemble(code: list[tuple[int, int | str, int | str, int] | str]) -> list[Insn]:
    """Resolve label jumps (strings) into relative ones; ValueError if one is too long."""
    labels: dict[str, int] = {}
    insns: list[tuple[int, int | str, int | str, int]] = []
    for item in code:
        if isinstance(item, str):
            labels[item] = len(insns)
        else:
            insns.append(item)
    out: list[Insn] = []
    for pc, (op, jt, jf, k) in enumerate(insns):
        rel = [j if isinstance(j, int) else labels[j] - pc - 1 for j in (jt, jf)]
        if not all(0 <= j <= 255 for j in rel):
            raise ValueError(f"jump out of range at instruction {pc}")
        out.append((op, rel[0], rel[1], k))
    return out


def answer_filter(addresses: Collection[IPAddress]) -> list[Insn]:
    """The classic BPF program passing what could be an answer for ``addresses``.

    Incoming frames only (our own transmissions never); ARP whose sender IP is one of the
    IPv4 addresses; ICMPv6 NAs (no extension headers) whose target's low 32 bits are those
    of one of the IPv6 addresses. A family with more than FILTER_MAX addresses passes all
    of its ARP / NAs; a family without any passes none.
    """
    v4 = sorted({int(a) for a in addresses if isinstance(a, IPv4Address)})
    v6 = sorted({int.from_bytes(a.packed[12:], "big") for a in addresses if a.version == 6})
    # The drop sits right after the header, so the header's jumps to it stay short
    # whatever the length of the blocks; the header's end jumps over it.
    code: list[tuple[int, int | str, int | str, int] | str] = [
        (_LD_W, 0, 0, _SKF_AD_PKTTYPE),
        (_JEQ, "drop", 0, PACKET_OUTGOING),
        (_LD_H, 0, 0, frames.OFF_ETHERTYPE),
        (_JEQ, "arp", 0, frames.ETH_P_ARP),
        (_JEQ, 0, "drop", frames.ETH_P_IPV6),
        (_LD_B, 0, 0, frames.OFF_IPV6_NEXT_HEADER),
        (_JEQ, 0, "drop", frames.ICMPV6),
        (_LD_B, 0, 0, frames.OFF_ICMPV6_TYPE),
        (_JEQ, "nd", "drop", frames.ND_NA),
        "drop",
        (_RET, 0, 0, 0),
    ]

    def block(name: str, off: int, keys: list[int]) -> None:
        code.append(name)
        if not keys:
            code.append((_RET, 0, 0, 0))
        elif len(keys) > FILTER_MAX:
            code.append((_RET, 0, 0, _ACCEPT))
        else:
            code.append((_LD_W, 0, 0, off))
            code.extend((_JEQ, f"{name}-yes", 0, key) for key in keys)
            code.extend([(_RET, 0, 0, 0), f"{name}-yes", (_RET, 0, 0, _ACCEPT)])

    block("nd", OFF_NA_TARGET_LOW, v6)
    block("arp", OFF_ARP_SPA, v4)
    return _assemble(code)


# -- the socket ----------------------------------------------------------------------------


def _reason(exc: OSError) -> str:
    if exc.errno in (errno.ENODEV, errno.ENXIO):
        return "no such interface"
    if exc.errno == errno.ENETDOWN:
        return "the interface is down"
    if exc.errno in (errno.EPERM, errno.EACCES):
        return "not permitted (needs CAP_NET_RAW)"
    return exc.strerror or str(exc)


def _error(exc: OSError, what: str) -> ProbeError:
    return ProbeError(exc.errno or errno.EIO, f"{what}: {_reason(exc)}")


def _close_later(sock: socket.socket) -> None:
    """Close ``sock`` in a daemon thread: a packet socket's close waits for an RCU grace
    period (8-16 ms measured), which the caller's loop need not sit through."""
    threading.Thread(target=sock.close, name="haagent-inuse-close", daemon=True).start()


class Prober:
    """A kept packet socket on ``ifname`` that asks whether addresses are in use.

    Opening raises ProbeError (no such interface, not Ethernet, no permission). Calls are
    serialised by a lock; ``close()`` is idempotent. An interface deleted and re-created
    under the same name is found again by the next ``probe()`` after the one that failed.
    """

    def __init__(self, ifname: str) -> None:
        self.ifname = ifname
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._poll = select.poll()
        self._mac = frames.ZERO_MAC
        self._frames: dict[IPAddress, bytes] = {}  # probe frames by address
        self._closed = False
        self._open()

    @property
    def mac(self) -> str:
        """The interface's MAC, as the socket saw it when opened or last probed."""
        return frames.mac_str(self._mac)

    def _open(self) -> socket.socket:
        what = f"cannot probe on {self.ifname}"
        try:
            sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        except OSError as exc:
            raise _error(exc, what) from None
        try:
            _attach_filter(sock, _DROP_ALL)  # before the bind: nothing unfiltered is queued
            sock.bind((self.ifname, ETH_P_ALL))
            name = sock.getsockname()
            if name[3] != _ARPHRD_ETHER:
                raise ProbeError(errno.EINVAL, f"{what}: not an Ethernet interface")
            ifindex = socket.if_nametoindex(self.ifname)
            _membership(sock, ifindex, PACKET_MR_MULTICAST, frames.ALL_NODES_MAC, True)
            sock.setblocking(False)
        except ProbeError:
            sock.close()
            raise
        except OSError as exc:
            sock.close()
            raise _error(exc, what) from None
        self._sock, self._mac = sock, bytes(name[4][:6])
        self._frames.clear()  # built with the MAC of the socket before, if any
        self._poll = select.poll()
        self._poll.register(sock, select.POLLIN)
        return sock

    def _drop(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            _close_later(sock)

    def close(self, *, wait: bool = True) -> None:
        """Close the socket; idempotent. ``wait=False`` leaves the close itself (an RCU
        grace period, 8-16 ms measured) to a daemon thread: the socket filters everything
        out meanwhile."""
        with self._lock:
            self._closed = True
            sock, self._sock = self._sock, None
        if sock is None:
            return
        if wait:
            sock.close()
        else:
            _close_later(sock)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def probe(
        self,
        addresses: Iterable[IPAddress],
        *,
        timeout: float = 0.02,
        tries: int = 2,
        own_macs: Collection[str] = (),
    ) -> InUse | None:
        """The first answer for any of ``addresses``, or None after ``tries`` rounds.

        A round sends one probe per address, then waits ``timeout`` seconds from its start;
        the first answer ends the call. ``own_macs`` ("aa:bb:...", besides the interface's
        own MAC, which never counts) are ignored as answerers. Returns within
        tries x timeout plus the sending and ~1 ms of poll granularity per round.
        """
        wanted = check_addresses(addresses)
        if not timeout >= 0 or tries < 1:
            raise ValueError(f"need timeout >= 0 and tries >= 1, not {timeout} and {tries}")
        extra = frozenset(frames.mac_bytes(m) for m in own_macs)
        if not wanted:
            return None
        with self._lock:
            if self._closed:
                raise ProbeError(errno.EBADF, f"cannot probe on {self.ifname}: prober closed")
            sock = self._sock if self._sock is not None else self._open()
            try:
                return self._rounds(sock, wanted, extra, timeout, tries)
            except OSError as exc:
                if exc.errno in (errno.ENODEV, errno.ENXIO):
                    self._drop()  # bound to a dead ifindex: reopen by name next time
                if isinstance(exc, ProbeError):
                    raise
                raise _error(exc, f"cannot probe on {self.ifname}") from None
            finally:
                if self._sock is not None:
                    with contextlib.suppress(OSError):
                        _attach_filter(self._sock, _DROP_ALL)
                    self._discard(self._sock)

    def _discard(self, sock: socket.socket) -> None:
        """Empty the queue, and a pending error with it (ENETDOWN of a past link change)."""
        for _ in range(10_000):
            try:
                sock.recv(1)
            except BlockingIOError:
                return
            except OSError:
                continue

    def _rounds(
        self,
        sock: socket.socket,
        wanted: frozenset[IPAddress],
        own_macs: frozenset[bytes],
        timeout: float,
        tries: int,
    ) -> InUse | None:
        mac = bytes(sock.getsockname()[4][:6])  # the interface's MAC now (it may change)
        if len(mac) == 6 and mac != self._mac:
            self._mac = mac
            self._frames.clear()
        ignore = own_macs | {self._mac}
        self._discard(sock)
        _attach_filter(sock, answer_filter(wanted))
        if len(self._frames) + len(wanted) > _FRAME_CACHE:
            self._frames.clear()
        cache = self._frames
        for a in wanted - cache.keys():
            cache[a] = probe_frames(self._mac, [a])[0]
        probes = [cache[a] for a in wanted]
        start = time.monotonic()
        for _ in range(tries):
            deadline = time.monotonic() + timeout
            for frame in probes:
                self._send(sock, frame, deadline)
            while True:
                found = self._read(sock, wanted, ignore)
                if found is not None:
                    return InUse(found[0], frames.mac_str(found[1]), time.monotonic() - start)
                left = deadline - time.monotonic()
                if left <= 0 or not self._poll.poll(math.ceil(left * 1000)):
                    break
        return None

    def _send(self, sock: socket.socket, frame: bytes, deadline: float) -> None:
        while True:
            try:
                sock.send(frame)
                return
            except BlockingIOError:
                # The socket's send buffer is full (frames not yet transmitted): wait for
                # room until the round ends, then give up on the round.
                left = deadline - time.monotonic()
                out = select.poll()
                out.register(sock, select.POLLOUT)
                if left <= 0 or not out.poll(math.ceil(left * 1000)):
                    raise ProbeError(
                        errno.ENOBUFS,
                        f"cannot probe on {self.ifname}: the send queue stayed full",
                    ) from None

    def _read(
        self, sock: socket.socket, wanted: frozenset[IPAddress], ignore: frozenset[bytes]
    ) -> tuple[IPAddress, bytes] | None:
        while True:
            try:
                frame, addr = sock.recvfrom(2048)
            except BlockingIOError:
                return None
            if addr[2] == PACKET_OUTGOING:
                continue
            found = match_answer(frame, wanted, ignore)
            if found is not None:
                return found


def probe(
    ifname: str,
    addresses: Iterable[IPAddress],
    *,
    timeout: float = 0.02,
    tries: int = 2,
    own_macs: Collection[str] = (),
) -> InUse | None:
    """``Prober(ifname).probe(...)`` with a socket for this call only.

    The socket's close, which waits for an RCU grace period, is left to a short-lived
    thread, so the call returns as soon as the answer is in; a kept ``Prober`` also saves
    the opening (docs/net.md, "Is the address still in use?").
    """
    prober = Prober(ifname)
    try:
        return prober.probe(addresses, timeout=timeout, tries=tries, own_macs=own_macs)
    finally:
        prober.close(wait=False)

"""The fence's address removal: RTM_DELADDR and one RTM_GETADDR dump on a raw netlink socket.

That is all the fence asks of the kernel, so it speaks rtnetlink itself (``struct``, no
pyroute2): pyroute2 alone costs ~20 MB of RSS and ~160 ms of import in a process that must
stay small and start fast. Requests are answered in order on one socket; every receive is
bounded by the socket's timeout and every loop by a count or a deadline.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address
from typing import Self

from haagent.addrmark import IFA_PROTO, kernel_marks, owned
from haagent.fence.state import Address

# linux/netlink.h, linux/rtnetlink.h, linux/if_addr.h
NETLINK_ROUTE = 0
NLMSG_ERROR = 2
NLMSG_DONE = 3
RTM_NEWADDR = 20
RTM_DELADDR = 21
RTM_GETADDR = 22
NLM_F_REQUEST = 0x1
NLM_F_ACK = 0x4
NLM_F_DUMP = 0x300
IFA_ADDRESS = 1
IFA_LOCAL = 2

_HEADER = struct.Struct("=IHHII")  # nlmsghdr: length, type, flags, sequence, port id
_IFADDRMSG = struct.Struct("=BBBBI")  # family, prefix length, flags, scope, interface index
_ATTR = struct.Struct("=HH")  # rtattr: length, type
_ERRNO = struct.Struct("=i")  # nlmsgerr.error: 0 for an ack, else -errno
_RECV = 1 << 16  # above the kernel's largest dump chunk (32 KiB): nothing is truncated

# The address is not there (any more): someone else removed it, or its interface is gone.
_ABSENT = (errno.EADDRNOTAVAIL, errno.ENOENT, errno.ENODEV)


class NetlinkError(Exception):
    """A netlink request failed; the message is the cause, worded by the kernel's errno."""


@dataclass(frozen=True)
class Outcome:
    """What :meth:`AddressRemover.remove` did to one address."""

    address: Address
    removed: bool  # at least one entry of its IP was deleted from its interface
    error: str | None = None  # why (some of) it could not be removed


def _align(n: int) -> int:
    return (n + 3) & ~3


def _attr(kind: int, data: bytes) -> bytes:
    raw = _ATTR.pack(_ATTR.size + len(data), kind) + data
    return raw + b"\0" * (_align(len(raw)) - len(raw))


def _records(
    data: bytes, header: struct.Struct, offset: int = 0
) -> Iterator[tuple[tuple[int, ...], bytes]]:
    """(header fields, payload) of each length-led, 4-byte-aligned record from ``offset``:
    the messages of a datagram (nlmsghdr) and the attributes of a message (rtattr) alike.
    A truncated record ends the walk."""
    while offset + header.size <= len(data):
        fields = header.unpack_from(data, offset)
        length = fields[0]
        if length < header.size or offset + length > len(data):
            return
        yield fields, data[offset + header.size : offset + length]
        offset += _align(length)


def _messages(data: bytes) -> Iterator[tuple[int, int, bytes]]:
    """(type, sequence, payload) of each netlink message in one datagram."""
    for (_, kind, _, seq, _), payload in _records(data, _HEADER):
        yield kind, seq, payload


def _errno(payload: bytes) -> int | None:
    """The errno of an NLMSG_ERROR (0: an ack); None if it is too short to say."""
    return -int(_ERRNO.unpack_from(payload)[0]) if len(payload) >= _ERRNO.size else None


@dataclass(frozen=True)
class _Entry:
    index: int
    prefixlen: int
    packed: bytes  # the IP
    proto: int  # IFA_PROTO: who added it (haagent/addrmark.py)


def _entry(payload: bytes) -> _Entry | None:
    """One RTM_NEWADDR dump entry."""
    if len(payload) < _IFADDRMSG.size:
        return None
    _, prefixlen, _, _, index = _IFADDRMSG.unpack_from(payload)
    attrs = {kind & 0x3FFF: value for (_, kind), value in _records(payload, _ATTR, _IFADDRMSG.size)}
    # IPv4 keeps the host's own address in IFA_LOCAL (IFA_ADDRESS is the peer on
    # point-to-point links); IPv6 sends IFA_LOCAL only for a peer address.
    ip = attrs.get(IFA_LOCAL) or attrs.get(IFA_ADDRESS)
    proto = attrs.get(IFA_PROTO) or b"\0"
    return None if ip is None else _Entry(index, prefixlen, ip, proto[0])


class AddressRemover:
    """Removes addresses through one rtnetlink socket, kept open for the fence's lifetime."""

    def __init__(self, timeout: float = 1.0, *, marks: bool | None = None) -> None:
        self.marks = kernel_marks() if marks is None else marks
        try:
            sock = socket.socket(
                socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_ROUTE
            )
            sock.bind((0, 0))
        except OSError as exc:
            raise NetlinkError(f"cannot open an rtnetlink socket: {exc.strerror}") from None
        sock.settimeout(timeout)
        self._sock = sock
        self._seq = 0

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def remove(self, addresses: Sequence[Address]) -> list[Outcome]:
        """Remove haagent's entry of each address from its interface: the exact address and
        prefix, carrying haagent's mark (haagent/addrmark.py), never the host's own entry of
        the same IP.

        One dump of the host's addresses finds the entries, then one RTM_DELADDR each. The
        agent tells the fence only what it binds itself, so if the dump fails the exact-prefix
        entries are deleted unseen: an address left on a host whose agent is gone is a
        second holder, worse than that small risk. An interface that no longer exists has
        nothing to remove.
        """
        outcomes: dict[Address, Outcome] = {}
        indexes: dict[str, int | None] = {}
        wanted: dict[tuple[int, bytes], Address] = {}
        for address in addresses:
            ifname, interface = address
            if ifname not in indexes:
                try:
                    indexes[ifname] = socket.if_nametoindex(ifname)
                except (OSError, ValueError):
                    indexes[ifname] = None
            index = indexes[ifname]
            outcomes[address] = Outcome(address, False)
            if index is not None:
                wanted[(index, interface.ip.packed)] = address
        try:
            entries = self._dump() if wanted else []
        except NetlinkError as exc:
            for (index, _), address in wanted.items():
                outcomes[address] = self._delete_one(index, address, f"address list unread: {exc}")
        else:
            for entry in entries:
                found = wanted.get((entry.index, entry.packed))
                if found is not None and owned(
                    entry.prefixlen, entry.proto, found[1].network.prefixlen, marks=self.marks
                ):
                    outcomes[found] = self._delete_one(entry.index, found)
        return [outcomes[a] for a in dict.fromkeys(addresses)]

    def _delete_one(self, index: int, address: Address, note: str | None = None) -> Outcome:
        interface = address[1]
        try:
            removed = self._delete(index, interface.ip, interface.network.prefixlen)
        except NetlinkError as exc:
            return Outcome(address, False, str(exc) if note is None else f"{note}; {exc}")
        return Outcome(address, removed, note)

    def _delete(self, index: int, ip: IPv4Address | IPv6Address, prefixlen: int) -> bool:
        """True if the kernel deleted the entry, False if it was not there."""
        family = socket.AF_INET if ip.version == 4 else socket.AF_INET6
        payload = (
            _IFADDRMSG.pack(family, prefixlen, 0, 0, index)
            + _attr(IFA_LOCAL, ip.packed)
            + _attr(IFA_ADDRESS, ip.packed)
        )
        error = self._ack(RTM_DELADDR, payload)
        if error == 0:
            return True
        if error in _ABSENT:
            return False
        raise NetlinkError(os.strerror(error))

    def _send(self, kind: int, flags: int, payload: bytes) -> int:
        self._seq = (self._seq + 1) & 0xFFFFFFFF
        message = _HEADER.pack(_HEADER.size + len(payload), kind, flags, self._seq, 0) + payload
        try:
            self._sock.send(message)
        except OSError as exc:
            raise NetlinkError(f"cannot talk to the kernel: {exc.strerror or exc}") from None
        return self._seq

    def _recv(self) -> bytes:
        try:
            return self._sock.recv(_RECV)
        except TimeoutError:
            raise NetlinkError("the kernel did not answer within the timeout") from None
        except OSError as exc:
            raise NetlinkError(f"cannot read from the kernel: {exc.strerror or exc}") from None

    def _ack(self, kind: int, payload: bytes) -> int:
        """Send a request that wants an ack; its errno (0: done)."""
        seq = self._send(kind, NLM_F_REQUEST | NLM_F_ACK, payload)
        for _ in range(16):  # answers to earlier requests that timed out may come first
            for mtype, mseq, body in _messages(self._recv()):
                if mseq == seq and mtype == NLMSG_ERROR and (error := _errno(body)) is not None:
                    return error
        raise NetlinkError("the kernel's answer did not come")

    def _dump(self) -> list[_Entry]:
        """Every address on the host."""
        seq = self._send(RTM_GETADDR, NLM_F_REQUEST | NLM_F_DUMP, _IFADDRMSG.pack(0, 0, 0, 0, 0))
        entries: list[_Entry] = []
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline:
            for mtype, mseq, body in _messages(self._recv()):
                if mseq != seq:
                    continue
                if mtype == NLMSG_DONE:
                    return entries
                if mtype == NLMSG_ERROR and (error := _errno(body)) is not None:
                    raise NetlinkError(os.strerror(error))
                if mtype == RTM_NEWADDR and (entry := _entry(body)) is not None:
                    entries.append(entry)
        raise NetlinkError("the kernel's address list did not end within 5 s")

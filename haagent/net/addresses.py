"""Idempotent bind/unbind of virtual IPs on a Linux interface, through rtnetlink.

``AddressManager`` speaks rtnetlink itself, on one bare ``NETLINK_ROUTE`` socket opened at
construction and kept until ``close()``: its messages are a handful of fixed structs, and
pyroute2 spent ~0.3 ms in Python on each request and ~50 µs on each address of a dump — the
whole cost of a lifetime refresh at a few hundred VIPs (the cost model is in docs/net.md).
Every method is synchronous and serialised by a lock. The socket belongs to the network
namespace the manager was made in, while interface names are looked up in the calling
thread's: use a manager from the thread that made it.

Standard library only: pyroute2 is left to ``VirtualMac`` (haagent/net/vmac.py), whose links,
routes and rules are no hot path.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import socket
import struct
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from ipaddress import (
    IPv4Address,
    IPv4Interface,
    IPv6Address,
    IPv6Interface,
    ip_address,
    ip_interface,
)
from socket import AF_INET, AF_INET6
from typing import Generic, Self, TypeVar

from haagent.addrmark import PROTO, kernel_marks, owned
from haagent.net.frames import ARPHRD_ETHER, mac_str

IPAddress = IPv4Address | IPv6Address
IPInterface = IPv4Interface | IPv6Interface
T = TypeVar("T")

# linux/if_addr.h
IFA_F_NODAD = 0x02
IFA_F_NOPREFIXROUTE = 0x200
# What RTM_NEWADDR may set (the kernel ignores the rest); a refresh sends an entry's own
# flags back from this set, so that only its lifetime changes.
_IFA_F_SETTABLE = 0x02 | 0x04 | 0x10 | 0x100 | 0x200 | 0x400  # NODAD OPTIMISTIC HOMEADDRESS
# MANAGETEMPADDR NOPREFIXROUTE MCAUTOJOIN
# A valid_lft of all ones means "forever" to the kernel.
LIFETIME_FOREVER = 0xFFFFFFFF
SIOCGIFHWADDR = 0x8927  # linux/sockios.h
SIOCGIFFLAGS = 0x8913
IFF_UP = 0x1
IP_BIND_ADDRESS_NO_PORT = 24  # linux/in.h; not in every Python's socket module

# linux/netlink.h, linux/rtnetlink.h, linux/if_addr.h, linux/if_link.h
SOL_NETLINK = 270
NETLINK_CAP_ACK, NETLINK_EXT_ACK, NETLINK_GET_STRICT_CHK = 10, 11, 12
NLMSG_NOOP, NLMSG_ERROR, NLMSG_DONE = 1, 2, 3
NLM_F_REQUEST, NLM_F_ACK = 0x1, 0x4
NLM_F_DUMP_INTR = 0x10
NLM_F_DUMP = 0x300
NLM_F_REPLACE, NLM_F_EXCL, NLM_F_CREATE = 0x100, 0x200, 0x400
NLM_F_CAPPED, NLM_F_ACK_TLVS = 0x100, 0x200  # on NLMSG_ERROR
NLMSGERR_ATTR_MSG = 1
RTM_NEWLINK, RTM_GETLINK = 16, 18
RTM_NEWADDR, RTM_DELADDR, RTM_GETADDR = 20, 21, 22
IFA_ADDRESS, IFA_LOCAL, IFA_CACHEINFO, IFA_FLAGS, IFA_RT_PRIORITY, IFA_PROTO = 1, 2, 6, 8, 9, 11
IFLA_ADDRESS = 1
RT_SCOPE_LINK = 253
# Attributes of a dumped address that a refresh sends back unchanged: IPv4 matches the entry to
# update by local address, prefix and peer, and resets metric and protocol to what it is sent.
_ECHOED = (IFA_ADDRESS, IFA_LOCAL, IFA_RT_PRIORITY, IFA_PROTO)

_NLMSGHDR = struct.Struct("=IHHII")  # len, type, flags, seq, pid
_IFADDRMSG = struct.Struct("=BBBBI")  # family, prefixlen, flags, scope, index
_IFINFOMSG = struct.Struct("=BxHiII")  # family, type, index, flags, change
_RTATTR = struct.Struct("=HH")
# Requests per sendmsg(): their acks must fit the socket's receive buffer (~0.8 KiB of it
# each) or the kernel drops them; 64 are as fast per message as any larger batch.
_BATCH = 64
_DUMP_ATTEMPTS = 3


class NetError(Exception):
    """A netlink operation failed; the message names the interface, the address and why."""


class ForeignAddress(NetError):
    """The VIP's IP is on the interface already, and not as haagent binds it
    (haagent/addrmark.py): the host's own address, or one another tool added. haagent neither
    takes it over nor ever removes it."""


class RefreshError(NetError, Generic[T]):
    """A refresh pass could not renew some lifetimes; every other address was renewed.

    ``missing`` lists what the pass found absent all the same (bind those again, as after a
    pass without errors).
    """

    def __init__(self, message: str, missing: Sequence[T]) -> None:
        super().__init__(message)
        self.missing: list[T] = list(missing)


def _reason(exc: OSError) -> str:
    return exc.strerror or str(exc)


def _kernel_reason(code: int, text: str) -> str:
    """The kernel's reason for ``code``: its extended-ack text when it sent one, else strerror."""
    base = os.strerror(code) if code else "netlink error"
    return f"{text} ({base})" if text and text != base else base


def _ifindex(ifname: str, what: str, *, missing_ok: bool = False) -> int | None:
    # if_nametoindex is one ioctl; a netlink "link get" parses every attribute of the link
    # (~0.35 ms with pyroute2, more on a busy host) and sat on every bind and unbind. Both
    # look in the calling thread's namespace.
    try:
        return socket.if_nametoindex(ifname)
    except (OSError, ValueError) as exc:  # "no interface with this name"
        if missing_ok:
            return None
        raise NetError(f"{what}: no such interface") from exc


# -- bare rtnetlink ------------------------------------------------------------------------


def _attr(kind: int, data: bytes) -> bytes:
    size = _RTATTR.size + len(data)
    return _RTATTR.pack(size, kind) + data + b"\0" * (-size % 4)


def _attrs(payload: bytes, offset: int) -> dict[int, bytes]:
    out: dict[int, bytes] = {}
    while offset + _RTATTR.size <= len(payload):
        size, kind = _RTATTR.unpack_from(payload, offset)
        if size < _RTATTR.size:
            break
        out[kind & 0x3FFF] = payload[offset + _RTATTR.size : offset + size]  # drop NLA_F_*
        offset += (size + 3) & ~3
    return out


def _messages(data: bytes) -> Iterator[tuple[int, int, int, bytes]]:
    """(type, flags, seq, payload) of each netlink message in one datagram."""
    offset = 0
    while offset + _NLMSGHDR.size <= len(data):
        size, kind, flags, seq, _ = _NLMSGHDR.unpack_from(data, offset)
        if size < _NLMSGHDR.size or offset + size > len(data):
            break  # a truncated message: the datagram ends here for us
        yield kind, flags, seq, data[offset + _NLMSGHDR.size : offset + size]
        offset += (size + 3) & ~3


@dataclass
class _Answer:
    """What the kernel said to one request: replies, then an ack, an error or the dump's end."""

    error: int = 0  # errno; 0 = done
    text: str = ""  # the kernel's extended-ack message, if any
    replies: list[bytes] = field(default_factory=list)  # payloads of the data messages
    interrupted: bool = False  # a dump that raced with a change, maybe inconsistent

    def reason(self) -> str:
        return _kernel_reason(self.error, self.text)

    def check(self, what: str) -> None:
        if self.error:
            raise NetError(f"{what}: {self.reason()}")


class _Rtnl:
    """A NETLINK_ROUTE socket that sends requests in batches and sorts the answers out."""

    def __init__(self) -> None:
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, 0)
        try:
            for option in (NETLINK_EXT_ACK, NETLINK_CAP_ACK, NETLINK_GET_STRICT_CHK):
                # Without EXT_ACK errors have no text; without CAP_ACK each error echoes the
                # whole request; without STRICT_CHK the kernel ignores the interface index of
                # a dump and sends the addresses of every interface. All are optional.
                with contextlib.suppress(OSError):
                    sock.setsockopt(SOL_NETLINK, option, 1)
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
            sock.bind((0, 0))
        except OSError:
            sock.close()
            raise
        self.sock: socket.socket | None = sock
        self.sent = 0
        self.received = 0
        self._seq = 0

    def close(self) -> None:
        sock, self.sock = self.sock, None
        if sock is not None:
            sock.close()

    def exchange(self, requests: Sequence[tuple[int, int, bytes]]) -> list[_Answer]:
        """Send (type, flags, payload) requests, up to _BATCH per sendmsg(); raises OSError.

        Non-dump requests always ask for an ack, so that every request ends with exactly one
        NLMSG_ERROR (or NLMSG_DONE): that is how a batch knows it has every answer.
        """
        sock = self.sock
        assert sock is not None
        answers: list[_Answer] = []
        for start in range(0, len(requests), _BATCH):
            pending: dict[int, _Answer] = {}
            out = []
            for kind, flags, payload in requests[start : start + _BATCH]:
                self._seq = self._seq % 0xFFFFFFFF + 1
                if not _is_dump(kind, flags):
                    flags |= NLM_F_ACK
                header = _NLMSGHDR.pack(
                    _NLMSGHDR.size + len(payload), kind, flags | NLM_F_REQUEST, self._seq, 0
                )
                out.append(header + payload)
                pending[self._seq] = _Answer()
                answers.append(pending[self._seq])
            sock.send(b"".join(out))
            self.sent += len(out)
            while pending:
                data, _, msg_flags, _ = sock.recvmsg(1 << 16)
                if msg_flags & socket.MSG_TRUNC:
                    raise OSError(errno.EMSGSIZE, "netlink reply truncated")
                for kind, reply_flags, seq, payload in _messages(data):
                    self.received += 1
                    answer = pending.get(seq)
                    if answer is None or kind == NLMSG_NOOP:  # None: from a failed exchange
                        continue
                    if kind == NLMSG_ERROR:
                        answer.error, answer.text = _error(reply_flags, payload)
                    elif kind == NLMSG_DONE:
                        if len(payload) >= 4:
                            answer.error = -struct.unpack_from("=i", payload)[0]
                    else:
                        answer.interrupted |= bool(reply_flags & NLM_F_DUMP_INTR)
                        answer.replies.append(payload)
                        continue
                    del pending[seq]
        return answers


def _is_dump(kind: int, flags: int) -> bool:
    # The dump bits are EXCL and REPLACE on a NEW or DEL request; rtnetlink's GETs are 2 mod 4.
    return kind % 4 == 2 and flags & NLM_F_DUMP == NLM_F_DUMP


def _error(flags: int, payload: bytes) -> tuple[int, str]:
    """(errno, extended-ack text) of an NLMSG_ERROR; errno 0 is an ack."""
    code = -struct.unpack_from("=i", payload)[0]
    text = ""
    if flags & NLM_F_ACK_TLVS:
        # The TLVs follow the request's header, or the whole request when not capped.
        echoed = _NLMSGHDR.size
        if not flags & NLM_F_CAPPED and len(payload) >= 4 + _NLMSGHDR.size:
            echoed = _NLMSGHDR.unpack_from(payload, 4)[0]
        msg = _attrs(payload, 4 + ((echoed + 3) & ~3)).get(NLMSGERR_ATTR_MSG, b"")
        text = msg.split(b"\0", 1)[0].decode(errors="replace")
    return code, text


@dataclass(frozen=True, slots=True)
class _Entry:
    """One address entry of an interface, as the kernel dumps it."""

    family: int
    prefixlen: int
    flags: int
    scope: int
    index: int
    attrs: dict[int, bytes]  # the _ECHOED attributes it came with

    @property
    def proto(self) -> int:
        raw = self.attrs.get(IFA_PROTO)
        return raw[0] if raw else 0

    @property
    def interface(self) -> IPInterface:
        return ip_interface((self.ip, self.prefixlen))

    @property
    def ip(self) -> IPAddress:
        # IFA_LOCAL is the interface's own address; IFA_ADDRESS is the peer on
        # point-to-point links and equal to IFA_LOCAL (or alone) everywhere else.
        return ip_address(self.attrs.get(IFA_LOCAL) or self.attrs[IFA_ADDRESS])

    @classmethod
    def parse(cls, payload: bytes) -> _Entry | None:
        family, prefixlen, flags, scope, index = _IFADDRMSG.unpack_from(payload)
        attrs = _attrs(payload, _IFADDRMSG.size)
        if IFA_LOCAL not in attrs and IFA_ADDRESS not in attrs:
            return None
        if IFA_FLAGS in attrs:  # the 8-bit field cannot hold NOPREFIXROUTE & co.
            flags = struct.unpack_from("=I", attrs[IFA_FLAGS])[0]
        kept = {k: v for k, v in attrs.items() if k in _ECHOED}
        return cls(family, prefixlen, flags, scope, index, kept)


def _family(version: int) -> int:
    return AF_INET if version == 4 else AF_INET6


def _cacheinfo(lifetime: int) -> bytes:
    if lifetime < 1:
        raise ValueError(f"address lifetime must be at least 1 s, got {lifetime}")
    return _attr(IFA_CACHEINFO, struct.pack("=IIII", lifetime, lifetime, 0, 0))


class AddressManager:
    """Idempotent bind/unbind of VIPs, with address lifetimes, in O(1) messages per call.

    Only what haagent bound is its own (haagent/addrmark.py): an entry with the VIP's exact
    address and prefix that carries haagent's ``IFA_PROTO`` mark. ``bind`` sets the mark and
    refuses (:class:`ForeignAddress`) an IP the interface has in any other form, such as the
    host's own 198.51.100.10/24 for a VIP 198.51.100.10/32; ``unbind`` and the refresh touch
    only haagent's entry, never another of the same IP. ``requests_sent`` and
    ``replies_received`` count the netlink messages (a dump is one request and one reply per
    address).
    """

    def __init__(self, *, marks: bool | None = None) -> None:
        self._lock = threading.Lock()
        # Whether the kernel keeps IFA_PROTO; tests may pass False to get an old kernel's rule.
        self.marks = kernel_marks() if marks is None else marks
        try:
            self._rtnl = _Rtnl()
        except OSError as exc:
            raise NetError(f"cannot open an rtnetlink socket: {_reason(exc)}") from exc

    def close(self) -> None:
        with self._lock:
            self._rtnl.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def requests_sent(self) -> int:
        return self._rtnl.sent

    @property
    def replies_received(self) -> int:
        return self._rtnl.received

    # -- queries ------------------------------------------------------------------------

    def exists(self, ifname: str) -> bool:
        return _ifindex(ifname, f"cannot look up {ifname}", missing_ok=True) is not None

    def mac(self, ifname: str) -> str:
        """The interface's hardware address, lower case ("aa:bb:cc:dd:ee:ff").

        Read on every failover (an interface re-created since start has a new MAC): one
        SIOCGIFHWADDR ioctl, ~100 times cheaper than parsing a netlink link message, which
        stays the fallback for what the ioctl cannot answer.
        """
        with contextlib.suppress(OSError), socket.socket(AF_INET, socket.SOCK_DGRAM) as sock:
            req = struct.pack("16s16x", ifname.encode()[:15])
            res = fcntl.ioctl(sock.fileno(), SIOCGIFHWADDR, req)
            family = struct.unpack_from("=H", res, 16)[0]
            if family == ARPHRD_ETHER:
                return mac_str(res[18:24])
        what = f"cannot read the MAC address of {ifname}"
        with self._lock:
            index = _ifindex(ifname, what)
            assert index is not None
            request = _IFINFOMSG.pack(socket.AF_UNSPEC, 0, index, 0, 0)
            (answer,) = self._ask(what, [(RTM_GETLINK, 0, request)])
            if answer.error == errno.ENODEV:
                raise NetError(f"{what}: no such interface")
            answer.check(what)
            mac = b""
            if answer.replies:
                mac = _attrs(answer.replies[0], _IFINFOMSG.size).get(IFLA_ADDRESS, b"")
            if not mac:
                raise NetError(f"{what}: it has none")
            return mac_str(mac)

    def is_bound(self, ifname: str, address: IPInterface) -> bool:
        """True if ``address`` is on ``ifname`` as haagent binds it (exact prefix, marked).

        An interface that does not exist has nothing bound: False, not an error. IPv6: one
        RTM_GETADDR for that address; IPv4 has no such request, so one dump of the
        interface's IPv4 addresses.
        """
        what = f"cannot check {address.ip} on {ifname}"
        with self._lock:
            index = _ifindex(ifname, what, missing_ok=True)
            if index is None:
                return False
            return any(self._ours(e, address) for e in self._entries_of(index, address.ip, what))

    def owned(self, ifname: str) -> set[IPInterface]:
        """Every address on ``ifname`` that haagent bound (marked); empty if it is gone.

        Cost: one dump of the interface's addresses.
        """
        what = f"cannot list addresses of {ifname}"
        with self._lock:
            index = _ifindex(ifname, what, missing_ok=True)
            entries = None if index is None else self._dump(index, None, what)
            return {e.interface for e in entries or () if e.proto == PROTO or not self.marks}

    def foreign(self, wanted: Mapping[IPAddress, tuple[str, int]]) -> dict[IPAddress, list[str]]:
        """The IPs of ``wanted`` (IP -> the interface and prefix length haagent binds it with)
        that this host has in a form haagent did not bind, each with what was found
        ("198.51.100.11/24 on eth0"): on another interface, with another prefix, or unmarked.

        Cost: one dump of every address of the host, however many IPs are asked about.
        """
        what = "cannot list the host's addresses"
        if not wanted:
            return {}
        found: dict[IPAddress, list[str]] = {}
        names: dict[int, str] = {}
        with self._lock:
            for entry in self._dump(0, None, what) or ():
                want = wanted.get(entry.ip)
                if want is None:
                    continue
                if entry.index not in names:
                    try:
                        names[entry.index] = socket.if_indextoname(entry.index)
                    except OSError:
                        names[entry.index] = f"interface {entry.index}"
                ifname = names[entry.index]
                if ifname == want[0] and owned(
                    entry.prefixlen, entry.proto, want[1], marks=self.marks
                ):
                    continue
                found.setdefault(entry.ip, []).append(f"{entry.interface} on {ifname}")
        return found

    def bound_ips(self, ifname: str) -> set[IPAddress]:
        """Every IPv4 and IPv6 address on ``ifname`` (link-local included); empty if it is gone."""
        what = f"cannot list addresses of {ifname}"
        with self._lock:
            index = _ifindex(ifname, what, missing_ok=True)
            if index is None:
                return set()
            return {e.ip for e in self._dump(index, None, what) or ()}

    def ipv6_flags(self, ifname: str, ip: IPv6Address) -> int | None:
        """The IFA_F_* flags of ``ip`` on ``ifname``; None if it is not there (or no interface).

        Cost: one RTM_GETADDR, however many addresses the host has.
        """
        what = f"cannot look up {ip} on {ifname}"
        with self._lock:
            index = _ifindex(ifname, what, missing_ok=True)
            entries = [] if index is None else self._entries_of(index, ip, what)
            return entries[0].flags if entries else None

    def link_local_flags(self, ifname: str) -> dict[IPv6Address, int]:
        """IFA_F_* flags of each IPv6 link-local address of ``ifname``; empty if it is gone.

        Cost: one dump of the interface's IPv6 addresses; only the link-scope ones are parsed.
        """
        what = f"cannot list the link-local addresses of {ifname}"
        with self._lock:
            index = _ifindex(ifname, what, missing_ok=True)
            entries = None if index is None else self._dump(index, 6, what, RT_SCOPE_LINK)
            return {e.ip: e.flags for e in entries or () if isinstance(e.ip, IPv6Address)}

    # -- changes ------------------------------------------------------------------------

    def bind(self, ifname: str, address: IPInterface, *, lifetime: int | None = None) -> bool:
        """Add ``address`` to ``ifname``, marked as haagent's; True if added, False if haagent's
        entry was there already. Raises :class:`ForeignAddress` if the IP is on the interface
        in any other form (unmarked, or with another prefix), NetError for other failures.

        IPv6 is added with IFA_F_NODAD: it is usable at once instead of tentative for DAD's
        ~1-2 s, and it does not go "dadfailed" when the old holder still answers for it (a
        failover is exactly that moment). Host-length prefixes (/32, /128) get
        IFA_F_NOPREFIXROUTE: the kernel's local-table route already delivers them, and
        without the flag IPv6 adds a redundant /128 route to the main table. Wider prefixes
        get the kernel's usual prefix route, which it removes again on unbind unless another
        address of the same prefix still needs it.

        With ``lifetime`` (whole seconds, >= 1) the address gets that valid and preferred
        lifetime and the kernel deletes it by itself when it runs out (see ``refresh_many``);
        an address already bound gets the new lifetime, and otherwise stays as it is (flags,
        metric).

        Cost: one RTM_NEWADDR. The kernel itself refuses a second entry of an IPv6 address
        on an interface, whatever its prefix (EEXIST), but accepts 198.51.100.10/32 next to
        198.51.100.10/24: for IPv4 a bind() of a socket to the address first tells whether
        it is local at all (no netlink message), and only then does a dump of the
        interface's IPv4 addresses decide. The test can say "not local" for an IPv4 address
        on this interface only when its local route is gone while the interface is up (say,
        deleted by hand, or hidden by ignore_routes_with_linkdown on a link without carrier);
        a /32 VIP then gains its own entry next to the wider one, and unbind removes only that.
        """
        ip = address.ip
        what = f"cannot bind {address} on {ifname}"
        with self._lock:
            index = _ifindex(ifname, what)
            assert index is not None
            request = self._new_request(index, address, self._flags(address), lifetime)
            for _ in range(2):  # a second round only if the IP went away under us
                if ip.version == 4 and self._maybe_local(ifname, ip):
                    present = self._entries_of(index, ip, what)
                    if present:
                        return self._bound_already(present, address, ifname, lifetime, what)
                (answer,) = self._ask(what, [request])
                if answer.error != errno.EEXIST:
                    answer.check(what)
                    return True
                present = self._entries_of(index, ip, what)
                if present:
                    return self._bound_already(present, address, ifname, lifetime, what)
            return False

    def refresh_many(
        self, ifname: str, addresses: Sequence[IPInterface], lifetime: int
    ) -> list[IPInterface]:
        """Reset the lifetime of every address of ``addresses`` that haagent's entry is there
        for; return the others (absent, or there only in a form haagent did not bind).

        The kernel removes an address whose valid lifetime ran out on its own, 0-0.35 s late
        as measured (it checks on whole-second ticks). An agent that refreshes the lifetime
        only on each acknowledged etcd keepalive therefore loses the address by itself once
        it stops proving its lease — also when it is frozen or killed with everything it
        started.

        Cost: one dump of the interface's addresses (of one family if all ``addresses`` are
        of one), then one RTM_NEWADDR replace per entry of a present IP, 64 per sendmsg():
        N + 1 requests and about 2N + 2 replies for N addresses. Each entry keeps its
        prefix, flags, metric and protocol; only its lifetimes change. Absent addresses get
        nothing (the caller binds them again, and a bind refuses a foreign entry); an
        interface that does not exist has every address absent. An address removed between
        the dump and its replace is added back by the replace, mark included, as the caller
        would have done.

        IPv6: every RTM_NEWADDR, also a failed one, makes this kernel report all multicast
        groups of the interface again (two MLDv2 reports, the second within ~1 s), whatever
        the flags: no other request extends a lifetime. Reports of one pass coalesce, so a
        pass sends two per interface, not two per address.

        Raises RefreshError (its ``missing`` as returned otherwise) after trying every
        address if the kernel refused some replaces, NetError if the dump failed.
        """
        _cacheinfo(lifetime)  # refuse a bad lifetime before anything is sent
        if not addresses:
            return []
        what = f"cannot refresh addresses on {ifname}"
        with self._lock:
            index = _ifindex(ifname, what, missing_ok=True)
            if index is None:
                return list(addresses)
            versions = {a.version for a in addresses}
            entries = self._dump(index, versions.pop() if len(versions) == 1 else None, what)
            if entries is None:
                return list(addresses)
            # Keyed by (IP, prefix length): an ip_interface per entry would cost ~2 µs each on
            # every keepalive, for nothing.
            found = {(e.ip, e.prefixlen): e for e in entries if e.proto == PROTO or not self.marks}
            missing: list[IPInterface] = []
            todo: list[tuple[IPInterface, _Entry]] = []
            queued: set[IPInterface] = set()  # an address listed twice is renewed once
            for address in addresses:
                if address in queued:
                    continue
                entry = found.get((address.ip, address.network.prefixlen))
                if entry is None:
                    missing.append(address)
                    continue
                queued.add(address)
                todo.append((address, entry))
            answers = self._ask(what, [self._renew_request(e, lifetime) for _, e in todo])
            failed = [
                f"{address}: {answer.reason()}"
                for (address, _), answer in zip(todo, answers, strict=True)
                if answer.error
            ]
            if failed:
                raise RefreshError(f"{what}: {'; '.join(failed)}", missing)
            return missing

    def unbind(self, ifname: str, address: IPInterface, *, verify: bool = True) -> bool:
        """Remove haagent's entry of ``address`` from ``ifname``; True if removed, False if it
        was not there (an interface that no longer exists has nothing to remove).

        Only the entry with the exact prefix goes, and only if it carries haagent's mark: an
        entry of the same IP in any other form is the host's or another tool's. ``verify``
        False skips the look at the mark, for an address the caller bound itself in this
        process and has not seen go since: the kernel holds one entry per IP and prefix, so
        the exact-prefix entry is the one it added.

        Cost: one RTM_DELADDR, after one RTM_GETADDR (IPv6) or a dump of the interface's IPv4
        addresses (IPv4) when ``verify``.
        """
        ip = address.ip
        what = f"cannot unbind {address} from {ifname}"
        with self._lock:
            index = _ifindex(ifname, what, missing_ok=True)
            if index is None:
                return False
            if verify and not any(
                self._ours(e, address) for e in self._entries_of(index, ip, what)
            ):
                return False
            payload = _IFADDRMSG.pack(_family(ip.version), address.network.prefixlen, 0, 0, index)
            if ip.version == 4:
                payload += _attr(IFA_LOCAL, ip.packed)
            # With IFA_ADDRESS the kernel matches the prefix length too, not the IP alone.
            (answer,) = self._ask(what, [(RTM_DELADDR, 0, payload + _attr(IFA_ADDRESS, ip.packed))])
            if answer.error in (errno.EADDRNOTAVAIL, errno.ENODEV):
                return False
            answer.check(what)
            return True

    # -- helpers (caller holds the lock) ------------------------------------------------

    def _ask(self, what: str, requests: Sequence[tuple[int, int, bytes]]) -> list[_Answer]:
        if self._rtnl.sock is None:
            raise NetError(f"{what}: the {type(self).__name__} is closed")
        try:
            return self._rtnl.exchange(requests)
        except OSError as exc:
            raise NetError(f"{what}: {_reason(exc)}") from exc

    @staticmethod
    def _flags(address: IPInterface) -> int:
        flags = IFA_F_NODAD if address.version == 6 else 0
        if address.network.prefixlen == address.max_prefixlen:
            flags |= IFA_F_NOPREFIXROUTE
        return flags

    def _ours(self, entry: _Entry, address: IPInterface) -> bool:
        return entry.ip == address.ip and owned(
            entry.prefixlen, entry.proto, address.network.prefixlen, marks=self.marks
        )

    def _bound_already(
        self,
        present: Sequence[_Entry],
        address: IPInterface,
        ifname: str,
        lifetime: int | None,
        what: str,
    ) -> bool:
        """A bind found the IP there: renew haagent's entry (False), or refuse a foreign one."""
        mine = [e for e in present if self._ours(e, address)]
        others = [e for e in present if e not in mine]
        if others:
            shown = ", ".join(
                f"{e.interface}" + ("" if e.proto == PROTO else f" proto {e.proto}") for e in others
            )
            raise ForeignAddress(
                f"{what}: {address.ip} is already on {ifname} as {shown}, not added by "
                "haagent; it neither takes over nor removes an address configured outside it"
            )
        if lifetime is not None:
            self._renew(mine, lifetime, what)
        return False

    @staticmethod
    def _new_request(
        index: int, address: IPInterface, flags: int, lifetime: int | None
    ) -> tuple[int, int, bytes]:
        ip = address.ip
        payload = _IFADDRMSG.pack(
            _family(ip.version), address.network.prefixlen, flags & 0xFF, 0, index
        )
        if ip.version == 4:
            payload += _attr(IFA_LOCAL, ip.packed)
        payload += _attr(IFA_ADDRESS, ip.packed) + _attr(IFA_FLAGS, struct.pack("=I", flags))
        payload += _attr(IFA_PROTO, bytes([PROTO]))
        if lifetime is not None:
            payload += _cacheinfo(lifetime)
        return RTM_NEWADDR, NLM_F_CREATE | NLM_F_EXCL, payload

    @staticmethod
    def _renew_request(entry: _Entry, lifetime: int) -> tuple[int, int, bytes]:
        flags = entry.flags & _IFA_F_SETTABLE
        payload = _IFADDRMSG.pack(
            entry.family, entry.prefixlen, flags & 0xFF, entry.scope, entry.index
        )
        payload += b"".join(_attr(k, v) for k, v in entry.attrs.items())
        payload += _attr(IFA_FLAGS, struct.pack("=I", flags)) + _cacheinfo(lifetime)
        return RTM_NEWADDR, NLM_F_REPLACE | NLM_F_CREATE, payload

    def _renew(self, entries: Sequence[_Entry], lifetime: int, what: str) -> None:
        for answer in self._ask(what, [self._renew_request(e, lifetime) for e in entries]):
            answer.check(what)

    def _dump(
        self, index: int, version: int | None, what: str, scope: int | None = None
    ) -> list[_Entry] | None:
        """Every address entry of interface ``index`` (0: of every interface; of ``scope``
        only, if given: the others are not parsed); None if the interface is gone."""
        family = socket.AF_UNSPEC if version is None else _family(version)
        request = (RTM_GETADDR, NLM_F_DUMP, _IFADDRMSG.pack(family, 0, 0, 0, index))
        for attempt in range(_DUMP_ATTEMPTS):
            (answer,) = self._ask(what, [request])
            if answer.error == errno.ENODEV:
                return None
            answer.check(what)
            # An address added or removed during the dump may leave it inconsistent (one
            # entry missed or seen twice): once more, unless that keeps happening.
            if not answer.interrupted or attempt == _DUMP_ATTEMPTS - 1:
                break
        replies = answer.replies
        if scope is not None:  # byte 3 of the ifaddrmsg
            replies = [p for p in replies if len(p) > 3 and p[3] == scope]
        entries = (_Entry.parse(p) for p in replies)
        # The kernel filters by index only with strict checking; a kernel without it sends all.
        return [e for e in entries if e is not None and index in (0, e.index)]

    def _entries_of(self, index: int, ip: IPAddress, what: str) -> list[_Entry]:
        """The entries of ``ip`` on interface ``index`` (usually none or one)."""
        if ip.version == 6:
            request = _IFADDRMSG.pack(AF_INET6, 0, 0, 0, index) + _attr(IFA_ADDRESS, ip.packed)
            (answer,) = self._ask(what, [(RTM_GETADDR, 0, request)])
            if answer.error in (errno.EADDRNOTAVAIL, errno.ENODEV):
                return []
            answer.check(what)
            entries = (_Entry.parse(p) for p in answer.replies)
            return [e for e in entries if e is not None and e.ip == ip]
        return [e for e in self._dump(index, 4, what) or () if e.ip == ip]

    @staticmethod
    def _maybe_local(ifname: str, ip: IPv4Address) -> bool:
        """False if ``ip`` is certainly not bound on ``ifname`` (an up interface).

        bind() succeeds only for an address the local routing table (or the interface's VRF
        table, hence SO_BINDTODEVICE) has as local; the kernel removes those routes while an
        interface is down, so a down interface is always "maybe".
        """
        try:
            with socket.socket(AF_INET, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                req = struct.pack("16s16x", ifname.encode()[:15])
                flags = struct.unpack_from("=H", fcntl.ioctl(sock.fileno(), SIOCGIFFLAGS, req), 16)
                if not flags[0] & IFF_UP:
                    return True
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, ifname.encode())
                # Port 0 would otherwise take an ephemeral port for nothing.
                sock.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
                sock.bind((str(ip), 0))
        except OSError as exc:
            return exc.errno != errno.EADDRNOTAVAIL
        return True  # local, or ip_nonlocal_bind lets any address pass

"""Idempotent bind/unbind of virtual IPs on a Linux interface, through rtnetlink (pyroute2).

One ``IPRoute`` socket is opened per ``AddressManager`` and kept for its lifetime. Every
method is synchronous and serialised by a lock; the agent calls them from its own thread.
pyroute2 0.9 keeps its netlink socket and event loop per *thread*: a manager used from a
second thread quietly opens a second socket there (in that thread's network namespace), so
keep one manager per thread.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import socket
import struct
import threading
from ipaddress import IPv4Address, IPv4Interface, IPv6Address, IPv6Interface, ip_address
from socket import AF_INET, AF_INET6
from typing import Any, Self

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

IPAddress = IPv4Address | IPv6Address
IPInterface = IPv4Interface | IPv6Interface

# linux/if_addr.h
IFA_F_NODAD = 0x02
IFA_F_NOPREFIXROUTE = 0x200
# A valid_lft of all ones means "forever" to the kernel.
LIFETIME_FOREVER = 0xFFFFFFFF
SIOCGIFHWADDR = 0x8927  # linux/sockios.h
ARPHRD_ETHER = 1


class NetError(Exception):
    """A netlink operation failed; the message names the interface, the address and why."""


def _reason(exc: BaseException) -> str:
    """The kernel's reason: its extended-ack text when it sent one, else strerror(errno)."""
    if isinstance(exc, NetlinkError):
        text = exc.args[1] if len(exc.args) > 1 and exc.args[1] else ""
        base = os.strerror(exc.code) if exc.code else "netlink error"
        return f"{text} ({base})" if text and text != base else base
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc)


class NetlinkOwner:
    """One rtnetlink socket, kept open for the owner's lifetime and closed once."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        try:
            # ext_ack: the kernel explains EINVAL & co. in words ("ipv4: Invalid prefix length").
            self._ipr: Any = IPRoute(ext_ack=True)
        except (OSError, NetlinkError) as exc:
            raise NetError(f"cannot open an rtnetlink socket: {_reason(exc)}") from exc

    def close(self) -> None:
        with self._lock:
            ipr, self._ipr = self._ipr, None
            if ipr is not None:
                ipr.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- helpers for subclasses (the netlink ones: caller holds the lock) ---------------

    def _netlink(self, what: str = "netlink request") -> Any:
        if self._ipr is None:
            raise NetError(f"{what}: the {type(self).__name__} is closed")
        return self._ipr

    def _link(self, ifname: str, what: str, *, missing_ok: bool = False) -> Any:
        """The RTM_NEWLINK message of ``ifname``; None if it does not exist and missing_ok.

        ``what`` opens the error message ("cannot bind 198.51.100.10/32 on eth0").
        """
        try:
            links = self._netlink(what).link("get", ifname=ifname)
        except NetlinkError as exc:
            if exc.code == errno.ENODEV:
                if missing_ok:
                    return None
                raise NetError(f"{what}: no such interface") from exc
            raise NetError(f"{what}: {_reason(exc)}") from exc
        return links[0]

    def _index(self, ifname: str, what: str, *, missing_ok: bool = False) -> int | None:
        # if_nametoindex is one ioctl; a netlink "link get" parses every attribute of the
        # link (~0.35 ms, more on a busy host) and sat on every bind and unbind. Both look
        # in the calling thread's namespace, like pyroute2's per-thread socket.
        try:
            return socket.if_nametoindex(ifname)
        except (OSError, ValueError) as exc:  # "no interface with this name"
            if missing_ok:
                return None
            raise NetError(f"{what}: no such interface") from exc


class AddressManager(NetlinkOwner):
    """Idempotent bind/unbind of VIPs via pyroute2 (one IPRoute kept open).

    An IP counts as bound on an interface whatever its prefix length there: ``bind`` of
    198.51.100.10/32 returns False when 198.51.100.10/24 is already on the interface, and
    ``unbind`` removes every entry of that IP, whatever prefix it was added with.
    """

    # -- queries ------------------------------------------------------------------------

    def exists(self, ifname: str) -> bool:
        return self._index(ifname, f"cannot look up {ifname}", missing_ok=True) is not None

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
                return ":".join(f"{b:02x}" for b in res[18:24])
        with self._lock:
            link = self._link(ifname, f"cannot read the MAC address of {ifname}")
            mac = link.get("IFLA_ADDRESS")
            if not mac:
                raise NetError(f"cannot read the MAC address of {ifname}: it has none")
            return str(mac).lower()

    def is_bound(self, ifname: str, address: IPInterface) -> bool:
        """True if the IP of ``address`` is on ``ifname`` with any prefix length.

        An interface that does not exist has nothing bound: False, not an error.
        """
        with self._lock:
            index = self._index(ifname, f"cannot check {address.ip} on {ifname}", missing_ok=True)
            return index is not None and bool(self._prefixes(index, address.ip))

    def bound_ips(self, ifname: str) -> set[IPAddress]:
        """Every IPv4 and IPv6 address on ``ifname`` (link-local included); empty if it is gone."""
        with self._lock:
            index = self._index(ifname, f"cannot list addresses of {ifname}", missing_ok=True)
            if index is None:
                return set()
            return {ip for ip, _, _ in self._dump(index, None)}

    # -- changes ------------------------------------------------------------------------

    def bind(self, ifname: str, address: IPInterface, *, lifetime: int | None = None) -> bool:
        """Add ``address`` to ``ifname``; True if added, False if its IP was already there.

        IPv6 is added with IFA_F_NODAD: it is usable at once instead of tentative for DAD's
        ~1-2 s, and it does not go "dadfailed" when the old holder still answers for it (a
        failover is exactly that moment). Host-length prefixes (/32, /128) get
        IFA_F_NOPREFIXROUTE: the kernel's local-table route already delivers them, and
        without the flag IPv6 adds a redundant /128 route to the main table. Wider prefixes
        get the kernel's usual prefix route, which it removes again on unbind unless another
        address of the same prefix still needs it.

        With ``lifetime`` (whole seconds, >= 1) the address gets that valid and preferred
        lifetime and the kernel deletes it by itself when it runs out (see ``refresh``); an
        address already bound gets the new lifetime too.
        """
        ip = address.ip
        with self._lock:
            index = self._index(ifname, f"cannot bind {address} on {ifname}")
            assert index is not None
            # The dump (not just an EEXIST from "add") also finds the IP bound with another
            # prefix length, which must count as bound and not gain a second entry.
            present = bool(self._prefixes(index, ip))
            if present and lifetime is None:
                return False
            try:
                self._add("replace" if present else "add", index, address, lifetime)
            except NetlinkError as exc:
                if exc.code == errno.EEXIST:  # raced with someone else adding it
                    return False
                raise NetError(f"cannot bind {address} on {ifname}: {_reason(exc)}") from exc
            return not present

    def refresh(self, ifname: str, address: IPInterface, lifetime: int) -> bool:
        """Reset the lifetime of a bound address; False (and nothing added) if it is absent.

        The kernel removes an address whose valid lifetime ran out on its own, 0-0.35 s late
        as measured (it checks on whole-second ticks). An agent that refreshes the lifetime
        only on each acknowledged etcd keepalive therefore loses the address by itself once
        it stops proving its lease — also when it is frozen or killed with everything it
        started.
        """
        ip = address.ip
        with self._lock:
            index = self._index(ifname, f"cannot refresh {ip} on {ifname}", missing_ok=True)
            if index is None or not self._prefixes(index, ip):
                return False
            try:
                self._add("replace", index, address, lifetime)
            except NetlinkError as exc:
                raise NetError(f"cannot refresh {address} on {ifname}: {_reason(exc)}") from exc
            return True

    def unbind(self, ifname: str, address: IPInterface) -> bool:
        """Remove the IP of ``address`` from ``ifname``; True if removed, False if absent.

        An interface that no longer exists has nothing to remove: False.
        """
        ip = address.ip
        with self._lock:
            index = self._index(ifname, f"cannot unbind {ip} from {ifname}", missing_ok=True)
            if index is None:
                return False
            removed = False
            for prefixlen in self._prefixes(index, ip):
                try:
                    self._ipr.addr(
                        "del",
                        index=index,
                        family=AF_INET if ip.version == 4 else AF_INET6,
                        address=str(ip),
                        prefixlen=prefixlen,
                    )
                except NetlinkError as exc:
                    if exc.code == errno.EADDRNOTAVAIL:  # raced with someone else removing it
                        continue
                    raise NetError(
                        f"cannot unbind {ip}/{prefixlen} from {ifname}: {_reason(exc)}"
                    ) from exc
                removed = True
            return removed

    # -- helpers (caller holds the lock) ------------------------------------------------

    def _add(self, op: str, index: int, address: IPInterface, lifetime: int | None) -> None:
        ip = address.ip
        flags = 0
        if ip.version == 6:
            flags |= IFA_F_NODAD
        if address.network.prefixlen == ip.max_prefixlen:
            flags |= IFA_F_NOPREFIXROUTE
        extra: dict[str, Any] = {}
        if lifetime is not None:
            if lifetime < 1:
                raise ValueError(f"address lifetime must be at least 1 s, got {lifetime}")
            extra["IFA_CACHEINFO"] = {"ifa_preferred": lifetime, "ifa_valid": lifetime}
        self._ipr.addr(
            op,
            index=index,
            family=AF_INET if ip.version == 4 else AF_INET6,
            address=str(ip),
            prefixlen=address.network.prefixlen,
            flags=flags,
            **extra,
        )

    def _dump(self, index: int, version: int | None) -> list[tuple[IPAddress, int, int]]:
        """(ip, prefixlen, flags) of every address on interface ``index``."""
        kwargs: dict[str, int] = {"index": index}
        if version is not None:
            kwargs["family"] = AF_INET if version == 4 else AF_INET6
        try:
            msgs = self._netlink().addr("dump", **kwargs)
        except NetlinkError as exc:
            raise NetError(f"cannot list addresses of interface #{index}: {_reason(exc)}") from exc
        out = []
        for msg in msgs:
            if msg["index"] != index:
                continue
            # IFA_LOCAL is the interface's own address; IFA_ADDRESS is the peer on
            # point-to-point links and equal to IFA_LOCAL (or alone) everywhere else.
            raw = msg.get("IFA_LOCAL") or msg.get("IFA_ADDRESS")
            if raw is None:
                continue
            flags = msg.get("IFA_FLAGS")
            out.append((ip_address(raw), int(msg["prefixlen"]), int(flags or msg["flags"])))
        return out

    def _prefixes(self, index: int, ip: IPAddress) -> list[int]:
        """The prefix lengths with which ``ip`` is on interface ``index`` (usually 0 or 1)."""
        return [plen for got, plen, _ in self._dump(index, ip.version) if got == ip]

"""VRRP-style virtual MAC: the VIP lives on a macvlan whose MAC moves with it.

With the node's own MAC, a failover must rewrite every client's neighbour cache (gratuitous
ARP / unsolicited NA, which some clients and SDN fabrics ignore). With a virtual MAC
(RFC 5798 7.3: 00:00:5e:00:01:XX for IPv4, 00:00:5e:00:02:XX for IPv6, XX = VRID) the
clients' IP->MAC mapping never changes; only the switches' MAC->port mapping must move,
and the new holder's first frame from that MAC (its announcement) moves it.

``VirtualMac.up`` makes the interface ready for a VIP; the caller then binds the VIP on it
(``AddressManager.bind``), adds the source rule (``add_source_rule``) and announces it
(``Announcer.announce(ifname, ip, mac=vrrp_mac(...))``). ``down`` removes all of it.
See docs/layer2.md for the why of each setting, and what the lab tests proved.

What ``up`` sets up, per (parent, VRID, family):

* ``vmac4.<vrid>`` / ``vmac6.<vrid>``: a macvlan on ``parent`` in ``private`` mode with the
  virtual MAC. The kernel adds that MAC to the parent's unicast filter. Private, like
  keepalived: a vmac never needs to reach another macvlan of the same parent (the host
  reaches its own VIP through the local routing table, i.e. over ``lo``), so nothing is
  bridged between them, and unlike ``vepa`` it needs no hairpin on the switch.
* sysctls so that only the vmac answers ARP/NDP for the VIP, with the virtual MAC, and the
  vmac answers for nothing else (see ``_configure``).
* policy routing so that the host's replies from the VIP leave *through the vmac*, i.e.
  with the virtual MAC as Ethernet source: routing is by destination, and the subnet
  route points at the parent, so without it replies leave with the node's MAC. Then the
  switches learn the virtual MAC only from ARP answers and announcements and forget it
  after their ageing time (300 s typically) while a client keeps streaming to it (TCP
  ACKs confirm its neighbour entry, so it never re-ARPs) -- and flood that stream to
  every port. Table ``vmac_table(vrid, family)`` holds a copy of the main table's routes
  of that family, the parent's moved to the vmac; ``add_source_rule`` adds
  ``from <VIP> lookup <table>``. The same rule makes strict reverse-path filtering
  (rp_filter=1) accept clients' packets arriving on the vmac, which it would otherwise
  drop (keepalived turns rp_filter off host-wide instead).
"""

from __future__ import annotations

import contextlib
import errno
import re
import socket
import threading
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address
from socket import AF_INET, AF_INET6
from typing import Any, Self

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from haagent.net import sysctl
from haagent.net.addresses import NetError, _ifindex, _kernel_reason
from haagent.net.responder import who_answers

IPAddress = IPv4Address | IPv6Address

MACVLAN_MODE = "private"
# <linux/if_link.h> enum macvlan_mode
_MACVLAN_MODES = {1: "private", 2: "vepa", 4: "bridge", 8: "passthru", 16: "source"}
#: Routing tables ``0x48410000 + (4|6) * 256 + vrid`` ("HA"), far from any in common use.
VMAC_TABLE_BASE = 0x4841_0000
#: Priority of the ``from <VIP>`` rules: after ``local`` (0), before ``main`` (32766).
RULE_PRIORITY = 16000
RTN_UNICAST = 1
RTPROT_STATIC = 4
RTNH_F_ONLINK = 4
_NAME = re.compile(r"^vmac([46])\.(\d{1,3})$")


def _reason(exc: BaseException) -> str:
    """The kernel's reason: its extended-ack text when it sent one, else strerror(errno)."""
    if isinstance(exc, NetlinkError):
        text = exc.args[1] if len(exc.args) > 1 and exc.args[1] else ""
        return _kernel_reason(exc.code, text)
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc)


def _check(vrid: int, family: int) -> None:
    if family not in (AF_INET, AF_INET6):
        raise ValueError(f"family must be socket.AF_INET or socket.AF_INET6, got {family}")
    if not 1 <= vrid <= 255:
        raise ValueError(f"VRID must be 1..255 (RFC 5798), got {vrid}")


def _version(family: int) -> int:
    return 4 if family == AF_INET else 6


def _present(msg: Any, **attrs: str) -> dict[str, Any]:
    """``{key: msg[attr]}`` for each ``key=attr`` the netlink message carries."""
    return {key: msg.get(attr) for key, attr in attrs.items() if msg.get(attr) is not None}


def _route_key(r: Any) -> tuple[Any, int, int]:
    """(dst, dst_len, metric): what tells two routes of one table apart here."""
    return r.get("RTA_DST"), int(r["dst_len"]), int(r.get("RTA_PRIORITY") or 0)


def vrrp_mac(vrid: int, family: int) -> str:
    """RFC 5798 7.3: 00:00:5e:00:01:XX (IPv4) or 00:00:5e:00:02:XX (IPv6), XX = VRID."""
    _check(vrid, family)
    return f"00:00:5e:00:{1 if family == AF_INET else 2:02x}:{vrid:02x}"


def vmac_ifname(vrid: int, family: int) -> str:
    """``vmac4.12`` / ``vmac6.12``: at most 9 characters (IFNAMSIZ allows 15)."""
    _check(vrid, family)
    return f"vmac{_version(family)}.{vrid}"


def vmac_table(vrid: int, family: int) -> int:
    """The routing table that sends replies from the VIPs of this vmac through it."""
    _check(vrid, family)
    return VMAC_TABLE_BASE + _version(family) * 256 + vrid


def parse_vmac_ifname(ifname: str) -> tuple[int, int]:
    """(vrid, family) of a name made by ``vmac_ifname``; ValueError for any other name."""
    m = _NAME.match(ifname)
    if m is None or not 1 <= int(m.group(2)) <= 255:
        raise ValueError(f"{ifname!r} is not a virtual MAC interface name (vmac4.N / vmac6.N)")
    return int(m.group(2)), AF_INET if m.group(1) == "4" else AF_INET6


@dataclass(frozen=True)
class VmacInfo:
    """What the kernel shows of a vmac interface."""

    ifname: str
    parent: str | None  # None if the parent is in another namespace or gone
    mac: str
    mode: str
    up: bool


def vmac_in_use(parent: str, ip: IPAddress, vrid: int, *, timeout: float = 0.1) -> bool:
    """True if some *other* host answers for ``ip`` with the virtual MAC of ``vrid``.

    Asks (an ARP probe from 0.0.0.0 / a DAD-style NS, which no cache learns from) unicast
    to the virtual MAC, out of ``parent``: the switch delivers it to wherever that MAC
    lives. Meaningful *before* our own ``up()``: once our vmac has sent, the switch maps
    the MAC to our own port and drops a frame to it that came in on that port. Costs
    ``timeout`` when nobody answers, 6-30 ms when somebody does (closing a packet socket
    waits for an RCU grace period). A check to flag a second holder, not a lock: the etcd
    election is what guarantees one holder.
    """
    family = AF_INET if isinstance(ip, IPv4Address) else AF_INET6
    mac = vrrp_mac(vrid, family)
    return mac in who_answers(parent, ip, eth_dst=mac, timeout=timeout, first=True)


class VirtualMac:
    """Creates and removes vmac interfaces, their sysctls and source routing.

    One pyroute2 ``IPRoute`` socket, opened at construction and kept until ``close()``.
    pyroute2 0.9 keeps its netlink socket and event loop per *thread*: used from a second
    thread it quietly opens a second socket there (in that thread's network namespace), so
    use it from the thread that made it. Methods are serialised by a lock.
    """

    def __init__(self, *, rule_priority: int = RULE_PRIORITY) -> None:
        if not 0 < rule_priority < 32766:
            raise ValueError("rule priority must be between local (0) and main (32766)")
        self.rule_priority = rule_priority
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

    # -- public API ------------------------------------------------------------------------

    def up(self, parent: str, vrid: int, family: int) -> str:
        """Create (or check and reuse) the vmac of ``vrid`` on ``parent``; returns its name.

        Idempotent: an existing vmac with the right parent, MAC and mode is reused, its
        sysctls re-applied and its routing table re-synchronised with the main table (call
        ``up`` again after the parent's routes changed). An interface of that name that is
        anything else is refused with NetError, never modified. A vmac created here and
        failing to configure is deleted again.

        Nothing is sent: the vmac has no address yet, answers nothing (arp_ignore=1) and
        has no IPv6 link-local address, so it stays silent until the VIP is bound and
        announced.
        """
        name, mac, table = (
            vmac_ifname(vrid, family),
            vrrp_mac(vrid, family),
            vmac_table(vrid, family),
        )
        what = f"cannot bring up {name} on {parent}"
        with self._lock:
            parent_index = _ifindex(parent, what, missing_ok=True)
            if parent_index is None:
                raise NetError(f"{what}: no such interface {parent}")
            link = self._link(name, what, missing_ok=True)
            created = link is None
            if link is None:
                try:
                    self._netlink(what).link(
                        "add",
                        ifname=name,
                        kind="macvlan",
                        link=parent_index,
                        address=mac,
                        macvlan_mode=MACVLAN_MODE,
                    )
                except NetlinkError as exc:
                    raise NetError(f"{what}: {_reason(exc)}") from exc
                # Only its index is needed: an ioctl, not a second netlink link message.
                index = _ifindex(name, what)
                assert index is not None
            else:
                self._check_existing(link, name, parent_index, mac, what)
                index = int(link["index"])
            try:
                self._configure(parent, name, family)
                self._netlink(what).link("set", index=index, state="up")
                self._sync_table(parent_index, index, family, table, what)
            except (NetlinkError, NetError, OSError) as exc:
                if created:
                    self._delete(name, table, family)
                if isinstance(exc, NetError):
                    raise
                raise NetError(f"{what}: {_reason(exc)}") from exc
        return name

    def down(self, ifname: str) -> bool:
        """Delete the vmac, its source rules and its routing table; False if it was absent.

        Its addresses go with it: from the moment this returns the host neither answers
        ARP/NDP for its VIPs nor accepts frames for the virtual MAC. Refuses (NetError) a
        name that is not a vmac name or an interface that is not a macvlan with the
        virtual MAC: ``down("eth0")`` must never delete anything.
        """
        try:
            vrid, family = parse_vmac_ifname(ifname)
        except ValueError as exc:
            raise NetError(f"cannot take down {ifname}: {exc}") from exc
        with self._lock:
            link = self._link(ifname, f"cannot take down {ifname}", missing_ok=True)
            if link is not None:
                kind, _, _ = self._macvlan(link)
                mac = str(link.get("IFLA_ADDRESS") or "").lower()
                if kind != "macvlan" or mac != vrrp_mac(vrid, family):
                    raise NetError(
                        f"cannot take down {ifname}: it is a {kind or 'non-macvlan'} "
                        f"interface with MAC {mac}, not haagent's virtual MAC interface"
                    )
            self._delete(ifname, vmac_table(vrid, family), family)
            return link is not None

    def add_source_rule(self, ifname: str, ip: IPAddress) -> bool:
        """``from <ip> lookup <vmac table>``: replies from the VIP leave through the vmac.

        Call it after binding the VIP on the vmac and before announcing it. True if added,
        False if it was there already.
        """
        vrid, family = self._parse(ifname, ip, "route replies from")
        table = vmac_table(vrid, family)
        with self._lock:
            if self._rules(table, family, ip):
                return False
            try:
                self._netlink().rule(
                    "add",
                    family=family,
                    src=str(ip),
                    src_len=ip.max_prefixlen,
                    table=table,
                    priority=self.rule_priority,
                )
            except NetlinkError as exc:
                if exc.code == errno.EEXIST:
                    return False
                raise NetError(
                    f"cannot route replies from {ip} via {ifname}: {_reason(exc)}"
                ) from exc
            return True

    def remove_source_rule(self, ifname: str, ip: IPAddress) -> bool:
        """Remove what ``add_source_rule`` added; False if absent. ``down`` does it too."""
        vrid, family = self._parse(ifname, ip, "stop routing replies from")
        with self._lock:
            return self._del_rules(vmac_table(vrid, family), family, ip) > 0

    def info(self, ifname: str) -> VmacInfo | None:
        """The kernel's view of ``ifname`` (any macvlan); None if it does not exist."""
        with self._lock:
            link = self._link(ifname, f"cannot look up {ifname}", missing_ok=True)
            if link is None:
                return None
            info = self._info(link)
            if info is None:
                raise NetError(f"{ifname} is not a macvlan interface")
            return info

    def existing(self) -> list[VmacInfo]:
        """Every haagent vmac in this namespace (``vmacN.M`` macvlans), e.g. to remove
        those left by a previous run at start-up."""
        with self._lock:
            # The dump already carries every link's details: no second query per link.
            found = [
                self._info(link)
                for link in self._netlink().link("dump")
                if _NAME.match(str(link.get("IFLA_IFNAME")))
            ]
        return sorted((i for i in found if i is not None), key=lambda i: i.ifname)

    # -- internals (caller holds the lock) -----------------------------------------------

    def _netlink(self, what: str = "netlink request") -> Any:
        if self._ipr is None:
            raise NetError(f"{what}: the {type(self).__name__} is closed")
        return self._ipr

    def _link(self, ifname: str, what: str, *, missing_ok: bool = False) -> Any:
        """The RTM_NEWLINK message of ``ifname``; None if it does not exist and missing_ok.

        ``what`` opens the error message ("cannot bring up vmac4.12 on eth0").
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

    def _info(self, link: Any) -> VmacInfo | None:
        """VmacInfo of an RTM_NEWLINK message; None if it is not a macvlan."""
        kind, mode, parent_index = self._macvlan(link)
        if kind != "macvlan":
            return None
        parent = None
        if parent_index and link.get("IFLA_LINK_NETNSID") is None:
            with contextlib.suppress(OSError):  # the parent is gone
                parent = socket.if_indextoname(parent_index)
        return VmacInfo(
            ifname=str(link.get("IFLA_IFNAME")),
            parent=parent,
            mac=str(link.get("IFLA_ADDRESS") or "").lower(),
            mode=mode,
            up=bool(int(link["flags"]) & 1),  # IFF_UP
        )

    def _parse(self, ifname: str, ip: IPAddress, what: str) -> tuple[int, int]:
        try:
            vrid, family = parse_vmac_ifname(ifname)
        except ValueError as exc:
            raise NetError(f"cannot {what} {ip}: {exc}") from exc
        if ip.version != _version(family):
            raise NetError(f"cannot {what} {ip} via {ifname}: wrong address family")
        return vrid, family

    def _configure(self, parent: str, name: str, family: int) -> None:
        """The sysctls; docs/layer2.md explains each with what breaks without it."""
        # Parent: answer ARP only for addresses configured on the parent itself (the VIP
        # lives on the vmac, and broadcasts reach both), and never put a vmac's VIP as
        # sender into an ARP request the parent sends: clients would map the VIP to the
        # node's MAC. The vmac: the same two, so it never answers for the node's own
        # addresses with the virtual MAC (ARP requests for them reach the vmac too).
        for ifname in (parent, name):
            # Any non-zero arp_ignore already restricts to the incoming interface; 2 is the
            # strictest arp_announce. Stricter values an operator set stay.
            if sysctl.get_conf("ipv4", ifname, "arp_ignore") == 0:
                sysctl.set_conf("ipv4", ifname, "arp_ignore", 1)
            sysctl.set_conf("ipv4", ifname, "arp_announce", 2)
        if family == AF_INET:
            # No IPv6 on an IPv4 vmac: no link-local address (identical on every host,
            # derived from the shared MAC), no MLD, no router solicitations.
            sysctl.set_conf("ipv6", name, "disable_ipv6", 1)
            return
        sysctl.set_conf("ipv6", name, "disable_ipv6", 0)
        # No link-local address either (addr_gen_mode 1 = none; set before the link goes
        # up): the same fe80:: on every host and nothing needs it -- the VIP is the source
        # of our NAs and NSs. No DAD: the MAC and the VIP are shared by design, and
        # election, not DAD, keeps them unique. No SLAAC or routes from RAs on the vmac:
        # they would be the same on every host and steer the host's own traffic.
        sysctl.set_conf("ipv6", name, "addr_gen_mode", 1)
        sysctl.set_conf("ipv6", name, "accept_dad", 0)
        sysctl.set_conf("ipv6", name, "accept_ra", 0)

    def _sync_table(self, parent: int, vmac: int, family: int, table: int, what: str) -> None:
        """Make ``table`` the main table's unicast routes of ``family``, parent -> vmac."""
        nl = self._netlink(what)
        want: dict[tuple[Any, int, int], dict[str, Any]] = {}
        for r in nl.route("dump", family=family, table=254):
            if r["type"] != RTN_UNICAST or r.get("RTA_MULTIPATH") or r.get("RTA_OIF") is None:
                continue  # multipath and encap routes are left to the main table
            oif = int(r.get("RTA_OIF"))
            spec = {
                **self._route_spec(r, family, table),
                "oif": vmac if oif == parent else oif,
                "scope": int(r["scope"]),
                "proto": RTPROT_STATIC,
            }
            if r.get("RTA_GATEWAY") is not None:
                spec["gateway"] = r.get("RTA_GATEWAY")
                # The gateway was valid through the parent; it is on the same link.
                spec["flags"] = RTNH_F_ONLINK
            want[_route_key(r)] = spec
        for spec in want.values():
            nl.route("replace", **spec)
        for r in nl.route("dump", family=family, table=table):
            if _route_key(r) not in want:
                self._del_route(r, table, family)

    @staticmethod
    def _route_spec(r: Any, family: int, table: int) -> dict[str, Any]:
        """What identifies route ``r`` in ``table``: destination, length and metric."""
        return {
            "family": family,
            "table": table,
            "dst_len": int(r["dst_len"]),
            **_present(r, dst="RTA_DST", priority="RTA_PRIORITY"),
        }

    def _del_route(self, r: Any, table: int, family: int) -> None:
        try:
            self._netlink().route("del", **self._route_spec(r, family, table))
        except NetlinkError as exc:
            if exc.code not in (errno.ESRCH, errno.ENOENT):
                raise

    def _rules(self, table: int, family: int, ip: IPAddress | None = None) -> list[Any]:
        out = []
        for rule in self._netlink().rule("dump", family=family):
            if rule.get("FRA_TABLE") != table:
                continue
            if ip is not None and (
                rule.get("FRA_SRC") is None
                or str(rule.get("FRA_SRC")) != str(ip)
                or int(rule["src_len"]) != ip.max_prefixlen
            ):
                continue
            out.append(rule)
        return out

    def _del_rules(self, table: int, family: int, ip: IPAddress | None = None) -> int:
        removed = 0
        for rule in self._rules(table, family, ip):
            spec: dict[str, Any] = {"family": int(rule["family"]), "table": table}
            spec.update(_present(rule, src="FRA_SRC", priority="FRA_PRIORITY"))
            if "src" in spec:
                spec["src_len"] = int(rule["src_len"])
            try:
                self._netlink().rule("del", **spec)
            except NetlinkError as exc:
                if exc.code not in (errno.ENOENT, errno.ESRCH):
                    raise NetError(f"cannot delete rule for table {table}: {_reason(exc)}") from exc
                continue
            removed += 1
        return removed

    def _delete(self, name: str, table: int, family: int) -> None:
        """Rules, routes, then the link; each step tolerates what is already gone."""
        what = f"cannot take down {name}"
        try:
            self._del_rules(table, family)
            for r in self._netlink(what).route("dump", family=family, table=table):
                self._del_route(r, table, family)
            index = _ifindex(name, what, missing_ok=True)
            if index is not None:
                self._netlink(what).link("del", index=index)
        except NetlinkError as exc:
            if exc.code != errno.ENODEV:
                raise NetError(f"{what}: {_reason(exc)}") from exc

    def _check_existing(self, link: Any, name: str, parent_index: int, mac: str, what: str) -> None:
        kind, mode, link_index = self._macvlan(link)
        got_mac = str(link.get("IFLA_ADDRESS") or "").lower()
        problems = []
        if kind != "macvlan":
            problems.append(f"it is a {kind or 'non-macvlan'} interface")
        else:
            if link_index != parent_index or link.get("IFLA_LINK_NETNSID") is not None:
                problems.append("it has another parent")
            if mode != MACVLAN_MODE:
                problems.append(f"its mode is {mode}, not {MACVLAN_MODE}")
        if got_mac != mac:
            problems.append(f"its MAC is {got_mac}, not {mac}")
        if problems:
            raise NetError(f"{what}: {name} exists and {', '.join(problems)}")

    @staticmethod
    def _macvlan(link: Any) -> tuple[str | None, str, int | None]:
        """(kind, macvlan mode, parent index) of an RTM_NEWLINK message."""
        info = link.get_attr("IFLA_LINKINFO")
        kind = info.get_attr("IFLA_INFO_KIND") if info is not None else None
        mode = "?"
        if kind == "macvlan":
            data = info.get_attr("IFLA_INFO_DATA")
            raw = data.get_attr("IFLA_MACVLAN_MODE") if data is not None else None
            if isinstance(raw, int):  # pyroute2 decodes the mode to its name; older ones not
                mode = _MACVLAN_MODES.get(raw, str(raw))
            elif raw is not None:
                mode = str(raw)
        parent = link.get_attr("IFLA_LINK")
        return kind, mode, int(parent) if parent is not None else None

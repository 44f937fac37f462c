"""Where a held VIP lives on this host, in the three layer-2 modes of docs/layer2.md.

* node MAC (default): the address is bound on the VIP's interface;
* ``vmac: true``: bound on a private macvlan carrying the VRRP virtual MAC of its VRID, so
  clients' neighbour caches stay valid across a failover and only the switch relearns a port;
* ``bind: false`` (announce-only): not bound at all — IPVS, nftables or XDP take the traffic —
  and this host answers ARP/NDP for it while holding it.

A VIP may have several addresses (``addresses:``, typically its IPv4 and its IPv6): each call
here acts on all of them, so that they are always placed and removed together. A vmac VIP has
one macvlan per address family it uses, all with its VRID.

The agent and ``haagent cleanup`` go through this one module, so the modes cannot drift apart.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterable, Mapping
from ipaddress import IPv4Address, IPv4Interface, IPv6Address, IPv6Interface

from haagent.config import VipConfig
from haagent.net.addresses import AddressManager, NetError, RefreshError
from haagent.net.responder import Responder
from haagent.net.vmac import VirtualMac, vmac_ifname, vrrp_mac

IPInterface = IPv4Interface | IPv6Interface
IPAddress = IPv4Address | IPv6Address
#: Where one address of a VIP lives: (interface, address).
Spot = tuple[str, IPInterface]


def _af(version: int) -> int:
    return socket.AF_INET if version == 4 else socket.AF_INET6


def _raise_all(errors: list[NetError]) -> None:
    """One NetError for every failure of a pass that went on after the first."""
    if len(errors) == 1:
        raise errors[0]
    if errors:
        raise NetError("; ".join(str(e) for e in errors))


class Placement:
    def __init__(self, net: AddressManager) -> None:
        self.net = net
        self._vmac: VirtualMac | None = None  # opened only when a vmac VIP needs it
        self._responder: Responder | None = None  # started only for announce-only VIPs
        self._retiring: set[str] = set()  # vmac links whose VIP was removed, see tidy()

    @property
    def vmac(self) -> VirtualMac:
        if self._vmac is None:
            self._vmac = VirtualMac()
        return self._vmac

    @property
    def responder(self) -> Responder:
        if self._responder is None:
            self._responder = Responder()
        return self._responder

    def where(self, vip: VipConfig, address: IPInterface | IPAddress | None = None) -> str:
        """The interface ``address`` (default: the primary) of the VIP is bound on and
        announced from: a vmac VIP has one per address family."""
        family = _af((vip.address if address is None else address).version)
        return vmac_ifname(vip.vrid, family) if vip.vmac else vip.interface

    def mac(self, vip: VipConfig, address: IPInterface | IPAddress | None = None) -> str:
        """The MAC clients should resolve ``address`` (default: the primary) of the VIP to."""
        family = _af((vip.address if address is None else address).version)
        return vrrp_mac(vip.vrid, family) if vip.vmac else self.net.mac(vip.interface)

    def spots(self, vip: VipConfig) -> list[Spot]:
        """(interface, address) for every address of the VIP, in its order."""
        return [(self.where(vip, a), a) for a in vip.addresses]

    def shown(self, vip: VipConfig) -> str:
        """Every address and where it lives, for a log line: ``198.51.100.10/32,
        2001:db8::10/128 on eth0``, or per interface when they differ (vmac)."""
        by_ifname: dict[str, list[str]] = {}
        for ifname, address in self.spots(vip):
            by_ifname.setdefault(ifname, []).append(str(address))
        return ", ".join(f"{', '.join(a)} on {ifname}" for ifname, a in by_ifname.items())

    def place(self, vip: VipConfig, lifetime: int | None) -> None:
        """Make this host answer for every address of the VIP; raises NetError at the first
        that fails, with the ones before it in place (the caller removes them: ``remove``).

        Idempotent, so it also completes a VIP of which some address went missing.
        """
        if vip.vmac:
            # Links first (sysctls, routing table: milliseconds each), then the addresses
            # back to back, so that they appear within a fraction of a millisecond.
            for family in vip.families:
                name = vmac_ifname(vip.vrid, _af(family))
                self._retiring.discard(name)  # reused as it is
                self.vmac.up(vip.interface, vip.vrid, _af(family))
            for name, address in self.spots(vip):
                self.net.bind(name, address, lifetime=lifetime)
            # Replies must leave through the vmac (its MAC, and strict rp_filter accepts them).
            for name, address in self.spots(vip):
                self.vmac.add_source_rule(name, address.ip)
        elif not vip.bind:
            mac = self.net.mac(vip.interface)
            for ip in vip.ips:
                self.responder.hold(vip.interface, ip, mac)
        else:
            for address in vip.addresses:
                self.net.bind(vip.interface, address, lifetime=lifetime)

    def remove(self, vip: VipConfig, *, link_later: bool = False, verify: bool = True) -> bool:
        """Stop answering for every address of the VIP here; True if anything was there to
        remove. A failure on one address does not stop the others: all are tried, then one
        NetError names every failure.

        Only haagent's own entry of an address goes (AddressManager.unbind); ``verify``
        False is for a VIP the caller bound itself and still holds (no look at the mark).

        A vmac VIP's links go too (one VIP per vmac: VRIDs are unique per family in a
        config), so a standby never has the virtual MAC up. Deleting a macvlan takes 15-45 ms
        (the kernel waits out an RCU grace period), removing an address 0.3 ms; with
        ``link_later`` only the addresses go now — the links, silent without them, wait for
        :meth:`tidy`, which the agent calls once it has handed the key over.
        """
        errors: list[NetError] = []
        removed = False
        if not vip.bind:
            if self._responder is not None:
                for ip in vip.ips:
                    removed = self._responder.release(vip.interface, ip) or removed
            return removed
        for ifname, address in self.spots(vip):
            try:
                removed = self.net.unbind(ifname, address, verify=verify) or removed
            except NetError as exc:
                errors.append(exc)
        if vip.vmac:
            for family in vip.families:
                name = vmac_ifname(vip.vrid, _af(family))
                try:
                    if link_later:
                        if self.net.exists(name):
                            self._retiring.add(name)
                            removed = True
                        continue
                    self._retiring.discard(name)
                    removed = self.vmac.down(name) or removed
                except NetError as exc:
                    errors.append(exc)
        _raise_all(errors)
        return removed

    def tidy(self) -> None:
        """Delete the vmac links left by ``remove(..., link_later=True)``."""
        while self._retiring:
            self.vmac.down(self._retiring.pop())

    def refresh_all(self, vips: Iterable[VipConfig], lifetime: int) -> list[VipConfig]:
        """Renew the address lifetime of every address of ``vips``; return the VIPs of which
        any address vanished (bind them again: ``place`` is idempotent).

        One ``AddressManager.refresh_many`` per interface (``where``), so a pass over N held
        addresses costs N + (interfaces) netlink requests, not N dumps of N addresses.
        Announce-only VIPs have no address and count as present.

        An interface whose pass failed does not stop the others: after all of them,
        RefreshError names every failure, and its ``missing`` lists the VIPs found vanished
        all the same (bind those again, as after a pass without errors).
        """
        by_interface: dict[str, list[tuple[VipConfig, IPInterface]]] = {}
        for vip in vips:
            if vip.bind:
                for ifname, address in self.spots(vip):
                    by_interface.setdefault(ifname, []).append((vip, address))
        vanished: dict[str, VipConfig] = {}  # by name: a VIP with two addresses gone is one
        errors: list[str] = []
        for ifname, group in by_interface.items():
            try:
                missing = self.net.refresh_many(ifname, [a for _, a in group], lifetime)
            except RefreshError as exc:
                missing = exc.missing
                errors.append(str(exc))
            except NetError as exc:  # nothing refreshed there, nothing known to be missing
                errors.append(str(exc))
                continue
            gone = set(missing)
            for vip, address in group:
                if address in gone:
                    vanished.setdefault(vip.name, vip)
        if errors:
            raise RefreshError("; ".join(errors), list(vanished.values()))
        return list(vanished.values())

    def placed(self, vips: Iterable[VipConfig]) -> set[str]:
        """Names of the VIPs haagent's own entry of *any* address is bound here for, so that
        start-up keeps or removes a half-bound VIP as a whole (announce-only VIPs never
        survive their process).

        One address dump per interface, however many VIPs: start-up looks at all of them.
        """
        on: dict[str, set[IPInterface]] = {}
        out: set[str] = set()
        for vip in vips:
            if not vip.bind:
                continue
            for ifname, address in self.spots(vip):
                if ifname not in on:
                    on[ifname] = self.net.owned(ifname)
                if address in on[ifname]:
                    out.add(vip.name)
                    break
        return out

    def foreign(self, vips: Iterable[VipConfig]) -> dict[str, dict[IPAddress, str]]:
        """VIP name -> {IP: what this host has of it outside haagent ("198.51.100.11/24 on
        eth0")}, for every address of the VIPs haagent binds: such a VIP would take over,
        and on its release remove, an address that is not haagent's. One dump of the host's
        addresses.

        Announce-only VIPs are not asked about: their addresses may well be on the host on
        purpose (a dummy interface for IPVS), since haagent never binds them.
        """
        bound = [v for v in vips if v.bind]
        wanted = {a.ip: (ifname, a.network.prefixlen) for v in bound for ifname, a in self.spots(v)}
        found = self.net.foreign(wanted)
        out: dict[str, dict[IPAddress, str]] = {}
        for v in bound:
            hits = {ip: ", ".join(found[ip]) for ip in v.ips if ip in found}
            if hits:
                out[v.name] = hits
        return out

    def fenced(self, vip: VipConfig) -> list[Spot]:
        """What the fence process must remove if the agent dies: every address of the VIP;
        none for announce-only VIPs, whose answers die with the agent's own process."""
        return self.spots(vip) if vip.bind else []

    def close(self) -> None:
        if self._responder is not None:
            self._responder.close()
        if self._retiring:
            with contextlib.suppress(NetError):
                self.tidy()
        if self._vmac is not None:
            self._vmac.close()


def foreign_text(found: Mapping[IPAddress, str]) -> str:
    """What ``Placement.foreign`` found of one VIP, as one line."""
    return "; ".join(found.values())


def foreign_problem(name: str, vip: VipConfig, found: Mapping[IPAddress, str]) -> str:
    """One line for a VIP found configured outside haagent (``Placement.foreign``)."""
    ips = [str(ip) for ip in found] or [str(vip.ip)]
    if len(ips) == 1:
        what, it = f"{ips[0]} is", "it"
        fix = "an address no host has configured, or remove that address"
    else:
        what, it = f"{', '.join(ips[:-1])} and {ips[-1]} are", "them"
        fix = "addresses no host has configured, or remove those addresses"
    return (
        f"vip {name}: {what} already configured on this host outside haagent "
        f"({foreign_text(found)}); haagent would take {it} over and remove {it} on release: "
        f"give the VIP {fix} from the interface"
    )

"""Where a held VIP lives on this host, in the three layer-2 modes of docs/layer2.md.

* node MAC (default): the address is bound on the VIP's interface;
* ``vmac: true``: bound on a private macvlan carrying the VRRP virtual MAC of its VRID, so
  clients' neighbour caches stay valid across a failover and only the switch relearns a port;
* ``bind: false`` (announce-only): not bound at all — IPVS, nftables or XDP take the traffic —
  and this host answers ARP/NDP for it while holding it.

The agent and ``haagent cleanup`` go through this one module, so the modes cannot drift apart.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterable
from ipaddress import IPv4Interface, IPv6Interface

from haagent.config import VipConfig
from haagent.net.addresses import AddressManager, NetError, RefreshError
from haagent.net.responder import Responder
from haagent.net.vmac import VirtualMac, vmac_ifname, vrrp_mac


def _af(vip: VipConfig) -> int:
    return socket.AF_INET if vip.family == 4 else socket.AF_INET6


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

    def where(self, vip: VipConfig) -> str:
        """The interface the VIP is bound on (and announced from)."""
        return vmac_ifname(vip.vrid, _af(vip)) if vip.vmac else vip.interface

    def mac(self, vip: VipConfig) -> str:
        """The MAC clients should resolve the VIP to."""
        return vrrp_mac(vip.vrid, _af(vip)) if vip.vmac else self.net.mac(vip.interface)

    def place(self, vip: VipConfig, lifetime: int | None) -> None:
        """Make this host answer for the VIP; raises NetError."""
        if vip.vmac:
            name = self.where(vip)
            self._retiring.discard(name)  # reused as it is
            self.vmac.up(vip.interface, vip.vrid, _af(vip))
            self.net.bind(name, vip.address, lifetime=lifetime)
            # Replies must leave through the vmac (its MAC, and strict rp_filter accepts them).
            self.vmac.add_source_rule(name, vip.ip)
        elif not vip.bind:
            self.responder.hold(vip.interface, vip.ip, self.net.mac(vip.interface))
        else:
            self.net.bind(vip.interface, vip.address, lifetime=lifetime)

    def remove(self, vip: VipConfig, *, link_later: bool = False, verify: bool = True) -> bool:
        """Stop answering for the VIP here; True if anything was there to remove.

        Only haagent's own entry of the address goes (AddressManager.unbind); ``verify``
        False is for a VIP the caller bound itself and still holds (no look at the mark).

        A vmac VIP's link goes too (one VIP per vmac: VRIDs are unique per family in a
        config), so a standby never has the virtual MAC up. Deleting a macvlan takes 15-45 ms
        (the kernel waits out an RCU grace period), removing the address 0.3 ms; with
        ``link_later`` only the address goes now — the link, silent without it, waits for
        :meth:`tidy`, which the agent calls once it has handed the key over.
        """
        if vip.vmac:
            name = self.where(vip)
            removed = self.net.unbind(name, vip.address, verify=verify)
            if link_later:
                if self.net.exists(name):
                    self._retiring.add(name)
                    return True
                return removed
            self._retiring.discard(name)
            return self.vmac.down(name) or removed
        if not vip.bind:
            return self._responder is not None and self._responder.release(vip.interface, vip.ip)
        return self.net.unbind(vip.interface, vip.address, verify=verify)

    def tidy(self) -> None:
        """Delete the vmac links left by ``remove(..., link_later=True)``."""
        while self._retiring:
            self.vmac.down(self._retiring.pop())

    def refresh_all(self, vips: Iterable[VipConfig], lifetime: int) -> list[VipConfig]:
        """Renew the address lifetime of every VIP of ``vips``; return those that vanished.

        One ``AddressManager.refresh_many`` per interface (``where``), so a pass over N held
        VIPs costs N + (interfaces) netlink requests, not N dumps of N addresses.
        Announce-only VIPs have no address and count as present.

        An interface whose pass failed does not stop the others: after all of them,
        RefreshError names every failure, and its ``missing`` lists the VIPs found vanished
        all the same (bind those again, as after a pass without errors).
        """
        by_interface: dict[str, list[VipConfig]] = {}
        for vip in vips:
            if vip.bind:
                by_interface.setdefault(self.where(vip), []).append(vip)
        vanished: list[VipConfig] = []
        errors: list[str] = []
        for ifname, group in by_interface.items():
            try:
                missing = self.net.refresh_many(ifname, [v.address for v in group], lifetime)
            except RefreshError as exc:
                missing = exc.missing
                errors.append(str(exc))
            except NetError as exc:  # nothing refreshed there, nothing known to be missing
                errors.append(str(exc))
                continue
            gone = set(missing)
            vanished.extend(v for v in group if v.address in gone)
        if errors:
            raise RefreshError("; ".join(errors), vanished)
        return vanished

    def placed(self, vips: Iterable[VipConfig]) -> set[str]:
        """Names of the VIPs haagent's own entry is bound here for (announce-only VIPs never
        survive their process).

        One address dump per interface, however many VIPs: start-up looks at all of them.
        """
        on: dict[str, set[IPv4Interface | IPv6Interface]] = {}
        out: set[str] = set()
        for vip in vips:
            if not vip.bind:
                continue
            where = self.where(vip)
            if where not in on:
                on[where] = self.net.owned(where)
            if vip.address in on[where]:
                out.add(vip.name)
        return out

    def foreign(self, vips: Iterable[VipConfig]) -> dict[str, str]:
        """VIP name -> what this host has of its IP outside haagent ("198.51.100.11/24 on
        eth0"), for the VIPs haagent binds: such a VIP would take over, and on its release
        remove, an address that is not haagent's. One dump of the host's addresses.

        Announce-only VIPs are not asked about: their address may well be on the host on
        purpose (a dummy interface for IPVS), since haagent never binds it.
        """
        bound = [v for v in vips if v.bind]
        wanted = {v.ip: (self.where(v), v.address.network.prefixlen) for v in bound}
        found = self.net.foreign(wanted)
        return {v.name: ", ".join(found[v.ip]) for v in bound if v.ip in found}

    def fenced(self, vip: VipConfig) -> tuple[str, IPv4Interface | IPv6Interface] | None:
        """What the fence process must remove if the agent dies; None for announce-only VIPs,
        whose answers die with the agent's own process."""
        return (self.where(vip), vip.address) if vip.bind else None

    def close(self) -> None:
        if self._responder is not None:
            self._responder.close()
        if self._retiring:
            with contextlib.suppress(NetError):
                self.tidy()
        if self._vmac is not None:
            self._vmac.close()


def foreign_problem(name: str, vip: VipConfig, found: str) -> str:
    """One line for a VIP found configured outside haagent (``Placement.foreign``)."""
    return (
        f"vip {name}: {vip.ip} is already configured on this host outside haagent ({found}); "
        "haagent would take it over and remove it on release: give the VIP an address no "
        "host has configured, or remove that address from the interface"
    )

"""haagent.net.inuse against real kernels: does another host still answer for an address?

A two-host lab (``haagent.lab.topology.Lab``: h1, h2 and a client on one bridge). The prober
runs in h1 in a forked child (``nsutil.run_in_ns``: it ``setns()``es into h1 before it opens
its packet socket); h2's kernel is the "old holder" whose agent and fence are gone: the
address is simply bound there, as the kernel of a host with SIGKILLed processes keeps it.
Every address a test binds is removed in a ``finally``; every wait is bounded.

Run with ``-s`` to see the timings (how long an answer takes to come back).
"""

from __future__ import annotations

import json
import socket
import statistics
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import suppress
from ipaddress import IPv4Address, IPv6Address, ip_address, ip_interface
from typing import Any

import pytest

from haagent.lab.topology import SCALE_NET4, SCALE_NET6, Lab, Node
from haagent.net import inuse
from haagent.net.addresses import AddressManager
from haagent.net.vmac import VirtualMac, vmac_ifname, vrrp_mac
from tests.lab.conftest import require
from tests.lab.nsutil import run_in_ns

pytestmark = pytest.mark.lab

IPAddress = IPv4Address | IPv6Address
SLACK = 0.05  # what a call may take beyond tries x timeout
VRID = 23
FAMILY = {4: socket.AF_INET, 6: socket.AF_INET6}


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    require("ip", "etcd", "etcdctl")
    with Lab(hosts=2) as lab:
        yield lab


def mac_of(lab: Lab, node: Node, dev: str = "eth0") -> str:
    out = lab.run(node, ["ip", "-j", "link", "show", "dev", dev]).stdout
    return str(json.loads(out)[0]["address"]).lower()


def bind(lab: Lab, node: Node, *addresses: IPAddress) -> None:
    for a in addresses:
        lab.add_address(node, a, marked=False)  # nodad for IPv6


def unbind(lab: Lab, node: Node, *addresses: IPAddress, dev: str = "eth0") -> None:
    batch = "".join(f"address del {a}/{a.max_prefixlen} dev {dev}\n" for a in addresses)
    lab.run(node, ["ip", "-force", "-batch", "-"], input=batch, check=False, timeout=30)


# -- run inside h1 (forked child) ------------------------------------------------------------

Result = tuple[inuse.InUse | None, float]


def do_probes(
    dev: str, addresses: Sequence[IPAddress], n: int, kw: dict[str, Any] | None = None
) -> list[Result]:
    """``n`` probes with one kept Prober: (answer, seconds the call took) each; ``kw`` are
    probe()'s keyword arguments (run_in_ns passes positional ones only)."""
    kw = kw or {}
    out: list[Result] = []
    with inuse.Prober(dev) as prober:
        for _ in range(n):
            t0 = time.perf_counter()
            got = prober.probe(addresses, **kw)
            out.append((got, time.perf_counter() - t0))
    return out


def do_oneshots(
    dev: str, addresses: Sequence[IPAddress], n: int, kw: dict[str, Any] | None = None
) -> list[Result]:
    """``n`` calls of the module-level probe(): a socket each."""
    kw = kw or {}
    out: list[Result] = []
    for _ in range(n):
        t0 = time.perf_counter()
        got = inuse.probe(dev, addresses, **kw)
        out.append((got, time.perf_counter() - t0))
    return out


def do_interface_trouble(address: IPAddress) -> list[str]:
    """A Prober on a veth that changes its MAC, goes down, comes up, is deleted and
    re-created."""

    def ip_(*args: str) -> None:
        subprocess.run(["ip", *args], check=True, timeout=10, capture_output=True)

    def step(prober: inuse.Prober) -> str:
        try:
            return repr(prober.probe([address], timeout=0.01, tries=1))
        except OSError as exc:
            return f"{type(exc).__name__}: {exc}"

    def make() -> None:
        ip_("link", "add", "hxi0", "type", "veth", "peer", "name", "hxi1")
        ip_("link", "set", "hxi1", "up")
        ip_("link", "set", "hxi0", "up")

    out: list[str] = []
    make()
    try:
        with inuse.Prober("hxi0") as prober:
            out.append(step(prober))
            ip_("link", "set", "hxi0", "address", "02:00:5e:10:00:99")
            out.append(step(prober) + " " + prober.mac)
            ip_("link", "set", "hxi0", "down")
            out.append(step(prober))
            ip_("link", "set", "hxi0", "up")
            out.append(step(prober))
            ip_("link", "del", "hxi0")
            out.append(step(prober))
            make()
            out.append(step(prober))
        for name in ("hxnosuch0", "lo"):
            try:
                inuse.probe(name, [address])
            except OSError as exc:
                out.append(f"{type(exc).__name__}: {exc}")
    finally:
        subprocess.run(["ip", "link", "del", "hxi0"], check=False, timeout=10, capture_output=True)
    return out


def do_vmac(parent: str, version: int, vip: str | None) -> str:
    """``VirtualMac.up`` (as an agent winning the VIP in vmac mode), and the VIP bound on it
    unless ``vip`` is None; the vmac's name."""
    with VirtualMac() as vm, AddressManager() as am:
        name = vm.up(parent, VRID, FAMILY[version])
        if vip is not None:
            am.bind(name, ip_interface(f"{vip}/{ip_address(vip).max_prefixlen}"))
        return name


def do_vmac_down(name: str) -> bool:
    with VirtualMac() as vm:
        return vm.down(name)


# -- helpers ---------------------------------------------------------------------------------


def ms(values: Sequence[float]) -> str:
    xs = sorted(v * 1e3 for v in values)
    p99 = xs[min(len(xs) - 1, int(0.99 * len(xs)))]
    return f"p50 {statistics.median(xs):.3f} p99 {p99:.3f} max {xs[-1]:.3f} ms (n={len(xs)})"


def assert_all_in_use(results: list[Result], addresses: set[IPAddress], mac: str) -> None:
    for got, _ in results:
        assert got is not None, results
        assert got.address in addresses and got.mac == mac, got


def assert_none_within(results: list[Result], tries: int, timeout: float) -> None:
    for got, took in results:
        assert got is None, got
        assert took <= tries * timeout + SLACK, f"{took * 1e3:.1f} ms"


# -- tests -----------------------------------------------------------------------------------


def test_an_address_bound_on_a_peer_is_in_use_until_it_is_removed(lab: Lab) -> None:
    h1, h2 = lab.hosts
    v4, v6 = lab.vip4(0), lab.vip6(0)
    holder = mac_of(lab, h2)
    bind(lab, h2, v4, v6)
    try:
        kept4 = run_in_ns(h1.netns, do_probes, "eth0", [v4], 50)
        kept6 = run_in_ns(h1.netns, do_probes, "eth0", [v6], 50)
        both = run_in_ns(h1.netns, do_probes, "eth0", [v4, v6], 20)
        once4 = run_in_ns(h1.netns, do_oneshots, "eth0", [v4], 10)
        once6 = run_in_ns(h1.netns, do_oneshots, "eth0", [v6], 10)
        assert_all_in_use(kept4, {v4}, holder)
        assert_all_in_use(kept6, {v6}, holder)
        assert_all_in_use(both, {v4, v6}, holder)
        assert_all_in_use(once4, {v4}, holder)
        assert_all_in_use(once6, {v6}, holder)
        # The answer comes in the first round, in far less than its timeout.
        for got, took in kept4 + kept6 + both:
            assert got is not None and got.elapsed < 0.02 and took < 0.02 + SLACK
    finally:
        unbind(lab, h2, v4, v6)
    gone = run_in_ns(h1.netns, do_probes, "eth0", [v4, v6], 5)
    gone_slow = run_in_ns(h1.netns, do_probes, "eth0", [v4, v6], 3, {"timeout": 0.05, "tries": 3})
    gone_once = run_in_ns(h1.netns, do_oneshots, "eth0", [v4, v6], 5)
    assert_none_within(gone, 2, 0.02)
    assert_none_within(gone_slow, 3, 0.05)
    assert_none_within(gone_once, 2, 0.02)

    def elapsed(rs: list[Result]) -> list[float]:
        return [r.elapsed for r, _ in rs if r is not None]

    def calls(rs: list[Result]) -> str:
        return ms([t for _, t in rs])

    print(
        f"\nin use, kept Prober: IPv4 answer after {ms(elapsed(kept4))}, call {calls(kept4)}"
        f"\n                     IPv6 answer after {ms(elapsed(kept6))}, call {calls(kept6)}"
        f"\n  one socket a call: IPv4 call {calls(once4)}, IPv6 call {calls(once6)}"
        f"\nnot in use: 2 x 20 ms: {calls(gone)}; 3 x 50 ms: {calls(gone_slow)};"
        f" one socket a call, 2 x 20 ms: {calls(gone_once)}"
    )


def test_the_probing_hosts_own_address_is_not_in_use(lab: Lab) -> None:
    """The prober's own kernel never answers (our probe is not looped back to it) and its
    interface's MAC never counts; ``own_macs`` hides other MACs too."""
    h1, h2 = lab.hosts
    v4, v6 = lab.vip4(1), lab.vip6(1)
    holder = mac_of(lab, h2)
    bind(lab, h1, v4, v6)
    try:
        assert_none_within(run_in_ns(h1.netns, do_probes, "eth0", [v4, v6], 3), 2, 0.02)
        bind(lab, h2, v4, v6)
        try:
            # On both: the other one is found.
            assert_all_in_use(run_in_ns(h1.netns, do_probes, "eth0", [v4], 3), {v4}, holder)
            assert_all_in_use(run_in_ns(h1.netns, do_probes, "eth0", [v6], 3), {v6}, holder)
            # Its MAC declared ours: nobody else.
            hidden = run_in_ns(h1.netns, do_probes, "eth0", [v4, v6], 3, {"own_macs": [holder]})
            assert_none_within(hidden, 2, 0.02)
        finally:
            unbind(lab, h2, v4, v6)
    finally:
        unbind(lab, h1, v4, v6)


@pytest.mark.parametrize("version", [4, 6])
def test_a_vip_on_the_old_holders_vmac_is_in_use(lab: Lab, version: int) -> None:
    """vmac mode: the VIP on h2's macvlan (virtual MAC), the probe out of h1's parent eth0,
    with h1's own vmac of the same VRID (the same MAC) already up, as after ``VirtualMac.up``
    on a new holder: the answer still comes in, from the virtual MAC."""
    h1, h2 = lab.hosts
    vip = lab.vip4(2) if version == 4 else lab.vip6(2)
    vmac, name = vrrp_mac(VRID, FAMILY[version]), vmac_ifname(VRID, FAMILY[version])
    try:
        assert run_in_ns(h2.netns, do_vmac, "eth0", version, str(vip)) == name
        assert run_in_ns(h1.netns, do_vmac, "eth0", version, None) == name
        found = run_in_ns(h1.netns, do_probes, "eth0", [vip], 20)
        assert_all_in_use(found, {vip}, vmac)
        # The virtual MAC is the new holder's too, yet must not go in own_macs: the old
        # holder answers with it, and would be overlooked.
        hidden = run_in_ns(h1.netns, do_probes, "eth0", [vip], 1, {"own_macs": [vmac]})
        assert_none_within(hidden, 2, 0.02)
        assert run_in_ns(h2.netns, do_vmac_down, name) is True
        assert_none_within(run_in_ns(h1.netns, do_probes, "eth0", [vip], 3), 2, 0.02)
        print(f"\nIPv{version} on a vmac: answer after {ms([r.elapsed for r, _ in found if r])}")
    finally:
        for h in (h1, h2):
            with suppress(Exception):
                run_in_ns(h.netns, do_vmac_down, name)
            lab.run(h, ["ip", "link", "del", name], check=False)


def test_many_addresses_at_once(lab: Lab) -> None:
    """More addresses than the kernel filter compares one by one: it passes all ARP / NAs
    then, and the parser picks the answer out."""
    h1, h2 = lab.hosts
    n = inuse.FILTER_MAX + 50
    v4s: list[IPAddress] = [SCALE_NET4[i] for i in range(1, n + 1)]
    v6s: list[IPAddress] = [SCALE_NET6[i] for i in range(1, n + 1)]
    holder = mac_of(lab, h2)
    bind(lab, h2, v4s[-1], v6s[-1])
    try:
        assert_all_in_use(run_in_ns(h1.netns, do_probes, "eth0", v4s, 3), {v4s[-1]}, holder)
        assert_all_in_use(run_in_ns(h1.netns, do_probes, "eth0", v6s, 3), {v6s[-1]}, holder)
        mixed = run_in_ns(h1.netns, do_probes, "eth0", [*v4s, *v6s], 3)
        assert_all_in_use(mixed, {v4s[-1], v6s[-1]}, holder)
    finally:
        unbind(lab, h2, v4s[-1], v6s[-1])
    gone = run_in_ns(h1.netns, do_probes, "eth0", [*v4s, *v6s], 3)
    assert_none_within(gone, 2, 0.02)
    print(f"\n{2 * n} addresses, none in use: call {ms([t for _, t in gone])}")


def test_interface_trouble_is_a_one_line_oserror(lab: Lab) -> None:
    h1 = lab.hosts[0]
    got = run_in_ns(h1.netns, do_interface_trouble, lab.vip4(3))
    assert got == [
        "None",
        "None 02:00:5e:10:00:99",  # a new MAC is picked up
        "ProbeError: cannot probe on hxi0: the interface is down",
        "None",  # up again: the same socket works
        "ProbeError: cannot probe on hxi0: no such interface",
        "None",  # re-created: reopened by name
        "ProbeError: cannot probe on hxnosuch0: no such interface",
        "ProbeError: cannot probe on lo: not an Ethernet interface",
    ], got


def test_bad_arguments_are_value_errors(lab: Lab) -> None:
    h1 = lab.hosts[0]

    def attempt(kw: dict[str, object], addresses: list[object]) -> str:
        try:
            inuse.probe("eth0", addresses, **kw)  # type: ignore[arg-type]
        except ValueError as exc:
            return f"ValueError: {exc}"
        return "no error"

    v4 = lab.vip4(4)
    assert run_in_ns(h1.netns, attempt, {"tries": 0}, [v4]).startswith("ValueError")
    assert run_in_ns(h1.netns, attempt, {"timeout": -1}, [v4]).startswith("ValueError")
    assert run_in_ns(h1.netns, attempt, {"own_macs": ["nope"]}, [v4]).startswith("ValueError")
    assert run_in_ns(h1.netns, attempt, {}, [IPv4Address(0)]).startswith("ValueError")
    assert run_in_ns(h1.netns, attempt, {}, []) == "no error"

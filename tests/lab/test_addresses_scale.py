"""AddressManager at many VIPs: what a refresh pass, a bind and an unbind cost in netlink
messages, and that the batched refresh renews exactly what it should.

A counter, not a timer: ``requests_sent`` / ``replies_received`` count every netlink message
the manager sends and parses (a dump is one request and one reply per address), so the claims
hold on a loaded CI machine too. Timings are in docs/net.md.

Topology: one namespace ``<p>a`` (random "hxn"+4-hex prefix) with a veth pair ``<p>0`` /
``<p>1``, both up, and ``lo`` up (without it the kernel has no local routing table yet, and
every IPv4 bind falls back to a dump). Code under test runs in forked children inside it
(``nsutil.run_in_ns``); the pytest process only inspects with ``ip -n``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from ipaddress import IPv4Interface, IPv6Interface, ip_interface
from typing import Any

import pytest

from haagent.config import VipConfig
from haagent.net.addresses import AddressManager, ForeignAddress, RefreshError
from haagent.net.placement import Placement, foreign_problem, foreign_text
from tests.lab.nsutil import ip, run_in_ns, unique_prefix

pytestmark = pytest.mark.lab


@dataclass
class Box:
    ns: str
    dev: str
    peer: str


@pytest.fixture
def box() -> Iterator[Box]:
    prefix = unique_prefix()
    b = Box(f"{prefix}a", f"{prefix}0", f"{prefix}1")
    ip("netns", "add", b.ns)
    try:
        ip("link", "set", "lo", "up", ns=b.ns)
        ip("link", "add", b.dev, "type", "veth", "peer", "name", b.peer, ns=b.ns)
        for dev in (b.dev, b.peer):
            ip("link", "set", dev, "up", ns=b.ns)
        yield b
    finally:
        ip("netns", "del", b.ns, check=False)  # takes the veth pair and every address along


def vips(n: int) -> list[str]:
    """``n`` host-length VIPs, half IPv4, half IPv6."""
    v4 = [f"198.51.100.{i + 1}/32" for i in range(n - n // 2)]
    v6 = [f"2001:db8::{i + 1:x}/128" for i in range(n // 2)]
    assert len(v4) <= 254
    return v4 + v6


def entries(b: Box) -> dict[tuple[str, int], dict[str, Any]]:
    """(address, prefix length) -> the kernel's view of that entry on ``b.dev``."""
    out = json.loads(ip("-j", "addr", "show", "dev", b.dev, ns=b.ns))
    return {(a["local"], a["prefixlen"]): a for a in out[0]["addr_info"]}


def lifetimes(b: Box) -> dict[tuple[str, int], int]:
    return {k: int(a["valid_life_time"]) for k, a in entries(b).items()}


# -- functions that run inside the namespace (forked child) --------------------------------


def do_costs(dev: str, addrs: list[str]) -> dict[str, tuple[int, int]]:
    """(requests, replies) of each operation, with ``addrs`` bound on ``dev``."""
    out: dict[str, tuple[int, int]] = {}
    with AddressManager() as m:

        def cost(name: str, fn: Any) -> Any:
            sent, received = m.requests_sent, m.replies_received
            result = fn()
            out[name] = (m.requests_sent - sent, m.replies_received - received)
            return result

        parsed = [ip_interface(a) for a in addrs]
        for a in parsed:
            assert m.bind(dev, a, lifetime=30)
        assert cost("refresh_many", lambda: m.refresh_many(dev, parsed, 60)) == []
        place = Placement(m)
        held = [VipConfig(f"v{i}", a, dev) for i, a in enumerate(parsed)]
        assert cost("refresh_all", lambda: place.refresh_all(held, 60)) == []
        for v in ("198.51.100.254/32", "2001:db8::ffff/128"):
            new = ip_interface(v)
            assert cost(f"bind {new.version}", lambda n=new: m.bind(dev, n, lifetime=30))
            assert cost(f"unbind {new.version}", lambda n=new: m.unbind(dev, n, verify=False))
            assert cost(f"unbind absent {new.version}", lambda n=new: not m.unbind(dev, n))
    return out


def do_refresh(dev: str, addrs: list[str], lifetime: int) -> list[str]:
    with AddressManager() as m:
        return [str(a) for a in m.refresh_many(dev, [ip_interface(a) for a in addrs], lifetime)]


def do_bind(dev: str, addrs: list[str], lifetime: int | None) -> list[bool]:
    with AddressManager() as m:
        return [m.bind(dev, ip_interface(a), lifetime=lifetime) for a in addrs]


def do_unbind(dev: str, addrs: list[str]) -> list[bool]:
    with AddressManager() as m:
        return [m.unbind(dev, ip_interface(a)) for a in addrs]


def do_refresh_all(vips_: list[VipConfig], lifetime: int) -> list[str]:
    with AddressManager() as m:
        return [v.name for v in Placement(m).refresh_all(vips_, lifetime)]


class RefusedOnce(AddressManager):
    """Its replace of ``refuse`` carries an impossible prefix length: the kernel says EINVAL."""

    refuse = IPv4Interface("198.51.100.30/32").ip

    @staticmethod
    def _renew_request(entry: Any, lifetime: int) -> tuple[int, int, bytes]:
        kind, flags, payload = AddressManager._renew_request(entry, lifetime)
        if entry.ip == RefusedOnce.refuse:
            payload = payload[:1] + bytes([99]) + payload[2:]
        return kind, flags, payload


def do_refresh_all_with_a_refusal(vips_: list[VipConfig], lifetime: int) -> dict[str, Any]:
    with RefusedOnce() as m:
        try:
            Placement(m).refresh_all(vips_, lifetime)
        except RefreshError as exc:
            return {"error": str(exc), "missing": [v.name for v in exc.missing]}
    return {}


# -- cost ----------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [10, 200])
def test_a_refresh_pass_costs_one_request_per_vip(box: Box, n: int) -> None:
    """The old per-VIP refresh dumped the interface each time: N dumps of N addresses, N²
    replies. Now one pass is one dump and one replace per VIP, and bind/unbind do not depend
    on how many addresses the interface holds."""
    costs = run_in_ns(box.ns, do_costs, box.dev, vips(n), timeout=60)
    # Replies: the dump (N addresses, the link-local one, NLMSG_DONE) and one ack per replace.
    for name in ("refresh_many", "refresh_all"):
        sent, received = costs[name]
        assert sent == n + 1, (name, costs)
        assert received <= 2 * n + 3, (name, costs)
    # A bind adds (IPv4 first asks bind(2) whether the address is local, no netlink); the
    # agent's unbind of its own address deletes the exact entry. An unbind that must verify
    # the mark first looks: one RTM_GETADDR (IPv6) or a dump of the interface (IPv4, n
    # addresses plus the link-local one and NLMSG_DONE), and sends no delete when absent.
    assert costs["bind 4"] == (1, 1) and costs["bind 6"] == (1, 1), costs
    assert costs["unbind 4"] == (1, 1) and costs["unbind 6"] == (1, 1), costs
    assert costs["unbind absent 6"] == (1, 1), costs
    assert costs["unbind absent 4"][0] == 1 and costs["unbind absent 4"][1] <= n + 3, costs


# -- correctness ---------------------------------------------------------------------------


def test_refresh_many_renews_every_entry_and_reports_the_vanished(box: Box) -> None:
    ns, dev = box.ns, box.dev
    ours = ["198.51.100.10/32", "2001:db8::10/128", "203.0.113.10/24", "2001:db8:1::10/64"]
    # The VIP's IP configured outside haagent (unmarked, here with a wider prefix): not
    # haagent's to renew, so reported absent (the agent's re-bind then refuses it).
    ip("addr", "add", "198.51.100.13/24", "dev", dev, ns=ns)
    ip("addr", "add", "2001:db8::13/64", "dev", dev, "nodad", ns=ns)
    foreign = ["198.51.100.13/32", "2001:db8::13/128"]
    gone = ["198.51.100.11/32", "2001:db8::11/128"]
    assert run_in_ns(ns, do_bind, dev, ours + gone, 20) == [True] * 6
    for g in gone:  # vanished behind the agent's back
        ip("addr", "del", g, "dev", dev, ns=ns)
    before = entries(box)

    missing = run_in_ns(ns, do_refresh, dev, [*ours, *foreign, *gone], 100)
    assert missing == [*foreign, *gone]

    after = entries(box)
    keys = [
        ("198.51.100.10", 32),
        ("2001:db8::10", 128),
        ("203.0.113.10", 24),
        ("2001:db8:1::10", 64),
    ]
    for key in keys:
        assert 98 <= int(after[key]["valid_life_time"]) <= 100, (key, after[key])
        assert 98 <= int(after[key]["preferred_life_time"]) <= 100, (key, after[key])
    # The kernel keeps the mark (IFA_PROTO) through the replace; iproute2 6.1 cannot show it.
    assert run_in_ns(ns, do_owned, dev) == {f"{a}/{n}" for a, n in keys}
    for key in (("198.51.100.13", 24), ("2001:db8::13", 64)):  # left exactly as they were
        assert after[key].get("valid_life_time") == before[key].get("valid_life_time")
    # Only lifetimes changed: no entry gained or lost, flags and prefixes stay.
    foreign_keys = {("198.51.100.13", 24), ("2001:db8::13", 64)}
    link_local = {k for k in before if k[0].startswith("fe80")}
    assert set(after) == set(before) == {*keys, *foreign_keys, *link_local}
    for key in keys:
        for flag in ("nodad", "noprefixroute"):
            assert after[key].get(flag) == before[key].get(flag), (key, flag, after[key])
    assert after[("2001:db8::10", 128)].get("nodad") is True
    assert after[("2001:db8::10", 128)].get("noprefixroute") is True
    routes = ip("-6", "route", "show", "table", "main", ns=ns)
    assert "2001:db8::/64 " in routes and "2001:db8:1::/64 " in routes, routes
    assert "2001:db8::10 " not in routes, routes
    # An interface that does not exist has every address missing.
    assert run_in_ns(ns, do_refresh, "hxnnosuchif", ours, 100) == ours


def do_bind_foreign(dev: str, addrs: list[str], marks: bool) -> list[str]:
    """What bind() says of each address: "added", "renewed" or the ForeignAddress text."""
    out: list[str] = []
    with AddressManager(marks=marks) as m:
        for a in addrs:
            try:
                out.append("added" if m.bind(dev, ip_interface(a), lifetime=40) else "renewed")
            except ForeignAddress as exc:
                out.append(str(exc))
    return out


def do_unbind_marks(dev: str, addrs: list[str], marks: bool) -> list[bool]:
    with AddressManager(marks=marks) as m:
        return [m.unbind(dev, ip_interface(a)) for a in addrs]


def test_an_address_configured_outside_haagent_is_neither_taken_over_nor_removed(
    box: Box,
) -> None:
    """The data-loss defect: a VIP equal to the host's own address. Entries haagent did not
    add (no IFA_PROTO mark), whatever their prefix, make bind refuse and unbind find nothing;
    not one of them changes."""
    ns, dev = box.ns, box.dev
    own = ["198.51.100.13/24", "198.51.100.13/28", "2001:db8::13/64"]
    for a in own:  # the kernel allows several IPv4 prefixes of one IP
        ip("addr", "add", a, "dev", dev, *(["nodad"] if ":" in a else []), ns=ns)
    before = entries(box)
    vip4, vip6 = "198.51.100.13/32", "2001:db8::13/128"
    for vips_ in ([vip4, vip6], own):  # another prefix, and the very same one
        got = run_in_ns(ns, do_bind_foreign, dev, vips_, True)
        assert all("not added by haagent" in g for g in got), got
        assert run_in_ns(ns, do_unbind_marks, dev, vips_, True) == [False] * len(vips_)
    assert entries(box) == before
    # Placement.foreign names them, for check-config and the agent's start.
    vips_cfg = [
        VipConfig("v4", IPv4Interface(vip4), dev),
        VipConfig("v6", IPv6Interface(vip6), dev),
        VipConfig("ann", IPv4Interface(vip4), dev, bind=False),  # announce-only: on purpose
    ]
    found = run_in_ns(ns, do_foreign, vips_cfg)
    assert set(found) == {"v4", "v6"}, found
    assert "198.51.100.13/24 on " + dev in found["v4"] and "/28" in found["v4"], found
    assert found["v6"] == f"2001:db8::13/64 on {dev}", found


def do_owned(dev: str) -> set[str]:
    with AddressManager() as m:
        return {str(a) for a in m.owned(dev)}


def do_foreign(vips_: list[VipConfig]) -> dict[str, str]:
    with AddressManager() as m:
        return {name: foreign_text(found) for name, found in Placement(m).foreign(vips_).items()}


def test_haagents_own_entry_is_renewed_and_removed_beside_a_foreign_one(box: Box) -> None:
    """haagent's /32 next to the host's /24 of another IP on the same interface, and an old
    kernel's rule (no marks: the exact prefix alone counts as haagent's)."""
    ns, dev = box.ns, box.dev
    ip("addr", "add", "198.51.100.14/24", "dev", dev, ns=ns)
    mine = ["198.51.100.15/32", "2001:db8::15/128"]
    assert run_in_ns(ns, do_bind_foreign, dev, mine, True) == ["added", "added"]
    assert run_in_ns(ns, do_bind_foreign, dev, mine, True) == ["renewed", "renewed"]
    assert run_in_ns(ns, do_owned, dev) == set(mine)
    assert run_in_ns(ns, do_unbind_marks, dev, mine, True) == [True, True]
    assert run_in_ns(ns, do_unbind_marks, dev, mine, True) == [False, False]
    assert ("198.51.100.14", 24) in entries(box)
    # Without marks, an unmarked entry with the exact prefix counts as haagent's, another
    # prefix still does not.
    ip("addr", "add", "198.51.100.16/32", "dev", dev, ns=ns)
    got2 = run_in_ns(ns, do_bind_foreign, dev, ["198.51.100.16/32", "198.51.100.14/32"], False)
    assert got2[0] == "renewed" and "not added by haagent" in got2[1], got2
    assert run_in_ns(ns, do_unbind_marks, dev, ["198.51.100.16/32", "198.51.100.14/32"], False) == [
        True,
        False,
    ]
    assert ("198.51.100.14", 24) in entries(box)


def test_placement_refresh_all_groups_by_interface_and_skips_announce_only(box: Box) -> None:
    ns, dev, peer = box.ns, box.dev, box.peer
    held = [
        VipConfig("a4", IPv4Interface("198.51.100.20/32"), dev),
        VipConfig("a6", IPv6Interface("2001:db8::20/128"), dev),
        VipConfig("b4", IPv4Interface("203.0.113.20/32"), peer),
        VipConfig("lost", IPv4Interface("203.0.113.21/32"), peer),
        # Announce-only: no address anywhere, yet never reported as vanished.
        VipConfig("ann", IPv4Interface("198.51.100.21/32"), dev, bind=False),
    ]
    assert run_in_ns(ns, do_bind, dev, ["198.51.100.20/32", "2001:db8::20/128"], 10) == [True] * 2
    assert run_in_ns(ns, do_bind, peer, ["203.0.113.20/32"], 10) == [True]
    assert run_in_ns(ns, do_refresh_all, held, 50) == ["lost"]
    got = json.loads(ip("-j", "addr", "show", ns=ns))
    valid = {a["local"]: int(a["valid_life_time"]) for i in got for a in i["addr_info"]}
    for addr in ("198.51.100.20", "2001:db8::20", "203.0.113.20"):
        assert 48 <= valid[addr] <= 50, valid
    assert "198.51.100.21" not in valid and "203.0.113.21" not in valid, valid


def test_a_refused_replace_fails_the_pass_but_not_the_other_vips(box: Box) -> None:
    ns, dev, peer = box.ns, box.dev, box.peer
    held = [
        VipConfig("refused", IPv4Interface("198.51.100.30/32"), dev),
        VipConfig("same-if", IPv6Interface("2001:db8::30/128"), dev),
        VipConfig("lost", IPv4Interface("198.51.100.31/32"), dev),
        VipConfig("other-if", IPv4Interface("203.0.113.30/32"), peer),
        VipConfig("gone-if", IPv4Interface("203.0.113.31/32"), "hxnnosuchif"),
    ]
    assert run_in_ns(ns, do_bind, dev, ["198.51.100.30/32", "2001:db8::30/128"], 10) == [True] * 2
    assert run_in_ns(ns, do_bind, peer, ["203.0.113.30/32"], 10) == [True]
    got = run_in_ns(ns, do_refresh_all_with_a_refusal, held, 50)
    assert got["missing"] == ["lost", "gone-if"], got
    assert "198.51.100.30/32" in got["error"] and "Invalid argument" in got["error"], got
    addrs = json.loads(ip("-j", "addr", "show", ns=ns))
    valid = {a["local"]: int(a["valid_life_time"]) for i in addrs for a in i["addr_info"]}
    assert valid["198.51.100.30"] <= 10, valid
    assert 48 <= valid["2001:db8::30"] <= 50 and 48 <= valid["203.0.113.30"] <= 50, valid


# -- a VIP with several addresses ----------------------------------------------------------


def pair(dev: str, **kw: Any) -> VipConfig:
    """A VIP with three addresses, both families."""
    return VipConfig(
        "pair",
        IPv4Interface("198.51.100.40/32"),
        dev,
        extra_addresses=(IPv6Interface("2001:db8::40/128"), IPv4Interface("203.0.113.40/32")),
        **kw,
    )


def do_place(vip: VipConfig, lifetime: int | None) -> dict[str, Any]:
    with AddressManager() as m:
        place = Placement(m)
        place.place(vip, lifetime)
        return {
            "fenced": [(i, str(a)) for i, a in place.fenced(vip)],
            "placed": place.placed([vip]),
        }


def do_half(vips_: list[VipConfig], lifetime: int) -> dict[str, Any]:
    """What start-up and a refresh pass see of a VIP with an address missing, and the
    requests a refresh pass costs."""
    with AddressManager() as m:
        place = Placement(m)
        placed = place.placed(vips_)
        sent = m.requests_sent
        vanished = [v.name for v in place.refresh_all(vips_, lifetime)]
        return {"placed": placed, "vanished": vanished, "requests": m.requests_sent - sent}


def do_remove(vip: VipConfig) -> list[bool]:
    with AddressManager() as m:
        place = Placement(m)
        return [place.remove(vip), place.remove(vip)]


def test_every_address_of_a_vip_is_placed_refreshed_and_removed_together(box: Box) -> None:
    ns, dev = box.ns, box.dev
    vip = pair(dev)
    got = run_in_ns(ns, do_place, vip, 30)
    spots = [(dev, "198.51.100.40/32"), (dev, "2001:db8::40/128"), (dev, "203.0.113.40/32")]
    assert got == {"fenced": spots, "placed": {"pair"}}
    life = lifetimes(box)
    for key in (("198.51.100.40", 32), ("2001:db8::40", 128), ("203.0.113.40", 32)):
        assert 28 <= life[key] <= 30, life
    # One address gone (by hand, or its lifetime ran out): start-up still counts the VIP as
    # placed (kept or removed whole), and a refresh reports it vanished once, the others
    # renewed. Ten more VIPs of two addresses each: still one dump for the interface.
    others = [
        VipConfig(
            f"o{i}",
            IPv4Interface(f"198.51.100.{50 + i}/32"),
            dev,
            extra_addresses=(IPv6Interface(f"2001:db8::{50 + i:x}/128"),),
        )
        for i in range(10)
    ]
    for o in others:
        run_in_ns(ns, do_place, o, 30)
    ip("addr", "del", "2001:db8::40/128", "dev", dev, ns=ns)
    half = run_in_ns(ns, do_half, [vip, *others], 50)
    assert half["placed"] == {"pair", *(o.name for o in others)}
    assert half["vanished"] == ["pair"]
    # 1 dump + one replace per present address (2 of pair's 3, 20 of the others').
    assert half["requests"] == 1 + 2 + 20, half
    life = lifetimes(box)
    assert ("2001:db8::40", 128) not in life
    assert 48 <= life[("198.51.100.40", 32)] <= 50 and 48 <= life[("203.0.113.40", 32)] <= 50
    # Binding again completes it (place is idempotent) ...
    run_in_ns(ns, do_place, vip, 30)
    assert ("2001:db8::40", 128) in lifetimes(box)
    # ... and removing takes every address, then finds nothing.
    assert run_in_ns(ns, do_remove, vip) == [True, False]
    left = {k for k in entries(box) if k[0].endswith("::40") or k[0].endswith(".40")}
    assert left == set(), left
    for o in others:
        run_in_ns(ns, do_remove, o)


def do_foreign_problem(vip: VipConfig) -> str:
    with AddressManager() as m:
        found = Placement(m).foreign([vip])
        return foreign_problem(vip.name, vip, found["pair"])


def test_an_address_of_a_vip_configured_outside_haagent_is_found(box: Box) -> None:
    ns, dev = box.ns, box.dev
    ip("addr", "add", "2001:db8::40/64", "dev", dev, "nodad", ns=ns)
    line = run_in_ns(ns, do_foreign_problem, pair(dev))
    assert line.startswith(
        "vip pair: 2001:db8::40 is already configured on this host outside haagent "
        f"(2001:db8::40/64 on {dev}); haagent would take it over"
    ), line

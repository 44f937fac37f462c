"""Reload (SIGHUP), pure: what a new config does to each VIP (decide.reload) and how the core
carries it out, driven by tests/unit/test_core.py's Sim against its in-memory etcd."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from haagent.cluster.view import HolderChange
from haagent.config import Config, parse_config
from haagent.decide import reload
from haagent.decide.election import Bind, Campaign, Resign, State, Unbind
from tests.unit.test_core import ME, TTL, Sim


def cfg(*vips: Mapping[str, object], **top: object) -> Config:
    raw = {
        "cluster": "t",
        "node": ME,
        "etcd": {"endpoints": ["http://198.51.100.2:2379"], "timeout": 0.5},
        "lease": {"ttl": TTL, "margin": 1.0},
        "checks": {"pg": {"type": "tcp", "port": 5432}, "web": {"type": "tcp", "port": 80}},
        "placement": {"startup_wait": 0},
        "vips": list(vips),
        **top,
    }
    return parse_config(raw, "test.yaml")


A = {"name": "a", "address": "198.51.100.10", "interface": "eth0"}
B = {"name": "b", "address": "198.51.100.11", "interface": "eth0"}
C = {"name": "c", "address": "198.51.100.12", "interface": "eth0"}


def test_diff_tells_moved_from_updated_in_place():
    new = cfg(
        A,
        {**B, "address": "198.51.100.21"},  # moved: another address
        {**C, "hold_down": 9},  # updated in place
        {"name": "d", "address": "198.51.100.13", "interface": "eth0"},
    )
    d = reload.diff_vips(cfg(A, B, C).vips, new.vips)
    assert d == reload.VipDiff(
        added=("d",), removed=(), moved=("b",), updated=("c",), unchanged=("a",)
    )
    assert d.summary() == "1 added (d), 0 removed, 1 moved (b), 1 updated (c), 1 unchanged"
    assert reload.diff_vips(cfg(A).vips, cfg(A).vips).empty
    for field, value in (("interface", "eth1"), ("vmac", True), ("bind", False)):
        moved = reload.diff_vips(cfg(A).vips, cfg({**A, field: value}).vips)
        assert moved.moved == ("a",), field
    # Another list of addresses, even with the same first one, is another VIP: released
    # whole, so that no address of the old list stays bound behind the new election.
    pair = {"name": "a", "addresses": ["198.51.100.10", "2001:db8::10"], "interface": "eth0"}
    for before, after in (
        (A, pair),
        (pair, A),
        (pair, {**pair, "addresses": ["198.51.100.10", "2001:db8::11"]}),
    ):
        assert reload.diff_vips(cfg(before).vips, cfg(after).vips).moved == ("a",), after
    assert reload.diff_vips(cfg(pair).vips, cfg(pair).vips).empty


def test_etcd_lease_cluster_and_node_need_a_restart():
    old = cfg(A)
    assert reload.needs_restart(old, cfg(A, B, log_level="debug")) == []
    assert reload.needs_restart(old, cfg(A, lease={"ttl": 5, "margin": 1.0})) == ["lease"]
    assert reload.needs_restart(old, cfg(A, node="h9", cluster="u")) == ["cluster", "node"]
    endpoints = {"endpoints": ["http://198.51.100.3:2379"], "timeout": 0.5}
    assert reload.needs_restart(old, cfg(A, etcd=endpoints)) == ["etcd"]


def held(sim: Sim) -> set[str]:
    return {n for n, rt in sim.core.vips.items() if rt.state is State.HOLDER}


def apply(sim: Sim, new: Config) -> list[object]:
    """Reload into ``new`` and run the core until it is idle; the actions it took."""
    old = sim.core.cfg
    start = len(sim.log)
    sim.core.reload(new, reload.diff_vips(old.vips, new.vips), sim.now)
    sim.run()
    for _ in range(3):  # the loop asks after each step
        for _old, _new in sim.core.take_retired(sim.now):
            pass
        sim.run()
    return sim.log[start:]


def test_unchanged_vips_are_not_touched_and_new_ones_join():
    sim = Sim.started(cfg(A, B))
    sim.run()
    assert held(sim) == {"a", "b"}
    runtimes = dict(sim.core.vips)
    actions = apply(sim, cfg(A, B, C))
    others = [a for a in actions if getattr(a, "vip", None) != "c"]
    assert not [a for a in others if isinstance(a, Unbind | Resign | Campaign | Bind)], others
    assert any(isinstance(a, Campaign) and a.vip == "c" for a in actions)
    assert held(sim) == {"a", "b", "c"}
    assert sim.core.vips["a"] is runtimes["a"] and sim.core.vips["b"] is runtimes["b"]


def test_a_removed_vip_is_unbound_then_resigned_then_dropped():
    sim = Sim.started(cfg(A, B))
    sim.run()
    actions = apply(sim, cfg(A))
    mine = [a for a in actions if getattr(a, "vip", None) == "b"]
    assert [type(a) for a in mine][:2] == [Unbind, Resign]
    assert "removed from the config" in mine[0].reason  # type: ignore[attr-defined]
    assert set(sim.core.vips) == {"a"} and "b" not in sim.keys and "b" not in sim.placed
    assert held(sim) == {"a"}


def test_a_moved_vip_is_released_before_it_is_elected_at_its_new_address():
    sim = Sim.started(cfg(A, B))
    sim.run()
    new = cfg(A, {**B, "address": "198.51.100.21"})
    actions = apply(sim, new)
    kinds = [type(a) for a in actions if getattr(a, "vip", None) == "b"]
    # The old address goes and the key is given up before the new election campaigns.
    assert kinds[:3] == [Unbind, Resign, Campaign] and Bind in kinds[3:], kinds
    assert str(sim.core.vips["b"].cfg.address) == "198.51.100.21/32"
    assert held(sim) == {"a", "b"}


def test_a_vip_removed_then_added_back_before_its_release_finishes_is_elected_again():
    sim = Sim.started(cfg(A, B))
    sim.run()
    sim.core.reload(cfg(A), reload.diff_vips(cfg(A, B).vips, cfg(A).vips), sim.now)
    # Back in the next reload, before the loop ran a single action of the release.
    sim.core.reload(cfg(A, B), reload.diff_vips(cfg(A).vips, cfg(A, B).vips), sim.now)
    sim.run()
    assert sim.core.take_retired(sim.now)[0][1] is not None
    sim.run()
    assert held(sim) == {"a", "b"}


def test_a_retiring_vip_waits_for_etcd_to_show_its_key_gone():
    sim = Sim.started(cfg(A, B))
    sim.run()
    sim.core.reload(cfg(A), reload.diff_vips(cfg(A, B).vips, cfg(A).vips), sim.now)
    # Carry out the unbind, and the resign without etcd's answer reaching the view yet.
    unbind = sim.core.next_action()
    assert isinstance(unbind, Unbind)
    sim.execute(unbind)
    resign = sim.core.next_action()
    assert isinstance(resign, Resign)
    assert sim.core.take_retired(sim.now) == []  # the view still shows our key
    del sim.keys["b"]
    sim.revision += 1
    sim.core.apply([HolderChange("b", None, sim.revision)], sim.now)
    sim.run()
    assert [old.name for old, _ in sim.core.take_retired(sim.now)] == ["b"]


def test_an_update_in_place_keeps_the_election_and_takes_the_new_settings():
    sim = Sim.started(cfg(A, B))
    sim.run()
    rt = sim.core.vips["a"]
    actions = apply(sim, cfg({**A, "hold_down": 7.5}, B))
    assert not [a for a in actions if isinstance(a, Unbind | Resign | Campaign)]
    assert sim.core.vips["a"] is rt and rt.cfg.hold_down == 7.5 and rt.state is State.HOLDER


def test_the_status_reflects_the_new_config():
    sim = Sim.started(cfg(A))
    sim.run()
    apply(sim, cfg(A, C))
    assert [v.name for v in sim.core.status(sim.now).vips] == ["a", "c"]
    assert dataclasses.replace(sim.core.cfg).vips == cfg(A, C).vips


def test_a_moved_vip_with_checks_keeps_its_known_health_and_is_elected_again():
    """The health monitor keeps the check's state across the reload and sends no new event
    for a VIP whose health did not change: the new runtime must not wait for one."""
    with_check = {**B, "checks": ["pg"]}
    sim = Sim.started(cfg(A, with_check))
    sim.core.health_changed("b", True, "check pg passed", sim.now)
    sim.run()
    assert held(sim) == {"a", "b"}
    apply(sim, cfg(A, {**with_check, "address": "198.51.100.21"}))
    assert held(sim) == {"a", "b"}
    assert str(sim.core.vips["b"].cfg.address) == "198.51.100.21/32"

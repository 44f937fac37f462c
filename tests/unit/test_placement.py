"""Placement, pure: ranking (decide.rank), when to campaign and when to hand over
(decide.placement), and the core acting on them — driven by the Sim of test_core."""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from haagent.agent.core import Core
from haagent.cluster.schema import HEALTHY, Drain, Holder, MemberRecord, Released, Request
from haagent.cluster.view import (
    ClusterView,
    DrainChange,
    HolderChange,
    MemberChange,
    ReleasedChange,
    RequestChange,
)
from haagent.config import Config, parse_config
from haagent.decide import placement, rank
from haagent.decide.election import Campaign, Resign, State, Unbind
from haagent.decide.rank import Candidate
from tests.unit.test_core import LEASE, ME, TTL, Sim

PEER_LEASE = 0xB2


def member(node: str, vips: list[str], *, lease: int = PEER_LEASE, **kw: Any) -> MemberRecord:
    return MemberRecord(
        node,
        None,
        "0",
        0.0,
        "d",
        lease,
        tuple(vips),
        health={v: HEALTHY for v in vips},
        **kw,
    )


def view_of(nodes: list[str], vips: list[str]) -> ClusterView:
    return ClusterView.of(1, members={n: member(n, vips, lease=i) for i, n in enumerate(nodes)})


def firsts(view: ClusterView, vips: list[str]) -> dict[str, str]:
    return {v: rank.candidates(view, v)[0] for v in vips}


VIPS = [f"vip{i}" for i in range(1000)]
NODES = [f"h{i}" for i in range(1, 6)]


# -- ranking ---------------------------------------------------------------------------


@settings(max_examples=30, deadline=None)
@given(st.integers(3, 400), st.integers(2, 6), st.sampled_from(["v", "vip", "db-", "x."]))
def test_vips_without_priorities_spread_within_20_percent_of_even(n, m, prefix):
    """Any N VIPs over M hosts: no host above the even share (rounded up), and none more
    than M - 1 VIPs below it (bounded loads, not luck): within 20 % from N/M >= 20 on."""
    vips = [f"{prefix}{i}" for i in range(n)]
    nodes = [f"h{i}" for i in range(1, m + 1)]
    spread = Counter(firsts(view_of(nodes, vips), vips).values())
    even = n / m
    assert max(spread.values()) <= math.ceil(even), spread
    assert min(spread.get(h, 0) for h in nodes) >= even - (m - 1), spread
    if even >= 20:
        assert min(spread.get(h, 0) for h in nodes) >= 0.8 * even, spread


def test_pure_rendezvous_is_uneven_which_is_why_loads_are_bounded():
    from haagent.lab.topology import Lab

    names = [name for name, _ in Lab.scale_vips(100)]  # the lab test's 100 VIPs
    view = view_of(["h1", "h2", "h3"], names)
    hashed = Counter(rank.hash_order(view, v)[0].node for v in names)
    assert min(hashed.values()) < 0.8 * 100 / 3  # 42/36/22
    balanced = Counter(firsts(view, names).values())
    assert all(abs(n - 100 / 3) <= 0.2 * 100 / 3 for n in balanced.values()), balanced


def test_a_host_leaving_moves_about_its_own_share():
    before = firsts(view_of(NODES, VIPS), VIPS)
    after = firsts(view_of([n for n in NODES if n != "h3"], VIPS), VIPS)
    moved = {v for v in VIPS if before[v] != after[v]}
    own = {v for v in VIPS if before[v] == "h3"}
    assert own <= moved and len(moved) <= 1.2 * len(own), (len(moved), len(own))


def test_a_host_joining_takes_about_its_share():
    before = firsts(view_of(NODES[:4], VIPS), VIPS)
    after = firsts(view_of(NODES, VIPS), VIPS)
    moved = {v for v in VIPS if before[v] != after[v]}
    taken = {v for v in moved if after[v] == "h5"}
    assert abs(len(taken) - 200) <= 40 and len(moved) <= 1.2 * len(taken), (len(moved), len(taken))


@settings(max_examples=50, deadline=None)
@given(
    st.lists(st.sampled_from(NODES), min_size=1, unique=True),
    st.lists(st.sampled_from(NODES), unique=True),
    st.sampled_from(VIPS[:50]),
)
def test_churn_never_reorders_the_members_that_stay(stay, churn, vip):
    """Members coming and going never change the order of the others: the rendezvous
    property that keeps movement minimal."""
    small = [c.node for c in rank.hash_order(view_of(stay, [vip]), vip)]
    large = [c.node for c in rank.hash_order(view_of(sorted(set(stay) | set(churn)), [vip]), vip)]
    assert [n for n in large if n in stay] == small


def test_priority_wins_over_the_hash_and_a_move_pin_over_priority():
    view = ClusterView.of(
        1,
        members={
            "h1": member("h1", ["v"], lease=1, priority=50),
            "h2": member("h2", ["v"], lease=2, priorities={"v": 200}),
            "h3": member("h3", ["v"], lease=3),
        },
    )
    assert rank.candidates(view, "v") == ["h2", "h3", "h1"]
    pinned = view.apply([RequestChange("v", Request("move", "h1", revision=2), 2)])
    assert rank.candidates(pinned, "v")[0] == "h1"


def test_draining_unhealthy_and_unknown_members_are_no_candidates():
    view = view_of(["h1", "h2", "h3"], ["v"])
    view = view.apply([DrainChange("h2", Drain("op"), 2)])
    view = view.apply([MemberChange("h3", member("h3", ["v"], lease=3, draining=True), 3)])
    assert rank.candidates(view, "v") == ["h1"]


def test_the_releaser_goes_last():
    order = [Candidate("a", 1), Candidate("b", 1), Candidate("c", 1)]
    assert [c.node for c in rank.last(order, "a")] == ["b", "c", "a"]
    assert rank.last(order, None) == order


# -- when to campaign, when to hand over -------------------------------------------------


def facts(me: str, order: list[Candidate], **kw: object) -> placement.CampaignFacts:
    base: dict[str, object] = dict(
        me=me,
        order=order,
        now=10.0,
        free_since=10.0,
        ready_at={},
        step=0.1,
        startup_wait=2.0,
    )
    base.update(kw)
    return placement.CampaignFacts(**base)  # type: ignore[arg-type]


def test_best_ranked_campaigns_at_once_others_wait_by_rank_bounded():
    order = [Candidate(f"n{i}", 1) for i in range(10)]
    assert placement.when_to_campaign(facts("n0", order)).at == 10.0
    assert placement.when_to_campaign(facts("n2", order)).at == 10.2
    capped = placement.when_to_campaign(facts("n9", order)).at
    assert capped == 10.0 + placement.MAX_RANK * 0.1


def test_a_better_candidate_starting_up_is_waited_for_within_a_bound():
    order = [Candidate("a", 1, ready=False), Candidate("b", 1)]
    w = placement.when_to_campaign(facts("b", order))
    assert w.at == 10.0 + 2.0 + placement.FIRST_PASS + 0.1
    assert "a to finish starting up" in w.reason
    # once it became ready (seen at 11.0), the rank's wait counts from then
    ready = [Candidate("a", 1), Candidate("b", 1)]
    assert placement.when_to_campaign(facts("b", ready, ready_at={"a": 11.0})).at == 11.1


def hold(**kw: object) -> placement.HoldFacts:
    base: dict[str, object] = dict(
        me="a",
        vip="v",
        order=[Candidate("b", 200), Candidate("a", 100)],
        key_revision=5,
        request=None,
        preempt=True,
        preempt_delay=5.0,
        better="b",
        better_since=10.0,
        now=12.0,
    )
    base.update(kw)
    return placement.HoldFacts(**base)  # type: ignore[arg-type]


def test_preemption_waits_its_delay_and_only_with_preempt():
    d = placement.handover(hold())
    assert d is not None and d.to == "b" and d.at == 15.0 and not d.move
    assert "priority 200 > 100" in d.reason
    assert placement.handover(hold(preempt=False)) is None
    starting = [Candidate("b", 200, ready=False), Candidate("a", 100)]
    assert placement.handover(hold(order=starting)) is None
    assert placement.handover(hold(order=[Candidate("a", 100), Candidate("b", 50)])) is None


def test_a_move_newer_than_the_key_hands_over_at_once_even_without_preempt():
    move = Request("move", "c", by="op@x", revision=9)
    order = [Candidate("a", 100), Candidate("c", 1, pinned=True)]
    d = placement.handover(hold(order=order, request=move, preempt=False))
    assert d is not None and d.to == "c" and d.at == 12.0 and d.move and "op@x" in d.reason
    # done: our key is newer than the request
    assert placement.handover(hold(order=order, request=move, key_revision=10)) is None
    # the target is no candidate now (unhealthy, draining, gone): the move waits
    assert placement.handover(hold(order=[Candidate("a", 1)], request=move)) is None


# -- the core ------------------------------------------------------------------------------


def cfg(n: int = 3, **placement_cfg: Any) -> Config:
    raw: dict[str, Any] = {
        "cluster": "t",
        "node": ME,
        "etcd": {"endpoints": ["http://198.51.100.2:2379"], "timeout": 0.5},
        "lease": {"ttl": TTL, "margin": 1.0},
        "placement": {"startup_wait": 0, **placement_cfg},
        "vips": [
            {"name": f"v{i}", "address": f"198.51.100.{200 + i}", "interface": "eth0"}
            for i in range(n)
        ],
    }
    return parse_config(raw, "test.yaml")


def peer(sim: Sim, node: str = "h2", **kw: Any) -> None:
    sim.revision += 1
    vips = list(sim.core.vips)
    sim.core.apply([MemberChange(node, member(node, vips, **kw), sim.revision)], sim.now)


def advance(sim: Sim, seconds: float) -> None:
    """Let time pass with the lease kept alive (a keepalive answered every 0.5 s)."""
    end = sim.now + seconds
    while sim.now < end:
        sim.now = min(end, sim.now + 0.5)
        sim.ack()
        sim.run()


def started_with_peer(c: Config, **kw: Any) -> Sim:
    sim = Sim(Core(c))
    view = ClusterView.of(sim.revision, members={"h2": member("h2", list(sim.core.vips), **kw)})
    sim.core.start(view, LEASE, sim.now, TTL, "lease granted", sim.now)
    return sim


def test_a_lower_ranked_agent_defers_and_stands_down_when_the_best_takes_the_key():
    sim = started_with_peer(cfg(1), priorities={"v0": 200})  # h2 ranks first for v0
    sim.run()
    assert sim.core.vips["v0"].deferred is not None
    assert not any(isinstance(a, Campaign) for a in sim.log)
    sim.revision += 1
    sim.keys["v0"] = Holder("h2", PEER_LEASE, sim.revision)
    sim.core.apply([HolderChange("v0", sim.keys["v0"], sim.revision)], sim.now)
    advance(sim, 1.0)
    assert sim.core.vips["v0"].state is State.CANDIDATE
    assert not any(isinstance(a, Campaign) for a in sim.log)


def test_a_lower_ranked_agent_campaigns_when_the_best_does_not():
    sim = started_with_peer(cfg(1), priorities={"v0": 200})
    sim.run()
    sim.now += 0.05
    sim.run()
    assert "v0" not in sim.keys  # rank 2 waits one step (0.1 s)
    sim.now += 0.06
    sim.run()
    assert sim.keys["v0"].node == ME and sim.placed == {"v0"}


def test_start_up_wait_holds_every_campaign_back_and_ready_follows_the_first_answers():
    sim = Sim.started(cfg(2, startup_wait=2.0))
    sim.run()
    assert not sim.keys and not sim.core.member_record(sim.member).ready
    sim.now += 2.002  # the wait is over and the campaigns queued, but not yet answered
    sim.ack()
    sim.core.tick(sim.now)
    assert sim.core.busy and not sim.core.member_record(sim.member).ready
    advance(sim, 0.01)
    assert set(sim.keys) == {"v0", "v1"} and sim.core.member_record(sim.member).ready


def test_preemption_hands_over_after_the_delay_bounded_by_rebalance():
    sim = Sim.started(cfg(3, preempt_delay=5.0, rebalance=1))
    sim.run()
    assert sim.placed == {"v0", "v1", "v2"}
    peer(sim, priority=200)  # a better host for every VIP arrives
    sim.run()
    advance(sim, 4.9)
    assert sim.placed == {"v0", "v1", "v2"}
    advance(sim, 0.2)
    # one handover at a time: unbind before resign, for exactly one VIP
    released = [a for a in sim.log if isinstance(a, Unbind | Resign)]
    assert [type(a) for a in released] == [Unbind, Resign]
    assert len(sim.placed) == 2
    gone = released[0].vip
    assert "preempted by h2" in released[1].reason
    # h2 takes it: the next handover starts
    sim.revision += 1
    sim.keys[gone] = Holder("h2", PEER_LEASE, sim.revision)
    sim.core.apply([HolderChange(gone, sim.keys[gone], sim.revision)], sim.now)
    sim.run()
    assert len(sim.placed) == 1
    assert sim.core.vips[gone].state is State.CANDIDATE


def test_no_preempt_keeps_the_vip_where_it_is():
    sim = Sim.started(cfg(1, preempt=False))
    sim.run()
    peer(sim, priority=200)
    advance(sim, 60)
    assert sim.placed == {"v0"}


def test_a_move_request_hands_over_at_once_and_a_drain_releases_everything():
    sim = Sim.started(cfg(2, preempt=False))
    sim.run()
    peer(sim)
    sim.revision += 1
    req = Request("move", "h2", by="op@x", revision=sim.revision)
    sim.core.apply([RequestChange("v0", req, sim.revision)], sim.now)
    sim.run()
    assert sim.placed == {"v1"} and "v0" not in sim.keys
    sim.revision += 1
    sim.core.apply([DrainChange(ME, Drain("op@x"), sim.revision)], sim.now)
    sim.run()
    assert sim.placed == set() and not sim.keys
    assert sim.core.member_record(sim.member).draining
    assert all(not rt.election.eligible for rt in sim.core.vips.values())
    sim.revision += 1
    sim.core.apply([DrainChange(ME, None, sim.revision)], sim.now)
    advance(sim, 10)
    assert "v1" in sim.keys  # undrained: campaigns again


def test_regression_a_release_overwritten_in_a_handover_chain_still_counts():
    """bench-scale, 1000 VIPs: h5 handed a VIP over, h3 took it and handed it on before the
    next holder read h5's release record, and h3's record replaced it; h5's lease lives, so
    the next holder waited for ever. A release record now carries the ones it overwrote."""
    sim = Sim(Core(cfg(1)), keys={"v0": Holder("h5", 0xB5, 11)}, revision=11)
    sim.alive_leases = {0xB5, 0xB3}
    sim.core.start(sim.view(), LEASE, sim.now, TTL, "lease granted", sim.now)
    sim.run()
    h5 = Released("h5", 11)
    h3 = Released("h3", 13, earlier=h5.chain())
    del sim.keys["v0"]
    sim.revision = 14
    sim.released["v0"] = h3
    sim.core.apply(
        [
            HolderChange("v0", None, 12),
            ReleasedChange("v0", h5, 12),
            HolderChange("v0", Holder("h3", 0xB3, 13), 13),
            HolderChange("v0", None, 14),
            ReleasedChange("v0", h3, 14),
        ],
        sim.now,
    )
    sim.run()
    assert sim.keys["v0"].node == ME
    assert sim.placed == {"v0"}, "the bind still waits for h5"
    assert sim.core.release_chain("v0") == (("h3", 13), ("h5", 11))

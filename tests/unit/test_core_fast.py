"""The core's side of fast failover, fact by fact: a verdict's lease is waited out and the
segment probed before the bind; a holder no quorum vouches for lets go at its hold deadline;
one that etcd no longer answers while peers reach it surrenders."""

from __future__ import annotations

import math

from haagent.agent.core import CheckLease, Core, Probe
from haagent.agent.witness import LivenessFacts
from haagent.cluster.schema import Holder, MemberRecord, Verdict
from haagent.cluster.view import ClusterView, HolderChange, VerdictChange
from haagent.config import parse_config
from haagent.decide.election import Bind, Campaign, State, Unbind

ME, LEASE = "h1", 0xA1
PEERS = {"h2": 0xB2, "h3": 0xC3}


def core() -> Core:
    cfg = parse_config(
        {
            "cluster": "t",
            "node": ME,
            "etcd": {"timeout": 0.5},
            "lease": {"ttl": 3, "margin": 1.0},
            "placement": {"startup_wait": 0, "preempt": False},
            "vips": [{"name": "v0", "address": "198.51.100.200", "interface": "eth0"}],
        }
    )
    c = Core(cfg)
    c.fast = True
    return c


def member(node: str, lease: int) -> MemberRecord:
    return MemberRecord(
        node=node,
        address=None,
        version="t",
        started=0.0,
        config_digest="",
        lease=lease,
        vips=("v0",),
        liveness=True,
    )


def members() -> dict[str, MemberRecord]:
    return {ME: member(ME, LEASE), **{n: member(n, lease) for n, lease in PEERS.items()}}


def drain(c: Core) -> list[object]:
    out: list[object] = []
    for _ in range(50):
        a = c.next_action()
        if a is None:
            return out
        out.append(a)
    raise AssertionError("the core kept queueing")


def test_after_a_verdict_the_winner_waits_hold_and_probes_before_binding() -> None:
    c = core()
    view = ClusterView.of(
        10, members=members(), holders={"v0": Holder("h2", PEERS["h2"], create_revision=5)}
    )
    now = 100.0
    c.start(view, LEASE, now, 3, "lease granted", now)
    c.liveness_changed(LivenessFacts(protected_until=math.inf), now)  # vouched for
    drain(c)
    c.apply([VerdictChange("h2", Verdict("h2", PEERS["h2"], "h3"), 11)], now)
    c.apply([HolderChange("v0", None, 12)], now)
    acts = drain(c)
    assert any(isinstance(a, Campaign) for a in acts)
    c.campaign_done("v0", True, Holder(ME, LEASE, create_revision=13), 13)
    acts = drain(c)
    assert [type(a) for a in acts] == [CheckLease]
    c.lease_checked("v0", PEERS["h2"], False, now + 0.001)
    acts = drain(c)
    assert [type(a) for a in acts] == [Probe]  # probing while the hold is waited out
    c.probe_done("v0", None, now + 0.02)
    assert not any(isinstance(a, Bind) for a in drain(c))  # hold not over yet
    c.tick(now + c.cfg.liveness.hold)  # just short of hold x (1 + 2 drift) + 2 ms
    assert not any(isinstance(a, Bind) for a in drain(c))
    c.tick(now + 0.1)
    acts = drain(c)
    assert [type(a) for a in acts] == [Bind]


def test_someone_still_answering_holds_the_bind_back() -> None:
    c = core()
    view = ClusterView.of(
        10, members=members(), holders={"v0": Holder("h2", PEERS["h2"], create_revision=5)}
    )
    now = 100.0
    c.start(view, LEASE, now, 3, "lease granted", now)
    c.liveness_changed(LivenessFacts(protected_until=math.inf), now)  # vouched for
    drain(c)
    c.apply([VerdictChange("h2", Verdict("h2", PEERS["h2"], "h3"), 11)], now)
    c.apply([HolderChange("v0", None, 12)], now)
    drain(c)
    c.campaign_done("v0", True, Holder(ME, LEASE, create_revision=13), 13)
    drain(c)
    c.lease_checked("v0", PEERS["h2"], False, now)
    drain(c)
    c.tick(now + 0.2)
    for i in range(5):  # its kernel still has the address: probe again, never bind
        c.probe_done("v0", "aa:bb:cc:dd:ee:ff still answers", now + 0.2 + i * 0.1)
        c.tick(now + 0.26 + i * 0.1)
        acts = drain(c)
        assert acts == [Probe("v0")]
    c.probe_done("v0", None, now + 1.0)
    assert [type(a) for a in drain(c)] == [Bind]


def held(c: Core, now: float) -> None:
    view = ClusterView.of(10, members=members())
    c.start(view, LEASE, now, 3, "lease granted", now)
    drain(c)
    c.campaign_done("v0", True, Holder(ME, LEASE, create_revision=11), 11)
    drain(c)
    c.placed("v0")
    assert c.vips["v0"].state is State.HOLDER


def test_a_holder_no_quorum_vouches_for_lets_go_at_hold_after_its_last_keepalive() -> None:
    c = core()
    now = 100.0
    held(c, now)
    c.liveness_changed(LivenessFacts(protected_until=now + 0.5), now)
    c.tick(now + 0.4)  # vouched for: the old keepalive does not matter
    assert not any(isinstance(a, Unbind) for a in drain(c))
    c.tick(now + 0.51)
    assert any(isinstance(a, Unbind) for a in drain(c))


def test_a_fresh_keepalive_keeps_an_unvouched_holder() -> None:
    c = core()
    now = 100.0
    held(c, now)
    c.liveness_changed(LivenessFacts(protected_until=-math.inf), now)
    for i in range(1, 10):
        t = now + i * 0.02
        c.keepalive_acked(LEASE, t - 0.001, 3, t)
        c.tick(t + 0.001)
        assert not any(isinstance(a, Unbind) for a in drain(c))


def test_etcd_lost_here_but_not_elsewhere_surrenders_and_asks_once_unbound() -> None:
    c = core()
    now = 100.0
    held(c, now)
    c.liveness_changed(LivenessFacts(protected_until=math.inf, etcd_elsewhere=("h2",)), now)
    c.tick(now + 0.2)
    assert not any(isinstance(a, Unbind) for a in drain(c))
    c.tick(now + 0.31)
    assert any(isinstance(a, Unbind) for a in drain(c))
    assert c.surrendered == LEASE and c.surrender_ask is None  # still bound
    c.removed("v0")
    assert c.surrender_ask == LEASE


def test_etcd_lost_everywhere_keeps_the_vips_until_the_lease_deadline() -> None:
    c = core()
    now = 100.0
    held(c, now)
    c.liveness_changed(LivenessFacts(protected_until=math.inf), now)
    c.tick(now + 1.5)  # ttl 3 - margin 1 = 2 s
    assert not any(isinstance(a, Unbind) for a in drain(c))
    c.tick(now + 2.0)
    assert any(isinstance(a, Unbind) for a in drain(c))

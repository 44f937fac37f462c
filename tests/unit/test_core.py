"""The agent's pure core, driven fact by fact: no etcd, no netlink, no threads, no clock.

``Sim`` plays the loop: it carries out the actions the core queues against an in-memory key
table with etcd's semantics for what the core relies on (create-if-absent, delete-if-created-
at, revisions), and feeds the results back, exactly as ``haagent.agent.loop`` does.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hypothesis import given, settings
from hypothesis import strategies as st

from haagent.agent.core import (
    CheckLease,
    ConfirmRelease,
    Core,
    Notify,
    PublishMember,
    PurgeKey,
    Refresh,
    Regrant,
    Reread,
    TellFence,
)
from haagent.cluster.schema import HEALTHY, Health, HealthState, Holder, MemberRecord, Released
from haagent.cluster.view import ClusterView, HolderChange, MemberChange, ReleasedChange
from haagent.config import Config, parse_config
from haagent.decide.election import Bind, Campaign, Resign, State, Unbind

ME = "h1"
LEASE = 0xA1
TTL = 3


def config(n: int = 3, lease: dict[str, object] | None = None, **vip: object) -> Config:
    raw = {
        "cluster": "t",
        "node": ME,
        "etcd": {"endpoints": ["http://198.51.100.2:2379"], "timeout": 0.5},
        "lease": {"ttl": TTL, "margin": 1.0, **(lease or {})},
        "checks": {"pg": {"type": "tcp", "port": 5432}},
        # No start-up wait: these tests are about one agent; test_placement.py covers ranks.
        "placement": {"startup_wait": 0},
        "vips": [
            {"name": f"v{i}", "address": f"198.51.100.{200 + i}", "interface": "eth0", **vip}
            for i in range(n)
        ],
    }
    return parse_config(raw, "test.yaml")


@dataclass
class Sim:
    core: Core
    now: float = 100.0
    revision: int = 10
    keys: dict[str, Holder] = field(default_factory=dict)
    placed: set[str] = field(default_factory=set)
    log: list[object] = field(default_factory=list)
    campaign_rpc_takes: float = 0.0
    alive_leases: set[int] = field(default_factory=lambda: {0xB2})  # other agents' leases
    confirmed: list[tuple[str, int]] = field(default_factory=list)
    released: dict[str, Released] = field(default_factory=dict)
    member: MemberRecord = field(
        # started with more digits than the JSON keeps: the echo must still count as ours
        default_factory=lambda: MemberRecord(ME, None, "0", 1.23456789, "d", LEASE)
    )

    @classmethod
    def started(cls, cfg: Config, **kw: object) -> Sim:
        sim = cls(Core(cfg), **kw)  # type: ignore[arg-type]
        sim.core.start(sim.view(), LEASE, sim.now, TTL, "lease granted", sim.now)
        return sim

    def view(self) -> ClusterView:
        return ClusterView.of(self.revision, holders=dict(self.keys), released=dict(self.released))

    def step(self) -> object | None:
        """One turn of the loop: tick, then one action."""
        self.core.tick(self.now)
        action = self.core.next_action()
        if action is not None:
            self.log.append(action)
            self.execute(action)
        return action

    def steps(self, n: int) -> None:
        for _ in range(n):
            self.step()

    def run(self, limit: int = 500) -> None:
        for _ in range(limit):
            if self.step() is None:
                return
        raise AssertionError("the core kept queueing actions")

    def execute(self, action: object) -> None:
        core = self.core
        match action:
            case Campaign(vip=vip, epoch=epoch, reason=reason):
                assert core.lease_ok and core.clock.valid(self.now), "campaign without a lease"
                self.now += self.campaign_rpc_takes
                lease = core.clock.lease_id
                assert lease is not None
                if vip in self.keys:
                    core.campaign_done(vip, False, self.keys[vip], self.revision)
                    return
                self.revision += 1
                h = Holder(ME, lease, self.revision, epoch=epoch, reason=reason)
                self.keys[vip] = h
                core.campaign_done(vip, True, h, self.revision)
            case Bind(vip=vip):
                assert core.lease_ok and core.clock.valid(self.now), "bind past the deadline"
                assert core.vips[vip].state is State.HOLDER
                self.placed.add(vip)
                core.placed(vip)
            case Unbind(vip=vip):
                self.placed.discard(vip)
                core.removed(vip)
            case Resign(vip=vip, create_revision=rev) | PurgeKey(vip=vip, create_revision=rev):
                if vip in self.keys and self.keys[vip].create_revision == rev:
                    del self.keys[vip]
                    self.revision += 1
                    core.apply([HolderChange(vip, None, self.revision)], self.now)
            case Reread(reason=reason):
                core.reread_done(self.view(), reason, self.now)
            case Regrant():
                core.lease_granted(LEASE + 1, self.now, TTL)
            case CheckLease(vip=vip, lease=lease):
                core.lease_checked(vip, lease, lease in self.alive_leases, self.now)
            case ConfirmRelease(vip=vip, create_revision=rev):
                self.confirmed.append((vip, rev))
            case PublishMember():
                core.member_written(self.now, self.member)
            case TellFence() | Refresh() | Notify():
                pass

    def ack(self, sent: float | None = None) -> None:
        lease = self.core.clock.lease_id
        assert lease is not None
        self.core.keepalive_acked(lease, self.now if sent is None else sent, TTL, self.now)

    def other_releases(self, vip: str) -> None:
        """The other holder of ``vip`` resigns: key deleted, release record, one revision."""
        h = self.keys.pop(vip)
        self.revision += 1
        rel = self.released[vip] = Released(h.node, h.create_revision)
        self.core.apply(
            [HolderChange(vip, None, self.revision), ReleasedChange(vip, rel, self.revision)],
            self.now,
        )

    def states(self) -> dict[str, State]:
        return {name: rt.state for name, rt in self.core.vips.items()}


def test_start_campaigns_for_every_free_vip_and_binds_what_it_wins():
    sim = Sim.started(config(3))
    sim.run()
    assert sim.states() == dict.fromkeys(("v0", "v1", "v2"), State.HOLDER)
    assert sim.placed == {"v0", "v1", "v2"}
    kinds = [type(a).__name__ for a in sim.log]
    # The fence hears of the lease first; the member record goes before any campaign.
    assert kinds[:2] == ["TellFence", "PublishMember"]


def test_regression_deadline_passing_mid_pass_strands_no_campaign():
    """The defect of the old loop: a campaign pass that outlasted the deadline left the
    remaining elections CAMPAIGNING for good (936 of 1000 VIPs in an independent run).

    Here each campaign RPC takes 0.9 s of a 2 s deadline, so the deadline passes in the
    middle of the pass; the lease then turns out alive. Every VIP must end up held."""
    sim = Sim.started(config(5), campaign_rpc_takes=0.9)
    for _ in range(50):
        if sim.step() is None:
            break
    assert not sim.core.lease_ok, "the deadline should have passed mid-pass"
    assert sim.placed <= {"v0", "v1", "v2"}
    # Nothing may sit in CAMPAIGNING without a campaign on its way: with the lease lost,
    # every election is idle.
    assert set(sim.states().values()) == {State.IDLE}
    # The keepalive answers after all: the agent re-reads etcd and holds again.
    sim.campaign_rpc_takes = 0.0
    sim.ack()
    sim.run()
    assert sim.states() == dict.fromkeys((f"v{i}" for i in range(5)), State.HOLDER)
    assert sim.placed == {f"v{i}" for i in range(5)}


def test_urgent_actions_overtake_a_queued_mass_campaign():
    sim = Sim.started(config(50))
    sim.steps(8)
    # Each VIP is bound as soon as it is won, before the next campaign.
    kinds = [type(a).__name__ for a in sim.log[2:8]]
    assert kinds == ["Campaign", "Bind"] * 3
    sim.ack()
    # The refresh of the held VIPs' lifetimes goes before the 40-odd campaigns still queued.
    assert isinstance(sim.core.next_action(), Refresh)


def test_queued_campaigns_go_out_together_skipping_stale_ones():
    sim = Sim.started(config(50))
    sim.steps(2)  # TellFence, PublishMember
    first = sim.core.next_action()
    assert first == Campaign("v0", 10, "lease granted")
    batch = sim.core.more_campaigns(20)
    assert [c.vip for c in batch] == [f"v{i}" for i in range(1, 21)]
    sim.now += TTL  # the deadline passes: every campaign still queued is stale
    sim.core.tick(sim.now)
    assert sim.core.more_campaigns(63) == []


def test_a_burst_of_health_changes_costs_one_member_write_per_interval():
    sim = Sim.started(config(40, checks=["pg"]))
    sim.run()
    writes = sum(isinstance(a, PublishMember) for a in sim.log)
    for i in range(40):
        sim.core.health_changed(f"v{i}", True, "check pg passed", sim.now)
    sim.run()
    assert sum(isinstance(a, PublishMember) for a in sim.log) == writes  # coalesced, deferred
    sim.now += 0.3
    sim.run()
    assert sum(isinstance(a, PublishMember) for a in sim.log) == writes + 1


def test_deadline_releases_before_any_queued_bind_or_campaign_runs():
    sim = Sim.started(config(4))
    sim.steps(4)  # TellFence, PublishMember, Campaign v0, Bind v0
    assert sim.placed == {"v0"}
    sim.now += TTL  # past the deadline (ttl - margin = 2 s)
    action = sim.step()
    assert action == Unbind("v0", "lease deadline passed (last keepalive answered 3.0s ago)")
    assert sim.step() is None  # the queued campaigns were stale: dropped, not run
    assert sim.placed == set()


def test_unhealthy_holder_unbinds_then_resigns_then_holds_down():
    sim = Sim.started(config(1, hold_down=2.0))
    sim.run()
    sim.now += 1.0
    sim.core.health_changed("v0", False, "check pg failed", sim.now)
    acts = []
    while (a := sim.step()) is not None:
        acts.append(a)
    kinds = [type(a) for a in acts]
    assert kinds.index(Unbind) < kinds.index(Resign)
    assert Notify in kinds and PublishMember in kinds
    # Healthy again at once, but the hold-down keeps it from campaigning for 2 s.
    sim.core.health_changed("v0", True, "check pg passed", sim.now)
    sim.run()
    assert sim.core.vips["v0"].state is not State.HOLDER
    sim.now += 2.1
    sim.ack()
    sim.run()
    assert sim.states()["v0"] is State.HOLDER


def test_checked_vip_waits_for_its_first_healthy_result():
    sim = Sim.started(config(1))
    sim.run()
    assert sim.states() == {"v0": State.HOLDER}  # no checks: healthy from the start
    sim = Sim.started(config(1, checks=["pg"]))
    sim.run()
    assert sim.core.vips["v0"].health.state is HealthState.UNKNOWN
    assert sim.states() == {"v0": State.IDLE} and not sim.keys
    sim.core.health_changed("v0", True, "check pg passed", sim.now)
    sim.run()
    assert sim.states() == {"v0": State.HOLDER}


def test_invalid_holder_key_is_purged_once_and_then_campaigned_for():
    sim = Sim(Core(config(1)))
    sim.keys["v0"] = Holder.from_kv(b"garbage", lease=0, create_revision=7)
    sim.core.start(sim.view(), LEASE, sim.now, TTL, "lease granted", sim.now)
    sim.run()
    purges = [a for a in sim.log if isinstance(a, PurgeKey)]
    assert purges == [PurgeKey("v0", 7, "unreadable value")]
    assert sim.states() == {"v0": State.HOLDER}


def test_when_all_unhealthy_keep_holds_on_only_while_no_peer_is_healthy():
    sim = Sim.started(config(1, when_all_unhealthy="keep", hold_down=0, checks=["pg"]))
    sim.core.health_changed("v0", True, "check pg passed", sim.now)
    sim.run()
    sim.core.health_changed("v0", False, "check pg failed", sim.now)
    sim.run()
    assert sim.states() == {"v0": State.HOLDER} and sim.core.vips["v0"].keeping
    peer = MemberRecord("h2", None, "0", 0.0, "d", 0xB2, ("v0",), health={"v0": HEALTHY})
    sim.revision += 1
    sim.core.apply([MemberChange("h2", peer, sim.revision)], sim.now)
    sim.run()
    assert sim.states() == {"v0": State.IDLE} and sim.placed == set()


def test_outage_keep_policy_keeps_held_vips_past_the_deadline():
    sim = Sim.started(config(1, lease={"when_etcd_unreachable": "keep"}))
    sim.run()
    sim.now += TTL
    sim.run()
    assert sim.core.outage_keep and sim.placed == {"v0"}
    sim.ack()  # etcd answers again: re-read, still ours
    sim.run()
    assert not sim.core.outage_keep and sim.states() == {"v0": State.HOLDER}


def test_lease_gone_regrants_and_campaigns_again():
    sim = Sim.started(config(2))
    sim.run()
    sim.keys.clear()  # etcd expired the lease and its keys
    sim.core.lease_gone(LEASE, "etcd says the lease no longer exists", sim.now)
    sim.run()
    assert sim.core.clock.lease_id == LEASE + 1
    assert sim.states() == {"v0": State.HOLDER, "v1": State.HOLDER}
    assert all(h.lease == LEASE + 1 for h in sim.keys.values())


def test_own_member_record_deleted_or_altered_is_written_again():
    sim = Sim.started(config(1))
    sim.run()
    writes = sum(isinstance(a, PublishMember) for a in sim.log)
    sim.now += 1.0
    sim.revision += 1
    echo = MemberRecord.from_json(sim.member.to_json())  # as etcd gives it back
    sim.core.apply([MemberChange(ME, echo, sim.revision)], sim.now)  # our own echo
    sim.run()
    assert sum(isinstance(a, PublishMember) for a in sim.log) == writes
    sim.revision += 1
    sim.core.apply([MemberChange(ME, None, sim.revision)], sim.now)  # etcdctl del
    sim.run()
    assert sum(isinstance(a, PublishMember) for a in sim.log) == writes + 1


def test_a_key_deleted_by_a_third_party_is_bound_only_once_its_holder_confirms():
    sim = Sim.started(config(1))
    sim.revision += 1
    h2 = Holder("h2", 0xB2, sim.revision)
    sim.keys["v0"] = h2
    sim.core.apply([HolderChange("v0", h2, sim.revision)], sim.now)
    sim.run()
    del sim.keys["v0"]  # etcdctl del: h2 has not unbound yet
    sim.revision += 1
    sim.core.apply([HolderChange("v0", None, sim.revision)], sim.now)
    sim.run()
    assert sim.states() == {"v0": State.HOLDER} and sim.placed == set()  # won, not bound
    sim.now += 1.0
    sim.ack()
    sim.run()
    assert sim.placed == set()  # h2's lease still lives: keep waiting
    sim.revision += 1
    sim.core.apply(
        [ReleasedChange("v0", Released("h2", h2.create_revision), sim.revision)], sim.now
    )
    sim.run()
    assert sim.placed == {"v0"}


def test_a_predecessor_whose_lease_is_gone_needs_no_confirmation():
    sim = Sim.started(config(1))
    sim.revision += 1
    h2 = Holder("h2", 0xB3, sim.revision)  # 0xB3: not among the live leases
    sim.core.apply([HolderChange("v0", h2, sim.revision)], sim.now)
    sim.revision += 1
    sim.core.apply([HolderChange("v0", None, sim.revision)], sim.now)
    sim.run()
    assert sim.placed == {"v0"}
    assert any(isinstance(a, CheckLease) for a in sim.log)


def test_a_holder_whose_key_someone_else_deleted_confirms_after_unbinding():
    sim = Sim.started(config(1))
    sim.run()
    mine = sim.keys.pop("v0")
    sim.revision += 1
    sim.core.apply([HolderChange("v0", None, sim.revision)], sim.now)
    acts = []
    while (a := sim.step()) is not None:
        acts.append(a)
        if isinstance(a, Campaign):
            break
    kinds = [type(a) for a in acts]
    assert kinds[:2] == [Unbind, ConfirmRelease]
    assert sim.confirmed == [("v0", mine.create_revision)]


def test_carrier_loss_releases_at_once_and_carrier_back_campaigns_again():
    sim = Sim.started(config(2))
    sim.run()
    assert sim.placed == {"v0", "v1"}
    sim.core.link_changed("eth0", False, "eth0 lost its carrier", sim.now)
    acts = []
    while (a := sim.step()) is not None:
        acts.append(a)
    assert {a.vip for a in acts if isinstance(a, Unbind)} == {"v0", "v1"}
    assert sim.placed == set() and not sim.keys  # released and resigned, no deadline waited
    sim.core.link_changed("eth0", True, "eth0 has its carrier back", sim.now)
    sim.run()
    assert sim.placed == {"v0", "v1"}


def test_regression_a_failed_resign_is_not_retried_once_the_vip_is_held_again():
    """Found by the soak run (seed 5, link cuts): carrier lost, unbind, the resign gets no
    answer; carrier back before the lease ends, the key is still ours, bind again; then the
    retried resign deleted the key and wrote the release record while the address was up, and
    the next winner bound at once: two holders for 1.4-377 ms."""
    sim = Sim.started(config(1))
    sim.run()
    key = sim.keys["v0"]
    sim.core.link_changed("eth0", False, "eth0 lost its carrier", sim.now)
    unbind = sim.step()
    assert isinstance(unbind, Unbind)
    resign = sim.core.next_action()
    assert isinstance(resign, Resign)
    sim.core.resign_failed(resign, sim.now)  # etcd did not answer
    sim.core.link_changed("eth0", True, "eth0 has its carrier back", sim.now)
    sim.run()
    assert sim.placed == {"v0"} and sim.core.vips["v0"].state is State.HOLDER
    sim.now += 1.0  # the resign's retry timer is due
    sim.run()
    assert sim.keys.get("v0") == key, "the key we serve again was deleted"
    assert not [a for a in sim.log if isinstance(a, Resign)]
    # A later release still resigns that same key.
    sim.core.link_changed("eth0", False, "eth0 lost its carrier", sim.now)
    sim.run()
    assert "v0" not in sim.keys and not sim.placed


def test_shutdown_keeps_only_releases_of_what_was_queued():
    """A refresh queued just before the stop would bind again the addresses the loop removed
    before revoking (it re-binds what it finds missing)."""
    sim = Sim.started(config(2))
    sim.run()
    sim.ack()  # queues a Refresh
    sim.core.health_changed("v1", False, "check failed", sim.now)  # queues Unbind, Resign
    sim.core.shutdown(revoked=True)
    kinds = []
    while (a := sim.core.next_action()) is not None:
        kinds.append(type(a))
    assert Refresh not in kinds and Bind not in kinds and Resign not in kinds
    assert kinds.count(Unbind) == 2  # v1's pending one, v0's from the shutdown


def test_a_vip_being_released_gets_no_new_lifetime():
    sim = Sim.started(config(2))
    sim.run()
    assert [v.name for v in sim.core.bound_vips()] == ["v0", "v1"]
    sim.core.health_changed("v1", False, "check failed", sim.now)  # its unbind is queued
    assert [v.name for v in sim.core.bound_vips()] == ["v0"]


def test_stale_watch_changes_do_not_roll_the_view_back():
    sim = Sim.started(config(1))
    sim.run()
    rev = sim.core.view.revision
    old = Holder("h2", 0xB2, 3)
    sim.core.apply([HolderChange("v0", old, rev - 5)], sim.now)
    assert sim.core.view.holders.get("v0") != old
    assert sim.states() == {"v0": State.HOLDER}


def test_status_snapshot_reports_each_vip():
    sim = Sim.started(config(2))
    sim.run()
    status = sim.core.status(sim.now)
    assert status.holding() == ["v0", "v1"] and status.lease_ok
    assert {v.name: v.bound for v in status.vips} == {"v0": True, "v1": True}
    assert all(v.health.state is HealthState.HEALTHY for v in status.vips)


# -- randomized: any interleaving of facts keeps the invariants --------------------------

FACTS = st.lists(
    st.sampled_from(["step", "step", "step", "ack", "late", "sick", "well", "steal", "free"]),
    max_size=120,
)


@settings(max_examples=150, deadline=None)
@given(facts=FACTS, vip=st.integers(min_value=0, max_value=2))
def test_any_interleaving_binds_only_with_a_valid_lease_and_converges(facts, vip):
    sim = Sim.started(config(3, hold_down=0))
    name = f"v{vip}"
    for fact in facts:
        match fact:
            case "step":
                sim.step()  # Sim asserts: no campaign or bind without a valid lease
            case "ack":
                sim.ack()
            case "late":
                sim.now += 1.5
            case "sick":
                sim.core.health_changed(name, False, "check failed", sim.now)
            case "well":
                sim.core.health_changed(name, True, "check passed", sim.now)
            case "steal" if name not in sim.keys:
                sim.revision += 1
                sim.keys[name] = Holder("h2", 0xB2, sim.revision)
                sim.core.apply([HolderChange(name, sim.keys[name], sim.revision)], sim.now)
            case "free" if name in sim.keys and sim.keys[name].node == "h2":
                sim.other_releases(name)
        # Bound only while holding (or with its unbind queued), and never holding a
        # key etcd gives someone else.
        unbinding = {q.action.vip for q in sim.core._prompt if isinstance(q.action, Unbind)}
        for n, rt in sim.core.vips.items():
            if n in sim.placed:
                assert rt.state is State.HOLDER or n in unbinding
            if rt.state is State.HOLDER:
                assert sim.keys.get(n) is not None and sim.keys[n].node == ME
    # Quiet now: healthy, keepalives answered, nobody else holds anything. Every VIP ends held.
    for n in list(sim.keys):
        if sim.keys[n].node != ME:
            sim.other_releases(n)
    sim.core.health_changed(name, True, "check passed", sim.now)
    for _ in range(3):
        sim.ack()
        sim.run()
    assert sim.states() == dict.fromkeys(("v0", "v1", "v2"), State.HOLDER)
    assert sim.placed == {"v0", "v1", "v2"}


def test_health_values_are_typed():
    assert Health.from_text("healthy") == HEALTHY


def test_every_earlier_holder_must_have_let_go_not_only_the_last():
    """h2 held v0; a foreign write named h3 (alive, not configured for v0); then one named
    us. h3 never had the address, but h2 may still: we wait for h2."""
    sim = Sim.started(config(1))
    h2 = Holder("h2", 0xB2, 11)
    h3 = Holder("h3", 0xB4, 12)
    sim.alive_leases |= {0xB4}
    h3_member = MemberRecord("h3", None, "0", 0.0, "d", 0xB4, ())
    sim.core.apply([HolderChange("v0", h2, 11), MemberChange("h3", h3_member, 11)], sim.now)
    sim.core.apply([HolderChange("v0", h3, 12)], sim.now)
    mine = Holder(ME, LEASE, 13)
    sim.keys["v0"] = mine
    sim.core.apply([HolderChange("v0", mine, 13)], sim.now)
    sim.run()
    assert sim.states() == {"v0": State.HOLDER} and sim.placed == set()
    sim.core.apply([ReleasedChange("v0", Released("h2", 11), 14)], sim.now)
    sim.run()
    assert sim.placed == {"v0"}


def test_a_mass_takeover_asks_etcd_once_per_predecessor_lease():
    sim = Sim.started(config(30))
    for i in range(30):
        sim.revision += 1
        h = Holder("h2", 0xB3, sim.revision)  # the dead host's lease, gone
        sim.core.apply([HolderChange(f"v{i}", h, sim.revision)], sim.now)
    sim.run()
    sim.revision += 1
    sim.core.apply([HolderChange(f"v{i}", None, sim.revision) for i in range(30)], sim.now)
    sim.run()
    assert sim.placed == {f"v{i}" for i in range(30)}
    assert sum(isinstance(a, CheckLease) for a in sim.log) == 1

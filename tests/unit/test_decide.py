"""The pure decisions, each with its reason: no etcd, no netlink, no threads, no clock."""

from __future__ import annotations

from collections.abc import Mapping

import pytest

from haagent.cluster.schema import HEALTHY, UNKNOWN, Health, HealthState, Holder, MemberRecord
from haagent.cluster.view import ClusterView
from haagent.config import parse_config
from haagent.decide import eligibility, outage, purge, rank, reload, startup
from haagent.decide.decision import Decision

SICK = Health(HealthState.UNHEALTHY, "check pg failed: connection refused (3/3)")


def facts(**kw: object) -> eligibility.EligibilityFacts:
    base: dict[str, object] = {
        "health": HEALTHY,
        "holding": False,
        "hold_left": 0.0,
        "healthy_peers": ["h2"],
        "when_all_unhealthy": "release",
    }
    return eligibility.EligibilityFacts(**{**base, **kw})  # type: ignore[arg-type]


def test_healthy_and_not_held_down_may_campaign():
    assert eligibility.decide(facts()) == eligibility.Eligibility(True, "health checks pass")


def test_unknown_health_never_campaigns():
    v = eligibility.decide(facts(health=Health(HealthState.UNKNOWN, "health not yet known")))
    assert (v.eligible, v.reason) == (False, "health not yet known")
    assert not eligibility.decide(facts(health=UNKNOWN)).eligible


def test_unhealthy_gives_up_with_the_checks_reason():
    v = eligibility.decide(facts(health=SICK, holding=True))
    assert (v.eligible, v.reason, v.nobody) == (False, SICK.reason, False)


def test_unhealthy_with_no_healthy_peer_says_nobody_answers():
    v = eligibility.decide(facts(health=SICK, healthy_peers=[]))
    assert not v.eligible and v.nobody


@pytest.mark.parametrize("holding,peers,keep", [(True, [], True), (True, ["h2"], False)])
def test_keep_only_while_holding_and_nobody_healthy_could_take_over(holding, peers, keep):
    v = eligibility.decide(
        facts(health=SICK, holding=holding, healthy_peers=peers, when_all_unhealthy="keep")
    )
    assert (v.eligible, v.keeping) == (keep, keep)
    if keep:
        assert v.reason.endswith("keeping it: no healthy host (when_all_unhealthy: keep)")


def test_a_standby_never_starts_holding_an_unhealthy_vip_under_keep():
    v = eligibility.decide(
        facts(health=SICK, holding=False, healthy_peers=[], when_all_unhealthy="keep")
    )
    assert not v.eligible


def test_no_carrier_means_no_vip_whatever_the_health():
    v = eligibility.decide(facts(holding=True, link_down="eth0 lost its carrier"))
    assert (v.eligible, v.reason) == (False, "eth0 lost its carrier")
    v = eligibility.decide(
        facts(
            health=SICK,
            holding=True,
            healthy_peers=[],
            when_all_unhealthy="keep",
            link_down="eth0 lost its carrier",
        )
    )
    assert not v.eligible and not v.keeping


def test_hold_down_blocks_with_the_time_left():
    v = eligibility.decide(facts(hold_left=1.26))
    assert (v.eligible, v.reason) == (False, "hold-down after giving it up (1.3s left)")


def test_hold_down_only_damps_a_holder():
    assert eligibility.hold_down_on_failure(True, 5.0) == 5.0
    assert eligibility.hold_down_on_failure(False, 5.0) is None
    assert eligibility.hold_down_on_failure(True, 0.0) is None


def test_deadline_releases_unless_told_to_keep_while_holding():
    assert outage.at_deadline("release", True, "2.1s ago") == Decision(
        False, "lease deadline passed (last keepalive answered 2.1s ago)"
    )
    assert outage.at_deadline("keep", True, "2.1s ago").yes
    assert not outage.at_deadline("keep", False, "2.1s ago").yes  # nothing to keep


@pytest.mark.parametrize(
    "holder,purged,yes,reason",
    [
        (None, None, False, "key absent"),
        (Holder("h2", 0xB2, 7), None, False, "held by h2 on lease b2"),
        (Holder.from_kv(b"junk", 0xB2, 7), None, True, "unreadable value"),
        (Holder("h2", 0, 7), None, True, "attached to no lease"),
        (Holder("h2", 0, 7), 7, False, "attached to no lease; deleted already"),
        (Holder("h2", 0, 8), 7, True, "attached to no lease"),
        (
            Holder.from_kv(b'{"schema":"haagent.holder/v2","node":"h2"}', 0xB2, 9),
            None,
            False,
            "written by a newer haagent on live lease b2: respected",
        ),
        (Holder.from_kv(b'{"schema":"haagent.holder/v2"}', 0, 9), None, True, "unreadable value"),
        (Holder.from_kv(b'{"schema":"haagent.holder/vx"}', 5, 9), None, True, "unreadable value"),
    ],
)
def test_purge_only_keys_no_haagent_wrote_once_each(holder, purged, yes, reason):
    assert purge.purge_holder(holder, purged) == Decision(yes, reason)


def member(node: str, lease: int, **health: Health) -> MemberRecord:
    return MemberRecord(node, None, "0", 0.0, "d", lease, tuple(health), health=health)


def test_adopt_only_our_written_lease_still_carrying_our_member_record():
    assert startup.adopt_lease(0xA1, member("h1", 0xA1)).yes
    assert startup.adopt_lease(None, member("h1", 0xA1)).reason.startswith("no lease")
    assert not startup.adopt_lease(0xA1, None).yes
    d = startup.adopt_lease(0xA1, member("h1", 0xA2))
    assert not d.yes and "on lease a2" in d.reason


def test_keep_a_bound_address_only_when_etcd_says_it_is_ours_on_this_lease():
    assert startup.keep_bound_address(Holder("h1", 0xA1, 3), "h1", 0xA1).yes
    assert startup.keep_bound_address(Holder("h1", 0xA0, 3), "h1", 0xA1).reason == (
        "etcd says it is held by h1 (lease a0)"
    )
    assert startup.keep_bound_address(None, "h1", 0xA1).reason == "etcd says it is held by nobody"


def test_candidates_are_healthy_live_members_not_draining():
    draining = MemberRecord("h4", None, "0", 0.0, "d", 4, ("v",), True, {"v": HEALTHY})
    view = ClusterView.of(
        9,
        members={
            "h3": member("h3", 3, v=HEALTHY),
            "h1": member("h1", 1, v=HEALTHY),
            "h2": member("h2", 2, v=SICK),
            "h4": draining,
        },
    )
    # in rendezvous order (both have the default priority)
    assert sorted(rank.candidates(view, "v")) == ["h1", "h3"]
    assert rank.candidates(view, "v") == sorted(["h1", "h3"], key=lambda n: -rank.score("v", n))
    assert rank.candidates(view, "v", exclude={"h1"}) == ["h3"]
    assert rank.candidates(view, "other") == []


def vips_config(*vips: Mapping[str, object]):
    return parse_config(
        {"node": "h1", "etcd": {"endpoints": ["http://198.51.100.2:2379"]}, "vips": list(vips)},
        "t.yaml",
    ).vips


def test_config_diff_names_added_removed_changed_and_untouched_vips():
    a = {"name": "a", "address": "198.51.100.10", "interface": "eth0"}
    b = {"name": "b", "address": "198.51.100.11", "interface": "eth0"}
    c = {"name": "c", "address": "198.51.100.12", "interface": "eth0"}
    b2 = {**b, "address": "198.51.100.21"}
    d = reload.diff_vips(vips_config(a, b, c), vips_config(a, b2, {**c, "name": "d"}))
    assert d == reload.VipDiff(
        added=("d",), removed=("c",), moved=("b",), updated=(), unchanged=("a",)
    )
    assert not d.empty
    assert reload.diff_vips(vips_config(a), vips_config(a)).empty


def test_a_decision_refuses_to_be_used_as_a_condition():
    with pytest.raises(TypeError, match=r"Decision\.yes"):
        bool(Decision(True, "x"))


def test_an_earlier_holder_is_gone_by_its_release_its_lease_or_its_config():
    from haagent.cluster.schema import Released
    from haagent.decide import handover

    h2 = Holder("h2", 0xB2, 7)

    def why(
        released: Released | None = None,
        gone_leases: tuple[int, ...] = (),
        members: dict[str, MemberRecord] | None = None,
    ) -> str:
        got = handover.gone(
            h2, "v", released=released, gone_leases=gone_leases, members=members or {}
        )
        return got or ""

    assert why() == ""
    assert "confirmed" in why(released=Released("h2", 7))
    assert why(released=Released("h2", 6)) == ""  # another key of h2's: vouches for nothing
    assert "is gone" in why(gone_leases=(0xB2,))
    assert "not configured" in why(members={"h2": member("h2", 0xB2)})
    assert why(members={"h2": member("h2", 0xB2, v=HEALTHY)}) == ""
    assert why(members={"h2": member("h2", 0xB9)}) == ""  # a record on another lease: no proof
    assert handover.may_bind([]).yes
    d = handover.may_bind([h2])
    assert not d.yes and "h2 (lease b2)" in d.reason

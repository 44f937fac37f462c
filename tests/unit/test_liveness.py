"""Fast failover's pure parts: the heartbeat codec, the peer table (silence, promises,
protection), the quorum decisions and the witness. No sockets, no etcd, no clock."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from haagent.agent.witness import (
    DropSuspicion,
    LivenessFacts,
    Refute,
    RevokeLease,
    Witness,
    WriteSuspicion,
    WriteVerdict,
)
from haagent.cluster.schema import Holder, MemberRecord, Suspicion, Verdict
from haagent.cluster.view import ClusterView
from haagent.config import MAX_CLOCK_DRIFT, ConfigErrors, parse_config
from haagent.decide import quorum
from haagent.liveness import wire
from haagent.liveness.peers import Liveness, majority, needed_promises

KEY = b"k" * 32
D = 0.06  # detection


def hb(node: str = "h2", seq: int = 1, lease: int = 0xB2, **kw: object) -> wire.Heartbeat:
    return wire.Heartbeat(cluster="c", node=node, lease=lease, seq=seq, **kw)  # type: ignore[arg-type]


# -- wire -------------------------------------------------------------------------------


def test_a_heartbeat_survives_the_wire() -> None:
    sent = hb(etcd_age_ms=12, members=3, heard={"h1": 7, "h3": 9}, surrender=0xC3)
    assert wire.decode(wire.encode(sent, KEY), KEY, "c") == sent


@pytest.mark.parametrize(
    ("mangle", "why"),
    [
        (lambda d: d[:-1] + bytes([d[-1] ^ 1]), "bad mac"),
        (lambda d: d.replace(b'"s":1', b'"s":2'), "bad mac"),
        (lambda d: b"junk" + d, "not a haagent heartbeat"),
        (lambda d: d + b"x" * wire.MAX_DATAGRAM, "oversized"),
    ],
)
def test_a_forged_or_altered_heartbeat_is_refused(mangle: object, why: str) -> None:
    data = wire.encode(hb(), KEY)
    with pytest.raises(wire.BadPacket, match=why):
        wire.decode(mangle(data), KEY, "c")  # type: ignore[operator]


def test_a_heartbeat_of_another_key_or_cluster_is_refused() -> None:
    with pytest.raises(wire.BadPacket, match="bad mac"):
        wire.decode(wire.encode(hb(), b"x" * 32), KEY, "c")
    with pytest.raises(wire.BadPacket, match="another cluster"):
        wire.decode(wire.encode(hb(), KEY), KEY, "d")


def test_authentic_but_malformed_fields_are_refused() -> None:
    import hashlib
    import hmac
    import json

    for body in (
        {"c": "c", "n": "H2!", "l": 1, "s": 1, "m": 1, "h": {}},
        {"c": "c", "n": "h2", "l": 0, "s": 1, "m": 1, "h": {}},
        {"c": "c", "n": "h2", "l": 1, "s": -1, "m": 1, "h": {}},
        {"c": "c", "n": "h2", "l": 1, "s": 1, "m": 1, "h": {"h1": "x"}},
        {"c": "c", "n": "h2", "l": 1, "s": 1, "m": 1, "h": [1]},
        {"c": "c", "n": "h2", "l": 1, "s": True, "m": 1, "h": {}},
    ):
        signed = wire.MAGIC + json.dumps(body).encode()
        data = signed + hmac.new(KEY, signed, hashlib.sha256).digest()
        with pytest.raises(wire.BadPacket):
            wire.decode(data, KEY, "c")


# -- peers ------------------------------------------------------------------------------


def test_replays_reordering_and_stale_sessions_are_refused_and_counted() -> None:
    lv = Liveness("h1", D, MAX_CLOCK_DRIFT)
    assert lv.receive(hb(seq=5), 1.0, 0xB2) is None
    assert lv.receive(hb(seq=5), 1.01, 0xB2) == "replayed or reordered"
    assert lv.receive(hb(seq=4), 1.02, 0xB2) == "replayed or reordered"
    assert lv.receive(hb(seq=99, lease=0xB1), 1.03, 0xB2) == "stale session"
    assert lv.receive(hb(node="h9"), 1.04, None) == "not a live member"
    assert lv.receive(hb(node="h1"), 1.05, 0xB2) == "own node name"
    assert sum(lv.rejected.values()) == 5 and lv.accepted == 1


def test_a_silent_peer_is_suspected_and_its_promise_withheld_until_cleared() -> None:
    lv = Liveness("h1", D, MAX_CLOCK_DRIFT)
    lv.receive(hb(seq=1), 1.0, 0xB2)
    assert lv.suspected(1.0 + D - 0.001) == set()
    assert lv.heard_set(1.0 + D - 0.001) == {"h2": 1}
    assert lv.suspected(1.0 + D) == {"h2"}
    lv.receive(hb(seq=2), 1.2, 0xB2)  # heard again: still withheld (a record may exist)
    assert lv.heard_set(1.2) == {}
    lv.clear("h2")
    assert lv.heard_set(1.2) == {"h2": 2}


def test_protection_needs_enough_promises_that_the_rest_is_no_majority() -> None:
    lv = Liveness("h1", D, MAX_CLOCK_DRIFT)
    s1 = lv.sending(10.0)
    s2 = lv.sending(10.02)
    lv.receive(hb("h2", 1, 0xB2, heard={"h1": s2}), 10.03, 0xB2)
    lv.receive(hb("h3", 1, 0xB3, heard={"h1": s1}), 10.03, 0xB3)
    shrunk = D * (1 - 2 * MAX_CLOCK_DRIFT)
    # 2 others: 1 promise suffices (the other alone is no majority of 2); the newest counts.
    assert lv.protected_until(2) == pytest.approx(10.02 + shrunk)
    # 3 others: 2 promises needed; the older one bounds it.
    assert lv.protected_until(3) == pytest.approx(10.0 + shrunk)
    # 5 others: 3 needed, only 2 given.
    assert lv.protected_until(5) == -math.inf
    assert lv.protected_until(0) == math.inf


def test_a_peer_counting_more_members_raises_the_bar() -> None:
    lv = Liveness("h1", D, MAX_CLOCK_DRIFT)
    lv.receive(hb("h2", 1, 0xB2, members=6), 1.0, 0xB2)
    assert lv.others(2, 1.0) == 5
    assert lv.others(2, 1.0 + D) == 2  # not heard lately: no longer counted


def test_etcd_reachable_elsewhere_needs_a_fresh_report() -> None:
    lv = Liveness("h1", D, MAX_CLOCK_DRIFT)
    lv.receive(hb("h2", 1, 0xB2, etcd_age_ms=100), 1.0, 0xB2)
    lv.receive(hb("h3", 1, 0xB3), 1.0, 0xB3)  # it has no lease
    assert lv.etcd_reachable_elsewhere(1.0, 0.3) == ["h2"]
    assert lv.etcd_reachable_elsewhere(1.05, 0.15) == []


@given(st.integers(min_value=1, max_value=200))
def test_a_protecting_set_and_a_verdict_majority_cannot_coexist(others: int) -> None:
    # Suspecters withhold their promises, so the two sets are disjoint among `others`.
    assert needed_promises(others) + majority(others) > others


# -- quorum -----------------------------------------------------------------------------


def member(node: str, lease: int, *, liveness: bool = True) -> MemberRecord:
    return MemberRecord(
        node=node,
        address=None,
        version="t",
        started=0.0,
        config_digest="",
        lease=lease,
        vips=("v0",),
        liveness=liveness,
    )


LEASES = {"h1": 0xA1, "h2": 0xB2, "h3": 0xC3, "h4": 0xD4}


def view(
    *,
    nodes: tuple[str, ...] = ("h1", "h2", "h3"),
    suspects: dict[str, list[str]] | None = None,
    verdict: Verdict | None = None,
    holder: str | None = "h2",
    no_liveness: tuple[str, ...] = (),
) -> ClusterView:
    sus: dict[str, dict[str, Suspicion]] = {}
    rev = 50
    for target, bys in (suspects or {}).items():
        for by in bys:
            rev += 1
            sus.setdefault(target, {})[by] = Suspicion(target, by, LEASES[target], LEASES[by], rev)
    holders = {} if holder is None else {"v0": Holder(holder, LEASES[holder], create_revision=5)}
    return ClusterView.of(
        100,
        members={n: member(n, LEASES[n], liveness=n not in no_liveness) for n in nodes},
        holders=holders,
        suspicions=sus,
        verdicts={} if verdict is None else {verdict.target: verdict},
    )


def test_evidence_needs_a_majority_of_the_other_live_members() -> None:
    assert quorum.evidence(view(suspects={"h2": ["h1"]}), "h2") is None
    ev = quorum.evidence(view(suspects={"h2": ["h1", "h3"]}), "h2")
    assert ev is not None and [b for b, _ in ev.suspecters] == ["h1", "h3"] and ev.needed == 2
    # Four hosts: 2 of 3 others is a majority.
    four = view(nodes=("h1", "h2", "h3", "h4"), suspects={"h2": ["h1", "h3"]})
    assert quorum.evidence(four, "h2") is not None


def test_evidence_ignores_members_without_liveness_and_foreign_records() -> None:
    assert (
        quorum.evidence(view(suspects={"h2": ["h1", "h3"]}, no_liveness=("h3",)), "h2") is not None
    )
    v = view(suspects={"h2": ["h1", "h3"]})
    forged = dict(v.suspicions["h2"])
    forged["h3"] = Suspicion("h2", "h3", LEASES["h2"], own_lease=0xEE, create_revision=60)
    v2 = ClusterView.of(100, members=v.members, holders=v.holders, suspicions={"h2": forged})
    assert quorum.evidence(v2, "h2") is None  # h3's record is not on h3's lease


def test_evidence_bar_is_the_larger_of_our_count_and_the_targets() -> None:
    v = view(suspects={"h2": ["h1", "h3"]})
    assert quorum.evidence(v, "h2", claimed_members=3) is not None
    assert quorum.evidence(v, "h2", claimed_members=6) is None  # it counted 5 others: 3 needed


def test_no_new_evidence_once_a_verdict_on_that_session_exists() -> None:
    old = Verdict("h2", 0x99, "h1", revision=40)
    assert quorum.evidence(view(suspects={"h2": ["h1", "h3"]}, verdict=old), "h2") is not None
    same = Verdict("h2", LEASES["h2"], "h1", revision=40)
    assert quorum.evidence(view(suspects={"h2": ["h1", "h3"]}, verdict=same), "h2") is None


def test_the_refute_window_comes_before_the_verdict() -> None:
    ev = quorum.evidence(view(suspects={"h2": ["h1", "h3"]}), "h2")
    assert ev is not None
    assert not quorum.verdict_due(ev, 10.0, 0.01, 10.005).yes
    assert quorum.verdict_due(ev, 10.0, 0.01, 10.01).yes


def test_the_hold_deadline() -> None:
    assert quorum.hold_deadline(20.0, 10.0, 0.06, -math.inf) == pytest.approx(10.06)
    assert quorum.hold_deadline(20.0, 10.0, 0.06, 11.0) == 11.0
    assert quorum.hold_deadline(20.0, 10.0, 0.06, math.inf) == 20.0  # the etcd deadline bounds
    assert quorum.hold_deadline(None, 10.0, 0.06, 11.0) is None


def test_surrender_only_when_etcd_is_lost_here_but_not_elsewhere() -> None:
    assert not quorum.surrender(10.0, 0.3, 10.2, ["h2"]).yes
    assert not quorum.surrender(10.0, 0.3, 10.5, []).yes  # everyone lost it: the lease decides
    d = quorum.surrender(10.0, 0.3, 10.3, ["h2"])
    assert d.yes and "h2" in d.reason


# -- witness ----------------------------------------------------------------------------


def witness(**facts: object) -> Witness:
    w = Witness("h1", refute_window=0.01)
    w.facts = LivenessFacts(**facts)  # type: ignore[arg-type]
    return w


def test_a_silent_holder_gets_one_suspicion_record_and_a_silent_standby_none() -> None:
    w = witness(suspected=frozenset({"h2", "h3"}), withheld=frozenset({"h2", "h3"}))
    out = w.step(view(), True, LEASES["h1"], 1.0)
    assert out == [WriteSuspicion("h2", LEASES["h2"])]
    w.written("h2", True)
    assert w.step(view(), True, LEASES["h1"], 1.01) == []
    assert "h3" not in w.cleared  # still suspected: its promise stays withheld


def test_heard_again_the_record_is_deleted_and_only_then_the_promise_released() -> None:
    w = witness(suspected=frozenset({"h2"}), withheld=frozenset({"h2"}))
    w.step(view(), True, LEASES["h1"], 1.0)
    w.written("h2", True)
    w.facts = LivenessFacts(withheld=frozenset({"h2"}))
    assert w.step(view(suspects={"h2": ["h1"]}), True, LEASES["h1"], 1.1) == [DropSuspicion("h2")]
    assert "h2" not in w.cleared
    w.dropped("h2", True)
    assert "h2" in w.cleared


def test_a_refuted_record_is_not_written_again_while_the_peer_stays_silent() -> None:
    w = witness(suspected=frozenset({"h2"}), withheld=frozenset({"h2"}))
    w.step(view(), True, LEASES["h1"], 1.0)
    w.written("h2", True)
    w.step(view(suspects={"h2": ["h1"]}), True, LEASES["h1"], 1.01)  # seen in etcd
    assert w.step(view(), True, LEASES["h1"], 1.02) == []  # the suspect deleted it
    assert w.records["h2"] == "refuted"


def test_the_verdict_is_written_after_the_window_and_only_by_a_suspecter() -> None:
    v = view(suspects={"h2": ["h1", "h3"]})
    w = witness(suspected=frozenset({"h2"}))
    w.records["h2"] = "written"
    w.record_lease["h2"] = LEASES["h2"]
    assert w.step(v, True, LEASES["h1"], 1.0) == []
    assert w.wake_at == pytest.approx(1.01)
    out = w.step(v, True, LEASES["h1"], 1.01)
    assert len(out) == 1 and isinstance(out[0], WriteVerdict)
    assert out[0].evidence.target == "h2"
    assert w.step(v, True, LEASES["h1"], 1.02) == []  # once per session
    bystander = Witness("h4", 0.01)
    four = view(nodes=("h1", "h2", "h3", "h4"), suspects={"h2": ["h1", "h3"]})
    assert bystander.step(four, True, LEASES["h4"], 2.0) == []


def test_suspicions_of_ourselves_are_refuted_once_each() -> None:
    v = view(suspects={"h1": ["h2", "h3"]}, holder="h1")
    w = witness()
    out = w.step(v, True, LEASES["h1"], 1.0)
    assert len(out) == 1 and isinstance(out[0], Refute)
    w.refuted(out[0], True)
    assert w.step(v, True, LEASES["h1"], 1.01) == []


def test_a_surrendered_lease_is_revoked_once_and_only_if_it_is_the_members() -> None:
    w = witness(surrenders=(("h2", LEASES["h2"]), ("h3", 0x77)))
    out = w.step(view(), True, LEASES["h1"], 1.0)
    assert out == [RevokeLease("h2", LEASES["h2"], "h2 gave its VIPs up and asks for it")]
    assert w.step(view(), True, LEASES["h1"], 1.1) == []
    assert witness(surrenders=(("h2", LEASES["h2"]),)).step(view(), False, None, 1.0) == []


# -- config -----------------------------------------------------------------------------


def base(liveness: dict[str, object], **lease: object) -> dict[str, object]:
    return {
        "node": "h1",
        "lease": {"ttl": 3, "margin": 1.0, **lease},
        "etcd": {"timeout": 0.5},
        "vips": [{"name": "v", "address": "198.51.100.1", "interface": "eth0"}],
        "liveness": liveness,
    }


@pytest.mark.parametrize(
    ("liveness", "key"),
    [
        ({"hold": 0.04}, "liveness.hold"),  # < 3 x interval
        ({"etcd_loss": 2.0}, "liveness.etcd_loss"),  # >= ttl - margin
        ({"interval": 0.0001}, "liveness.interval"),
        ({"multiplier": 2}, "liveness.multiplier"),
        ({"port": 70000}, "liveness.port"),
    ],
)
def test_the_timing_rules_are_enforced(liveness: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigErrors, match=key):
        parse_config(base(liveness))


def test_the_defaults_pass_and_say_what_detection_costs() -> None:
    cfg = parse_config(base({}))
    assert cfg.liveness.detection == pytest.approx(0.08)
    assert cfg.liveness.keepalive == pytest.approx(0.1)
    assert cfg.liveness.fast_keepalive == pytest.approx(0.02)


def test_a_promise_lasts_only_as_long_as_the_promiser_waits() -> None:
    lv = Liveness("h1", D, MAX_CLOCK_DRIFT)
    s = lv.sending(10.0)
    lv.receive(hb("h2", 1, 0xB2, heard={"h1": s}, detection_ms=30), 10.01, 0xB2)
    assert lv.protected_until(1) == pytest.approx(10.0 + 0.03 * (1 - 2 * MAX_CLOCK_DRIFT))


def test_two_members_give_the_holder_a_longer_refute_window() -> None:
    v = view(nodes=("h1", "h2"), suspects={"h2": ["h1"]})
    w = witness(suspected=frozenset({"h2"}))
    w.records["h2"] = "written"
    w.record_lease["h2"] = LEASES["h2"]
    assert w.step(v, True, LEASES["h1"], 1.0) == []
    assert w.step(v, True, LEASES["h1"], 1.02) == []  # a lone deaf peer must wait longer
    assert w.wake_at == pytest.approx(1.05)
    out = w.step(v, True, LEASES["h1"], 1.05)
    assert len(out) == 1 and isinstance(out[0], WriteVerdict)

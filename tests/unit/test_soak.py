"""The pure parts of the randomized fault run: its schedule and its verdicts."""

from __future__ import annotations

import pytest

from haagent.lab.soak import (
    FAULT_KINDS,
    AgentExit,
    Failure,
    SoakOptions,
    TracebackHit,
    VipOutcome,
    find_tracebacks,
    judge,
    make_schedule,
    recovery_bound,
    replay_command,
    vip_specs,
)

HOSTS = ["h1", "h2", "h3"]
MEMBERS = ["etcd1", "etcd2", "etcd3"]
VIPS = ["vip0", "vip1"]
BOUND = recovery_bound(3, 1.0)


def schedule(seed: int, seconds: float = 300.0) -> list[object]:
    return list(make_schedule(seed, seconds, HOSTS, MEMBERS, VIPS))


def test_the_same_seed_gives_the_same_schedule() -> None:
    assert schedule(42) == schedule(42)
    assert schedule(42) != schedule(43)


def test_a_shorter_run_is_a_prefix_of_a_longer_one() -> None:
    # What a replay relies on: how far a run gets changes nothing about what comes first.
    short = make_schedule(7, 60, HOSTS, MEMBERS, VIPS)
    long = make_schedule(7, 600, HOSTS, MEMBERS, VIPS)
    assert long[: len(short)] == short


def test_the_schedule_covers_the_run_and_respects_the_bounds() -> None:
    plan = make_schedule(1, 600, HOSTS, MEMBERS, VIPS)
    assert sum(f.hold + f.gap for f in plan) >= 600
    assert [f.index for f in plan] == list(range(len(plan)))
    assert {f.kind for f in plan} == set(FAULT_KINDS)  # 600 s draw every kind
    for f in plan:
        lo, hi = FAULT_KINDS[f.kind].hold
        assert lo <= f.hold <= hi and 0 <= f.gap <= 3.0
        if f.kind.startswith("etcd-") and f.kind != "etcd-partition":
            assert f.target in MEMBERS
        elif f.kind.startswith("key-"):
            what, _, name = f.target.partition(":")
            assert name in {"holder": VIPS, "member": HOSTS}[what]
        elif f.target.startswith("holder:"):
            assert f.target[len("holder:") :] in VIPS and f.fallback in HOSTS
        else:
            assert f.target in HOSTS
        assert (f.option != "") == (f.kind == "key-garbage")


def test_a_schedule_can_be_limited_to_some_kinds() -> None:
    plan = make_schedule(3, 120, HOSTS, MEMBERS, VIPS, ["agent-sigstop", "link-cut"])
    assert {f.kind for f in plan} == {"agent-sigstop", "link-cut"}
    with pytest.raises(ValueError, match="unknown fault kinds"):
        make_schedule(3, 120, HOSTS, MEMBERS, VIPS, ["agent-sigsegv"])


def test_the_recovery_bound_is_ttl_margin_election_and_expiry_sweep() -> None:
    assert recovery_bound(3, 1.0) == pytest.approx(5.5)
    assert recovery_bound(5, 1.5, 1.0) == pytest.approx(8.0)


def vip(name: str = "vip0", recovered: float | None = 0.3) -> VipOutcome:
    return VipOutcome(name, "198.51.100.200", recovered_after=recovered)


def verdicts(
    vips: list[VipOutcome],
    exits: list[AgentExit] | None = None,
    tracebacks: list[TracebackHit] | None = None,
    heal: list[Failure] | None = None,
) -> tuple[dict[str, bool], list[Failure]]:
    got, failures = judge(vips, exits or [], tracebacks or [], heal or [], BOUND)
    return {v.name: v.ok for v in got}, failures


def test_a_clean_run_passes_every_verdict() -> None:
    exits = [AgentExit("h1", 10.0, -9, True, 0), AgentExit("h2", 20.0, 0, True, 0)]
    ok, failures = verdicts([vip("vip0"), vip("vip1", 5.5)], exits)
    assert all(ok.values()) and len(ok) == 6
    assert failures == []


def test_an_unexpected_exit_fails() -> None:
    exits = [AgentExit("h1", 10.0, -9, True, 0), AgentExit("h3", 12.5, 1, False, 2)]
    ok, failures = verdicts([vip()], exits)
    assert ok["no unexpected agent exit"] is False
    assert [k for k, v in ok.items() if not v] == ["no unexpected agent exit"]
    [f] = failures
    assert f.at == 12.5 and "h3" in f.detail and "exited 1" in f.detail


def test_a_traceback_fails() -> None:
    log = "2026-01-01T00:00:00.000Z INFO x: fine\nTraceback (most recent call last):\n  File x\n"
    hits = find_tracebacks("h2.agent.log", log)
    assert hits == [TracebackHit("h2.agent.log", 2, hits[0].text)]
    assert "INFO x: fine" in hits[0].text
    ok, failures = verdicts([vip()], tracebacks=hits)
    assert ok["no traceback"] is False
    assert "h2.agent.log:2" in failures[0].detail
    assert find_tracebacks("h1.agent.log", "all quiet\n") == []


@pytest.mark.parametrize("recovered", [None, BOUND + 0.01])
def test_a_vip_not_held_again_in_time_fails(recovered: float | None) -> None:
    ok, failures = verdicts([vip("vip0"), vip("vip1", recovered)])
    assert ok["every VIP held again in time"] is False
    assert [f.verdict for f in failures] == ["every VIP held again in time"]
    assert "vip1" in failures[0].detail


def test_double_holders_and_double_answers_fail_with_their_times() -> None:
    bad = vip()
    bad.double_holder = [(100.0, 100.004, ["h1", "h2"])]
    bad.interleavings = [{"at": 101.0, "host": "h1", "after": "h2", "superseded_at": 100.5}]
    ok, failures = verdicts([bad])
    assert ok["no double holder"] is False and ok["no double answer"] is False
    assert [(f.verdict, f.at) for f in failures] == [
        ("no double holder", 100.0),
        ("no double answer", 101.0),
    ]
    assert "4.0 ms" in failures[0].detail


def test_a_heal_failure_fails_its_verdict() -> None:
    heal = [Failure("every fault healed", 50.0, "etcd member etcd2 not healthy")]
    ok, failures = verdicts([vip()], heal=heal)
    assert ok["every fault healed"] is False and failures == heal


def test_replay_command_and_vips() -> None:
    opts = SoakOptions(minutes=1.5, seed=99, vips=3)
    assert replay_command(opts) == "python -m haagent.lab.soak --minutes 1.5 --seed 99 --vips 3"
    assert vip_specs(3) == [
        ("vip0", "198.51.100.200"),
        ("vip1", "2001:db8:100::200"),
        ("vip2", "198.51.100.201"),
    ]

import itertools

import pytest

from haagent.health.state import CheckState, Transition, VipHealth

P, F = True, False


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def tick(self, dt: float = 1.0) -> None:
        self.now += dt


def feed(st: CheckState, results: list[bool] | tuple[bool, ...]) -> list[Transition | None]:
    return [st.record(ok, "pass" if ok else "fail") for ok in results]


def flip_at_last(st: CheckState, results: list[bool]) -> Transition:
    """Feed ``results``; only the last of them may change the state, and it must."""
    got = feed(st, results)
    assert got[:-1] == [None] * (len(results) - 1)
    t = got[-1]
    assert t is not None
    return t


def states(st: CheckState, results: list[bool]) -> list[bool | None]:
    out = []
    for ok in results:
        st.record(ok, "")
        out.append(st.healthy)
    return out


# --------------------------------------------------------------------------- start


def test_starts_unknown_with_nothing_counted():
    c = Clock()
    st = CheckState(2, 3, clock=c)
    assert st.healthy is None
    assert (st.successes, st.failures, st.runs) == (0, 0, 0)
    assert st.last_ok is None and st.last_detail == "" and st.last_at is None
    assert st.since == 1000.0 and st.last_transition is None
    assert st.progress() == "no result yet" and st.describe() == "no result yet"


@pytest.mark.parametrize("rise", [1, 2, 3, 5])
def test_unknown_becomes_healthy_after_exactly_rise_passes(rise):
    st = CheckState(rise, 3)
    t = flip_at_last(st, [P] * rise)
    assert t == Transition(None, True, "pass", rise, rise, t.at)
    assert st.healthy is True


@pytest.mark.parametrize("fall", [1, 2, 3])
def test_unknown_becomes_unhealthy_at_the_first_failure_whatever_fall(fall):
    # Start-up rule: unknown already counts as not healthy, so waiting for `fall` failures would
    # only hide the failure.
    st = CheckState(2, fall)
    t = st.record(F, "connection refused")
    assert t is not None and t.previous is None and t.healthy is False
    assert (t.count, t.needed) == (1, fall)
    assert t.describe() == "connection refused (not healthy yet)"
    assert st.healthy is False


def test_a_pass_then_a_failure_at_start_is_unhealthy_and_needs_rise_again():
    st = CheckState(2, 3)
    assert states(st, [P, F, P, P]) == [None, False, False, True]


# --------------------------------------------------------------------------- steady state


def test_healthy_becomes_unhealthy_after_exactly_fall_failures():
    st = CheckState(2, 3, initial=True)
    t = flip_at_last(st, [F, F, F])
    assert (t.previous, t.healthy, t.count, t.needed) == (True, False, 3, 3)
    assert t.describe() == "fail (3/3)"


def test_unhealthy_becomes_healthy_after_exactly_rise_passes():
    st = CheckState(3, 2, initial=False)
    t = flip_at_last(st, [P, P, P])
    assert (t.previous, t.healthy, t.count, t.needed) == (False, True, 3, 3)


def test_more_of_the_same_result_never_transitions_again():
    st = CheckState(2, 2)
    assert [t is not None for t in feed(st, [P] * 6)] == [F, P, F, F, F, F]
    assert st.successes == 6
    assert [t is not None for t in feed(st, [F] * 6)] == [F, P, F, F, F, F]
    assert st.failures == 6 and st.successes == 0


def test_a_pass_in_between_resets_the_failure_count():
    st = CheckState(2, 3, initial=True)
    assert states(st, [F, F, P, F, F, P, F, F]) == [True] * 8
    assert states(st, [F]) == [False]


def test_a_failure_in_between_resets_the_pass_count():
    st = CheckState(3, 2, initial=False)
    assert states(st, [P, P, F, P, P, F, P, P]) == [False] * 8
    assert states(st, [P]) == [True]


def test_rise_1_fall_1_follows_every_result():
    st = CheckState(1, 1)
    seq = [P, F, F, P, P, F, P]
    assert states(st, seq) == seq
    st = CheckState(1, 1)
    assert sum(t is not None for t in feed(st, seq)) == 5  # every change of result


def test_flapping_never_reaches_healthy_with_rise_2():
    st = CheckState(2, 2)
    assert states(st, [P, F] * 10) == [None] + [False] * 19


def test_flapping_never_drops_a_healthy_check_with_fall_2():
    st = CheckState(2, 2, initial=True)
    assert states(st, [F, P] * 10) == [True] * 20


def test_flapping_with_rise_1_and_fall_3_stays_healthy_once_up():
    st = CheckState(1, 3)
    assert states(st, [P, F, F, P, F, F, P]) == [True] * 7


def test_initial_false_waits_for_rise_and_initial_true_for_fall():
    assert states(CheckState(2, 3, initial=False), [F, P, P]) == [False, False, True]
    assert states(CheckState(2, 3, initial=True), [P, F, F, F]) == [True, True, True, False]


def test_since_moves_only_on_transitions_and_counters_track_results():
    c = Clock()
    st = CheckState(2, 2, clock=c)
    c.tick()
    st.record(P, "ok 1")
    assert st.since == 1000.0 and st.last_at == 1001.0
    c.tick()
    st.record(P, "ok 2")
    assert st.since == 1002.0 and st.healthy is True
    c.tick()
    st.record(F, "refused")
    assert st.since == 1002.0 and st.last_detail == "refused" and st.last_ok is False
    assert st.progress() == "1/2 failures" and st.describe() == "refused (1/2)"
    c.tick()
    t = st.record(F, "refused again")
    assert t is not None and t.at == 1004.0 and st.since == 1004.0
    assert st.last_transition is t and st.runs == 4


def test_progress_counts_passes():
    st = CheckState(3, 2)
    st.record(P, "ok")
    assert st.progress() == "1/3 passes" and st.describe() == "ok (1/3)"


@pytest.mark.parametrize(("rise", "fall"), [(0, 1), (1, 0), (-1, 3)])
def test_rise_and_fall_must_be_positive(rise, fall):
    with pytest.raises(ValueError, match="at least 1"):
        CheckState(rise, fall)


# --------------------------------------------------------------------------- exhaustive


def _reference(results: tuple[bool, ...], rise: int, fall: int, initial: bool | None):
    """The rules, stated with windows over the result history instead of counters."""
    state = initial
    out = []
    for i, ok in enumerate(results):
        window = results[: i + 1]
        if ok:
            if state is not True and len(window) >= rise and all(window[-rise:]):
                state = True
        elif state is None or (state is True and len(window) >= fall and not any(window[-fall:])):
            state = False
        out.append(state)
    return out


@pytest.mark.parametrize("initial", [None, True, False])
@pytest.mark.parametrize("rise", [1, 2, 3, 4])
@pytest.mark.parametrize("fall", [1, 2, 3, 4])
def test_every_sequence_up_to_8_results_matches_the_rules(rise, fall, initial):
    for n in range(1, 9):
        for seq in itertools.product((P, F), repeat=n):
            st = CheckState(rise, fall, initial)
            expected = _reference(seq, rise, fall, initial)
            prev = initial
            for ok, want in zip(seq, expected, strict=True):
                t = st.record(ok, "")
                assert st.healthy is want, (seq, rise, fall, initial)
                if want is prev:
                    assert t is None
                else:
                    assert t is not None and t.previous is prev and t.healthy is want
                    assert t.count == (st.successes if want else st.failures)
                    assert t.needed == (rise if want else fall)
                prev = want


# --------------------------------------------------------------------------- VipHealth


def test_vip_without_checks_is_healthy():
    vh = VipHealth("db", {})
    assert vh.healthy is True and vh.reason == "no checks" and vh.failing == []
    assert vh.update() is False


def test_vip_is_unknown_until_every_check_has_risen():
    a, b = CheckState(1, 3), CheckState(2, 3)
    vh = VipHealth("db", {"a": a, "b": b})
    assert (
        vh.healthy is None
        and vh.reason == "waiting for checks a (no result yet), b (no result yet)"
    )
    a.record(P, "ok")
    assert vh.update() is False and vh.healthy is None
    b.record(P, "ok")
    assert vh.update() is False and vh.reason == "waiting for check b (1/2 passes)"
    b.record(P, "fine")
    assert vh.update() is True and vh.healthy is True
    assert vh.reason == "all 2 checks pass; last to recover: b: fine (2/2)"


def test_vip_is_unhealthy_as_soon_as_one_check_is():
    a, b = CheckState(1, 1), CheckState(2, 3)
    vh = VipHealth("db", [("a", a), ("b", b)])
    a.record(F, "down")
    assert vh.update() is True and vh.healthy is False
    assert vh.reason == "check a failed: down (not healthy yet)"


def test_reason_names_the_failing_check_with_its_count():
    c = Clock()
    pg = CheckState(2, 3, clock=c)
    link = CheckState(1, 1, clock=c)
    vh = VipHealth("db", {"pg": pg, "link": link})
    for _ in range(2):
        pg.record(P, "connected")
    link.record(P, "eth0 is up with carrier")
    assert vh.update() is True and vh.healthy is True
    for _ in range(3):
        pg.record(F, "connection refused")
    assert vh.update() is True and vh.healthy is False
    assert vh.reason == "check pg failed: connection refused (3/3)"
    assert vh.failing == ["pg"]
    link.record(F, "eth0 has no carrier")
    assert vh.update() is False  # still unhealthy: no change to report
    assert vh.reason == (
        "check pg failed: connection refused (3/3); check link failed: eth0 has no carrier (1/1)"
    )
    # One recovering is not enough.
    pg.record(P, "connected")
    pg.record(P, "connected")
    assert vh.update() is False and vh.healthy is False and vh.failing == ["link"]
    c.tick()
    link.record(P, "eth0 is up with carrier")
    assert vh.update() is True and vh.healthy is True
    assert vh.reason == "all 2 checks pass; last to recover: link: eth0 is up with carrier (1/1)"


def test_single_check_healthy_reason():
    st = CheckState(2, 3)
    vh = VipHealth("db", {"pg": st})
    st.record(P, "connected")
    st.record(P, "connected in 1 ms")
    assert vh.update() is True and vh.reason == "check pg passed: connected in 1 ms (2/2)"


def test_a_check_shared_by_two_vips_moves_both():
    shared, own = CheckState(1, 1), CheckState(1, 1)
    v1 = VipHealth("v1", {"shared": shared})
    v2 = VipHealth("v2", {"shared": shared, "own": own})
    own.record(P, "ok")
    shared.record(P, "ok")
    assert v1.update() and v2.update()
    assert v1.healthy is True and v2.healthy is True
    shared.record(F, "down")
    assert v1.update() and v2.update()
    assert v1.healthy is False and v2.healthy is False


def test_close_kills_hooks_that_would_outlive_the_agent(tmp_path):
    """A hook with a long timeout still running at close is killed, not left behind."""
    import time
    from pathlib import Path

    from haagent.config import parse_config
    from haagent.health.notify import Notifier

    marker, pid_file = tmp_path / "survived", tmp_path / "pid"
    cfg = parse_config(
        {
            "node": "h1",
            "etcd": {"endpoints": ["http://198.51.100.2:2379"]},
            "vips": [
                {
                    "name": "v",
                    "address": "198.51.100.200",
                    "interface": "eth0",
                    "notify": {
                        "on_acquire": [
                            "/bin/sh",
                            "-c",
                            f"echo $$ > {pid_file}.tmp && mv {pid_file}.tmp {pid_file}; "
                            f"sleep 2; touch {marker}",
                        ],
                        "timeout": 3600,
                    },
                }
            ],
        },
        "t.yaml",
    )

    def wait_for(cond, what: str) -> None:
        deadline = time.monotonic() + 5
        while not cond():
            assert time.monotonic() < deadline, f"not within 5 s: {what}"
            time.sleep(0.01)

    def gone(pid: int) -> bool:
        """No such process any more, or only its zombie: it can touch nothing."""
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except (FileNotFoundError, ProcessLookupError):  # gone before, or while, reading
            return True
        return stat.rsplit(")", 1)[1].split()[0] == "Z"

    n = Notifier("h1")
    n.fire("acquire", cfg.vips[0], "test")
    wait_for(pid_file.exists, "the hook to start")  # it is running, not only queued
    pid = int(pid_file.read_text())
    started = time.monotonic()
    assert n.close(timeout=0.2) is False
    assert time.monotonic() - started < 2
    # Killed with its group: the shell that would touch the marker after its sleep is gone.
    wait_for(lambda: gone(pid), f"the hook (pid {pid}) to be killed")
    assert not marker.exists()

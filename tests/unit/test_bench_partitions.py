"""The benchmark's partition modes, its "VIP must stay" judgement, its fast/lease haagent
configurations, its targets and its host-death timeline (pure: no lab, no daemons)."""

from __future__ import annotations

import stat
from datetime import UTC, datetime
from ipaddress import ip_address
from pathlib import Path
from typing import Any

import pytest
import yaml

import bench.systems as systems
from bench.evaluate import evaluate_trial, summarize_trials
from bench.modes import MODES
from bench.plot import timeline_marks, timeline_rows, trial_name
from bench.run import FAMILIES, Plan, Runner, _failover, driver_name
from bench.systems import (
    LIVENESS_KEY,
    HaagentDriver,
    KeepalivedDriver,
    haagent_detected_at,
    haagent_variants,
    liveness_section,
)
from bench.targets import TARGETS, evaluate_targets, targets_markdown
from haagent.config import parse_config
from haagent.lab.history import AddressEvent
from haagent.lab.probe import ProbeRecord
from haagent.lab.topology import Lab

IP = ip_address(str(FAMILIES[4]))
T = 1000.0


@pytest.fixture
def lab(tmp_path: Path) -> Lab:
    return Lab(hosts=3, workdir=tmp_path)


# --------------------------------------------------------------------------- modes


def test_partition_modes_say_what_is_right_and_whom_they_hit() -> None:
    for name in ("peers-cut", "peers-cut-out", "standby-deaf"):
        m = MODES[name]
        assert (m.expect, m.window, m.rejoin) == ("stay", "hard", False), name
        assert m.systems == {"haagent", "keepalived"}  # VRRP between the pair is cut too
    both = MODES["etcd+peers-cut"]
    assert (both.expect, both.rejoin) == ("move", True)
    assert both.systems == {"haagent", "keepalived"}
    assert MODES["etcd-partition"].systems == {"haagent"}  # etcd alone: haagent's only
    assert MODES["standby-deaf"].victim == "standby"
    assert all(m.victim == "holder" for n, m in MODES.items() if n != "standby-deaf")
    assert all(
        m.expect == "move" for n, m in MODES.items() if "peers" not in n and n != "standby-deaf"
    )


# --------------------------------------------------------------------------- judgement


def _probes(by: Any) -> list[ProbeRecord]:
    """Probes every 5 ms from T - 0.2 to T + 0.5; ``by(t)`` says who answered one sent at t."""
    return [
        ProbeRecord(i, T - 0.2 + i * 0.005, 0.0002, by(T - 0.2 + i * 0.005)) for i in range(140)
    ]


def _ev(host: str, at: float, added: bool = True, initial: bool = False) -> AddressEvent:
    return AddressEvent(host, at, IP, added, "eth0", initial=initial)


def test_a_vip_that_stays_is_judged_as_staying() -> None:
    probes = _probes(lambda _t: "h1")
    events = [_ev("h1", T - 5, initial=True)]
    r = evaluate_trial(probes, events, IP, "h1", T, T - 0.2, T + 0.5, expect="stay")
    assert (r.outcome, r.as_expected, r.failed_over, r.moved_ms) == ("stayed", True, False, None)
    assert r.gap_ms == pytest.approx(5.0) and not r.double_holder
    s = summarize_trials([r])
    assert (s.expect, s.stayed, s.as_expected, s.failed_over) == ("stay", 1, 1, 0)
    # The same trial in a mode that wants a failover is one without.
    moved = evaluate_trial(probes, events, IP, "h1", T, T - 0.2, T + 0.5)
    assert (moved.outcome, moved.as_expected) == ("stayed", False)


def test_a_vip_bound_elsewhere_moved_even_if_no_client_got_there() -> None:
    # keepalived's backup takes over while the old master keeps answering: two holders.
    probes = _probes(lambda _t: "h1")
    events = [_ev("h1", T - 5, initial=True), _ev("h2", T + 0.3)]
    r = evaluate_trial(probes, events, IP, "h1", T, T - 0.2, T + 0.5, expect="stay")
    assert (r.outcome, r.as_expected, r.failed_over) == ("moved", False, False)
    assert r.moved_ms == pytest.approx(300.0)
    assert r.double_holder  # h1 never unbound
    assert summarize_trials([r]).stayed == 0
    with pytest.raises(ValueError):
        evaluate_trial(probes, events, IP, "h1", T, T - 0.2, T + 0.5, expect="maybe")


def test_the_report_says_stayed_for_a_stay_mode_and_judges_by_plan() -> None:
    row = {"expect": "stay", "stayed": 2, "failed_over": 1, "trials": 3, "unstable_start": 0}
    assert _failover(row) == "stayed 2/3"
    assert _failover({**row, "expect": "move"}) == "1/3"
    plan = Plan("haagent", "c", "peers-cut", 4, 1, "h1", T, T - 0.2, T + 0.5, T + 1, None)
    plan.expect, plan.name, plan.disturbed = "stay", "haagent lease", "h1"
    judged = Runner.judge(plan, _probes(lambda _t: "h1"), [_ev("h1", T - 5, initial=True)])
    assert judged["outcome"] == "stayed" and judged["result"]["expect"] == "stay"
    assert judged["name"] == "haagent lease"


# --------------------------------------------------------------------------- systems


def test_systems_are_named_for_the_results(lab: Lab) -> None:
    names = {
        "fast": "haagent fast",
        "lease": "haagent lease",
        "fast-vmac": "haagent fast vmac",
        "default": "haagent",
        "vmac": "haagent vmac",
    }
    for variant, name in names.items():
        v = haagent_variants()[variant]
        assert HaagentDriver(lab, vmac=v.vmac, liveness=v.liveness).name == name
    assert KeepalivedDriver(lab, advert_int=1.0, vmac=False).name == "keepalived 1s"
    assert KeepalivedDriver(lab, advert_int=0.1, vmac=False).name == "keepalived 0.1s"
    assert KeepalivedDriver(lab, advert_int=0.1, vmac=True).name == "keepalived 0.1s vmac"
    assert driver_name(HaagentDriver(lab, liveness="lease")) == "haagent lease"


def test_the_liveness_section_waits_for_haagent_to_know_it(
    lab: Lab, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = lab.workdir / LIVENESS_KEY
    monkeypatch.setattr(systems, "liveness_settings", lambda: None)
    assert liveness_section("lease", key) is None  # the lease alone: nothing to write
    assert liveness_section(None, key) is None
    with pytest.raises(ValueError):
        liveness_section("fast", key)
    monkeypatch.setattr(systems, "liveness_settings", lambda: {"interval": 0.02, "multiplier": 4})
    assert liveness_section("lease", key) == {"enabled": False}
    assert liveness_section("fast", key) == {"enabled": True, "key_file": str(key)}
    assert liveness_section(None, key) is None
    fast = HaagentDriver(lab, liveness="fast")
    assert fast.config == "ttl 3s margin 1s, liveness 20ms x4"
    texts = fast.configs()
    cfg = yaml.safe_load(texts["h2.yaml"])
    assert cfg["liveness"] == {"enabled": True, "key_file": str(key)}
    assert all(yaml.safe_load(t)["liveness"] == cfg["liveness"] for t in texts.values())
    assert stat.S_IMODE(key.stat().st_mode) == 0o600 and len(key.read_bytes()) == 32
    lease = HaagentDriver(lab, liveness="lease")
    assert lease.config == "ttl 3s margin 1s, no liveness"
    assert yaml.safe_load(lease.configs()["h1.yaml"])["liveness"] == {"enabled": False}


def test_written_configs_parse_with_this_haagent(lab: Lab) -> None:
    variants = ["lease", "default"] + (["fast"] if systems.liveness_supported() else [])
    for name in variants:
        v = haagent_variants()[name]
        text = HaagentDriver(lab, vmac=v.vmac, liveness=v.liveness).configs()["h1.yaml"]
        parse_config(yaml.safe_load(text))


def test_detection_is_the_first_suspicion_of_that_peer_in_the_window() -> None:
    def at(s: str) -> float:
        return datetime.fromisoformat(s).timestamp()

    log = (
        "2026-12-02T17:00:00.100Z INFO haagent.agent: granted lease 1 (ttl 3s)\n"
        "2026-12-02T17:00:01.020Z WARNING haagent.liveness: suspect h2: no heartbeat for 60 ms\n"
        "2026-12-02T17:00:01.050Z WARNING haagent.liveness: suspect h1: no heartbeat for 60 ms\n"
        "2026-12-02T17:00:01.100Z INFO haagent.liveness: heard h1 again: suspicion withdrawn\n"
        "2026-12-02T17:00:01.200Z WARNING haagent.liveness: suspect h1: no heartbeat for 60 ms\n"
    )
    t0 = datetime(2026, 12, 2, 17, 0, 1, tzinfo=UTC).timestamp()
    assert haagent_detected_at(log, t0, t0 + 1, "h1") == at("2026-12-02T17:00:01.050Z")
    assert haagent_detected_at(log, t0, t0 + 1, "h2") == at("2026-12-02T17:00:01.020Z")
    assert haagent_detected_at(log, t0 + 0.1, t0 + 1, "h1") == at("2026-12-02T17:00:01.200Z")
    assert haagent_detected_at(log, t0 + 0.3, t0 + 1, "h1") is None
    assert haagent_detected_at("", t0, t0 + 1, "h1") is None


# --------------------------------------------------------------------------- targets


def _row(name: str, mode: str, fam: str, p95: float | None, **kw: Any) -> dict[str, Any]:
    stay = MODES[mode].expect == "stay"
    row = {
        "name": name,
        "system": name.split()[0],
        "mode": mode,
        "family": fam,
        "trials": 3,
        "expect": "stay" if stay else "move",
        "stayed": 3 if stay else 0,
        "as_expected": 3,
        "failed_over": 0 if stay else 3,
        "gap_p95_ms": p95,
        "gap_censored": 0,
        "double_holder_trials": 0,
        "double_answer_trials": 0,
    }
    return {**row, **kw}


def _met(results: list[dict[str, Any]], name: str, target: str) -> tuple[bool | None, str]:
    r = next(r for r in results if r["name"] == name and r["target"].startswith(target))
    return r["met"], r["measured"]


def test_targets_are_judged_per_system_over_both_families() -> None:
    fast, ka = "haagent fast", "keepalived 0.1s"
    rows = [
        _row(fast, "sigkill+cut", "v4", 150.0),
        _row(fast, "sigkill+cut", "v6", 190.0),
        _row(fast, "sigterm", "v4", 15.0),
        _row(fast, "sigterm", "v6", 25.0),  # one family over: not met
        _row(fast, "peers-cut", "v4", 5.0),
        _row(fast, "peers-cut-out", "v4", 10.0, stayed=2, as_expected=2),  # one clean move
        _row(ka, "sigkill+cut", "v4", 290.0, double_holder_trials=3),
        _row(ka, "peers-cut", "v4", 7.0, stayed=0, as_expected=0, double_holder_trials=3),
        _row(ka, "sigstop", "v4", 6.0, as_expected=2),  # a trial without failover
    ]
    results = evaluate_targets(rows)
    assert len(results) == 2 * len(TARGETS)
    assert _met(results, fast, "host death") == (True, "v4 150 / v6 190")
    assert _met(results, fast, "graceful")[0] is False
    assert _met(results, fast, "link cut") == (None, "not run")
    met, text = _met(results, fast, "VIP stays")
    assert met is True and "break-before-make" in text  # within sigterm's p95 (25 ms)
    assert _met(results, fast, "zero double") == (True, "0 in 4 modes")
    assert _met(results, ka, "host death") == (False, "v4 290; 3 trial(s) with two holders")
    met, text = _met(results, ka, "VIP stays")
    assert met is False and "3 with two holders" in text
    met, text = _met(results, ka, "agent frozen")
    assert met is False and "without failover" in text
    met, text = _met(results, ka, "zero double")
    assert met is False and text == "6 trial(s): peers-cut, sigkill+cut"
    md = targets_markdown(results)
    assert md.splitlines()[0] == f"| target | {fast} | {ka} |"
    assert "**no: " in md and len(md.splitlines()) == 2 + len(TARGETS)


# --------------------------------------------------------------------------- timeline


def _trial(name: str, mode: str = "sigkill+cut", **kw: Any) -> dict[str, Any]:
    t = {
        "name": name,
        "system": name.split()[0],
        "config": "c",
        "mode": mode,
        "family": 4,
        "target": "h1",
        "bound_ms": 120.0,
        "detected_ms": 90.0,
        "probes": [[-10.0, 0.2, "h1"], [-5.0, 0.2, "h1"], [0.0, None, None], [125.0, 0.3, "h2"]],
        "result": {"to_new_ms": 125.3, "gap_ms": 130.0},
    }
    return {**t, **kw}


def test_the_host_death_timeline_marks_every_step_from_the_kill() -> None:
    marks = timeline_marks(_trial("haagent fast"))
    assert marks == {
        "last_old": pytest.approx(-4.8),
        "detected": 90.0,
        "bound": 120.0,
        "first_new": 125.3,
    }
    # keepalived logs whole seconds: its detection is its bind.
    assert timeline_marks(_trial("keepalived 0.1s", detected_ms=None))["detected"] == 120.0
    trials = [
        _trial("haagent lease"),
        _trial("haagent fast"),
        _trial("keepalived 1s"),
        _trial("keepalived 0.1s"),
        _trial("keepalived 0.1s", mode="sigkill"),
    ]
    assert [n for n, _ in timeline_rows(trials)] == ["haagent fast", "keepalived 0.1s"]
    assert [n for n, _ in timeline_rows(trials[:1])] == ["haagent lease"]
    legacy = {"system": "keepalived", "config": "advert_int 0.1s"}
    assert trial_name(legacy) == "keepalived 0.1s"

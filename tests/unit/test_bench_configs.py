"""The benchmark's configuration rendering and log reading (bench/systems.py, bench/modes.py),
and its pure placement figures (bench/observe.py, bench/run.py's move/SIGTERM ratios).

No lab, no daemons: a Lab object is only a workdir and addresses until ``up()``.
"""

from __future__ import annotations

import base64
import json
import subprocess
from datetime import UTC, datetime
from ipaddress import ip_address
from pathlib import Path
from typing import Any, cast

import pytest

from bench.modes import MODES
from bench.observe import (
    Snapshot,
    arrivals,
    changed_holders,
    expected_holders,
    misplaced,
    spread,
    view_from_range,
)
from bench.run import FAMILIES, Plan, Runner, handover_ratios, parse_args, ratios_markdown
from bench.scale import Settled, why_unsettled
from bench.systems import (
    CHECK_FALL,
    CHECK_RISE,
    HAAGENT_CHECK_INTERVAL,
    HAAGENT_HOLD_DOWN,
    KEEPALIVED_SCRIPT_INTERVAL,
    VRID4,
    VRID6,
    Driver,
    HaagentDriver,
    KeepalivedDriver,
    Timing,
    fail_flag,
    haagent_extra,
    haagent_healthy,
    haagent_held_down_until,
    haagent_ready,
    keepalived_states,
)
from haagent.cluster.schema import HEALTHY, Holder, Keys, MemberRecord, Request
from haagent.config import ExecCheckConfig, parse_config
from haagent.decide import rank
from haagent.lab.history import AddressEvent
from haagent.lab.probe import ProbeRecord
from haagent.lab.topology import Lab

VIPS = [("web4", "198.51.100.200"), ("web6", "2001:db8:100::200")]


@pytest.fixture
def lab(tmp_path: Path) -> Lab:
    return Lab(hosts=3, workdir=tmp_path)


def _agent_config(lab: Lab, *, vmac: bool) -> dict[str, object]:
    host = lab.host("h1")
    return {
        "cluster": "bench",
        "node": host.role,
        "etcd": {"endpoints": ["http://127.0.0.1:2379"], "timeout": 0.5},
        **haagent_extra(VIPS, host.ifname, fail_flag(lab, host), vmac=vmac),
    }


@pytest.mark.parametrize("vmac", [False, True])
def test_haagent_config_has_the_flag_check_on_every_vip(lab: Lab, vmac: bool) -> None:
    cfg = parse_config(_agent_config(lab, vmac=vmac))
    (check,) = cfg.checks.values()
    assert isinstance(check, ExecCheckConfig)
    assert check.command == ("/usr/bin/test", "!", "-e", str(lab.workdir / "h1.fail"))
    assert (check.interval, check.rise, check.fall) == (HAAGENT_CHECK_INTERVAL, 2, 2)
    assert check.timeout <= check.interval
    assert [v.checks for v in cfg.vips] == [("flagfile",), ("flagfile",)]
    assert [v.vmac for v in cfg.vips] == [vmac, vmac]
    assert [v.hold_down for v in cfg.vips] == [HAAGENT_HOLD_DOWN, HAAGENT_HOLD_DOWN]
    if vmac:
        assert [v.vrid for v in cfg.vips] == [VRID4, VRID6]


def test_the_flag_check_passes_only_while_the_file_is_absent(lab: Lab) -> None:
    cfg = parse_config(_agent_config(lab, vmac=False))
    (check,) = cfg.checks.values()
    assert isinstance(check, ExecCheckConfig)
    flag = fail_flag(lab, lab.host("h1"))
    assert subprocess.run(check.command, check=False).returncode == 0
    flag.touch()
    assert subprocess.run(check.command, check=False).returncode != 0


def test_haagent_driver_labels_and_writes_both_configurations(lab: Lab) -> None:
    assert HaagentDriver(lab).config == "ttl 3s margin 1s"  # bench/plot.py's row
    vmac = HaagentDriver(lab, vmac=True)
    assert vmac.config.endswith(" vmac")
    texts = vmac.configs()
    assert sorted(texts) == ["h1.yaml", "h2.yaml", "h3.yaml"]
    assert "vmac: true" in texts["h2.yaml"]
    assert "h2.fail" in texts["h2.yaml"]


def test_haagent_healthy_reads_the_latest_run_only() -> None:
    first = (
        "x INFO haagent.agent: haagent 0.1.0 starting: cluster c, node h1\n"
        "x INFO haagent.agent: granted lease 1 (ttl 3s)\n"
        "x INFO haagent.agent: vip web4 healthy on this node: check flagfile passed (2/2)\n"
        "x INFO haagent.agent: vip web6 healthy on this node: check flagfile passed (2/2)\n"
    )
    assert haagent_healthy(first, ["web4", "web6"])
    failing = first + "x WARNING haagent.agent: vip web6 unhealthy on this node: failed (2/2)\n"
    assert not haagent_healthy(failing, ["web4", "web6"])
    assert haagent_healthy(failing, ["web4"])
    restarted = first + "x INFO haagent.agent: haagent 0.1.0 starting: cluster c, node h1\n"
    assert not haagent_healthy(restarted, ["web4", "web6"])  # not risen yet in this run
    assert not haagent_healthy("", ["web4"])


def test_hold_down_runs_from_the_last_release_for_a_failing_check() -> None:
    start = "2026-11-23T10:45:55.728Z INFO haagent.agent: haagent 0.1.0 starting: cluster c\n"
    shutdown = (
        "2026-11-23T10:45:57.000Z INFO haagent.agent: released vip web4 "
        "(198.51.100.200/32 on eth0): shutdown\n"
    )
    assert haagent_held_down_until(start + shutdown, 5.0) == 0.0
    failed = (
        "2026-11-23T10:45:58.131Z INFO haagent.agent: released vip web4 "
        "(198.51.100.200/32 on eth0): check flagfile failed: exit status 1 (2/2)\n"
        "2026-11-23T10:45:58.145Z INFO haagent.agent: released vip web6 "
        "(2001:db8:100::200/128 on eth0): check flagfile failed: exit status 1 (2/2)\n"
    )
    expected = datetime(2026, 11, 23, 10, 45, 58, 145000, tzinfo=UTC).timestamp() + 5.0
    assert haagent_held_down_until(start + failed + shutdown, 5.0) == pytest.approx(expected)
    assert haagent_held_down_until(start + failed + start, 5.0) == 0.0  # a new run: no hold


def test_keepalived_config_tracks_the_flag_script_in_every_instance(lab: Lab) -> None:
    text = KeepalivedDriver(lab, advert_int=1.0, vmac=False).render(lab.host("h2"))
    script = text[text.index("vrrp_script flagfile {") :]
    script = script[: script.index("}")]
    assert f'script "/usr/bin/test ! -e {lab.workdir / "h2.fail"}"' in script
    assert f"interval {KEEPALIVED_SCRIPT_INTERVAL}\n" in script
    assert f"fall {CHECK_FALL}\n" in script and f"rise {CHECK_RISE}\n" in script
    assert "weight 0\n" in script  # failing means FAULT, not a lower priority
    assert text.count("track_script {\n        flagfile\n    }") == 2  # v4 and v6
    assert "enable_script_security" in text


def test_keepalived_states_reads_the_latest_run_only() -> None:
    log = (
        "t: Starting Keepalived v2.2.7 (01/16,2022)\n"
        "t: (v4) Entering BACKUP STATE (init)\n"
        "t: (v6) Entering BACKUP STATE (init)\n"
        "t: (v4) Entering MASTER STATE\n"
        "t: VRRP_Script(flagfile) failed (exited with status 1)\n"
        "t: (v4) Entering FAULT STATE\n"
        "t: (v6) Entering FAULT STATE\n"
    )
    assert keepalived_states(log) == {"v4": "FAULT", "v6": "FAULT"}
    log += "t: (v4) Entering BACKUP STATE\n"
    assert keepalived_states(log) == {"v4": "BACKUP", "v6": "FAULT"}
    log += "t: Starting Keepalived v2.2.7 (01/16,2022)\n"
    assert keepalived_states(log) == {}


def test_health_mode_waits_for_the_check_and_does_not_ask_for_a_rejoin() -> None:
    timing = Timing(graceful=1.0, hard=2.0, health=3.0)
    health = MODES["health"]
    assert health.systems == {"haagent", "keepalived"}
    assert (health.wait(timing), health.rejoin) == (3.0, False)
    assert MODES["sigterm"].wait(timing) == 1.0 and MODES["sigkill"].wait(timing) == 2.0
    # Every mode that takes the holder out of the cluster has it rejoin; the ones that leave
    # it a member (a failing check, a move, a partition the VIP must stay through) do not.
    stays = {name for name, m in MODES.items() if m.expect == "stay"}
    assert all(m.rejoin for name, m in MODES.items() if name not in {"health", "move"} | stays)
    assert not any(MODES[name].rejoin for name in stays)


def test_health_windows_cover_detection_with_room_to_spare(lab: Lab) -> None:
    drivers: list[tuple[Driver, float]] = [
        (HaagentDriver(lab), HAAGENT_CHECK_INTERVAL),
        (KeepalivedDriver(lab, advert_int=1.0, vmac=False), KEEPALIVED_SCRIPT_INTERVAL),
    ]
    for driver, interval in drivers:  # each system with its check's polling interval
        timing = driver.timing()
        assert timing.health >= timing.graceful + CHECK_FALL * interval + interval


def test_variant_selection() -> None:
    args = parse_args([])
    # One run: fast failover on and off, keepalived at its default advert and tuned.
    assert (args.haagent, args.keepalived) == ("fast,lease", "default,tuned")
    quick = parse_args(["--quick"])
    assert (quick.haagent, quick.keepalived, quick.trials) == ("fast,lease", "default,tuned", 3)
    assert parse_args(["--quick", "--haagent", "vmac"]).haagent == "vmac"
    assert parse_args(["--keepalived", "default-vmac,tuned-vmac"]).keepalived.count("vmac") == 2
    with pytest.raises(SystemExit):
        parse_args(["--haagent", "nope"])


# --------------------------------------------------------------------------- placement


def test_haagent_bench_config_places_without_preemption(lab: Lab) -> None:
    """keepalived's nopreempt, for haagent: a restored host must not take its VIPs back in
    the middle of the next trial (docs/benchmarks.md, "Configurations")."""
    cfg = parse_config(_agent_config(lab, vmac=False))
    assert cfg.placement.preempt is False
    assert [v.preempt for v in cfg.vips] == [False, False]
    assert cfg.placement.startup_wait == 2.0  # the default, written out


def test_move_mode_is_a_graceful_handover_of_haagent_without_a_rejoin() -> None:
    move = MODES["move"]
    assert move.systems == {"haagent"}
    assert (move.window, move.rejoin) == ("graceful", False)
    assert move.prepare is not None
    order = list(MODES)
    assert order.index("move") == order.index("sigterm") + 1  # compared with it, run after it
    assert parse_args(["--modes", "move,sigterm"]).modes == "move,sigterm"


def test_a_restarted_agent_is_ready_only_after_its_start_up_wait(lab: Lab) -> None:
    start = "x INFO haagent.agent: haagent 0.1.0 starting: cluster c, node h1\n"
    ready = "x INFO haagent.agent: start-up wait over: campaigning by rank\n"
    assert haagent_ready(start + ready)
    assert not haagent_ready(start + ready + start)  # restarted: waiting again
    assert not haagent_ready("")

    class Running:
        def poll(self) -> None:
            return None

    driver = HaagentDriver(lab)
    driver.procs["h1"] = cast(subprocess.Popen[bytes], Running())
    host = lab.host("h1")
    risen = (
        "x INFO haagent.agent: granted lease 1 (ttl 3s)\n"
        "x INFO haagent.agent: vip web4 healthy on this node: check flagfile passed (2/2)\n"
        "x INFO haagent.agent: vip web6 healthy on this node: check flagfile passed (2/2)\n"
    )
    lab.agent_log_path(host).write_text(start + risen)
    assert not driver.recovered(host, 0)  # a lease and healthy, but still starting up
    lab.agent_log_path(host).write_text(start + risen + ready)
    assert driver.recovered(host, 0)


CLUSTER = "hxabcde"


def _kv(
    key: str, value: bytes, *, lease: int = 0, created: int = 5, mod: int = 5
) -> dict[str, Any]:
    return {
        "key": base64.b64encode(key.encode()).decode(),
        "value": base64.b64encode(value).decode(),
        "lease": lease,
        "create_revision": created,
        "mod_revision": mod,
    }


def _member(node: str, vips: list[str], *, lease: int, ready: bool = True) -> MemberRecord:
    health = {v: HEALTHY for v in vips}
    return MemberRecord(node, None, "0", 0.0, "d", lease, tuple(vips), health=health, ready=ready)


def _range(
    nodes: list[str], vips: list[str], held: dict[str, str], **extra: bytes
) -> dict[str, Any]:
    keys = Keys(CLUSTER)
    kvs = [
        _kv(keys.member(n), _member(n, vips, lease=i + 1).to_json(), lease=i + 1)
        for i, n in enumerate(nodes)
    ]
    kvs += [
        _kv(keys.holder(v), Holder(h, nodes.index(h) + 1).to_json(), lease=nodes.index(h) + 1)
        for v, h in held.items()
    ]
    kvs += [_kv(keys.request(v), raw, mod=9) for v, raw in extra.items()]
    kvs.append(_kv("/haagent/v1/other/members/h1", b"{}"))  # another cluster: left out
    return {"header": {"revision": 12}, "kvs": kvs}


def test_the_view_from_a_range_read_ranks_as_the_agents_do() -> None:
    nodes, vips = ["h1", "h2", "h3"], ["web4", "web6"]
    first = expected_holders(view_from_range(CLUSTER, _range(nodes, vips, {})), vips)
    held = {v: next(n for n in nodes if n != first[v]) for v in vips}  # each on a wrong host
    view = view_from_range(CLUSTER, _range(nodes, vips, held))
    assert view.revision == 12 and sorted(view.members) == nodes
    assert {v: h.node for v, h in view.holders.items()} == held
    assert view.holders["web4"].lease == nodes.index(held["web4"]) + 1
    assert first == {v: rank.candidates(view, v)[0] for v in vips}
    assert misplaced(view, vips) == {v: (held[v], first[v]) for v in vips}
    on_place = view_from_range(CLUSTER, _range(nodes, vips, first))
    assert misplaced(on_place, vips) == {}


def test_a_move_request_ranks_its_target_first() -> None:
    nodes, vips = ["h1", "h2", "h3"], ["web4"]
    first = expected_holders(view_from_range(CLUSTER, _range(nodes, vips, {})), vips)["web4"]
    to = next(n for n in nodes if n != first)
    req = Request("move", to=to, by="bench@h1", at=1.0).to_json()
    view = view_from_range(CLUSTER, _range(nodes, vips, {"web4": first}, web4=req))
    assert view.requests["web4"].to == to and view.requests["web4"].revision == 9
    assert misplaced(view, vips) == {"web4": (first, to)}
    junk = view_from_range(CLUSTER, _range(nodes, vips, {"web4": first}, web4=b"{nope"))
    assert junk.requests == {} and misplaced(junk, vips) == {}


def test_spread_counts_every_host_and_the_worst_deviation_from_even() -> None:
    sp = spread({"h1": 3, "h2": 1}, ["h1", "h2", "h3"])
    assert sp["per_host"] == {"h1": 3, "h2": 1, "h3": 0}
    assert (sp["even"], sp["min"], sp["max"]) == (1.33, 0, 3)
    assert sp["max_dev_pct"] == 125.0  # h1: 3 against 4/3
    assert spread({"h1": 2, "h2": 2}, ["h1", "h2"])["max_dev_pct"] == 0.0
    assert spread({}, ["h1"])["max_dev_pct"] == 0.0


def test_changed_holders_only_counts_vips_held_in_both() -> None:
    before = {"a": "h1", "b": "h2", "c": "h3"}
    after = {"a": "h2", "b": "h2"}  # c not held (yet)
    assert changed_holders(before, after) == {"a": ("h1", "h2")}


def _row(config: str, mode: str, fam: str, gap: float, p95: float) -> dict[str, Any]:
    return {
        "system": "haagent",
        "config": config,
        "mode": mode,
        "family": fam,
        "trials": 3,
        "failed_over": 3,
        "gap_median_ms": gap,
        "gap_p95_ms": p95,
        "to_new_median_ms": gap + 2,
        "to_new_p95_ms": p95 + 2,
        "double_holder_trials": 0,
    }


def test_move_is_reported_against_the_same_runs_sigterm() -> None:
    rows = [
        _row("ttl 3s", "sigterm", "v4", 15.0, 20.0),
        _row("ttl 3s", "move", "v4", 30.0, 25.0),
        _row("ttl 3s", "move", "v6", 10.0, 10.0),  # no sigterm for v6: no ratio
        _row("vmac", "sigterm", "v4", 20.0, 40.0),
        _row("vmac", "sigkill", "v4", 20.0, 40.0),
        {**_row("advert 1s", "sigterm", "v4", 15.0, 20.0), "system": "keepalived"},
    ]
    (r,) = handover_ratios(rows)
    assert (r["config"], r["family"], r["mode"], r["base"]) == ("ttl 3s", "v4", "move", "sigterm")
    assert (r["gap_median_ratio"], r["gap_p95_ratio"]) == (2.0, 1.25)
    assert r["to_new_median_ratio"] == round(32 / 17, 2)
    md = ratios_markdown([r])
    assert md.count("\n") == 3 and "30 / 15 = 2.00" in md and "25 / 20 = 1.25" in md
    assert ratios_markdown([]) == ""
    zero = handover_ratios([_row("c", "sigterm", "v4", 0.0, 0.0), _row("c", "move", "v4", 5, 5)])
    assert zero[0]["gap_median_ratio"] is None  # no ratio against nothing


def test_a_move_that_lands_elsewhere_than_asked_is_noted() -> None:
    ip = FAMILIES[4]
    t = 1000.0
    records = [
        ProbeRecord(i, t - 0.2 + i * 0.005, 0.0002, "h1" if i < 40 else "h3") for i in range(80)
    ]
    events = [
        AddressEvent("h1", t - 1.0, ip_address(str(ip)), True, "eth0", initial=True),
        AddressEvent("h1", t + 0.01, ip_address(str(ip)), False, "eth0"),
        AddressEvent("h3", t + 0.015, ip_address(str(ip)), True, "eth0"),
    ]
    notes = ["kept"]

    def plan(expected: str) -> Plan:
        return Plan(
            "haagent", "c", "move", 4, 1, "h1", t, t - 0.2, t + 0.2, t + 0.3, 15.0, notes, expected
        )

    judged = Runner.judge(plan("h2"), records, events)
    assert judged["result"]["new_holder"] == "h3"
    assert judged["notes"] == ["kept", "new holder h3, expected h2"]
    assert notes == ["kept"]  # the trial's list, shared by its families, is left alone
    assert Runner.judge(plan("h3"), records, events)["notes"] == ["kept"]
    assert json.dumps(judged)  # the report stays JSON


def test_arrivals_are_holder_changes_not_lifetime_refreshes() -> None:
    ip = ip_address("198.51.100.200")

    def ev(host: str, at: float, added: bool = True, **kw: Any) -> AddressEvent:
        return AddressEvent(host, at, ip, added, "eth0", **kw)

    events = [
        ev("h1", 0.0, initial=True),  # bound when the recorder started
        ev("h1", 0.6),  # a refresh (ip monitor shows the replace as an add)
        ev("h1", 1.0, False),
        ev("h2", 1.01),  # moved to h2
        ev("h2", 1.6),  # refresh
        ev("h2", 2.0, False),
        ev("h1", 2.1),  # and back
    ]
    assert [(e.host, e.at) for e in arrivals(events)] == [("h2", 1.01), ("h1", 2.1)]
    assert [e.at for e in arrivals(events, 1.5, 3.0)] == [2.1]
    vmac = [ev("h3", 3.0), AddressEvent("h3", 3.1, ip, True, "vrrp.51")]  # a second device
    assert [e.at for e in arrivals(events + vmac)][-1] == 3.0


def test_a_settle_that_timed_out_names_what_was_still_wrong() -> None:
    a, b, c = ip_address("198.51.100.101"), ip_address("198.51.100.102"), ip_address("::1")
    vips = {"a": a, "b": b, "c": c}
    kernel = {"h1": frozenset({a}), "h2": frozenset({b}), "h3": frozenset({b})}
    snap = Snapshot(0.0, kernel, {"a": "h1", "b": "h2", "c": "h1"}, 7)
    view = view_from_range(CLUSTER, _range(["h1", "h2"], ["a"], {}))
    report = Settled(snap, view, None, {"a": ("h1", "h2")}, ["h3"]).report(vips)
    assert (report["settled"], report["converged"], report["misplaced"]) == (False, False, 1)
    assert report["unconverged_vips"] == {
        "b": "bound on ['h2', 'h3'], key: h2",  # two holders
        "c": "bound on no host, key: h1",  # a key nobody binds
    }
    text = why_unsettled(report)
    assert text == "1 misplaced; 2 not held once: b, c; starting: h3"
    assert why_unsettled(None) == "-"

"""The benchmark's configuration rendering and log reading (bench/systems.py, bench/modes.py).

No lab, no daemons: a Lab object is only a workdir and addresses until ``up()``.
"""

from __future__ import annotations

import subprocess
from datetime import UTC, datetime
from pathlib import Path

import pytest

from bench.modes import MODES
from bench.run import parse_args
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
    keepalived_states,
)
from haagent.config import ExecCheckConfig, parse_config
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
    assert all(m.rejoin for name, m in MODES.items() if name != "health")


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
    assert (args.haagent, args.keepalived.split(",")[0]) == ("default,vmac", "default")
    assert parse_args(["--quick"]).haagent == "default"
    assert parse_args(["--quick", "--haagent", "vmac"]).haagent == "vmac"
    with pytest.raises(SystemExit):
        parse_args(["--haagent", "nope"])

"""The monitor runs one exec check once per interval for all its VIPs, or once per VIP with
per_vip: real monitors, real processes (``/bin/sh``), counted through the files they write."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from haagent.config import Config, parse_config
from haagent.health.monitor import HealthMonitor, VipHealthChanged

INTERVAL = 0.2


def _vips(names: list[str], checks: list[str]) -> list[dict[str, object]]:
    return [
        {
            "name": name,
            "address": f"198.18.{i // 200}.{i % 200 + 1}",
            "interface": "lo",
            "checks": checks,
        }
        for i, name in enumerate(names)
    ]


def _exec(command: str, **kw: object) -> dict[str, object]:
    return {
        "type": "exec",
        "command": command,
        "interval": INTERVAL,
        "timeout": INTERVAL,
        "rise": 1,
        "fall": 1,
        **kw,
    }


def _wait(cond: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        time.sleep(0.02)


class Sink:
    """Collects the monitor's events; the monitor calls it from its own threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.events: list[VipHealthChanged] = []

    def __call__(self, ev: object) -> None:
        assert isinstance(ev, VipHealthChanged)
        with self._lock:
            self.events.append(ev)

    def about(self, healthy: bool) -> list[VipHealthChanged]:
        with self._lock:
            return [e for e in self.events if e.healthy is healthy]


def _dump(what: str, path: str) -> str:
    """Shell text writing ``what``'s output to ``path`` whole: read while later runs go on (or
    after stop() killed one mid-write), the file is never seen empty or half written."""
    return f"{what} > {path}.$$ && mv {path}.$$ {path}"


def _env(path: Path) -> dict[str, str]:
    return dict(line.split("=", 1) for line in path.read_text().splitlines())


@pytest.fixture
def monitors() -> Iterator[Callable[[Config, Sink], HealthMonitor]]:
    """Started monitors, each stopped at the end of the test even when it fails."""
    started: list[HealthMonitor] = []

    def start(cfg: Config, sink: Sink) -> HealthMonitor:
        mon = HealthMonitor(cfg, sink)
        mon.start()
        started.append(mon)
        return mon

    yield start
    for mon in started:
        mon.stop(timeout=2.0)


NAMES = [f"v{i:03d}" for i in range(200)]


def test_200_vips_sharing_an_exec_check_run_it_once_per_interval(tmp_path, monitors):
    runs, flag = tmp_path / "runs", tmp_path / "broken"
    command = (
        _dump('echo "$HAAGENT_VIPS"', f"{tmp_path}/vips")
        # The count of HAAGENT_ variables shows whether per-VIP ones slipped into a shared run.
        + f'; echo "$HAAGENT_HOLDING|$(env | grep -c ^HAAGENT_)" >> {runs}; '
        f"test ! -e {flag}"
    )
    cfg = parse_config(
        {
            "node": "n1",
            "checks": {"shared": _exec(command), "other": _exec("true")},
            "vips": [
                *_vips(NAMES, ["shared"]),
                {"name": "lone", "address": "198.19.0.1", "interface": "lo", "checks": ["other"]},
                {"name": "plain", "address": "198.19.0.2", "interface": "lo"},
            ],
        }
    )
    sink = Sink()
    before = {t.name for t in threading.enumerate()}
    started = time.monotonic()
    mon = monitors(cfg, sink)

    _wait(lambda: len(sink.about(True)) == len(NAMES) + 2, 5, "every VIP healthy")
    assert {e.vip for e in sink.about(True)} == {*NAMES, "lone", "plain"}
    assert all(
        e.reason.startswith("check shared passed: exit status 0")
        for e in sink.about(True)
        if e.vip in NAMES
    )
    # One scheduler per check, not per VIP that uses it.
    schedulers = sorted(
        t.name
        for t in threading.enumerate()
        if t.name.startswith("haagent-check-") and t.name not in before
    )
    assert schedulers == ["haagent-check-other", "haagent-check-shared"]
    snap = mon.snapshot()
    assert snap.keys() == {"shared", "other"} and snap["shared"]["vips"] == NAMES
    assert (tmp_path / "vips").read_text().split() == NAMES

    # set_state() only stores: ten thousand calls are cheap and start nothing.
    t0 = time.monotonic()
    for i in range(10_000):
        mon.set_state(NAMES[i % len(NAMES)], "candidate")
    assert time.monotonic() - t0 < 1.0
    mon.set_state("v150", "holder")
    mon.set_state("v007", "holder")
    _wait(
        lambda: runs.read_text().splitlines()[-1] == "v007 v150|4",
        3,
        "a run listing v007 and v150 in HAAGENT_HOLDING",
    )

    # The one check flips: every VIP using it hears of it, no other VIP does.
    flag.touch()
    _wait(lambda: len(sink.about(False)) == len(NAMES), 3, "every VIP of the check failing")
    assert {e.vip for e in sink.about(False)} == set(NAMES)
    assert {e.reason for e in sink.about(False)} == {"check shared failed: exit status 1 (1/1)"}
    mon.stop(timeout=2.0)
    elapsed = time.monotonic() - started

    lines = runs.read_text().splitlines()
    # Runs start INTERVAL apart and never overlap: at most one per interval (plus the first),
    # where one run per VIP would have written 200 lines per interval.
    assert 2 <= len(lines) <= elapsed / INTERVAL + 2, (len(lines), elapsed)
    # Nobody holds anything yet; NODE, CHECK, VIPS and HOLDING only: no one VIP to describe.
    assert lines[0] == "|4"


def test_a_check_with_one_vip_keeps_the_per_vip_environment(tmp_path, monitors):
    cfg = parse_config(
        {
            "node": "n1",
            "checks": {
                "solo": _exec(_dump("env | grep ^HAAGENT_", f"{tmp_path}/solo")),
                "pair": _exec(_dump("env | grep ^HAAGENT_", f"{tmp_path}/pair")),
            },
            "vips": [
                *_vips(["db"], ["solo", "pair"]),
                {"name": "web", "address": "198.19.0.1", "interface": "lo", "checks": ["pair"]},
            ],
        }
    )
    mon = monitors(cfg, Sink())
    mon.set_state("db", "holder")
    solo, pair = tmp_path / "solo", tmp_path / "pair"
    _wait(
        lambda: solo.exists() and "HAAGENT_STATE=holder" in solo.read_text(),
        3,
        "the solo check to run with HAAGENT_STATE=holder",
    )
    _wait(
        lambda: pair.exists() and "HAAGENT_HOLDING=db\n" in pair.read_text(),
        3,
        "the pair check to run with HAAGENT_HOLDING=db",
    )
    assert _env(solo) == {
        "HAAGENT_VIP": "db",
        "HAAGENT_ADDRESS": "198.18.0.1",
        "HAAGENT_INTERFACE": "lo",
        "HAAGENT_STATE": "holder",
        "HAAGENT_NODE": "n1",
        "HAAGENT_CHECK": "solo",
        "HAAGENT_VIPS": "db",
        "HAAGENT_HOLDING": "db",
    }
    assert _env(pair) == {
        "HAAGENT_NODE": "n1",
        "HAAGENT_CHECK": "pair",
        "HAAGENT_VIPS": "db web",
        "HAAGENT_HOLDING": "db",
    }
    assert mon.snapshot().keys() == {"solo", "pair"}


def test_per_vip_runs_once_per_vip_with_that_vips_environment(tmp_path, monitors):
    # Each run dumps its environment, then appends a line to its VIP's own counter.
    command = (
        _dump("env | grep ^HAAGENT_", f"{tmp_path}/env-$HAAGENT_VIP")
        + f"; echo >> {tmp_path}/runs-$HAAGENT_VIP"
    )
    names = ["a", "b", "c"]
    cfg = parse_config(
        {"node": "n1", "checks": {"x": _exec(command, per_vip=True)}, "vips": _vips(names, ["x"])}
    )
    sink = Sink()
    started = time.monotonic()
    mon = monitors(cfg, sink)
    assert mon.snapshot().keys() == {"x@a", "x@b", "x@c"}
    assert mon.snapshot()["x@b"]["vips"] == ["b"]
    mon.set_state("b", "holder")
    env_b = tmp_path / "env-b"
    _wait(
        lambda: env_b.exists() and "HAAGENT_STATE=holder" in env_b.read_text(),
        3,
        "b's run to see HAAGENT_STATE=holder",
    )
    _wait(lambda: len(sink.about(True)) == 3, 3, "a, b and c healthy")
    mon.stop(timeout=2.0)
    elapsed = time.monotonic() - started

    assert _env(env_b) == {
        "HAAGENT_VIP": "b",
        "HAAGENT_ADDRESS": "198.18.0.2",
        "HAAGENT_INTERFACE": "lo",
        "HAAGENT_STATE": "holder",
        "HAAGENT_NODE": "n1",
        "HAAGENT_CHECK": "x",
        "HAAGENT_VIPS": "b",
        "HAAGENT_HOLDING": "b",
    }
    env_a = _env(tmp_path / "env-a")
    assert env_a["HAAGENT_VIP"] == "a" and env_a["HAAGENT_ADDRESS"] == "198.18.0.1"
    assert env_a["HAAGENT_STATE"] == "idle" and env_a["HAAGENT_HOLDING"] == ""
    for name in names:
        count = len((tmp_path / f"runs-{name}").read_text().splitlines())
        assert 1 <= count <= elapsed / INTERVAL + 2, (name, count, elapsed)


def _cfg(vips: list[dict[str, object]], checks: dict[str, object]) -> Config:
    return parse_config(
        {
            "node": "h1",
            "etcd": {"endpoints": ["http://127.0.0.1:2379"]},
            "checks": checks,
            "vips": vips,
        },
        "t.yaml",
    )


def test_reload_keeps_the_state_of_unchanged_checks_and_starts_new_ones(tmp_path, monitors):
    """SIGHUP: a VIP whose checks are defined as before is not reported again (it stays
    healthy, no trip through "unknown"); a new VIP on the same shared check is healthy at
    once; a new check starts unknown; a removed VIP's state is ignored, not an error."""
    runs = tmp_path / "runs"
    ok = _exec(f"echo x >> {runs}")
    sink = Sink()
    old = _cfg(_vips(["a", "b"], ["ok"]), {"ok": ok})
    mon = monitors(old, sink)
    _wait(lambda: len(sink.about(True)) == 2, 5, "a and b healthy")
    runs_before = runs.read_text().count("x")
    new = _cfg(
        [*_vips(["a", "c"], ["ok"]), {**_vips(["x", "y", "d"], ["slow"])[2]}],
        {"ok": ok, "slow": _exec("true", rise=3)},
    )
    mon.reload(new)
    events = [(e.vip, e.healthy) for e in sink.events]
    assert events.count(("a", True)) == 1, events  # not reported again
    assert ("c", True) in events, events  # the shared check is healthy already
    assert mon.vip_healthy("d") is None  # a new check: unknown until it rose
    _wait(lambda: ("d", True) in [(e.vip, e.healthy) for e in sink.events], 5, "d rose")
    # The shared check kept its thread: one run per interval, not a second scheduler.
    time.sleep(INTERVAL * 5)
    assert runs.read_text().count("x") - runs_before <= 8
    mon.set_state("b", "idle")  # removed by the reload: ignored

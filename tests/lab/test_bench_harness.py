"""The benchmark reports a broken system as broken, end to end.

`make bench` is only worth its numbers if a system that does not fail over is reported as
such. Here a "system" that binds both VIPs on h1 by hand and never moves them — its daemon on
each host is a `sleep` — goes through the real harness (lab, probes, address recorder,
SIGTERM trials, judgement, summary). The pure judgement has its own unit tests
(tests/unit/test_history.py). And the one mode that asks something of haagent rather than
breaking it, ``move``, goes through the same harness with real agents: the request it writes
is one the agents act on.

The partition modes too: the system that never moves is reported as *staying* where a mode
says the VIP must stay (a move there would be the failure), and haagent — fast failover off
and, once haagent has it, on — goes through a deaf standby (the VIP stays; the standby, not
the holder, is cut) and a holder cut from etcd and its peers (the VIP moves).
"""

from __future__ import annotations

import dataclasses
from functools import partial
from pathlib import Path

import pytest

from bench.modes import MODES
from bench.run import Runner, leftovers, summary_rows
from bench.systems import (
    Driver,
    HaagentDriver,
    HoldCheck,
    Liveness,
    Timing,
    liveness_supported,
)
from bench.targets import evaluate_targets
from haagent.lab.topology import Lab, Node
from tests.lab.conftest import require

pytestmark = pytest.mark.lab


class NeverFailsOver(Driver):
    system = "never"
    config = "VIPs bound on h1 by hand"

    def configs(self) -> dict[str, str]:
        return {}

    def start(self, host: Node) -> None:
        log = self.lab.workdir / f"{host.role}.sleep.log"
        self.procs[host.role] = self.lab.popen(host, ["sleep", "600"], log=log)

    def start_all(self, holds: HoldCheck) -> None:
        first = self.lab.hosts[0]
        self.lab.add_address(first, Lab.vip4(0))
        self.lab.add_address(first, Lab.vip6(0))
        for host in self.lab.hosts:
            self.start(host)
        holds.wait_holds(first, 10.0)

    def timing(self) -> Timing:
        return Timing(graceful=1.0, hard=1.0, health=1.0)

    def after_restore(self, host: Node) -> None:
        return None


def test_a_system_that_never_fails_over_is_reported_as_such(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    require("ip", "etcd", "etcdctl", "nft")
    sigterm = MODES["sigterm"]
    monkeypatch.setitem(
        MODES, "sigterm", dataclasses.replace(sigterm, systems=sigterm.systems | {"never"})
    )
    runner = Runner(trials=2, run_dir=tmp_path, modes=["sigterm"])
    run = runner.run_config(NeverFailsOver, "never")
    assert run.error is None, run.error
    assert leftovers(runner.lab_ids, tmp_path) == []
    rows = summary_rows([run])
    assert sorted(r["family"] for r in rows) == ["v4", "v6"]
    for r in rows:
        assert (r["trials"], r["unstable_start"]) == (2, 0), r
        assert r["failed_over"] == 0, r  # nobody else ever answered
        assert r["to_new_median_ms"] is None, r
        assert r["double_holder_trials"] == 0, r
    for trial in run.trials:
        assert trial["bound_ms"] is None  # no other host bound the VIP
        assert trial["result"]["new_holder"] is None
        assert all(by == "h1" for _ms, _rtt, by in trial["probes"] if by is not None)


def test_a_move_request_hands_the_vip_to_the_host_ranked_next(tmp_path: Path) -> None:
    require("ip", "etcd", "etcdctl", "nft")
    runner = Runner(trials=1, run_dir=tmp_path, modes=["move"])
    run = runner.run_config(HaagentDriver, "haagent")
    assert run.error is None, run.error
    assert leftovers(runner.lab_ids, tmp_path) == []
    rows = summary_rows([run])
    assert sorted(r["family"] for r in rows) == ["v4", "v6"]  # h1 held both: one trial
    for r in rows:
        assert (r["trials"], r["failed_over"], r["unstable_start"]) == (1, 1, 0), r
        assert (r["double_holder_trials"], r["double_answer_trials"]) == (0, 0), r
        assert r["noted_trials"] == 0, r  # no note: the VIP went where it was sent
    for trial in run.trials:
        assert trial["target"] == "h1"
        assert trial["expected_holder"] not in (None, "h1")
        assert trial["result"]["new_holder"] == trial["expected_holder"]


def test_a_vip_that_must_stay_and_stays_is_reported_as_staying(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    require("ip", "etcd", "etcdctl", "nft")
    names = ["peers-cut-out", "standby-deaf"]
    for name in names:
        m = MODES[name]
        monkeypatch.setitem(MODES, name, dataclasses.replace(m, systems=m.systems | {"never"}))
    runner = Runner(trials=1, run_dir=tmp_path, modes=names)
    run = runner.run_config(NeverFailsOver, "never")
    assert run.error is None, run.error
    assert leftovers(runner.lab_ids, tmp_path) == []
    rows = summary_rows([run])
    assert sorted((r["mode"], r["family"]) for r in rows) == [
        (m, f) for m in names for f in ("v4", "v6")
    ]
    for r in rows:
        assert (r["expect"], r["trials"], r["stayed"], r["as_expected"]) == ("stay", 1, 1, 1), r
        assert (r["failed_over"], r["double_holder_trials"]) == (0, 0), r
    for trial in run.trials:
        assert trial["outcome"] == "stayed" and trial["target"] == "h1"
        # peers-cut-out is done to the holder, standby-deaf to another host.
        assert (trial["disturbed"] == "h1") == (trial["mode"] == "peers-cut-out"), trial
    (stays,) = [t for t in evaluate_targets(rows) if t["target"].startswith("VIP stays")]
    assert stays["met"] is True, stays


@pytest.mark.parametrize("liveness", ["lease", "fast"])
def test_haagent_through_a_deaf_standby_and_a_holder_cut_from_etcd_and_peers(
    tmp_path: Path, liveness: Liveness
) -> None:
    require("ip", "etcd", "etcdctl", "nft")
    if liveness == "fast" and not liveness_supported():
        pytest.skip("this haagent has no liveness section (fast failover) yet")
    runner = Runner(trials=1, run_dir=tmp_path, modes=["standby-deaf", "etcd+peers-cut"])
    run = runner.run_config(partial(HaagentDriver, liveness=liveness), f"haagent-{liveness}")
    assert run.error is None, run.error
    assert run.name == f"haagent {liveness}"
    assert leftovers(runner.lab_ids, tmp_path) == []
    rows = summary_rows([run])
    assert {r["mode"] for r in rows} == {"standby-deaf", "etcd+peers-cut"}
    for r in rows:
        assert r["trials"] == 1 and r["unstable_start"] == 0, r
        assert (r["double_holder_trials"], r["double_answer_trials"]) == (0, 0), r
        if r["mode"] == "etcd+peers-cut":
            assert (r["expect"], r["failed_over"]) == ("move", 1), r
        elif liveness == "lease":
            assert (r["expect"], r["stayed"]) == ("stay", 1), r  # nothing listens to peers
    for trial in run.trials:
        if trial["mode"] == "standby-deaf":
            assert trial["disturbed"] not in ("", trial["target"]), trial
        else:
            assert trial["disturbed"] == trial["target"]

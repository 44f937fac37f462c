"""``make bench``: haagent and keepalived, same lab, same client, same failures.

For each system configuration the benchmark builds a fresh lab (3 hosts, a responder on
each, one etcd, a client), records every address change on every host
(``ip -ts monitor address``), probes an IPv4 and an IPv6 VIP from the client every 5 ms for
the whole run, and then, per failure mode, repeatedly: waits until exactly one host holds each
VIP and nothing changed for a moment, injects the failure on the holder, waits until another
host binds the VIP (or a time limit), lets the client settle, undoes the failure, waits
until the cluster is whole again. Every trial is judged afterwards from the probe records
and the address history (bench/evaluate.py). A mode that must leave the VIP where it is (a
partition of the holder from its peers only, a deaf standby: ``Mode.expect == "stay"``)
waits the same time limit and is reported as "stayed" or "moved".

Results: ``bench-results/bench-<stamp>.json`` (every trial, every probe in its window, the
configs, the machine) and a table on stdout; ``bench-results/bench-<stamp>.png`` with one
failover per system. See docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from functools import partial
from ipaddress import IPv4Address, IPv6Address
from pathlib import Path
from types import FrameType
from typing import Any

from rich.console import Console
from rich.table import Table

from bench.evaluate import TrialResult, evaluate_trial, summarize_trials
from bench.modes import MODES, Mode
from bench.systems import (
    Driver,
    HaagentDriver,
    HoldCheck,
    KeepalivedDriver,
    fail_flag,
    haagent_variants,
    keepalived_variants,
    liveness_supported,
    wait_for,
)
from bench.targets import evaluate_targets, targets_markdown, targets_table
from haagent.lab import partition
from haagent.lab.history import (
    AddressEvent,
    Recorder,
    check_history,
    holding_intervals,
    start_address_recorder,
)
from haagent.lab.probe import ProbeRecord, read_records, started_marker
from haagent.lab.topology import Lab, LabError, Node, find_leftovers, list_netns

PROBE_INTERVAL = 0.005
PRE = 0.15  # s of steady answers in every trial window before the failure
SETTLE = 0.4  # s the client keeps probing after the new holder bound the VIP
QUIET = 0.1  # s without a holder change before a trial starts
# s between the end of a trial's window and undoing the failure: a probe stamped just before
# the end may leave the client a little later and must not meet the restore's effects.
RESTORE_GUARD = 0.05
REACH_TIMEOUT = 15.0  # s the client may need to reach the holder again after a restore
STEADY_TIMEOUT = 30.0
RECOVER_TIMEOUT = 20.0
PROBE_DURATION = 3000.0  # the probe runs for a whole configuration; stopped by SIGTERM
FAMILIES: dict[int, IPv4Address | IPv6Address] = {4: Lab.vip4(0), 6: Lab.vip6(0)}
DEFAULT_TRIALS = 10
QUICK_TRIALS = 3
# The systems of one run unless told otherwise, --quick too: haagent with fast failover on
# and off, keepalived at its default advert interval and tuned (the vmac variants on request).
DEFAULT_HAAGENT = "fast,lease"
DEFAULT_KEEPALIVED = "default,tuned"

# Wide enough for the table even when stdout is a pipe or a make log.
console = Console(width=None if sys.stdout.isatty() else 170)


class BenchError(RuntimeError):
    pass


@dataclass
class Plan:
    """One trial as run; judged later, once the probe records exist."""

    system: str
    config: str
    mode: str
    family: int
    index: int
    target: str
    t_fail: float
    since: float
    until: float
    steady_at: float
    bound_ms: float | None  # first bind of the VIP on another host, from ip monitor
    notes: list[str] = field(default_factory=list)
    expected_holder: str | None = None  # where the mode sends the VIP (move), if it knows
    restore_s: float = 0.0  # until -> the disturbed host is back in the cluster
    steady_s: float = 0.0  # -> one holder per VIP, no change for QUIET
    client_back_s: float = 0.0  # -> the client gets answers from that holder again
    name: str = ""  # the system's name in results ("haagent fast"); system + config if ""
    expect: str = "move"  # Mode.expect
    disturbed: str = ""  # the host the failure was done to (target, or a standby)
    detected_ms: float | None = None  # another host said it noticed (Driver.detected_at)


@dataclass
class ConfigRun:
    system: str
    config: str
    lab_id: str
    configs: dict[str, str]
    modes: list[str]
    name: str = ""
    plans: list[Plan] = field(default_factory=list)
    trials: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None
    seconds: float = 0.0


# --------------------------------------------------------------------------- helpers


def driver_name(driver: Driver) -> str:
    """How results and pictures name a system configuration: ``Driver.name`` ("haagent
    fast", "keepalived 0.1s"), or system and config for a driver without one."""
    return driver.name or f"{driver.system} {driver.config}"


def holders_now(
    events: Sequence[AddressEvent], ip: IPv4Address | IPv6Address, since: float
) -> tuple[set[str], float]:
    """Hosts holding ``ip`` at the end of the events, and the time of the last change."""
    horizon = time.time() + 3600.0
    ivs = holding_intervals(events, ip, horizon, since=since)
    holders = {h for h, spans in ivs.items() if spans and spans[-1][1] == horizon}
    changes = [t for spans in ivs.values() for s, e in spans for t in (s, e) if t != horizon]
    return holders, max(changes, default=since)


class _Holds(HoldCheck):
    def __init__(self, recorder: Recorder) -> None:
        self.recorder = recorder

    def wait_holds(self, host: Node, timeout: float) -> None:
        def holds() -> bool:
            events = self.recorder.poll()
            since = self.recorder.started_at
            return all(host.role in holders_now(events, ip, since)[0] for ip in FAMILIES.values())

        if not wait_for(holds, timeout):
            raise BenchError(f"{host.role} does not hold every VIP after {timeout:g}s")


def _compact_probes(records: Sequence[ProbeRecord], t0: float) -> list[list[Any]]:
    """[ms since the failure, rtt ms or null, responder or null] per probe."""
    return [
        [
            round((r.sent - t0) * 1000.0, 3),
            None if r.rtt is None else round(r.rtt * 1000.0, 3),
            r.by,
        ]
        for r in records
    ]


# --------------------------------------------------------------------------- one config


class Runner:
    def __init__(self, trials: int, run_dir: Path, modes: Sequence[str]) -> None:
        self.trials = trials
        self.run_dir = run_dir
        self.mode_names = list(modes)
        self.runs: list[ConfigRun] = []  # filled as we go, so an interrupt keeps what ran

    @property
    def lab_ids(self) -> list[str]:
        """The labs this runner built (for leftovers())."""
        return [run.lab_id for run in self.runs]

    def run_config(self, make: Callable[[Lab], Driver], slug: str) -> ConfigRun:
        started = time.monotonic()
        workdir = self.run_dir / slug
        lab = Lab(hosts=3, workdir=workdir)
        driver = make(lab)
        modes = [MODES[m] for m in self.mode_names if driver.system in MODES[m].systems]
        name = driver_name(driver)
        run = ConfigRun(
            driver.system, driver.config, lab.lab_id, {}, [m.name for m in modes], name=name
        )
        self.runs.append(run)
        console.rule(f"{name}: {driver.config}  (lab {lab.lab_id})")
        recorder: Recorder | None = None
        probes: dict[int, tuple[Path, subprocess.Popen[bytes]]] = {}
        try:
            lab.up()
            for host in lab.hosts:
                lab.start_responder(host)
            recorder = start_address_recorder(lab, lab.hosts, tag="bench")
            run.configs = driver.prepare()
            driver.start_all(_Holds(recorder))
            for fam, ip in FAMILIES.items():
                out = workdir / f"probe-v{fam}.jsonl"
                proc = lab.start_probe(ip, out, interval=PROBE_INTERVAL, duration=PROBE_DURATION)
                probes[fam] = (out, proc)
            for out, _proc in probes.values():
                if not wait_for(started_marker(out).exists, 15.0):
                    raise BenchError(f"probe {out.name} did not start")
            console.print(f"  [dim]lab and cluster up in {time.monotonic() - started:.1f} s[/dim]")
            for mode in modes:
                self.run_mode(lab, driver, recorder, mode, run)
        except (
            BenchError,
            LabError,
            TimeoutError,
            ValueError,
            subprocess.SubprocessError,
            OSError,
        ) as exc:
            run.error = f"{type(exc).__name__}: {exc}"
            gone = sorted(set(lab.namespaces) - set(list_netns()))
            if gone and lab.lab_id in str(exc):
                run.error += (
                    f" (namespaces {', '.join(gone)} were removed from outside the bench:"
                    " `haagent lab down --all` or `make lab-clean` run meanwhile?)"
                )
            console.print(f"[red]aborted {name}: {run.error}[/red]")
        finally:
            with interrupts_deferred():
                self._teardown(lab, driver, recorder, probes, run, workdir)
                run.seconds = time.monotonic() - started
        return run

    def _teardown(
        self,
        lab: Lab,
        driver: Driver,
        recorder: Recorder | None,
        probes: dict[int, tuple[Path, subprocess.Popen[bytes]]],
        run: ConfigRun,
        workdir: Path,
    ) -> None:
        records: dict[int, list[ProbeRecord]] = {}
        events: list[AddressEvent] = []
        try:
            for fam, (out, proc) in probes.items():
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(20.0)
                    records[fam] = read_records(out)
                except (subprocess.TimeoutExpired, OSError, ValueError) as exc:
                    run.error = (run.error or "") + f"; probe v{fam}: {exc}"
            if recorder is not None:
                events = recorder.stop()
            with contextlib.suppress(Exception):
                driver.stop_all()
        finally:
            lab.down()
            self._tidy(lab, workdir)
        run.trials = [self.judge(p, records.get(p.family, []), events) for p in run.plans]

    def wait_steady(self, driver: Driver, recorder: Recorder) -> dict[int, str]:
        """Exactly one holder per VIP, every daemon alive, and no holder change for QUIET
        seconds."""
        deadline = time.monotonic() + STEADY_TIMEOUT
        while True:
            events = recorder.poll()
            now = time.time()
            got: dict[int, str] = {}
            quiet = True
            why = ""
            for fam, ip in FAMILIES.items():
                holders, changed = holders_now(events, ip, recorder.started_at)
                if len(holders) == 1:
                    got[fam] = next(iter(holders))
                else:
                    why = f"v{fam} held by {sorted(holders) or 'nobody'}"
                quiet = quiet and now - changed >= QUIET
            dead = [h.role for h in driver.hosts if not driver.alive(h)]
            if len(got) == len(FAMILIES) and quiet and not dead:
                return got
            if time.monotonic() >= deadline:
                raise BenchError(
                    f"cluster not steady after {STEADY_TIMEOUT:g}s: {why or 'changing'}"
                    + (f", dead daemons on {dead}" if dead else "")
                )
            time.sleep(0.02)

    def run_mode(
        self, lab: Lab, driver: Driver, recorder: Recorder, mode: Mode, run: ConfigRun
    ) -> None:
        counts = dict.fromkeys(FAMILIES, 0)
        window = mode.wait(driver.timing())
        holders = self.wait_steady(driver, recorder)
        reach_note = self.reach(lab, holders)
        attempts = 0
        while min(counts.values()) < self.trials and attempts < 3 * self.trials:
            attempts += 1
            need = [f for f in FAMILIES if counts[f] < self.trials]
            fam = min(need, key=lambda f: (counts[f], f))
            target = lab.host(holders[fam])
            measured = [f for f in need if holders[f] == target.role]
            victim = target if mode.victim == "holder" else driver.standby(target)
            token = driver.ready_token(victim)
            notes: list[str] = [reach_note] if reach_note else []
            expected = mode.prepare(driver, target) if mode.prepare is not None else {}
            since = time.time()
            time.sleep(PRE)
            t_fail = time.time()
            mode.inject(driver, victim)
            bound: dict[int, float] = {}
            moved = partial(self._moved, recorder, measured, target.role, t_fail, bound)
            wait_for(moved, window, 0.02)  # bounded: no new holder by then is "failover: none"
            time.sleep(SETTLE)
            until = time.time()
            time.sleep(RESTORE_GUARD)
            detected = driver.detected_at(target, t_fail, until)
            try:
                mode.restore(driver, victim)
            except (LabError, OSError, subprocess.SubprocessError) as exc:
                notes.append(f"restore failed: {exc}")
            driver.after_restore(victim)
            back = partial(driver.recovered, victim, token, rejoin=mode.rejoin)
            if not wait_for(back, RECOVER_TIMEOUT):
                notes.append(f"{victim.role} not back after {RECOVER_TIMEOUT:g}s; restarted")
                self.force_restart(lab, driver, victim)
            recovered_at = time.time()
            holders = self.wait_steady(driver, recorder)
            steady_at = time.time()
            reach_note = self.reach(lab, holders)
            reached_at = time.time()
            for f in measured:
                counts[f] += 1
                bound_ms = (bound[f] - t_fail) * 1000.0 if f in bound else None
                run.plans.append(
                    Plan(
                        driver.system,
                        driver.config,
                        mode.name,
                        f,
                        counts[f],
                        target.role,
                        t_fail,
                        since,
                        until,
                        steady_at,
                        bound_ms,
                        notes,
                        expected_holder=expected.get(str(FAMILIES[f])),
                        restore_s=recovered_at - until,
                        steady_s=steady_at - recovered_at,
                        client_back_s=reached_at - steady_at,
                        name=driver_name(driver),
                        expect=mode.expect,
                        disturbed=victim.role,
                        detected_ms=None if detected is None else (detected - t_fail) * 1000.0,
                    )
                )
            fams = ",".join(f"v{f}" for f in measured)
            took = ", ".join(
                f"v{f} bound elsewhere after {(bound[f] - t_fail) * 1000:.0f} ms"
                if f in bound
                else f"v{f} not bound elsewhere"
                for f in measured
            )
            if mode.expect == "stay":
                took += " (must stay)"
            who = target.role if victim == target else f"{victim.role} (holder {target.role})"
            console.print(
                f"  {mode.name:<15} {fams:<6} #{counts[measured[0]]:<3} {who}: {took}"
                f" [dim](restore {recovered_at - until:.1f} s, steady "
                f"{steady_at - recovered_at:.1f} s, client {reached_at - steady_at:.1f} s)[/dim]"
                + (f"  [yellow]{'; '.join(notes)}[/yellow]" if notes else "")
            )

    @staticmethod
    def reach(lab: Lab, holders: dict[int, str]) -> str:
        """Wait until the client gets its answers from the holder the kernels show.

        The kernels can be steady while the client's neighbour cache or the switch still
        point elsewhere (a virtual MAC moving back, say); a trial must start from a client
        that reaches the holder. Returns a note when it did not within REACH_TIMEOUT."""
        deadline = time.monotonic() + REACH_TIMEOUT

        def answered_by_holder(fam: int) -> bool:
            with contextlib.suppress(LabError, subprocess.SubprocessError):
                return bool(lab.probe_once(FAMILIES[fam], timeout=0.2)["by"] == holders[fam])
            return False

        def until_reached(fam: int) -> bool:
            return wait_for(partial(answered_by_holder, fam), deadline - time.monotonic())

        with ThreadPoolExecutor(len(holders)) as pool:  # both families at once
            reached = dict(zip(holders, pool.map(until_reached, holders), strict=True))
        missed = [f"{holders[f]} on v{f}" for f, ok in reached.items() if not ok]
        if missed:
            return f"client did not reach {', '.join(missed)} within {REACH_TIMEOUT:g}s"
        return ""

    @staticmethod
    def _moved(
        recorder: Recorder,
        measured: Sequence[int],
        old: str,
        t_fail: float,
        bound: dict[int, float],
    ) -> bool:
        """Has another host bound each measured VIP since the failure? Notes when in `bound`."""
        events = recorder.poll()
        horizon = time.time() + 3600.0
        for f in measured:
            if f in bound:
                continue
            ivs = holding_intervals(events, FAMILIES[f], horizon, since=recorder.started_at)
            starts = [s for h, spans in ivs.items() if h != old for s, _e in spans if s >= t_fail]
            if starts:
                bound[f] = min(starts)
        return len(bound) == len(measured)

    def force_restart(self, lab: Lab, driver: Driver, host: Node) -> None:
        driver.signal_group(host, signal.SIGKILL)
        driver.wait_gone(host, 5.0)
        lab.restore_link(host)
        lab.unblock_etcd(host)
        partition.heal(lab, host)
        fail_flag(lab, host).unlink(missing_ok=True)
        token = driver.ready_token(host)
        driver.start(host)
        driver.after_restore(host)
        if not wait_for(partial(driver.recovered, host, token), RECOVER_TIMEOUT):
            raise BenchError(f"{host.role} does not come back even after a restart")

    @staticmethod
    def judge(plan: Plan, records: list[ProbeRecord], events: list[AddressEvent]) -> dict[str, Any]:
        ip = FAMILIES[plan.family]
        result = evaluate_trial(
            records,
            events,
            ip,
            plan.target,
            plan.t_fail,
            plan.since,
            plan.until,
            expect=plan.expect,
        )
        restore = check_history(events, [], ip, plan.steady_at, since=plan.until)
        window = [r for r in records if plan.since <= r.sent < plan.until]
        vip_events = [
            {
                "ms": round((e.at - plan.t_fail) * 1000.0, 3),
                "host": e.host,
                "dev": e.dev,
                "added": e.added,
            }
            for e in events
            if e.ip == ip and plan.since - 1.0 <= e.at <= plan.steady_at and not e.initial
        ]
        notes = list(plan.notes)  # one list for the families of a trial: copied
        want, got = plan.expected_holder, result.new_holder
        if want is not None and got is not None and got != want:
            notes.append(f"new holder {got}, expected {want}")
        return {
            **asdict(plan),
            "notes": notes,
            "result": asdict(result),
            "outcome": result.outcome,
            "double_holder_ms": result.double_holder_ms,
            "restore_double_holder_ms": restore.double_holder_s * 1000.0,
            "probes": _compact_probes(window, plan.t_fail),
            "address_events": vip_events,
        }

    @staticmethod
    def _tidy(lab: Lab, workdir: Path) -> None:
        """Keep the logs for a post-mortem, drop what is big or not ours to leave behind."""
        for path in workdir.glob("*.data"):
            shutil.rmtree(path, ignore_errors=True)
        for path in workdir.glob("probe-*.jsonl*"):
            path.unlink(missing_ok=True)
        for path in workdir.glob("*.fail"):  # health-check flags of an interrupted trial
            path.unlink(missing_ok=True)
        # The agents' lock and lease files (haagent's state dir) for this lab's cluster.
        for path in Path("/run/haagent").glob(f"{lab.lab_id}-*"):
            path.unlink(missing_ok=True)


# --------------------------------------------------------------------------- report


def _result(trial: dict[str, Any]) -> TrialResult:
    r = dict(trial["result"])
    r["double_holder"] = [(a, b, tuple(h)) for a, b, h in r["double_holder"]]
    return TrialResult(**r)


def summary_rows(runs: Sequence[ConfigRun]) -> list[dict[str, Any]]:
    rows = []
    for run in runs:
        for mode in run.modes:
            for fam in FAMILIES:
                trials = [t for t in run.trials if t["mode"] == mode and t["family"] == fam]
                if not trials:
                    continue
                judged = [_result(t) for t in trials]
                expect = MODES[mode].expect if mode in MODES else "move"
                s = summarize_trials([r for r in judged if r.stable_start], expect=expect)
                s.unstable_start = sum(not r.stable_start for r in judged)
                rows.append(
                    {
                        "name": run.name or f"{run.system} {run.config}",
                        "system": run.system,
                        "config": run.config,
                        "mode": mode,
                        "family": f"v{fam}",
                        **asdict(s),
                        "restore_double_holder_trials": sum(
                            t["restore_double_holder_ms"] > 0 for t in trials
                        ),
                        "noted_trials": sum(bool(t["notes"]) for t in trials),
                        # After the failure was undone: how long until the client reached
                        # the holder again (a probe tool run takes ~0.1 s of it).
                        "client_back_max_s": max(t["client_back_s"] for t in trials),
                    }
                )
    return rows


# Modes whose client gap is compared with haagent's own SIGTERM handover in the same run.
RATIO_MODES = ("move",)
RATIO_BASE = "sigterm"


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b <= 0 else round(a / b, 2)


def handover_ratios(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per configuration and family: each of RATIO_MODES against RATIO_BASE of the same
    configuration in the same run — median and p95 of the client gap (and of the time to
    the new holder), the mode's over the base's. 1.0: as fast as a graceful stop."""
    by_key = {(r["system"], r["config"], r["mode"], r["family"]): r for r in rows}
    out = []
    for (system, config, mode, fam), r in by_key.items():
        base = by_key.get((system, config, RATIO_BASE, fam))
        if mode not in RATIO_MODES or base is None:
            continue
        out.append(
            {
                "name": r.get("name", system),
                "system": system,
                "config": config,
                "mode": mode,
                "base": RATIO_BASE,
                "family": fam,
                "trials": r["trials"],
                "base_trials": base["trials"],
                "gap_median_ms": r["gap_median_ms"],
                "base_gap_median_ms": base["gap_median_ms"],
                "gap_median_ratio": _ratio(r["gap_median_ms"], base["gap_median_ms"]),
                "gap_p95_ms": r["gap_p95_ms"],
                "base_gap_p95_ms": base["gap_p95_ms"],
                "gap_p95_ratio": _ratio(r["gap_p95_ms"], base["gap_p95_ms"]),
                "to_new_median_ratio": _ratio(r["to_new_median_ms"], base["to_new_median_ms"]),
                "to_new_p95_ratio": _ratio(r["to_new_p95_ms"], base["to_new_p95_ms"]),
                "double_holder_trials": r["double_holder_trials"],
                "failed_over": r["failed_over"],
            }
        )
    return out


def _x(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}"


def ratio_cells(r: dict[str, Any]) -> list[str]:
    return [
        r.get("name", r["system"]),
        r["config"],
        f"{r['mode']} / {r['base']}",
        r["family"],
        f"{_ms(r['gap_median_ms'])} / {_ms(r['base_gap_median_ms'])} = {_x(r['gap_median_ratio'])}",
        f"{_ms(r['gap_p95_ms'])} / {_ms(r['base_gap_p95_ms'])} = {_x(r['gap_p95_ratio'])}",
        f"{_x(r['to_new_median_ratio'])} / {_x(r['to_new_p95_ratio'])}",
        f"{r['failed_over']}/{r['trials']}",
        str(r["double_holder_trials"]),
    ]


RATIO_COLUMNS = (
    "system",
    "config",
    "modes",
    "fam",
    "gap median ms (ratio)",
    "gap p95 ms (ratio)",
    "new holder ratio med / p95",
    "failover",
    "2 holders",
)


def ratios_markdown(ratios: Sequence[dict[str, Any]]) -> str:
    if not ratios:
        return ""
    head = "| " + " | ".join(RATIO_COLUMNS) + " |\n|---|---|---|---|--:|--:|--:|--:|--:|\n"
    return head + "\n".join("| " + " | ".join(ratio_cells(r)) + " |" for r in ratios) + "\n"


def print_ratios(ratios: Sequence[dict[str, Any]]) -> None:
    if not ratios:
        return
    table = Table(title="operator move against the same configuration's SIGTERM handover")
    for col in RATIO_COLUMNS:
        table.add_column(col, justify="left" if col in ("system", "config", "modes") else "right")
    for r in ratios:
        table.add_row(*ratio_cells(r))
    console.print(table)


def _ms(v: float | None, *, censored: bool = False) -> str:
    if v is None:
        return "-"
    return (">" if censored else "") + f"{v:.0f}"


def _failover(r: dict[str, Any]) -> str:
    """Failed over / trials; for a mode where the VIP must stay: "stayed" / trials."""
    if r.get("expect") == "stay":
        text = f"stayed {r['stayed']}/{r['trials']}"
    else:
        text = f"{r['failed_over']}/{r['trials']}"
    return text + (f" ({r['unstable_start']} excl.)" if r["unstable_start"] else "")


def _cells(r: dict[str, Any], *, markdown: bool) -> list[str]:
    """One summary row as the console table and the markdown table show it; a count of
    trials with two holders or two answering hosts stands out (red, or bold)."""
    cens = r["gap_censored"] > 0
    dh = r["double_holder_trials"]
    da = r["double_answer_trials"]
    longest = f"({r['double_holder_max_ms']:.0f} ms)"
    if markdown:
        holders, answers = f"**{dh}** {longest}", f"**{da}**"
    else:
        holders, answers = f"[red]{dh} {longest}[/red]", f"[red]{da}[/red]"
    return [
        r.get("name", r["system"]),
        r["config"],
        r["mode"],
        r["family"],
        _failover(r),
        _ms(r["gap_median_ms"]),
        _ms(r["gap_p95_ms"], censored=cens),
        _ms(r["gap_max_ms"], censored=cens),
        _ms(r["to_new_median_ms"]),
        _ms(r["to_new_p95_ms"]),
        _ms(r["to_new_max_ms"]),
        holders if dh else "0",
        answers if da else "0",
        f"{r['client_back_max_s']:.1f} s",
    ]


def print_table(rows: Sequence[dict[str, Any]], title: str) -> None:
    table = Table(title=title, show_lines=False)
    for col, justify in (
        ("system", "left"),
        ("config", "left"),
        ("mode", "left"),
        ("fam", "left"),
        ("failover", "right"),
        ("gap med", "right"),
        ("gap p95", "right"),
        ("gap max", "right"),
        ("new med", "right"),
        ("new p95", "right"),
        ("new max", "right"),
        ("2 holders", "right"),
        ("2 answer", "right"),
        ("back max", "right"),
    ):
        table.add_column(col, justify=justify)  # type: ignore[arg-type]
    for r in rows:
        table.add_row(*_cells(r, markdown=False))
    console.print(table)


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    head = (
        "| system | config | mode | fam | failover | gap med | gap p95 | gap max "
        "| new holder med | p95 | max | two holders (max) | two answering | client back (max) |\n"
        "|---|---|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|\n"
    )
    lines = ["| " + " | ".join(_cells(r, markdown=True)) + " |" for r in rows]
    return head + "\n".join(lines) + "\n"


def _cmd_out(argv: Sequence[str]) -> str:
    try:
        p = subprocess.run(list(argv), capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return ""
    return (p.stdout or p.stderr).strip().splitlines()[0] if (p.stdout or p.stderr) else ""


def machine() -> dict[str, Any]:
    cpu = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "cpus": os.cpu_count(),
        "cpu": cpu,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "keepalived": _cmd_out(["keepalived", "--version"]),
        "etcd": _cmd_out(["etcd", "--version"]),
        "iproute2": _cmd_out(["ip", "-V"]),
        "haagent_commit": _cmd_out(["git", "rev-parse", "--short", "HEAD"]),
        "load_at_start": os.getloadavg(),
    }


# --------------------------------------------------------------------------- main


def _interrupt(_signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def cannot_run(target: str, binaries: Sequence[str]) -> bool:
    """Say why ``make <target>`` cannot run here (not root, a binary missing); True if so."""
    if os.geteuid() != 0:
        console.print(f"[red]make {target} needs root (network namespaces)[/red]")
        return True
    missing = [b for b in binaries if shutil.which(b) is None]
    if missing:
        console.print(f"[red]missing {', '.join(missing)} (make {target} installs them)[/red]")
        return True
    return False


def interrupt_on_signals() -> None:
    """Ctrl-C and SIGTERM end a run the same way, as KeyboardInterrupt: tear down, then write
    what we have. (SIGINT explicitly: a shell starting us in the background would have it
    ignored.)"""
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)


def other_labs() -> list[str]:
    """Lab ids on this machine that are not ours (at the start of a run): they skew figures."""
    return sorted({ns.split("-", 1)[0] for ns in find_leftovers()})


@contextlib.contextmanager
def interrupts_deferred() -> Iterator[None]:
    """Tear-down must finish: a second Ctrl-C (or SIGTERM) waits until it has."""
    pending: list[int] = []

    def note(signum: int, _frame: FrameType | None) -> None:
        pending.append(signum)
        console.print("[yellow]tearing down the lab first …[/yellow]")

    old = {s: signal.signal(s, note) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
        if pending:
            raise KeyboardInterrupt


def leftovers(lab_ids: Sequence[str], run_dir: Path) -> list[str]:
    """Anything of our labs still on the machine: namespaces, keepalived, etcd, agents.

    Processes are ours when their command line names one of our lab ids or our run
    directory (every config, data dir and log of a bench run lives there)."""
    marks = [*lab_ids, run_dir.name]
    found = sorted(ns for i in lab_ids for ns in find_leftovers(i))
    for name in ("keepalived", "etcd", "haagent"):
        out = subprocess.run(
            ["pgrep", "-a", "-f", name], capture_output=True, text=True, check=False, timeout=10
        ).stdout
        found += [line for line in out.splitlines() if any(m in line for m in marks)]
    return found


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--trials", type=int, default=DEFAULT_TRIALS, help="per mode and family")
    p.add_argument("--quick", action="store_true", help=f"smoke run: {QUICK_TRIALS} trials")
    p.add_argument("--systems", default="haagent,keepalived", help="comma-separated")
    h_variants = ",".join(haagent_variants())
    p.add_argument("--haagent", help=f"variants of {h_variants} (default: {DEFAULT_HAAGENT})")
    variants = ",".join(keepalived_variants())
    p.add_argument("--keepalived", help=f"variants of {variants} (default: {DEFAULT_KEEPALIVED})")
    p.add_argument("--modes", default=",".join(MODES), help=f"({','.join(MODES)})")
    p.add_argument("--out", type=Path, default=Path("bench-results"))
    p.add_argument("--no-plot", action="store_true")
    args = p.parse_args(argv)
    if args.quick:
        args.trials = QUICK_TRIALS
    if args.haagent is None:
        args.haagent = DEFAULT_HAAGENT
    if args.keepalived is None:
        args.keepalived = DEFAULT_KEEPALIVED
    if args.trials < 1:
        p.error("--trials must be at least 1")
    for m in args.modes.split(","):
        if m not in MODES:
            p.error(f"unknown mode {m!r}")
    for v in args.haagent.split(","):
        if v not in haagent_variants():
            p.error(f"unknown haagent variant {v!r}")
    for v in args.keepalived.split(","):
        if v not in keepalived_variants():
            p.error(f"unknown keepalived variant {v!r}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    systems = args.systems.split(",")
    needed = ["ip", "etcd", "etcdctl", "nft"] + (["keepalived"] if "keepalived" in systems else [])
    if cannot_run("bench", needed):
        return 2
    interrupt_on_signals()
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    run_dir = args.out.resolve() / f"run-{stamp}"
    run_dir.mkdir(parents=True, exist_ok=True)
    (args.out / "failover-latest.png").unlink(missing_ok=True)  # never copy a stale picture
    others = other_labs()
    meta: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "argv": sys.argv[1:] if argv is None else list(argv),
        "trials": args.trials,
        "machine": machine(),
        "other_labs_at_start": others,
        "probe_interval_s": PROBE_INTERVAL,
        "pre_s": PRE,
        "settle_s": SETTLE,
    }
    modes = args.modes.split(",")
    runner = Runner(args.trials, run_dir, modes)
    plan: list[tuple[str, Callable[[Lab], Driver]]] = []
    skipped: list[str] = []
    if "haagent" in systems:
        for name in args.haagent.split(","):
            variant = haagent_variants()[name]
            if variant.liveness == "fast" and not liveness_supported():
                why = f"haagent-{name}: this haagent has no liveness section (fast failover)"
                console.print(f"[yellow]skipped {why}[/yellow]")
                skipped.append(why)
                continue
            make_agent = partial(HaagentDriver, vmac=variant.vmac, liveness=variant.liveness)
            plan.append((f"haagent-{name}", make_agent))
    meta["skipped"] = skipped
    if "keepalived" in systems:
        for name in args.keepalived.split(","):
            advert, vmac = keepalived_variants()[name]
            make = partial(KeepalivedDriver, advert_int=advert, vmac=vmac)
            plan.append((f"keepalived-{name}", make))
    runs = runner.runs
    started = time.monotonic()
    interrupted = False
    try:
        for slug, make_driver in plan:
            runner.run_config(make_driver, slug)
    except KeyboardInterrupt:
        interrupted = True
        console.print("[yellow]interrupted: everything torn down, writing what we have[/yellow]")
    meta["seconds"] = round(time.monotonic() - started, 1)
    meta["interrupted"] = interrupted
    left = leftovers(runner.lab_ids, run_dir)
    meta["leftovers"] = left
    rows = summary_rows(runs)
    ratios = handover_ratios(rows)
    goals = evaluate_targets(rows)
    report = {
        "meta": meta,
        "modes": {m: MODES[m].description for m in modes},
        "runs": [
            {k: v for k, v in asdict(r).items() if k not in ("plans", "trials")} for r in runs
        ],
        "summary": rows,
        "ratios": ratios,
        "targets": goals,
        "trials": [t for r in runs for t in r.trials],
    }
    out = args.out / f"bench-{stamp}.json"
    out.write_text(json.dumps(report, default=str) + "\n")
    ratio_md = ratios_markdown(ratios)
    goals_md = targets_markdown(goals)
    (args.out / "summary-latest.md").write_text(
        markdown_table(rows)
        + (f"\n{ratio_md}" if ratio_md else "")
        + (f"\n{goals_md}" if goals_md else "")
    )
    title = (
        f"failover, {args.trials} trial(s) per mode and family, probe every "
        f"{PROBE_INTERVAL * 1000:g} ms (ms)"
    )
    print_table(rows, title)
    console.print(
        "failover: trials where another host answered / trials (stayed: trials where no other "
        "host bound the VIP or answered, for modes where it must stay); gap: longest client gap "
        "around the failure; new: failure -> first answer from another host; 2 holders: "
        "trials where two hosts had the VIP bound at once (longest, within the trial); 2 answer: "
        "trials where an answer came from a host already taken over from; back max: after "
        "the failure was undone, the longest wait for the client to reach the holder again"
    )
    print_ratios(ratios)
    if goals:
        console.print(targets_table(goals))
    for r in runs:
        console.print(
            f"{r.name or r.system} ({r.config}): {r.seconds:.0f} s"
            + (f" — {r.error}" if r.error else "")
        )
    for why in skipped:
        console.print(f"[yellow]skipped {why}[/yellow]")
    console.print(f"results: {out}  (total {meta['seconds']:.0f} s)")
    if not args.no_plot:
        from bench.plot import plot, plot_timeline

        png = args.out / f"bench-{stamp}.png"
        if plot(report, png):
            shutil.copyfile(png, args.out / "failover-latest.png")
            console.print(f"picture: {png}")
        death = args.out / f"bench-{stamp}-host-death.png"
        if plot_timeline(report, death):
            console.print(f"host-death timeline: {death}")
    if left:
        console.print(f"[red]left behind: {left}[/red]")
        return 1
    console.print("nothing left behind (namespaces, keepalived, etcd, agents)")
    return 130 if interrupted else (1 if any(r.error for r in runs) else 0)


if __name__ == "__main__":
    raise SystemExit(main())

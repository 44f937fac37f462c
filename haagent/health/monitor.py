"""Run every check some VIP uses, each on its own interval, and report VIP health changes.

Threads: one scheduler per check instance, and one short-lived worker thread per run. The
scheduler waits for its worker at most ``timeout`` plus a short grace; a run that has not
answered by then is recorded as a failure, and while it stays stuck no new run of that check is
started (each further interval records another failure), so a hung check costs one thread, not
one per interval, and never delays another check or the caller.

What is one *instance* of a check: a check is run once per interval however many VIPs use it,
and its result applies to all of them, so the cost grows with the checks, not with the VIPs.
Two exceptions: an interface check without an interface runs once per distinct interface of the
VIPs that use it, and an exec check with ``per_vip`` once per VIP (its environment then
describes that VIP; the config bounds how many VIPs it may have). An instance is named like its
check, or ``check@vip`` / ``check@interface`` when the check has several instances.

The environment of an exec run is built from what is fixed at construction (the VIP names, and
the per-VIP variables when the instance serves exactly one VIP) plus, at each run, the election
states the agent last passed to :meth:`HealthMonitor.set_state`. set_state() only stores the
state, so the agent loop can call it on every change of every VIP without waiting or starting
anything; a run sees the states as they are when it starts.

The consumer (the agent) gets :class:`VipHealthChanged` through ``sink`` whenever a VIP's
health becomes known or flips; events for one VIP arrive in order. A VIP without checks is
healthy from the start, and :meth:`HealthMonitor.start` reports it once, so the consumer treats
every VIP alike: a VIP is eligible once a ``VipHealthChanged(healthy=True)`` arrived for it and
no later one said otherwise.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from haagent.config import (
    CheckConfig,
    Config,
    ExecCheckConfig,
    InterfaceCheckConfig,
    VipConfig,
)
from haagent.decide.election import State
from haagent.health.checks import CheckResult, ProcessGroups, run_check, vip_env
from haagent.health.events import VipHealthChanged
from haagent.health.state import CheckState, VipHealth

__all__ = ["INITIAL_STATE", "HealthMonitor", "VipHealthChanged"]

log = logging.getLogger("haagent.health")

# HAAGENT_STATE until set_state() says otherwise: the state every election starts in.
INITIAL_STATE = State.IDLE.value
_HOLDER = State.HOLDER.value  # the state HAAGENT_HOLDING lists VIPs in
_GRACE = 0.5  # seconds a run may overstay its timeout before the scheduler stops waiting


@dataclass
class _Instance:
    key: str
    check: CheckConfig
    vips: list[str]  # VIPs whose health depends on it, in config order
    state: CheckState
    interface: str | None = None  # interface checks
    # exec checks: the environment of every run but HAAGENT_HOLDING and HAAGENT_STATE
    env: dict[str, str] | None = None
    solo: str | None = None  # exec checks serving exactly one VIP: it, for HAAGENT_STATE
    output: str = ""
    duration: float = 0.0
    worker: threading.Thread | None = None
    worker_started: float = 0.0
    thread: threading.Thread | None = None
    stop: threading.Event = field(default_factory=threading.Event)  # this instance only (reload)


class HealthMonitor:
    def __init__(
        self,
        cfg: Config,
        sink: Callable[[object], None],
        *,
        clock: Callable[[], float] = time.time,
        observer: Callable[[str, bool | None, bool, float], None] | None = None,
    ) -> None:
        self._cfg = cfg
        self._sink = sink
        # Told of every run (instance, its health now, the run's result, its duration): metrics.
        self._observer = observer
        self._clock = clock
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._started = False
        self._states: dict[str, str] = {v.name: INITIAL_STATE for v in cfg.vips}
        self._groups = ProcessGroups()  # exec checks running now, killed by stop()
        self._instances, self._vips = self._build(cfg, {})

    def _build(
        self, cfg: Config, running: dict[tuple[str, str | None], _Instance]
    ) -> tuple[dict[str, _Instance], dict[str, VipHealth]]:
        """The check instances and VIP health of ``cfg``. An instance of ``running`` (keyed
        by check name and variant) whose check is defined as before is taken over, state and
        thread included, so a reload does not send its VIPs back to "unknown"."""
        by_ident: dict[tuple[str, str | None], _Instance] = {}
        per_vip: dict[str, list[tuple[str, _Instance]]] = {}
        for vip in cfg.vips:
            per_vip[vip.name] = []
            for name in vip.checks:
                check = cfg.checks[name]
                variant: str | None = None
                if isinstance(check, ExecCheckConfig) and check.per_vip:
                    variant = vip.name
                elif isinstance(check, InterfaceCheckConfig):
                    variant = check.interface_for(vip)
                ident = (name, variant)
                inst = by_ident.get(ident)
                if inst is None:
                    old = running.get(ident)
                    if old is not None and old.check == check:
                        inst = old
                        inst.vips = []
                    else:
                        inst = _Instance(
                            key="",
                            check=check,
                            vips=[],
                            state=CheckState(check.rise, check.fall, clock=self._clock),
                            interface=variant if isinstance(check, InterfaceCheckConfig) else None,
                        )
                    by_ident[ident] = inst
                inst.vips.append(vip.name)
                per_vip[vip.name].append((name, inst))
        counts = Counter(name for name, _ in by_ident)
        vip_cfgs = {v.name: v for v in cfg.vips}
        instances: dict[str, _Instance] = {}
        for (name, variant), inst in by_ident.items():
            inst.key = name if counts[name] == 1 else f"{name}@{variant}"
            instances[inst.key] = inst
            if isinstance(inst.check, ExecCheckConfig):
                self._exec_env(inst, vip_cfgs, cfg.node)
        vips = {
            vip.name: VipHealth(vip.name, [(name, inst.state) for name, inst in per_vip[vip.name]])
            for vip in cfg.vips
        }
        return instances, vips

    # ----------------------------------------------------------------- public

    def start(self) -> None:
        """Report the VIPs without checks as healthy and start every check's thread."""
        with self._lock:
            if self._started:
                raise RuntimeError("HealthMonitor.start() called twice")
            self._started = True
            for name, vh in self._vips.items():
                if vh.healthy is True:
                    self._emit(VipHealthChanged(name, True, vh.reason))
        for inst in self._instances.values():
            self._start_instance(inst)

    def _start_instance(self, inst: _Instance) -> None:
        inst.thread = threading.Thread(
            target=self._loop, args=(inst,), name=f"haagent-check-{inst.key}", daemon=True
        )
        inst.thread.start()

    def reload(self, cfg: Config) -> None:
        """Take ``cfg``'s VIPs and checks: instances defined as before keep running with
        their state; the others stop (their last run is abandoned), new ones start. A VIP
        whose health is known after the change (new, or with other checks) is reported like
        any health change; one whose health stays as it was is not reported at all."""
        with self._lock:
            if self._stop.is_set():
                return
            running = {(i.check.name, self._variant(i)): i for i in self._instances.values()}
            before = {name: vh.healthy for name, vh in self._vips.items()}
            instances, vips = self._build(cfg, running)
            kept = {id(i) for i in instances.values()}
            gone = [i for i in self._instances.values() if id(i) not in kept]
            fresh = [i for i in instances.values() if i.thread is None]
            self._cfg = cfg
            self._instances, self._vips = instances, vips
            self._states = {v.name: self._states.get(v.name, INITIAL_STATE) for v in cfg.vips}
            for inst in gone:
                inst.stop.set()
            for name, vh in vips.items():
                if vh.healthy is not None and before.get(name) != vh.healthy:
                    self._emit(VipHealthChanged(name, vh.healthy, vh.reason))
        if self._started:
            for inst in fresh:
                self._start_instance(inst)

    @staticmethod
    def _variant(inst: _Instance) -> str | None:
        if isinstance(inst.check, InterfaceCheckConfig):
            return inst.interface
        if isinstance(inst.check, ExecCheckConfig) and inst.check.per_vip:
            return inst.vips[0] if inst.vips else None
        return None

    def stop(self, timeout: float = 2.0) -> None:
        """Stop every check; wait for the schedulers at most ``timeout`` seconds in total.

        The process groups of exec checks still running are killed; any other run still going
        is abandoned (its thread is a daemon). No event is sent after stop() returns.
        """
        with self._lock:
            self._stop.set()
            for inst in self._instances.values():
                inst.stop.set()
        if killed := self._groups.kill_all():
            log.info("killed %d exec check(s) still running at stop", killed)
        deadline = time.monotonic() + timeout
        for inst in self._instances.values():
            if inst.thread is not None:
                inst.thread.join(max(deadline - time.monotonic(), 0))
        stuck = [
            i.key for i in self._instances.values() if i.thread is not None and i.thread.is_alive()
        ]
        if stuck:
            log.warning("health checks still running at stop: %s", ", ".join(stuck))

    def set_state(self, vip: str, state: str) -> None:
        """The VIP's election state, for the next runs of its exec checks.

        A run about this VIP alone gets it as HAAGENT_STATE; every run of an exec check the VIP
        uses lists it in HAAGENT_HOLDING while it is ``holder``. Only stored: nothing runs or
        waits here, and a run already going keeps the environment it started with.
        """
        with self._lock:
            if vip in self._states:  # else a VIP a reload removed, being released
                self._states[vip] = state

    def vip_healthy(self, vip: str) -> bool | None:
        """True/False, or None while a check of the VIP has not risen or failed yet."""
        with self._lock:
            return self._vips[vip].healthy

    def vip_reason(self, vip: str) -> str:
        """Why the VIP has its current health, as in :class:`VipHealthChanged`."""
        with self._lock:
            return self._vips[vip].reason

    def snapshot(self) -> dict[str, dict[str, Any]]:
        """Per check instance, JSON-ready: health, since when, the last result and output."""
        out: dict[str, dict[str, Any]] = {}
        with self._lock:
            for key, inst in self._instances.items():
                st = inst.state
                out[key] = {
                    "check": inst.check.name,
                    "type": inst.check.type,
                    "vips": list(inst.vips),
                    "healthy": st.healthy,
                    "since": st.since,
                    "detail": st.last_detail,
                    "output": inst.output,
                    "last_run": st.last_at,
                    "duration": round(inst.duration, 6),
                    "successes": st.successes,
                    "failures": st.failures,
                    "rise": st.rise,
                    "fall": st.fall,
                }
        return out

    # ----------------------------------------------------------------- environment

    def _exec_env(self, inst: _Instance, vip_cfgs: dict[str, VipConfig], node: str) -> None:
        """The fixed part of the environment of ``inst``'s runs; see docs/health-checks.md."""
        inst.solo = None
        env = {
            "HAAGENT_NODE": node,
            "HAAGENT_CHECK": inst.check.name,
            "HAAGENT_VIPS": " ".join(inst.vips),
        }
        if len(inst.vips) == 1:
            # Exactly what a run about one VIP has always had, so single-VIP scripts keep working.
            inst.solo = inst.vips[0]
            env.update(vip_env(vip_cfgs[inst.solo], node))
        inst.env = env

    def _run_env(self, inst: _Instance) -> dict[str, str] | None:
        if inst.env is None:
            return None
        with self._lock:
            # One pass over this check's VIPs per run: the price of keeping set_state() O(1).
            holding = " ".join(v for v in inst.vips if self._states[v] == _HOLDER)
            state = self._states[inst.solo] if inst.solo is not None else None
        env = {**inst.env, "HAAGENT_HOLDING": holding}
        if state is not None:
            env["HAAGENT_STATE"] = state
        return env

    # ----------------------------------------------------------------- threads

    def _loop(self, inst: _Instance) -> None:
        interval = inst.check.interval
        next_at = time.monotonic()
        while not inst.stop.is_set():
            result = self._run_once(inst)
            self._record(inst, result)
            next_at += interval
            now = time.monotonic()
            if next_at < now:  # a run overstayed; do not try to catch up
                next_at = now
            if inst.stop.wait(next_at - now):
                return

    def _run_once(self, inst: _Instance) -> CheckResult:
        check = inst.check
        if inst.worker is not None and inst.worker.is_alive():
            stuck = time.monotonic() - inst.worker_started
            return CheckResult(False, f"the previous run has not returned after {stuck:.1f} s")
        env = self._run_env(inst)
        box: list[CheckResult] = []
        done = threading.Event()

        def work() -> None:
            try:
                box.append(run_check(check, interface=inst.interface, env=env, groups=self._groups))
            finally:
                done.set()

        inst.worker = threading.Thread(target=work, name=f"haagent-run-{inst.key}", daemon=True)
        inst.worker_started = time.monotonic()
        inst.worker.start()
        if done.wait(check.timeout + _GRACE) and box:
            return box[0]
        took = time.monotonic() - inst.worker_started
        return CheckResult(False, f"no answer within the {check.timeout:g} s timeout", "", took)

    def _record(self, inst: _Instance, result: CheckResult) -> None:
        with self._lock:
            if inst.stop.is_set():
                return
            inst.output = result.output
            inst.duration = result.duration
            t = inst.state.record(result.ok, result.detail)
            if self._observer is not None:
                self._observer(inst.key, inst.state.healthy, result.ok, result.duration)
            if t is None:
                return
            level = logging.INFO if t.healthy else logging.WARNING
            log.log(
                level,
                "check %s %s: %s",
                inst.key,
                "is healthy" if t.healthy else "is failing",
                t.describe(),
            )
            for vip in inst.vips:
                vh = self._vips[vip]  # inst.vips and _vips change together, under the lock
                if vh.update() and vh.healthy is not None:
                    self._emit(VipHealthChanged(vip, vh.healthy, vh.reason))

    def _emit(self, event: VipHealthChanged) -> None:
        """Called with the lock held, so that events for one VIP keep their order."""
        try:
            self._sink(event)
        except Exception:
            log.exception("health event sink failed on %s", event)

"""Notify hooks: commands run when this host acquires or releases a VIP, or its checks fail.

Like keepalived's notify_master / notify_backup / notify_fault, with the facts in the
environment instead of in arguments::

    HAAGENT_EVENT      acquire | release | fault
    HAAGENT_VIP        the VIP's name
    HAAGENT_ADDRESS    its address, without prefix length
    HAAGENT_INTERFACE  the interface it is bound on
    HAAGENT_NODE       this node's name
    HAAGENT_REASON     why, as in the log ("check pg failed: connection refused (3/3)")

:meth:`Notifier.fire` never blocks and never raises: the command runs on a worker thread, in
its own session and process group, which is SIGKILLed at ``notify.timeout``. Hooks of one VIP
run one at a time, in the order they were fired, so a script never sees a release overtake the
acquire before it; hooks of different VIPs run side by side. Failures and timeouts are logged
on the logger ``haagent.notify``.
"""

from __future__ import annotations

import logging
import queue
import threading
from dataclasses import dataclass

from haagent.config import NotifyKind, VipConfig
from haagent.health.checks import CommandResult, ProcessGroups, run_command, vip_env

__all__ = ["Notifier", "NotifyKind"]

log = logging.getLogger("haagent.notify")


@dataclass(frozen=True)
class _Job:
    kind: str
    vip: str
    command: tuple[str, ...]
    env: dict[str, str]
    timeout: float


class Notifier:
    def __init__(self, node: str) -> None:
        self.node = node
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._queues: dict[str, queue.SimpleQueue[_Job | None]] = {}
        self._threads: dict[str, threading.Thread] = {}
        self._pending = 0
        self._closed = False
        self._groups = ProcessGroups()  # hooks still running, killed if close() times out
        self.last: dict[tuple[str, str], CommandResult] = {}  # (vip, kind) -> last run

    def fire(self, kind: NotifyKind, vip: VipConfig, reason: str) -> None:
        """Run the VIP's ``on_<kind>`` command, if it has one, without waiting for it."""
        try:
            command = vip.notify.command(kind)
            if command is None:
                return
            job = _Job(
                kind=kind,
                vip=vip.name,
                command=command,
                env={
                    "HAAGENT_EVENT": kind,
                    **vip_env(vip, self.node),
                    "HAAGENT_REASON": reason,
                },
                timeout=vip.notify.timeout,
            )
            with self._lock:
                if self._closed:
                    log.warning("not running on_%s for vip %s: shutting down", kind, vip.name)
                    return
                q = self._queues.get(vip.name)
                if q is None:
                    q = self._queues[vip.name] = queue.SimpleQueue()
                    t = threading.Thread(
                        target=self._worker,
                        args=(q,),
                        name=f"haagent-notify-{vip.name}",
                        daemon=True,
                    )
                    self._threads[vip.name] = t
                    t.start()
                self._pending += 1
            q.put(job)
        except Exception:
            log.exception("cannot start on_%s for vip %s", kind, vip.name)

    def wait_idle(self, timeout: float) -> bool:
        """Wait until every fired hook has finished; False if ``timeout`` passed first."""
        with self._idle:
            return self._idle.wait_for(lambda: self._pending == 0, timeout)

    def close(self, timeout: float) -> bool:
        """Refuse new hooks, give the queued ones up to ``timeout`` seconds, stop the workers.

        Returns False when hooks were still running then: those are killed (their whole
        process group), so no hook outlives the agent, whatever its own timeout says.
        """
        with self._lock:
            self._closed = True
        idle = self.wait_idle(timeout)
        if not idle and (killed := self._groups.kill_all()):
            log.warning("killed %d notify hook(s) still running when the agent stopped", killed)
        with self._lock:
            for q in self._queues.values():
                q.put(None)
        return idle

    def _worker(self, q: queue.SimpleQueue[_Job | None]) -> None:
        while (job := q.get()) is not None:
            try:
                self._run(job)
            except Exception:
                log.exception("on_%s for vip %s failed", job.kind, job.vip)
            finally:
                with self._idle:
                    self._pending -= 1
                    if self._pending == 0:
                        self._idle.notify_all()

    def _run(self, job: _Job) -> None:
        r = run_command(job.command, job.timeout, job.env, self._groups)
        with self._lock:
            self.last[(job.vip, job.kind)] = r
        what = f"on_{job.kind} for vip {job.vip}"
        last = r.last_line()
        said = f"; it said: {last}" if last else ""
        if r.returncode == 0:
            log.info("%s: done in %.3f s", what, r.duration)
        else:
            log.warning("%s failed: %s%s", what, r.describe(), said)

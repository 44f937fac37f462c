"""``make bench-scale``: haagent with many VIPs — cold start, footprint, idle, mass failover.

For each VIP count N (default 10, 200, 1000; mixed IPv4 and IPv6, ``Lab.scale_vips``) a fresh
lab: 5 hosts, one etcd 3.4, every agent configured with all N VIPs on eth0 (lease TTL 3 s,
margin 1 s). The agents are black boxes; everything is judged from the kernels (``ip``),
etcd (a watch on the holder keys, a range read, ``/metrics``) and ``/proc``:

1. **cold start**: all agents at once; time until every VIP is bound on exactly one host and
   its holder key names that host; holder keys created and deleted on the way (watch) and
   kernel binds/unbinds (address recorder); etcd database growth;
2. **idle** (60 s; at the largest N ``--idle-minutes``, default 10): CPU of each agent and
   fence (``/proc/<pid>/stat``), RSS (``VmRSS``, peak ``VmHWM``), etcd requests/s
   (``grpc_server_handled_total``), holder-key changes and the agents' log lines that mean a
   lost or re-bound VIP (must all be 0), and the frames each host sends on the segment by
   kind (AF_PACKET capture on its switch port, ``bench/capture.py``);
3. **mass failover** of the busiest host, one after the other: ``sigterm`` (the agent),
   ``sigkill`` (the agent's process group; its fence survives in its own session) and
   ``death`` (the host's switch port down, then agent and fence SIGKILLed: nothing of haagent
   runs and nothing leaves the host). Time until its VIPs are bound elsewhere (first, last),
   double holders (``haagent.lab.history`` over all N VIPs) and collateral: a VIP a
   surviving host held that left its kernel at any moment of the event. Each event is undone
   (agent restarted, link up) and placement settles before the next;
4. **churn** (placement): the busiest host leaves (SIGTERM) and, once placement has settled
   without it, rejoins: the VIPs that changed holder each time against the ideal (only its
   own when it leaves, about N/M back when it rejoins) and how long the rebalance takes at
   the agents' ``placement.rebalance``.

"Settled" (placement) is: every VIP bound on exactly one host that its holder key names,
every running agent a member past its start-up wait, and every VIP on the host that
``decide.rank`` ranks first from the published member records (``bench.observe.misplaced``):
with ``preempt`` on (the default, as here) a VIP anywhere else is still to move. Every phase
starts from a settled cluster, so a preemption after a restart is never counted as the next
event's collateral.

Everything is bounded in time; the lab is torn down on any failure and on Ctrl-C / SIGTERM.
Results: ``bench-results/scale-<stamp>.json`` and a table on stdout; the targets table as
markdown in ``bench-results/scale-summary-latest.md``. See docs/benchmarks.md, "Scale".
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from ipaddress import ip_address
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from bench.capture import KINDS, report_kind
from bench.observe import (
    LOG_MARKERS,
    HolderWatch,
    KeyEvent,
    Snapshot,
    arrivals,
    bound_elsewhere,
    changed_holders,
    cluster_view,
    count_key_events,
    cpu_seconds,
    db_size,
    etcd_metrics,
    fence_pid,
    judge_move,
    kernel_vips,
    member_started,
    metric_sum,
    misplaced,
    parse_vips,
    snapshot,
    spread,
    status_kb,
    wait_gone,
)
from bench.run import (
    cannot_run,
    interrupt_on_signals,
    interrupts_deferred,
    leftovers,
    machine,
    other_labs,
)
from haagent.cluster.view import ClusterView
from haagent.config import PlacementConfig
from haagent.lab.history import AddressEvent, IPAddress, check_history, start_address_recorder
from haagent.lab.topology import Lab, LabError, Node
from haagent.lab.wait import poll_until

HOSTS = 5
TTL = 3
MARGIN = 1.0
DEFAULT_VIPS = (10, 200, 1000)
QUICK_VIPS = (10, 200)
FAILOVER_MODES = ("sigterm", "sigkill", "death")
POLL = 0.25  # s between two snapshots while waiting for convergence
SETTLE_AFTER_CONVERGED = 2.0  # s of calm before an idle window starts
FAILOVER_PRE = 0.3  # s recorded before a failure is injected
FAILOVER_SETTLE = 1.0  # s recorded after the last VIP moved
FAILOVER_WAIT = {"sigterm": 10.0, "sigkill": 10.0, "death": TTL + 10.0}
STOP_TIMEOUT = 15.0  # s an agent may take to exit on SIGTERM before its group is killed
FENCE_TIMEOUT = 10.0  # s a fence may outlive its agent before it is killed
REJOIN_TIMEOUT = 30.0  # s a restarted agent may take to hold a lease again
UNSTEADY_WAIT = 10.0  # s to wait for convergence around failovers if the cold start never got it
# The agents run placement's defaults (preempt on, preempt_delay, rebalance, start-up wait).
PLACEMENT = PlacementConfig()
MISPLACED_SAMPLE = 20  # VIPs named in the JSON when placement does not settle

console = Console(width=None if sys.stdout.isatty() else 170)


class ScaleError(RuntimeError):
    pass


@dataclass
class Settings:
    vips: list[int]
    hosts: int = HOSTS
    idle_minutes: float = 10.0
    cpu_seconds: float = 60.0
    frames_seconds: float = 10.0
    cold_timeout: float = 60.0
    reconverge_timeout: float = 60.0
    modes: list[str] = field(default_factory=lambda: list(FAILOVER_MODES))
    churn: bool = True


# --------------------------------------------------------------------------- the cluster


class Cluster:
    """The agents of one lab, all configured with the same N VIPs."""

    def __init__(self, lab: Lab, vips: Sequence[tuple[str, str]]) -> None:
        self.lab = lab
        self.name = lab.lab_id
        self.vip_list = list(vips)
        self.vips: dict[str, IPAddress] = parse_vips(vips)
        self.by_ip: dict[IPAddress, str] = {ip: name for name, ip in self.vips.items()}
        self.configs: dict[str, Path] = {}
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.launched: dict[str, float] = {}

    def write_configs(self) -> None:
        for h in self.lab.hosts:
            self.configs[h.role] = self.lab.write_agent_config(
                h, self.vip_list, ttl=TTL, margin=MARGIN
            )

    def start(self, host: Node) -> None:
        self.launched[host.role] = time.time()
        self.procs[host.role] = self.lab.start_agent(host, self.configs[host.role])

    def wait_member(self, host: Node, timeout: float) -> bool:
        """Wait until the agent started last on ``host`` holds a lease (its member record,
        written by this run: ``started`` is its own start time, to the ms)."""
        proc = self.procs[host.role]

        def outcome() -> str | None:
            started = member_started(self.lab, self.name, host.role)
            if started is not None and started >= self.launched[host.role] - 0.001:
                return "member"
            return "exited" if proc.poll() is not None else None

        return poll_until(outcome, timeout, 0.1) == "member"

    def fence(self, host: Node) -> int | None:
        proc = self.procs.get(host.role)
        return fence_pid(proc.pid) if proc is not None and proc.poll() is None else None

    def dead(self) -> dict[str, int | None]:
        return {role: p.returncode for role, p in self.procs.items() if p.poll() is not None}

    def snapshot(self, hosts: Sequence[Node] | None = None) -> Snapshot:
        return snapshot(self.lab, self.name, self.vips, hosts)

    def wait_converged(self, timeout: float) -> tuple[Snapshot, float | None]:
        """Poll until every VIP has exactly one holder (kernel and etcd agree); the last
        snapshot and when it was taken if converged, else None."""
        deadline = time.monotonic() + timeout
        while True:
            began = time.monotonic()
            snap = self.snapshot()
            if snap.converged(self.vips):
                return snap, snap.at
            if time.monotonic() >= deadline:
                return snap, None
            # A snapshot of 1000 VIPs costs real CPU (5 `ip -j addr`, a range read): the
            # observer takes at most a third of one core from the agents it watches.
            time.sleep(max(POLL, 2.0 * (time.monotonic() - began)))

    def placement_snapshot(self) -> tuple[Snapshot, ClusterView]:
        """The kernels, then one range read of the whole cluster prefix: the holders (as
        :meth:`snapshot` has them) and the view the agents rank from."""
        wanted = set(self.vips.values())
        kernel = {h.role: kernel_vips(self.lab, h, wanted) for h in self.lab.hosts}
        view = cluster_view(self.lab, self.name)
        holders = {vip: h.node for vip, h in view.holders.items()}
        return Snapshot(time.time(), kernel, holders, view.revision), view

    def running(self) -> set[str]:
        return {role for role, p in self.procs.items() if p.poll() is None}

    def wait_settled(self, timeout: float, members: Sequence[str] | None = None) -> Settled:
        """Poll until placement has settled (the module's docstring), with exactly
        ``members`` (default: the hosts whose agent runs) in the cluster, or ``timeout``."""
        want = set(self.running() if members is None else members)
        deadline = time.monotonic() + timeout
        while True:
            began = time.monotonic()
            snap, view = self.placement_snapshot()
            off = misplaced(view, self.vips)
            starting = sorted(n for n, m in view.members.items() if not m.ready)
            whole = set(view.members) == want and not starting
            if snap.converged(self.vips) and whole and not off:
                return Settled(snap, view, snap.at, {}, [])
            if time.monotonic() >= deadline:
                return Settled(snap, view, None, off, starting)
            time.sleep(max(POLL, 2.0 * (time.monotonic() - began)))

    def log_sizes(self) -> dict[str, int]:
        return {h.role: len(self.lab.agent_log(h)) for h in self.lab.hosts}

    def joined_at(self, offsets: Mapping[str, int]) -> dict[str, float | None]:
        """Per host, when its agent first logged a lease (granted or adopted) after the
        offsets: the agent's own clock, the same machine's."""
        out: dict[str, float | None] = {}
        for h in self.lab.hosts:
            text = self.lab.agent_log(h)[offsets.get(h.role, 0) :]
            out[h.role] = None
            for line in text.splitlines():
                if "granted lease" in line or "adopted lease" in line:
                    with contextlib.suppress(ValueError, IndexError):
                        stamp = line.split()[0].replace("Z", "+00:00")
                        out[h.role] = datetime.fromisoformat(stamp).timestamp()
                        break
        return out

    def log_lines_since(self, offsets: Mapping[str, int]) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for h in self.lab.hosts:
            text = self.lab.agent_log(h)[offsets.get(h.role, 0) :]
            out[h.role] = {m: sum(m in line for line in text.splitlines()) for m in LOG_MARKERS}
        return out


@dataclass
class Settled:
    """What :meth:`Cluster.wait_settled` found."""

    snap: Snapshot
    view: ClusterView
    at: float | None  # when the settled snapshot was taken; None: not settled in time
    misplaced: dict[str, tuple[str, str]]  # VIP -> (holder, ranked first), when not settled
    starting: list[str]  # members still in their start-up wait, when not settled

    def report(self, vips: Mapping[str, IPAddress]) -> dict[str, Any]:
        """The JSON's account of a settle wait: what was still wrong if it timed out."""
        snap = self.snap
        settled = snap.settled(vips)
        off = {
            name: f"bound on {snap.kernel_holders(ip) or 'no host'}, key: "
            f"{snap.etcd.get(name) or 'none'}"
            for name, ip in sorted(vips.items())
            if name not in settled
        }
        return {
            "settled": self.at is not None,
            "converged": snap.converged(vips),
            # Not bound on exactly the one host its holder key names: an outage, a double
            # holder or a key nobody binds (a stuck handover), by name.
            "unconverged": len(off),
            "unconverged_vips": dict(list(off.items())[:MISPLACED_SAMPLE]),
            "misplaced": len(self.misplaced),
            "misplaced_vips": {
                v: f"{h}, ranked first: {w}"
                for v, (h, w) in sorted(self.misplaced.items())[:MISPLACED_SAMPLE]
            },
            "starting": self.starting,
            "members": sorted(self.view.members),
        }


def proc_figures(cluster: Cluster) -> dict[str, dict[str, Any]]:
    """Per host: agent and fence pid, VmRSS and VmHWM (kB), CPU seconds so far."""
    out: dict[str, dict[str, Any]] = {}
    for h in cluster.lab.hosts:
        proc = cluster.procs.get(h.role)
        agent = proc.pid if proc is not None and proc.poll() is None else None
        fence = fence_pid(agent) if agent is not None else None
        row: dict[str, Any] = {"agent_pid": agent, "fence_pid": fence}
        for who, pid in (("agent", agent), ("fence", fence)):
            row[f"{who}_rss_kb"] = status_kb(pid, "VmRSS") if pid else None
            row[f"{who}_hwm_kb"] = status_kb(pid, "VmHWM") if pid else None
            row[f"{who}_cpu_s"] = cpu_seconds(pid) if pid else None
        out[h.role] = row
    return out


def member_puts(events: Sequence[KeyEvent], after: int, upto: int) -> tuple[int, int]:
    """Member-record PUTs with ``after`` < revision <= ``upto``: how many, bytes written."""
    sel = [e for e in events if e.kind == "member" and e.put and after < e.revision <= upto]
    return len(sel), sum(e.size for e in sel)


# --------------------------------------------------------------------------- phases


def cold_start(cluster: Cluster, watch: HolderWatch, s: Settings) -> dict[str, Any]:
    lab = cluster.lab
    before = etcd_metrics(lab)
    offsets = cluster.log_sizes()
    rev0 = cluster.snapshot(hosts=[]).revision  # etcd only: no agent runs yet
    recorder = start_address_recorder(lab, lab.hosts, tag="cold")
    settled: Settled | None = None
    try:
        t0 = time.time()
        for h in lab.hosts:
            cluster.start(h)
        first, detected = cluster.wait_converged(s.cold_timeout)
        snap = first
        if detected is not None:
            # Converged is not done yet with placement: a VIP taken by another than its
            # ranked host (a peer whose record came late) moves preempt_delay later.
            settled = cluster.wait_settled(s.reconverge_timeout, [h.role for h in lab.hosts])
            snap = settled.snap
    finally:
        events = recorder.stop()
    after = etcd_metrics(lab)
    watch.caught_up(snap.revision)
    keys = count_key_events(watch.events(), rev0, snap.revision)
    at_converged = count_key_events(watch.events(), rev0, first.revision)
    members, member_bytes = member_puts(watch.events(), rev0, snap.revision)
    vip_ips = set(cluster.vips.values())
    vip_events = [e for e in events if e.ip in vip_ips and not e.initial]

    def last_change(upto: float | None) -> float | None:
        # The last kernel change before a snapshot is when what it shows came about.
        if upto is None:
            return None
        return max((e.at for e in vip_events if e.at <= upto), default=upto)

    converged_at = last_change(detected)
    settled_at = last_change(settled.at if settled is not None else None)
    joined = cluster.joined_at(offsets)
    all_joined = None if None in joined.values() else max(v for v in joined.values() if v)
    first_bind = min((e.at for e in vip_events if e.added), default=None)
    db0, db1 = db_size(before), db_size(after)

    def since(t: float | None, origin: float | None = t0) -> float | None:
        return None if t is None or origin is None else round(t - origin, 3)

    return {
        "converged": detected is not None,
        "converged_s": since(converged_at),
        "detected_s": since(detected),
        # The same from the moment the last agent had its lease: without the interpreters'
        # start-up, which on 2 cores and 5 agents at once is seconds.
        "all_joined_s": since(all_joined),
        # 0: converged before the last agent even had its lease.
        "converged_after_join_s": None
        if (after_join := since(converged_at, all_joined)) is None
        else max(0.0, after_join),
        "first_bind_s": since(first_bind),
        "joined_s": {role: since(t) for role, t in joined.items()},
        "timeout_s": s.cold_timeout,
        "held_at_end": len(snap.settled(cluster.vips)),
        "double_bound_at_end": len(snap.double_bound(cluster.vips)),
        "held_per_host": snap.held_per_host(),
        # Placement: converged is where the VIPs first all had one holder; settled is where
        # each is on its ranked host (preemptions after a late peer included). The key and
        # kernel counts run to settled (to converged if it never settled).
        "settled": settled is not None and settled.at is not None,
        "settled_s": since(settled_at),
        "settle": None if settled is None else settled.report(cluster.vips),
        "spread": spread(snap.held_per_host(), [h.role for h in lab.hosts]),
        "acquires": keys.acquires,
        "acquires_per_vip": round(keys.acquires / len(cluster.vips), 3),
        "releases": keys.releases,
        "key_updates": keys.updates,
        "acquires_at_converged": at_converged.acquires,
        "releases_at_converged": at_converged.releases,
        "member_puts": members,
        "member_put_bytes": member_bytes,
        # Binds that moved a VIP to a host (lifetime refreshes, which `ip monitor` reports as
        # adds too, left out), and unbinds.
        "kernel_binds": len(arrivals(vip_events)),
        "kernel_unbinds": sum(not e.added for e in vip_events),
        "db_before_bytes": db0,
        "db_after_bytes": db1,
        "db_growth_bytes": None if db0 is None or db1 is None else db1 - db0,
        "agents_exited": cluster.dead(),
    }


def capture_frames(lab: Lab, seconds: float) -> subprocess.Popen[bytes]:
    """Start the frame counter on every host's switch port; its JSON goes to its log."""
    argv = [sys.executable, "-m", "bench.capture", "--seconds", f"{seconds:g}"]
    for h in lab.hosts:
        argv += ["--port", h.role]
    log = lab.workdir / "sw.capture.log"
    log.unlink(missing_ok=True)
    root = str(Path(__file__).resolve().parent.parent)  # `-m bench.capture` from any cwd
    return lab.popen(lab.switch_ns, argv, log=log, env={"PYTHONPATH": root})


def read_frames(lab: Lab, proc: subprocess.Popen[bytes], seconds: float) -> dict[str, Any]:
    try:
        proc.wait(seconds + 15.0)
    except subprocess.TimeoutExpired:
        Lab.stop(proc)
        return {"error": "capture did not finish"}
    text = (lab.workdir / "sw.capture.log").read_text(errors="replace").strip()
    try:
        raw: dict[str, Any] = json.loads(text.splitlines()[-1])
    except (ValueError, IndexError):
        return {"error": f"capture failed: {text[-300:]}"}
    window = float(raw.pop("seconds"))
    out: dict[str, Any] = {"seconds": window, "hosts": {}}
    for role, port in raw.items():
        fps = dict.fromkeys(KINDS, 0.0)
        for kind, n in port["kinds"].items():
            fps[report_kind(kind)] += n / window
        out["hosts"][role] = {
            "fps": {k: round(v, 2) for k, v in fps.items()},
            "total_fps": round(sum(fps.values()), 2),
            "counts": port["kinds"],
            "drops": port["drops"],
        }
    return out


def idle(cluster: Cluster, watch: HolderWatch, seconds: float, s: Settings) -> dict[str, Any]:
    lab = cluster.lab
    time.sleep(SETTLE_AFTER_CONVERGED)
    offsets = cluster.log_sizes()
    snap0 = cluster.snapshot()
    m0 = etcd_metrics(lab)
    p0 = proc_figures(cluster)
    t0 = time.monotonic()
    frames_s = min(s.frames_seconds, seconds)
    capture = capture_frames(lab, frames_s)
    frames = read_frames(lab, capture, frames_s)
    time.sleep(max(0.0, seconds - (time.monotonic() - t0)))
    elapsed = time.monotonic() - t0
    p1 = proc_figures(cluster)
    m1 = etcd_metrics(lab)
    snap1 = cluster.snapshot()
    watch.caught_up(snap1.revision)
    keys = count_key_events(watch.events(), snap0.revision, snap1.revision)
    members, member_bytes = member_puts(watch.events(), snap0.revision, snap1.revision)
    logs = cluster.log_lines_since(offsets)
    procs: dict[str, dict[str, Any]] = {}
    for role, row in p1.items():
        before = p0.get(role, {})
        cpu: dict[str, float | None] = {}
        for who in ("agent", "fence"):
            a, b = before.get(f"{who}_cpu_s"), row[f"{who}_cpu_s"]
            same = row[f"{who}_pid"] is not None and before.get(f"{who}_pid") == row[f"{who}_pid"]
            pct = None
            if same and a is not None and b is not None:
                pct = round((b - a) / elapsed * 100.0, 2)  # the same process throughout
            cpu[f"{who}_cpu_pct"] = pct
        procs[role] = {**row, **cpu, "held": len(snap1.kernel.get(role, ()))}
    db0, db1 = db_size(m0), db_size(m1)
    handled = metric_sum(m1, "grpc_server_handled_total") - metric_sum(
        m0, "grpc_server_handled_total"
    )
    received = metric_sum(m1, "grpc_server_msg_received_total") - metric_sum(
        m0, "grpc_server_msg_received_total"
    )
    by_method: dict[str, float] = defaultdict(float)
    for name, v in m1.items():
        if name.startswith("grpc_server_handled_total{"):
            method = name.split('grpc_method="', 1)[1].split('"', 1)[0]
            by_method[method] += v - m0.get(name, 0.0)
    lost = sorted(
        name
        for name, ip in cluster.vips.items()
        if snap0.kernel_holders(ip) and snap0.kernel_holders(ip) != snap1.kernel_holders(ip)
    )
    return {
        "seconds": round(elapsed, 1),
        "procs": procs,
        "etcd_requests_per_s": round(handled / elapsed, 2),
        "etcd_db_growth_bytes": None if db0 is None or db1 is None else db1 - db0,
        "etcd_messages_per_s": round(received / elapsed, 2),
        "etcd_requests_per_s_by_method": {
            k: round(v / elapsed, 2) for k, v in sorted(by_method.items()) if v
        },
        "releases": keys.releases,
        "rebinds": keys.acquires,
        "key_updates": keys.updates,
        "member_puts": members,
        "member_put_bytes": member_bytes,
        "holder_changed": lost,
        "log_lines": logs,
        "deadline_misses": sum(v["lease deadline passed"] for v in logs.values()),
        "vanished": sum(v["vanished from"] for v in logs.values()),
        "released_lines": sum(v["released vip"] for v in logs.values()),
        "frames": frames,
        "converged_at_end": snap1.converged(cluster.vips),
        "agents_exited": cluster.dead(),
    }


def _inject(cluster: Cluster, mode: str, host: Node, fence: int | None) -> None:
    proc = cluster.procs[host.role]
    if mode == "sigterm":
        proc.send_signal(signal.SIGTERM)
    elif mode == "sigkill":
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    elif mode == "death":
        cluster.lab.cut_link(host)  # first: not a frame leaves the host from now on
        # Frozen first, so that the agent cannot start a new fence when it sees this one die.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGSTOP)
        if fence is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(fence, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    else:
        raise ValueError(f"unknown failover mode {mode!r}")


def _restore(cluster: Cluster, mode: str, host: Node, fence: int | None) -> list[str]:
    """Undo the failure: the old agent and fence gone, link up, agent started again."""
    notes = _stopped(cluster, mode, host, fence)
    if mode == "death":
        cluster.lab.restore_link(host)
    return notes + _rejoin(cluster, host)


def _stopped(cluster: Cluster, mode: str, host: Node, fence: int | None) -> list[str]:
    """Wait until the agent and its fence are gone (killed after a while); notes if killed."""
    notes: list[str] = []
    proc = cluster.procs[host.role]
    try:
        proc.wait(STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        notes.append(f"agent did not exit within {STOP_TIMEOUT:g}s of {mode}; killed")
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5.0)
    if fence is not None and not wait_gone(fence, FENCE_TIMEOUT):
        notes.append(f"fence {fence} still running {FENCE_TIMEOUT:g}s after its agent; killed")
        with contextlib.suppress(ProcessLookupError):
            os.kill(fence, signal.SIGKILL)
        wait_gone(fence, 5.0)
    return notes


def _rejoin(cluster: Cluster, host: Node) -> list[str]:
    """Start the agent again and wait until it is a member; notes if it is not."""
    notes: list[str] = []
    cluster.start(host)
    if not cluster.wait_member(host, REJOIN_TIMEOUT):
        restarted = cluster.procs[host.role]
        if restarted.poll() is not None:
            last = (cluster.lab.agent_log(host).strip().splitlines() or [""])[-1]
            notes.append(f"restarted agent on {host.role} exited {restarted.returncode}: {last}")
        else:
            notes.append(f"restarted agent on {host.role} not a member after {REJOIN_TIMEOUT:g}s")
    return notes


def failover(cluster: Cluster, watch: HolderWatch, mode: str, s: Settings) -> dict[str, Any]:
    lab = cluster.lab
    steady = cluster.wait_settled(s.reconverge_timeout)
    snap, converged = steady.snap, steady.at
    victim_role = max(sorted(snap.kernel), key=lambda r: len(snap.kernel[r]))
    victim = lab.host(victim_role)
    survivors = [h for h in lab.hosts if h.role != victim_role]
    moving = set(snap.kernel[victim_role])
    kept = {h.role: set(snap.kernel[h.role]) for h in survivors}
    fence = cluster.fence(victim)
    result: dict[str, Any] = {
        "mode": mode,
        # From a settled cluster (placement's too, see the module's docstring).
        "converged_before": converged is not None,
        "settle_before": steady.report(cluster.vips),
        "victim": victim_role,
        "moving": len(moving),
        "held_per_host_before": snap.held_per_host(),
        "fence_pid": fence,
    }
    recorder = start_address_recorder(lab, lab.hosts, tag=mode)
    moved_at: float | None = None
    try:
        rev0 = cluster.snapshot(hosts=[]).revision
        since = time.time()
        time.sleep(FAILOVER_PRE)
        t_fail = time.time()
        _inject(cluster, mode, victim, fence)
        # Waited for on the recorder's events, not on snapshots: reading new `ip monitor`
        # lines costs far less than asking the kernels, and the agents need the CPU now.
        if poll_until(
            lambda: moving <= bound_elsewhere(recorder.poll(), victim_role, t_fail),
            FAILOVER_WAIT[mode],
        ):
            moved_at = time.time()
        time.sleep(FAILOVER_SETTLE)
        until = time.time()
        rev1 = cluster.snapshot(hosts=[]).revision
    finally:
        events = recorder.stop()
    judged = judge_move(
        events, cluster.vips.values(), victim_role, moving, kept, t_fail, since, until
    )
    reheld = [t - t_fail for t in judged.reheld.values()]
    gone_from_victim = [t - t_fail for t in judged.victim_unbound.values()]
    doubles = [
        {"vip": cluster.by_ip[ip], "ms": round(dur * 1000.0, 1), "hosts": list(hosts)}
        for ip, dur, hosts in judged.doubles
    ]
    collateral = [
        {
            "vip": cluster.by_ip[o.ip],
            "host": o.host,
            "out_ms": round((o.out - t_fail) * 1000.0, 1),
            "back_ms": None if o.back is None else round((o.back - t_fail) * 1000.0, 1),
        }
        for o in judged.collateral
    ]
    watch.caught_up(rev1)
    survivor_vips = {cluster.by_ip[ip] for held in kept.values() for ip in held}
    key_collateral = count_key_events(watch.events(), rev0, rev1, vips=survivor_vips)
    moved_keys = count_key_events(
        watch.events(), rev0, rev1, vips={cluster.by_ip[ip] for ip in moving}
    )
    result.update(
        {
            "moved": len(reheld),
            "not_moved": len(moving) - len(reheld),
            "first_ms": round(min(reheld) * 1000.0, 1) if reheld else None,
            "last_ms": round(max(reheld) * 1000.0, 1) if reheld else None,
            "all_moved_detected_ms": None
            if moved_at is None
            else round((moved_at - t_fail) * 1000.0, 1),
            "victim_last_unbind_ms": round(max(gone_from_victim) * 1000.0, 1)
            if gone_from_victim
            else None,
            "double_holders": len(doubles),
            "double_holder_max_ms": round(
                max((d for _, d, _ in judged.doubles), default=0.0) * 1e3, 1
            ),
            "double_holder_vips": doubles[:20],
            "collateral": len(collateral),
            "collateral_vips": collateral[:50],
            "survivor_key_releases": key_collateral.releases,
            "moved_key_acquires": moved_keys.acquires,
            "moved_key_releases": moved_keys.releases,
            "wait_s": FAILOVER_WAIT[mode],
        }
    )
    # Undone: the victim rejoins and, with preemption, gets its share back preempt_delay
    # later. The next event starts only once that is over (settled, not only converged).
    moved_away = cluster.snapshot().settled(cluster.vips)
    started = time.monotonic()
    result["notes"] = _restore(cluster, mode, victim, fence)
    back = cluster.wait_settled(s.reconverge_timeout)
    result["reconverged"] = back.at is not None
    result["reconverge_s"] = round(time.monotonic() - started, 1)
    result["settle_after"] = back.report(cluster.vips)
    moved_back = changed_holders(moved_away, back.snap.settled(cluster.vips))
    result["moved_back"] = len(moved_back)
    result["moved_back_to_victim"] = sum(new == victim_role for _, new in moved_back.values())
    result["held_per_host_after"] = back.snap.held_per_host()
    return result


def _log_time(text: str, needle: str) -> float | None:
    """Unix time of the first agent log line containing ``needle`` (its own clock)."""
    for line in text.splitlines():
        if needle in line:
            with contextlib.suppress(ValueError, IndexError):
                return datetime.fromisoformat(line.split()[0].replace("Z", "+00:00")).timestamp()
    return None


def _binds(
    events: Sequence[AddressEvent],
    ips: set[IPAddress],
    t0: float,
    t1: float,
    host: str | None = None,
    *,
    not_on: str | None = None,
) -> list[float]:
    """Times of the kernel binds of ``ips`` in [t0, t1] that moved an address to a host
    (:func:`bench.observe.arrivals`: lifetime refreshes left out), on ``host`` only or on
    any host but ``not_on``, if given."""
    return sorted(
        e.at
        for e in arrivals(events, t0, t1)
        if e.ip in ips and (host is None or e.host == host) and e.host != not_on
    )


def _ms_after(t: float | None, origin: float) -> float | None:
    return None if t is None else round((t - origin) * 1000.0, 1)


def _doubles(events: Sequence[AddressEvent], ips: set[IPAddress], t0: float, t1: float) -> int:
    by_ip: dict[IPAddress, list[AddressEvent]] = defaultdict(list)
    for e in events:
        if e.ip in ips:
            by_ip[e.ip].append(e)
    return sum(
        bool(check_history(evs, [], ip, t1, since=t0).double_holder) for ip, evs in by_ip.items()
    )


def churn(cluster: Cluster, watch: HolderWatch, s: Settings) -> dict[str, Any]:
    """The busiest host leaves gracefully, then rejoins (the module's docstring, phase 4)."""
    lab = cluster.lab
    hosts = [h.role for h in lab.hosts]
    n, m = len(cluster.vips), len(hosts)
    ips = set(cluster.vips.values())
    steady = cluster.wait_settled(s.reconverge_timeout, hosts)
    before = steady.snap.settled(cluster.vips)
    load = {r: sum(h == r for h in before.values()) for r in hosts}
    role = max(sorted(hosts), key=lambda r: load[r])
    host = lab.host(role)
    own = {v for v, h in before.items() if h == role}
    own_ips = {cluster.vips[v] for v in own}
    result: dict[str, Any] = {
        "host": role,
        "ideal": round(n / m, 1),  # N/M: what one host's leave or join should move
        "from_settled": steady.at is not None,
        "settle_before": steady.report(cluster.vips),
        "placement": asdict(PLACEMENT),
    }
    recorder = start_address_recorder(lab, lab.hosts, tag="churn")
    events: list[AddressEvent] = []
    try:
        rev0 = cluster.snapshot(hosts=[]).revision
        fence = cluster.fence(host)
        t_leave = time.time()
        cluster.procs[role].send_signal(signal.SIGTERM)
        notes = _stopped(cluster, "sigterm", host, fence)
        left = cluster.wait_settled(s.reconverge_timeout, [r for r in hosts if r != role])
        t_left = time.time()
        after_leave = left.snap.settled(cluster.vips)
        offset = len(lab.agent_log(host))
        t_join = time.time()
        notes += _rejoin(cluster, host)
        joined = cluster.wait_settled(s.reconverge_timeout, hosts)
        t_joined = time.time()
    finally:
        events = recorder.stop()
    after_join = joined.snap.settled(cluster.vips)
    watch.caught_up(joined.snap.revision)

    # Leave: ideally exactly its own VIPs move, each once.
    moved = changed_holders(before, after_leave)
    leave_keys = count_key_events(watch.events(), rev0, left.snap.revision)
    own_binds = _binds(events, own_ips, t_leave, t_left, not_on=role)
    all_binds = _binds(events, ips, t_leave, t_left)
    result["leave"] = {
        "held": len(own),
        "settled": left.at is not None,
        "settle": left.report(cluster.vips),
        "settle_s": None if left.at is None else round(left.at - t_leave, 2),
        "changed": len(moved),
        "changed_own": sum(v in own for v in moved),
        "changed_others": sum(v not in own for v in moved),
        "others_sample": dict(sorted((v, list(h)) for v, h in moved.items() if v not in own)[:20]),
        "not_reheld": sorted(own - set(after_leave))[:MISPLACED_SAMPLE],
        "acquires": leave_keys.acquires,
        "releases": leave_keys.releases,
        "kernel_binds": len(all_binds),
        "first_ms": _ms_after(own_binds[0] if own_binds else None, t_leave),
        "last_own_ms": _ms_after(own_binds[-1] if own_binds else None, t_leave),
        "last_any_ms": _ms_after(all_binds[-1] if all_binds else None, t_leave),
        "double_holders": _doubles(events, ips, t_leave, t_left),
        "spread": spread(left.snap.held_per_host(), [r for r in hosts if r != role]),
    }

    # Rejoin: ideally about N/M VIPs move, all of them to the host that came back.
    back = changed_holders(after_leave, after_join)
    join_keys = count_key_events(watch.events(), left.snap.revision, joined.snap.revision)
    log = lab.agent_log(host)[offset:]
    member_at = _log_time(log, "granted lease") or _log_time(log, "adopted lease")
    ready_at = _log_time(log, "start-up wait over")
    to_it = _binds(events, ips, t_join, t_joined, role)
    any_bind = _binds(events, ips, t_join, t_joined)
    first, last = (to_it[0], any_bind[-1]) if to_it and any_bind else (None, None)
    rebalance_s = None if first is None or last is None else round(last - first, 3)
    result["rejoin"] = {
        "settled": joined.at is not None,
        "settle": joined.report(cluster.vips),
        "settle_s": None if joined.at is None else round(joined.at - t_join, 2),
        "changed": len(back),
        "to_host": sum(new == role for _, new in back.values()),
        "between_others": sum(new != role for _, new in back.values()),
        "returned_home": sum(v in own and after_join.get(v) == role for v in back),
        "acquires": join_keys.acquires,
        "releases": join_keys.releases,
        "kernel_binds": len(any_bind),
        "member_s": None if member_at is None else round(member_at - t_join, 2),
        "ready_s": None if ready_at is None else round(ready_at - t_join, 2),
        "first_move_s": None if first is None else round(first - t_join, 2),
        "last_move_s": None if last is None else round(last - t_join, 2),
        "rebalance_s": rebalance_s,
        "vips_per_s": round(len(back) / rebalance_s, 1) if rebalance_s else None,
        "double_holders": _doubles(events, ips, t_join, t_joined),
        "spread": spread(joined.snap.held_per_host(), hosts),
    }
    result["notes"] = notes
    return result


# --------------------------------------------------------------------------- one N


def run_n(
    n: int, s: Settings, run_dir: Path, labs: list[str], results: list[dict[str, Any]]
) -> dict[str, Any]:
    """One lab with ``n`` VIPs, every phase; its result is in ``results`` from the start, so
    an interrupt keeps what was measured."""
    started = time.monotonic()
    workdir = run_dir / f"n{n}"
    lab = Lab(hosts=s.hosts, workdir=workdir)
    labs.append(lab.lab_id)
    vips = Lab.scale_vips(n)
    cluster = Cluster(lab, vips)
    fams = [ip_address(a).version for _, a in vips]
    result: dict[str, Any] = {
        "vips": n,
        "v4": fams.count(4),
        "v6": fams.count(6),
        "hosts": s.hosts,
        "lab_id": lab.lab_id,
        "error": None,
        # Other work on the machine skews every figure here: a lab test of someone else's
        # running meanwhile shows as load.
        "loadavg_start": os.getloadavg(),
    }
    results.append(result)
    console.rule(f"{n} VIPs ({fams.count(4)} v4, {fams.count(6)} v6), lab {lab.lab_id}")
    watch: HolderWatch | None = None
    try:
        lab.up()
        cluster.write_configs()
        watch = HolderWatch(lab, cluster.name).start()
        cold = cold_start(cluster, watch, s)
        result["cold_start"] = cold
        console.print(
            "  cold start: "
            + (
                f"converged in {cold['converged_s']:.2f} s"
                if cold["converged"]
                else f"[red]not converged after {s.cold_timeout:g} s[/red] "
                f"({cold['held_at_end']}/{n} held)"
            )
            + f", {cold['acquires']} acquires, {cold['releases']} releases, per host "
            f"{cold['held_per_host']}"
        )
        console.print(
            "  placement: "
            + (
                f"settled in {cold['settled_s']:.2f} s"
                if cold["settled"]
                else f"[red]not settled: {why_unsettled(cold['settle'])}[/red]"
            )
            + f", spread {cold['spread']['per_host']} (max {cold['spread']['max_dev_pct']} % "
            f"off N/M), {cold['acquires_per_vip']} acquires per VIP"
        )
        if not cold["converged"] or not cold["settled"]:
            # It may never converge: do not wait the full time before and after each failover.
            s = replace(s, reconverge_timeout=min(s.reconverge_timeout, UNSTEADY_WAIT))
        window = max(s.cpu_seconds, s.idle_minutes * 60.0) if n == max(s.vips) else s.cpu_seconds
        console.print(f"  idle for {window:g} s …")
        quiet = idle(cluster, watch, window, s)
        result["idle"] = quiet
        console.print(
            "  idle: agent CPU "
            + ", ".join(
                f"{r}:{p['agent_cpu_pct']}%({p['held']})" for r, p in quiet["procs"].items()
            )
            + f"; etcd {quiet['etcd_requests_per_s']} req/s; releases {quiet['releases']}, "
            f"rebinds {quiet['rebinds']}, deadline misses {quiet['deadline_misses']}"
        )
        result["failovers"] = []
        for mode in s.modes:
            fo = failover(cluster, watch, mode, s)
            result["failovers"].append(fo)
            console.print(
                f"  {mode:<8} {fo['victim']} ({fo['moving']} VIPs): first {fo['first_ms']} ms,"
                f" last {fo['last_ms']} ms, not moved {fo['not_moved']}, double holders "
                f"{fo['double_holders']}, collateral {fo['collateral']}"
                f" [dim](re-converged: {fo['reconverged']}, {fo['reconverge_s']} s)[/dim]"
                + (f" [yellow]{'; '.join(fo['notes'])}[/yellow]" if fo["notes"] else "")
                + ("" if fo["reconverged"] else f" [red]{why_unsettled(fo['settle_after'])}[/red]")
            )
        if s.churn:
            ch = churn(cluster, watch, s)
            result["churn"] = ch
            lv, rj = ch["leave"], ch["rejoin"]
            console.print(
                f"  churn: {ch['host']} leaves with {lv['held']} VIPs (N/M {ch['ideal']}): "
                f"{lv['changed']} changed holder ({lv['changed_others']} not its own), "
                f"{lv['acquires']} acquires; rejoins: {rj['changed']} moved "
                f"({rj['to_host']} to it) in {_fmt(rj['rebalance_s'])} s from "
                f"{_fmt(rj['first_move_s'])} s after the start"
                + ("" if lv["settled"] and rj["settled"] else " [red](not settled)[/red]")
                + (f" [yellow]{'; '.join(ch['notes'])}[/yellow]" if ch["notes"] else "")
            )
        result["final"] = proc_figures(cluster)
    except (ScaleError, LabError, TimeoutError, subprocess.SubprocessError, OSError) as exc:
        result["error"] = f"{type(exc).__name__}: {exc}"
        console.print(f"[red]aborted {n} VIPs: {result['error']}[/red]")
    except KeyboardInterrupt:
        result["error"] = "interrupted"
        raise
    finally:
        with interrupts_deferred():
            if watch is not None:
                watch.stop()
            lab.down()
            for path in workdir.glob("*.data"):
                shutil.rmtree(path, ignore_errors=True)
            for path in workdir.glob("*.addrmon.*.log"):
                path.unlink(missing_ok=True)
            result["seconds"] = round(time.monotonic() - started, 1)
            result["loadavg_end"] = os.getloadavg()
    return result


# --------------------------------------------------------------------------- report


def _mb(kb: float | None) -> str:
    return "-" if kb is None else f"{kb / 1024:.0f}"


def _max(values: Sequence[float | None]) -> float | None:
    got = [v for v in values if v is not None]
    return max(got) if got else None


def per_n_rows(results: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per N: the figures the targets talk about."""
    rows = []
    for r in results:
        cold = r.get("cold_start") or {}
        quiet = r.get("idle") or {}
        procs = list((quiet.get("procs") or {}).values())
        fos = {fo["mode"]: fo for fo in r.get("failovers") or []}
        frames = (quiet.get("frames") or {}).get("hosts") or {}
        rows.append(
            {
                "vips": r["vips"],
                "cold_converged": cold.get("converged"),
                "cold_s": cold.get("converged_s"),
                "cold_after_join_s": cold.get("converged_after_join_s"),
                "cold_held": cold.get("held_at_end"),
                "cold_timeout_s": cold.get("timeout_s"),
                "cold_acquires": cold.get("acquires"),
                "cold_releases": cold.get("releases"),
                "cold_acquires_per_vip": cold.get("acquires_per_vip"),
                "cold_settled": cold.get("settled"),
                "cold_settled_s": cold.get("settled_s"),
                "cold_settle": cold.get("settle"),
                "spread": cold.get("spread"),
                "db_growth_bytes": cold.get("db_growth_bytes"),
                "agent_rss_kb": _max([p.get("agent_rss_kb") for p in procs]),
                "agent_hwm_kb": _max([p.get("agent_hwm_kb") for p in procs]),
                "fence_rss_kb": _max([p.get("fence_rss_kb") for p in procs]),
                "agent_cpu_pct": _max([p.get("agent_cpu_pct") for p in procs]),
                "fence_cpu_pct": _max([p.get("fence_cpu_pct") for p in procs]),
                "held": {role: p.get("held") for role, p in (quiet.get("procs") or {}).items()},
                "etcd_rps": quiet.get("etcd_requests_per_s"),
                "idle_db_growth_bytes": quiet.get("etcd_db_growth_bytes"),
                "idle_member_puts": quiet.get("member_puts"),
                "idle_s": quiet.get("seconds"),
                "idle_releases": quiet.get("releases"),
                "idle_rebinds": quiet.get("rebinds"),
                "idle_deadline_misses": quiet.get("deadline_misses"),
                "idle_log_lost": (quiet.get("vanished") or 0) + (quiet.get("released_lines") or 0)
                if quiet
                else None,
                "frames_fps": {
                    k: round(sum(h["fps"][k] for h in frames.values()) / len(frames), 2)
                    for k in KINDS
                }
                if frames
                else {},
                "frames_fps_max_host": _max([h["total_fps"] for h in frames.values()]),
                "failovers": fos,
                "churn": r.get("churn"),
                "error": r.get("error"),
            }
        )
    return rows


def _fmt(v: object, unit: str = "") -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:g}{unit}"
    return f"{v}{unit}"


def _table(title: str, *columns: str, left: Sequence[str] = ()) -> Table:
    """A console table with these columns, right-justified but those in ``left``."""
    t = Table(title=title)
    for col in columns:
        t.add_column(col, justify="left" if col in left else "right")
    return t


def print_tables(rows: Sequence[dict[str, Any]]) -> None:
    t = _table(
        "scale: cold start and footprint (per VIP count; RSS: max over hosts)",
        "VIPs",
        "cold start s",
        "after last join s",
        "acquires",
        "releases",
        "etcd db +KB",
        "agent RSS MB",
        "agent peak MB",
        "fence RSS MB",
    )
    for r in rows:
        cold = (
            _fmt(r["cold_s"])
            if r["cold_converged"]
            else f"[red]none ({_fmt(r['cold_held'])}/{r['vips']} held)[/red]"
        )
        growth = r["db_growth_bytes"]
        t.add_row(
            str(r["vips"]),
            cold,
            _fmt(r["cold_after_join_s"]),
            _fmt(r["cold_acquires"]),
            _fmt(r["cold_releases"]),
            "-" if growth is None else f"{growth / 1024:.0f}",
            _mb(r["agent_rss_kb"]),
            _mb(r["agent_hwm_kb"]),
            _mb(r["fence_rss_kb"]),
        )
    console.print(t)
    i = _table(
        "scale: idle (CPU: max over agents; frames/s: mean sent per host)",
        "VIPs",
        "window s",
        "held per host",
        "agent CPU %",
        "fence CPU %",
        "etcd req/s",
        "member puts",
        "etcd db +KB",
        "releases",
        "rebinds",
        "deadline lines",
        "lost-VIP lines",
        *(f"{k} /s" for k in KINDS),
        left=("held per host",),
    )
    for r in rows:
        fps = r["frames_fps"]
        i.add_row(
            str(r["vips"]),
            _fmt(r["idle_s"]),
            " ".join(f"{k}:{v}" for k, v in r["held"].items()),
            _fmt(r["agent_cpu_pct"]),
            _fmt(r["fence_cpu_pct"]),
            _fmt(r["etcd_rps"]),
            _fmt(r["idle_member_puts"]),
            "-" if r["idle_db_growth_bytes"] is None else f"{r['idle_db_growth_bytes'] / 1024:.0f}",
            _fmt(r["idle_releases"]),
            _fmt(r["idle_rebinds"]),
            _fmt(r["idle_deadline_misses"]),
            _fmt(r["idle_log_lost"]),
            *(_fmt(fps.get(k)) for k in KINDS),
        )
    console.print(i)
    f = _table(
        "scale: mass failover of the busiest host (ms after the failure)",
        "VIPs",
        "mode",
        "from steady",
        "victim",
        "moving",
        "first",
        "last",
        "not moved",
        "double holders",
        "collateral",
        "re-converged",
    )
    for r in rows:
        for mode, fo in r["failovers"].items():
            f.add_row(
                str(r["vips"]),
                mode,
                "yes" if fo["converged_before"] else "[red]no[/red]",
                fo["victim"],
                str(fo["moving"]),
                _fmt(fo["first_ms"]),
                _fmt(fo["last_ms"]),
                str(fo["not_moved"]),
                _red(fo["double_holders"]),
                _red(fo["collateral"]),
                f"{fo['reconverged']} ({fo['reconverge_s']} s)",
            )
    console.print(f)
    p = _table(
        "scale: placement (spread once settled; one host leaves, then rejoins)",
        *PLACEMENT_COLUMNS,
        left=PLACEMENT_COLUMNS[1:2] + PLACEMENT_COLUMNS[4:7],
    )
    for r in rows:
        p.add_row(*placement_cells(r))
    console.print(p)


def _spread_text(sp: Mapping[str, Any] | None) -> str:
    if not sp:
        return "-"
    counts = "/".join(str(c) for c in sp["per_host"].values())
    return f"{counts} (N/M {sp['even']:g}, max {sp['max_dev_pct']:g} % off)"


def _settled_after(fo: Mapping[str, Any]) -> str:
    """A failover's restore: VIPs moved back to the victim, and how long placement took."""
    back = f"{fo.get('moved_back_to_victim', '-')}/{fo.get('moved_back', '-')} to {fo['victim']}"
    if fo["reconverged"]:
        return f"{back}, settled in {fo['reconverge_s']} s"
    why = why_unsettled(fo.get("settle_after"))
    return f"{back}, **not settled** in {fo['reconverge_s']} s ({why})"


def why_unsettled(report: Mapping[str, Any] | None) -> str:
    """Why a settle wait timed out, in short (Settled.report)."""
    if not report:
        return "-"
    why = [f"{report['misplaced']} misplaced"] if report.get("misplaced") else []
    if report.get("unconverged"):
        why.append(
            f"{report['unconverged']} not held once: {', '.join(report['unconverged_vips'])}"
        )
    if report.get("starting"):
        why.append(f"starting: {', '.join(report['starting'])}")
    if not why and not report.get("converged", True):
        why.append("not converged")
    return "; ".join(why) or "members changed"


def placement_cells(r: Mapping[str, Any]) -> list[str]:
    """One row of the placement table (console and markdown)."""
    ch = r.get("churn") or {}
    lv, rj = ch.get("leave") or {}, ch.get("rejoin") or {}
    settled = (
        ""
        if r.get("cold_settled")
        else f" (**not settled**: {why_unsettled(r.get('cold_settle'))})"
    )
    leave = rejoin = rebalance = "-"
    if lv:
        leave = (
            f"{ch['host']} ({lv['held']}): {lv['changed']} = {lv['changed_own']} own + "
            f"{lv['changed_others']} others; {lv['acquires']} acquires"
            + ("" if lv["settled"] else f"; **not settled** ({why_unsettled(lv['settle'])})")
        )
    if rj:
        rejoin = (
            f"{rj['changed']}: {rj['to_host']} to it + {rj['between_others']} others"
            f" ({rj['returned_home']} home); {rj['acquires']} acquires"
            + ("" if rj["settled"] else f"; **not settled** ({why_unsettled(rj['settle'])})")
        )
        rebalance = (
            f"{_fmt(rj['first_move_s'])} → {_fmt(rj['last_move_s'])} s "
            f"({_fmt(rj['rebalance_s'])} s, {_fmt(rj['vips_per_s'])}/s)"
        )
    return [
        str(r["vips"]),
        _spread_text(r.get("spread")) + settled,
        _fmt(r.get("cold_acquires_per_vip")),
        _fmt(ch.get("ideal")),
        leave,
        rejoin,
        rebalance,
        _fmt(None if not lv else lv["double_holders"] + rj.get("double_holders", 0)),
    ]


PLACEMENT_COLUMNS = (
    "VIPs",
    "spread after cold start",
    "acquires / VIP",
    "N/M",
    "leave: host (held): changed",
    "rejoin: moved back",
    "rebalance after rejoin",
    "double holders",
)


def _red(n: int) -> str:
    return f"[red]{n}[/red]" if n else "0"


Target = tuple[str, str, str, bool | None]  # target, measured, at which N, met?


def targets(rows: Sequence[dict[str, Any]]) -> list[Target]:
    """The issue's targets next to what was measured (None: not measured in this run)."""
    by_n = {r["vips"]: r for r in rows}
    big = max(by_n) if by_n else 0
    small = min(by_n) if by_n else 0
    top = by_n.get(big, {})
    low = by_n.get(small, {})
    out: list[Target] = []

    cold_ok = top.get("cold_converged")
    cold_s = top.get("cold_s")
    out.append(
        (
            "cold start: every VIP held ≤ 10 s",
            f"{cold_s:g} s" if cold_ok else f"not converged ({top.get('cold_held')}/{big} held)",
            str(big),
            bool(cold_ok and cold_s is not None and cold_s <= 10.0),
        )
    )
    rel = top.get("cold_releases")
    out.append(
        (
            "cold start: releases ≤ VIPs",
            f"{rel} releases, {top.get('cold_acquires')} acquires"
            + ("" if cold_ok else f" in {top.get('cold_timeout_s')} s, not converged"),
            str(big),
            None if rel is None or not cold_ok else rel <= big,
        )
    )
    per_vip = top.get("cold_acquires_per_vip")
    out.append(
        (
            "cold start: ≤ 1 acquire per VIP (to settled placement)",
            f"{_fmt(per_vip)} ({top.get('cold_acquires')} for {big} VIPs)"
            + ("" if top.get("cold_settled") else ", placement not settled"),
            str(big),
            None if per_vip is None else bool(top.get("cold_settled")) and per_vip <= 1.0,
        )
    )
    sp = top.get("spread")
    if sp:
        out.append(
            (
                "cold start: spread within 20 % of N/M",
                f"{'/'.join(str(c) for c in sp['per_host'].values())}, max "
                f"{sp['max_dev_pct']:g} % off {sp['even']:g}",
                str(big),
                sp["max_dev_pct"] <= 20.0,
            )
        )
    ch = top.get("churn")
    if ch:
        lv, rj = ch["leave"], ch["rejoin"]
        out.append(
            (
                "a host leaves: only its own VIPs change holder",
                f"{lv['changed_own']}/{lv['held']} own + {lv['changed_others']} others "
                f"(N/M {ch['ideal']:g}); {lv['acquires']} acquires",
                str(big),
                lv["settled"] and lv["changed_others"] == 0 and lv["changed_own"] == lv["held"],
            )
        )
        out.append(
            (
                "it rejoins: ≈ N/M move back, all to it (± 20 %)",
                f"{rj['changed']} ({rj['to_host']} to it, {rj['between_others']} others), "
                f"N/M {ch['ideal']:g}",
                str(big),
                rj["settled"]
                and rj["between_others"] == 0
                and abs(rj["changed"] - ch["ideal"]) <= 0.2 * ch["ideal"],
            )
        )
    rss, hwm = top.get("agent_rss_kb"), top.get("agent_hwm_kb")
    out.append(
        (
            "agent RSS ≤ 80 MB",
            f"{_mb(rss)} MB (peak {_mb(hwm)} MB)",
            str(big),
            None if rss is None else max(rss, hwm or 0) <= 80 * 1024,
        )
    )
    frss = _max([r.get("fence_rss_kb") for r in rows])
    out.append(
        ("fence RSS ≤ 30 MB", f"{_mb(frss)} MB", "all", None if frss is None else frss <= 30 * 1024)
    )
    cpu_rows = [(low, 1.0), (top, 2.0)] if big != small else [(top, 1.0 if big <= 10 else 2.0)]
    for r, limit in cpu_rows:
        cpu = r.get("agent_cpu_pct")
        out.append(
            (
                f"idle CPU per agent ≤ {limit:g} % of a core",
                _fmt(cpu, " %"),
                str(r.get("vips")),
                None if cpu is None else cpu <= limit,
            )
        )
    rates = [(int(r["vips"]), float(r["etcd_rps"])) for r in rows if r.get("etcd_rps") is not None]
    if rates:
        lo, hi = min(v for _, v in rates), max(v for _, v in rates)
        out.append(
            (
                "etcd idle requests/s independent of VIPs",
                ", ".join(f"{v:g} at {k}" for k, v in rates),
                "all",
                hi <= lo * 1.25 + 1.0,
            )
        )
    growth = top.get("db_growth_bytes")
    out.append(
        (
            "etcd db growth per cold start ≤ 1 MB",
            "-" if growth is None else f"{growth / 1024:.0f} KB",
            str(big),
            None if growth is None else growth <= 1 << 20,
        )
    )
    for mode, label, limit in (
        ("sigterm", "mass failover, SIGTERM: last VIP re-held ≤ 100 ms", 100.0),
        ("sigkill", "mass failover, agent SIGKILL: last VIP re-held ≤ 150 ms", 150.0),
        (
            "death",
            f"mass failover, host death: last VIP re-held ≤ TTL + 1 s = {TTL + 1} s",
            (TTL + 1) * 1000.0,
        ),
    ):
        fo = top.get("failovers", {}).get(mode)
        if fo is None:
            continue
        last = fo["last_ms"]
        measured = f"{_fmt(last)} ms for {fo['moved']}/{fo['moving']} VIPs" + (
            f", {fo['not_moved']} not moved" if fo["not_moved"] else ""
        )
        out.append(
            (label, measured, str(big), last is not None and not fo["not_moved"] and last <= limit)
        )
    coll = [(r["vips"], m, fo["collateral"]) for r in rows for m, fo in r["failovers"].items()]
    dbl = [(r["vips"], m, fo["double_holders"]) for r in rows for m, fo in r["failovers"].items()]
    dbl += [
        (r["vips"], phase, r["churn"][phase]["double_holders"])
        for r in rows
        if r.get("churn")
        for phase in ("leave", "rejoin")
    ]
    for label, items in (("collateral outages 0", coll), ("double holders 0", dbl)):
        if items:
            total = sum(c for _, _, c in items)
            worst = [f"{c} ({m} at {n})" for n, m, c in items if c]
            out.append(
                (label, ", ".join(worst) if worst else "0 in every event", "all", total == 0)
            )
    idle_bad = [
        (
            r["vips"],
            r["idle_releases"],
            r["idle_rebinds"],
            r["idle_deadline_misses"],
            r["idle_log_lost"],
        )
        for r in rows
        if r.get("idle_releases") is not None
    ]
    if idle_bad:
        n, rel_, reb, miss, log_lost = next((x for x in idle_bad if x[0] == big), idle_bad[-1])
        out.append(
            (
                "idle: releases, re-binds, deadline misses 0",
                f"{rel_} / {reb} / {miss} (log: {log_lost} lost-VIP lines)"
                f" over {_fmt(top.get('idle_s'))} s",
                str(n),
                rel_ == reb == miss == log_lost == 0,
            )
        )
    return out


def results_markdown(rows: Sequence[dict[str, Any]]) -> str:
    """The per-N and the failover tables as markdown, for docs/benchmarks.md."""

    def cold(r: dict[str, Any]) -> str:
        if r["cold_converged"]:
            return f"{r['cold_s']:.1f} s ({_fmt(r['cold_after_join_s'])} s after the last join)"
        return f"**none** in {_fmt(r['cold_timeout_s'])} s ({_fmt(r['cold_held'])} held)"

    def growth(r: dict[str, Any]) -> str:
        g = r["db_growth_bytes"]
        return "-" if g is None else f"{g / 1024:.0f} KB"

    head = (
        "| VIPs | cold start | acquires / releases | etcd db growth | agent RSS (peak) "
        "| fence RSS | held per host | idle CPU agent / fence | etcd req/s "
        "| idle releases / rebinds / deadline / lost-VIP lines "
        "| frames/s per host: ARP, NA, MLD, other |\n"
        "|--:|---|---|--:|--:|--:|---|---|--:|---|---|\n"
    )
    lines = []
    for r in rows:
        fps = r["frames_fps"]
        lines.append(
            "| "
            + " | ".join(
                [
                    str(r["vips"]),
                    cold(r),
                    f"{_fmt(r['cold_acquires'])} / {_fmt(r['cold_releases'])}",
                    growth(r),
                    f"{_mb(r['agent_rss_kb'])} MB ({_mb(r['agent_hwm_kb'])})",
                    f"{_mb(r['fence_rss_kb'])} MB",
                    " ".join(f"{k}:{v}" for k, v in r["held"].items()),
                    f"{_fmt(r['agent_cpu_pct'])} % / {_fmt(r['fence_cpu_pct'])} %",
                    _fmt(r["etcd_rps"]),
                    " / ".join(
                        _fmt(r[k])
                        for k in (
                            "idle_releases",
                            "idle_rebinds",
                            "idle_deadline_misses",
                            "idle_log_lost",
                        )
                    )
                    + f" in {_fmt(r['idle_s'])} s",
                    ", ".join(_fmt(fps.get(k)) for k in KINDS) if fps else "-",
                ]
            )
            + " |"
        )
    fo_head = (
        "| VIPs | event | victim (VIPs) | first re-held | last re-held | not moved "
        "| double holders | collateral | from steady | undone: moved back, settled |\n"
        "|--:|---|---|--:|--:|--:|--:|--:|---|---|\n"
    )
    fo_lines = [
        f"| {r['vips']} | {mode} | {fo['victim']} ({fo['moving']}) | {_fmt(fo['first_ms'])} ms "
        f"| {_fmt(fo['last_ms'])} ms | {fo['not_moved']} | {fo['double_holders']} "
        f"| {fo['collateral']} | {'yes' if fo['converged_before'] else '**no**'} "
        f"| {_settled_after(fo)} |"
        for r in rows
        for mode, fo in r["failovers"].items()
    ]
    pl_head = "| " + " | ".join(PLACEMENT_COLUMNS) + " |\n|--:|---|--:|--:|---|---|---|--:|\n"
    pl_lines = ["| " + " | ".join(placement_cells(r)) + " |" for r in rows]
    return (
        head
        + "\n".join(lines)
        + "\n\n"
        + fo_head
        + "\n".join(fo_lines)
        + "\n\n"
        + pl_head
        + "\n".join(pl_lines)
        + "\n"
    )


def _met(ok: bool | None) -> str:
    return "-" if ok is None else ("yes" if ok else "**no**")


def targets_markdown(items: Sequence[Target]) -> str:
    lines = ["| target | measured | VIPs | met? |", "|---|---|--:|---|"]
    lines += [f"| {t} | {m} | {n} | {_met(ok)} |" for t, m, n, ok in items]
    return "\n".join(lines) + "\n"


def print_targets(items: Sequence[Target]) -> None:
    cols = ("target", "measured", "VIPs", "met?")
    t = _table("scale: the issue's targets", *cols, left=cols)
    for target, measured, n, ok in items:
        met = "-" if ok is None else ("[green]yes[/green]" if ok else "[red]no[/red]")
        t.add_row(target, measured, n, met)
    console.print(t)


# --------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.scale", description=__doc__.split("\n\n")[0])
    p.add_argument("--vips", help="comma-separated VIP counts (default 10,200,1000; quick 10,200)")
    p.add_argument(
        "--quick", action="store_true", help="10 and 200 VIPs, 1 min idle, shorter windows"
    )
    p.add_argument("--hosts", type=int, default=HOSTS)
    p.add_argument("--idle-minutes", type=float, help="idle at the largest N (default 10; quick 1)")
    p.add_argument(
        "--cpu-seconds", type=float, help="idle window at the other N (default 60; quick 20)"
    )
    p.add_argument(
        "--frames-seconds", type=float, help="frame capture window (default 10; quick 5)"
    )
    p.add_argument(
        "--cold-timeout", type=float, help="s a cold start may take (default 60; quick 30)"
    )
    p.add_argument(
        "--modes", default=",".join(FAILOVER_MODES), help=f"({','.join(FAILOVER_MODES)})"
    )
    p.add_argument(
        "--no-churn", action="store_true", help="skip the placement phase (a host leaves, rejoins)"
    )
    p.add_argument("--out", type=Path, default=Path("bench-results"))
    args = p.parse_args(argv)
    q = args.quick
    defaults: dict[str, float] = {
        "idle_minutes": 1.0 if q else 10.0,
        "cpu_seconds": 20.0 if q else 60.0,
        "frames_seconds": 5.0 if q else 10.0,
        "cold_timeout": 30.0 if q else 60.0,
    }
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    try:
        args.vip_counts = [int(v) for v in (args.vips or "").split(",") if v] or list(
            QUICK_VIPS if q else DEFAULT_VIPS
        )
    except ValueError:
        p.error(f"--vips: not a comma-separated list of numbers: {args.vips!r}")
    for n in args.vip_counts:
        try:
            Lab.scale_vips(n)
        except ValueError as exc:
            p.error(str(exc))
        if n < 1:
            p.error("--vips: every count must be at least 1")
    if not 2 <= args.hosts <= 20:
        p.error("--hosts must be between 2 and 20")
    for m in args.modes.split(","):
        if m and m not in FAILOVER_MODES:
            p.error(f"unknown mode {m!r}")
    for key in ("idle_minutes", "cpu_seconds", "frames_seconds", "cold_timeout"):
        if not 0 < getattr(args, key) <= 600:
            p.error(f"--{key.replace('_', '-')} must be in (0, 600]")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if cannot_run("bench-scale", ("ip", "etcd", "etcdctl", "nft")):
        return 2
    interrupt_on_signals()
    settings = Settings(
        vips=args.vip_counts,
        hosts=args.hosts,
        idle_minutes=args.idle_minutes,
        cpu_seconds=args.cpu_seconds,
        frames_seconds=args.frames_seconds,
        cold_timeout=args.cold_timeout,
        modes=[m for m in args.modes.split(",") if m],
        churn=not args.no_churn,
    )
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    run_dir = args.out.resolve() / f"scale-{stamp}"
    run_dir.mkdir(parents=True, exist_ok=True)
    meta: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "argv": sys.argv[1:] if argv is None else list(argv),
        "quick": args.quick,
        "settings": asdict(settings),
        "ttl": TTL,
        "margin": MARGIN,
        "placement": asdict(PLACEMENT),  # the agents' (placement's defaults)
        "machine": machine(),
        "other_labs_at_start": other_labs(),
    }
    results: list[dict[str, Any]] = []
    labs: list[str] = []
    started = time.monotonic()
    interrupted = False
    try:
        for n in settings.vips:
            run_n(n, settings, run_dir, labs, results)
    except KeyboardInterrupt:
        interrupted = True
        console.print("[yellow]interrupted: everything torn down, writing what we have[/yellow]")
    meta["seconds"] = round(time.monotonic() - started, 1)
    meta["interrupted"] = interrupted
    left = leftovers(labs, run_dir)
    meta["leftovers"] = left
    rows = per_n_rows(results)
    goals = targets(rows)
    report = {"meta": meta, "results": results, "summary": rows, "targets": goals}
    out = args.out / f"scale-{stamp}.json"
    out.write_text(json.dumps(report, default=str, indent=1) + "\n")
    summary = results_markdown(rows) + "\n" + targets_markdown(goals)
    (args.out / "scale-summary-latest.md").write_text(summary)
    print_tables(rows)
    print_targets(goals)
    console.print(f"results: {out}  (total {meta['seconds']:.0f} s)")
    if left:
        console.print(f"[red]left behind: {left}[/red]")
        return 1
    console.print("nothing left behind (namespaces, etcd, agents)")
    return 130 if interrupted else (1 if any(r.get("error") for r in results) else 0)


if __name__ == "__main__":
    raise SystemExit(main())

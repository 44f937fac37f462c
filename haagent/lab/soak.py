"""A randomized fault run, Jepsen style: a nemesis against a 3-host, 3-member-etcd lab.

``python -m haagent.lab.soak --minutes 10 --seed 42 --vips 2 --out soak.json``

For ``--minutes`` the nemesis applies one fault at a time, drawn from ``random.Random(seed)``,
holds it for a random bounded time, heals it and pauses for a random gap (up to 3 s, often
less: the next fault tends to hit a cluster that is still recovering). The faults: SIGKILL of
an agent's process group (its fence survives and fences), SIGKILL of agent *and* fence, SIGTERM,
SIGSTOP (always followed by SIGCONT), SIGHUP (config reload), a host's switch port down, the
holder of a VIP cut off from etcd only (clients still reach it), SIGKILL and SIGSTOP of one etcd
member (never two: quorum is kept), deletes and garbage on holder and member keys. A killed
agent is restarted by the nemesis after the hold and must publish its member record again.

Judged over the whole run, not per fault: the history checker (``haagent.lab.history``) over
every host's kernel address events and the client's continuous probes of every VIP finds no
double holder and no double answer; after the last heal every VIP is bound on exactly the
host etcd names within the recovery bound (see :func:`recovery_bound`); no agent exits unless
the nemesis killed it; no "Traceback" in any agent log (the fence writes to the same log).

The same seed replays the same fault schedule. Which host a "holder of vip0" fault hits is
decided when it is applied (who holds vip0 then), and how many faults of the schedule fit in
the run depends on how fast heals are, so a replay is the same sequence of faults, not the
same run to the millisecond.

Exit code 0 when every verdict passes, 1 when one fails (the seed and the command to replay
are printed), 2 when the run could not be made (no root, lab failure).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from ipaddress import ip_address
from pathlib import Path
from typing import Any

# ---------------------------------------------------------------------------- fault kinds

# Kinds of faults, their weight in the draw and the bounds of their hold time (s). The hold
# is how long the fault lasts before it is healed: a killed agent's pause before its restart,
# a stopped process's time frozen, a cut's duration. Bounds straddle the lab's lease deadline
# (TTL 3 s - margin 1 s = 2 s after the last keepalive) and its TTL, so some faults heal
# before anything had to move and some after a failover.
AGENT_TARGETED = (
    "agent-sigkill",
    "agent-sigkill-all",
    "agent-sigterm",
    "agent-sigstop",
    "agent-sighup",
    "link-cut",
    "etcd-partition",
)


@dataclass(frozen=True)
class FaultKind:
    name: str
    weight: int
    hold: tuple[float, float]
    what: str


FAULT_KINDS: dict[str, FaultKind] = {
    k.name: k
    for k in (
        FaultKind("agent-sigkill", 3, (0.2, 5.0), "SIGKILL of the agent's process group"),
        FaultKind("agent-sigkill-all", 1, (0.2, 5.0), "SIGKILL of the agent and its fence"),
        FaultKind("agent-sigterm", 2, (0.2, 5.0), "SIGTERM of the agent (exit 0 expected)"),
        FaultKind("agent-sigstop", 2, (0.2, 6.0), "SIGSTOP of the agent, then SIGCONT"),
        FaultKind("agent-sighup", 1, (0.0, 0.0), "SIGHUP (config reload) of the agent"),
        FaultKind("link-cut", 2, (0.5, 8.0), "the host's switch port down"),
        FaultKind("etcd-partition", 2, (0.5, 8.0), "the host cut off from etcd only"),
        FaultKind("etcd-kill", 2, (0.5, 8.0), "SIGKILL of one etcd member, then restart"),
        FaultKind("etcd-sigstop", 1, (0.5, 5.0), "SIGSTOP of one etcd member, then SIGCONT"),
        FaultKind("key-delete", 2, (0.0, 1.0), "etcdctl del of a holder or member key"),
        FaultKind("key-garbage", 2, (0.0, 1.0), "garbage put over a holder or member key"),
    )
}
GAP = (0.0, 3.0)  # s between a heal and the next fault
HOLDER_SHARE = 0.6  # share of agent-targeted faults aimed at the current holder of a VIP


@dataclass(frozen=True)
class PlannedFault:
    """One fault of the schedule. ``target`` is a host role, an etcd member, ``holder:<vip>``
    (resolved when applied; ``fallback`` if nobody holds it then) or, for key faults,
    ``holder:<vip>`` / ``member:<host>`` naming the key."""

    index: int
    kind: str
    target: str
    hold: float
    gap: float
    fallback: str = ""
    option: str = ""  # key-garbage: "no-lease" (a plain put) or "keep-lease" (--ignore-lease)


def make_schedule(
    seed: int,
    seconds: float,
    hosts: Sequence[str],
    members: Sequence[str],
    vips: Sequence[str],
    kinds: Sequence[str] | None = None,
) -> list[PlannedFault]:
    """The fault schedule of a run: pure, the same for the same arguments.

    Long enough that the sum of holds and gaps covers ``seconds``: a fault always takes at
    least its hold and gap, so the run's time runs out before its schedule does.
    """
    names = list(kinds) if kinds is not None else list(FAULT_KINDS)
    unknown = [k for k in names if k not in FAULT_KINDS]
    if unknown or not names:
        raise ValueError(f"unknown fault kinds {unknown}" if unknown else "no fault kinds")
    if not hosts or not members or not vips:
        raise ValueError("a schedule needs hosts, etcd members and VIPs")
    weights = [FAULT_KINDS[k].weight for k in names]
    rng = random.Random(seed)
    out: list[PlannedFault] = []
    planned = 0.0
    while planned < seconds or not out:
        kind = rng.choices(names, weights)[0]
        lo, hi = FAULT_KINDS[kind].hold
        hold = round(rng.uniform(lo, hi), 3)
        gap = round(rng.uniform(*GAP), 3)
        fallback = rng.choice(list(hosts))
        option = ""
        if kind in AGENT_TARGETED:
            if rng.random() < HOLDER_SHARE:
                target = f"holder:{rng.choice(list(vips))}"
            else:
                target, fallback = fallback, ""
        elif kind.startswith("etcd-"):
            target, fallback = rng.choice(list(members)), ""
        else:
            if rng.random() < 0.5:
                target = f"holder:{rng.choice(list(vips))}"
            else:
                target = f"member:{rng.choice(list(hosts))}"
            fallback = ""
            if kind == "key-garbage":
                option = rng.choice(["no-lease", "keep-lease"])
        out.append(PlannedFault(len(out), kind, target, hold, gap, fallback, option))
        planned += hold + gap
    return out


# ---------------------------------------------------------------------------- verdicts


def recovery_bound(ttl: float, margin: float, election_timeout: float = 1.0) -> float:
    """Seconds after the last heal within which every VIP must be held again.

    The slowest documented recovery (docs/safety.md, docs/architecture.md): a holder that
    can no longer prove its lease is taken over from only when etcd expires that lease — up to
    one TTL after its last acknowledged keepalive, plus up to 0.5 s for etcd's expiry sweep —
    and an etcd member restarted at the last heal may first cost a leader election
    (``--election-timeout``, 1 s in the lab). An agent restarted at the last heal campaigns
    only after its start-up grace (``margin``). Their sum: TTL + margin + election + 0.5 s,
    5.5 s in the lab (TTL 3, margin 1).
    """
    return ttl + margin + election_timeout + 0.5


@dataclass(frozen=True)
class AgentExit:
    host: str
    at: float  # unix time the exit was seen (polled every 0.1 s)
    code: int
    expected: bool  # the nemesis had killed or terminated it
    generation: int  # 0 for the first process on the host, +1 per restart


@dataclass(frozen=True)
class TracebackHit:
    file: str
    line: int
    text: str  # the log line before it (its time and logger) and the traceback's first line


@dataclass
class VipOutcome:
    name: str
    address: str
    double_holder: list[tuple[float, float, list[str]]] = field(default_factory=list)
    interleavings: list[dict[str, Any]] = field(default_factory=list)
    recovered_after: float | None = None  # s after the last heal, None if not in time
    holder_at_end: str | None = None
    probes_sent: int = 0
    probes_answered: int = 0
    longest_gap_ms: float | None = None  # availability, for the reader; not judged


@dataclass(frozen=True)
class Failure:
    verdict: str
    at: float | None
    detail: str


@dataclass(frozen=True)
class Verdict:
    name: str
    ok: bool
    detail: str


def find_tracebacks(name: str, text: str) -> list[TracebackHit]:
    """Every "Traceback" line of a log, with the log line before it for its time."""
    hits: list[TracebackHit] = []
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if "Traceback" in line:
            before = lines[i - 1] if i > 0 else ""
            hits.append(TracebackHit(name, i + 1, f"{before.strip()} | {line.strip()}"[:500]))
    return hits


def judge(
    vips: Sequence[VipOutcome],
    exits: Sequence[AgentExit],
    tracebacks: Sequence[TracebackHit],
    heal_failures: Sequence[Failure],
    bound: float,
) -> tuple[list[Verdict], list[Failure]]:
    """The run's verdicts, and each failure behind a failed one with its time. Pure."""
    failures: list[Failure] = []
    doubles = [(v, w) for v in vips for w in v.double_holder]
    for v, (t0, t1, hosts) in doubles:
        failures.append(
            Failure(
                "no double holder",
                t0,
                f"{v.name} ({v.address}) held by {','.join(hosts)} for {(t1 - t0) * 1000:.1f} ms",
            )
        )
    answers = [(v, i) for v in vips for i in v.interleavings]
    for v, il in answers:
        failures.append(
            Failure(
                "no double answer",
                float(il["at"]),
                f"{v.name} ({v.address}): {il['host']} answered again after {il['after']} "
                f"had taken over at {il['superseded_at']:.3f}",
            )
        )
    late = [v for v in vips if v.recovered_after is None or v.recovered_after > bound]
    for v in late:
        got = "never" if v.recovered_after is None else f"after {v.recovered_after:.2f} s"
        failures.append(
            Failure(
                "every VIP held again in time",
                None,
                f"{v.name} ({v.address}) held again {got}, bound {bound:.2f} s",
            )
        )
    unexpected = [e for e in exits if not e.expected]
    for e in unexpected:
        failures.append(
            Failure(
                "no unexpected agent exit",
                e.at,
                f"agent on {e.host} (generation {e.generation}) exited {e.code} unasked",
            )
        )
    for tb in tracebacks:
        failures.append(Failure("no traceback", None, f"{tb.file}:{tb.line}: {tb.text}"))
    failures.extend(heal_failures)
    recovered = [v.recovered_after for v in vips if v.recovered_after is not None]
    worst = f"{max(recovered):.2f} s" if recovered else "-"
    verdicts = [
        Verdict("no double holder", not doubles, f"{len(doubles)} windows"),
        Verdict("no double answer", not answers, f"{len(answers)} interleavings"),
        Verdict(
            "every VIP held again in time",
            not late,
            f"slowest {worst}, bound {bound:.2f} s, {len(late)} late",
        ),
        Verdict(
            "no unexpected agent exit",
            not unexpected,
            f"{len(exits)} exits, {len(unexpected)} unexpected",
        ),
        Verdict("no traceback", not tracebacks, f"{len(tracebacks)} found"),
        Verdict("every fault healed", not heal_failures, f"{len(heal_failures)} heal failures"),
    ]
    return verdicts, failures


# ---------------------------------------------------------------------------- records


@dataclass
class FaultRecord:
    """A fault as it was run: the plan and what happened."""

    planned: PlannedFault
    host: str = ""  # the host or member it hit ("" for key faults)
    key: str = ""
    applied_at: float = 0.0
    healed_at: float = 0.0
    note: str = ""


@dataclass(frozen=True)
class SoakOptions:
    minutes: float
    seed: int
    vips: int = 2
    out: Path | None = None
    ttl: int = 3
    margin: float = 1.0
    kinds: tuple[str, ...] | None = None
    workdir: Path | None = None  # agent and etcd logs; default: next to --out
    probe_interval: float = 0.01


@dataclass
class SoakResult:
    seed: int
    ok: bool
    verdicts: list[Verdict]
    failures: list[Failure]
    data: dict[str, Any]

    def replay(self) -> str:
        return str(self.data.get("replay", ""))


def replay_command(opts: SoakOptions) -> str:
    argv = ["python", "-m", "haagent.lab.soak", "--minutes", f"{opts.minutes:g}"]
    argv += ["--seed", str(opts.seed), "--vips", str(opts.vips)]
    if opts.ttl != 3 or opts.margin != 1.0:
        argv += ["--ttl", str(opts.ttl), "--margin", f"{opts.margin:g}"]
    if opts.kinds is not None:
        argv += ["--faults", ",".join(opts.kinds)]
    return shlex.join(argv)


def vip_specs(count: int) -> list[tuple[str, str]]:
    """(name, address) of ``count`` VIPs, alternating IPv4 and IPv6 (vip0 is IPv4)."""
    from haagent.lab.topology import Lab

    return [
        (f"vip{i}", str(Lab.vip4(i // 2) if i % 2 == 0 else Lab.vip6(i // 2))) for i in range(count)
    ]


# ---------------------------------------------------------------------------- the run

ETCD_ELECTION_TIMEOUT = 1.0  # the lab's etcd: --election-timeout 1000
REJOIN_TIMEOUT = 20.0  # s a restarted agent may take to publish its member record
TERM_TIMEOUT = 5.0  # s a SIGTERMed agent may take to exit
SETTLE_TIMEOUT = 30.0  # s for the cluster to settle before the first fault
TAIL = 2.0  # s of quiet observation after recovery, still judged
# A probe runs for an hour at most (probe.MAX_DURATION) and the client's probes must cover the
# whole run, set-up and recovery included.
MAX_MINUTES = 50.0


class _Agent:
    """One host's agent process across restarts."""

    def __init__(self, host: Any, config: Path) -> None:
        self.host = host
        self.config = config
        self.proc: subprocess.Popen[bytes] | None = None
        self.generation = -1
        self.launched = 0.0
        self.expect_exit = False
        self.seen_exit = False
        self.stopped = False  # SIGSTOPped by us: SIGCONT before anything else


class Soak:
    """The lab, the agents, the nemesis and the judgement of one run."""

    def __init__(self, opts: SoakOptions, lab: Any, log: Callable[[str], None]) -> None:
        self.opts = opts
        self.lab = lab
        self.log = log
        self.cluster = lab.lab_id
        self.vips = vip_specs(opts.vips)
        self.agents: dict[str, _Agent] = {}
        self.exits: list[AgentExit] = []
        self.heal_failures: list[Failure] = []
        self.faults: list[FaultRecord] = []
        self._lock = threading.Lock()
        self._watching = threading.Event()
        self._watcher: threading.Thread | None = None
        self._etcd_stopped: set[str] = set()

    # ------------------------------------------------------------ agents

    def _start_agent(self, role: str) -> None:
        ag = self.agents[role]
        with self._lock:
            ag.launched = time.time()
            ag.proc = self.lab.start_agent(ag.host, ag.config)
            ag.generation += 1
            ag.expect_exit = False
            ag.seen_exit = False
            ag.stopped = False

    def _member_started(self, role: str) -> float | None:
        key = f"/haagent/v1/{self.cluster}/members/{role}"
        out = self.lab.etcd.etcdctl("get", "--print-value-only", key, check=False).stdout
        try:
            return float(json.loads(out.strip())["started"])
        except (ValueError, KeyError, TypeError):
            return None

    def _wait_member(self, role: str, timeout: float = REJOIN_TIMEOUT) -> bool:
        """The agent started last on ``role`` published its member record (holds a lease)."""
        ag = self.agents[role]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            started = self._member_started(role)
            # `started` is the agent's own time.time() at start-up, rounded to 1 ms.
            if started is not None and started >= ag.launched - 0.001:
                return True
            if ag.proc is None or ag.proc.poll() is not None:
                return False
            time.sleep(0.1)
        return False

    def _watch(self) -> None:
        """Record every agent exit, and whether the nemesis had asked for it."""
        while self._watching.is_set():
            with self._lock:
                for role, ag in self.agents.items():
                    if ag.proc is None or ag.seen_exit:
                        continue
                    code = ag.proc.poll()
                    if code is None:
                        continue
                    ag.seen_exit = True
                    self.exits.append(
                        AgentExit(role, time.time(), code, ag.expect_exit, ag.generation)
                    )
                    if not ag.expect_exit:
                        self.log(f"agent on {role} exited {code} without being killed")
            time.sleep(0.1)

    def _expect_exit(self, role: str) -> _Agent:
        ag = self.agents[role]
        with self._lock:
            ag.expect_exit = True  # before the signal: the watcher may see the exit at once
        return ag

    def _wait_exit(self, ag: _Agent, timeout: float) -> int | None:
        deadline = time.monotonic() + timeout
        while ag.proc is not None and time.monotonic() < deadline:
            code = ag.proc.poll()
            if code is not None:
                return code
            time.sleep(0.02)
        return None if ag.proc is None else ag.proc.poll()

    def _kill_all(self, ag: _Agent) -> None:
        """SIGKILL agent and fence together, as a service manager's final kill does. The agent
        is stopped first: seeing its fence die, it would start a new one."""
        assert ag.proc is not None
        pid = ag.proc.pid
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGSTOP)
        out = self.lab.run(ag.host, ["pgrep", "-P", str(pid), "-f", "haagent.fence"], check=False)
        for tok in out.stdout.split():
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(tok), signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)

    # ------------------------------------------------------------ observation

    def holders(self) -> dict[str, list[str]]:
        """Per VIP name, the hosts whose kernel has it bound right now."""
        bound = {h.role: self.lab.bound(h, all_interfaces=True) for h in self.lab.hosts}
        return {
            name: [role for role, ips in bound.items() if ip_address(addr) in ips]
            for name, addr in self.vips
        }

    def etcd_holder(self, vip: str) -> str | None:
        key = f"/haagent/v1/{self.cluster}/vips/{vip}/holder"
        out = self.lab.etcd.etcdctl(
            "get", "--print-value-only", key, check=False, dial_timeout=0.5, command_timeout=1.0
        ).stdout
        try:
            return str(json.loads(out.strip())["node"])
        except (ValueError, KeyError, TypeError):
            return None

    def settled(self) -> dict[str, str]:
        """VIPs bound on exactly one host that etcd's holder key names, with that host."""
        found: dict[str, str] = {}
        for name, on in self.holders().items():
            if len(on) == 1 and self.etcd_holder(name) == on[0]:
                found[name] = on[0]
        return found

    def wait_recovery(self, since: float, bound: float) -> dict[str, float]:
        """Seconds after ``since`` at which each VIP was first seen settled; polls a little
        past ``bound`` so that a late recovery is measured, not just flagged."""
        first: dict[str, float] = {}
        deadline = since + bound + 5.0
        while len(first) < len(self.vips) and time.time() < deadline:
            now = time.time()
            for name in self.settled():
                first.setdefault(name, now - since)
            time.sleep(0.05)
        return first

    # ------------------------------------------------------------ the nemesis

    def _resolve(self, fault: PlannedFault) -> str:
        if not fault.target.startswith("holder:"):
            return fault.target
        on = self.holders().get(fault.target.split(":", 1)[1], [])
        return on[0] if on else fault.fallback

    def _sleep(self, seconds: float) -> None:
        time.sleep(max(seconds, 0.0))

    def apply(self, fault: PlannedFault) -> FaultRecord:
        """Apply, hold, heal one fault. Heals even if applying failed half-way."""
        rec = FaultRecord(fault)
        kind = fault.kind
        if kind.startswith("key-"):
            what, _, name = fault.target.partition(":")
            sub = f"vips/{name}/holder" if what == "holder" else f"members/{name}"
            rec.key = f"/haagent/v1/{self.cluster}/{sub}"
        else:
            rec.host = self._resolve(fault)
        rec.applied_at = time.time()
        heal: Callable[[], None] = lambda: None  # noqa: E731 (replaced by the fault's heal)
        try:
            heal = self._inflict(fault, rec)
            self._sleep(fault.hold)
        finally:
            try:
                heal()
            finally:
                rec.healed_at = time.time()
        return rec

    def _inflict(self, fault: PlannedFault, rec: FaultRecord) -> Callable[[], None]:
        """Start the fault; return its heal."""
        kind, role = fault.kind, rec.host
        if kind in ("agent-sigkill", "agent-sigkill-all", "agent-sigterm"):
            ag = self._expect_exit(role)
            assert ag.proc is not None
            if kind == "agent-sigkill":
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(ag.proc.pid, signal.SIGKILL)
            elif kind == "agent-sigkill-all":
                self._kill_all(ag)
            else:
                ag.proc.send_signal(signal.SIGTERM)
                code = self._wait_exit(ag, TERM_TIMEOUT)
                if code != 0:
                    self._fail(rec, f"SIGTERMed agent on {role}: exit {code}, 0 expected")
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(ag.proc.pid, signal.SIGKILL)
            return lambda: self._restart(role, rec)
        if kind == "agent-sigstop":
            ag = self.agents[role]
            assert ag.proc is not None
            ag.stopped = True
            ag.proc.send_signal(signal.SIGSTOP)
            return lambda: self._cont(ag)
        if kind == "agent-sighup":
            ag = self.agents[role]
            assert ag.proc is not None
            ag.proc.send_signal(signal.SIGHUP)
            return lambda: None
        if kind == "link-cut":
            node = self.lab.host(role)
            self.lab.cut_link(node)
            return lambda: self.lab.restore_link(node)
        if kind == "etcd-partition":
            node = self.lab.host(role)
            self.lab.block_etcd(node)
            return lambda: self.lab.unblock_etcd(node)
        if kind == "etcd-kill":
            self._etcd_stopped.add(role)
            self.lab.etcd.kill(role)
            return lambda: self._etcd_restart(role, rec)
        if kind == "etcd-sigstop":
            self._etcd_stopped.add(role)
            self.lab.etcd.pause(role)
            return lambda: self._etcd_resume(role)
        if kind == "key-delete":
            self.lab.etcd.etcdctl("del", rec.key, check=False)
            return lambda: None
        if kind == "key-garbage":
            extra = ["--ignore-lease"] if fault.option == "keep-lease" else []
            proc = self.lab.etcd.etcdctl("put", rec.key, "garbage", *extra, check=False)
            if proc.returncode != 0:
                # --ignore-lease on a key that is absent: nothing to overwrite.
                rec.note = f"put refused: {proc.stderr.strip()[:200]}"
            return lambda: None
        raise ValueError(f"unknown fault kind {kind!r}")

    def _fail(self, rec: FaultRecord, detail: str) -> None:
        self.log(f"heal failure: {detail}")
        rec.note = (rec.note + "; " if rec.note else "") + detail
        self.heal_failures.append(Failure("every fault healed", time.time(), detail))

    def _cont(self, ag: _Agent) -> None:
        if ag.proc is not None and ag.stopped:
            with contextlib.suppress(ProcessLookupError):
                ag.proc.send_signal(signal.SIGCONT)
        ag.stopped = False

    def _restart(self, role: str, rec: FaultRecord) -> None:
        ag = self.agents[role]
        if ag.proc is not None and self._wait_exit(ag, 5.0) is None:
            self._fail(rec, f"killed agent on {role} still running after 5 s")
            return
        self._start_agent(role)
        if not self._wait_member(role):
            self._fail(rec, f"restarted agent on {role} not a member after {REJOIN_TIMEOUT:g} s")

    def _revive_unasked(self) -> None:
        """Restart an agent that exited unasked (already a failure), so the run goes on
        with three agents."""
        for role, ag in self.agents.items():
            if ag.seen_exit and not ag.expect_exit:
                self._start_agent(role)
                self._wait_member(role)

    def _etcd_restart(self, role: str, rec: FaultRecord) -> None:
        self.lab.etcd.start(role)
        try:
            self.lab.etcd.wait_healthy([role], timeout=20.0)
        except Exception as exc:  # EtcdError: record it and go on; the next faults still run
            self._fail(rec, f"etcd member {role} not healthy after restart: {str(exc)[:200]}")
        self._etcd_stopped.discard(role)

    def _etcd_resume(self, role: str) -> None:
        self.lab.etcd.resume(role)
        self._etcd_stopped.discard(role)

    def heal_everything(self) -> None:
        """Whatever an interrupted fault left behind: thaw, reconnect, restart etcd."""
        for ag in self.agents.values():
            self._cont(ag)
        for h in self.lab.hosts:
            with contextlib.suppress(Exception):
                self.lab.restore_link(h)
            with contextlib.suppress(Exception):
                self.lab.unblock_etcd(h)
        for role in list(self._etcd_stopped):
            with contextlib.suppress(Exception):
                self.lab.etcd.resume(role)
                self.lab.etcd.start(role)

    # ------------------------------------------------------------ the whole run

    def run(self) -> SoakResult:
        from haagent.lab.history import check_history, start_address_recorder
        from haagent.lab.probe import read_records, started_marker, summarize

        opts, lab = self.opts, self.lab
        bound = recovery_bound(opts.ttl, opts.margin, ETCD_ELECTION_TIMEOUT)
        seconds = opts.minutes * 60.0
        schedule = make_schedule(
            opts.seed,
            seconds,
            [h.role for h in lab.hosts],
            [m.role for m in lab.etcd_nodes],
            [name for name, _ in self.vips],
            opts.kinds,
        )
        for h in lab.hosts:
            lab.start_responder(h)
        recorder = start_address_recorder(lab, lab.hosts, tag="soak")
        probes: list[tuple[Path, subprocess.Popen[bytes]]] = []
        try:
            for h in lab.hosts:
                cfg = lab.write_agent_config(h, self.vips, ttl=opts.ttl, margin=opts.margin)
                self.agents[h.role] = _Agent(h, cfg)
                self._start_agent(h.role)
            self._watching.set()
            self._watcher = threading.Thread(target=self._watch, name="soak-watch", daemon=True)
            self._watcher.start()
            for role in self.agents:
                if not self._wait_member(role, SETTLE_TIMEOUT):
                    raise SoakError(f"agent on {role} did not join; see {lab.agent_log_path}")
            deadline = time.monotonic() + SETTLE_TIMEOUT
            while len(self.settled()) < len(self.vips):
                if time.monotonic() > deadline:
                    raise SoakError(f"VIPs not all held {SETTLE_TIMEOUT:g} s after start")
                time.sleep(0.1)
            for name, addr in self.vips:
                out = lab.workdir / f"probe-{name}.jsonl"
                proc = lab.start_probe(
                    addr, out, interval=opts.probe_interval, duration=seconds + 600.0
                )
                probes.append((out, proc))
            for out, _proc in probes:
                limit = time.monotonic() + 10.0
                while not started_marker(out).exists():
                    if time.monotonic() > limit:
                        raise SoakError(f"probe {out.name} did not start")
                    time.sleep(0.02)
            time.sleep(0.5)  # answers from the settled holders before the first fault
            started = time.time()
            self.log(f"faults for {opts.minutes:g} min, seed {opts.seed}, bound {bound:g} s")
            end = time.monotonic() + seconds
            for planned in schedule:
                if time.monotonic() >= end:
                    break
                rec = self.apply(planned)
                self.faults.append(rec)
                self.log(
                    f"#{planned.index} {planned.kind} {rec.host or rec.key} "
                    f"hold {planned.hold:g} s{' ' + rec.note if rec.note else ''}"
                )
                self._revive_unasked()
                if time.monotonic() + planned.gap < end:
                    self._sleep(planned.gap)
            last_heal = max((f.healed_at for f in self.faults), default=time.time())
            recovery = self.wait_recovery(last_heal, bound)
            time.sleep(TAIL)
            until = time.time()
            final = self.settled()
        finally:
            self.heal_everything()
            for _out, proc in probes:
                lab.stop(proc, timeout=10.0)  # SIGTERM: it writes its records and exits
            events = recorder.stop()
            self._stop_agents()
        records = {
            name: read_records(out) for (name, _), (out, _p) in zip(self.vips, probes, strict=True)
        }
        outcomes: list[VipOutcome] = []
        for name, addr in self.vips:
            report = check_history(events, records[name], addr, until=until, since=started)
            outcomes.append(
                VipOutcome(
                    name,
                    addr,
                    [(a, b, list(h)) for a, b, h in report.double_holder],
                    [asdict(i) for i in report.interleavings],
                    recovery.get(name),
                    final.get(name),
                    len(records[name]),
                    sum(1 for r in records[name] if r.by is not None),
                    summarize(records[name]).longest_gap_ms,
                )
            )
        tracebacks = [
            hit
            for h in lab.hosts
            for hit in find_tracebacks(lab.agent_log_path(h).name, lab.agent_log(h))
        ]
        verdicts, failures = judge(outcomes, self.exits, tracebacks, self.heal_failures, bound)
        ok = all(v.ok for v in verdicts)
        data = {
            "seed": opts.seed,
            "ok": ok,
            "minutes": opts.minutes,
            "started": started,
            "faults_ended": last_heal,
            "until": until,
            "fault_seconds": round(last_heal - started, 3),
            "lab": {
                "hosts": [h.role for h in lab.hosts],
                "etcd_members": [m.role for m in lab.etcd_nodes],
                "ttl": opts.ttl,
                "margin": opts.margin,
                "workdir": str(lab.workdir),
            },
            "vips": [asdict(v) for v in outcomes],
            "recovery_bound": bound,
            "verdicts": [asdict(v) for v in verdicts],
            "failures": [asdict(f) for f in failures],
            "counts": {
                "faults": len(self.faults),
                "by_kind": dict(sorted(Counter(f.planned.kind for f in self.faults).items())),
                "agent_exits": len(self.exits),
                "unexpected_exits": sum(1 for e in self.exits if not e.expected),
                "address_events": sum(1 for e in events if not e.initial),
                "probes_sent": sum(v.probes_sent for v in outcomes),
                "probes_answered": sum(v.probes_answered for v in outcomes),
            },
            "faults": [asdict(f) for f in self.faults],
            "exits": [asdict(e) for e in self.exits],
            "replay": replay_command(opts),
        }
        return SoakResult(opts.seed, ok, verdicts, failures, data)

    def _stop_agents(self) -> None:
        """SIGTERM every agent at the end (an expected exit), SIGKILL what lingers."""
        for role, ag in self.agents.items():
            if ag.proc is not None and ag.proc.poll() is None:
                self._expect_exit(role)
                ag.proc.send_signal(signal.SIGTERM)
        for ag in self.agents.values():
            if self._wait_exit(ag, TERM_TIMEOUT) is None and ag.proc is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(ag.proc.pid, signal.SIGKILL)
        time.sleep(0.2)  # the watcher's last look
        self._watching.clear()
        if self._watcher is not None:
            self._watcher.join(2.0)


class SoakError(RuntimeError):
    """The run could not be set up (not a verdict: nothing was judged)."""


@contextlib.contextmanager
def _lab(workdir: Path) -> Iterator[Any]:
    from haagent.lab.topology import Lab

    lab = Lab(hosts=3, etcd_members=3, workdir=workdir)
    try:
        with lab:
            yield lab
    finally:
        # etcd preallocates 64 MB per WAL file: keep the logs, not the data.
        for m in lab.etcd_nodes:
            shutil.rmtree(lab.etcd.data_dir(m), ignore_errors=True)
        shutil.rmtree(workdir / "state", ignore_errors=True)


def run_soak(opts: SoakOptions, log: Callable[[str], None] | None = None) -> SoakResult:
    """One whole run in a lab of its own, always torn down. Results to ``opts.out`` if set."""
    say = log or (lambda msg: print(f"soak: {msg}", file=sys.stderr, flush=True))
    workdir = opts.workdir
    if workdir is None:
        base = opts.out.parent if opts.out is not None else Path("bench-results")
        stem = opts.out.stem if opts.out is not None else f"soak-{_stamp()}"
        workdir = base / f"{stem}.logs"
    workdir = workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    with _lab(workdir) as lab:
        say(f"lab {lab.lab_id}, logs in {workdir}")
        result = Soak(opts, lab, say).run()
    if result.ok:
        for p in workdir.glob("probe-*.jsonl*"):
            p.unlink(missing_ok=True)  # large; kept only when a verdict failed
    if opts.out is not None:
        opts.out.parent.mkdir(parents=True, exist_ok=True)
        opts.out.write_text(json.dumps(result.data, indent=2) + "\n")
    return result


def _stamp() -> str:
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")


def summary(result: SoakResult) -> str:
    d = result.data
    lines = [
        f"seed {d['seed']}: {d['counts']['faults']} faults in {d['fault_seconds']:.0f} s "
        f"({', '.join(f'{k} {n}' for k, n in d['counts']['by_kind'].items())})",
        f"probes: {d['counts']['probes_answered']}/{d['counts']['probes_sent']} answered, "
        f"{d['counts']['address_events']} address events, {d['counts']['agent_exits']} "
        "agent exits",
    ]
    for v in d["vips"]:
        gap = "-" if v["longest_gap_ms"] is None else f"{v['longest_gap_ms']:.0f} ms"
        lines.append(
            f"{v['name']} {v['address']}: {v['probes_answered']}/{v['probes_sent']} answered, "
            f"longest gap {gap}, held by {v['holder_at_end'] or '-'} at the end"
        )
    lines += [f"{'PASS' if v.ok else 'FAIL'} {v.name}: {v.detail}" for v in result.verdicts]
    for f in result.failures[:20]:
        at = "" if f.at is None else datetime.fromtimestamp(f.at, UTC).strftime("%H:%M:%S.%f ")
        lines.append(f"  {at}{f.verdict}: {f.detail}")
    if len(result.failures) > 20:
        lines.append(f"  … and {len(result.failures) - 20} more (see the results file)")
    if not result.ok:
        lines.append(f"FAILED with seed {d['seed']}; replay: {d['replay']}")
    return "\n".join(lines)


def _kinds(text: str) -> tuple[str, ...]:
    kinds = tuple(k.strip() for k in text.split(",") if k.strip())
    unknown = [k for k in kinds if k not in FAULT_KINDS]
    if unknown or not kinds:
        raise argparse.ArgumentTypeError(
            f"unknown fault kinds {unknown}; known: {', '.join(FAULT_KINDS)}"
        )
    return kinds


def main(argv: Sequence[str] | None = None) -> int:
    kinds_help = "; ".join(f"{k.name}: {k.what}" for k in FAULT_KINDS.values())
    parser = argparse.ArgumentParser(
        prog="python -m haagent.lab.soak",
        description="Randomized fault run (Jepsen style) against a 3-host, 3-member-etcd lab; "
        "judged over the whole run: no double holder, no double answer, every VIP held again "
        "within the recovery bound, no agent exit unless killed, no traceback. Needs root. "
        "Exit 0 if every verdict passes, 1 if one fails (the seed and the command to replay "
        "are printed), 2 if the run could not be made. The same seed replays the same fault "
        "schedule. Results: --out (JSON); agent, fence, etcd and address-monitor logs in "
        "<out without .json>.logs/. Details: docs/safety.md, 'Randomized fault run'.",
        epilog=f"Fault kinds: {kinds_help}.",
    )
    parser.add_argument(
        "--minutes",
        type=float,
        default=10.0,
        help=f"of faults (default 10, at most {MAX_MINUTES:g})",
    )
    parser.add_argument("--seed", type=int, help="replays a schedule (default: random, printed)")
    parser.add_argument("--vips", type=int, default=2, help="VIPs, alternating v4/v6 (min 2)")
    parser.add_argument("--out", type=Path, help="results JSON (default: bench-results/soak-*)")
    parser.add_argument("--ttl", type=int, default=3, help="lease TTL of the agents (s)")
    parser.add_argument("--margin", type=float, default=1.0, help="lease margin (s)")
    parser.add_argument("--faults", type=_kinds, help="comma-separated fault kinds (default all)")
    args = parser.parse_args(argv)
    if not 2 <= args.vips <= 20:
        parser.error("--vips must be between 2 and 20")
    if not 0 < args.minutes <= MAX_MINUTES:
        parser.error(f"--minutes must be above 0 and at most {MAX_MINUTES:g}")
    if os.geteuid() != 0:
        print("soak: needs root (network namespaces)", file=sys.stderr)
        return 2
    seed = args.seed if args.seed is not None else secrets.randbelow(2**31)
    out = args.out or Path("bench-results") / f"soak-{_stamp()}.json"
    opts = SoakOptions(args.minutes, seed, args.vips, out, args.ttl, args.margin, kinds=args.faults)
    print(f"soak: seed {seed}; replay: {replay_command(opts)}", file=sys.stderr, flush=True)
    try:
        result = run_soak(opts)
    except KeyboardInterrupt:
        print(f"soak: interrupted (seed {seed}); the lab was torn down", file=sys.stderr)
        return 2
    except Exception as exc:  # one line for the user: the lab's errors carry their cause
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        print(f"soak: error: {type(exc).__name__}: {first} (seed {seed})", file=sys.stderr)
        return 2
    print(summary(result))
    print(f"results: {out}")
    return 0 if result.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())

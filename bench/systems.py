"""The systems under test: how to configure, start, stop and recognise each on a lab host.

A driver knows one system in one configuration. The benchmark asks it to start every host,
to (re)start one host, which process to signal, whether a host it disturbed is back in the
cluster, and how long a failover may take before it is called "none".
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import signal
import subprocess
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from pathlib import Path
from string import Template
from typing import Any, Literal

from bench.observe import cluster_view
from haagent.cluster.schema import Keys, Request
from haagent.config import ConfigErrors, PlacementConfig, parse_config
from haagent.decide import rank
from haagent.lab.topology import Lab, Node, pid_alive, stat_fields
from haagent.lab.wait import poll_until

KEEPALIVED_TEMPLATES = Path(__file__).resolve().parent / "keepalived"

# haagent as the lab runs it: lease TTL 3 s, margin 1 s (Lab.write_agent_config's defaults).
HAAGENT_TTL = 3
HAAGENT_MARGIN = 1.0
HAAGENT_VIPS = (("web4", str(Lab.vip4(0))), ("web6", str(Lab.vip6(0))))  # (name, address)

# keepalived runs as a VRRP pair on h1 and h2 (h3 idles), both BACKUP with nopreempt and
# priorities one apart. Why:
# * the takeover waits Master_Down_Interval = 3 x advert + skew, skew = (256 - prio) / 256
#   x advert; at 254/253 the skew is 8-12 ms, the smallest keepalived allows (255 is the
#   address owner): keepalived's fastest failover, and the same whichever host takes over;
# * nopreempt: a restored host stays BACKUP and the next trial fails whoever is master.
#   With preemption every restore would cost a master-down interval (3 s at advert 1 s),
#   because a BACKUP discards lower-priority adverts and waits for its own timer;
# * two hosts: with a third, two backups one skew (4 ms) apart would race to MASTER.
KEEPALIVED_PRIORITY = {"h1": 254, "h2": 253}
VRID4, VRID6 = 51, 52
NFT_COUNTER = "haagent_bench"  # in each keepalived host: counts incoming VRRP packets

# Health checks (mode "health"), the same for both systems: one flag file per host in the lab
# workdir; the check passes while it is absent (`test ! -e FILE`, no shell). Every
# configuration carries the check, whatever modes run, so a configuration is one thing.
HEALTH_CHECK = "flagfile"
HEALTH_COMMAND = "/usr/bin/test"
CHECK_FALL = 2  # consecutive failures before a healthy check is unhealthy (both systems)
CHECK_RISE = 2  # consecutive passes before it is healthy again (both systems)
HAAGENT_CHECK_INTERVAL = 0.2  # s; haagent accepts >= 0.1
HAAGENT_CHECK_TIMEOUT = 0.2  # s; haagent requires timeout <= interval
# s; haagent's default, written out. After giving a VIP up for its health the host does not
# campaign for it for this long, so a host restored from "health" is back in the cluster only
# then: otherwise trials a few seconds apart find two of three hosts held down and measure
# the hold-down instead of the failover.
HAAGENT_HOLD_DOWN = 5.0
# Placement (docs/benchmarks.md, "Configurations"). ``preempt: false`` is keepalived's
# ``nopreempt`` above, for the same reason: a host restored after a trial does not take its
# VIPs back ``preempt_delay`` later — in the middle of the next trial, or while it waits for
# a steady holder — and every trial fails whoever holds the VIP. An operator who wants no
# second client blip when a failed host returns chooses the same. Moves (mode ``move``) are
# not preemptions: they work either way. The start-up wait is haagent's default, written
# out: a restarted host is back only once it is over (HaagentDriver.recovered), or a
# better-ranked host still starting up would make the next trial's takeover wait for it.
HAAGENT_PREEMPT = False
HAAGENT_STARTUP_WAIT = PlacementConfig.startup_wait
# keepalived 2.2.7's vrrp_script takes whole seconds only: `interval 0.2` is refused
# ("vrrp script interval '0.2' must be between 1 and 4294 - ignoring", checked with
# `keepalived -t`), so 1 s is its fastest polled check. Its inotify-based track_file would
# react at once, but it is not a check: it reads a number some other program writes, and
# haagent has no such push input, so the two would not measure the same thing. With
# weight 0 a failing script puts the instance into FAULT, and a MASTER entering FAULT sends
# priority 0, so the backup takes over at once, as on SIGTERM.
KEEPALIVED_SCRIPT_INTERVAL = 1
KEEPALIVED_SCRIPT_TIMEOUT = 1


# Fast failover (issue 16): haagent's ``liveness`` section. "fast": on, with a key file every
# host shares (LIVENESS_KEY in the lab's workdir, 32 random bytes, 0600) and haagent's default
# timing; "lease": ``enabled: false``, the lease alone (what haagent did before it). A
# haagent that does not know the section refuses it: then "lease" writes none (the same
# behaviour) and "fast" cannot run (liveness_supported()).
LIVENESS_KEY = "liveness.key"
LIVENESS_KEY_BYTES = 32
Liveness = Literal["fast", "lease"]
# A surviving agent's log line saying it suspects a silent peer (haagent/agent/fast.py, once
# the suspicion is recorded in etcd): the "detection" of the host-death timeline
# (bench/plot.py). "2026-12-02T17:14:12.913Z WARNING haagent.liveness: suspect h1: no
# heartbeat for 60 ms"
_HAAGENT_DETECTED = re.compile(r"^(\S+) \S+ haagent\.liveness: suspect (\S+): ", re.M)


@functools.cache
def liveness_settings() -> dict[str, Any] | None:
    """haagent's default liveness timing (``interval``, ``multiplier``, ``hold`` …) as its
    config parser fills them in, or None while haagent has no ``liveness`` section."""
    probe = {
        "cluster": "bench",
        "node": "h1",
        "etcd": {"endpoints": ["http://127.0.0.1:2379"], "timeout": 0.5},
        "lease": {"ttl": HAAGENT_TTL, "margin": HAAGENT_MARGIN},
        "vips": [{"name": n, "address": a, "interface": "eth0"} for n, a in HAAGENT_VIPS],
        "liveness": {"enabled": False},
    }
    try:
        cfg = parse_config(probe)
    except ConfigErrors:
        return None
    live = getattr(cfg, "liveness", None)
    if live is None:
        return None
    names = ("interval", "multiplier", "hold", "refute_window", "etcd_loss", "port")
    return {n: getattr(live, n) for n in names if hasattr(live, n)}


def liveness_supported() -> bool:
    """Does this haagent take a ``liveness`` section (fast failover)?"""
    return liveness_settings() is not None


def wait_for(pred: Callable[[], object], timeout: float, interval: float = 0.05) -> bool:
    """Poll `pred` every `interval` s until it is true (True) or `timeout` s passed (False):
    the lab's bounded wait (:func:`haagent.lab.wait.poll_until`) as a yes or no."""
    return bool(poll_until(pred, timeout, interval))


@dataclass(frozen=True)
class Timing:
    """How long the benchmark waits for a new holder before calling it "failover: none"."""

    graceful: float
    hard: float
    health: float  # the holder's health check starts failing (mode "health")


class Driver(ABC):
    system: str  # "haagent", "keepalived": what Mode.systems names
    config: str  # the configuration, in short
    name: str = ""  # as results and pictures name it ("haagent fast"); "" is system + config

    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    # ------------------------------------------------------------ what the bench asks

    @abstractmethod
    def configs(self) -> dict[str, str]:
        """Config files per host (file name -> text), written by prepare()."""

    @abstractmethod
    def start(self, host: Node) -> None:
        """Start the daemon on one host (after prepare())."""

    @abstractmethod
    def start_all(self, holds: HoldCheck) -> None:
        """Start every host so that the first trial begins from a known holder."""

    @abstractmethod
    def timing(self) -> Timing: ...

    def prepare(self) -> dict[str, str]:
        """Write the config files into the lab's workdir; returns them for the report."""
        texts = self.configs()
        for name, text in texts.items():
            (self.lab.workdir / name).write_text(text)
        return texts

    @property
    def hosts(self) -> list[Node]:
        """The hosts the system runs on."""
        return list(self.lab.hosts)

    def proc(self, host: Node) -> subprocess.Popen[bytes]:
        return self.procs[host.role]

    def standby(self, holder: Node) -> Node:
        """The host that would take the VIPs of ``holder`` over (a mode's ``standby`` victim):
        by default the first other host the system runs on."""
        return next(h for h in self.hosts if h != holder)

    def detected_at(self, old: Node, since: float, until: float) -> float | None:
        """When another host first said it had noticed that ``old`` was gone (unix time, in
        ``[since, until]``), from its log; None if the system logs no such thing apart from
        taking over (then the bind is its detection)."""
        return None

    def signal_group(self, host: Node, sig: signal.Signals) -> None:
        """Signal the daemon's whole process group (its check scripts, keepalived's VRRP
        child); a group already gone is no error."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc(host).pid, sig)

    def wait_gone(self, host: Node, timeout: float = 10.0) -> None:
        """Wait until the daemon and every process of its group have exited (zombies
        count as gone); SIGKILL the group after `timeout`."""
        proc = self.procs.get(host.role)
        if proc is None:
            return

        def gone() -> bool:
            return proc.poll() is not None and not group_members(proc.pid)

        if wait_for(gone, timeout, 0.02):
            return
        for pid in [proc.pid, *group_members(proc.pid)]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if not wait_for(gone, 5.0, 0.02):
            raise TimeoutError(f"{self.system} on {host.role} survives SIGKILL")

    def alive(self, host: Node) -> bool:
        p = self.procs.get(host.role)
        return p is not None and p.poll() is None

    def ready_token(self, host: Node) -> int:
        """Something that grows when the host (re)joins the cluster; see recovered()."""
        return 0

    def recovered(self, host: Node, token: int, *, rejoin: bool = True) -> bool:
        """The host disturbed by a trial is back as a healthy member of the cluster.

        ``rejoin``: the failure took the host out of the cluster (restart, lost lease or
        link), so it must have (re)joined since ``token``; false when only its health check
        failed and it stayed a member throughout."""
        return self.alive(host)

    @abstractmethod
    def after_restore(self, host: Node) -> None:
        """Called right after a trial's failure was undone on `host` (before recovered())."""

    def stop_all(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGCONT)  # a stopped process cannot act on SIGTERM
                Lab.stop(proc, timeout=3.0)


class HoldCheck(ABC):
    """What start_all() may ask the benchmark: does `host` hold every VIP yet?"""

    @abstractmethod
    def wait_holds(self, host: Node, timeout: float) -> None: ...


def fail_flag(lab: Lab, host: Node) -> Path:
    """The file whose presence fails `host`'s health check (mode "health")."""
    return lab.workdir / f"{host.role}.fail"


def health_argv(flag: Path) -> list[str]:
    """The health check of both systems: passes (exit 0) while `flag` does not exist."""
    return [HEALTH_COMMAND, "!", "-e", str(flag)]


def _latest_run(log: str, start: re.Pattern[str]) -> str:
    """What a daemon logged since its last start: the part of `log` (appended to across
    restarts) after its last `start` match; all of it if there is none."""
    starts = list(start.finditer(log))
    return log[starts[-1].end() :] if starts else log


# --------------------------------------------------------------------------- haagent

_JOINED = re.compile(r"granted lease|adopted lease")
_STARTING = re.compile(r"haagent \S+ starting: ")
_READY = re.compile(r"start-up wait over")
_VIP_HEALTH = re.compile(r"vip (\S+) (healthy|unhealthy) on this node")
# "2026-11-23T10:46:00.912Z INFO haagent.agent: released vip web4 (…): check flagfile failed…"
_HEALTH_RELEASE = re.compile(r"^(\S+) \S+ haagent\.agent: released vip \S+ \(.*?\): check ", re.M)


def haagent_extra(
    vips: Sequence[tuple[str, str]], ifname: str, flag: Path, *, vmac: bool
) -> dict[str, Any]:
    """The agent config sections the benchmark sets beyond Lab.write_agent_config's: the
    flag-file exec check on every VIP and, for the vmac configuration, ``vmac: true`` with
    the VRIDs keepalived uses (one per family)."""
    check = {
        "type": "exec",
        "command": health_argv(flag),
        "interval": HAAGENT_CHECK_INTERVAL,
        "timeout": HAAGENT_CHECK_TIMEOUT,
        "rise": CHECK_RISE,
        "fall": CHECK_FALL,
    }
    out: list[dict[str, Any]] = []
    for name, address in vips:
        vip: dict[str, Any] = {
            "name": name,
            "address": address,
            "interface": ifname,
            "checks": [HEALTH_CHECK],
            "hold_down": HAAGENT_HOLD_DOWN,
        }
        if vmac:
            vip["vmac"] = True
            vip["vrid"] = VRID6 if ":" in address else VRID4
        out.append(vip)
    placement = {"preempt": HAAGENT_PREEMPT, "startup_wait": HAAGENT_STARTUP_WAIT}
    return {"checks": {HEALTH_CHECK: check}, "vips": out, "placement": placement}


def haagent_healthy(log: str, vips: Sequence[str]) -> bool:
    """Does the agent's log say that its latest run found every VIP in `vips` healthy?

    Only the lines after the last start count: the log is appended to across restarts,
    and a fresh agent is not healthy until its checks have risen."""
    last = {m.group(1): m.group(2) for m in _VIP_HEALTH.finditer(_latest_run(log, _STARTING))}
    return all(last.get(v) == "healthy" for v in vips)


def haagent_ready(log: str) -> bool:
    """Is the agent's latest run past its start-up wait (campaigning by rank)?"""
    return _READY.search(_latest_run(log, _STARTING)) is not None


def haagent_held_down_until(log: str, hold_down: float) -> float:
    """Unix time until which the agent's latest run holds back from campaigning after its
    last release for a failing check (0 if it never released one for that)."""
    releases = _HEALTH_RELEASE.findall(_latest_run(log, _STARTING))
    if not releases:
        return 0.0
    return datetime.fromisoformat(releases[-1]).timestamp() + hold_down


def _log_time(stamp: str) -> float | None:
    with contextlib.suppress(ValueError):
        return datetime.fromisoformat(stamp).timestamp()
    return None


def haagent_detected_at(log: str, since: float, until: float, node: str) -> float | None:
    """When an agent first logged in ``[since, until]`` that it suspects ``node`` (unix
    time): it had missed ``node``'s heartbeats and recorded that in etcd."""
    for m in _HAAGENT_DETECTED.finditer(log):
        at = _log_time(m.group(1))
        if m.group(2) == node and at is not None and since <= at <= until:
            return at
    return None


def liveness_section(liveness: Liveness | None, key: Path) -> dict[str, Any] | None:
    """The ``liveness`` section of a bench agent config (None: write none)."""
    if liveness is None:
        return None
    if not liveness_supported():
        if liveness == "fast":
            raise ValueError("this haagent has no liveness section: fast failover cannot run")
        return None  # the lease alone is all it does
    if liveness == "fast":
        return {"enabled": True, "key_file": str(key)}
    return {"enabled": False}


def write_liveness_key(path: Path) -> None:
    """A fresh cluster key, root only (the agent refuses a key others can read)."""
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(os.urandom(LIVENESS_KEY_BYTES))


class HaagentDriver(Driver):
    system = "haagent"

    def __init__(self, lab: Lab, *, vmac: bool = False, liveness: Liveness | None = None) -> None:
        super().__init__(lab)
        self.vmac = vmac
        self.liveness = liveness
        base = f"ttl {HAAGENT_TTL}s margin {HAAGENT_MARGIN:g}s"
        if liveness == "fast":
            live = liveness_settings() or {}
            timing = ""
            if "interval" in live and "multiplier" in live:
                timing = f" {live['interval'] * 1000:g}ms x{live['multiplier']}"
            base += f", liveness{timing}"
        elif liveness == "lease":
            base += ", no liveness"
        self.config = base + (" vmac" if vmac else "")
        self.name = "haagent" + (f" {liveness}" if liveness else "") + (" vmac" if vmac else "")
        self._paths: dict[str, Path] = {}
        self._moves: dict[str, str] = {}  # VIP name -> node, of the move being tried

    @property
    def key_file(self) -> Path:
        return self.lab.workdir / LIVENESS_KEY

    def configs(self) -> dict[str, str]:
        # write_agent_config writes the file itself; read it back for the report.
        live = liveness_section(self.liveness, self.key_file)
        if live is not None and live.get("enabled"):
            write_liveness_key(self.key_file)
        out = {}
        for host in self.lab.hosts:
            extra = haagent_extra(
                HAAGENT_VIPS, host.ifname, fail_flag(self.lab, host), vmac=self.vmac
            )
            if live is not None:
                extra["liveness"] = live
            path = self.lab.write_agent_config(
                host, HAAGENT_VIPS, ttl=HAAGENT_TTL, margin=HAAGENT_MARGIN, extra=extra
            )
            self._paths[host.role] = path
            out[path.name] = path.read_text()
        return out

    def prepare(self) -> dict[str, str]:
        # configs() has written the files already: the base class would write them again.
        return self.configs()

    def start(self, host: Node) -> None:
        self.procs[host.role] = self.lab.start_agent(host, self._paths[host.role])

    def start_all(self, holds: HoldCheck) -> None:
        # h1 first and alone, so it wins both VIPs and the first trial can measure both:
        # alone, it is the best-ranked host there is once its start-up wait is over, and
        # with ``preempt: false`` it keeps them when better-ranked hosts join. (With
        # preemption the VIPs would go to their ranked hosts preempt_delay later.)
        first, *rest = self.lab.hosts
        tokens = {h.role: self.ready_token(h) for h in self.lab.hosts}
        self.start(first)
        holds.wait_holds(first, timeout=30.0)
        for host in rest:
            self.start(host)
        for host in rest:
            if not wait_for(partial(self.recovered, host, tokens[host.role]), 30.0):
                raise TimeoutError(f"agent on {host.role}: not ready after 30s")

    def timing(self) -> Timing:
        # Graceful: a watch event away. Hard: the lease TTL, plus slack before "none".
        # Health: the check's fall (and a run in progress), then a graceful handover.
        detect = (CHECK_FALL + 1) * HAAGENT_CHECK_INTERVAL + HAAGENT_CHECK_TIMEOUT
        return Timing(graceful=2.0, hard=HAAGENT_TTL + 3.0, health=detect + 2.0)

    def ready_token(self, host: Node) -> int:
        return len(_JOINED.findall(self.lab.agent_log(host)))

    def recovered(self, host: Node, token: int, *, rejoin: bool = True) -> bool:
        if not self.alive(host):
            return False
        log = self.lab.agent_log(host)
        joined = not rejoin or len(_JOINED.findall(log)) > token
        return (
            joined
            and (HAAGENT_STARTUP_WAIT <= 0 or haagent_ready(log))
            and haagent_healthy(log, [name for name, _ in HAAGENT_VIPS])
            and haagent_held_down_until(log, HAAGENT_HOLD_DOWN) <= time.time()
        )

    def standby(self, holder: Node) -> Node:
        """The host placement ranks first once ``holder`` is left out (decide.rank over what
        etcd holds now), for the first VIP ``holder`` holds: the one that would take over."""
        view = cluster_view(self.lab, self.lab.lab_id)
        for name, _address in HAAGENT_VIPS:
            held = view.holders.get(name)
            if held is None or held.node != holder.role:
                continue
            others = rank.candidates(view, name, exclude={holder.role})
            if others:
                return self.lab.host(others[0])
        return super().standby(holder)

    def detected_at(self, old: Node, since: float, until: float) -> float | None:
        found = [
            at
            for h in self.hosts
            if h != old
            and (at := haagent_detected_at(self.lab.agent_log(h), since, until, old.role))
            is not None
        ]
        return min(found, default=None)

    # Mode "move": what `haagent move` does, written by hand (docs/keys.md): a request on no
    # lease; the holder hands over while its key is older than the request.

    def plan_move(self, host: Node) -> dict[str, str]:
        """Where a move of each VIP ``host`` holds goes: the host ranked first once ``host``
        is left out (decide.rank, from what is in etcd now), the one a failure of ``host``
        would hand it to. Returns address -> node; move() writes the requests."""
        view = cluster_view(self.lab, self.lab.lab_id)
        planned: dict[str, str] = {}
        out: dict[str, str] = {}
        for name, address in HAAGENT_VIPS:
            holder = view.holders.get(name)
            if holder is None or holder.node != host.role:
                continue
            others = rank.candidates(view, name, exclude={host.role})
            if others:
                planned[name] = out[address] = others[0]
        self._moves = planned
        return out

    def move(self, host: Node) -> None:
        """Write the move requests plan_move() worked out (all at once: one etcdctl each)."""
        keys = Keys(self.lab.lab_id)
        by = f"bench@{host.role}"

        def put(item: tuple[str, str]) -> None:
            vip, to = item
            value = Request("move", to=to, by=by, at=time.time()).to_json().decode()
            self.lab.etcd.etcdctl("put", keys.request(vip), value)

        items = sorted(self._moves.items())
        if items:
            with ThreadPoolExecutor(len(items)) as pool:
                list(pool.map(put, items))

    def clear_moves(self) -> None:
        """Delete the requests (`haagent move --clear`): with ``preempt: false`` the VIP stays
        where it went; the later trials rank by priority and hash again, not by a pin."""
        keys = Keys(self.lab.lab_id)
        for vip in sorted(self._moves):
            self.lab.etcd.etcdctl("del", keys.request(vip))
        self._moves = {}

    def after_restore(self, host: Node) -> None:
        """Nothing to note: the agent's log says when it has a lease again (ready_token)."""
        return None


# --------------------------------------------------------------------------- keepalived

_KEEPALIVED_START = re.compile(r"Starting Keepalived v")
_KEEPALIVED_STATE = re.compile(r"\((\S+)\) Entering (\w+) STATE")


def keepalived_states(log: str) -> dict[str, str]:
    """Instance name -> its latest state (MASTER, BACKUP, FAULT) in keepalived's log, for
    the latest run only (the log is appended to across restarts)."""
    run = _latest_run(log, _KEEPALIVED_START)
    return {m.group(1): m.group(2) for m in _KEEPALIVED_STATE.finditer(run)}


class KeepalivedDriver(Driver):
    system = "keepalived"

    def __init__(self, lab: Lab, *, advert_int: float, vmac: bool) -> None:
        super().__init__(lab)
        self.advert_int = advert_int
        self.vmac = vmac
        self.config = f"advert_int {advert_int:g}s" + (" vmac" if vmac else "")
        self.name = f"keepalived {advert_int:g}s" + (" vmac" if vmac else "")
        self._heard_at_restore: dict[str, int] = {}
        self._log_seen: dict[str, tuple[int, dict[str, str]]] = {}

    @property
    def hosts(self) -> list[Node]:
        return [h for h in self.lab.hosts if h.role in KEEPALIVED_PRIORITY]

    def _conf_name(self, host: Node) -> str:
        return f"{host.role}.keepalived.conf"

    def render(self, host: Node) -> str:
        instance = Template((KEEPALIVED_TEMPLATES / "vrrp_instance.conf.in").read_text())
        whole = Template((KEEPALIVED_TEMPLATES / "keepalived.conf.in").read_text())
        script = Template((KEEPALIVED_TEMPLATES / "vrrp_script.conf.in").read_text())
        # Sub-second adverts need VRRPv3; IPv6 is VRRPv3 only (RFC 5798). keepalived's
        # default for IPv4 is version 2, kept in the default configuration.
        v4_version = 3 if self.advert_int < 1 else 2
        others = [h for h in self.hosts if h.role != host.role]
        parts = []
        for name, vrid, version, src, peers, vip, plen in (
            ("v4", VRID4, v4_version, host.ipv4, [h.ipv4 for h in others], Lab.vip4(0), 32),
            ("v6", VRID6, 3, host.ipv6, [h.ipv6 for h in others], Lab.vip6(0), 128),
        ):
            parts.append(
                instance.substitute(
                    name=name,
                    version=version,
                    vrid=vrid,
                    priority=KEEPALIVED_PRIORITY[host.role],
                    advert_int=f"{self.advert_int:g}",
                    # The VIP goes on the macvlan (vrrp.<vrid>, MAC 00:00:5e:00:0{1,2}:<vrid>);
                    # adverts still leave from eth0.
                    vmac="    use_vmac\n    vmac_xmit_base\n" if self.vmac else "",
                    src=src,
                    peers="\n".join(f"        {p}" for p in peers),
                    vip=f"{vip}/{plen}",
                    dev="" if self.vmac else " dev eth0",
                    script=HEALTH_CHECK,
                )
            )
        check = script.substitute(
            name=HEALTH_CHECK,
            command=" ".join(health_argv(fail_flag(self.lab, host))),
            interval=KEEPALIVED_SCRIPT_INTERVAL,
            timeout=KEEPALIVED_SCRIPT_TIMEOUT,
            fall=CHECK_FALL,
            rise=CHECK_RISE,
        )
        return whole.substitute(
            host=host.role, label=self.config, scripts=check, instances="".join(parts)
        )

    def configs(self) -> dict[str, str]:
        return {self._conf_name(h): self.render(h) for h in self.hosts}

    def log_path(self, host: Node) -> Path:
        return self.lab.workdir / f"{host.role}.keepalived.log"

    # A restored keepalived is back in the pair when it is MASTER, or when it has heard the
    # master since the restore. Until then its master-down timer may still fire: after a
    # link comes back, the master's unicast adverts wait for ARP/ND to resolve the peer
    # again, and at advert_int 0.1 s the restored BACKUP takes the VIP for a moment before
    # the master's advert arrives. That belongs to the restore, not to the next trial.
    # An nftables counter of incoming VRRP packets (IP protocol 112) tells when it heard.

    def _install_counter(self, host: Node) -> None:
        ruleset = (
            f"table inet {NFT_COUNTER}\ndelete table inet {NFT_COUNTER}\n"
            f"table inet {NFT_COUNTER} {{\n"
            "  chain input {\n"
            "    type filter hook input priority 0; policy accept;\n"
            "    meta l4proto 112 counter\n"
            "  }\n}\n"
        )
        self.lab.run(host, ["nft", "-f", "-"], input=ruleset)

    def _vrrp_heard(self, host: Node) -> int:
        out = self.lab.run(host, ["nft", "list", "table", "inet", NFT_COUNTER], check=False)
        m = re.search(r"counter packets (\d+)", out.stdout)
        return int(m.group(1)) if m else 0

    def _holds(self, host: Node) -> bool:
        out = self.lab.run(host, ["ip", "-o", "addr", "show"], check=False).stdout
        return f" {Lab.vip4(0)}/" in out

    def _in_fault(self, host: Node) -> bool:
        """Is an instance on `host` in FAULT (its check failing, its link down)?"""
        path = self.log_path(host)
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            return False
        seen = self._log_seen.get(host.role)
        if seen is None or seen[0] != size:  # re-read only when keepalived wrote more
            seen = (size, keepalived_states(path.read_text(errors="replace")))
            self._log_seen[host.role] = seen
        return "FAULT" in seen[1].values()

    def after_restore(self, host: Node) -> None:
        self._heard_at_restore[host.role] = self._vrrp_heard(host)

    def recovered(self, host: Node, token: int, *, rejoin: bool = True) -> bool:
        # Adverts keep arriving while an instance is in FAULT (a failing check), and a
        # BACKUP leaving FAULT starts its master-down timer afresh: only what it hears after
        # leaving FAULT counts.
        if not self.alive(host):
            return False
        count = self._vrrp_heard(host)
        if self._in_fault(host):
            self._heard_at_restore[host.role] = count
            return False
        heard = count > self._heard_at_restore.get(host.role, -1)
        return heard or self._holds(host)

    def start(self, host: Node) -> None:
        wd = self.lab.workdir
        # keepalived refuses to start while its pid files name a live process; a child
        # killed with its parent may linger as a zombie until init reaps it. Stale files go.
        for name in (f"{host.role}.keepalived.pid", f"{host.role}.keepalived.vrrp.pid"):
            path = wd / name
            with contextlib.suppress(OSError, ValueError):
                if not pid_alive(int(path.read_text().strip())):
                    path.unlink()
        argv = ["keepalived", "--dont-fork", "--log-console", "--log-detail", "--no-syslog"]
        argv += ["--vrrp", "--use-file", str(wd / self._conf_name(host))]
        # Per-host pid files: several keepalived instances on one machine must not share
        # /run/keepalived.pid, or the second refuses to start.
        argv += ["--pid", str(wd / f"{host.role}.keepalived.pid")]
        argv += ["--vrrp_pid", str(wd / f"{host.role}.keepalived.vrrp.pid")]
        self.procs[host.role] = self.lab.popen(host, argv, log=self.log_path(host))

    def start_all(self, holds: HoldCheck) -> None:
        # h1 alone first, so it is MASTER when h2 comes (with nopreempt, whichever host
        # wins the first election keeps the VIPs).
        for host in self.hosts:
            self._install_counter(host)
        first, *rest = self.hosts
        self.start(first)
        holds.wait_holds(first, timeout=10 * self.advert_int + 10.0)
        for host in rest:
            self.start(host)
        # Let the backups settle (a freshly started BACKUP can flap to MASTER for well under
        # a millisecond before h1's next advert): start-up is not what the trials measure.
        time.sleep(4 * self.advert_int + 0.5)

    def timing(self) -> Timing:
        # Master_Down_Interval = 3 x advert + skew (< 1 advert); then slack before "none".
        # Health: the script's fall (and a run in progress), then FAULT sends priority 0.
        graceful = 3 * self.advert_int + 1.5
        detect = (CHECK_FALL + 1) * KEEPALIVED_SCRIPT_INTERVAL + KEEPALIVED_SCRIPT_TIMEOUT
        return Timing(graceful=graceful, hard=4 * self.advert_int + 1.5, health=detect + graceful)


@dataclass(frozen=True)
class HaagentVariant:
    vmac: bool  # both VIPs on a macvlan with the VRRP virtual MAC
    liveness: Liveness | None  # None: no liveness section (whatever haagent does without)


def haagent_variants() -> dict[str, HaagentVariant]:
    """Name -> variant. ``fast`` / ``lease``: fast failover on / off (the ``liveness``
    section, above); ``default`` / ``vmac``: no ``liveness`` section written, as before it
    existed (with one, haagent's default; without a key file that is the lease alone)."""
    return {
        "fast": HaagentVariant(False, "fast"),
        "lease": HaagentVariant(False, "lease"),
        "fast-vmac": HaagentVariant(True, "fast"),
        "lease-vmac": HaagentVariant(True, "lease"),
        "default": HaagentVariant(False, None),
        "vmac": HaagentVariant(True, None),
    }


def keepalived_variants() -> dict[str, tuple[float, bool]]:
    """Name -> (advert_int, use_vmac)."""
    return {
        "default": (1.0, False),
        "default-vmac": (1.0, True),
        "tuned": (0.1, False),
        "tuned-vmac": (0.1, True),
    }


def group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes whose process group is `pgid`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        fields = stat_fields(int(entry.name))  # state(0) ppid(1) pgrp(2) ...
        if fields and len(fields) > 2 and int(fields[2]) == pgid and fields[0] not in "ZX":
            found.append(int(entry.name))
    return found

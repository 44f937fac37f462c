"""What a scale run sees of a haagent cluster from outside: kernels, etcd, /proc.

The agent is a black box here. Who holds what comes from two sources that must agree: the
kernel of every host (``ip -j addr``) and the holder keys in etcd (one range read of the
cluster's ``vips/`` prefix, docs/keys.md). Changes of the holder keys come from one
``etcdctl watch`` on that prefix from revision 1 (:class:`HolderWatch`), so none is missed and
any window of the run can be judged by revision. Process figures come from ``/proc`` and
etcd's own figures from its ``/metrics``. Used by ``bench/scale.py`` and
``tests/lab/test_scale.py``.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from ipaddress import ip_address
from pathlib import Path
from typing import Any

from haagent.cluster.schema import Drain, Holder, Keys, MemberRecord, Request, SchemaError
from haagent.cluster.view import ClusterView
from haagent.decide import rank
from haagent.lab.etcd import ETCDCTL
from haagent.lab.history import AddressEvent, IPAddress, check_history
from haagent.lab.topology import Lab, Node, pid_alive, stat_fields
from haagent.lab.wait import poll_until

PREFIX = "/haagent/v1"
# What an agent (or its fence, which logs there too) writes when it lost a VIP it held or
# could not prove its lease in time.
LOG_MARKERS = ("lease deadline passed", "vanished from", "released vip")


def cluster_prefix(cluster: str) -> str:
    return f"{PREFIX}/{cluster}/"


def vips_prefix(cluster: str) -> str:
    return f"{PREFIX}/{cluster}/vips/"


def member_key(cluster: str, node: str) -> str:
    return f"{PREFIX}/{cluster}/members/{node}"


def parse_vips(vips: Sequence[tuple[str, str]]) -> dict[str, IPAddress]:
    """(name, address) pairs as written into the agent configs -> name: address."""
    return {name: ip_address(address) for name, address in vips}


# --------------------------------------------------------------------------- who holds what


@dataclass(frozen=True)
class Snapshot:
    """Who holds which VIP right now, by the kernels and by etcd."""

    at: float  # time.time() when the snapshot was complete
    kernel: dict[str, frozenset[IPAddress]]  # host role -> VIPs bound on it (any interface)
    etcd: dict[str, str]  # VIP name -> node its holder key names
    revision: int  # etcd revision of the read

    def kernel_holders(self, ip: IPAddress) -> list[str]:
        return sorted(h for h, bound in self.kernel.items() if ip in bound)

    def settled(self, vips: Mapping[str, IPAddress]) -> dict[str, str]:
        """VIP name -> host, for every VIP bound on exactly one host that etcd names too."""
        out: dict[str, str] = {}
        for name, ip in vips.items():
            holders = self.kernel_holders(ip)
            if len(holders) == 1 and self.etcd.get(name) == holders[0]:
                out[name] = holders[0]
        return out

    def converged(self, vips: Mapping[str, IPAddress]) -> bool:
        return len(self.settled(vips)) == len(vips)

    def double_bound(self, vips: Mapping[str, IPAddress]) -> list[str]:
        """VIPs bound on two or more hosts at this moment."""
        return [name for name, ip in vips.items() if len(self.kernel_holders(ip)) > 1]

    def held_per_host(self) -> dict[str, int]:
        return {h: len(bound) for h, bound in sorted(self.kernel.items())}


def kernel_vips(lab: Lab, host: Node, wanted: Iterable[IPAddress]) -> frozenset[IPAddress]:
    """Those of ``wanted`` that are bound on any interface of ``host``."""
    return frozenset(lab.bound(host, all_interfaces=True) & set(wanted))


def etcd_holders(lab: Lab, cluster: str, *, timeout: float = 10.0) -> tuple[dict[str, str], int]:
    """VIP name -> node of its holder key, and the revision of that read."""
    proc = lab.etcd.etcdctl(
        "get",
        "--prefix",
        vips_prefix(cluster),
        "-w",
        "json",
        timeout=timeout,
        command_timeout=timeout - 1,
    )
    data = json.loads(proc.stdout)
    header = data.get("header") or data.get("Header") or {}
    holders: dict[str, str] = {}
    for kv in data.get("kvs") or []:
        parts = _b64(kv["key"]).split("/")
        if len(parts) < 2 or parts[-1] != "holder":
            continue
        with contextlib.suppress(ValueError, KeyError, TypeError):
            holders[parts[-2]] = str(json.loads(_b64(kv.get("value", "")))["node"])
    return holders, int(header.get("revision", 0))


def member_started(lab: Lab, cluster: str, node: str) -> float | None:
    """The ``started`` time of the node's member record (docs/keys.md): present exactly
    while its agent's lease lives; None without one."""
    key = member_key(cluster, node)
    proc = lab.etcd.etcdctl("get", "--print-value-only", key, check=False)
    try:
        return float(json.loads(proc.stdout)["started"])
    except (ValueError, KeyError, TypeError):
        return None


def snapshot(
    lab: Lab, cluster: str, vips: Mapping[str, IPAddress], hosts: Sequence[Node] | None = None
) -> Snapshot:
    """The kernels of ``hosts`` (default: all; ``[]``: etcd only), then etcd. In that order a
    VIP is never seen bound without its key just because it was bound between the reads."""
    wanted = set(vips.values())
    nodes = lab.hosts if hosts is None else hosts
    kernel = {h.role: kernel_vips(lab, h, wanted) for h in nodes}
    holders, revision = etcd_holders(lab, cluster)
    return Snapshot(time.time(), kernel, holders, revision)


def _b64(text: str) -> str:
    return base64.b64decode(text).decode(errors="replace")


# --------------------------------------------------------------------------- placement


def view_from_range(cluster: str, data: Mapping[str, Any]) -> ClusterView:
    """The cluster as the agents see it (members, holders, requests, drains) from one
    ``etcdctl get --prefix <cluster prefix> -w json`` answer; what cannot be read is left
    out, as an agent leaves it out (release records are not needed here)."""
    keys = Keys(cluster)
    members: dict[str, MemberRecord] = {}
    holders: dict[str, Holder] = {}
    requests: dict[str, Request] = {}
    drains: dict[str, Drain] = {}
    for kv in data.get("kvs") or []:
        parsed = keys.parse(_b64(kv.get("key", "")))
        if parsed is None:
            continue
        raw = base64.b64decode(kv.get("value", ""))
        mod_rev = int(kv.get("mod_revision", 0))
        with contextlib.suppress(SchemaError, ValueError, TypeError):
            if parsed.kind == "member":
                members[parsed.name] = MemberRecord.from_json(raw)
            elif parsed.kind == "holder":
                lease, created = int(kv.get("lease", 0)), int(kv.get("create_revision", 0))
                holders[parsed.name] = Holder.from_kv(raw, lease, created)
            elif parsed.kind == "request":
                requests[parsed.name] = Request.from_json(raw, revision=mod_rev)
            elif parsed.kind == "drain":
                drains[parsed.name] = Drain.from_json(raw, revision=mod_rev)
    header = data.get("header") or data.get("Header") or {}
    return ClusterView.of(
        int(header.get("revision", 0)),
        members=members,
        holders=holders,
        requests=requests,
        drains=drains,
    )


def cluster_view(lab: Lab, cluster: str, *, timeout: float = 10.0) -> ClusterView:
    """:func:`view_from_range` of one range read of the whole cluster prefix."""
    proc = lab.etcd.etcdctl(
        "get",
        "--prefix",
        cluster_prefix(cluster),
        "-w",
        "json",
        timeout=timeout,
        command_timeout=timeout - 1,
    )
    return view_from_range(cluster, json.loads(proc.stdout))


def expected_holders(view: ClusterView, vips: Iterable[str]) -> dict[str, str]:
    """VIP -> the host placement ranks first for it (``decide.rank``, from the published
    member records, move requests and drains), for the VIPs that have a candidate at all."""
    out: dict[str, str] = {}
    for vip in vips:
        order = rank.candidates(view, vip)
        if order:
            out[vip] = order[0]
    return out


def misplaced(view: ClusterView, vips: Iterable[str]) -> dict[str, tuple[str, str]]:
    """Held VIPs whose holder is not the host ranked first: VIP -> (holder, ranked first).
    With ``preempt`` on, each of them is still to move; once none is left and every member
    is past its start-up wait, placement has nothing more to do."""
    expected = expected_holders(view, vips)
    out: dict[str, tuple[str, str]] = {}
    for vip, want in expected.items():
        holder = view.holders.get(vip)
        if holder is not None and holder.node != want:
            out[vip] = (holder.node, want)
    return out


def spread(per_host: Mapping[str, int], hosts: Iterable[str]) -> dict[str, Any]:
    """VIPs per host against the even share N/M: the counts (every host, 0 included), the
    share, and the largest deviation from it in % of it (0 for a perfectly even spread)."""
    counts = {h: int(per_host.get(h, 0)) for h in sorted(set(hosts) | set(per_host))}
    total = sum(counts.values())
    even = total / len(counts) if counts else 0.0
    dev = max((abs(c - even) for c in counts.values()), default=0.0)
    return {
        "per_host": counts,
        "even": round(even, 2),
        "max_dev_pct": round(100.0 * dev / even, 1) if even else 0.0,
        "min": min(counts.values(), default=0),
        "max": max(counts.values(), default=0),
    }


def changed_holders(
    before: Mapping[str, str], after: Mapping[str, str]
) -> dict[str, tuple[str, str]]:
    """VIPs held in both pictures (VIP -> host) by different hosts: VIP -> (old, new)."""
    return {
        vip: (old, after[vip]) for vip, old in before.items() if vip in after and after[vip] != old
    }


# --------------------------------------------------------------------------- holder keys


@dataclass(frozen=True)
class KeyEvent:
    """A PUT or DELETE of a VIP's holder key or a node's member record, as the watch
    delivered it."""

    revision: int
    kind: str  # "holder" (vips/<name>/holder) or "member" (members/<name>)
    name: str  # the VIP's or the node's
    put: bool
    created: bool  # a PUT that created the key (create_revision == mod_revision)
    node: str | None  # the node a PUT names
    size: int = 0  # bytes of the value a PUT wrote


@dataclass(frozen=True)
class KeyCounts:
    acquires: int  # holder keys created
    releases: int  # holder keys deleted (resigned, revoked or expired)
    updates: int  # PUTs to an existing holder key

    @property
    def changes(self) -> int:
        return self.acquires + self.releases + self.updates


def count_key_events(
    events: Iterable[KeyEvent],
    after: int,
    upto: int | None = None,
    *,
    vips: Iterable[str] | None = None,
) -> KeyCounts:
    """Holder-key changes with ``after`` < revision <= ``upto`` (of ``vips`` only, if given)."""
    only = set(vips) if vips is not None else None
    sel = [
        e
        for e in events
        if e.kind == "holder"
        and e.revision > after
        and (upto is None or e.revision <= upto)
        and (only is None or e.name in only)
    ]
    return KeyCounts(
        acquires=sum(e.put and e.created for e in sel),
        releases=sum(not e.put for e in sel),
        updates=sum(e.put and not e.created for e in sel),
    )


def parse_watch_line(line: str) -> list[KeyEvent]:
    """One JSON response of ``etcdctl watch -w json`` as holder-key and member-record
    events (other keys dropped)."""
    try:
        data = json.loads(line)
    except ValueError:
        return []
    out: list[KeyEvent] = []
    for ev in data.get("Events") or []:
        kv = ev.get("kv") or {}
        parts = _b64(kv.get("key", "")).split("/")
        if len(parts) >= 2 and parts[-1] == "holder":
            kind, name = "holder", parts[-2]
        elif len(parts) >= 2 and parts[-2] == "members":
            kind, name = "member", parts[-1]
        else:
            continue
        put = ev.get("type", 0) in (0, "PUT")
        node: str | None = None
        value = _b64(kv.get("value", "")) if put else ""
        if put:
            with contextlib.suppress(ValueError, KeyError, TypeError):
                node = str(json.loads(value)["node"])
        revision = int(kv.get("mod_revision", 0))
        out.append(
            KeyEvent(
                revision=revision,
                kind=kind,
                name=name,
                put=put,
                created=put and int(kv.get("create_revision", 0)) == revision,
                node=node,
                size=len(value),
            )
        )
    return out


class HolderWatch:
    """``etcdctl watch --prefix <cluster>/ --rev 1 -w json`` in the client namespace: holder
    keys and member records.

    Starting at revision 1 replays the whole history first (the lab's etcd never compacts),
    so there is no race between starting the watch and the first change."""

    def __init__(self, lab: Lab, cluster: str, *, tag: str = "holders") -> None:
        self.lab = lab
        self.cluster = cluster
        self.log = lab.workdir / f"cl.watch.{tag}.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self._offset = 0
        self._events: list[KeyEvent] = []

    def start(self) -> HolderWatch:
        self.log.unlink(missing_ok=True)
        etcd = self.lab.etcd
        argv = [ETCDCTL, f"--endpoints={','.join(etcd.endpoints)}", *etcd.identity_args()]
        argv += ["watch", "--prefix", cluster_prefix(self.cluster), "--rev", "1", "-w", "json"]
        self._proc = self.lab.popen(self.lab.client, argv, log=self.log, env={"ETCDCTL_API": "3"})
        return self

    def events(self) -> list[KeyEvent]:
        """Every event delivered so far, in revision order."""
        try:
            with open(self.log, "rb") as f:
                f.seek(self._offset)
                data = f.read()
        except FileNotFoundError:
            return list(self._events)
        complete = data.rfind(b"\n") + 1
        self._offset += complete
        for line in data[:complete].decode(errors="replace").splitlines():
            self._events.extend(parse_watch_line(line))
        return list(self._events)

    def caught_up(self, revision: int, timeout: float = 10.0) -> bool:
        """Wait until the watch has delivered everything up to ``revision`` (it may have
        nothing to deliver there: then a later event or the timeout ends the wait)."""

        def delivered() -> bool:
            events = self.events()
            return bool(events) and events[-1].revision >= revision

        return poll_until(delivered, timeout)

    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def stop(self) -> list[KeyEvent]:
        if self._proc is not None:
            with contextlib.suppress(Exception):
                Lab.stop(self._proc, timeout=2.0)
        return self.events()


# --------------------------------------------------------------------------- a mass move


@dataclass(frozen=True)
class Outage:
    """A VIP that left the kernel of a host that was meant to keep it."""

    ip: IPAddress
    host: str
    out: float  # unix time it was removed (the first time in the window)
    back: float | None  # when the same host bound it again, if it did


@dataclass(frozen=True)
class MoveReport:
    """What the kernels show of one host's VIPs moving to the others (:func:`judge_move`)."""

    reheld: dict[IPAddress, float]  # moving VIP -> first bind on another host after t_fail
    not_moved: list[IPAddress]
    victim_unbound: dict[IPAddress, float]  # moving VIP -> its removal from the victim
    doubles: list[tuple[IPAddress, float, tuple[str, ...]]]  # VIP, s held twice, by whom
    collateral: list[Outage]


def arrivals(
    events: Iterable[AddressEvent], t0: float = float("-inf"), t1: float = float("inf")
) -> list[AddressEvent]:
    """The adds in [t0, t1] that put an address on a host that had it on no interface:
    holder changes. ``ip monitor`` reports every lifetime refresh of a bound address as an
    add too (haagent refreshes after each keepalive), so counting adds counts refreshes."""
    bound: dict[tuple[IPAddress, str], set[str]] = {}
    out: list[AddressEvent] = []
    for e in sorted(events, key=lambda e: (e.at, not e.initial)):
        devs = bound.setdefault((e.ip, e.host), set())
        if e.added:
            if not devs and not e.initial and t0 <= e.at <= t1:
                out.append(e)
            devs.add(e.dev)
        else:
            devs.discard(e.dev)
    return out


def bound_elsewhere(events: Iterable[AddressEvent], victim: str, t_fail: float) -> set[IPAddress]:
    """Addresses bound on a host other than ``victim`` at or after ``t_fail`` (the recorder's
    initial snapshot aside): what of the victim's VIPs has moved so far."""
    return {
        e.ip for e in events if e.added and not e.initial and e.host != victim and e.at >= t_fail
    }


def judge_move(
    events: Iterable[AddressEvent],
    vips: Iterable[IPAddress],
    victim: str,
    moving: Iterable[IPAddress],
    kept: Mapping[str, Iterable[IPAddress]],
    t_fail: float,
    since: float,
    until: float,
) -> MoveReport:
    """Judge the recorded address events of ``[since, until]`` around a failure of
    ``victim`` at ``t_fail``: when each of its ``moving`` VIPs was bound elsewhere, every
    VIP of ``vips`` that two hosts held at once (:func:`check_history`), and every VIP in
    ``kept`` (host -> VIPs it held before) that left that host's kernel at any moment."""
    by_ip: dict[IPAddress, list[AddressEvent]] = {}
    for e in events:
        by_ip.setdefault(e.ip, []).append(e)
    reheld: dict[IPAddress, float] = {}
    unbound: dict[IPAddress, float] = {}
    not_moved: list[IPAddress] = []
    for ip in sorted(set(moving), key=str):
        later = [e for e in by_ip.get(ip, []) if not e.initial and e.at >= t_fail]
        adds = [e.at for e in later if e.added and e.host != victim]
        dels = [e.at for e in later if not e.added and e.host == victim]
        if adds:
            reheld[ip] = min(adds)
        else:
            not_moved.append(ip)
        if dels:
            unbound[ip] = min(dels)
    doubles: list[tuple[IPAddress, float, tuple[str, ...]]] = []
    for ip in vips:
        report = check_history(by_ip.get(ip, []), [], ip, until, since=since)
        if report.double_holder:
            hosts = tuple(sorted({h for _, _, hs in report.double_holder for h in hs}))
            doubles.append((ip, report.double_holder_s, hosts))
    collateral: list[Outage] = []
    for host, held in kept.items():
        for ip in held:
            mine = [e for e in by_ip.get(ip, []) if e.host == host and not e.initial]
            outs = [e.at for e in mine if not e.added and since <= e.at <= until]
            if outs:
                back = [e.at for e in mine if e.added and e.at > outs[0]]
                collateral.append(Outage(ip, host, outs[0], min(back) if back else None))
    return MoveReport(reheld, not_moved, unbound, doubles, collateral)


# --------------------------------------------------------------------------- processes

_CLK_TCK = os.sysconf("SC_CLK_TCK")


def status_kb(pid: int, field: str) -> int | None:
    """A ``kB`` field of /proc/<pid>/status (VmRSS, VmHWM, …); None if gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def cpu_seconds(pid: int) -> float | None:
    """utime + stime of the process (all its threads), in seconds; None if gone."""
    fields = stat_fields(pid)
    if fields is None:
        return None
    # After the command: state(3) ppid(4) … utime(14) stime(15) -> indexes 11 and 12.
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


def fence_pid(agent_pid: int) -> int | None:
    """The agent's fence: its child running ``python -m haagent.fence``."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        fields = stat_fields(int(entry.name))
        try:
            if fields is None or int(fields[1]) != agent_pid:  # fields[1]: ppid
                continue
            if b"haagent.fence" in (entry / "cmdline").read_bytes():
                return int(entry.name)
        except (OSError, ValueError, IndexError):
            continue
    return None


def wait_gone(pid: int | None, timeout: float) -> bool:
    """Wait until the process has exited (a zombie counts as gone); False on timeout."""
    return pid is None or poll_until(lambda: not pid_alive(pid), timeout, 0.02)


# --------------------------------------------------------------------------- etcd metrics

_FETCH = (
    "import sys, urllib.request\n"
    "sys.stdout.write(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode())\n"
)


def etcd_metrics(lab: Lab, member: int = 0) -> dict[str, float]:
    """Prometheus samples of one etcd member (``name{labels}`` -> value), fetched over the lab
    network from the client namespace. Only plain http labs (the scale runs use those)."""
    url = lab.etcd_endpoints[member] + "/metrics"
    text = lab.run(lab.client, [sys.executable, "-c", _FETCH, url], timeout=15).stdout
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name, _, value = line.rpartition(" ")
        with contextlib.suppress(ValueError):
            out[name] = float(value)
    return out


def metric_sum(samples: Mapping[str, float], name: str) -> float:
    """The sum of every sample of metric ``name`` (all label sets)."""
    return sum(v for k, v in samples.items() if k == name or k.startswith(name + "{"))


def db_size(samples: Mapping[str, float]) -> float | None:
    """etcd's database size in bytes, under whichever name this etcd exports it."""
    for name in ("etcd_mvcc_db_total_size_in_bytes", "etcd_debugging_mvcc_db_total_size_in_bytes"):
        if name in samples:
            return samples[name]
    return None

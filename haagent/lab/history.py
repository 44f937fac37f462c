"""Who held a VIP when, and did two hosts hold or answer for it at once?

Two halves:

* **Recorders** (need a lab): :func:`start_address_recorder` runs ``ip -ts -o monitor address``
  in each host namespace for as long as you like and turns its lines into
  :class:`AddressEvent` s.
* **The checker** (pure, unit-tested): :func:`holding_intervals` turns address events into
  per-host holding intervals, and :func:`check_history` adds the probe log of a client and
  reports every window in which two hosts held the address (``double_holder``) and every
  time the client got an answer from a host that had already been superseded
  (``double_answer``).

Timestamps
----------
Event times are the timestamps ``ip -ts`` prints, not the time our reader saw the line.
iproute2 takes them with ``gettimeofday()`` as it receives each netlink message and prints
them with microsecond resolution in *local* time (the recorder runs it with ``TZ=UTC`` so
parsing is unambiguous). Measured on the lab (5 adds and 5 deletes from a script that took
``time.time()`` right before and after each ``ip addr add/del``): every timestamp fell inside
that before/after window, which was 1.5-8 ms wide. So an event time is the kernel's change
plus at most a few ms of scheduling delay of ``ip`` itself, on the same clock as the probe's
``sent`` times (``time.time()`` of the same machine). Two events on different hosts less than
a few ms apart can therefore be ordered wrongly; a reported overlap carries its duration so
the reader can judge.

Definitions (what "held" and "answered at once" mean)
-----------------------------------------------------
* A host **holds** the address from an event that adds it on any of its interfaces until the
  event that removes it from the last interface carrying it. An "add" while it is already
  held (e.g. the kernel re-announces a lifetime refresh as RTM_NEWADDR) changes nothing.
* If the first event seen for a host and interface is a removal, the address was bound
  before the recording started: the interval begins at ``since`` (the recorder's start time),
  or at the earliest event in the list when ``since`` is not given.
* An interval still open at ``until`` ends at ``until``. Intervals are half-open
  ``[start, end)``: one host removing the address at the very instant another adds it
  ("touching") is a clean handover, not an overlap.
* ``double_holder``: every maximal window ``(t0, t1, hosts)`` with ``t0 < t1`` in which two or
  more hosts held the address, clipped to ``[since, until]``; ``hosts`` are all hosts that
  held it during the window.
* ``double_answer``: take the answered probes in send order and group consecutive answers
  from the same host into runs. When host A answers again after another host B answered
  (a run A … B … A), that return is an **interleaving** — unless the address history shows
  that A lost the address and bound it anew after B's first answer (a legitimate hand-back).
  The new binding counts if it existed at any moment between the probe's send time and its
  reply's arrival, plus ``EVENT_SLACK`` for the lateness of ``ip -ts`` timestamps: a probe
  can wait in the client's neighbour queue while the VIP moves and reach A just after A
  bound it again. With no address history for A at that time, the return counts.
  ``double_answer`` is true when there is at least one interleaving. Answers are ordered by
  *send* time, so a late reply from A to a probe sent before B's first answer is not an
  interleaving.

Several addresses of one VIP (``addresses:``): a **split**
----------------------------------------------------------
The addresses of one VIP must always be on one host. Two definitions, one per half:

* From the kernels, :func:`split_windows`: every maximal window ``(t0, t1)``, ``t0 < t1``, in
  which host A held one address of the VIP and a host B ≠ A held another (holding intervals
  as above, half-open, so a clean handover that touches is no split).
* From the client, :func:`splits`: host B answered a probe to address Y while host A was
  answering address X ≠ Y both before and after it, and nobody else answered X in between.
  Precisely: answered probes p1, p2 to X, both from A with no answer to X from another host
  between them (in send order), and an answered probe q to Y from B ≠ A with
  ``p1.sent + p1.rtt <= q.sent`` and ``q.sent + q.rtt <= p2.sent``. A's reply to p1
  arrived before q was sent and p2 was sent after B's reply arrived, so A had X at a moment
  before and at a moment after the moment B had Y: A had X while B had Y, unless A lost X
  and got it back in between without anyone answering X meanwhile (the tests that use this
  keep every holder long enough to be heard on each address). A probe that waited in the
  client (a neighbour queue) before reaching B has a late arrival, so it makes no split.
"""

from __future__ import annotations

import bisect
import contextlib
import functools
import itertools
import re
import subprocess
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, tzinfo
from ipaddress import IPv4Address, IPv6Address, ip_address
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

from haagent.lab.probe import ProbeRecord

if TYPE_CHECKING:
    from haagent.lab.topology import Lab, Node

IPAddress = IPv4Address | IPv6Address
Interval = tuple[float, float]


@dataclass(frozen=True)
class AddressEvent:
    """An address appeared on (``added``) or disappeared from an interface of ``host``."""

    host: str
    at: float  # unix time, from ip -ts
    ip: IPAddress
    added: bool
    dev: str = ""
    initial: bool = False  # synthesised from the snapshot taken when the recorder started


@dataclass(frozen=True)
class Interleaving:
    """The client got an answer from ``host`` after ``after`` had taken over from it."""

    at: float  # send time of the probe answered by the returning host
    host: str
    after: str  # the host whose answers came between
    superseded_at: float  # send time of the first answer from `after`


@dataclass
class HistoryReport:
    ip: IPAddress
    intervals: dict[str, list[Interval]]
    double_holder: list[tuple[float, float, tuple[str, ...]]] = field(default_factory=list)
    interleavings: list[Interleaving] = field(default_factory=list)

    @property
    def double_answer(self) -> bool:
        return bool(self.interleavings)

    @property
    def ok(self) -> bool:
        return not self.double_holder and not self.double_answer

    @property
    def double_holder_s(self) -> float:
        """Total time two or more hosts held the address."""
        return sum(t1 - t0 for t0, t1, _ in self.double_holder)


# --------------------------------------------------------------------------- parsing

# [2026-11-23T08:22:20.319419] 3: eth0    inet 198.51.100.201/32 scope global eth0\ ...
# [2026-11-23T08:22:20.323734] Deleted 3: vrrp.51    inet6 2001:db8:100::200/128 scope ...
_LINE = re.compile(
    r"^\[(?P<ts>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?)\]\s*"
    r"(?:\[ADDR\]\s*)?"
    r"(?P<deleted>Deleted\s+)?"
    r"\d+:\s+(?P<dev>[^\s:]+)\s+"
    r"(?P<family>inet6?)\s+(?P<addr>[0-9A-Fa-f:.]+)"
)


def parse_monitor_line(host: str, line: str, *, tz: tzinfo = UTC) -> AddressEvent | None:
    """One line of ``ip -ts -o monitor address`` as an event; None for anything else.

    ``tz`` is the time zone ``ip`` printed its local time in (the recorder forces UTC).
    """
    m = _LINE.match(line.strip())
    if m is None:
        return None
    ts = m.group("ts")
    try:
        at = datetime.strptime(ts, "%Y-%m-%dT%H:%M:%S.%f" if "." in ts else "%Y-%m-%dT%H:%M:%S")
        addr = ip_address(m.group("addr"))
    except ValueError:
        return None
    return AddressEvent(
        host=host,
        at=at.replace(tzinfo=tz).timestamp(),
        ip=addr,
        added=m.group("deleted") is None,
        dev=m.group("dev").split("@", 1)[0],
    )


def parse_monitor_output(host: str, text: str, *, tz: tzinfo = UTC) -> list[AddressEvent]:
    return [ev for line in text.splitlines() if (ev := parse_monitor_line(host, line, tz=tz))]


# --------------------------------------------------------------------------- pure core


def _ordered(events: Iterable[AddressEvent]) -> list[AddressEvent]:
    # Stable: events with equal timestamps keep the order they were recorded in.
    return sorted(events, key=lambda e: e.at)


def holding_intervals(
    events: Iterable[AddressEvent],
    ip: IPAddress | str,
    until: float,
    *,
    since: float | None = None,
) -> dict[str, list[Interval]]:
    """Per host, the ``[start, end)`` intervals during which it held ``ip`` (see module doc).

    Events after ``until`` are ignored; intervals still open end at ``until``; empty
    intervals are dropped. Hosts that never held the address do not appear.
    """
    target = ip_address(ip) if isinstance(ip, str) else ip
    ordered = _ordered(events)
    origin = since if since is not None else (ordered[0].at if ordered else until)
    devs: dict[str, set[str]] = {}  # host -> devices carrying the address now
    seen: set[tuple[str, str]] = set()  # (host, dev) with at least one event
    opened: dict[str, float] = {}
    out: dict[str, list[Interval]] = {}
    for ev in ordered:
        if ev.ip != target or ev.at > until:
            continue
        held = devs.setdefault(ev.host, set())
        key = (ev.host, ev.dev)
        first = key not in seen
        seen.add(key)
        if ev.added:
            if not held:
                opened[ev.host] = max(ev.at, origin)
            held.add(ev.dev)
            continue
        if ev.dev not in held:
            if not first:
                continue  # a repeated removal: nothing to close
            # Removed without an add since the recording began: it was bound at the start.
            if not held:
                opened[ev.host] = origin
            held.add(ev.dev)
        held.discard(ev.dev)
        if not held:
            out.setdefault(ev.host, []).append((opened.pop(ev.host), ev.at))
    for host, start in opened.items():
        out.setdefault(host, []).append((start, until))
    return {
        host: [(s, e) for s, e in sorted(ivs) if s < e]
        for host, ivs in sorted(out.items())
        if any(s < e for s, e in ivs)
    }


def overlaps(
    intervals: dict[str, list[Interval]], *, since: float | None = None, until: float | None = None
) -> list[tuple[float, float, tuple[str, ...]]]:
    """Maximal windows in which two or more hosts hold, clipped to ``[since, until]``."""
    points: list[tuple[float, int, str]] = []
    for host, ivs in intervals.items():
        for start, end in ivs:
            lo = start if since is None else max(start, since)
            hi = end if until is None else min(end, until)
            if lo < hi:
                # At equal times, ends (-1) sort before starts (+1): touching is no overlap.
                points.append((lo, 1, host))
                points.append((hi, -1, host))
    points.sort(key=lambda p: (p[0], p[1]))
    active: dict[str, int] = {}
    windows: list[tuple[float, float, tuple[str, ...]]] = []
    win_start: float | None = None
    win_hosts: set[str] = set()
    for at, delta, host in points:
        before = sum(1 for n in active.values() if n > 0)
        active[host] = active.get(host, 0) + delta
        after = sum(1 for n in active.values() if n > 0)
        if before < 2 <= after:
            win_start = at
            win_hosts = {h for h, n in active.items() if n > 0}
        elif after >= 2:
            win_hosts |= {h for h, n in active.items() if n > 0}
        elif before >= 2 > after and win_start is not None:
            if at > win_start:
                windows.append((win_start, at, tuple(sorted(win_hosts))))
            win_start = None
            win_hosts = set()
    return windows


# s an `ip -ts` timestamp may trail the kernel's change (measured above: a few ms).
EVENT_SLACK = 0.01


def _interval_at(ivs: Sequence[Interval], t0: float, t1: float) -> Interval | None:
    """The interval that overlaps ``[t0, t1]``, the latest if several do."""
    found = None
    for start, end in ivs:
        if start <= t1 and t0 <= end:
            found = (start, end)
    return found


def interleavings(
    probes: Iterable[ProbeRecord],
    intervals: dict[str, list[Interval]] | None = None,
    *,
    since: float | None = None,
    until: float | None = None,
) -> list[Interleaving]:
    """Answers from a host that had already been superseded (see the module doc)."""
    answered = sorted(
        (
            p
            for p in probes
            if p.by is not None
            and (since is None or p.sent >= since)
            and (until is None or p.sent < until)
        ),
        key=lambda p: (p.sent, p.seq),
    )
    # (host, send time of the run's first answer, that answer's arrival)
    runs: list[tuple[str, float, float]] = []
    for p in answered:
        assert p.by is not None
        if not runs or runs[-1][0] != p.by:
            runs.append((p.by, p.sent, p.sent + (p.rtt or 0.0)))
    found: list[Interleaving] = []
    last_run: dict[str, int] = {}  # host -> index of its latest run so far
    for i, (host, at, back) in enumerate(runs):
        previous = last_run.get(host)
        last_run[host] = i
        if previous is None:
            continue
        # The host that took over right after this host's previous run.
        after, superseded_at, _ = runs[previous + 1]
        held = _interval_at((intervals or {}).get(host, []), at, back + EVENT_SLACK)
        if held is not None and held[0] > superseded_at:
            continue  # it lost the address and bound it again: a hand-back, not a double
        found.append(Interleaving(at=at, host=host, after=after, superseded_at=superseded_at))
    return found


def check_history(
    events: Iterable[AddressEvent],
    probes: Iterable[ProbeRecord],
    ip: IPAddress | str,
    until: float,
    *,
    since: float | None = None,
) -> HistoryReport:
    """Did two hosts hold ``ip`` at once, or did the client hear from two interleaved?

    ``events``: address events of every host (any address; filtered to ``ip`` here).
    ``probes``: the client's probe records for ``ip`` (unanswered ones are ignored).
    ``since``/``until``: the window to judge; address history before ``since`` is still used
    to know who held the address when the window began.
    """
    target = ip_address(ip) if isinstance(ip, str) else ip
    events = list(events)
    intervals = holding_intervals(events, target, until, since=_origin(events, since))
    return HistoryReport(
        ip=target,
        intervals=intervals,
        double_holder=overlaps(intervals, since=since, until=until),
        interleavings=interleavings(probes, intervals, since=since, until=until),
    )


def _origin(events: Sequence[AddressEvent], since: float | None) -> float | None:
    """Where an interval with no add event begins: the recording's start, not the window's.

    With initial snapshot events in the list, their time is the recording's start.
    """
    initial = [e.at for e in events if e.initial]
    if initial:
        return min(initial)
    if since is not None and events:
        return min(since, min(e.at for e in events))
    return since


@dataclass(frozen=True)
class Split:
    """The client heard ``host`` answer ``ip`` while ``other_host`` was answering ``other_ip``
    (another address of the same VIP) before and after it: see the module doc."""

    at: float  # send time of the probe to `ip` that `host` answered
    ip: IPAddress
    host: str
    other_ip: IPAddress
    other_host: str
    between: Interval  # send times of other_host's answers to other_ip around it


def splits(probes: Mapping[IPAddress, Iterable[ProbeRecord]]) -> list[Split]:
    """Every split in the client's probe records of the addresses of one VIP (module doc).

    Per address, its answers in send order fall into runs of one host each; a split is an
    answer to another address, from another host, sent after some answer of such a run
    arrived and arriving before some later answer of the run was sent. O(n log n): each
    run looks up, by send time, only the answers to the other addresses within its span.
    """
    answered = {
        ip: sorted((p for p in records if p.by is not None), key=lambda p: (p.sent, p.seq))
        for ip, records in probes.items()
    }
    sent = {ip: [p.sent for p in ps] for ip, ps in answered.items()}
    found: list[Split] = []
    for x, y in itertools.permutations(answered, 2):
        ys, y_sent = answered[y], sent[y]
        for host, group in itertools.groupby(answered[x], key=lambda p: p.by):
            run = list(group)
            assert host is not None
            # The earliest arrival of the run and its last send: A had X at some moment
            # before the first and after the second.
            since = min(p.sent + (p.rtt or 0.0) for p in run)
            until = run[-1].sent
            for q in ys[bisect.bisect_left(y_sent, since) : bisect.bisect_right(y_sent, until)]:
                if q.by != host and q.sent + (q.rtt or 0.0) <= until:
                    assert q.by is not None
                    found.append(Split(q.sent, y, q.by, x, host, (run[0].sent, until)))
    return sorted(found, key=lambda s: s.at)


def split_windows(
    intervals: Mapping[IPAddress, dict[str, list[Interval]]],
) -> list[tuple[float, float, tuple[tuple[str, IPAddress], tuple[str, IPAddress]]]]:
    """Windows in which one host held an address of a VIP and another host held another one:
    ``(t0, t1, ((host A, ip X), (host B, ip Y)))``, from the holding intervals of each
    address (:func:`holding_intervals`). Each pair is reported once."""
    out: list[tuple[float, float, tuple[tuple[str, IPAddress], tuple[str, IPAddress]]]] = []
    for x, y in itertools.combinations(intervals, 2):
        for (a, a_ivs), (b, b_ivs) in itertools.product(intervals[x].items(), intervals[y].items()):
            if a == b:
                continue
            for (s1, e1), (s2, e2) in itertools.product(a_ivs, b_ivs):
                lo, hi = max(s1, s2), min(e1, e2)
                if lo < hi:
                    out.append((lo, hi, ((a, x), (b, y))))
    return sorted(out)


# --------------------------------------------------------------------------- recorders


class Recorder:
    """``ip -ts -o monitor address`` in each host namespace, read incrementally."""

    def __init__(self, lab: Lab, hosts: Sequence[Node], *, tag: str = "") -> None:
        self.lab = lab
        self.hosts = list(hosts)
        self.started_at: float = time.time()
        self._procs: dict[str, subprocess.Popen[bytes]] = {}
        self._logs: dict[str, Path] = {}
        self._offsets: dict[str, int] = {}
        self._events: list[AddressEvent] = []
        self._tag = tag or f"{int(self.started_at * 1000)}"

    def start(self, *, ready_timeout: float = 5.0) -> Recorder:
        for host in self.hosts:
            log = self.lab.workdir / f"{host.role}.addrmon.{self._tag}.log"
            log.unlink(missing_ok=True)
            self._logs[host.role] = log
            self._offsets[host.role] = 0
            self._procs[host.role] = self.lab.popen(
                host,
                [*_realtime(), "ip", "-ts", "-o", "monitor", "address"],
                log=log,
                env={"TZ": "UTC"},
            )
        deadline = time.monotonic() + ready_timeout
        for role, proc in self._procs.items():
            while not _subscribed(proc.pid):
                if proc.poll() is not None:
                    self.stop()
                    raise RuntimeError(f"ip monitor on {role} exited {proc.returncode}")
                if time.monotonic() >= deadline:
                    self.stop()
                    raise RuntimeError(f"ip monitor on {role} not listening after {ready_timeout}s")
                time.sleep(0.01)
        self.started_at = time.time()
        self._snapshot()
        return self

    def _snapshot(self) -> None:
        """Addresses already bound now: events marked ``initial`` at ``started_at``."""
        for host in self.hosts:
            out = self.lab.run(host, ["ip", "-o", "addr", "show"], check=False, timeout=10).stdout
            for line in out.splitlines():
                parts = line.split()
                # 2: eth0    inet 198.51.100.11/24 brd ... scope global eth0\ ...
                if len(parts) < 4 or parts[2] not in ("inet", "inet6"):
                    continue
                try:
                    addr = ip_address(parts[3].split("/", 1)[0])
                except ValueError:
                    continue
                dev = parts[1].split("@", 1)[0]
                self._events.append(
                    AddressEvent(host.role, self.started_at, addr, True, dev, initial=True)
                )

    def poll(self) -> list[AddressEvent]:
        """Every event so far (initial snapshot first, then in recorded order)."""
        for role, log in self._logs.items():
            try:
                with open(log, "rb") as f:
                    f.seek(self._offsets[role])
                    data = f.read()
            except FileNotFoundError:
                continue
            complete = data.rfind(b"\n") + 1  # only whole lines; the rest comes next time
            self._offsets[role] += complete
            text = data[:complete].decode(errors="replace")
            self._events.extend(parse_monitor_output(role, text))
        return list(self._events)

    def stop(self) -> list[AddressEvent]:
        for proc in self._procs.values():
            with contextlib.suppress(Exception):
                self.lab.stop(proc, timeout=2.0)
        return self.poll()

    def __enter__(self) -> Recorder:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


@functools.cache
def _realtime() -> tuple[str, ...]:
    """A prefix that runs the monitors at real-time priority, where this machine allows it.

    ``ip -ts`` stamps an event when it reads it, not when the kernel made it (netlink carries
    no timestamp), so a monitor waiting for a busy CPU stamps late: measured 5 ms late on a
    loaded 2-core machine, enough to show a handover's unbind after the next host's bind and
    fake a double holder. The monitors only wake for address events, so a real-time class
    costs the rest of the lab nothing.
    """
    cmd = ("chrt", "--fifo", "10")
    try:
        ok = subprocess.run([*cmd, "true"], capture_output=True, timeout=5).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        ok = False
    return cmd if ok else ()


def _subscribed(pid: int) -> bool:
    """The process has exec'd ``ip ... monitor`` and bound its netlink socket to the address
    groups: every change from now on reaches it.

    ``/proc/<pid>/net/netlink`` is the table of the process's own namespace; its ``Groups``
    column (hex) is 0 until bind() joins the multicast groups.
    """
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        if b"monitor" not in cmdline or b"netns" in cmdline:
            return False
        links = (str(fd.readlink()) for fd in Path(f"/proc/{pid}/fd").iterdir())
        inodes = {link[len("socket:[") : -1] for link in links if link.startswith("socket:[")}
        table = Path(f"/proc/{pid}/net/netlink").read_text().splitlines()[1:]
        # sk Eth Pid Groups Rmem Wmem Dump Locks Drops Inode
        return any(
            len(cols) >= 10 and cols[9] in inodes and int(cols[3], 16) != 0
            for cols in (row.split() for row in table)
        )
    except (OSError, ValueError):
        return False


def start_address_recorder(lab: Lab, hosts: Sequence[Node], *, tag: str = "") -> Recorder:
    """Record every address added to or removed from the hosts until ``stop()``."""
    return Recorder(lab, hosts, tag=tag).start()

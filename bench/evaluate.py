"""What one failover trial looked like to the client and to the kernels (pure).

A trial is judged on the window ``[since, until)`` of a continuous probe run, where the
failure was injected on ``old_holder`` at ``t_fail`` (all unix times, one machine's clock):

* ``gap_ms``: the longest time between the send times of two consecutive answered probes,
  among the pairs whose second probe was sent at or after ``t_fail`` (so the gap spanning the
  failure counts, an earlier hiccup does not). If the client heard nothing for the last
  ``OPEN_AFTER`` seconds or more of the window and that is longer, the outage never closed:
  ``gap_ms`` is then ``until`` minus the last answer and ``gap_censored`` is true (a lower
  bound).
* ``to_new_ms``: from ``t_fail`` to the *arrival* (send time + rtt) of the first answer from
  a host other than ``old_holder``; ``None`` — "failover: none" — if no other host answered
  in the window. A system where the old holder keeps answering (its address still bound) has
  a small gap and no failover.
* ``double_holder`` / ``double_answer``: :func:`haagent.lab.history.check_history` on the
  window.
* ``stable_start``: the last answer before ``t_fail`` came from ``old_holder``.
* ``expect``: what the mode calls right (``Mode.expect``): ``"move"`` — another host must take
  the VIP over — or ``"stay"`` — the VIP must stay where it is (a peer's broken link alone
  must not move it). ``moved_ms``: the first bind of the VIP on another host after
  ``t_fail`` (kernel address events), ``None`` if none. ``outcome``: ``"moved"`` when another
  host bound the VIP or answered for it, else ``"stayed"``; ``as_expected`` compares the two.
  A "stay" trial is judged on the same figures — the client gap, two holders, two
  answering — and a move in it is a failure of the system, not a failover.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from itertools import pairwise

from haagent.lab.history import AddressEvent, IPAddress, check_history, holding_intervals
from haagent.lab.probe import ProbeRecord

OPEN_AFTER = 0.05  # s of silence at the end of a window that make its outage "open"
EXPECTATIONS = ("move", "stay")


@dataclass
class TrialResult:
    old_holder: str
    t_fail: float
    since: float
    until: float
    sent: int
    answered: int
    stable_start: bool
    failed_over: bool
    new_holder: str | None
    to_new_ms: float | None
    gap_ms: float | None
    gap_censored: bool
    gap_start_ms: float | None  # start of the longest gap, relative to t_fail
    double_holder: list[tuple[float, float, tuple[str, ...]]] = field(default_factory=list)
    double_answer: bool = False
    interleavings: int = 0
    expect: str = "move"
    moved_ms: float | None = None

    @property
    def double_holder_ms(self) -> float:
        return sum(t1 - t0 for t0, t1, _ in self.double_holder) * 1000.0

    @property
    def outcome(self) -> str:
        """``"moved"``: another host bound the VIP or answered for it; else ``"stayed"``."""
        return "moved" if self.failed_over or self.moved_ms is not None else "stayed"

    @property
    def as_expected(self) -> bool:
        return self.outcome == ("moved" if self.expect == "move" else "stayed")


def evaluate_trial(
    probes: Iterable[ProbeRecord],
    events: Iterable[AddressEvent],
    ip: IPAddress | str,
    old_holder: str,
    t_fail: float,
    since: float,
    until: float,
    *,
    expect: str = "move",
) -> TrialResult:
    if expect not in EXPECTATIONS:
        raise ValueError(f"expect must be one of {EXPECTATIONS}, not {expect!r}")
    events = list(events)
    window = sorted((p for p in probes if since <= p.sent < until), key=lambda p: (p.sent, p.seq))
    answered = [p for p in window if p.by is not None]
    before = [p for p in answered if p.sent < t_fail]
    new = [p for p in answered if p.sent >= t_fail and p.by != old_holder]
    first_new = new[0] if new else None

    gap: float | None = None
    gap_start: float | None = None
    for a, b in pairwise(answered):
        if b.sent >= t_fail and (gap is None or b.sent - a.sent > gap):
            gap, gap_start = b.sent - a.sent, a.sent
    last = answered[-1].sent if answered else since
    trailing = until - last
    censored = False
    if trailing >= OPEN_AFTER and (gap is None or trailing > gap):
        gap, gap_start, censored = trailing, last, True

    report = check_history(events, window, ip, until, since=since)
    ivs = holding_intervals(events, ip, until, since=since)
    binds = [s for h, spans in ivs.items() if h != old_holder for s, _e in spans if s >= t_fail]
    return TrialResult(
        old_holder=old_holder,
        t_fail=t_fail,
        since=since,
        until=until,
        sent=len(window),
        answered=len(answered),
        stable_start=bool(before) and before[-1].by == old_holder,
        failed_over=first_new is not None,
        new_holder=first_new.by if first_new else None,
        to_new_ms=(
            (first_new.sent + (first_new.rtt or 0.0) - t_fail) * 1000.0 if first_new else None
        ),
        gap_ms=None if gap is None else gap * 1000.0,
        gap_censored=censored,
        gap_start_ms=None if gap_start is None else (gap_start - t_fail) * 1000.0,
        double_holder=report.double_holder,
        double_answer=report.double_answer,
        interleavings=len(report.interleavings),
        expect=expect,
        moved_ms=(min(binds) - t_fail) * 1000.0 if binds else None,
    )


def percentile(values: Sequence[float], p: float) -> float | None:
    """Nearest-rank percentile (p95 of 10 values is the largest); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100.0 * len(ordered)))
    return ordered[rank - 1]


@dataclass
class Summary:
    trials: int
    failed_over: int
    gap_median_ms: float | None
    gap_p95_ms: float | None
    gap_max_ms: float | None
    gap_censored: int
    to_new_median_ms: float | None
    to_new_p95_ms: float | None
    to_new_max_ms: float | None
    double_holder_trials: int
    double_holder_max_ms: float
    double_answer_trials: int
    unstable_start: int
    expect: str = "move"
    stayed: int = 0  # trials where no other host bound the VIP or answered for it
    as_expected: int = 0  # trials whose outcome is the mode's expectation


def summarize_trials(results: Sequence[TrialResult], *, expect: str = "move") -> Summary:
    """Median / p95 / max over trials. Gaps: every trial (censored ones are lower bounds);
    time to the new holder: the trials that failed over. ``expect``: the mode's, for a
    summary of no trials (otherwise the trials' own)."""
    gaps = [r.gap_ms for r in results if r.gap_ms is not None]
    to_new = [r.to_new_ms for r in results if r.to_new_ms is not None]
    return Summary(
        expect=results[0].expect if results else expect,
        stayed=sum(r.outcome == "stayed" for r in results),
        as_expected=sum(r.as_expected for r in results),
        trials=len(results),
        failed_over=sum(r.failed_over for r in results),
        gap_median_ms=statistics.median(gaps) if gaps else None,
        gap_p95_ms=percentile(gaps, 95),
        gap_max_ms=max(gaps) if gaps else None,
        gap_censored=sum(r.gap_censored for r in results),
        to_new_median_ms=statistics.median(to_new) if to_new else None,
        to_new_p95_ms=percentile(to_new, 95),
        to_new_max_ms=max(to_new) if to_new else None,
        double_holder_trials=sum(bool(r.double_holder) for r in results),
        double_holder_max_ms=max((r.double_holder_ms for r in results), default=0.0),
        double_answer_trials=sum(r.double_answer for r in results),
        unstable_start=sum(not r.stable_start for r in results),
    )

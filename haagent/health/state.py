"""Rise/fall state of one health check, and the health of a VIP that depends on several.

Pure logic: results go in, transitions come out. No threads, no clock of its own beyond the
injectable ``clock`` used to stamp ``since``.

The rules:

* A check starts **unknown** (``healthy is None``), unless it is given an ``initial`` state.
* It becomes **healthy** after ``rise`` consecutive passes, and **unhealthy** after ``fall``
  consecutive failures. A result of the other kind resets the run being counted.
* **Start-up rule.** Unknown counts as *not healthy*: a freshly started agent does not campaign
  for a VIP with checks until every one of them has passed ``rise`` times in a row. A check
  that fails before it has ever been healthy becomes unhealthy at its first failure: it was not
  healthy anyway, so waiting for ``fall`` failures would change nothing but hide the failure from
  the operator for ``fall x interval`` seconds.

A VIP is healthy when every one of its checks is healthy (a VIP without checks is always
healthy), unhealthy as soon as one of them is unhealthy, and unknown otherwise.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

__all__ = ["CheckState", "Transition", "VipHealth"]


@dataclass(frozen=True)
class Transition:
    """A check changed state: ``previous`` (None = unknown) to ``healthy``."""

    previous: bool | None
    healthy: bool
    detail: str  # what the run that made it flip said
    count: int  # consecutive results of this kind, including that run
    needed: int  # rise (for healthy) or fall (for unhealthy)
    at: float  # clock() when it happened

    def describe(self) -> str:
        """``"connection refused (3/3)"``; ``"... (not healthy yet)"`` for a start-up failure."""
        if self.previous is None and not self.healthy:
            return f"{self.detail} (not healthy yet)"
        return f"{self.detail} ({self.count}/{self.needed})"


class CheckState:
    """Consecutive-result counting for one check.

    ``record()`` returns a :class:`Transition` when the state changes, else None.
    """

    def __init__(
        self,
        rise: int,
        fall: int,
        initial: bool | None = None,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if rise < 1 or fall < 1:
            raise ValueError(f"rise and fall must be at least 1, found rise={rise} fall={fall}")
        self.rise = rise
        self.fall = fall
        self._clock = clock
        self.healthy: bool | None = initial
        self.since: float = clock()  # when the current state began (creation for the first)
        self.successes = 0  # consecutive passes up to the last result
        self.failures = 0  # consecutive failures up to the last result
        self.runs = 0  # results recorded in total
        self.last_ok: bool | None = None
        self.last_detail = ""
        self.last_at: float | None = None
        self.last_transition: Transition | None = None

    def record(self, ok: bool, detail: str) -> Transition | None:
        now = self._clock()
        self.runs += 1
        self.last_ok = ok
        self.last_detail = detail
        self.last_at = now
        if ok:
            self.successes += 1
            self.failures = 0
            if self.healthy is not True and self.successes >= self.rise:
                return self._flip(True, detail, self.successes, self.rise, now)
        else:
            self.failures += 1
            self.successes = 0
            if self.healthy is None or (self.healthy and self.failures >= self.fall):
                return self._flip(False, detail, self.failures, self.fall, now)
        return None

    def _flip(self, healthy: bool, detail: str, count: int, needed: int, now: float) -> Transition:
        t = Transition(self.healthy, healthy, detail, count, needed, now)
        self.healthy = healthy
        self.since = now
        self.last_transition = t
        return t

    def progress(self) -> str:
        """Where the counting stands, e.g. ``"1/2 passes"`` or ``"2/3 failures"``."""
        if self.last_ok is None:
            return "no result yet"
        if self.last_ok:
            return f"{self.successes}/{self.rise} passes"
        return f"{self.failures}/{self.fall} failures"

    def describe(self) -> str:
        """The last result with its count: ``"connection refused (3/3)"``."""
        if self.last_ok is None:
            return "no result yet"
        count, needed = (self.successes, self.rise) if self.last_ok else (self.failures, self.fall)
        return f"{self.last_detail} ({count}/{needed})"


class VipHealth:
    """The health of one VIP: the conjunction of its checks' states.

    ``checks`` maps each check's display name to its state, in the VIP's order; the states may
    be shared with other VIPs. Call :meth:`update` after recording into any of them.
    """

    def __init__(
        self, vip: str, checks: Mapping[str, CheckState] | Iterable[tuple[str, CheckState]]
    ):
        self.vip = vip
        items = checks.items() if isinstance(checks, Mapping) else checks
        self.checks: dict[str, CheckState] = dict(items)
        self.healthy: bool | None = self._compute()

    def _compute(self) -> bool | None:
        states = [c.healthy for c in self.checks.values()]
        if any(h is False for h in states):
            return False
        if any(h is None for h in states):
            return None
        return True

    def update(self) -> bool:
        """Recompute; True when :attr:`healthy` changed."""
        new = self._compute()
        changed = new != self.healthy
        self.healthy = new
        return changed

    @property
    def failing(self) -> list[str]:
        return [name for name, c in self.checks.items() if c.healthy is False]

    @property
    def reason(self) -> str:
        """Why the VIP is in its state, naming the check(s) responsible.

        Unhealthy: ``"check pg failed: connection refused (3/3)"``, one clause per failing check,
        joined with ``"; "``. Healthy: the check that recovered last, or ``"no checks"``.
        Unknown: the checks still waiting to rise.
        """
        if not self.checks:
            return "no checks"
        if self.healthy is False:
            return "; ".join(
                f"check {name} failed: {self._why(c)}"
                for name, c in self.checks.items()
                if c.healthy is False
            )
        if self.healthy is None:
            waiting = [
                f"{name} ({c.progress()})" for name, c in self.checks.items() if c.healthy is None
            ]
            return "waiting for check" + ("s " if len(waiting) > 1 else " ") + ", ".join(waiting)
        name, last = max(self.checks.items(), key=lambda kv: kv[1].since)
        if len(self.checks) == 1:
            return f"check {name} passed: {self._why(last)}"
        return f"all {len(self.checks)} checks pass; last to recover: {name}: {self._why(last)}"

    @staticmethod
    def _why(c: CheckState) -> str:
        t = c.last_transition
        return t.describe() if t is not None else c.describe()

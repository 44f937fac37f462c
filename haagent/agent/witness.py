"""This agent's part in fast failover, as a witness of its peers (docs/safety.md, "Fast
failover"). Pure: the core hands it the view and the liveness facts; it answers with the
etcd writes to make, and remembers what it wrote.

- A peer that holds a VIP and is suspected (silent for the detection time) gets a suspicion
  record, on our lease, once; it is deleted when the peer is heard again or its session ends.
  A record deleted by the suspect itself (a refute: it still reaches etcd) is not written
  again until we hear the peer again.
- When a majority of the other live members suspect the same session and the refute window
  has passed, a suspecter writes the verdict and revokes the lease.
- When suspicions of our own session appear, we refute them: delete them in a transaction
  that fails if a verdict came first.
- A peer's heartbeat that surrenders its lease (it unbound everything first) makes us revoke
  that lease, which it cannot reach etcd to do.

The peers' promises (``withheld``) are only released through :attr:`Witness.cleared` once no
suspicion record of ours about that peer can be left in etcd.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from haagent.cluster.view import ClusterView
from haagent.decide import quorum
from haagent.decide.quorum import Evidence


@dataclass(frozen=True)
class LivenessFacts:
    """What the liveness service knows now, as the core sees it."""

    suspected: frozenset[str] = frozenset()
    withheld: frozenset[str] = frozenset()  # suspected now or since, not yet cleared
    surrenders: tuple[tuple[str, int], ...] = ()  # (node, lease) peers gave up
    claimed: tuple[tuple[str, int], ...] = ()  # (node, member count it announces)
    etcd_elsewhere: tuple[str, ...] = ()  # peers heard lately that etcd answers
    holds: tuple[tuple[str, float], ...] = ()  # (node, the liveness.hold it announces)
    protected_until: float = -math.inf


@dataclass(frozen=True)
class WriteSuspicion:
    target: str
    lease: int  # the target's session


@dataclass(frozen=True)
class DropSuspicion:
    target: str


@dataclass(frozen=True)
class WriteVerdict:
    evidence: Evidence
    reason: str


@dataclass(frozen=True)
class RevokeLease:
    node: str
    lease: int
    reason: str


@dataclass(frozen=True)
class Refute:
    suspecters: tuple[tuple[str, int], ...]  # (suspecter, create_revision of its record)
    verdict_revision: int


PAIR_REFUTE_FACTOR = 5

WitnessAction = WriteSuspicion | DropSuspicion | WriteVerdict | RevokeLease | Refute


@dataclass
class Witness:
    node: str
    refute_window: float
    facts: LivenessFacts = field(default_factory=LivenessFacts)
    # target -> "writing" | "written" | "deleting" | "refuted", and the session it is about
    records: dict[str, str] = field(default_factory=dict)
    record_lease: dict[str, int] = field(default_factory=dict)
    seen: set[str] = field(default_factory=set)  # our records the view has shown
    majority_since: dict[str, float] = field(default_factory=dict)
    verdicts: set[int] = field(default_factory=set)  # leases we wrote a verdict on
    revoked: set[int] = field(default_factory=set)
    refuting: int = 0  # our session a refute is in flight for (0: none)
    refuted_records: set[tuple[str, int]] = field(default_factory=set)  # (by, create_revision)
    cleared: set[str] = field(default_factory=set)  # for the service: promise them again
    wake_at: float | None = None  # when a refute window closes

    def step(
        self, view: ClusterView, lease_ok: bool, my_lease: int | None, now: float
    ) -> list[WitnessAction]:
        out: list[WitnessAction] = []
        self.wake_at = None
        f = self.facts
        self._our_records(view, lease_ok, out)
        for target in f.withheld - f.suspected - self.records.keys():
            self.cleared.add(target)  # no record was written: nothing holds its promise back
        if lease_ok:
            self._verdicts(view, now, out)
            self._refute(view, my_lease, out)
            for node, lease in f.surrenders:
                m = view.members.get(node)
                if m is not None and m.lease == lease and lease not in self.revoked:
                    self.revoked.add(lease)
                    out.append(RevokeLease(node, lease, f"{node} gave its VIPs up and asks for it"))
        return out

    def _our_records(self, view: ClusterView, lease_ok: bool, out: list[WitnessAction]) -> None:
        f = self.facts
        for target in sorted(f.suspected):
            m = view.members.get(target)
            if m is None or not m.liveness or target in self.records or not lease_ok:
                continue
            if any(h.node == target and h.lease == m.lease for h in view.holders.values()):
                self.records[target] = "writing"
                self.record_lease[target] = m.lease
                out.append(WriteSuspicion(target, m.lease))
        for target, state in list(self.records.items()):
            m = view.members.get(target)
            stale = m is None or m.lease != self.record_lease[target]
            in_view = self.node in view.suspicions.get(target, {})
            if in_view:
                self.seen.add(target)
            if state == "written" and target in self.seen and not in_view:
                state = self.records[target] = "refuted"  # deleted by the suspect or its lease
            if target in f.suspected and not stale:
                continue
            if state in ("written", "writing") and lease_ok:
                self.records[target] = "deleting"
                out.append(DropSuspicion(target))
            elif state == "refuted" or (state == "deleting" and not in_view and not lease_ok):
                self._forget(target)

    def _forget(self, target: str) -> None:
        self.records.pop(target, None)
        self.record_lease.pop(target, None)
        self.seen.discard(target)
        self.cleared.add(target)

    def written(self, target: str, ok: bool) -> None:
        if self.records.get(target) == "writing":
            if ok:
                self.records[target] = "written"
            else:
                self._forget(target)

    def dropped(self, target: str, ok: bool) -> None:
        """Our record of ``target`` is deleted (ok) or the delete got no answer: it hangs on
        our lease, so it goes with it at the latest; the promise stays withheld until then."""
        if ok and self.records.get(target) == "deleting":
            self._forget(target)
        elif not ok and self.records.get(target) == "deleting":
            self.records[target] = "written"  # asked again on the next step

    def lease_lost(self) -> None:
        """Our lease is gone: every record on it went with it."""
        for target in list(self.records):
            self._forget(target)
        self.refuting = 0

    def _verdicts(self, view: ClusterView, now: float, out: list[WitnessAction]) -> None:
        claimed = dict(self.facts.claimed)
        for target in list(self.majority_since):
            if target not in view.suspicions:
                del self.majority_since[target]
        for target in sorted(view.suspicions):
            if target == self.node:
                continue
            ev = quorum.evidence(view, target, claimed.get(target, 0))
            if ev is None or self.node not in {by for by, _ in ev.suspecters}:
                self.majority_since.pop(target, None)
                continue
            since = self.majority_since.setdefault(target, now)
            # One other member alone is a majority of one: a deaf peer would dethrone the
            # holder if its refute came late, so the holder gets longer (docs/safety.md).
            window = self.refute_window * (PAIR_REFUTE_FACTOR if ev.others == 1 else 1)
            d = quorum.verdict_due(ev, since, window, now)
            if not d.yes:
                due = since + window
                self.wake_at = due if self.wake_at is None else min(self.wake_at, due)
            elif ev.lease not in self.verdicts:
                self.verdicts.add(ev.lease)
                out.append(WriteVerdict(ev, d.reason))

    def _refute(self, view: ClusterView, my_lease: int | None, out: list[WitnessAction]) -> None:
        if my_lease is None or self.refuting == my_lease:
            return
        mine = tuple(
            sorted(
                (by, s.create_revision)
                for by, s in view.suspicions.get(self.node, {}).items()
                if s.lease == my_lease and (by, s.create_revision) not in self.refuted_records
            )
        )
        if not mine:
            return
        v = view.verdicts.get(self.node)
        self.refuting = my_lease
        out.append(Refute(mine, 0 if v is None else v.revision))

    def refuted(self, action: Refute, ok: bool) -> None:
        """The refute went through (ok) or got no answer; a verdict that came first is the
        core's business (it surrenders)."""
        self.refuting = 0
        if ok:
            self.refuted_records.update(action.suspecters)

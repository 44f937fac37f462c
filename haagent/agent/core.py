"""The agent's pure core: facts in, actions out, in order, never re-entering itself.

The loop (``haagent.agent.loop``) owns every socket, thread and clock. It hands the core each
fact it learns — a batch of watch changes, a keepalive answer, a health flip, the result of an
action it carried out, the current monotonic time — and asks it for the next action to carry
out. The core decides (through the pure functions of ``haagent.decide`` and one
:class:`~haagent.decide.election.Election` per VIP) and queues actions; it never performs one,
so no decision can run in the middle of another.

Two queues: *prompt* actions (what this host serves and guards: bind, unbind, resign, lifetime
refresh, fence update) go before *normal* ones (campaign, member publish, re-read, purge), so
a host taking over hundreds of VIPs binds each one as soon as it is won, and still refreshes
the ones it holds and unbinds on time, however many campaigns wait behind. A campaign or bind
made in an older generation of its election is stale when its turn comes and is dropped: a
later fact already decided again. Releases are never dropped.
"""

from __future__ import annotations

import logging
import math
from collections import Counter, OrderedDict, deque
from collections.abc import Iterable, Iterator
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, replace

from haagent.agent.runtime import VipRuntime
from haagent.agent.status import AgentStatus, VipStatus
from haagent.agent.timers import Timers
from haagent.agent.witness import (
    DropSuspicion,
    LivenessFacts,
    Refute,
    RevokeLease,
    Witness,
    WitnessAction,
    WriteSuspicion,
    WriteVerdict,
)
from haagent.cluster.schema import MAX_EARLIER, Health, HealthState, Holder, MemberRecord
from haagent.cluster.view import (
    Change,
    ClusterView,
    DrainChange,
    HolderChange,
    MemberChange,
    ReleasedChange,
    RequestChange,
    SuspicionChange,
    VerdictChange,
)
from haagent.config import MAX_CLOCK_DRIFT, Config, NotifyKind, VipConfig
from haagent.decide import eligibility, handover, outage, placement, purge, quorum, rank
from haagent.decide.election import Action as ElectionAction
from haagent.decide.election import Bind, Campaign, Resign, State, Unbind
from haagent.decide.lease import LeaseClock
from haagent.decide.reload import VipDiff
from haagent.logs import fields

log = logging.getLogger("haagent.agent")

CAMPAIGN_RETRY = 0.5  # seconds before retrying a campaign or resign that got no answer
# Member record writes at most this often: a burst of health changes (a start-up, a check
# shared by hundreds of VIPs) costs one write of the record as it is then, not one per VIP.
MEMBER_WRITE_INTERVAL = 0.25
# Seconds between attempts to get a new lease (etcd said the old one is gone, so it answers):
# the retry that follows a failed grant right after a partition heals.
REGRANT_RETRY = 0.2
LEASE_RECHECK = 0.25  # seconds between questions about a predecessor's lease
GONE_LEASES_KEPT = 256  # leases remembered as gone
# Seconds a handover for placement (a move, a preemption) waits for the other host to take
# the key; then this host may campaign again, last in rank (decide.rank.last).
YIELD_TIMEOUT = 3.0


# -- actions beyond the election's own ---------------------------------------------------


@dataclass(frozen=True)
class PurgeKey:
    """Delete a holder key no haagent wrote (compare create_revision)."""

    vip: str
    create_revision: int
    reason: str


@dataclass(frozen=True)
class CheckLease:
    """Ask etcd whether a predecessor's lease still lives (handover)."""

    vip: str
    lease: int


@dataclass(frozen=True)
class ConfirmRelease:
    """Write the VIP's release record: we removed the address of the key created at
    ``create_revision``, which someone else's write took from us."""

    vip: str
    create_revision: int


@dataclass(frozen=True)
class Notify:
    kind: NotifyKind
    vip: str
    reason: str


@dataclass(frozen=True)
class PublishMember:
    """Write this node's member record as it is when the action runs."""


@dataclass(frozen=True)
class TellFence:
    """Tell the fence process the deadline, the lease and the addresses it must guard."""


@dataclass(frozen=True)
class Refresh:
    """A keepalive was acknowledged: fence and kernel address lifetimes get the new deadline."""


@dataclass(frozen=True)
class Regrant:
    """The lease is gone: take a new one."""


@dataclass(frozen=True)
class Reread:
    """Read the whole prefix again and re-create the watch, then hold again."""

    reason: str


@dataclass(frozen=True)
class Probe:
    """Ask the segment whether anyone still answers for the VIP's addresses (after a verdict
    on its previous holder, whose agent and fence may both be dead while its kernel still
    has the address)."""

    vip: str


Action = (
    ElectionAction
    | PurgeKey
    | CheckLease
    | ConfirmRelease
    | Notify
    | PublishMember
    | TellFence
    | Refresh
    | Regrant
    | Reread
    | Probe
    | WitnessAction
)

# At most one of each pending at a time: they act on the state as it is when they run.
_COALESCED = (PublishMember, TellFence, Refresh, Regrant, Reread)
_PROMPT = (
    Bind,
    Unbind,
    Resign,
    ConfirmRelease,
    CheckLease,
    Refresh,
    TellFence,
    Probe,
    WriteSuspicion,
    DropSuspicion,
    WriteVerdict,
    RevokeLease,
    Refute,
)
PROBE_RETRY = 0.05  # seconds between probes while someone still answers for a VIP
# Seconds a new holder adds to the old holder's hold after a verdict: how late the old
# holder's loop or fence may act on its hold deadline (docs/safety.md, "timing rules").
HOLD_SLACK = 0.01
SUSPICION_RETRY = 0.1  # seconds before a suspicion etcd did not take is tried again


@dataclass(frozen=True)
class _Queued:
    action: Action
    gen: int  # the election's generation when queued (-1: not an election action)


class Core:
    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.node = cfg.node
        self.clock = LeaseClock(ttl=cfg.lease.ttl, margin=cfg.lease.margin)
        self.view = ClusterView.of(0)
        self.vips: dict[str, VipRuntime] = {v.name: VipRuntime.new(v, self.node) for v in cfg.vips}
        self.lease_ok = False
        self.outage_keep = False  # holding past the deadline (lease.when_etcd_unreachable: keep)
        self.stopping = False
        self.held: set[str] = set()  # election state HOLDER
        self.bound: set[str] = set()  # the loop confirmed the address is placed
        self.timers = Timers()
        self._prompt: deque[_Queued] = deque()
        self._normal: deque[_Queued] = deque()
        self._wanted: set[type] = set()
        self._state_changed: dict[str, State] = {}
        # Handover: leases with a CheckLease queued or running, the VIPs waiting on each, and
        # leases etcd said are gone (a revoked or expired lease id is never live again).
        self._checking: set[int] = set()
        self._waiting: dict[int, set[str]] = {}
        self._gone_leases: OrderedDict[int, None] = OrderedDict()
        self._alive_leases: set[int] = set()  # said alive; asked again after LEASE_RECHECK
        self._member_written = -MEMBER_WRITE_INTERVAL  # monotonic time of the last write
        # What our last writes put, as etcd holds it (the JSON rounds times, so records are
        # compared encoded): the watch echoes each, possibly after a newer write.
        self._member_records: deque[bytes] = deque(maxlen=8)
        # Per VIP, how many of its actions are queued: a VIP a reload takes away is dropped
        # only once nothing of it is left to carry out (see take_retired).
        self._queued_for: Counter[str] = Counter()
        self._retiring: set[str] = set()
        # Placement (decide.rank, decide.placement): the last time a fact told us the time;
        # the start-up wait; when each member was seen ready; campaigns deferred by rank;
        # preemptions under way and those waiting for one of the rebalance slots.
        self._now = 0.0
        self._ready = cfg.placement.startup_wait <= 0
        self._start_wait_until = 0.0
        self._ready_at: dict[str, float] = {}
        self._deferred: set[str] = set()
        self._yields: set[str] = set()
        self._rebalance_wait: set[str] = set()
        self._drained: str | None = None
        self._first_pass = False
        # Fast failover (docs/safety.md): on once the loop has the liveness service running.
        self.fast = False
        self.witness = Witness(self.node, cfg.liveness.refute_window)
        self.protected_until = -math.inf
        self.surrendered: int | None = None  # the lease we gave up, until peers revoke it
        # Leases condemned by a verdict and seen gone: the time a new holder may bind (the old
        # holder's last keepalive may have been answered just before the revoke).
        self._condemned: dict[int, float] = {}
        self._refreshed_at = -math.inf
        # Send time of the newest etcd call that proved our lease alive (a keepalive answer,
        # a key won on it): nobody can have revoked it before then.
        self._proof = -math.inf
        for rt in self.vips.values():
            if not rt.health.known:
                self._feed(rt, rt.election.set_eligible(False, rt.health.reason))

    # -- the queue ---------------------------------------------------------------------

    def next_action(self) -> Action | None:
        """The next action to carry out, or None; stale campaigns and binds are skipped."""
        while self._prompt or self._normal:
            item = (self._prompt or self._normal).popleft()
            action = item.action
            self._dequeued(action)
            if isinstance(action, _COALESCED):
                self._wanted.discard(type(action))
            if isinstance(action, Campaign | Bind):
                rt = self.vips.get(action.vip)
                if rt is None or rt.election.gen != item.gen or not self.lease_ok:
                    continue
            elif isinstance(action, Resign) and self._serving(action.vip):
                # Held (and bound, or about to be) again since the resign was queued: a link
                # that came back before a failed resign went through. Deleting the key now
                # would write a release record while the address is up: two holders.
                log.info("dropped the resign of vip %s: it is held here again", action.vip)
                continue
            return action
        return None

    def more_campaigns(self, limit: int) -> list[Campaign]:
        """Campaigns queued right behind the one just taken, to send in the same transaction.

        Only a run at the head of the normal queue: anything else queued in between keeps its
        place. Stale ones are dropped on the way, as ``next_action`` would.
        """
        out: list[Campaign] = []
        while self._normal and len(out) < limit and not self._prompt:
            item = self._normal[0]
            action = item.action
            if not isinstance(action, Campaign):
                break
            self._normal.popleft()
            self._dequeued(action)
            rt = self.vips.get(action.vip)
            if rt is not None and rt.election.gen == item.gen and self.lease_ok:
                out.append(action)
        return out

    @property
    def busy(self) -> bool:
        return bool(self._prompt or self._normal)

    def _queue(self, action: Action, gen: int = -1) -> None:
        q = self._prompt if isinstance(action, _PROMPT) else self._normal
        q.append(_Queued(action, gen))
        if (vip := getattr(action, "vip", None)) is not None:
            self._queued_for[vip] += 1

    def _dequeued(self, action: Action) -> None:
        if (vip := getattr(action, "vip", None)) is not None:
            self._queued_for[vip] -= 1
            if self._queued_for[vip] <= 0:
                del self._queued_for[vip]

    def _want(self, action: Action) -> None:
        if type(action) not in self._wanted:
            self._wanted.add(type(action))
            self._queue(action)

    def _feed(self, rt: VipRuntime, actions: Iterable[ElectionAction]) -> None:
        """Queue what an election answered, tagged with its generation after the call."""
        e = rt.election
        actions = list(actions)
        for action in actions:
            if isinstance(action, Bind):
                self._gate_bind(rt, action)
            elif isinstance(action, Campaign):
                rt.free_since = max(self._now, self._start_wait_until)
                self._gate_campaign(rt)
            else:
                self._queue(action, e.gen)
        if e.state is not State.CAMPAIGNING and rt.deferred is not None:
            self._forget_deferral(rt)
        if e.state is State.HOLDER:
            newly = rt.name not in self.held
            self.held.add(rt.name)
            if e.holder is not None:
                rt.held_revision = rt.last_key = e.holder.create_revision
            if newly:
                # Whoever ranked first during an earlier hold is no reason to leave now: the
                # preemption delay starts afresh with this hold.
                rt.better = None
                self._consider_handover(rt, self._now)
        else:
            self.held.discard(rt.name)
            rt.pending_bind = None
            if any(isinstance(a, Unbind) for a in actions):
                self._confirm_release(rt, resigning=any(isinstance(a, Resign) for a in actions))
        self._state_changed[rt.name] = e.state

    # -- placement: who campaigns first, who hands over (decide.rank, decide.placement) --

    def _me(self, rt: VipRuntime) -> rank.Me:
        return rank.Me(self.node, self.cfg.priority_of(rt.cfg), rt.election.eligible, self._ready)

    def _order(self, rt: VipRuntime) -> list[rank.Candidate]:
        """The candidates for a free key, best first; the host whose release record vouches
        for the key that just went is last (it gave the VIP up on purpose)."""
        order = rank.ranked(self.view, rt.name, self._me(rt))
        rel = self.view.released.get(rt.name)
        releaser = rel.node if rel is not None and rel.create_revision == rt.last_key else None
        return rank.last(order, releaser)

    def _gate_campaign(self, rt: VipRuntime) -> None:
        """Send the campaign now if this node ranks first, else at its rank's time."""
        e = rt.election
        now = self._now
        when = placement.when_to_campaign(
            placement.CampaignFacts(
                me=self.node,
                order=self._order(rt),
                now=now,
                free_since=rt.free_since,
                ready_at=self._ready_at,
                step=self.cfg.placement.campaign_step,
                startup_wait=self.cfg.placement.startup_wait,
            )
        )
        if when.at <= now:
            if rt.deferred is not None:
                log.info(
                    "campaigning for vip %s after waiting: %s",
                    rt.name,
                    rt.deferred,
                    extra=fields("campaign-late", rt.name, rt.deferred),
                )
            self._forget_deferral(rt)
            self._queue(Campaign(rt.name, e.absent_revision, e.campaign_reason), e.gen)
            return
        if rt.deferred is None:
            log.debug("vip %s: campaign deferred: %s", rt.name, when.reason)
        rt.deferred = when.reason
        self._deferred.add(rt.name)
        self.timers.set(f"camp:{rt.name}", when.at, lambda: self._deferral_due(rt))

    def _deferral_due(self, rt: VipRuntime) -> None:
        e = rt.election
        if rt.deferred is None or e.state is not State.CAMPAIGNING:
            return
        if not e.can_hold or e.holder is not None:
            self._undefer(rt, "key taken meanwhile" if e.holder else "may not hold it now")
        else:
            self._gate_campaign(rt)

    def _forget_deferral(self, rt: VipRuntime) -> None:
        rt.deferred = None
        self._deferred.discard(rt.name)
        self.timers.cancel(f"camp:{rt.name}")

    def _undefer(self, rt: VipRuntime, reason: str) -> None:
        """A deferred campaign is not needed any more: the election goes back to waiting."""
        self._forget_deferral(rt)
        self._feed(rt, rt.election.campaign_dropped(reason))

    def _recheck_deferred(self) -> None:
        """Ranks changed (a member came, went or became ready; a request): deferred campaigns
        are decided again. O(deferred), which is empty outside a takeover."""
        for name in sorted(self._deferred):
            if (rt := self.vips.get(name)) is not None:
                self._deferral_due(rt)

    def _consider_handover(self, rt: VipRuntime, now: float) -> None:
        """Should the VIP we hold go to a better-ranked host, or where a move sends it?"""
        if not rt.holding or rt.yielding is not None or self.stopping or not self.lease_ok:
            return
        order = rank.ranked(self.view, rt.name, self._me(rt))
        first = order[0] if order else None
        # The preemption delay counts from when the better host is first *and* ready.
        better = first.node if first is not None and first.node != self.node else None
        better = better if first is not None and first.ready else None
        if better != rt.better:
            rt.better, rt.better_since = better, now
        d = placement.handover(
            placement.HoldFacts(
                me=self.node,
                vip=rt.name,
                order=order,
                key_revision=rt.last_key,
                request=self.view.requests.get(rt.name),
                preempt=rt.cfg.preempt,
                preempt_delay=rt.cfg.preempt_delay,
                better=rt.better,
                better_since=rt.better_since,
                now=now,
            )
        )
        key = f"pre:{rt.name}"
        if d is None:
            self.timers.cancel(key)
            self._rebalance_wait.discard(rt.name)
            return
        if d.at > now:
            self.timers.set(key, d.at, lambda: self._consider_handover(rt, d.at))
            return
        if not d.move and len(self._yields) >= self.cfg.placement.rebalance:
            self._rebalance_wait.add(rt.name)  # a slot frees when a handover completes
            return
        self._yield(rt, d, now)

    def _yield(self, rt: VipRuntime, d: placement.HandOver, now: float) -> None:
        log.info(
            "handing vip %s over: %s",
            rt.name,
            d.reason,
            extra=fields("handover", rt.name, d.reason),
        )
        rt.yielding = d.reason
        self._rebalance_wait.discard(rt.name)
        self.timers.cancel(f"pre:{rt.name}")
        if not d.move:
            self._yields.add(rt.name)
        self.timers.set(
            f"yield:{rt.name}",
            now + YIELD_TIMEOUT,
            lambda: self._yield_over(rt, "nobody took it in time", now + YIELD_TIMEOUT),
        )
        self._refresh_eligibility(rt, now)

    def _yield_over(self, rt: VipRuntime, why: str, now: float) -> None:
        if rt.yielding is None:
            return
        log.info("vip %s: handover over (%s)", rt.name, why)
        rt.yielding = None
        self._yields.discard(rt.name)
        self.timers.cancel(f"yield:{rt.name}")
        self._refresh_eligibility(rt, now)
        slots = self.cfg.placement.rebalance - len(self._yields)
        for name in sorted(self._rebalance_wait)[: max(0, slots)]:
            if (other := self.vips.get(name)) is not None:
                self._consider_handover(other, now)

    def _reconsider_held(self, names: Iterable[str] | None, now: float) -> None:
        """Held VIPs whose ranking may have changed (None: all of them)."""
        for name in sorted(self.held if names is None else set(names) & self.held):
            self._consider_handover(self.vips[name], now)

    def _set_drained(self, now: float) -> None:
        drain = self.view.drains.get(self.node)
        why = None
        if drain is not None:
            who = f" by {drain.by}" if drain.by else ""
            why = f"node drained{who} (haagent undrain {self.node} to end it)"
        if why == self._drained:
            return
        self._drained = why
        if why is None:
            log.info("node undrained: campaigning again", extra=fields("undrained"))
        else:
            log.warning("%s: handing over every vip", why, extra=fields("drained", reason=why))
        self._refresh_eligibility_of(self.vips.values(), now)
        self._publish_member(now)

    def _start_wait_over(self, now: float) -> None:
        """The start-up wait ended: the campaigns it held back go out now (their timers),
        and this node says it is ready once they are answered (:meth:`_maybe_ready`)."""
        log.info("start-up wait over: campaigning by rank", extra=fields("start-wait-over"))
        self._first_pass = True
        self._maybe_ready(now)

    def _maybe_ready(self, now: float) -> None:
        """Ready = past the start-up wait with every campaign of the first pass answered.

        Lower-ranked peers wait for a better-ranked one that is not ready: at a cold start
        of 1000 VIPs a host needs seconds to campaign for its 200, far more than a rank's
        step, and a peer stepping in meanwhile cost 246 extra acquires (bench-scale). O(VIPs),
        only during the first pass."""
        if not self._first_pass or self._ready:
            return
        if any(rt.state is State.CAMPAIGNING and rt.deferred is None for rt in self.vips.values()):
            return
        self._first_pass = False
        self._ready = True
        log.info("ready: first campaigns answered", extra=fields("ready"))
        self._publish_member(now)
        self._recheck_deferred()

    def member_record(self, record: MemberRecord) -> MemberRecord:
        """``record`` with this node's placement fields (decide.rank reads them)."""
        default = self.cfg.placement.priority
        return replace(
            record,
            priority=default,
            priorities={
                name: p
                for name, rt in self.vips.items()
                if (p := self.cfg.priority_of(rt.cfg)) != default
            },
            ready=self._ready,
            draining=self._drained is not None,
            liveness=self.fast,
        )

    # -- handover: break before make (decide.handover) ---------------------------------

    def _settle_predecessors(self, rt: VipRuntime) -> list[Holder]:
        """Drop the earlier holders known to have let go; return those still in doubt."""
        for node, h in list(rt.predecessors.items()):
            why = handover.gone(
                h,
                rt.name,
                released=self.view.released.get(rt.name),
                gone_leases=self._gone_leases,
                members=self.view.members,
            )
            if why is not None:
                if h.lease in self._condemned:
                    rt.probe = True
                del rt.predecessors[node]
        return list(rt.predecessors.values())

    def _gate_bind(self, rt: VipRuntime, bind: Bind) -> None:
        doubt = self._settle_predecessors(rt)
        d = handover.may_bind(doubt)
        if d.yes and rt.probe and not rt.probed:
            rt.pending_bind = bind
            self._probe(rt)
            return
        if d.yes:
            rt.pending_bind = None
            self._queue(Bind(bind.vip, bind.reason), rt.election.gen)
            return
        if rt.pending_bind is None:
            log.info(
                "vip %s won; not binding yet: %s",
                rt.name,
                d.reason,
                extra=fields("bind-waits", rt.name, d.reason),
            )
        rt.pending_bind = bind
        for h in doubt:
            self._waiting.setdefault(h.lease, set()).add(rt.name)
            if h.lease not in self._alive_leases:
                self._ask_lease(rt.name, h.lease)

    def _ask_lease(self, vip: str, lease: int) -> None:
        if lease not in self._checking:
            self._checking.add(lease)
            self._queue(CheckLease(vip, lease))

    def _regate(self, rt: VipRuntime) -> None:
        bind = rt.pending_bind
        if bind is not None and rt.state is State.HOLDER:
            self._gate_bind(rt, bind)
        else:
            self._settle_predecessors(rt)

    def lease_checked(self, vip: str, lease: int, alive: bool | None, now: float) -> None:
        """The loop asked etcd about an earlier holder's lease (None: no answer)."""
        self._checking.discard(lease)
        if alive is False and self._condemn(lease, now):
            return
        if alive is False:
            self._gone_leases[lease] = None
            while len(self._gone_leases) > GONE_LEASES_KEPT:
                self._gone_leases.popitem(last=False)
            for name in self._waiting.pop(lease, set()):
                if (rt := self.vips.get(name)) is not None:
                    self._regate(rt)
            return
        # Alive (or no answer): ask again shortly, unless release records come first.
        waiting = {n for n in self._waiting.pop(lease, set()) if self._binding(n)}
        if not waiting:
            return
        self._waiting[lease] = waiting
        self._alive_leases.add(lease)

        def again() -> None:
            self._alive_leases.discard(lease)
            names = [n for n in self._waiting.get(lease, set()) if self._binding(n)]
            if names:
                self._ask_lease(names[0], lease)

        self.timers.set(f"lease?:{lease:x}", now + LEASE_RECHECK, again)

    def _condemn(self, lease: int, now: float) -> bool:
        """A lease a verdict revoked is gone, but its holder may have had a keepalive
        answered just before: it unbinds within ``liveness.hold`` of that (its hold
        deadline), so the VIPs waiting for it bind only after that, and after a probe of the
        segment (its agent and fence may both be dead). True: still waiting."""
        until = self._condemned.get(lease)
        if until is None:
            holds = [v.hold for v in self.view.verdicts.values() if v.lease == lease]
            if not holds:
                return False
            hold = max(self.cfg.liveness.hold, *holds)
            wait = hold * (1 + 2 * MAX_CLOCK_DRIFT) + HOLD_SLACK
            until = self._condemned[lease] = now + wait
            while len(self._condemned) > GONE_LEASES_KEPT:
                del self._condemned[next(iter(self._condemned))]
            log.info(
                "lease %x is gone after a verdict: its vips are bound after %.0f ms and a probe",
                lease,
                wait * 1000,
            )
            self.timers.set(
                f"condemned:{lease:x}", until, lambda: self.lease_checked("", lease, False, until)
            )
        if now >= until:
            return False
        for name in self._waiting.get(lease, ()):
            if (rt := self.vips.get(name)) is not None and not rt.probe:
                rt.probe = True
                rt.probed = False
                self._probe(rt)  # meanwhile: the wait and the probe overlap
        return True

    def _serving(self, name: str) -> bool:
        rt = self.vips.get(name)
        return rt is not None and rt.state is State.HOLDER

    def _binding(self, name: str) -> bool:
        rt = self.vips.get(name)
        return rt is not None and rt.pending_bind is not None

    def _confirm_release(self, rt: VipRuntime, *, resigning: bool) -> None:
        """We unbound a VIP whose key someone else took: say so, for the next holder.

        Not needed when a resign follows (it writes the record itself), nor when the lease is
        lost or about to be revoked (the next holder learns that the lease is gone).
        """
        rev, rt.held_revision = rt.held_revision, None
        if rev is None or resigning or self.stopping or not self.lease_ok:
            return
        self._queue(ConfirmRelease(rt.name, rev))

    def release_chain(self, vip: str) -> tuple[tuple[str, int], ...]:
        """The releases a new release record of ``vip`` carries forward (Released.earlier):
        the one it overwrites and those that one carried."""
        rel = self.view.released.get(vip)
        return () if rel is None else rel.chain()[:MAX_EARLIER]

    def take_state_changes(self) -> dict[str, State]:
        """Elections whose state may have changed since the last call (for exec checks)."""
        changed, self._state_changed = self._state_changed, {}
        return changed

    def next_wake(self, now: float) -> float | None:
        """Seconds until the core needs ``tick`` again (0: actions are waiting)."""
        if self.busy:
            return 0.0
        whens = [t] if (t := self.timers.next_at()) is not None else []
        if self.lease_ok and not self.outage_keep and self.clock.deadline is not None:
            whens.append(self.clock.deadline)
            if self.fast and (self.held or self.bound) and not self.vouched:
                # While vouched for, the hold deadline moves with every heartbeat and the
                # liveness service says when that ends; only then is it a time to wake at.
                if (hd := self.hold_deadline()) is not None:
                    whens.append(hd)
                if self.clock.last_ack is not None:
                    whens.append(self.clock.last_ack + self.cfg.liveness.etcd_loss)
        return max(0.0, min(whens) - now) if whens else None

    def hold_deadline(self) -> float | None:
        """When this holder must have let its VIPs go (decide.quorum.hold_deadline)."""
        if not self.fast:
            return self.clock.deadline
        ack = self.clock.last_ack
        if ack is not None and self._proof > ack:
            ack = self._proof
        return quorum.hold_deadline(
            self.clock.deadline, ack, self.cfg.liveness.hold, self.protected_until
        )

    def lease_proven(self, lease_id: int, sent: float) -> None:
        """An etcd call sent at ``sent`` used our lease and succeeded (a key put on it)."""
        if lease_id == self.clock.lease_id:
            self._proof = max(self._proof, sent)

    @property
    def vouched(self) -> bool:
        """A quorum of peers vouches for us now (no verdict can be reached before
        ``protected_until``): the keepalive may run at its slower pace."""
        return self.protected_until > self._now + self.cfg.liveness.detection / 2

    # -- facts: time -------------------------------------------------------------------

    def tick(self, now: float) -> None:
        """Time passed: the lease deadline, then hold-downs and retries that are due."""
        self._now = max(self._now, now)
        self._check_deadline(now)
        for fn in self.timers.pop_due(now):
            fn()

    def _check_deadline(self, now: float) -> None:
        if self.fast and self.lease_ok and not self.outage_keep and self.clock.valid(now):
            self._check_hold(now)
            return
        if not self.lease_ok or self.outage_keep or self.clock.valid(now):
            return
        ack = self.clock.last_ack
        ago = f"{now - ack:.1f}s ago" if ack is not None else "never"
        d = outage.at_deadline(
            self.cfg.lease.when_etcd_unreachable, bool(self.held or self.bound), ago
        )
        if d.yes:
            self._keep_through_outage(d.reason)
        else:
            self._set_lease_ok(False, d.reason, now)

    def _check_hold(self, now: float) -> None:
        """Fast failover's two rules for a holder (decide.quorum): give up at the hold
        deadline, and surrender when etcd is lost here but not elsewhere."""
        if not (self.held or self.bound):
            return
        ack = self.clock.last_ack
        d = quorum.surrender(
            ack, self.cfg.liveness.etcd_loss, now, list(self.witness.facts.etcd_elsewhere)
        )
        if d.yes:
            self._surrender(d.reason, now)
            return
        hd = self.hold_deadline()
        if hd is not None and now >= hd and ack is not None:
            self._set_lease_ok(
                False,
                f"no quorum of peers vouches for this host and etcd last answered a keepalive "
                f"sent {now - ack:.3f}s ago (liveness.hold {self.cfg.liveness.hold:g}s)",
                now,
            )

    def _surrender(self, why: str, now: float) -> None:
        """Give every VIP up and the lease with it: unbind all, then ask the peers (in our
        heartbeats, once nothing is bound) to revoke the lease we can no longer reach."""
        lease = self.clock.lease_id
        if lease is None:
            return
        log.warning(
            "giving up every vip and lease %x: %s",
            lease,
            why,
            extra=fields("surrender", reason=why),
        )
        self.surrendered = lease
        self.outage_keep = False
        self._proof = -math.inf
        self.clock.forget()
        self.witness.lease_lost()
        self._set_lease_ok(False, f"surrendered: {why}", now)
        self._want(Regrant())

    @property
    def surrender_ask(self) -> int | None:
        """The lease our heartbeats ask the peers to revoke: only once nothing is bound."""
        return self.surrendered if self.surrendered is not None and not self.bound else None

    # -- facts: liveness (haagent.liveness) -----------------------------------------------

    def liveness_changed(self, facts: LivenessFacts, now: float) -> None:
        self._now = max(self._now, now)
        self.witness.facts = facts
        self.protected_until = facts.protected_until
        self._witness(now)

    def _witness(self, now: float) -> None:
        if not self.fast or self.stopping:
            return
        my_lease = self.clock.lease_id if self.lease_ok else None
        for action in self.witness.step(self.view, self.lease_ok, my_lease, now):
            if isinstance(action, WriteVerdict):
                log.warning(
                    "verdict on %s (lease %x): %s",
                    action.evidence.target,
                    action.evidence.lease,
                    action.reason,
                    extra=fields("verdict", reason=action.reason),
                )
            self._queue(action)
        if (at := self.witness.wake_at) is not None:
            self.timers.set("witness", at, lambda: self._witness(self._now))
        v = self.view.verdicts.get(self.node)
        if self.lease_ok and v is not None and v.lease == self.clock.lease_id:
            self._surrender(f"a quorum's verdict by {v.by}: peers do not hear this host", now)

    def suspicion_written(self, target: str, ok: bool, now: float) -> None:
        self.witness.written(target, ok)
        if not ok:  # etcd did not take it (a leader change?): the silence still stands
            self.timers.set(
                f"suspect:{target}", now + SUSPICION_RETRY, lambda: self._witness(self._now)
            )
        self._witness(now)

    def suspicion_dropped(self, target: str, ok: bool, now: float) -> None:
        self.witness.dropped(target, ok)
        self._witness(now)

    def verdict_written(self, action: WriteVerdict, ok: bool) -> None:
        ev = action.evidence
        if ok:
            self._queue(RevokeLease(ev.target, ev.lease, "a quorum's verdict"))
        else:
            self.witness.verdicts.discard(ev.lease)  # refuted, or decided again on the view

    def refute_done(self, action: Refute, ok: bool | None, now: float) -> None:
        """``ok`` False: a verdict came first; None: no answer (the hold deadline decides)."""
        self.witness.refuted(action, ok is True)
        if ok is True:
            log.info(
                "refuted the suspicions of %s: this host still reaches etcd",
                ", ".join(by for by, _ in action.suspecters),
            )
        elif ok is False and self.lease_ok:
            self._surrender("a quorum's verdict came before our refute", now)

    def probe_done(self, vip: str, in_use: str | None, now: float) -> None:
        rt = self.vips.get(vip)
        if rt is not None:
            rt.probing = False
        if rt is None or rt.pending_bind is None or rt.state is not State.HOLDER:
            return
        if in_use is None:
            rt.probed = True  # nobody answered: only the wait may still hold the bind back
            self._gate_bind(rt, rt.pending_bind)
            return
        rt.probed = False
        log.warning("vip %s won, not binding: %s; probing again", vip, in_use)
        self.timers.set(f"probe:{vip}", now + PROBE_RETRY, lambda: self._probe(rt))

    def _probe(self, rt: VipRuntime) -> None:
        if not rt.probing:
            rt.probing = True
            self._queue(Probe(rt.name))

    def _keep_through_outage(self, why: str) -> None:
        """Hold on past the deadline, loudly. The fence and the address lifetimes would remove
        the VIPs at the deadline too, so they are told to stand down (Refresh); a closing pipe
        (agent death) still removes them."""
        self.outage_keep = True
        for name in sorted(self.held):
            log.warning(
                "keeping vip %s past the lease deadline: etcd unreachable (%s); if this host is "
                "partitioned while others reach etcd, another host takes the VIP when the lease "
                "expires and BOTH answer (lease.when_etcd_unreachable: keep)",
                name,
                why,
            )
        self._want(Refresh())

    # -- facts: the lease --------------------------------------------------------------

    def start(
        self, view: ClusterView, lease_id: int, sent: float, ttl: int, reason: str, now: float
    ) -> None:
        """Start-up: the lease is granted (or adopted) and ``view`` is etcd's picture."""
        self._now = max(self._now, now)
        wait = self.cfg.placement.startup_wait
        if not self._ready:
            self._start_wait_until = now + wait
            # A millisecond after the campaigns it held back (their timers are due at the
            # wait's end), so that the first pass counts them.
            self.timers.set("ready", now + wait + 0.001, lambda: self._start_wait_over(now + wait))
        self.clock.acknowledged(lease_id, sent, ttl)
        self._want(PublishMember())
        self.view_loaded(view, now)
        self._set_lease_ok(True, reason, now)

    def keepalive_acked(self, lease_id: int, sent: float, ttl: int, now: float) -> None:
        if lease_id != self.clock.lease_id:
            return
        self.clock.acknowledged(lease_id, sent, ttl)
        valid = self.clock.valid(now)
        if self.outage_keep and valid:
            self.outage_keep = False
            log.info("etcd answered again and the lease is alive: vips kept")
            self._want(Reread("keepalive answered again after an etcd outage"))
        if not self.lease_ok and valid:
            self._want(Reread("keepalive answered again before the lease expired"))
        elif self.lease_ok and (
            not self.fast or now - self._refreshed_at >= self.cfg.lease.interval / 2
        ):
            # Address lifetimes at twice the lease's own pace: fast failover's quicker
            # keepalives (liveness.etcd_loss / 3) would otherwise cost a pass over every held
            # VIP each; half the interval keeps a whole-second lifetime from lapsing between.
            self._refreshed_at = now
            self._want(Refresh())
        elif self.lease_ok:
            self._want(TellFence())

    def lease_gone(self, lease_id: int, reason: str, now: float) -> None:
        if lease_id != self.clock.lease_id:
            return
        self.outage_keep = False
        self._proof = -math.inf
        self.clock.forget()
        self.witness.lease_lost()
        self._set_lease_ok(False, f"lease lost: {reason}", now)
        self._want(Regrant())

    def lease_granted(self, lease_id: int, sent: float, ttl: int) -> None:
        """A Regrant succeeded: publish ourselves again, then re-read and hold again."""
        self.surrendered = None
        self.clock.acknowledged(lease_id, sent, ttl)
        log.info("granted lease %x (ttl %ds)", lease_id, ttl)
        self._want(PublishMember())
        self._want(Reread("new lease granted"))

    def regrant_failed(self, now: float) -> None:
        self.timers.set("regrant", now + REGRANT_RETRY, lambda: self._want(Regrant()))

    def reread_done(self, view: ClusterView, reason: str, now: float) -> None:
        self.view_loaded(view, now)
        self._set_lease_ok(True, reason, now)

    def _set_lease_ok(self, ok: bool, reason: str, now: float) -> None:
        if ok and not self.clock.valid(now):
            return  # the proof arrived too late to be used; the next keepalive decides
        self.lease_ok = ok
        lease_id = self.clock.lease_id
        if ok:
            self._want(TellFence())  # the lease it revokes should this process die from here on
        for rt in self.vips.values():
            e = rt.election
            if ok and lease_id is not None:
                self._feed(rt, e.lease_valid(lease_id, reason))
            else:
                self._feed(rt, e.lease_lost(reason))

    # -- facts: etcd's picture ---------------------------------------------------------

    def view_loaded(self, view: ClusterView, now: float) -> None:
        """A whole new picture (start-up, re-read after a lease came back or a compaction)."""
        self._now = max(self._now, now)
        self.view = view
        self._ready_at = {
            node: self._ready_at.get(node, now) for node, m in view.members.items() if m.ready
        }
        for name, rt in self.vips.items():
            self._observe(rt, view.holders.get(name), view.revision)
        self._set_drained(now)
        self._refresh_eligibility_of(self.vips.values(), now)
        self._reconsider_held(None, now)

    def apply(self, changes: Iterable[Change], now: float) -> None:
        """Watch changes, in the order etcd sent them, decided on as one batch."""
        self._now = max(self._now, now)
        fresh = [ch for ch in changes if ch.revision >= self.view.revision]
        if not fresh:
            return
        before = self.view
        self.view = self.view.apply(fresh)
        peers_changed = False
        reranked: set[str] | None = set()  # held VIPs whose ranking may have moved; None: all
        for ch in fresh:
            if isinstance(ch, ReleasedChange):
                if (rt := self.vips.get(ch.vip)) is not None:
                    self._regate(rt)
            elif isinstance(ch, HolderChange):
                rt = self.vips.get(ch.vip)
                if rt is not None:
                    self._observe(rt, ch.holder, ch.revision)
            elif isinstance(ch, MemberChange) and ch.node != self.node:
                peers_changed = True
                touched = _reranked(before.members.get(ch.node), ch.member)
                if reranked is not None:
                    reranked = None if touched is None else reranked | touched
                self._member_seen(ch.node, ch.member, now)
            elif isinstance(ch, MemberChange):
                self._own_member_changed(ch.member, now)
            elif isinstance(ch, DrainChange):
                if ch.node == self.node:
                    self._set_drained(now)
                else:
                    reranked = None
            elif isinstance(ch, RequestChange) and reranked is not None:
                reranked.add(ch.vip)
        if reranked is None or reranked:
            self._reconsider_held(reranked, now)
            self._recheck_deferred()
        if self.fast and any(
            isinstance(ch, SuspicionChange | VerdictChange | MemberChange | HolderChange)
            for ch in fresh
        ):
            self._witness(now)
        if peers_changed:
            # A peer's health matters only to VIPs unhealthy here: "keep" and the
            # no-healthy-host warning (decide.eligibility); for every other VIP the verdict
            # ignores peers, so a peer's write costs O(unhealthy VIPs), not O(VIPs).
            self._refresh_eligibility_of(
                (rt for rt in self.vips.values() if rt.health.state is HealthState.UNHEALTHY),
                now,
            )

    def _member_seen(self, node: str, member: MemberRecord | None, now: float) -> None:
        if member is None or not member.ready:
            self._ready_at.pop(node, None)
        elif node not in self._ready_at:
            self._ready_at[node] = now

    def _own_member_changed(self, member: MemberRecord | None, now: float) -> None:
        """Our member record was deleted or altered by someone else: write it again.

        Peers judge ``when_all_unhealthy: keep`` by it, and operators read it; a record that
        is gone or wrong while this agent runs would mislead both. (An unreadable record, or
        one on another lease, reaches here as None: the store ignores such records.)
        """
        if self.stopping or not self.lease_ok:
            return
        if member is not None and member.to_json() in self._member_records:
            return
        log.warning(
            "member record of this node %s in etcd; writing it again",
            "was deleted" if member is None else "was changed by someone else",
        )
        self._publish_member(now)

    def _observe(self, rt: VipRuntime, holder: Holder | None, revision: int) -> None:
        if holder is not None and holder.readable and holder.node != self.node:
            rt.predecessors[holder.node] = holder
        if holder is not None:
            rt.last_key = holder.create_revision
        d = purge.purge_holder(holder, rt.purged)
        if d.yes and holder is not None:
            rt.purged = holder.create_revision
            self._queue(PurgeKey(rt.name, holder.create_revision, d.reason))
        self._feed(rt, rt.election.observe(holder, revision))
        if holder is not None and rt.deferred is not None:
            self._undefer(rt, f"held by {holder.node}")
        if holder is not None and holder.node != self.node and rt.yielding is not None:
            self._yield_over(rt, f"{holder.node} took it", self._now)

    # -- facts: health -----------------------------------------------------------------

    def health_changed(self, vip: str, healthy: bool, reason: str, now: float) -> None:
        rt = self.vips.get(vip)
        if rt is None:
            return
        was = rt.health
        rt.health = Health(HealthState.HEALTHY if healthy else HealthState.UNHEALTHY, reason)
        if healthy:
            log.info(
                "vip %s healthy on this node: %s", vip, reason, extra=fields("healthy", vip, reason)
            )
        else:
            log.warning(
                "vip %s unhealthy on this node: %s",
                vip,
                reason,
                extra=fields("unhealthy", vip, reason),
            )
            if was.state is not HealthState.UNHEALTHY:
                self._queue(Notify("fault", vip, reason))
            hold = eligibility.hold_down_on_failure(rt.holding, rt.cfg.hold_down)
            if hold is not None:
                self._hold_down(rt, hold, now)
        self._refresh_eligibility(rt, now)
        self._publish_member(now)  # anyone can see who could take over

    def _publish_member(self, now: float) -> None:
        if self.timers.pending("member") or PublishMember in self._wanted:
            return
        due = self._member_written + MEMBER_WRITE_INTERVAL
        if now >= due:
            self._want(PublishMember())
        else:
            self.timers.set("member", due, lambda: self._want(PublishMember()))

    def member_written(self, now: float, record: MemberRecord) -> None:
        self._member_written = now
        self._member_records.append(record.to_json())

    def link_changed(self, ifname: str, up: bool, reason: str, now: float) -> None:
        """The carrier of an interface changed (net.linkwatch): VIPs on it follow at once."""
        for rt in self.vips.values():
            if rt.cfg.interface != ifname:
                continue
            rt.link_down = None if up else reason
            self._refresh_eligibility(rt, now)
        if up:
            log.info(
                "%s: vips on it may be held again once healthy",
                reason,
                extra=fields("link-up", reason=reason),
            )
        else:
            log.warning(
                "%s: releasing the vips on it now", reason, extra=fields("link-down", reason=reason)
            )

    def _hold_down(self, rt: VipRuntime, seconds: float, now: float) -> None:
        rt.hold_until = now + seconds
        self.timers.set(
            f"hold:{rt.name}", rt.hold_until, lambda: self._refresh_eligibility(rt, rt.hold_until)
        )

    def _refresh_eligibility_of(self, runtimes: Iterable[VipRuntime], now: float) -> None:
        for rt in runtimes:
            self._refresh_eligibility(rt, now)

    def _refresh_eligibility(self, rt: VipRuntime, now: float) -> None:
        e = rt.election
        verdict = eligibility.decide(
            eligibility.EligibilityFacts(
                health=rt.health,
                holding=rt.holding,
                hold_left=rt.hold_until - now,
                healthy_peers=rank.candidates(self.view, rt.name, exclude={self.node}),
                when_all_unhealthy=rt.cfg.when_all_unhealthy,
                link_down=rt.link_down,
                retiring=rt.retiring,
                drained=self._drained,
                yielding=rt.yielding,
            )
        )
        if verdict.keeping and not rt.keeping:
            log.warning(
                "vip %s kept while unhealthy: %s",
                rt.name,
                verdict.reason,
                extra=fields("kept-unhealthy", rt.name, verdict.reason),
            )
        rt.keeping = verdict.keeping
        if verdict.eligible != e.eligible:
            if verdict.nobody:
                log.warning(
                    "no healthy host for vip %s: nobody answers for %s until one recovers",
                    rt.name,
                    rt.cfg.address,
                )
            self._feed(rt, e.set_eligible(verdict.eligible, verdict.reason))
        if not verdict.eligible and rt.deferred is not None:
            self._undefer(rt, verdict.reason)

    # -- results of actions the loop carried out ---------------------------------------

    def campaign_done(self, vip: str, won: bool, holder: Holder | None, revision: int) -> None:
        rt = self.vips[vip]
        if won and holder is not None:
            self._feed(rt, rt.election.campaign_won(holder))
        else:
            log.debug("campaign for vip %s lost to %s", vip, holder.node if holder else "?")
            self._feed(rt, rt.election.campaign_lost(holder, revision))
        self._maybe_ready(self._now)

    def campaign_failed(self, vip: str, error: str, now: float) -> None:
        rt = self.vips[vip]
        self._feed(rt, rt.election.campaign_failed(error))
        self.timers.set(
            f"retry:{vip}", now + CAMPAIGN_RETRY, lambda: self._feed(rt, rt.election.retry())
        )

    def resign_failed(self, action: Resign, now: float) -> None:
        rt = self.vips[action.vip]

        def again() -> None:
            h = rt.election.holder
            # Not if held again meanwhile (the link came back): that key is served again.
            same = h is not None and h.create_revision == action.create_revision
            if same and not self._serving(action.vip):
                self._queue(action)

        self.timers.set(f"resign:{action.vip}", now + CAMPAIGN_RETRY, again)

    def placed(self, vip: str) -> None:
        self.bound.add(vip)
        if (rt := self.vips.get(vip)) is not None:
            rt.probe = rt.probed = False

    def removed(self, vip: str) -> None:
        self.bound.discard(vip)

    def bind_failed(self, vip: str, now: float) -> None:
        """Give the key up for a while (hold-down) so a host that can bind it takes over."""
        rt = self.vips[vip]
        self._hold_down(rt, eligibility.BIND_FAILURE_HOLD_DOWN, now)
        self._refresh_eligibility(rt, now)

    # -- reload ------------------------------------------------------------------------

    def reload(self, cfg: Config, diff: VipDiff, now: float) -> None:
        """A new config is in force (decide.reload): VIPs join, take new settings in place,
        or are released to be dropped (removed) or elected anew (moved); unchanged VIPs are
        not touched. Dropping waits for the release: see :meth:`take_retired`."""
        self.cfg = cfg
        new = {v.name: v for v in cfg.vips}
        for name, rt in list(self.vips.items()):
            if rt.retiring is not None:  # a reload before: whatever comes next replaces it
                rt.replacement = new.get(name)
            elif name in diff.removed:
                self._retire(rt, "removed from the config by a reload", None, now)
            elif name in diff.moved:
                v = new[name]
                where = f"{v.address} on {v.interface}"
                self._retire(rt, f"a reload moves it to {where}: released first", v, now)
            elif name in diff.updated:
                rt.cfg = new[name]  # same address and place: checks, hooks, timers change
                self._refresh_eligibility(rt, now)
        for name in diff.added:
            if name not in self.vips:
                self._add_runtime(new[name], now)
        self._publish_member(now)  # priorities may have changed: peers rank by the record
        self._reconsider_held(None, now)

    def _retire(
        self, rt: VipRuntime, reason: str, replacement: VipConfig | None, now: float
    ) -> None:
        rt.retiring = reason
        rt.replacement = replacement
        self._retiring.add(rt.name)
        self.timers.cancel(f"hold:{rt.name}")
        self.timers.cancel(f"retry:{rt.name}")
        self._refresh_eligibility(rt, now)

    def _add_runtime(self, cfg: VipConfig, now: float, health: Health | None = None) -> VipRuntime:
        rt = VipRuntime.new(cfg, self.node)
        if health is not None and cfg.checks:
            # The monitor reports health by VIP name and kept its checks' state across the
            # reload: it sends nothing new for a moved VIP whose health did not change.
            rt.health = health
        self.vips[cfg.name] = rt
        e = rt.election
        if not rt.health.known:
            self._feed(rt, e.set_eligible(False, rt.health.reason))
        if self.lease_ok and self.clock.lease_id is not None:
            self._feed(rt, e.lease_valid(self.clock.lease_id, "added by a reload"))
        self._observe(rt, self.view.holders.get(cfg.name), self.view.revision)
        self._refresh_eligibility(rt, now)
        return rt

    def take_retired(self, now: float) -> list[tuple[VipConfig, VipConfig | None]]:
        """VIPs a reload took away that are now fully released: (old config, the config it
        was replaced with, or None when removed). The runtime of a replaced VIP starts
        afresh here. Released means: not held nor bound, no campaign in flight, nothing of
        it queued, and etcd no longer shows our key for it (the resign's delete came back, or
        the lease it was on is gone)."""
        out: list[tuple[VipConfig, VipConfig | None]] = []
        for name in sorted(self._retiring):
            rt = self.vips[name]
            h = rt.election.holder  # also knows a key we won that the watch has not echoed
            ours = h is not None and h.node == self.node and h.lease == self.clock.lease_id
            if (
                rt.state is not State.IDLE
                or name in self.held
                or name in self.bound
                or self._queued_for[name] > 0
                or self.timers.pending(f"resign:{name}")
                or (ours and self.lease_ok)
            ):
                continue
            self._retiring.discard(name)
            del self.vips[name]
            self._state_changed.pop(name, None)
            out.append((rt.cfg, rt.replacement))
            if rt.replacement is not None:
                self._add_runtime(rt.replacement, now, rt.health)
        if out:
            self._publish_member(now)
        return out

    @property
    def retiring(self) -> AbstractSet[str]:
        """The VIPs being released for a reload (read-only view; the loop asks every step)."""
        return self._retiring

    # -- stop --------------------------------------------------------------------------

    def shutdown(self, revoked: bool) -> None:
        """Release everything. With the lease revoked the keys are gone already: no resigns.

        Only releases survive from what was queued: the loop removed every address before the
        revoke, and a pending refresh, bind or fence update would put one back (a refresh binds
        again what it finds missing).
        """
        self.stopping = True
        self._normal.clear()
        self._wanted.clear()
        self._prompt = deque(
            q
            for q in self._prompt
            if isinstance(q.action, Unbind) or (isinstance(q.action, Resign) and not revoked)
        )
        for rt in self.vips.values():
            actions = rt.election.shutdown("shutdown")
            if revoked:
                actions = [a for a in actions if not isinstance(a, Resign)]
            self._feed(rt, actions)

    # -- what the loop and readers ask -------------------------------------------------

    def guarded(self) -> Iterator[VipConfig]:
        """VIPs whose address may be on this host now: held, or bound and not yet removed."""
        for name in sorted(self.held | self.bound):
            yield self.vips[name].cfg

    def bound_vips(self) -> list[VipConfig]:
        """VIPs bound here that this node still holds: the ones whose lifetimes a keepalive
        extends (one being released keeps the lifetime it has until its unbind runs)."""
        return [self.vips[n].cfg for n in sorted(self.bound) if n in self.held]

    def member_health(self) -> dict[str, Health]:
        return {name: rt.health for name, rt in self.vips.items()}

    def status(self, now: float) -> AgentStatus:
        remaining = self.clock.remaining(now)
        return AgentStatus(
            node=self.node,
            cluster=self.cfg.cluster,
            lease_id=self.clock.lease_id,
            lease_ok=self.lease_ok,
            deadline_in=remaining if self.lease_ok else None,
            outage_keep=self.outage_keep,
            revision=self.view.revision,
            vips=tuple(
                VipStatus(
                    name=name,
                    address=str(rt.cfg.address),
                    interface=rt.cfg.interface,
                    state=rt.state,
                    eligible=rt.election.eligible,
                    reason=rt.election.ineligible_reason or "",
                    health=rt.health,
                    holder=None if (h := rt.election.holder) is None else h.node,
                    bound=name in self.bound,
                    hold_down_left=max(0.0, rt.hold_until - now),
                )
                for name, rt in self.vips.items()
            ),
        )


def _reranked(old: MemberRecord | None, new: MemberRecord | None) -> set[str] | None:
    """The VIPs whose ranking a peer's new member record may change; None: every VIP (the
    peer came, went, became ready, drained, or changed its default priority)."""
    if old is None or new is None:
        return None
    if (old.ready, old.draining, old.priority) != (new.ready, new.draining, new.priority):
        return None
    return {
        vip
        for vip in set(old.health) | set(new.health) | set(old.priorities) | set(new.priorities)
        if old.health.get(vip) != new.health.get(vip)
        or old.priority_for(vip) != new.priority_for(vip)
    }

"""When to campaign for a free key, and when a holder should hand its VIP over (pure).

Campaign: the best-ranked candidate campaigns at once; the candidate of rank r (0 is best)
waits ``r * campaign_step`` (rank capped at :data:`MAX_RANK`) so the best one normally wins
and there is no herd. A better-ranked candidate still in its start-up wait is waited for, but
only until this node's own bound (``startup_wait + FIRST_PASS + r * step`` after the key
went free): a peer stuck starting up cannot keep a VIP unserved.

Handover: a holder yields to a move request that is newer than its key at once, and to a
better-ranked ready candidate once that one has stayed better for ``preempt_delay`` (only
with ``preempt: true``). Both are graceful: unbind, then resign with a release record, so the
next holder binds at once (decide.handover).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from haagent.cluster.schema import Request
from haagent.decide.rank import Candidate

MAX_RANK = 5  # ranks beyond wait no longer: a bounded delay, whatever the cluster's size
# Seconds a starting peer's first campaigns may take (it is ready once they are answered):
# 200 VIPs per host on a loaded 2-core machine took several seconds.
FIRST_PASS = 10.0


@dataclass(frozen=True)
class CampaignFacts:
    me: str
    order: Sequence[Candidate]  # every candidate incl. this node, best first (decide.rank)
    now: float
    free_since: float  # monotonic time this node saw the key free (or its start-up ended)
    ready_at: Mapping[str, float]  # when this node saw each member become ready
    step: float
    startup_wait: float


@dataclass(frozen=True)
class CampaignWhen:
    at: float  # monotonic time to campaign at (<= now: at once)
    reason: str


def when_to_campaign(f: CampaignFacts) -> CampaignWhen:
    nodes = [c.node for c in f.order]
    if f.me not in nodes:
        return CampaignWhen(f.now, "not ranked (no candidate record yet)")
    rank = nodes.index(f.me)
    if rank == 0:
        return CampaignWhen(f.free_since, "best-ranked candidate")
    better = f.order[:rank]
    wait = min(rank, MAX_RANK) * f.step
    starting = [c.node for c in better if not c.ready]
    if starting:
        return CampaignWhen(
            f.free_since + f.startup_wait + FIRST_PASS + wait,
            f"rank {rank + 1}: waiting for {', '.join(starting)} to finish starting up",
        )
    since = max([f.free_since, *(f.ready_at.get(c.node, f.free_since) for c in better)])
    return CampaignWhen(
        since + wait, f"rank {rank + 1}: {better[0].node} ranks first, waiting {wait:g}s for it"
    )


@dataclass(frozen=True)
class HoldFacts:
    me: str
    vip: str
    order: Sequence[Candidate]  # as in CampaignFacts
    key_revision: int  # create_revision of the key this node holds
    request: Request | None
    preempt: bool
    preempt_delay: float
    better: str | None  # the candidate seen ranking first (not this node) since ...
    better_since: float  # ... this monotonic time
    now: float


@dataclass(frozen=True)
class HandOver:
    to: str | None  # None: nobody yet (see ``at``)
    at: float  # monotonic time to hand over at; > now: look again then
    reason: str
    move: bool = False  # asked for by an operator: not held back by the rebalance limit


def pending_move(request: Request | None, key_revision: int) -> str | None:
    """The node a move request sends the VIP to while the held key is older than it."""
    if request is None or request.action != "move" or request.to is None:
        return None
    return request.to if request.revision > key_revision else None


def handover(f: HoldFacts) -> HandOver | None:
    """Whether (and when) the holder should hand the VIP over; None: keep it."""
    by_node = {c.node: c for c in f.order}
    target = pending_move(f.request, f.key_revision)
    if target is not None and target != f.me:
        c = by_node.get(target)
        if c is not None and c.ready:
            who = f.request.by if f.request is not None and f.request.by else "an operator"
            return HandOver(target, f.now, f"moved to {target} at the request of {who}", True)
        # Not a candidate now (gone, unhealthy, draining, starting): wait; it stays pending.
    if not f.preempt or not f.order or f.order[0].node == f.me:
        return None
    best = f.order[0]
    if not best.ready or f.better != best.node:
        return None
    mine = by_node.get(f.me)
    why = best.why_before(mine, f.vip) if mine is not None else "this node is no candidate"
    return HandOver(
        best.node,
        f.better_since + f.preempt_delay,
        f"preempted by {best.node} ({why}) after {f.preempt_delay:g}s",
    )

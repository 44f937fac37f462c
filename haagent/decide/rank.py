"""Who should hold a VIP, in order: priorities, then rendezvous hashing (docs/placement.md).

Every agent ranks from the same facts, the member records in etcd (each publishes its own
priority per VIP and whether it is past its start-up wait) and the VIP's move request, so
they agree on the order without talking to each other.

Order, best first: the node a ``haagent move`` pinned the VIP to; then higher priority
(keepalived's ``priority``); then the highest random weight of (VIP, node) — rendezvous
hashing, as MetalLB ranks nodes by a sha256 of node and IP. Ties (the same hash) fall back
to the name.

Rendezvous hashing alone moves only about N/M VIPs when a host joins or leaves, but its
spread is only statistically even: 100 VIPs over 3 hosts came out 42/36/22. So the first
place goes through :func:`assignment`, consistent hashing with bounded loads (Mirrokni,
Thorup and Zadimoghaddam, 2017): VIPs in name order each take the first candidate of their
order (by configuration, not health) that has fewer than ``ceil(N / M)`` VIPs, among the
candidates of the best priority; a pin or a higher priority always wins over balance. With
no slack the spread is even to within M - 1 VIPs; the price is a few more moves when a host
joins or leaves (1000 VIPs on 5 hosts: 214 instead of the leaving host's 200). Every agent
computes it from the same member records, so all agree; the rest of the order stays
rendezvous.

Only live members healthy for the VIP and not draining are candidates.
"""

from __future__ import annotations

import functools
import hashlib
from collections import Counter
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

from haagent.cluster.view import ClusterView


@functools.lru_cache(maxsize=1 << 16)
def score(vip: str, node: str) -> int:
    """The rendezvous weight of ``node`` for ``vip``: 64 bits of sha256 over both names.

    A NUL between the names keeps ("ab", "c") and ("a", "bc") apart. Cached: an agent asks
    for the same (VIP, node) pairs on every change of the cluster.
    """
    digest = hashlib.sha256(vip.encode() + b"\0" + node.encode()).digest()
    return int.from_bytes(digest[:8], "big")


@dataclass(frozen=True)
class Candidate:
    node: str
    priority: int
    ready: bool = True  # past its start-up wait (its member record says so)
    pinned: bool = False  # the VIP's move request names it

    def key(self, vip: str) -> tuple[int, int, int, str]:
        return (0 if self.pinned else 1, -self.priority, -score(vip, self.node), self.node)

    def why_before(self, other: Candidate, vip: str) -> str:
        """Why this candidate ranks before ``other``, in words for a log line."""
        if self.pinned != other.pinned:
            return f"{vip} is pinned to {self.node} (haagent move)"
        if self.priority != other.priority:
            return f"priority {self.priority} > {other.priority}"
        return "equal priority; rendezvous hash order"


@dataclass(frozen=True)
class Me:
    """This node as it knows itself now (its own member record in the view may lag)."""

    node: str
    priority: int
    eligible: bool
    ready: bool


def ranked(view: ClusterView, vip: str, me: Me | None = None) -> list[Candidate]:
    """Every candidate for ``vip``, best first: live members healthy for it and not draining;
    with ``me``, this node is placed by its own facts instead of its published record. The
    first is the VIP's place in :func:`assignment` when that one is a candidate."""
    out = hash_order(view, vip, me)
    first = assignment(view).get(vip)
    for i, c in enumerate(out):
        if c.node == first:
            return [c, *out[:i], *out[i + 1 :]]
    return out


_cache: tuple[object, object, object, Mapping[str, str]] | None = None


def assignment(view: ClusterView) -> Mapping[str, str]:
    """VIP -> the node that should hold it, from the members' records alone (bounded-load
    consistent hashing, see the module's docstring). O(VIPs x members); cached for as long
    as the view's members, drains and requests are the same objects (a holder change
    reuses them)."""
    global _cache
    c = _cache
    if c is not None and c[0] is view.members and c[1] is view.drains and c[2] is view.requests:
        return c[3]
    configured = {node: frozenset(m.vips) for node, m in view.members.items()}
    vips = sorted(set().union(*configured.values()))
    pinned = sum(1 for v in vips if (r := view.requests.get(v)) is not None and r.to is not None)
    nodes = [n for n in view.members if not view.draining(n)]
    out: dict[str, str] = {}
    if nodes:
        # No slack above the even share: any slack e lets the last host fall (M - 1) * e
        # below it (5 % on 5 hosts left one at -30 %).
        cap = -(-(len(vips) - pinned) // len(nodes))
        load: Counter[str] = Counter()
        for vip in vips:
            # Health is left out: a check flapping on one host must not shift the balance
            # of every other VIP. A VIP whose place is unhealthy goes by ``ranked``'s order.
            order = hash_order(view, vip, configured=configured)
            if not order:
                continue
            top = order[0]
            if top.pinned:
                # Placed by the operator, and left out of the balance: moving one VIP must
                # not shift where every other VIP belongs.
                out[vip] = top.node
                continue
            pick = top
            for cand in order:
                if cand.priority != top.priority:
                    break
                if load[cand.node] < cap:
                    pick = cand
                    break
            load[pick.node] += 1
            out[vip] = pick.node
    _cache = (view.members, view.drains, view.requests, out)
    return out


def hash_order(
    view: ClusterView,
    vip: str,
    me: Me | None = None,
    *,
    configured: Mapping[str, frozenset[str]] | None = None,
) -> list[Candidate]:
    """The candidates by pin, priority and rendezvous hash, without balancing. With
    ``configured`` (node -> its VIPs), every member configured for the VIP counts, healthy
    or not."""
    request = view.requests.get(vip)
    pin = request.to if request is not None and request.action == "move" else None
    out: list[Candidate] = []
    for node, m in view.members.items():
        if me is not None and node == me.node:
            continue
        h = m.health.get(vip)
        fit = vip in configured[node] if configured is not None else h is not None and h.healthy
        if not fit or view.draining(node):
            continue
        out.append(Candidate(node, m.priority_for(vip), m.ready, node == pin))
    if me is not None and me.eligible and not view.draining(me.node):
        out.append(Candidate(me.node, me.priority, me.ready, me.node == pin))
    out.sort(key=lambda c: c.key(vip))
    return out


def candidates(view: ClusterView, vip: str, *, exclude: Collection[str] = ()) -> list[str]:
    """Live members healthy for ``vip`` and not draining, best first, without ``exclude``."""
    return [c.node for c in ranked(view, vip) if c.node not in exclude]


def last(order: Sequence[Candidate], node: str | None) -> list[Candidate]:
    """``order`` with ``node`` moved to the end: the host that just gave a VIP up (a move, a
    preemption) campaigns for it again only after everyone else had their turn."""
    if node is None:
        return list(order)
    return [c for c in order if c.node != node] + [c for c in order if c.node == node]

"""What ``haagent move``, ``drain`` and ``undrain`` decide, from one ClusterView: pure.

Each ``plan_*`` function returns a :class:`Verdict`: write the key, do nothing (it is so
already), or refuse, with the one line that says why. The commands (``move.py``,
``drain.py``) read the picture, ask here, and only then touch etcd, in a transaction that
fails if what the decision read has changed since (so a decision made on a stale picture is
never written). tests/unit/test_cli_steer.py checks every refusal without etcd.

The rules mirror what the agents do with the keys (docs/keys.md, docs/placement.md): the
holder hands a VIP over for a move only to a live member that is healthy for it, not draining
and past its start-up wait; a draining node campaigns for nothing, so draining the last
eligible host of a VIP leaves it unserved.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from haagent.cluster.schema import Drain, HealthState, Request, valid_name
from haagent.cluster.view import ClusterView
from haagent.decide.rank import candidates, ranked

# write: the command writes (or deletes) its key; nothing: it is so already; not_now: the
# cluster's present state refuses it (it may work later); bad: it cannot work as asked
# (an unknown name, a node not configured for the VIP).
Kind = Literal["write", "nothing", "not_now", "bad"]

# The exit codes, consistent with haagent/cli/connect.py's EXIT_OK / EXIT_PROBLEM /
# EXIT_ERROR (a unit test holds them together): 0 done or nothing to do, 1 not now, 2 bad
# input, unknown names and etcd errors.
EXIT_CODES: Mapping[Kind, int] = {"write": 0, "nothing": 0, "not_now": 1, "bad": 2}

SHOWN_NAMES = 20  # names listed in a refusal, so a 1000-VIP cluster still gives one line


@dataclass(frozen=True)
class Verdict:
    kind: Kind
    reason: str
    target: str | None = None  # move: where the VIP goes; drain: the node
    holder: str | None = None  # move: the holder at the read
    request: Request | None = None  # move: the request already asking for the same move
    warnings: tuple[str, ...] = ()

    @property
    def code(self) -> int:
        return EXIT_CODES[self.kind]

    @property
    def refused(self) -> bool:
        return self.kind in ("not_now", "bad")


def listing(names: list[str] | tuple[str, ...] | set[str]) -> str:
    ordered = sorted(names)
    if not ordered:
        return "none"
    more = len(ordered) - SHOWN_NAMES
    return ", ".join(ordered[:SHOWN_NAMES]) + (f" and {more} more" if more > 0 else "")


def known_vips(view: ClusterView) -> set[str]:
    """VIPs some live member is configured for, or that have a holder key."""
    return set(view.holders) | {v for m in view.members.values() for v in m.vips}


def _unknown_vip(view: ClusterView, vip: str) -> Verdict:
    return Verdict("bad", f"unknown vip {vip[:80]!r} (vips: {listing(known_vips(view))})")


def _not_member(view: ClusterView, node: str) -> str:
    return f"no live member named {node[:80]!r} (members: {listing(set(view.members))})"


# --------------------------------------------------------------------------- move


@dataclass(frozen=True)
class MoveState:
    """A VIP's move request as ``status`` shows it."""

    to: str
    pending: bool  # the holder key is older than the request (or there is none): it moves
    at_target: bool  # the target holds it
    by: str
    at: float
    revision: int

    def text(self) -> str:
        if self.pending:
            return f"move to {self.to} pending"
        if self.at_target:
            return f"pinned to {self.to}"
        return f"pinned to {self.to} (held elsewhere)"


def move_state(view: ClusterView, vip: str) -> MoveState | None:
    """The VIP's move request: pending while no key newer than the request holds it (the agent's
    rule, decide.placement.pending_move); afterwards a pin that ranks ``to`` first."""
    r = view.requests.get(vip)
    if r is None or r.action != "move" or r.to is None:
        return None
    h = view.holders.get(vip)
    holder = h.node if h is not None and h.readable else None
    at_target = holder == r.to
    pending = not at_target and (h is None or h.create_revision < r.revision)
    return MoveState(r.to, pending, at_target, r.by, r.at, r.revision)


def target_problem(view: ClusterView, vip: str, node: str) -> tuple[Kind, str] | None:
    """Why ``node`` cannot take ``vip`` now (None: it can), in the agents' terms."""
    m = view.members.get(node)
    if m is None:
        return "bad", _not_member(view, node)
    if vip not in m.vips:
        on = [n for n, o in view.members.items() if vip in o.vips]
        return "bad", f"{node} is not configured for vip {vip} (configured on: {listing(on)})"
    if view.draining(node):
        return "not_now", f"{node} is draining (haagent undrain {node} first)"
    h = m.health.get(vip)
    if h is None or not h.healthy:
        what = h.to_text() if h is not None else "no health published"
        return "not_now", f"{node} is not healthy for {vip} ({what})"
    if not m.ready:
        return "not_now", f"{node} is still in its start-up wait (not ready); try again shortly"
    return None


def plan_move(view: ClusterView, vip: str, to: str | None = None) -> Verdict:
    """Whether to write ``vips/<vip>/request`` asking for a move to ``to`` (None: the
    next-ranked candidate that is not the holder)."""
    if not valid_name(vip) or vip not in known_vips(view):
        return _unknown_vip(view, vip)
    if to is not None and not valid_name(to):
        return Verdict("bad", f"--to: {to[:80]!r} is not a node name")
    h = view.holders.get(vip)
    if h is None:
        return Verdict(
            "not_now",
            f"vip {vip} is not held by anyone: nothing to move (a free VIP goes to the "
            "best-ranked healthy host by itself)",
        )
    if not h.readable:
        return Verdict(
            "not_now", f"the holder key of vip {vip} is unreadable ({h.problem}): nothing to move"
        )
    holder = h.node
    if holder not in view.members:
        # The holder's agent is the one that hands over; a key whose lease still lives after
        # its member record went has nobody to act on a request until the lease ends.
        return Verdict(
            "not_now",
            f"vip {vip} is held by {holder}, which is no live member (its lease has not ended "
            "yet): nobody can hand it over; it is free once that lease ends",
            holder=holder,
        )
    request = view.requests.get(vip)
    pinned_to = request.to if request is not None and request.action == "move" else None
    if to is None:
        others = [c for c in ranked(view, vip) if c.node != holder]
        ready = [c.node for c in others if c.ready]
        if not ready:
            why = [
                f"{p[1]}"
                for n in sorted(view.members)
                if n != holder and vip in view.members[n].vips
                if (p := target_problem(view, vip, n)) is not None
            ]
            detail = "; ".join(why[:SHOWN_NAMES]) or "no other live member is configured for it"
            return Verdict(
                "not_now", f"no other host can take vip {vip} now: {detail}", holder=holder
            )
        to = ready[0]
    if to == holder:
        if pinned_to == holder:
            return Verdict(
                "nothing", f"vip {vip} is already on {holder} (pinned there)", holder, holder
            )
        problem = target_problem(view, vip, holder)
        if problem is not None:
            # It holds the VIP but is about to give it up (draining, unhealthy): a pin to it
            # would not keep it there. Say so instead of pinning.
            return Verdict("nothing", f"vip {vip} is already on {holder}, but {problem[1]}")
        replaces = f" (replacing the request for {pinned_to})" if pinned_to else ""
        return Verdict(
            "write", f"vip {vip} is already on {holder}; pinned it there{replaces}", holder, holder
        )
    problem = target_problem(view, vip, to)
    if problem is not None:
        return Verdict(problem[0], problem[1], to, holder)
    state = move_state(view, vip)
    if request is not None and state is not None and state.to == to and state.pending:
        who = f" by {request.by}" if request.by else ""
        return Verdict(
            "nothing",
            f"a move of vip {vip} from {holder} to {to} is already pending (asked{who})",
            to,
            holder,
            request,
        )
    return Verdict("write", f"move vip {vip} from {holder} to {to}", to, holder)


def move_done(view: ClusterView, vip: str, to: str, revision: int) -> bool:
    """``to`` holds ``vip`` with a key newer than the request written at ``revision``."""
    h = view.holders.get(vip)
    return h is not None and h.readable and h.node == to and h.create_revision > revision


def move_overtaken(view: ClusterView, vip: str, revision: int) -> str | None:
    """Why waiting for the request written at ``revision`` is pointless now, if it is."""
    r = view.requests.get(vip)
    if r is None:
        return f"the move request of vip {vip} was removed (haagent move {vip} --clear)"
    if r.revision != revision:
        who = f" by {r.by}" if r.by else ""
        return f"the move request of vip {vip} was replaced{who} (now to {r.to})"
    return None


def move_progress(view: ClusterView, vip: str, to: str) -> str:
    """Where a move stands, for a timeout: the holder, and why ``to`` has not taken it."""
    h = view.holders.get(vip)
    where = f"held by {h.node}" if h is not None else "held by nobody"
    problem = target_problem(view, vip, to)
    return f"vip {vip} is {where}" + (f"; {problem[1]}" if problem is not None else "")


def plan_clear(view: ClusterView, vip: str) -> Verdict:
    """Whether ``move --clear`` deletes the request key: for a known VIP, or one with a
    request, whether or not one is there (a request that does not decode is deleted too)."""
    if not valid_name(vip) or (vip not in known_vips(view) and vip not in view.requests):
        return _unknown_vip(view, vip)
    return Verdict("write", f"delete the move request of vip {vip}")


def clear_outcome(view: ClusterView, vip: str, deleted: bool) -> Verdict:
    """What ``move --clear`` says once it deleted the request key (idempotent)."""
    if deleted:
        r = view.requests.get(vip)
        pin = f" (pinned to {r.to})" if r is not None and r.to else ""
        return Verdict("write", f"removed the move request of vip {vip}{pin}: no pin any more")
    return Verdict("nothing", f"vip {vip} has no move request: nothing to clear")


# --------------------------------------------------------------------------- drain


def vips_of(view: ClusterView, node: str) -> list[str]:
    """VIPs ``node`` is configured for (its member record) or holds (a holder key)."""
    m = view.members.get(node)
    mine = set(m.vips) if m is not None else set()
    mine |= held_by(view, node)
    return sorted(mine)


def held_by(view: ClusterView, node: str) -> set[str]:
    return {v for v, h in view.holders.items() if h.readable and h.node == node}


def stranded(view: ClusterView, node: str) -> list[str]:
    """VIPs of ``node`` that no other host could hold once it drains: no other live member
    healthy for it and not draining (decide.rank's candidates). A VIP ``node`` itself reports
    unhealthy for, and does not hold, is left out: the drain takes nothing from it (a backend
    down everywhere must not block draining every host)."""
    out = []
    for vip in vips_of(view, node):
        h = view.health_of(node, vip)
        serving = vip in held_by(view, node) or h is None or h.state is not HealthState.UNHEALTHY
        if serving and not candidates(view, vip, exclude={node}):
            out.append(vip)
    return out


def _drained_text(node: str, d: Drain) -> str:
    who = f" by {d.by}" if d.by else ""
    why = f": {d.reason}" if d.reason else ""
    return f"node {node} is already drained{who}{why}"


def plan_drain(view: ClusterView, node: str, *, force: bool = False) -> Verdict:
    """Whether to write ``drain/<node>``. ``force``: also a node that is down (not a live
    member), and even if some VIP would be left with no eligible host."""
    if not valid_name(node):
        return Verdict("bad", f"{node[:80]!r} is not a node name")
    d = view.drains.get(node)
    if d is not None:
        return Verdict("nothing", _drained_text(node, d), node)
    warnings: list[str] = []
    if node not in view.members:
        if not force:
            return Verdict(
                "bad", f"{_not_member(view, node)}; --force drains a node that is down", node
            )
        warnings.append(
            f"{node} is no live member: the drain applies when its agent starts "
            "(it will campaign for nothing)"
        )
    lost = stranded(view, node)
    if lost and not force:
        return Verdict(
            "not_now",
            f"draining {node} would leave vip {listing(lost)} with no other eligible host "
            "(live, healthy for it, not draining); --force drains it anyway",
            node,
        )
    if lost:
        warnings.append(f"vip {listing(lost)} will have no eligible host while {node} drains")
    held = sorted(held_by(view, node))
    hands = f"it hands over {listing(held)} and" if held else "it holds no vip and"
    return Verdict(
        "write",
        f"drained {node}: {hands} campaigns for none until haagent undrain {node}",
        node,
        warnings=tuple(warnings),
    )


def undrain_outcome(view: ClusterView, node: str, deleted: bool) -> Verdict:
    """What ``undrain`` says once it deleted the drain key (idempotent)."""
    if deleted:
        live = "" if node in view.members else " (it is no live member now)"
        return Verdict("write", f"undrained {node}: it campaigns again{live}", node)
    return Verdict("nothing", f"node {node} is not drained: nothing to undo", node)


def drain_left(view: ClusterView, node: str) -> list[str]:
    """The VIPs ``node`` still holds (``drain --wait`` waits for none)."""
    return sorted(held_by(view, node))

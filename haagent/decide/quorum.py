"""Fast failover's decisions (docs/safety.md, "Fast failover"). Pure: the view, the liveness
facts and the time in; a decision and its reason out.

- :func:`evidence`: has a majority of the other live members recorded a suspicion of a node's
  current session, so that a verdict may be written (after the refute window)?
- :func:`hold_deadline`: until when may this holder keep its VIPs: its etcd deadline, cut
  short to ``hold`` after its last acknowledged keepalive unless a quorum of peers vouches.
- :func:`surrender`: should a holder that etcd no longer answers give up now because its peers
  still reach etcd (so they could act against it)?
"""

from __future__ import annotations

from dataclasses import dataclass

from haagent.cluster.view import ClusterView
from haagent.decide.decision import Decision, no, yes
from haagent.liveness.peers import majority


@dataclass(frozen=True)
class Evidence:
    target: str
    lease: int  # the target's session the suspicions are about
    suspecters: tuple[tuple[str, int], ...]  # (node, create_revision of its suspicion)
    verdict_revision: int  # mod_revision of the verdict key as seen (0: absent)
    others: int  # the other live members counted
    needed: int


def voters(view: ClusterView, target: str) -> list[str]:
    """The other live members that take part in liveness: who may suspect ``target``."""
    return sorted(n for n, m in view.members.items() if n != target and m.liveness)


def evidence(view: ClusterView, target: str, claimed_members: int = 0) -> Evidence | None:
    """The suspicions of ``target``'s current session, if they are a majority of the other
    live members; None otherwise, or when a verdict on that session exists already.

    ``claimed_members``: the member count ``target`` itself last announced in a heartbeat.
    The majority is taken of whichever is larger, ours or its own, so that a view that lost
    members lowers no bar the target counted on (docs/safety.md).
    """
    m = view.members.get(target)
    if m is None:
        return None
    v = view.verdicts.get(target)
    if v is not None and v.lease == m.lease:
        return None
    live = voters(view, target)
    others = max(len(live), claimed_members - 1)
    need = majority(others)
    counted = tuple(
        sorted(
            (by, s.create_revision)
            for by, s in view.suspicions.get(target, {}).items()
            if s.lease == m.lease and by in live and s.own_lease == view.members[by].lease
        )
    )
    if len(counted) < need:
        return None
    return Evidence(target, m.lease, counted, 0 if v is None else v.revision, others, need)


def verdict_due(ev: Evidence, majority_since: float, refute_window: float, now: float) -> Decision:
    """May the verdict be written now? Only after the majority stood for the refute window:
    the suspect's chance to show it still reaches etcd (a refute deletes the suspicions)."""
    due = majority_since + refute_window
    who = ", ".join(by for by, _ in ev.suspecters)
    if now < due:
        return no(f"{who} suspect {ev.target}; refute window open for {due - now:.3f}s more")
    return yes(
        f"{len(ev.suspecters)} of {ev.others} other members ({who}) have not heard "
        f"{ev.target} and it did not refute"
    )


def hold_deadline(
    etcd_deadline: float | None,
    last_ack: float | None,
    hold: float,
    protected_until: float,
) -> float | None:
    """The moment this holder must have let go of its VIPs (None: it holds no proof at all).

    The etcd deadline always bounds it. Within it, a holder keeps its VIPs while a quorum of
    peers vouches for it (``protected_until``: no majority can suspect it before then), or
    for ``hold`` after the send time of its last acknowledged keepalive (a verdict can be
    written at any time once the peers stop hearing it; whoever binds after a verdict waits
    ``hold`` after seeing the lease gone, and the lease cannot be revoked before this
    keepalive was answered)."""
    if etcd_deadline is None or last_ack is None:
        return None
    return min(etcd_deadline, max(last_ack + hold, protected_until))


def surrender(
    last_ack: float | None, etcd_loss: float, now: float, reachable_from: list[str]
) -> Decision:
    """Give up the VIPs (and have a peer revoke the lease) when etcd has not answered for
    ``etcd_loss`` while a peer still reaches it: whatever the peers decide, they can carry it
    out and this host could not stop it. When nobody reaches etcd, nobody can take a VIP
    over, and the lease deadline decides as before."""
    if last_ack is None:
        return no("no lease")
    silent = now - last_ack
    if silent < etcd_loss:
        return no(f"etcd answered {silent:.3f}s ago")
    if not reachable_from:
        return no(f"etcd silent for {silent:.3f}s, but no peer reaches it either")
    return yes(
        f"etcd has not answered for {silent:.3f}s while {', '.join(reachable_from)} still reach it"
    )

"""Who would take a VIP over, in order: the seam for placement.

Today every healthy live member is an equal candidate and the fastest campaign wins; the order
below (by name) is only stable, not a preference. Priorities, rendezvous hashing and drain
plug in here, as a function of the same view, without touching the agent.
"""

from __future__ import annotations

from collections.abc import Collection

from haagent.cluster.view import ClusterView


def candidates(view: ClusterView, vip: str, *, exclude: Collection[str] = ()) -> list[str]:
    """Live members healthy for ``vip``, best first (draining members excluded)."""
    return [
        node
        for node in view.healthy_members(vip)
        if node not in exclude and not view.members[node].draining
    ]

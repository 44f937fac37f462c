"""May this node hold a VIP now? Health, hold-down, and keeping a VIP nobody else can serve.

A node campaigns for (and keeps) a VIP only while its checks pass and no hold-down runs. The
one exception is ``when_all_unhealthy: keep``: a holder whose checks fail keeps the VIP while
no other live member reports itself healthy for it, because nobody answering is worse than a
degraded host answering.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from haagent.cluster.schema import Health, HealthState
from haagent.config import ReleaseOrKeep

# seconds a VIP we could not bind stays ineligible, so a host that can bind it takes over
BIND_FAILURE_HOLD_DOWN = 5.0


@dataclass(frozen=True)
class EligibilityFacts:
    health: Health  # this node's health for the VIP
    holding: bool  # this node holds it now
    hold_left: float  # seconds of hold-down left; <= 0: none
    healthy_peers: Sequence[str]  # other live members healthy for it, in takeover order
    when_all_unhealthy: ReleaseOrKeep
    link_down: str | None = None  # why the VIP's interface cannot carry traffic, if it cannot
    retiring: str | None = None  # why a reload takes this VIP away (removed, or moved)
    drained: str | None = None  # why: haagent drain asked this node to hold nothing
    yielding: str | None = None  # why the VIP is being handed over (a move, a preemption)


@dataclass(frozen=True)
class Eligibility:
    eligible: bool
    reason: str
    keeping: bool = False  # eligible only because nobody healthy could take over
    nobody: bool = False  # unhealthy here and no healthy host anywhere: nobody will answer


def decide(f: EligibilityFacts) -> Eligibility:
    if f.retiring is not None:
        # A reload removed the VIP, or gave it another address: let go of the old one for
        # good (whatever its health); the new one is elected afresh once this one is released.
        return Eligibility(False, f.retiring)
    if f.drained is not None:
        # An operator's order: everything goes, "keep" included; peers rank this node out.
        return Eligibility(False, f.drained, nobody=not f.healthy_peers)
    if f.yielding is not None:
        return Eligibility(False, f.yielding)
    if f.link_down is not None:
        # Nothing can be served over a link without carrier: give the VIP up now rather than
        # at the lease deadline, and take it back only once the link (and health) returns.
        return Eligibility(False, f.link_down, nobody=not f.healthy_peers)
    h = f.health
    if h.state is HealthState.UNKNOWN:
        return Eligibility(False, h.reason or "health not yet known")
    if h.state is HealthState.UNHEALTHY:
        reason = h.reason or "unhealthy"
        if not f.healthy_peers and f.when_all_unhealthy == "keep" and f.holding:
            return Eligibility(
                True,
                f"{reason}; keeping it: no healthy host (when_all_unhealthy: keep)",
                keeping=True,
            )
        return Eligibility(False, reason, nobody=not f.healthy_peers)
    if f.hold_left > 0:
        return Eligibility(False, f"hold-down after giving it up ({f.hold_left:.1f}s left)")
    return Eligibility(True, "health checks pass")


def hold_down_on_failure(holding: bool, hold_down: float) -> float | None:
    """Seconds of hold-down after this node's checks for a VIP fail; None for none.

    Damping: a holder that gave a VIP up for its health does not take it back at once, so a
    flapping check cannot make the VIP flap with it. A standby has nothing to damp.
    """
    return hold_down if holding and hold_down > 0 else None

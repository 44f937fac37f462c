"""The lease deadline passed without a newer acknowledged keepalive: release or keep?"""

from __future__ import annotations

from haagent.config import ReleaseOrKeep
from haagent.decide.decision import Decision, no, yes


def at_deadline(policy: ReleaseOrKeep, holding_any: bool, last_answer: str) -> Decision:
    """Keep the VIPs past the deadline (yes) or release them (no), and why.

    Releasing is the safe default: past the deadline etcd may expire the lease at any moment
    and another host take over. ``lease.when_etcd_unreachable: keep`` trades that safety for
    availability when etcd itself is down (docs/safety.md); it only matters while holding.
    """
    why = f"last keepalive answered {last_answer}"
    if policy == "keep" and holding_any:
        return yes(f"{why}; keeping (lease.when_etcd_unreachable: keep)")
    return no(f"lease deadline passed ({why})")

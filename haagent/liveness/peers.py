"""What this agent knows of its peers' heartbeats, and what follows from it. Pure: the
caller passes the monotonic time in.

Two kinds of fact come out:

- **Silence.** A peer heard in its current session (lease) and silent for the detection
  time (``interval x multiplier``) is *suspected*. From that moment this agent withholds its
  promise for that peer (below) until the core says no suspicion record of it is left in etcd
  (:meth:`Liveness.clear`).
- **Promises.** A heartbeat lists, per peer it hears and does not withhold, the newest
  sequence number it received from that peer. Receiving our own sequence ``s`` back from peer
  P proves that P will not suspect us before ``send_time(s) + detection`` (P received ``s``
  after we sent it, and waits the detection time from its newest packet). With clocks that
  drift by at most ``drift`` against real time, we count that promise until
  ``send_time(s) + detection x (1 - 2 drift)`` on our clock. If enough peers promise that the
  rest cannot form a majority of the other members, no verdict can be reached against us:
  :meth:`Liveness.protected_until`.
"""

from __future__ import annotations

import math
from collections import Counter, OrderedDict
from dataclasses import dataclass, field

from haagent.liveness.wire import Heartbeat

SENT_KEPT = 1024  # our own send times remembered (at 50 Hz: 20 s, far beyond any detection)


def majority(others: int) -> int:
    """Suspicions needed for a verdict among ``others`` other live members."""
    return others // 2 + 1 if others > 0 else 1


def needed_promises(others: int) -> int:
    """Promises that leave too few others for a majority against us (0 with no others)."""
    return max(0, others - majority(others) + 1) if others > 0 else 0


@dataclass
class Peer:
    node: str
    lease: int
    seq: int
    heard_at: float  # our monotonic time of its newest heartbeat
    etcd_age: float | None = None  # seconds, as it reported, at heard_at
    members: int = 0
    heard: dict[str, int] = field(default_factory=dict)
    surrender: int | None = None
    detection: float = 0.0  # its own detection time (0: not said; ours is assumed)
    hold: float = 0.0  # its liveness.hold


class Liveness:
    def __init__(self, node: str, detection: float, drift: float) -> None:
        self.node = node
        self.detection = detection
        self.drift = drift
        self.peers: dict[str, Peer] = {}
        self.withheld: set[str] = set()
        self.rejected: Counter[str] = Counter()
        self.accepted = 0
        self.seq = 0
        self._sent: OrderedDict[int, float] = OrderedDict()

    # -- sending ---------------------------------------------------------------------

    def sending(self, now: float) -> int:
        """The sequence number of a heartbeat sent now."""
        self.seq += 1
        self._sent[self.seq] = now
        while len(self._sent) > SENT_KEPT:
            self._sent.popitem(last=False)
        return self.seq

    def heard_set(self, now: float) -> dict[str, int]:
        """What our next heartbeat promises: peers heard within the detection time that we do
        not withhold, with the newest sequence number received from each."""
        return {
            p.node: p.seq
            for p in self.peers.values()
            if now - p.heard_at < self.detection and p.node not in self.withheld
        }

    # -- receiving -------------------------------------------------------------------

    def receive(self, hb: Heartbeat, now: float, member_lease: int | None) -> str | None:
        """Take an authentic heartbeat; the reason when it is refused (counted)."""
        why: str | None = None
        p = self.peers.get(hb.node)
        if hb.node == self.node:
            why = "own node name"
        elif member_lease is None:
            why = "not a live member"
        elif hb.lease != member_lease:
            why = "stale session"
        elif p is not None and p.lease == hb.lease and hb.seq <= p.seq:
            why = "replayed or reordered"
        if why is not None:
            self.rejected[why] += 1
            return why
        self.accepted += 1
        age = None if hb.etcd_age_ms is None else hb.etcd_age_ms / 1000.0
        self.peers[hb.node] = Peer(
            hb.node,
            hb.lease,
            hb.seq,
            now,
            age,
            hb.members,
            hb.heard,
            hb.surrender,
            hb.detection_ms / 1000.0,
            hb.hold_ms / 1000.0,
        )
        return None

    def forget(self, node: str) -> None:
        """``node`` is no longer a member (or has a new lease): its session is over."""
        self.peers.pop(node, None)

    # -- facts for the core -------------------------------------------------------------

    def suspected(self, now: float) -> set[str]:
        """Peers heard in their current session and silent for the detection time. Each is
        withheld from our promises from now on (until :meth:`clear`)."""
        out = {p.node for p in self.peers.values() if now - p.heard_at >= self.detection}
        self.withheld |= out
        return out

    def clear(self, node: str) -> None:
        """No suspicion record of ``node`` is left: we may promise it again once heard."""
        self.withheld.discard(node)

    def promise_expiry(self, p: Peer) -> float | None:
        seq = p.heard.get(self.node)
        sent = self._sent.get(seq) if seq is not None else None
        if sent is None:
            return None
        # The promiser waits its own detection time; the shorter of its and ours counts.
        d = min(self.detection, p.detection) if p.detection > 0 else self.detection
        return sent + d * (1 - 2 * self.drift)

    def protected_until(self, others: int) -> float:
        """Until when no majority of ``others`` other members can suspect us."""
        need = needed_promises(others)
        if need == 0:
            return math.inf
        expiries = sorted(
            (e for p in self.peers.values() if (e := self.promise_expiry(p)) is not None),
            reverse=True,
        )
        return expiries[need - 1] if len(expiries) >= need else -math.inf

    def others(self, view_others: int, now: float) -> int:
        """The other members to count: our view's, or more if a peer heard lately counts
        more (our view may be stale while etcd is out of reach)."""
        fresh = [p.members - 1 for p in self.peers.values() if now - p.heard_at < self.detection]
        return max([view_others, *fresh])

    def etcd_reachable_elsewhere(self, now: float, within: float) -> list[str]:
        """Peers heard lately whose last keepalive answer is younger than ``within``."""
        return sorted(
            p.node
            for p in self.peers.values()
            if now - p.heard_at < self.detection
            and p.etcd_age is not None
            and p.etcd_age + (now - p.heard_at) < within
        )

    def surrenders(self) -> dict[str, int]:
        """Leases peers gave up and ask us to revoke: node -> lease."""
        return {p.node: p.surrender for p in self.peers.values() if p.surrender is not None}

"""What changed between two views of a cluster, as ``haagent watch`` reports it: pure.

``watch`` applies the watch's changes one revision at a time and diffs the view before and
after each revision; after a re-read (compaction, reconnect) it diffs the old view against the
fresh one, so nothing that happened meanwhile goes unreported (``reread`` marks those).

Why a holder left is inferred from what changed at the same revision: etcd deletes a holder
key and writes its release record in one transaction (a resign), and deletes every key of a
lease at once when the lease is revoked or expires.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from haagent.cluster.schema import HealthState, Holder
from haagent.cluster.view import ClusterView

EventKind = Literal[
    "acquired",
    "released",
    "health",
    "member_joined",
    "member_left",
    "draining",
    "drain",
    "undrain",
    "request",
    "request_removed",
]

LEASE_ENDED = "its lease ended (agent stopped, its fence revoked the lease, or the lease expired)"


@dataclass(frozen=True)
class WatchEvent:
    kind: EventKind
    revision: int
    vip: str | None = None
    node: str | None = None
    reason: str = ""
    epoch: int | None = None
    old: str | None = None  # health: the previous state
    new: str | None = None  # health: the new state; draining: "true"/"false"
    reread: bool = False  # found by a re-read, not seen as it happened

    def to_json(self, time: float) -> dict[str, Any]:
        out: dict[str, Any] = {"event": self.kind, "revision": self.revision, "time": time}
        for name in ("vip", "node", "epoch", "old", "new"):
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        out["reason"] = self.reason
        out["reread"] = self.reread
        return out

    def text(self) -> str:
        vip, node = self.vip or "", self.node or ""
        match self.kind:
            case "acquired":
                return f"acquired  {vip} by {node} (epoch {self.epoch}): {self.reason}"
            case "released":
                return f"released  {vip} by {node}: {self.reason}"
            case "health":
                return f"health    {vip} on {node}: {self.old} -> {self.new}: {self.reason}"
            case "member_joined":
                return f"joined    {node}: {self.reason}"
            case "member_left":
                return f"left      {node}: {self.reason}"
            case "draining":
                return f"draining  {node}: {self.reason}"
            case "drain":
                return f"drain     {node}: {self.reason}"
            case "undrain":
                return f"undrain   {node}: {self.reason}"
            case "request":
                return f"request   {vip}: {self.reason}"
            case "request_removed":
                return f"request   {vip}: removed: {self.reason}"
        return f"{self.kind} {vip} {node} {self.reason}"  # pragma: no cover


def _why_left(old: ClusterView, new: ClusterView, vip: str, h: Holder) -> str:
    rel = new.released.get(vip)
    if rel is not None and rel.node == h.node and rel.create_revision == h.create_revision:
        if rel.reason:
            return f"resigned: {rel.reason}"
        health = new.health_of(h.node, vip)
        if health is not None and health.state is HealthState.UNHEALTHY:
            return f"resigned: unhealthy: {health.reason}"
        return "resigned"
    before, after = old.members.get(h.node), new.members.get(h.node)
    if before is not None and before.lease == h.lease and (after is None or after.lease != h.lease):
        return LEASE_ENDED
    if before is None and after is None:
        return "key deleted (its node is not a live member)"
    return "key deleted"


def _holder_events(
    old: ClusterView, new: ClusterView, revision: int, reread: bool
) -> tuple[list[WatchEvent], list[WatchEvent]]:
    released: list[WatchEvent] = []
    acquired: list[WatchEvent] = []
    for vip in sorted(set(old.holders) | set(new.holders)):
        a, b = old.holders.get(vip), new.holders.get(vip)
        if a == b:
            continue
        # The same holding: the same key (create_revision), node and lease.
        same = (
            a is not None
            and b is not None
            and (a.create_revision, a.node, a.lease) == (b.create_revision, b.node, b.lease)
        )
        if a is not None and not same:
            if b is None:
                why = _why_left(old, new, vip, a)
            elif reread:
                why = f"{b.node} holds it now (missed while not watching)"
            else:
                why = f"holder key replaced by a write naming {b.node}"
            released.append(WatchEvent("released", revision, vip, a.node, why, reread=reread))
        if b is not None and not same:
            reason = b.reason if b.readable else f"unreadable holder key: {b.problem}"
            acquired.append(
                WatchEvent("acquired", revision, vip, b.node, reason, b.epoch, reread=reread)
            )
    return released, acquired


def diff(old: ClusterView, new: ClusterView, *, reread: bool = False) -> list[WatchEvent]:
    """The changes from ``old`` to ``new``, in the order a reader wants them: joins, the
    operators' drain keys, releases, acquisitions, health, members' draining flags, requests,
    departures."""
    rev = new.revision
    joined: list[WatchEvent] = []
    left: list[WatchEvent] = []
    health: list[WatchEvent] = []
    draining: list[WatchEvent] = []
    for node in sorted(set(old.members) | set(new.members)):
        a, b = old.members.get(node), new.members.get(node)
        if a is not None and b is None:
            ev = WatchEvent("member_left", rev, node=node, reason=LEASE_ENDED, reread=reread)
            left.append(ev)
        elif a is not None and b is not None and b.lease != a.lease:
            # A restart on a new lease: the old session left before the new one joined.
            why = f"its lease {a.lease:x} was replaced (agent restarted)"
            joined.append(WatchEvent("member_left", rev, node=node, reason=why, reread=reread))
        if b is not None and (a is None or b.lease != a.lease):
            why = f"version {b.version}, config {b.config_digest}, lease {b.lease:x}"
            joined.append(WatchEvent("member_joined", rev, node=node, reason=why, reread=reread))
        if a is None or b is None or a.lease != b.lease:
            continue  # health and draining flips are within one session; joins say the rest
        for vip in sorted(set(a.health) | set(b.health)):
            ha, hb = a.health.get(vip), b.health.get(vip)
            sa = ha.state.value if ha is not None else "absent"
            sb = hb.state.value if hb is not None else "absent"
            if sa != sb:
                why = hb.reason if hb is not None else ""
                health.append(WatchEvent("health", rev, vip, node, why, None, sa, sb, reread))
        if a.draining != b.draining:
            # The member record's flag: the agent saw its drain key come or go and acts on it.
            flag = "true" if b.draining else "false"
            why = "now draining: handing every vip over" if b.draining else "no longer draining"
            draining.append(
                WatchEvent("draining", rev, node=node, reason=why, new=flag, reread=reread)
            )
    drains: list[WatchEvent] = []
    for node in sorted(set(old.drains) | set(new.drains)):
        da, db = old.drains.get(node), new.drains.get(node)
        if db is not None and da != db:
            # The operator's key (haagent drain): asked; the agent's "draining" event follows.
            who = f"asked by {db.by}" if db.by else "asked"
            text = who + (f": {db.reason}" if db.reason else "")
            if node not in new.members:
                text += " (not a live member: applies when its agent starts)"
            drains.append(WatchEvent("drain", rev, node=node, reason=text, reread=reread))
        elif db is None and da is not None:
            text = "drain key deleted (haagent undrain)"
            drains.append(WatchEvent("undrain", rev, node=node, reason=text, reread=reread))
    released, acquired = _holder_events(old, new, rev, reread)
    requests: list[WatchEvent] = []
    for vip in sorted(set(old.requests) | set(new.requests)):
        ra, rb = old.requests.get(vip), new.requests.get(vip)
        if rb is None and ra is not None:
            pin = f"no pin to {ra.to} any more" if ra.to else "no request any more"
            requests.append(WatchEvent("request_removed", rev, vip, ra.to, pin, reread=reread))
        elif rb is not None and ra != rb:
            to = rb.to or "the next-ranked node"
            who = f" by {rb.by}" if rb.by else ""
            text = f"{rb.action} to {to}{who}"
            requests.append(WatchEvent("request", rev, vip, rb.to, text, reread=reread))
    return [*joined, *drains, *released, *acquired, *health, *draining, *requests, *left]

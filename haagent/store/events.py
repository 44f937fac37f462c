"""What the store's threads report to their consumer (the agent's loop)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from haagent.cluster.view import (
    ClusterView,
    DrainChange,
    HolderChange,
    MemberChange,
    ReleasedChange,
    RequestChange,
    SuspicionChange,
    VerdictChange,
)


@dataclass(frozen=True)
class ViewLoaded:
    """A fresh range read replaced the picture (after the watch's revision was compacted)."""

    view: ClusterView


@dataclass(frozen=True)
class KeepaliveAcked:
    lease_id: int
    sent_at: float  # monotonic time the keepalive was sent
    ttl: int


@dataclass(frozen=True)
class LeaseGone:
    lease_id: int
    reason: str


@dataclass(frozen=True)
class KeepaliveFailed:
    lease_id: int
    error: str
    kind: str = ""  # the exception's type name, for the etcd error metric


@dataclass(frozen=True)
class WatchBroken:
    error: str


@dataclass(frozen=True)
class WatchResumed:
    revision: int


StoreEvent = (
    HolderChange
    | MemberChange
    | RequestChange
    | ReleasedChange
    | DrainChange
    | SuspicionChange
    | VerdictChange
    | ViewLoaded
    | KeepaliveAcked
    | LeaseGone
    | KeepaliveFailed
    | WatchBroken
    | WatchResumed
)

Sink = Callable[[StoreEvent], None]

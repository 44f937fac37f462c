"""Typed events that flow into the agent's single event loop from its helper threads."""

from __future__ import annotations

from dataclasses import dataclass, field

from haagent.election import Holder
from haagent.health.monitor import VipHealthChanged
from haagent.schema import MemberRecord


@dataclass(frozen=True)
class HolderChanged:
    vip: str
    holder: Holder | None  # None: key deleted (released, expired, or unreadable)
    revision: int


@dataclass(frozen=True)
class MemberChanged:
    node: str
    member: MemberRecord | None
    revision: int


@dataclass(frozen=True)
class Snapshot:
    """The whole cluster picture from one range read (start-up, and recovery after compaction)."""

    revision: int
    holders: dict[str, Holder] = field(default_factory=dict)
    members: dict[str, MemberRecord] = field(default_factory=dict)


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


@dataclass(frozen=True)
class WatchBroken:
    error: str


@dataclass(frozen=True)
class WatchResumed:
    revision: int


@dataclass(frozen=True)
class Stop:
    reason: str


@dataclass(frozen=True)
class Wake:
    """Nothing happened; the loop woke for a timer."""


Event = (
    HolderChanged
    | MemberChanged
    | Snapshot
    | KeepaliveAcked
    | LeaseGone
    | KeepaliveFailed
    | WatchBroken
    | WatchResumed
    | Stop
    | Wake
    | VipHealthChanged
)

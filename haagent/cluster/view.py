"""One immutable picture of a cluster: members, holders and operator requests at a revision.

Built from one range read of the prefix (:meth:`ClusterView.of`, from the store's decoding),
then moved forward by watch events with :meth:`ClusterView.apply`. The agent's decisions, the
read-only CLI and the tests all read this one type; nobody mutates it.

Cost: ``apply`` copies the mapping a batch of changes touches, once per batch (the agent
applies everything its queue holds before deciding), so a burst of N watch events costs one
O(VIPs) copy, not N of them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import TypeVar

from haagent.cluster.schema import (
    Drain,
    Health,
    Holder,
    MemberRecord,
    Released,
    Request,
    Suspicion,
    Verdict,
)

V = TypeVar("V")


@dataclass(frozen=True)
class HolderChange:
    vip: str
    holder: Holder | None  # None: key deleted (released, expired)
    revision: int


@dataclass(frozen=True)
class MemberChange:
    node: str
    member: MemberRecord | None  # None: deleted, or a value this version cannot read
    revision: int


@dataclass(frozen=True)
class RequestChange:
    vip: str
    request: Request | None  # None: deleted, or a value this version cannot read
    revision: int


@dataclass(frozen=True)
class ReleasedChange:
    vip: str
    released: Released | None  # None: deleted (with its lease), or unreadable
    revision: int


@dataclass(frozen=True)
class DrainChange:
    node: str
    drain: Drain | None  # None: deleted (undrained), or unreadable
    revision: int


@dataclass(frozen=True)
class SuspicionChange:
    target: str
    by: str
    suspicion: Suspicion | None  # None: deleted (cleared, refuted, its lease gone)
    revision: int


@dataclass(frozen=True)
class VerdictChange:
    target: str
    verdict: Verdict | None
    revision: int


Change = (
    HolderChange
    | MemberChange
    | RequestChange
    | ReleasedChange
    | DrainChange
    | SuspicionChange
    | VerdictChange
)


def _frozen(items: Mapping[str, V]) -> Mapping[str, V]:
    return MappingProxyType(dict(items))


@dataclass(frozen=True)
class ClusterView:
    revision: int
    members: Mapping[str, MemberRecord] = field(default_factory=lambda: _frozen({}))
    holders: Mapping[str, Holder] = field(default_factory=lambda: _frozen({}))
    requests: Mapping[str, Request] = field(default_factory=lambda: _frozen({}))
    released: Mapping[str, Released] = field(default_factory=lambda: _frozen({}))
    drains: Mapping[str, Drain] = field(default_factory=lambda: _frozen({}))
    # target -> suspecter -> record (fast failover, docs/safety.md)
    suspicions: Mapping[str, Mapping[str, Suspicion]] = field(default_factory=lambda: _frozen({}))
    verdicts: Mapping[str, Verdict] = field(default_factory=lambda: _frozen({}))

    @classmethod
    def of(
        cls,
        revision: int,
        *,
        members: Mapping[str, MemberRecord] | None = None,
        holders: Mapping[str, Holder] | None = None,
        requests: Mapping[str, Request] | None = None,
        released: Mapping[str, Released] | None = None,
        drains: Mapping[str, Drain] | None = None,
        suspicions: Mapping[str, Mapping[str, Suspicion]] | None = None,
        verdicts: Mapping[str, Verdict] | None = None,
    ) -> ClusterView:
        return cls(
            revision,
            _frozen(members or {}),
            _frozen(holders or {}),
            _frozen(requests or {}),
            _frozen(released or {}),
            _frozen(drains or {}),
            _frozen({t: _frozen(by) for t, by in (suspicions or {}).items() if by}),
            _frozen(verdicts or {}),
        )

    def apply(self, changes: Iterable[Change]) -> ClusterView:
        """The view after ``changes`` (in revision order); self when there are none."""
        members: dict[str, MemberRecord] | None = None
        holders: dict[str, Holder] | None = None
        requests: dict[str, Request] | None = None
        released: dict[str, Released] | None = None
        drains: dict[str, Drain] | None = None
        suspicions: dict[str, Mapping[str, Suspicion]] | None = None
        verdicts: dict[str, Verdict] | None = None
        revision = self.revision
        for ch in changes:
            revision = max(revision, ch.revision)
            match ch:
                case HolderChange(vip=vip, holder=h):
                    holders = dict(self.holders) if holders is None else holders
                    _set(holders, vip, h)
                case MemberChange(node=node, member=m):
                    members = dict(self.members) if members is None else members
                    _set(members, node, m)
                case RequestChange(vip=vip, request=r):
                    requests = dict(self.requests) if requests is None else requests
                    _set(requests, vip, r)
                case ReleasedChange(vip=vip, released=rel):
                    released = dict(self.released) if released is None else released
                    _set(released, vip, rel)
                case DrainChange(node=node, drain=d):
                    drains = dict(self.drains) if drains is None else drains
                    _set(drains, node, d)
                case SuspicionChange(target=target, by=by, suspicion=sus):
                    suspicions = dict(self.suspicions) if suspicions is None else suspicions
                    of = dict(suspicions.get(target, {}))
                    _set(of, by, sus)
                    if of:
                        suspicions[target] = MappingProxyType(of)
                    else:
                        suspicions.pop(target, None)
                case VerdictChange(target=target, verdict=v):
                    verdicts = dict(self.verdicts) if verdicts is None else verdicts
                    _set(verdicts, target, v)
        touched = (members, holders, requests, released, drains, suspicions, verdicts)
        if all(m is None for m in touched):
            return self if revision == self.revision else replace(self, revision=revision)
        return ClusterView(
            revision,
            self.members if members is None else MappingProxyType(members),
            self.holders if holders is None else MappingProxyType(holders),
            self.requests if requests is None else MappingProxyType(requests),
            self.released if released is None else MappingProxyType(released),
            self.drains if drains is None else MappingProxyType(drains),
            self.suspicions if suspicions is None else MappingProxyType(suspicions),
            self.verdicts if verdicts is None else MappingProxyType(verdicts),
        )

    # -- questions every reader asks -----------------------------------------------------

    def health_of(self, node: str, vip: str) -> Health | None:
        """What ``node``'s member record says about its health for ``vip`` (None: no record)."""
        m = self.members.get(node)
        return None if m is None else m.health.get(vip)

    def draining(self, node: str) -> bool:
        """Drained by an operator (the drain key), or saying so in its member record."""
        m = self.members.get(node)
        return node in self.drains or (m is not None and m.draining)

    def healthy_members(self, vip: str) -> list[str]:
        """Live members that say they are healthy for ``vip``, by name (stable order)."""
        return sorted(
            node
            for node, m in self.members.items()
            if (h := m.health.get(vip)) is not None and h.healthy
        )


def _set(d: dict[str, V], key: str, value: V | None) -> None:
    if value is None:
        d.pop(key, None)
    else:
        d[key] = value

"""The picture the read-only commands show, built from a ClusterView alone: pure, no I/O.

``build`` turns the view (one range read of the prefix, or a watch's latest state) into rows
for ``status`` and ``members``; ``diff`` turns two views into the changes ``watch`` reports.
Times are unix times; anything relative is computed against a ``now`` the caller passes, so
every function here is deterministic (tests/unit/test_cli_picture.py).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

from haagent.cli.steer import MoveState, move_state
from haagent.cluster.schema import (
    DEFAULT_PRIORITY,
    UNREADABLE,
    Drain,
    Health,
    HealthState,
    VipSpec,
    failing_checks,
)
from haagent.cluster.view import ClusterView
from haagent.decide.rank import candidates

VipState = Literal["held", "unheld", "unreadable"]


@dataclass(frozen=True)
class VipRow:
    name: str
    spec: VipSpec | None  # the holder's, else the first member's (by name) that has one
    state: VipState
    holder: str | None
    since: float | None  # unix time the holder won the key
    epoch: int | None
    standby: tuple[str, ...]  # healthy candidates other than the holder, in takeover order
    reason: str  # why it last changed, as far as etcd tells
    healthy_somewhere: bool  # some live member is healthy for it (the holder included)
    draining: bool  # its holder is draining (drain key or member record)
    configured_on: tuple[str, ...]  # live members whose config has this VIP
    move: MoveState | None = None  # a move request: pending, or the pin it leaves

    @property
    def held(self) -> bool:
        return self.state == "held"


@dataclass(frozen=True)
class VipHealth:
    vip: str
    health: Health

    @property
    def failing(self) -> tuple[tuple[str, str], ...]:
        return failing_checks(self.health)


@dataclass(frozen=True)
class MemberRow:
    node: str
    address: str | None
    version: str
    started: float
    config_digest: str
    draining: bool  # drained by an operator (the drain key) or saying so in its record
    lease: int
    health: tuple[VipHealth, ...]
    priority: int = DEFAULT_PRIORITY
    priorities: tuple[tuple[str, int], ...] = ()  # per-VIP overrides, by VIP name
    ready: bool = True  # past its start-up wait
    record_draining: bool = False  # its own record says it drains (it has seen the key)
    drain: Drain | None = None  # the drain key, if an operator drained it

    @property
    def drain_text(self) -> str:
        """``no``, ``yes``, or the two halves of a drain that has not met yet."""
        if self.drain is not None and self.record_draining:
            return "yes"
        if self.drain is not None:
            return "asked (agent not yet draining)"
        if self.record_draining:
            return "ending (undrained; agent not yet campaigning)"
        return "no"


@dataclass(frozen=True)
class Disagreement:
    """Hosts whose configs differ about one field of one VIP: value -> the nodes with it."""

    vip: str
    field: str  # "address", "interface", "mode" or "checks"
    values: tuple[tuple[str, tuple[str, ...]], ...]

    def text(self) -> str:
        parts = "; ".join(f"{value} on {', '.join(nodes)}" for value, nodes in self.values)
        return f"hosts disagree about vip {self.vip}'s {self.field}: {parts}"


@dataclass(frozen=True)
class Picture:
    cluster: str
    revision: int
    vips: tuple[VipRow, ...]
    members: tuple[MemberRow, ...]
    disagreements: tuple[Disagreement, ...] = field(default=())
    drains: tuple[tuple[str, Drain], ...] = ()  # every drain key, by node (live or not)

    @property
    def drained_absent(self) -> tuple[tuple[str, Drain], ...]:
        """Drain keys of nodes that are no live member (pre-drained while down)."""
        live = {m.node for m in self.members}
        return tuple((n, d) for n, d in self.drains if n not in live)

    @property
    def empty(self) -> bool:
        return not self.vips and not self.members

    def vip(self, name: str) -> VipRow | None:
        return next((v for v in self.vips if v.name == name), None)

    @property
    def all_held(self) -> bool:
        return all(v.held for v in self.vips)


def vip_names(view: ClusterView) -> list[str]:
    names: set[str] = set(view.holders) | set(view.requests) | set(view.released)
    for m in view.members.values():
        names.update(m.vips)
        names.update(m.vip_specs)
    return sorted(names)


def _spec(view: ClusterView, vip: str, holder: str | None) -> VipSpec | None:
    h = view.holders.get(vip)
    if h is not None and h.spec is not None:
        return h.spec
    if holder is not None and (m := view.members.get(holder)) and vip in m.vip_specs:
        return m.vip_specs[vip]
    for name in sorted(view.members):
        if vip in view.members[name].vip_specs:
            return view.members[name].vip_specs[vip]
    return None


def _reason(view: ClusterView, vip: str) -> str:
    holder = view.holders.get(vip)
    rel = view.released.get(vip)
    after = ""
    if rel is not None and (holder is None or rel.node != holder.node):
        after = f"{rel.node} released it" + (f": {rel.reason}" if rel.reason else "")
    if holder is None:
        return after or "no holder key"
    if not holder.readable:
        return f"holder key unreadable: {holder.problem}"
    won = holder.reason or "campaign won"
    return f"{won} (after {after})" if after else won


def vip_row(view: ClusterView, vip: str) -> VipRow:
    h = view.holders.get(vip)
    state: VipState = "unheld" if h is None else "held" if h.readable else "unreadable"
    holder = h.node if h is not None and h.readable else None
    healthy = view.healthy_members(vip)
    member = view.members.get(holder) if holder else None
    return VipRow(
        name=vip,
        spec=_spec(view, vip, holder),
        state=state,
        holder=holder if holder is not None else (UNREADABLE if h is not None else None),
        since=h.since if h is not None and h.readable else None,
        epoch=h.epoch if h is not None and h.readable else None,
        standby=tuple(candidates(view, vip, exclude=[holder] if holder else [])),
        reason=_reason(view, vip),
        healthy_somewhere=bool(healthy),
        draining=bool(member is not None and view.draining(member.node)),
        configured_on=tuple(sorted(n for n, m in view.members.items() if vip in m.vips)),
        move=move_state(view, vip),
    )


def disagreements(view: ClusterView) -> list[Disagreement]:
    out: list[Disagreement] = []
    for vip in vip_names(view):
        specs = {n: m.vip_specs[vip] for n, m in sorted(view.members.items()) if vip in m.vip_specs}
        for name, value in (
            ("address", lambda s: ", ".join(s.cidrs)),
            ("interface", lambda s: s.interface),
            ("mode", lambda s: s.mode),
            ("checks", lambda s: ",".join(s.checks) or "(none)"),
        ):
            by_value: dict[str, list[str]] = {}
            for node, spec in specs.items():
                by_value.setdefault(value(spec), []).append(node)
            if len(by_value) > 1:
                values = tuple((v, tuple(ns)) for v, ns in sorted(by_value.items()))
                out.append(Disagreement(vip, name, values))
    return out


def build(view: ClusterView, cluster: str) -> Picture:
    members = tuple(
        MemberRow(
            node=m.node,
            address=m.address,
            version=m.version,
            started=m.started,
            config_digest=m.config_digest,
            draining=view.draining(m.node),
            lease=m.lease,
            health=tuple(VipHealth(v, m.health[v]) for v in sorted(m.health)),
            priority=m.priority,
            priorities=tuple(sorted(m.priorities.items())),
            ready=m.ready,
            record_draining=m.draining,
            drain=view.drains.get(m.node),
        )
        for _, m in sorted(view.members.items())
    )
    return Picture(
        cluster=cluster,
        revision=view.revision,
        vips=tuple(vip_row(view, v) for v in vip_names(view)),
        members=members,
        disagreements=tuple(disagreements(view)),
        drains=tuple(sorted(view.drains.items())),
    )


# --------------------------------------------------------------------------- text helpers


def ago(then: float | None, now: float) -> str:
    """``3m12s``, ``2h05m``, ``4d03h``: how long ago, to the unit that matters."""
    if then is None:
        return ""
    s = max(0, int(now - then))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def health_text(h: Health) -> str:
    if h.state is HealthState.UNHEALTHY:
        failing = failing_checks(h)
        if failing:
            return "unhealthy: " + "; ".join(f"{c}: {d}" for c, d in failing)
    return h.to_text()


# --------------------------------------------------------------------------- JSON


def spec_json(spec: VipSpec | None) -> dict[str, Any] | None:
    return None if spec is None else spec.to_dict()


def health_json(h: Health) -> dict[str, Any]:
    return {
        "state": h.state.value,
        "reason": h.reason,
        "failing": [{"check": c, "detail": d} for c, d in failing_checks(h)],
    }


def move_json(m: MoveState | None) -> dict[str, Any] | None:
    if m is None:
        return None
    return {
        "to": m.to,
        "state": "pending" if m.pending else "pinned",
        "at_target": m.at_target,
        "by": m.by,
        "at": m.at,
        "revision": m.revision,
        "text": m.text(),
    }


def drain_json(d: Drain | None) -> dict[str, Any] | None:
    if d is None:
        return None
    return {"by": d.by, "at": d.at, "reason": d.reason, "revision": d.revision}


def vip_json(v: VipRow, now: float) -> dict[str, Any]:
    return {
        "name": v.name,
        "spec": spec_json(v.spec),
        "state": v.state,
        "holder": v.holder,
        "since": v.since,
        "held_for": ago(v.since, now) if v.since is not None else None,
        "epoch": v.epoch,
        "standby": list(v.standby),
        "reason": v.reason,
        "healthy_somewhere": v.healthy_somewhere,
        "draining": v.draining,
        "configured_on": list(v.configured_on),
        "move": move_json(v.move),
    }


def member_json(m: MemberRow, now: float) -> dict[str, Any]:
    return {
        "node": m.node,
        "address": m.address,
        "version": m.version,
        "started": m.started,
        "uptime": ago(m.started, now),
        "config_digest": m.config_digest,
        "draining": m.draining,
        "record_draining": m.record_draining,
        "drain": drain_json(m.drain),
        "priority": m.priority,
        "priorities": dict(m.priorities),
        "ready": m.ready,
        "lease": f"{m.lease:x}",
        "health": {vh.vip: health_json(vh.health) for vh in m.health},
    }


def disagreement_json(d: Disagreement) -> dict[str, Any]:
    return {
        "vip": d.vip,
        "field": d.field,
        "values": {value: list(nodes) for value, nodes in d.values},
        "text": d.text(),
    }


def status_json(p: Picture, now: float, vips: Iterable[VipRow] | None = None) -> dict[str, Any]:
    rows = list(p.vips if vips is None else vips)
    return {
        "cluster": p.cluster,
        "revision": p.revision,
        "time": now,
        "all_held": all(v.held for v in rows),
        "vips": [vip_json(v, now) for v in rows],
    }

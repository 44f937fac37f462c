"""A status snapshot of one agent: what metrics and the CLI read, built by the loop on request."""

from __future__ import annotations

from dataclasses import dataclass

from haagent.cluster.schema import Health
from haagent.decide.election import State


@dataclass(frozen=True)
class VipStatus:
    name: str
    address: str
    interface: str
    state: State
    eligible: bool
    reason: str  # why not eligible ("" when eligible)
    health: Health
    holder: str | None  # the node etcd names, as this agent last saw it
    bound: bool  # the address is placed on this host
    hold_down_left: float


@dataclass(frozen=True)
class AgentStatus:
    node: str
    cluster: str
    lease_id: int | None
    lease_ok: bool
    deadline_in: float | None  # seconds to the lease deadline, None without a proven lease
    outage_keep: bool
    revision: int
    vips: tuple[VipStatus, ...]

    def holding(self) -> list[str]:
        return [v.name for v in self.vips if v.state is State.HOLDER]

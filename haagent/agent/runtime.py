"""Everything the agent keeps about one VIP, in one object."""

from __future__ import annotations

from dataclasses import dataclass, field

from haagent.cluster.schema import HEALTHY, Health, HealthState, Holder
from haagent.config import VipConfig
from haagent.decide.election import Bind, Election, State


@dataclass
class VipRuntime:
    cfg: VipConfig
    election: Election
    # A VIP without checks is healthy from the first moment; one with checks is unknown,
    # which is not healthy: no campaign (and no adopted key kept) before its checks rose.
    health: Health
    hold_until: float = 0.0  # monotonic; ineligible until then (hold-down)
    keeping: bool = False  # held while unhealthy (when_all_unhealthy: keep)
    link_down: str | None = None  # its interface has no carrier (net.linkwatch), and why
    # A reload removed it (replacement None) or moved it: released, then dropped or replaced.
    retiring: str | None = None
    replacement: VipConfig | None = None
    purged: int | None = None  # create_revision of the invalid holder key we deleted
    held_revision: int | None = None  # create_revision of our key while we hold it
    # Handover (decide.handover): the other nodes seen holding the key, until each is known
    # to have let go; a won VIP's bind waiting for that.
    predecessors: dict[str, Holder] = field(default_factory=dict)
    pending_bind: Bind | None = None
    # Probe the segment before the bind: a predecessor's lease was condemned by a verdict.
    probe: bool = False
    probed: bool = False  # a probe since found nobody answering
    probing: bool = False  # a Probe is queued or running
    # Placement (decide.placement): the create_revision of the last key seen for it (whose
    # release record names the host that just let go); a campaign deferred by rank, and since
    # when the key is free; the candidate seen ranking first while we hold it, and since when;
    # why a handover is under way (a move, a preemption).
    last_key: int = 0
    deferred: str | None = None
    free_since: float = 0.0
    better: str | None = None
    better_since: float = 0.0
    yielding: str | None = None

    @classmethod
    def new(cls, cfg: VipConfig, node: str) -> VipRuntime:
        health = (
            Health(HealthState.UNKNOWN, "health not yet known")
            if cfg.checks
            else Health(HEALTHY.state, "no health checks")
        )
        return cls(cfg=cfg, election=Election(cfg.name, node), health=health)

    @property
    def name(self) -> str:
        return self.cfg.name

    @property
    def state(self) -> State:
        return self.election.state

    @property
    def holding(self) -> bool:
        return self.election.state is State.HOLDER

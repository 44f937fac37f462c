"""Everything that flows into the agent's one loop from its helper threads and signals."""

from __future__ import annotations

import queue
from dataclasses import dataclass

from haagent.agent.witness import LivenessFacts
from haagent.health.events import VipHealthChanged
from haagent.net.linkwatch import LinkChanged
from haagent.store.events import StoreEvent


@dataclass(frozen=True)
class Stop:
    reason: str


@dataclass(frozen=True)
class Reload:
    """Re-read the config file (SIGHUP)."""

    reason: str


@dataclass(frozen=True)
class StatusRequest:
    """Another thread (metrics, tests) asks for a status snapshot; the loop answers on reply."""

    reply: queue.SimpleQueue[object]


Event = StoreEvent | VipHealthChanged | LinkChanged | LivenessFacts | Stop | Reload | StatusRequest

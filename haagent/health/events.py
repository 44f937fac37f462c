"""What the health monitor reports (a module of its own so that readers need not load checks)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class VipHealthChanged:
    vip: str
    healthy: bool
    reason: str  # "check pg failed: connection refused (3/3)"

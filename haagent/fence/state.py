"""What the fence knows and decides: pure, no I/O (``program`` carries its decisions out)."""

from __future__ import annotations

from ipaddress import IPv4Interface, IPv6Interface, ip_interface
from typing import Any

# s beyond etcd.timeout that a live agent gets to report its own deadline before the fence
# takes it for frozen and revokes its lease (the agent's loop is late by at most one RPC).
REVOKE_SLACK = 0.25

Address = tuple[str, IPv4Interface | IPv6Interface]


class Fence:
    """What the fence knows and decides (pure: it returns what to remove, serve() removes it)."""

    def __init__(self) -> None:
        self.deadline: float | None = None
        self.hold = False  # keep the addresses with no deadline (etcd outage, "keep" policy)
        self.addresses: list[Address] = []
        self.lease: int | None = None  # the agent's lease, revoked once the fence acted
        self.setup: dict[str, Any] | None = None  # how to reach etcd (see setup_message)
        # After acting at the deadline: when to revoke the lease unless the agent speaks first.
        self.revoke_at: float | None = None
        self.revoke_grace = 1.0 + REVOKE_SLACK  # etcd.timeout (from the setup) + slack

    def update(self, message: dict[str, object]) -> bool:
        """Apply one message; False when the agent said it is exiting."""
        if message.get("exit"):
            return False
        setup = message.get("setup")
        if isinstance(setup, dict):
            self.setup = setup
            self.revoke_grace = float(setup.get("timeout", 1.0)) + REVOKE_SLACK
            return True
        # The agent speaks, so it is not frozen: whatever it missed, it handles its lease.
        self.revoke_at = None
        lease = message.get("lease")
        self.lease = lease if isinstance(lease, int) and lease > 0 else None
        deadline = message.get("deadline")
        self.deadline = float(deadline) if isinstance(deadline, (int, float)) else None
        self.hold = bool(message.get("hold"))
        raw = message.get("addresses", [])
        addresses: list[Address] = []
        if isinstance(raw, list):
            for item in raw:
                if isinstance(item, list) and len(item) == 2:
                    addresses.append((str(item[0]), ip_interface(str(item[1]))))
        self.addresses = addresses
        return True

    def timeout(self, now: float) -> float | None:
        """How long to wait for the next message before acting; None: forever."""
        whens = [] if self.revoke_at is None else [self.revoke_at]
        if self.addresses and self.deadline is not None and not self.hold:
            whens.append(self.deadline)
        return max(0.0, min(whens) - now) if whens else None

    def due(self, now: float) -> tuple[list[Address], str]:
        """Addresses to remove now because the deadline passed, and why.

        Removing them cannot wait; revoking the lease can (see revoke_due).
        """
        if not self.addresses or self.hold or (self.deadline is not None and now < self.deadline):
            return [], ""
        late = "" if self.deadline is None else f" {(now - self.deadline) * 1000:.0f} ms ago"
        self.revoke_at = now + self.revoke_grace
        return self.take(), f"lease deadline passed{late} and the agent did not act"

    def revoke_due(self, now: float) -> int | None:
        """The lease to revoke now: the agent stayed silent for ``revoke_grace`` after the
        fence acted at its deadline, so it is frozen, not merely cut off from etcd.

        A live agent reaches the same deadline itself and tells the fence (at most one etcd
        RPC late), and may then regain the lease if etcd answers before it expires — e.g.
        after an etcd leader election. Revoking at the deadline would turn that pause into
        a failover.
        """
        if self.revoke_at is None or now < self.revoke_at:
            return None
        self.revoke_at = None
        return self.lease

    def take(self) -> list[Address]:
        """Everything still listed (the agent died): the fence removes it and forgets it."""
        addresses, self.addresses = self.addresses, []
        return addresses

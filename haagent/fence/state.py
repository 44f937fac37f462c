"""What the fence knows and decides: pure, no I/O (``program`` carries its decisions out).

The agent's messages are differences (see ``program``): each costs the fence work in
proportion to what it changes, never to how many addresses it guards.
"""

from __future__ import annotations

from ipaddress import IPv4Interface, IPv6Interface, ip_interface
from typing import Any

# s beyond etcd.timeout that a live agent gets to report its own deadline before the fence
# takes it for frozen and revokes its lease (the agent's loop is late by at most one RPC).
REVOKE_SLACK = 0.25

Address = tuple[str, IPv4Interface | IPv6Interface]


def parse_addresses(raw: object) -> list[Address]:
    """``[["eth0", "198.51.100.200/32"], ...]`` as addresses; malformed items are skipped
    (the agent never sends them, and a fence that died of one would guard nothing)."""
    found: list[Address] = []
    if isinstance(raw, list):
        for item in raw:
            if isinstance(item, list) and len(item) == 2 and isinstance(item[0], str):
                try:
                    found.append((item[0], ip_interface(str(item[1]))))
                except ValueError:
                    continue
    return found


class Fence:
    """What the fence knows and decides (pure: it returns what to remove, serve() removes it).

    Every listed address is in exactly one of two places: ``_guarded`` (to remove when the
    deadline passes) or ``_removed`` (removed at the current deadline already). Keeping the
    removed ones listed keeps the fence's list equal to the agent's, which only ever sends
    changes: an address the agent still lists is removed again when its pipe closes, and
    guarded again once a new deadline or hold says the agent may have bound it anew.
    """

    def __init__(self) -> None:
        self.deadline: float | None = None
        self.hold = False  # keep the addresses with no deadline (etcd outage, "keep" policy)
        self._guarded: dict[Address, None] = {}  # dicts: sets that keep the agent's order
        self._removed: dict[Address, None] = {}
        self.lease: int | None = None  # the agent's lease, revoked once the fence acted
        self.setup: dict[str, Any] | None = None  # how to reach etcd (see setup_message)
        # After acting at the deadline: when to revoke the lease unless the agent speaks first.
        self.revoke_at: float | None = None
        self.revoke_grace = 1.0 + REVOKE_SLACK  # etcd.timeout (from the setup) + slack

    @property
    def addresses(self) -> list[Address]:
        """Every address the agent lists, whether or not the fence removed it already."""
        return [*self._guarded, *self._removed]

    def update(self, message: dict[str, object]) -> bool:
        """Apply one message; False when the agent said it is exiting.

        A field that is absent keeps its value; ``add`` and ``remove`` change the list.
        """
        if message.get("exit"):
            return False
        setup = message.get("setup")
        if isinstance(setup, dict):
            self.setup = setup
            timeout = setup.get("timeout", 1.0)
            if isinstance(timeout, int | float) and not isinstance(timeout, bool):
                self.revoke_grace = float(timeout) + REVOKE_SLACK
            return True
        # The agent speaks, so it is not frozen: whatever it missed, it handles its lease.
        self.revoke_at = None
        rearm = False
        if "lease" in message:
            lease = message["lease"]
            self.lease = (
                lease
                if isinstance(lease, int) and not isinstance(lease, bool) and lease > 0
                else None
            )
        if "deadline" in message:
            deadline = message["deadline"]
            new = (
                float(deadline)
                if isinstance(deadline, int | float) and not isinstance(deadline, bool)
                else None
            )
            rearm = new != self.deadline
            self.deadline = new
        if "hold" in message:
            hold = bool(message["hold"])
            rearm = rearm or hold != self.hold
            self.hold = hold
        for address in parse_addresses(message.get("remove")):
            self._guarded.pop(address, None)
            self._removed.pop(address, None)
        for address in parse_addresses(message.get("add")):
            self._removed.pop(address, None)  # (re)bound: guarded whatever happened before
            self._guarded[address] = None
        if rearm and self._removed:
            # The agent proved its lease again (or changed its mind about holding): what it
            # still lists may be bound again, so it is guarded again.
            self._guarded.update(self._removed)
            self._removed = {}
        return True

    def timeout(self, now: float) -> float | None:
        """How long to wait for the next message before acting; None: forever."""
        whens = [] if self.revoke_at is None else [self.revoke_at]
        if self._guarded and self.deadline is not None and not self.hold:
            whens.append(self.deadline)
        return max(0.0, min(whens) - now) if whens else None

    def due(self, now: float) -> tuple[list[Address], str]:
        """Addresses to remove now because the deadline passed, and why.

        Removing them cannot wait; revoking the lease can (see revoke_due).
        """
        if not self._guarded or self.hold or (self.deadline is not None and now < self.deadline):
            return [], ""
        late = "" if self.deadline is None else f" {(now - self.deadline) * 1000:.0f} ms ago"
        self.revoke_at = now + self.revoke_grace
        due, self._guarded = list(self._guarded), {}
        self._removed.update(dict.fromkeys(due))
        return due, f"lease deadline passed{late} and the agent did not act"

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
        """Everything still listed (the agent died): the fence removes it and forgets it.

        Addresses removed at the deadline already are included: removing an absent address
        costs one netlink message, missing one the agent bound late would cost a duplicate.
        """
        addresses = self.addresses
        self._guarded, self._removed = {}, {}
        return addresses

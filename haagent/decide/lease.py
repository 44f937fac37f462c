"""The lease deadline: the moment after which this agent can no longer prove it holds its lease.

etcd expires a lease TTL seconds after it *received* the last keepalive; the agent only knows
when it *sent* that keepalive, which was earlier. So ``sent + ttl`` is never later than etcd's
expiry, and dropping the VIPs at ``sent + ttl - margin`` leaves ``margin`` seconds for the
unbind to finish before any other node can win the key. etcd may keep the lease a little longer
(leader changes renew all leases, expiry is checked on ticks), which only widens that gap.

Pure logic over a monotonic clock passed in by the caller, so it is testable without time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

# The kernel checks address lifetimes on whole-second ticks, so an address can outlive its
# valid_lft by up to a second (measurements in docs/safety.md).
KERNEL_LIFETIME_SLACK = 1.0


@dataclass
class LeaseClock:
    ttl: float
    margin: float
    lease_id: int | None = None
    deadline: float | None = None  # monotonic seconds; None when no lease is proven
    last_ack: float | None = None  # monotonic send time of the last acknowledged keepalive

    def acknowledged(self, lease_id: int, sent_at: float, granted_ttl: float) -> None:
        """A keepalive (or the grant) sent at ``sent_at`` was answered with ``granted_ttl``."""
        if self.lease_id != lease_id:
            self.lease_id = lease_id
            self.last_ack = None
        # Answers can arrive out of order; an older send time never moves the deadline back.
        if self.last_ack is not None and sent_at <= self.last_ack:
            return
        self.last_ack = sent_at
        self.deadline = sent_at + granted_ttl - self.margin

    def valid(self, now: float) -> bool:
        return self.deadline is not None and now < self.deadline

    def remaining(self, now: float) -> float | None:
        return None if self.deadline is None else self.deadline - now

    def address_lifetime(self, now: float) -> int | None:
        """Whole seconds of valid_lft that let the kernel drop a VIP before etcd can expire us.

        etcd cannot expire the lease before ``last_ack + ttl`` (= deadline + margin). An address
        given ``L`` seconds now is gone by ``now + L + slack``; the largest L that keeps that
        before etcd's expiry, at least 1 (the kernel's minimum; with margin < 1 s the backstop
        may then lag etcd's expiry by up to 1 s - margin, see docs/safety.md).
        """
        if self.deadline is None:
            return None
        earliest_expiry = self.deadline + self.margin
        return max(1, math.floor(earliest_expiry - now - KERNEL_LIFETIME_SLACK))

    def forget(self) -> None:
        """The lease is gone (revoked, expired, or its deadline passed)."""
        self.lease_id = None
        self.deadline = None
        self.last_ack = None

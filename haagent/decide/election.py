"""One election per VIP: a pure state machine fed with facts, answering with actions.

The machine never talks to etcd or the kernel. The agent tells it what is true (my lease is
valid or not, who etcd says holds the key, whether I may hold it at all) and carries out the
actions it returns, feeding back their results. Every action carries the reason for it, which
becomes the log line an operator reads.

States::

    IDLE ──can hold──► CANDIDATE ──key absent──► CAMPAIGNING ──won──► HOLDER
      ▲                   ▲   ◄──────lost────────────┘                  │
      └───────────────────┴──── lease lost / ineligible / key gone ◄────┘

Safety rule: whenever this node stops being entitled to the VIP, ``Unbind`` comes before any
``Resign`` in the returned list, so the address is gone from this host before etcd lets
anyone else win the key.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from haagent.cluster.schema import Holder


class State(enum.Enum):
    IDLE = "idle"  # may not hold: no valid lease, not eligible, or shutting down
    CANDIDATE = "candidate"  # may hold, someone else has the key (or a retry is pending)
    CAMPAIGNING = "campaigning"  # create-if-absent transaction in flight
    # etcd says this node holds the key on its live lease; the address is bound, or will be
    # once decide.handover allows (the agent's core gates the Bind)
    HOLDER = "holder"


@dataclass(frozen=True)
class Campaign:
    vip: str
    epoch: int
    reason: str


@dataclass(frozen=True)
class Bind:
    vip: str
    reason: str


@dataclass(frozen=True)
class Unbind:
    vip: str
    reason: str


@dataclass(frozen=True)
class Resign:
    """Delete the holder key, but only the one this node created (compare create_revision)."""

    vip: str
    create_revision: int
    reason: str


Action = Campaign | Bind | Unbind | Resign


class Election:
    def __init__(self, vip: str, node: str) -> None:
        self.vip = vip
        self.node = node
        self._state = State.IDLE
        # Bumped on every change of state. The agent queues actions instead of running them
        # inside the call that produced them; a Campaign or Bind made in an older generation
        # is stale (a later fact already decided again) and is dropped unexecuted.
        self.gen = 0
        self.holder: Holder | None = None
        self.absent_revision = 0  # revision at which the key was last seen absent
        self.lease: int | None = None
        self.eligible = True
        self.ineligible_reason = ""
        self.stopping = False
        self.retry_pending = False  # a campaign failed without an answer; wait for retry()
        self.campaign_reason = ""  # why the campaign in flight was made (its record says so too)
        self._resigned: int | None = None  # create_revision of the key we asked etcd to delete

    @property
    def state(self) -> State:
        return self._state

    @state.setter
    def state(self, value: State) -> None:
        if value is not self._state:
            self._state = value
            self.gen += 1

    # -- facts ---------------------------------------------------------------------------

    def lease_valid(self, lease_id: int, reason: str = "lease valid") -> list[Action]:
        self.lease = lease_id
        return self._reconcile(reason)

    def lease_lost(self, reason: str) -> list[Action]:
        self.lease = None
        if self.state is State.CAMPAIGNING:
            # The transaction's answer no longer matters: without a lease it cannot be acted on.
            self.state = State.IDLE
        return self._reconcile(reason)

    def observe(self, holder: Holder | None, revision: int) -> list[Action]:
        """etcd (watch or range read at ``revision``) says ``holder`` holds the key."""
        if holder is None:
            self.absent_revision = max(self.absent_revision, revision)
            self._resigned = None
        self.holder = holder
        if self.state is State.CAMPAIGNING:
            return []  # the transaction's own answer decides; it is at least this fresh
        reason = "key absent" if holder is None else f"held by {holder.node}"
        return self._reconcile(reason)

    def set_eligible(self, eligible: bool, reason: str) -> list[Action]:
        self.eligible = eligible
        self.ineligible_reason = "" if eligible else reason
        return self._reconcile(reason)

    def shutdown(self, reason: str = "shutdown") -> list[Action]:
        self.stopping = True
        if self.state is State.CAMPAIGNING:
            self.state = State.IDLE
        return self._reconcile(reason)

    # -- results of our own actions ------------------------------------------------------

    def campaign_won(self, holder: Holder) -> list[Action]:
        self.holder = holder
        if self.state is not State.CAMPAIGNING:
            # Lease lost or shutdown while the transaction was in flight: the key is ours but
            # we may not use it; reconcile resigns it if the lease is still ours.
            return self._reconcile("campaign answered after it was abandoned")
        self.state = State.CANDIDATE
        # The same words as the holder record's reason, so that log and record agree.
        return self._reconcile(f"{self.campaign_reason or 'key absent'}; campaign won")

    def campaign_lost(self, holder: Holder | None, revision: int) -> list[Action]:
        if self.state is State.CAMPAIGNING:
            self.state = State.CANDIDATE
        return self.observe(holder, revision)

    def campaign_dropped(self, reason: str) -> list[Action]:
        """The agent never sent the campaign it was given (it waited for a better-ranked
        candidate, which took the key, or this node may no longer hold the VIP)."""
        if self.state is State.CAMPAIGNING:
            self.state = State.CANDIDATE
        return self._reconcile(reason)

    def campaign_failed(self, error: str) -> list[Action]:
        """No answer: the key may or may not be ours. The watch will tell; retry() re-arms."""
        if self.state is State.CAMPAIGNING:
            self.state = State.CANDIDATE
            self.retry_pending = True
        return []

    def retry(self) -> list[Action]:
        self.retry_pending = False
        return self._reconcile("retry after failed campaign")

    # -- the one place that decides ------------------------------------------------------

    @property
    def can_hold(self) -> bool:
        return self.lease is not None and self.eligible and not self.stopping

    @property
    def key_is_mine(self) -> bool:
        h = self.holder
        if h is None or self.lease is None:
            return False
        return h.node == self.node and h.lease == self.lease

    def _reconcile(self, reason: str) -> list[Action]:
        actions: list[Action] = []
        mine = self.key_is_mine
        if self.state is State.HOLDER and mine and self.can_hold:
            return actions
        if self.state is State.HOLDER:
            actions.append(Unbind(self.vip, self._why_not(reason)))
            self.state = State.IDLE
        if self.state is State.CAMPAIGNING:
            return actions
        if mine and not self.can_hold and self.lease is not None and not self.stopping:
            # Ineligible but etcd still names us: give the key up so another node can win it.
            # (On shutdown the agent revokes the whole lease instead, one RPC for all keys.)
            assert self.holder is not None
            if self._resigned != self.holder.create_revision:
                self._resigned = self.holder.create_revision
                actions.append(Resign(self.vip, self.holder.create_revision, self._why_not(reason)))
        if not self.can_hold:
            self.state = State.IDLE
            return actions
        if mine:
            self.state = State.HOLDER
            # Ours to serve again (a resign that failed and was dropped): a later release
            # must resign this key anew.
            self._resigned = None
            actions.append(Bind(self.vip, reason))
        elif self.holder is None and not self.retry_pending:
            self.state = State.CAMPAIGNING
            self.campaign_reason = reason
            actions.append(Campaign(self.vip, self.absent_revision, reason))
        else:
            self.state = State.CANDIDATE
        return actions

    def _why_not(self, reason: str) -> str:
        if self.stopping:
            return reason
        if self.lease is None:
            return reason
        if not self.eligible:
            return self.ineligible_reason or reason
        if self.holder is None:
            return "holder key deleted"
        if not self.key_is_mine:
            if self.holder.node == self.node:
                return f"key held by this node's earlier lease {self.holder.lease:x}"
            return f"key now held by {self.holder.node}"
        return reason

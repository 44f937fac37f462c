"""The agent: one event loop that wires config, store, elections and net together.

Threads only *report* (keepalive answers, watch events, health changes, signals) into one
queue; every decision and every bind/unbind happens on the loop's thread, in order. The loop
wakes at the lease deadline even when nothing arrives, so a holder cut off from etcd unbinds
on time.

Blocking calls on the loop are etcd RPCs bounded by ``etcd.timeout``, which config validation
keeps below ``lease.margin``: the loop can be late for the deadline by at most one RPC, and
the margin absorbs it before etcd could expire the lease.
"""

from __future__ import annotations

import contextlib
import fcntl
import heapq
import itertools
import logging
import os
import queue
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

from haagent import __version__
from haagent.config import Config, VipConfig
from haagent.election import Action, Bind, Campaign, Election, Holder, Resign, State, Unbind
from haagent.events import (
    Event,
    HolderChanged,
    KeepaliveAcked,
    KeepaliveFailed,
    LeaseGone,
    MemberChanged,
    Snapshot,
    Stop,
    Wake,
    WatchBroken,
    WatchResumed,
)
from haagent.fence import FenceClient, setup_message
from haagent.health.monitor import HealthMonitor, VipHealthChanged
from haagent.health.notify import Notifier
from haagent.lease import LeaseClock
from haagent.net.addresses import LIFETIME_FOREVER, AddressManager, NetError
from haagent.net.announce import Announcer
from haagent.net.placement import Placement
from haagent.schema import HolderRecord, Keys, MemberRecord
from haagent.store import (
    ETCD_ERRORS,
    STORE_ERRORS,
    UNREADABLE,
    LeaseKeeper,
    Store,
    StoreError,
    describe_error,
)

log = logging.getLogger("haagent.agent")

DEFAULT_STATE_DIR = Path("/run/haagent")
CAMPAIGN_RETRY = 0.5  # seconds before retrying a campaign that got no answer
REGRANT_RETRY = 0.5  # seconds between attempts to get a new lease
BIND_FAILURE_HOLDOFF = 5.0  # seconds a VIP we could not bind stays ineligible


class AgentError(Exception):
    pass


class _StopRequested(Exception):
    pass


@dataclass(order=True)
class _Timer:
    when: float
    seq: int
    fn: Callable[[], None] = field(compare=False)
    key: str = field(compare=False, default="")
    cancelled: bool = field(compare=False, default=False)


class Agent:
    def __init__(self, cfg: Config, *, state_dir: Path = DEFAULT_STATE_DIR) -> None:
        self.cfg = cfg
        self.node = cfg.node
        self.keys = Keys(cfg.cluster)
        self.state_dir = state_dir
        self.store = Store(cfg.etcd, self.keys)
        self.clock = LeaseClock(ttl=cfg.lease.ttl, margin=cfg.lease.margin)
        self.lease_ok = False
        self.elections = {v.name: Election(v.name, self.node) for v in cfg.vips}
        self.vips = {v.name: v for v in cfg.vips}
        self.members: dict[str, MemberRecord] = {}
        self._purged: dict[str, int] = {}  # vip -> create_revision of the invalid key we deleted
        self.events: queue.Queue[Event] = queue.Queue()
        self.started = time.time()
        self._timers: list[_Timer] = []
        self._timer_seq = itertools.count()
        self._keeper: LeaseKeeper | None = None
        self._net: AddressManager | None = None
        self._place: Placement | None = None
        self._announcer: Announcer | None = None
        self._fence = FenceClient(setup_message(cfg.cluster, cfg.etcd))
        self.health = HealthMonitor(cfg, self._post_health)
        self.notifier = Notifier(self.node)
        # A VIP without checks is healthy from the first moment; one with checks is unknown,
        # which is not healthy: no campaign (and no adopted key kept) before its checks rose.
        self._healthy: dict[str, bool | None] = {
            v.name: None if v.checks else True for v in cfg.vips
        }
        self._health_reason: dict[str, str] = {
            v.name: "health not yet known" if v.checks else "no health checks" for v in cfg.vips
        }
        self._hold_until: dict[str, float] = {}
        self._keeping: set[str] = set()  # VIPs held while unhealthy (when_all_unhealthy: keep)
        self._outage_keep = False  # holding past the deadline (lease.when_etcd_unreachable: keep)
        for name, healthy in self._healthy.items():
            if healthy is None:
                self.elections[name].set_eligible(False, self._health_reason[name])
        self._stop_requested = threading.Event()
        self._lock_fd: int | None = None

    # -- lifecycle -----------------------------------------------------------------------

    def run(self) -> int:
        previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        signal.signal(signal.SIGHUP, self._on_sighup)
        try:
            self._lock()
            self._net = AddressManager()
            self._place = Placement(self._net)
            try:
                self._fence.start()
            except OSError as exc:
                raise AgentError(f"cannot start the fence process: {exc}") from None
            self._announcer = Announcer()
            self._announcer.prepare({v.interface for v in self.vips.values()})
            self._check_stop()
            self.health.start()
            self._start()
            self._loop()
            return 0
        except _StopRequested:
            log.info("stopped during start-up")
            return 0
        finally:
            self._shutdown()
            for s, h in previous.items():
                signal.signal(s, h)

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        # Never raise from here: the signal can land anywhere, even inside an import. Start-up
        # checks the flag between steps; the loop sees the Stop event.
        name = signal.Signals(signum).name
        self._stop_requested.set()
        self.events.put(Stop(name))

    def _check_stop(self) -> None:
        if self._stop_requested.is_set():
            raise _StopRequested()

    def _on_sighup(self, _signum: int, _frame: FrameType | None) -> None:
        log.warning(
            "SIGHUP: configuration reload is not supported by this version; restart to apply"
        )

    def _lock(self) -> None:
        """One agent per (cluster, node) on this host: a second one would share our lease."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        path = self.state_dir / f"{self.cfg.cluster}-{self.node}.lock"
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise AgentError(
                f"another haagent already runs for cluster {self.cfg.cluster!r} node {self.node!r} "
                f"(lock {path} is held)"
            ) from None
        self._lock_fd = fd

    @property
    def _lease_file(self) -> Path:
        return self.state_dir / f"{self.cfg.cluster}-{self.node}.lease"

    def _start(self) -> None:
        log.info(
            "haagent %s starting: cluster %s, node %s, %d vip(s), lease ttl %ds margin %.1fs",
            __version__,
            self.cfg.cluster,
            self.node,
            len(self.vips),
            self.cfg.lease.ttl,
            self.cfg.lease.margin,
        )
        self._connect()
        self._check_stop()
        snap = self.store.snapshot()
        lease_id = self._adopt_or_grant(snap)
        self._reconcile_addresses(snap, lease_id)
        self._publish_member()
        adopted = lease_id == self._previous_lease()
        self._lease_file.write_text(f"{lease_id:x}\n")
        for name, e in self.elections.items():
            self._observe(e, snap.holders.get(name), snap.revision)
        self._set_lease_ok(True, "own key found on adopted lease" if adopted else "lease granted")
        self._keeper = LeaseKeeper(self.store, lease_id, self.cfg.lease.interval, self.events.put)
        self._keeper.start()
        self.store.start_watch(snap.revision + 1, self.events.put)

    def _connect(self) -> None:
        """Connect to etcd; if it does not answer at once, drop VIP addresses left bound.

        An address from an earlier run may only stay if etcd confirms this node still holds it
        on a live lease. Until etcd answers nothing is confirmed, and the other nodes may
        already have moved on, so waiting with the address bound could make two holders.
        """
        try:
            self.store.connect(give_up_after=self.cfg.lease.margin, cancel=self._stop_requested)
            return
        except StoreError as exc:
            reason = f"etcd unreachable at start-up ({exc}), cannot prove this node holds it"
        for name, vip in self.vips.items():
            if self.place.remove(vip):
                log.info("removed stale address of vip %s (%s): %s", name, vip.address, reason)
        self._check_stop()
        try:
            self.store.connect(cancel=self._stop_requested)
        except StoreError:
            self._check_stop()  # cancelled by a signal: a clean stop, not an error
            raise

    def _previous_lease(self) -> int | None:
        try:
            return int(self._lease_file.read_text().strip(), 16)
        except (OSError, ValueError):
            return None

    def _adopt_or_grant(self, snap: Snapshot) -> int:
        """Keep the lease of our previous run if it is still alive in etcd, else take a new one.

        Adoption lets a restarted agent keep its VIPs without a failover. Only a lease this
        host wrote down itself is adopted, and only if etcd still has our member key on it, so
        a second host misconfigured with the same node name never shares our lease.
        """
        previous = self._previous_lease()
        member = snap.members.get(self.node)
        if previous is not None and member is not None and member.lease == previous:
            try:
                ttl, sent = self.store.keepalive(previous)
            except STORE_ERRORS as exc:
                log.info("previous lease %x not renewable (%s)", previous, describe_error(exc))
            else:
                if ttl > 0:
                    self.clock.acknowledged(previous, sent, ttl)
                    log.info("adopted lease %x of the previous run (ttl %ds)", previous, ttl)
                    return previous
        lease_id, ttl, sent = self.store.grant(self.cfg.lease.ttl)
        self.clock.acknowledged(lease_id, sent, ttl)
        log.info("granted lease %x (ttl %ds)", lease_id, ttl)
        return lease_id

    def _reconcile_addresses(self, snap: Snapshot, lease_id: int) -> None:
        """Remove VIP addresses left bound by an earlier run unless etcd says they are ours."""
        for name, vip in self.vips.items():
            if not self.place.is_placed(vip):
                if vip.vmac:
                    self.place.remove(vip)  # a vmac link left without its address
                continue
            h = snap.holders.get(name)
            if h is not None and h.node == self.node and h.lease == lease_id:
                log.info(
                    "kept address of vip %s (%s): etcd says this node holds it", name, vip.address
                )
                continue
            who = "nobody" if h is None else f"{h.node} (lease {h.lease:x})"
            self.place.remove(vip)
            log.info(
                "removed stale address of vip %s (%s): etcd says it is held by %s",
                name,
                vip.address,
                who,
            )

    def _publish_member(self) -> None:
        lease_id = self.clock.lease_id
        if lease_id is None:
            return
        vip = next(iter(self.vips.values()), None)
        record = MemberRecord(
            node=self.node,
            address=self._node_address(vip) if vip else None,
            version=__version__,
            started=self.started,
            config_digest=self.cfg.digest,
            lease=lease_id,
            vips=tuple(self.vips),
            health={name: self._health_text(name) for name in self.vips},
        )
        self.store.put_member(record, lease_id)

    def _health_text(self, vip: str) -> str:
        healthy = self._healthy[vip]
        if healthy is None:
            return "unknown"
        return "healthy" if healthy else f"unhealthy: {self._health_reason[vip]}"

    # -- health ---------------------------------------------------------------------------

    def _post_health(self, event: object) -> None:
        """Called from the monitor's threads: hand the event to the loop."""
        if isinstance(event, VipHealthChanged):
            self.events.put(event)

    def _health_changed(self, vip: str, healthy: bool, reason: str) -> None:
        if vip not in self.vips:
            return
        was = self._healthy[vip]
        self._healthy[vip] = healthy
        self._health_reason[vip] = reason
        e = self.elections[vip]
        if healthy:
            log.info("vip %s healthy on this node: %s", vip, reason)
        else:
            log.warning("vip %s unhealthy on this node: %s", vip, reason)
            if was is not False:
                self.notifier.fire("fault", self.vips[vip], reason)
            if e.state is State.HOLDER and self.vips[vip].hold_down > 0:
                # Damping: after giving a VIP up for its health, do not take it back at once.
                self._hold_down(vip, self.vips[vip].hold_down)
        self._refresh_eligibility(vip)
        try:
            self._publish_member()  # anyone can see who could take over
        except ETCD_ERRORS as exc:
            log.warning("cannot publish health in member record: %s", describe_error(exc))

    def _hold_down(self, vip: str, seconds: float) -> None:
        """Keep ``vip`` ineligible for ``seconds`` (see _eligibility), then look again."""
        self._hold_until[vip] = time.monotonic() + seconds
        self._after(seconds, lambda: self._refresh_eligibility(vip), key=f"hold:{vip}")

    def _healthy_peers(self, vip: str) -> list[str]:
        return [
            node
            for node, m in self.members.items()
            if node != self.node and m.health.get(vip) == "healthy"
        ]

    def _eligibility(self, vip: str) -> tuple[bool, str]:
        """May this node hold ``vip`` now, and why (the reason becomes the log line)."""
        cfg = self.vips[vip]
        e = self.elections[vip]
        if self._healthy[vip] is not True:
            reason = self._health_reason[vip]
            if self._healthy[vip] is None:
                return False, reason
            peers = self._healthy_peers(vip)
            if not peers and cfg.when_all_unhealthy == "keep" and e.state is State.HOLDER:
                return True, f"{reason}; keeping it: no healthy host (when_all_unhealthy: keep)"
            return False, reason
        left = self._hold_until.get(vip, 0.0) - time.monotonic()
        if left > 0:
            return False, f"hold-down after giving it up ({left:.1f}s left)"
        return True, "health checks pass"

    def _refresh_eligibility(self, vip: str) -> None:
        e = self.elections[vip]
        ok, why = self._eligibility(vip)
        keeping = ok and self._healthy[vip] is False
        if keeping and vip not in self._keeping:
            log.warning("vip %s kept while unhealthy: %s", vip, why)
            self._keeping.add(vip)
        elif not keeping:
            self._keeping.discard(vip)
        if ok != e.eligible:
            if not ok and self._healthy[vip] is False and not self._healthy_peers(vip):
                log.warning(
                    "no healthy host for vip %s: nobody answers for %s until one recovers",
                    vip,
                    self.vips[vip].address,
                )
            self._execute(e, e.set_eligible(ok, why))

    def _node_address(self, vip: VipConfig) -> str | None:
        """The node's own address on the VIP's interface: what operators ssh to."""
        for ip in sorted(self.net.bound_ips(vip.interface), key=str):
            if ip.version == vip.family and not ip.is_link_local and ip != vip.ip:
                return str(ip)
        return None

    @property
    def net(self) -> AddressManager:
        assert self._net is not None
        return self._net

    @property
    def place(self) -> Placement:
        assert self._place is not None
        return self._place

    # -- the loop ------------------------------------------------------------------------

    def _loop(self) -> None:
        while True:
            self._check_deadline()
            now = time.monotonic()
            waits = [1.0]
            if self._timers:
                waits.append(self._timers[0].when - now)
            remaining = self.clock.remaining(now)
            if self.lease_ok and remaining is not None and not self._outage_keep:
                waits.append(remaining)
            try:
                ev: Event = self.events.get(timeout=max(0.0, min(waits)))
            except queue.Empty:
                ev = Wake()
            self._check_deadline()
            if isinstance(ev, Stop):
                log.info("stopping: %s", ev.reason)
                return
            self._handle(ev)
            self._run_timers()

    def _check_deadline(self) -> None:
        now = time.monotonic()
        if self.lease_ok and not self.clock.valid(now) and not self._outage_keep:
            ack = self.clock.last_ack
            ago = f"{now - ack:.1f}s" if ack is not None else "never"
            if self.cfg.lease.when_etcd_unreachable == "keep" and self._held():
                self._keep_through_outage(f"last keepalive answered {ago} ago")
                return
            self._set_lease_ok(False, f"lease deadline passed (last keepalive answered {ago} ago)")

    def _keep_through_outage(self, why: str) -> None:
        """lease.when_etcd_unreachable: keep — hold on past the deadline, loudly.

        The fence and the address lifetimes would remove the VIPs at the deadline too, so
        they are told to stand down; a closing pipe (agent death) still removes them.
        """
        self._outage_keep = True
        for vip in self._held():
            log.warning(
                "keeping vip %s past the lease deadline: etcd unreachable (%s); if this host is "
                "partitioned while others reach etcd, another host takes the VIP when the lease "
                "expires and BOTH answer (lease.when_etcd_unreachable: keep)",
                vip.name,
                why,
            )
        self._extend_bound()

    def _set_lease_ok(self, ok: bool, reason: str) -> None:
        if ok and not self.clock.valid(time.monotonic()):
            return  # the proof arrived too late to be used; the next keepalive decides
        self.lease_ok = ok
        lease_id = self.clock.lease_id
        if ok:
            self._tell_fence()  # the lease it revokes should this process die from here on
        for e in self.elections.values():
            if ok and lease_id is not None:
                self._execute(e, e.lease_valid(lease_id, reason))
            else:
                self._execute(e, e.lease_lost(reason))

    def _handle(self, ev: Event) -> None:
        match ev:
            case HolderChanged(vip=vip, holder=holder, revision=rev):
                e = self.elections.get(vip)
                if e is not None:
                    self._observe(e, holder, rev)
            case Snapshot():
                self._apply_snapshot(ev)
            case MemberChanged(node=node, member=member):
                if member is None:
                    self.members.pop(node, None)
                else:
                    self.members[node] = member
                if node != self.node:
                    # A peer's health decides "keep" VIPs and the no-healthy-host warning.
                    for name in self.vips:
                        self._refresh_eligibility(name)
            case KeepaliveAcked(lease_id=lease_id, sent_at=sent, ttl=ttl):
                if lease_id != self.clock.lease_id:
                    return
                self.clock.acknowledged(lease_id, sent, ttl)
                if self._outage_keep and self.clock.valid(time.monotonic()):
                    self._outage_keep = False
                    log.info("etcd answered again and the lease is alive: vips kept")
                    self._regain_lease("keepalive answered again after an etcd outage")
                if not self.lease_ok and self.clock.valid(time.monotonic()):
                    self._regain_lease("keepalive answered again before the lease expired")
                elif self.lease_ok:
                    self._extend_bound()
            case LeaseGone(lease_id=lease_id, reason=reason):
                if lease_id == self.clock.lease_id:
                    self._lease_gone(reason)
            case VipHealthChanged(vip=vip, healthy=healthy, reason=reason):
                self._health_changed(vip, healthy, reason)
            case KeepaliveFailed():
                pass  # the keeper logs; the deadline decides
            case WatchBroken() | WatchResumed() | Wake():
                pass

    def _apply_snapshot(self, snap: Snapshot) -> None:
        self.members = dict(snap.members)
        for name, e in self.elections.items():
            self._observe(e, snap.holders.get(name), snap.revision)

    def _observe(self, e: Election, holder: Holder | None, revision: int) -> None:
        """Feed etcd's view of a holder key to the election, removing keys no holder wrote.

        A holder key that cannot be decoded, or that hangs on no lease (written by hand),
        would block the VIP forever: nobody can create the key while it exists and no lease
        expiry will ever delete it. No haagent writes such a key, so any agent that sees one
        deletes exactly that key (compare create_revision) and the election proceeds.
        A well-formed key on a live lease naming an unknown node is respected: it disappears
        with its lease like any other.
        """
        if holder is not None and (holder.node == UNREADABLE or holder.lease == 0):
            why = "unreadable value" if holder.node == UNREADABLE else "attached to no lease"
            if self._purged.get(e.vip) != holder.create_revision:
                self._purged[e.vip] = holder.create_revision
                try:
                    done = self.store.resign(e.vip, holder.create_revision)
                except ETCD_ERRORS as exc:
                    log.warning(
                        "cannot delete invalid holder key of vip %s: %s", e.vip, describe_error(exc)
                    )
                else:
                    log.warning(
                        "deleted invalid holder key of vip %s (%s, created at revision %d)%s",
                        e.vip,
                        why,
                        holder.create_revision,
                        "" if done else ": already gone",
                    )
        self._execute(e, e.observe(holder, revision))

    def _regain_lease(self, reason: str) -> None:
        """After a deadline miss the lease turned out alive: re-read etcd, then hold again."""
        try:
            snap = self.store.snapshot()
        except ETCD_ERRORS as exc:
            log.warning("cannot re-read etcd after regaining the lease: %s", describe_error(exc))
            return
        self.store.request_rewatch()
        self._apply_snapshot(snap)
        self._set_lease_ok(True, reason)

    def _lease_gone(self, reason: str) -> None:
        self._outage_keep = False
        if self._keeper is not None:
            self._keeper.stop()
            self._keeper = None
        self.clock.forget()
        self._set_lease_ok(False, f"lease lost: {reason}")
        self._regrant()

    def _regrant(self) -> None:
        try:
            lease_id, ttl, sent = self.store.grant(self.cfg.lease.ttl)
        except ETCD_ERRORS as exc:
            log.warning("cannot get a new lease (%s); retrying", describe_error(exc))
            self._after(REGRANT_RETRY, self._regrant, key="regrant")
            return
        self.clock.acknowledged(lease_id, sent, ttl)
        log.info("granted lease %x (ttl %ds)", lease_id, ttl)
        with contextlib.suppress(OSError):
            self._lease_file.write_text(f"{lease_id:x}\n")
        self._keeper = LeaseKeeper(self.store, lease_id, self.cfg.lease.interval, self.events.put)
        self._keeper.start()
        try:
            self._publish_member()
        except ETCD_ERRORS as exc:
            log.warning("cannot publish member record: %s", describe_error(exc))
        self._regain_lease("new lease granted")

    # -- actions -------------------------------------------------------------------------

    def _execute(self, e: Election, actions: list[Action]) -> None:
        self._run_actions(e, actions)
        if self._place is not None:  # after a Resign: links of released vmac VIPs
            try:
                self._place.tidy()
            except NetError as exc:
                log.error("cannot delete a released vmac link: %s", exc)
        self.health.set_state(e.vip, e.state.value)  # exec checks see it as HAAGENT_STATE

    def _run_actions(self, e: Election, actions: list[Action]) -> None:
        for action in actions:
            match action:
                case Unbind():
                    self._unbind(action)
                case Resign():
                    self._resign(e, action)
                case Campaign():
                    self._campaign(e, action)
                case Bind():
                    self._bind(e, action)

    def _campaign(self, e: Election, action: Campaign) -> None:
        lease_id = self.clock.lease_id
        if not self.lease_ok or lease_id is None:
            return
        record = HolderRecord(
            node=self.node,
            since=time.time(),
            epoch=action.epoch,
            reason=action.reason,
            lease=lease_id,
        )
        try:
            won, holder, rev = self.store.campaign(action.vip, record)
        except ETCD_ERRORS as exc:
            log.warning(
                "campaign for vip %s got no answer (%s); retrying", action.vip, describe_error(exc)
            )
            self._execute(e, e.campaign_failed(describe_error(exc)))
            self._after(
                CAMPAIGN_RETRY, lambda: self._execute(e, e.retry()), key=f"retry:{action.vip}"
            )
            return
        if won and holder is not None:
            self._execute(e, e.campaign_won(holder))
        else:
            log.debug("campaign for vip %s lost to %s", action.vip, holder.node if holder else "?")
            self._execute(e, e.campaign_lost(holder, rev))

    def _bind(self, e: Election, action: Bind) -> None:
        vip = self.vips[action.vip]
        # The campaign RPC may have eaten into the lease: never bind past the deadline.
        self._check_deadline()
        if not self.lease_ok or e.state is not State.HOLDER:
            return
        # The fence learns of the address before it exists: if we die right after binding,
        # it still knows what to remove.
        self._tell_fence()
        try:
            self.place.place(vip, self._lifetime())
        except NetError as exc:
            log.error(
                "cannot bind vip %s (%s on %s): %s", vip.name, vip.address, vip.interface, exc
            )
            # Give the key up for a while (hold-down) so a host that can bind it takes over.
            self._hold_down(vip.name, BIND_FAILURE_HOLDOFF)
            self._refresh_eligibility(vip.name)
            return
        # Announce before anything else: clients and switches move on the first one.
        self._announce(vip, vip.announce.count)
        holder = e.holder
        epoch = f", epoch {holder.epoch}" if holder else ""
        self.notifier.fire("acquire", vip, action.reason)
        log.info(
            "acquired vip %s (%s on %s%s): %s",
            vip.name,
            vip.address,
            self.place.where(vip),
            epoch,
            action.reason,
        )

    def _unbind(self, action: Unbind) -> None:
        vip = self.vips[action.vip]
        self._cancel(f"announce:{vip.name}")
        try:
            self.place.remove(vip, link_later=True)
        except NetError as exc:
            log.error(
                "cannot unbind vip %s (%s on %s): %s", vip.name, vip.address, vip.interface, exc
            )
        log.info(
            "released vip %s (%s on %s): %s",
            vip.name,
            vip.address,
            self.place.where(vip),
            action.reason,
        )
        self._tell_fence()
        self.notifier.fire("release", vip, action.reason)

    def _held(self) -> list[VipConfig]:
        return [self.vips[n] for n, e in self.elections.items() if e.state is State.HOLDER]

    def _lifetime(self) -> int | None:
        if self._outage_keep:
            return LIFETIME_FOREVER
        return self.clock.address_lifetime(time.monotonic())

    def _tell_fence(self) -> None:
        deadline = self.clock.deadline if self.lease_ok else None
        held = [f for v in self._held() if (f := self.place.fenced(v)) is not None]
        self._fence.tell(deadline, held, hold=self._outage_keep, lease=self.clock.lease_id)

    def _extend_bound(self) -> None:
        """A keepalive was acknowledged: push the new deadline to the fence and the kernel."""
        self._tell_fence()
        lifetime = self._lifetime()
        if lifetime is None:
            return
        for vip in self._held():
            try:
                if not self.place.refresh(vip, lifetime):
                    log.error(
                        "vip %s (%s) vanished from %s while held; binding it again",
                        vip.name,
                        vip.address,
                        self.place.where(vip),
                    )
                    self.place.place(vip, lifetime)
            except NetError as exc:
                log.error("cannot refresh vip %s (%s): %s", vip.name, vip.address, exc)

    def _resign(self, e: Election, action: Resign) -> None:
        try:
            done = self.store.resign(action.vip, action.create_revision)
        except ETCD_ERRORS as exc:
            log.warning("cannot resign vip %s (%s); retrying", action.vip, describe_error(exc))

            def retry() -> None:
                if e.holder is not None and e.holder.create_revision == action.create_revision:
                    self._resign(e, action)

            self._after(CAMPAIGN_RETRY, retry, key=f"resign:{action.vip}")
            return
        log.info(
            "resigned vip %s in etcd: %s%s",
            action.vip,
            action.reason,
            "" if done else " (key already gone)",
        )

    def _announce(self, vip: VipConfig, remaining: int) -> None:
        e = self.elections[vip.name]
        if e.state is not State.HOLDER or self._announcer is None:
            return
        if remaining > 0:
            try:
                # Read each time (an ioctl, ~11 µs): a re-created interface has a new MAC.
                self._announcer.announce(
                    self.place.where(vip),
                    vip.ip,
                    self.place.mac(vip),
                    arp_reply=vip.announce.arp_reply,
                )
            except (OSError, NetError) as exc:
                log.warning("announcement for vip %s failed: %s", vip.name, exc)
            if remaining > 1:
                self._after(
                    vip.announce.interval,
                    lambda: self._announce(vip, remaining - 1),
                    key=f"announce:{vip.name}",
                )
                return
        if vip.announce.refresh > 0:
            self._after(
                vip.announce.refresh, lambda: self._announce(vip, 1), key=f"announce:{vip.name}"
            )

    # -- timers --------------------------------------------------------------------------

    def _after(self, delay: float, fn: Callable[[], None], *, key: str) -> None:
        self._cancel(key)
        heapq.heappush(
            self._timers, _Timer(time.monotonic() + delay, next(self._timer_seq), fn, key)
        )

    def _cancel(self, key: str) -> None:
        for t in self._timers:
            if t.key == key:
                t.cancelled = True

    def _run_timers(self) -> None:
        now = time.monotonic()
        while self._timers and self._timers[0].when <= now:
            t = heapq.heappop(self._timers)
            if not t.cancelled:
                t.fn()

    # -- shutdown ------------------------------------------------------------------------

    def _shutdown(self) -> None:
        """Hand every VIP over: unbind first, then revoke the lease so the others see DELETEs.

        The revoke is what the other hosts react to, so nothing but the address removals
        stands before it: one revoke frees every holder key in one etcd revision, where a
        resign per VIP (and the logging, fence and hook bookkeeping of each release) cost
        ~2 ms per VIP of extra outage, measured. The elections then release as usual (log
        lines, fence, hooks, vmac links); their unbinds find nothing left to do, and their
        resigns are dropped when the revoke took the keys already.
        """
        if self._place is not None:
            for vip in self._held():
                with contextlib.suppress(NetError):
                    self._place.remove(vip, link_later=True)
        lease_id = self.clock.lease_id
        revoked = False
        if lease_id is not None and self.store._client is not None:
            try:
                self.store.revoke(lease_id)
                revoked = True
                log.info("revoked lease %x: holder and member keys deleted", lease_id)
                with contextlib.suppress(OSError):
                    self._lease_file.unlink()
            except ETCD_ERRORS as exc:
                log.warning(
                    "cannot revoke lease %x (%s); etcd expires it within %ds",
                    lease_id,
                    describe_error(exc),
                    self.cfg.lease.ttl,
                )
        for e in self.elections.values():
            actions = e.shutdown("shutdown")
            if revoked:  # the keys went with the lease
                actions = [a for a in actions if not isinstance(a, Resign)]
            with contextlib.suppress(Exception):
                self._execute(e, actions)
        # Thread joins last: stopping the fence, the checks and the keeper.
        self._fence.stop()
        self.health.stop()
        if self._keeper is not None:
            self._keeper.stop()
        self.store.close()
        self.notifier.close(timeout=2.0)  # let on_release hooks run, bounded
        if self._announcer is not None:
            self._announcer.close()
        if self._place is not None:
            self._place.close()
        if self._net is not None:
            self._net.close()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    # -- introspection (tests, future status CLI) ----------------------------------------

    def holding(self) -> Iterator[str]:
        return (name for name, e in self.elections.items() if e.state is State.HOLDER)


__all__ = ["Agent", "AgentError", "Holder"]

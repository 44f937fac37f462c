"""The agent's loop: facts in from threads and the kernel, actions out to etcd and the kernel.

Threads only *report* (keepalive answers, watch events, health changes, signals) into one
queue. Each turn of the loop drains that queue into the pure :class:`~haagent.agent.core.Core`,
lets it look at the clock (the lease deadline), and carries out *one* action it queued,
feeding the result back as a fact. So a keepalive answer or a passed deadline is seen between
any two actions, however many VIPs a host takes over, and no action runs inside another.

Blocking calls here are etcd RPCs bounded by ``etcd.timeout``, which config validation keeps
below ``lease.margin``: the loop can be late for the deadline by at most one RPC, and the
margin absorbs it before etcd could expire the lease.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import queue
import signal
import socket
import threading
import time
from collections.abc import Mapping
from ipaddress import IPv4Address, IPv6Address
from pathlib import Path
from types import FrameType

from haagent import __version__, caps
from haagent.agent.core import (
    Action,
    CheckLease,
    ConfirmRelease,
    Core,
    Notify,
    Probe,
    PublishMember,
    PurgeKey,
    Refresh,
    Regrant,
    Reread,
    TellFence,
)
from haagent.agent.events import Event, Reload, StatusRequest, Stop
from haagent.agent.fast import FastFailover, probe_vip
from haagent.agent.status import AgentStatus
from haagent.agent.timers import Timers
from haagent.agent.witness import (
    DropSuspicion,
    LivenessFacts,
    Refute,
    RevokeLease,
    WriteSuspicion,
    WriteVerdict,
)
from haagent.cluster.schema import Holder, Keys, MemberRecord, Released
from haagent.cluster.view import (
    Change,
    DrainChange,
    HolderChange,
    MemberChange,
    ReleasedChange,
    RequestChange,
    SuspicionChange,
    VerdictChange,
)
from haagent.config import Config, ConfigErrors, VipConfig, check_host, load_config
from haagent.decide import reload, startup
from haagent.decide.election import Bind, Campaign, Resign, State, Unbind
from haagent.fence.client import FenceClient
from haagent.fence.setup import setup_message
from haagent.health.events import VipHealthChanged
from haagent.health.monitor import HealthMonitor
from haagent.health.notify import Notifier
from haagent.liveness.key import KeyProblem
from haagent.logs import fields
from haagent.metrics import Metrics
from haagent.net.addresses import LIFETIME_FOREVER, AddressManager, NetError, RefreshError
from haagent.net.announce import Announcer
from haagent.net.linkwatch import LinkChanged, LinkWatcher
from haagent.net.placement import Placement, foreign_problem
from haagent.store import ETCD_ERRORS, STORE_ERRORS, LeaseKeeper, Store, StoreError, describe_error
from haagent.store.client import CAMPAIGN_BATCH, NodeNameTaken
from haagent.store.events import (
    KeepaliveAcked,
    KeepaliveFailed,
    LeaseGone,
    Sink,
    ViewLoaded,
    WatchBroken,
    WatchResumed,
)

log = logging.getLogger("haagent.agent")

DEFAULT_STATE_DIR = Path("/run/haagent")
# Watch changes, decided on together: one view update per batch.
CHANGES = (
    HolderChange,
    MemberChange,
    RequestChange,
    ReleasedChange,
    DrainChange,
    SuspicionChange,
    VerdictChange,
)
IDLE_WAKE = 1.0  # seconds: the loop looks at the clock at least this often
# Seconds between keepalives while the lease is in doubt (its deadline passed without a newer
# acknowledged one): etcd's first answer after a partition heals reaches the core within this,
# not within the keeper's lease.interval.
REJOIN_PROBE = 0.1


class _LeaseProbe:
    """While the lease is in doubt: a keepalive every :data:`REJOIN_PROBE` s until etcd answers.

    The answer (``KeepaliveAcked``, or ``LeaseGone`` once etcd expired the lease) is reported
    like the keeper's, and the probe ends; failures are the keeper's to report and log. While
    etcd is unreachable an attempt fails inside this process (the gRPC channel is down; its own
    reconnect attempts are what reach the network), so probing costs etcd nothing.
    """

    def __init__(self, store: Store, lease_id: int, sink: Sink) -> None:
        self.store = store
        self.lease_id = lease_id
        self.sink = sink
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="haagent-lease-probe", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, wait: float = 0.0) -> None:
        """Stop; wait up to ``wait`` s for an RPC under way (an answer it still brings is a
        true fact about this lease, so leaving it to finish on its own is harmless)."""
        self._stop.set()
        if wait > 0:
            self._thread.join(timeout=wait)

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                ttl, sent = self.store.keepalive(self.lease_id)
            except STORE_ERRORS:
                pass
            else:
                if ttl <= 0:
                    self.sink(LeaseGone(self.lease_id, "etcd says the lease no longer exists"))
                else:
                    self.sink(KeepaliveAcked(self.lease_id, sent, ttl))
                return
            self._stop.wait(max(0.0, REJOIN_PROBE - (time.monotonic() - started)))


class AgentError(Exception):
    pass


class _StopRequested(Exception):
    pass


class Agent:
    def __init__(
        self, cfg: Config, *, state_dir: Path = DEFAULT_STATE_DIR, log_level: str | None = None
    ) -> None:
        self.cfg = cfg
        self._log_level = log_level  # set on the command line: a reload keeps it
        self.node = cfg.node
        self.keys = Keys(cfg.cluster)
        self.state_dir = state_dir
        self.store = Store(cfg.etcd, self.keys)
        self.core = Core(cfg)
        self.vips = {v.name: v for v in cfg.vips}
        self._vip_ips = frozenset(ip for v in cfg.vips for ip in v.ips)
        # SimpleQueue: its put() may be called from a signal handler (SIGHUP, SIGTERM) that
        # interrupts the loop's own get(), where a Queue's lock would deadlock.
        self.events: queue.SimpleQueue[Event] = queue.SimpleQueue()
        self.started = time.time()
        self._timers = Timers()  # the loop's own: announcement schedules
        self._keeper: LeaseKeeper | None = None
        self._lease_probe: _LeaseProbe | None = None
        self._net: AddressManager | None = None
        self._place: Placement | None = None
        self._announcer: Announcer | None = None
        self._links: LinkWatcher | None = None
        self._fence = FenceClient(setup_message(cfg.cluster, cfg.etcd))
        self.metrics = Metrics()
        self.metrics.set_info(cfg.node, cfg.cluster, __version__, cfg.digest)
        self.metrics.fence(lambda: self._fence.running, lambda: self._fence.guarded)
        self._campaign_sent: dict[str, float] = {}  # vip -> monotonic time of its campaign
        self.health = HealthMonitor(cfg, self._post_health, observer=self.metrics.check_result)
        self.notifier = Notifier(self.node)
        self._stop_requested = threading.Event()
        self._lock_sock: socket.socket | None = None
        self.fast = FastFailover(
            cfg, self.core, self.store, self.events.put, self._protection_moved, self.metrics
        )

    # -- lifecycle -----------------------------------------------------------------------

    def run(self) -> int:
        previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        signal.signal(signal.SIGHUP, self._on_sighup)
        try:
            if (problem := caps.check()) is not None:
                raise AgentError(problem)
            self._lock()
            self._serve_metrics()
            self._net = AddressManager()
            self._place = Placement(self._net)
            self._refuse_foreign()
            try:
                self._fence.start()
            except OSError as exc:
                raise AgentError(f"cannot start the fence process: {exc}") from None
            self._announcer = Announcer()
            self._announcer.prepare({v.interface for v in self.vips.values()})
            try:
                self._links = LinkWatcher(
                    {v.interface for v in self.vips.values()}, self.events.put
                )
            except OSError as exc:
                raise AgentError(f"cannot watch the interfaces' link state: {exc}") from None
            now = time.monotonic()
            for ifname, up in self._links.initial().items():
                if not up:
                    self.core.link_changed(ifname, False, f"{ifname} has no carrier", now)
            self._links.start()
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
            self.metrics.close()
            for s, h in previous.items():
                signal.signal(s, h)

    def _serve_metrics(self) -> None:
        listen = self.cfg.metrics.listen
        if listen is None:
            return
        try:
            self.metrics.serve(*listen)
        except OSError as exc:
            raise AgentError(
                f"cannot serve metrics on {self.cfg.metrics.url}: {exc.strerror or exc}; "
                "choose another metrics.listen (an address of this host, a free port)"
            ) from None
        log.info("metrics at %s", self.cfg.metrics.url)

    def _etcd_error(self, exc: BaseException) -> str:
        """Count a failed etcd call by kind; its description for the log line."""
        self.metrics.etcd_errors.labels(type(exc).__name__).inc()
        return describe_error(exc)

    def _refuse_foreign(self) -> None:
        """Refuse to start with a VIP this host has configured outside haagent (issue: a VIP
        equal to the host's own address): its release would cut the host off."""
        try:
            found = self.place.foreign(self.vips.values())
        except NetError as exc:
            raise AgentError(f"cannot list this host's addresses: {exc}") from None
        if found:
            raise AgentError(
                "; ".join(foreign_problem(n, self.vips[n], w) for n, w in found.items())
            )

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        # Never raise from here: the signal can land anywhere, even inside an import. Start-up
        # checks the flag between steps; the loop sees the Stop event.
        self._stop_requested.set()
        self.events.put(Stop(signal.Signals(signum).name))

    def _check_stop(self) -> None:
        if self._stop_requested.is_set():
            raise _StopRequested()

    def _on_sighup(self, _signum: int, _frame: FrameType | None) -> None:
        self.events.put(Reload("SIGHUP"))

    def _lock(self) -> None:
        """One agent per (cluster, node) on this host, whatever its state directory.

        An abstract unix socket name is the lock: the kernel frees it when the process dies,
        it needs no file, and it is per network namespace, which is what "this host" means to
        the addresses we bind. A second agent would otherwise remove the first one's VIPs as
        stale at its start-up, or share its lease.
        """
        name = f"\0haagent/{self.cfg.cluster}/{self.node}"
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(name)
        except OSError as exc:
            sock.close()
            if exc.errno == errno.EADDRINUSE:
                raise AgentError(
                    f"another haagent already runs for cluster {self.cfg.cluster!r} node "
                    f"{self.node!r} on this host; stop it first (one agent per host)"
                ) from None
            raise AgentError(f"cannot take the per-host agent lock: {exc.strerror}") from None
        self._lock_sock = sock
        try:
            self.state_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise AgentError(
                f"cannot create the state directory {self.state_dir}: {exc.strerror}; "
                "create it or pass --state-dir"
            ) from None

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
        try:
            # Before the member record is first written: it says whether we take part.
            self.fast.start()
        except (KeyProblem, OSError) as exc:
            raise AgentError(str(exc)) from None
        self._connect()
        self._check_stop()
        try:
            view = self.store.snapshot()
            lease_id, ttl, sent, adopted = self._adopt_or_grant(view.members.get(self.node))
            # Claim the node name before touching any address: a second host configured with
            # our name must stop here, not remove our VIPs as stale.
            self.core.clock.acknowledged(lease_id, sent, ttl)
            self._publish_member(claim=True)
        except NodeNameTaken as exc:
            raise AgentError(str(exc)) from None
        except ETCD_ERRORS as exc:
            raise AgentError(
                f"etcd stopped answering during start-up ({self._etcd_error(exc)}); "
                "the service manager should start haagent again"
            ) from None
        self._reconcile_addresses(view.holders, lease_id)
        try:
            self._lease_file.write_text(f"{lease_id:x}\n")
        except OSError as exc:
            raise AgentError(
                f"cannot write {self._lease_file}: {exc.strerror}; free space in "
                f"{self.state_dir} or pass another --state-dir"
            ) from None
        reason = "own key found on adopted lease" if adopted else "lease granted"
        self.core.start(view, lease_id, sent, ttl, reason, time.monotonic())
        self._keeper = LeaseKeeper(self.store, lease_id, self.cfg.lease.interval, self.events.put)
        self._keeper.start()
        self.fast.sync(self._keeper)
        self.store.start_watch(view.revision + 1, self.events.put)

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
                log.info(
                    "removed stale address of vip %s (%s): %s",
                    name,
                    vip.addresses_text,
                    reason,
                    extra=fields("stale-removed", name, reason),
                )
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

    def _adopt_or_grant(self, member: MemberRecord | None) -> tuple[int, int, float, bool]:
        """(lease id, ttl, send time, adopted): the previous run's lease if etcd still renews
        it (see decide.startup.adopt_lease), else a new one."""
        previous = self._previous_lease()
        if previous is not None and startup.adopt_lease(previous, member).yes:
            try:
                ttl, sent = self.store.keepalive(previous)
            except STORE_ERRORS as exc:
                log.info("previous lease %x not renewable (%s)", previous, self._etcd_error(exc))
            else:
                if ttl > 0:
                    log.info("adopted lease %x of the previous run (ttl %ds)", previous, ttl)
                    return previous, ttl, sent, True
        lease_id, ttl, sent = self.store.grant(self.cfg.lease.ttl)
        log.info("granted lease %x (ttl %ds)", lease_id, ttl)
        return lease_id, ttl, sent, False

    def _reconcile_addresses(self, holders: Mapping[str, Holder], lease_id: int) -> None:
        """Remove VIP addresses left bound by an earlier run unless etcd says they are ours.

        A VIP counts as placed when any of its addresses is (Placement.placed): it is kept or
        removed as a whole. One kept with an address missing gets it back from the Bind its
        election answers with (place() is idempotent).
        """
        placed = self.place.placed(self.vips.values())
        for name, vip in self.vips.items():
            if name not in placed:
                if vip.vmac:
                    self.place.remove(vip)  # a vmac link left without its address
                continue
            d = startup.keep_bound_address(holders.get(name), self.node, lease_id)
            if d.yes:
                self.core.placed(name)
                self._tell_fence(add=vip)
                log.info(
                    "kept address of vip %s (%s): %s",
                    name,
                    vip.addresses_text,
                    d.reason,
                    extra=fields("stale-kept", name, d.reason),
                )
                continue
            self.place.remove(vip)
            log.info(
                "removed stale address of vip %s (%s): %s",
                name,
                vip.addresses_text,
                d.reason,
                extra=fields("stale-removed", name, d.reason),
            )

    # -- the loop ------------------------------------------------------------------------

    def _loop(self) -> None:
        core = self.core
        while True:
            self.fast.sync(self._keeper)
            now = time.monotonic()
            core.tick(now)
            waits = [IDLE_WAKE]
            if (w := core.next_wake(now)) is not None:
                waits.append(w)
            if (t := self._timers.next_at()) is not None:
                waits.append(t - now)
            batch = self._drain(max(0.0, min(waits)))
            if self._handle(batch):
                return
            self.fast.sync(self._keeper)
            now = time.monotonic()
            core.tick(now)
            for fn in self._timers.pop_due(now):
                fn()
            action = core.next_action()
            if action is not None:
                self._execute(action)
            self._after_step()

    def _drain(self, timeout: float) -> list[Event]:
        """Everything queued; waits up to ``timeout`` for the first event."""
        try:
            batch = [self.events.get(timeout=timeout)] if timeout > 0 else []
        except queue.Empty:
            return []
        while True:
            try:
                batch.append(self.events.get_nowait())
            except queue.Empty:
                return batch

    def _handle(self, batch: list[Event]) -> bool:
        """Feed a batch of events to the core; True when one of them says stop."""
        changes: list[Change] = []
        now = time.monotonic()
        for ev in batch:
            if isinstance(ev, CHANGES):
                changes.append(ev)  # decided on together: one view update for the batch
                continue
            if changes:
                self.core.apply(changes, now)
                changes = []
            match ev:
                case Stop(reason=reason):
                    log.info("stopping: %s", reason)
                    return True
                case ViewLoaded(view=view):
                    self.core.view_loaded(view, now)
                case KeepaliveAcked(lease_id=lease_id, sent_at=sent, ttl=ttl):
                    acked = time.monotonic()
                    self.metrics.keepalive.observe(max(0.0, acked - sent))
                    self.core.keepalive_acked(lease_id, sent, ttl, acked)
                case LeaseGone(lease_id=lease_id, reason=reason):
                    self.core.lease_gone(lease_id, reason, now)
                case VipHealthChanged(vip=vip, healthy=healthy, reason=reason):
                    self.core.health_changed(vip, healthy, reason, now)
                case LinkChanged(ifname=ifname, up=up, reason=reason):
                    self.core.link_changed(ifname, up, reason, now)
                case LivenessFacts():
                    self.core.liveness_changed(ev, now)
                case StatusRequest(reply=reply):
                    reply.put(self.core.status(now))
                case Reload(reason=reason):
                    self._reload(reason, now)
                case KeepaliveFailed(kind=kind):
                    # The keeper logs; the deadline decides. Counted with the loop's own.
                    self.metrics.etcd_errors.labels(kind or "keepalive").inc()
                case WatchBroken() | WatchResumed():
                    pass  # the store logs; the deadline decides
        if changes:
            self.core.apply(changes, now)
        return False

    def _after_step(self) -> None:
        core = self.core
        self._probe_while_in_doubt()
        for vip, state in core.take_state_changes().items():
            self.health.set_state(vip, state.value)  # exec checks: HAAGENT_STATE / _HOLDING
            if (rt := core.vips.get(vip)) is not None:
                self.metrics.eligible.labels(vip).set(int(rt.election.eligible))
        self.metrics.set_deadline(core.clock.deadline if core.lease_ok else None)
        if core.retiring:
            self._retired(core.take_retired(time.monotonic()))
        if self._place is not None and not self.core.busy:
            try:  # links of released vmac VIPs, once their keys are handed over
                self._place.tidy()
            except NetError as exc:
                log.error("cannot delete a released vmac link: %s", exc)

    def _probe_while_in_doubt(self) -> None:
        """Run a :class:`_LeaseProbe` while the lease's deadline has passed without proof.

        The keeper asks once per ``lease.interval``; after a partition heals that alone cost up
        to an interval before the core learned that its lease expired (and took a new one) or
        is alive. A probe that answered is kept until the doubt ends: it is not restarted for
        the same lease (the keeper goes on asking).
        """
        clock = self.core.clock
        lease_id = clock.lease_id
        in_doubt = self._keeper is not None and not clock.valid(time.monotonic())
        probe = self._lease_probe
        if probe is not None and (not in_doubt or probe.lease_id != lease_id):
            probe.stop()
            self._lease_probe = None
        if in_doubt and lease_id is not None and self._lease_probe is None:
            self._lease_probe = _LeaseProbe(self.store, lease_id, self.events.put)
            self._lease_probe.start()

    # -- reload --------------------------------------------------------------------------

    def _reload(self, why: str, now: float) -> None:
        before = self.cfg
        self._apply_reload(why, now)
        self.metrics.reloads.labels("refused" if self.cfg is before else "applied").inc()

    def _apply_reload(self, why: str, now: float) -> None:
        """Re-read the config file (SIGHUP): apply it without a gap, or refuse it whole.

        decide.reload says what happens to each VIP. A refused file changes nothing: the
        old config stays in force, and the member record's digest still names it.
        """
        path = self.cfg.source
        if path is None:
            log.error("reload refused (%s): the config in force was not read from a file", why)
            return
        refused = f"the configuration in force stays (digest {self.cfg.digest})"
        try:
            new = load_config(path)
        except ConfigErrors as exc:
            for err in exc.errors:
                log.error("reload refused: %s", err)
            log.error(
                "reload refused (%s): %d error(s) in %s; %s", why, len(exc.errors), path, refused
            )
            return
        if problems := check_host(new):
            for err in problems:
                log.error("reload refused: %s", err)
            log.error("reload refused (%s): %s does not fit this host; %s", why, path, refused)
            return
        if restart := reload.needs_restart(self.cfg, new):
            log.error(
                "reload refused (%s): %s changed, which only a restart applies "
                "(systemctl restart haagent); %s",
                why,
                ", ".join(restart),
                refused,
            )
            return
        diff = reload.diff_vips(self.cfg.vips, new.vips)
        self.cfg = new
        self.metrics.set_info(new.node, new.cluster, __version__, new.digest)
        if self._log_level is None:
            logging.getLogger().setLevel(new.log_level.upper())
        configs = {v.name: v for v in new.vips}
        for name in diff.added + diff.updated:
            if name not in self.core.retiring:  # a retiring VIP keeps its old config
                self.vips[name] = configs[name]
        self._vip_ips = self._known_ips()
        self.core.reload(new, diff, now)
        self.health.reload(new)
        interfaces = {v.interface for v in new.vips}
        if self._announcer is not None:
            self._announcer.prepare(interfaces)
        if self._links is not None:
            for ifname, up in self._links.watch(interfaces).items():
                if not up:
                    self.core.link_changed(ifname, False, f"{ifname} has no carrier", now)
        log.info(
            "reloaded config %s (%s; digest %s): %s",
            path,
            why,
            new.digest,
            diff.summary(),
            extra=fields("reloaded", reason=why),
        )

    def _retired(self, done: list[tuple[VipConfig, VipConfig | None]]) -> None:
        for old, new in done:
            if new is None:
                del self.vips[old.name]
                self.metrics.forget_vip(old.name)
                log.info(
                    "vip %s released and dropped: a reload removed it",
                    old.name,
                    extra=fields("dropped", old.name, "removed from the config"),
                )
            else:
                self.vips[old.name] = new
                log.info(
                    "vip %s released at %s on %s; elected anew at %s on %s",
                    old.name,
                    old.addresses_text,
                    old.interface,
                    new.addresses_text,
                    new.interface,
                    extra=fields("moved", old.name, "address or interface changed by a reload"),
                )
        self._vip_ips = self._known_ips()

    def _known_ips(self) -> frozenset[IPv4Address | IPv6Address]:
        """Every VIP address of the config in force and of VIPs still being released: none of
        them is the node's own address (``_node_address``)."""
        return frozenset(ip for v in (*self.cfg.vips, *self.vips.values()) for ip in v.ips)

    # -- actions -------------------------------------------------------------------------

    def _execute(self, action: Action) -> None:
        match action:
            case Unbind():
                self._unbind(action)
            case Resign():
                self._resign(action)
            case Campaign():
                self._campaign(action)
            case Bind():
                self._bind(action)
            case Refresh():
                self._refresh()
            case TellFence():
                self._tell_fence()
            case PublishMember():
                self._publish_member()
            case PurgeKey():
                self._purge(action)
            case CheckLease(vip=vip, lease=lease):
                self._check_lease(vip, lease)
            case ConfirmRelease(vip=vip, create_revision=rev):
                self._confirm_release(vip, rev)
            case Notify(kind=kind, vip=vip, reason=reason):
                self.notifier.fire(kind, self.vips[vip], reason)
            case Regrant():
                self._regrant()
            case Reread(reason=reason):
                self._reread(reason)
            case (
                WriteSuspicion()
                | DropSuspicion()
                | WriteVerdict()
                | RevokeLease()
                | Refute()
                | Probe()
            ):
                self.fast.execute(action, self._probe)

    def _probe(self, vip: VipConfig) -> str | None:
        # Out of the VIP's own interface, also for a vmac VIP: the old holder answers there.
        return probe_vip(vip.interface, list(vip.ips))

    def _campaign(self, first: Campaign) -> None:
        """``first`` and the campaigns queued right behind it, in one transaction."""
        lease_id = self.core.clock.lease_id
        assert lease_id is not None  # the core drops campaigns without a valid lease
        batch = [first, *self.core.more_campaigns(CAMPAIGN_BATCH - 1)]
        since = time.time()
        sent = time.monotonic()
        for c in batch:
            self._campaign_sent[c.vip] = sent
        records = [
            (c.vip, Holder(self.node, lease_id, since=since, epoch=c.epoch, reason=c.reason))
            for c in batch
        ]
        try:
            results = self.store.campaign(records)
        except ETCD_ERRORS as exc:
            why = self._etcd_error(exc)
            names = ", ".join(c.vip for c in batch[:5])
            if len(batch) > 5:
                names += f" and {len(batch) - 5} more"
            log.warning("campaign for vip %s got no answer (%s); retrying", names, why)
            for c in batch:
                self.core.campaign_failed(c.vip, why, time.monotonic())
            return
        if any(won for won, _, _ in results):
            # A key put on our lease: etcd still had the lease after ``sent``.
            self.core.lease_proven(lease_id, sent)
        for c, (won, holder, rev) in zip(batch, results, strict=True):
            self.core.campaign_done(c.vip, won, holder, rev)

    def _bind(self, action: Bind) -> None:
        vip = self.vips[action.vip]
        # The fence learns of the addresses before they exist: if we die right after binding,
        # it still knows what to remove.
        self._tell_fence(add=vip)
        try:
            self.place.place(vip, self._lifetime())
        except NetError as exc:
            log.error(
                "cannot bind vip %s (%s on %s): %s",
                vip.name,
                vip.addresses_text,
                vip.interface,
                exc,
            )
            # All or nothing: the addresses bound before the failing one go at once, not
            # with the release that follows, so the VIP is never answered in part.
            try:
                self.place.remove(vip, link_later=True)
            except NetError as undo:
                log.error("cannot remove what was bound of vip %s: %s", vip.name, undo)
            else:
                self._tell_fence(remove=vip)
            self.core.bind_failed(vip.name, time.monotonic())
            return
        self.core.placed(vip.name)
        # Announce before anything else (every address, all of them bound by now): clients
        # and switches move on the first one.
        self._announce(vip, vip.announce.count)
        if (sent := self._campaign_sent.pop(vip.name, None)) is not None:
            self.metrics.takeover.observe(time.monotonic() - sent)
        self.metrics.held.labels(vip.name).set(1)
        self.metrics.transition(vip.name, "acquired", action.reason)
        holder = self.core.vips[vip.name].election.holder
        epoch = f", epoch {holder.epoch}" if holder else ""
        self.notifier.fire("acquire", vip, action.reason)
        log.info(
            "acquired vip %s (%s%s): %s",
            vip.name,
            self.place.shown(vip),
            epoch,
            action.reason,
            extra=fields("acquired", vip.name, action.reason),
        )

    def _unbind(self, action: Unbind) -> None:
        vip = self.vips[action.vip]
        self._timers.cancel(f"announce:{vip.name}")
        removed = True
        was_bound = vip.name in self.core.bound
        try:
            # Our own bind, seen to succeed: no need to look at the mark before deleting.
            removed = self.place.remove(vip, link_later=True, verify=not was_bound)
        except NetError as exc:
            log.error(
                "cannot unbind vip %s (%s on %s): %s",
                vip.name,
                vip.addresses_text,
                vip.interface,
                exc,
            )
        self.core.removed(vip.name)
        self._tell_fence(remove=vip)
        self.metrics.held.labels(vip.name).set(0)
        if not was_bound:
            log.info(
                "gave up vip %s before binding it: %s",
                vip.name,
                action.reason,
                extra=fields("gave-up", vip.name, action.reason),
            )
            return
        log.info(
            "released vip %s (%s): %s%s",
            vip.name,
            self.place.shown(vip),
            action.reason,
            ""
            if removed or not vip.bind or self.core.stopping  # shutdown removed it first
            else " (the address was gone already: its kernel lifetime ran out, or the fence or "
            "someone else removed it)",
            extra=fields("released", vip.name, action.reason),
        )
        self.notifier.fire("release", vip, action.reason)
        self.metrics.transition(vip.name, "released", action.reason)

    def _resign(self, action: Resign) -> None:
        lease = self.core.clock.lease_id or 0
        released = Released(
            self.node,
            action.create_revision,
            time.time(),
            reason=action.reason,
            earlier=self.core.release_chain(action.vip),
        )
        try:
            done = self.store.resign(action.vip, action.create_revision, released, lease)
        except ETCD_ERRORS as exc:
            log.warning("cannot resign vip %s (%s); retrying", action.vip, self._etcd_error(exc))
            self.core.resign_failed(action, time.monotonic())
            return
        log.info(
            "resigned vip %s in etcd: %s%s",
            action.vip,
            action.reason,
            "" if done else " (key already gone)",
            extra=fields("resigned", action.vip, action.reason),
        )

    def _check_lease(self, vip: str, lease: int) -> None:
        try:
            alive: bool | None = self.store.lease_alive(lease)
        except ETCD_ERRORS as exc:
            log.warning(
                "cannot ask etcd about lease %x for vip %s: %s", lease, vip, self._etcd_error(exc)
            )
            alive = None
        self.core.lease_checked(vip, lease, alive, time.monotonic())

    def _confirm_release(self, vip: str, create_revision: int) -> None:
        lease = self.core.clock.lease_id
        if lease is None:
            return  # no lease to write on; the next holder waits for our lease to end
        try:
            self.store.confirm_release(
                vip,
                Released(
                    self.node,
                    create_revision,
                    time.time(),
                    reason="key taken by another write",
                    earlier=self.core.release_chain(vip),
                ),
                lease,
            )
        except ETCD_ERRORS as exc:
            log.warning(
                "cannot confirm the release of vip %s (%s); the next holder waits for this "
                "node's lease instead",
                vip,
                self._etcd_error(exc),
            )
            return
        log.info("confirmed in etcd that vip %s is no longer bound here", vip)

    def _purge(self, action: PurgeKey) -> None:
        try:
            done = self.store.resign(action.vip, action.create_revision)
        except ETCD_ERRORS as exc:
            log.warning(
                "cannot delete invalid holder key of vip %s: %s", action.vip, self._etcd_error(exc)
            )
            return
        log.warning(
            "deleted invalid holder key of vip %s (%s, created at revision %d)%s",
            action.vip,
            action.reason,
            action.create_revision,
            "" if done else ": already gone",
            extra=fields("purged", action.vip, action.reason),
        )

    @property
    def _keep_slack(self) -> float:
        """Seconds the kernel lifetime and the fence deadline outlast the lease deadline.

        Under ``lease.when_etcd_unreachable: keep`` the agent decides to keep its VIPs at the
        deadline; an address lifetime or a fence deadline ending right there would remove them
        first (the kernel checks lifetimes on whole-second ticks). One TTL later is when etcd
        could have given the VIP to another host anyway, which this mode accepts.
        """
        return float(self.cfg.lease.ttl) if self.cfg.lease.when_etcd_unreachable == "keep" else 0.0

    def _lifetime(self) -> int | None:
        if self.core.outage_keep:
            return LIFETIME_FOREVER
        lifetime = self.core.clock.address_lifetime(time.monotonic())
        return None if lifetime is None else lifetime + int(self._keep_slack)

    def _tell_fence(self, *, add: VipConfig | None = None, remove: VipConfig | None = None) -> None:
        """The fence's deadline, lease and hold, and the addresses of the one VIP a bind adds
        or an unbind removes: O(1) per call however many VIPs are held (fence/client.py
        ``update``). The fence guards exactly what the loop has bound, told before each bind."""
        core = self.core
        self._fence.update(
            self._fence_deadline(),
            add=self.place.fenced(add) if add is not None else (),
            remove=self.place.fenced(remove) if remove is not None else (),
            hold=core.outage_keep,
            lease=core.clock.lease_id,
        )

    def _fence_deadline(self) -> float | None:
        """When the fence removes the addresses if the agent stays silent: the lease deadline
        or, with fast failover, the hold deadline (decide.quorum.hold_deadline)."""
        core = self.core
        if not core.lease_ok:
            return None
        if core.fast and not core.outage_keep:
            return core.hold_deadline()
        deadline = core.clock.deadline
        return None if deadline is None else deadline + self._keep_slack

    def _protection_moved(self, until: float) -> None:
        """From the heartbeat thread: a quorum's protection moved; the fence follows, so a
        frozen agent's addresses go at its hold deadline. Reads the core's scalars only."""
        core = self.core
        if not core.fast or not core.lease_ok:
            return
        core.protected_until = until
        self._fence.update(self._fence_deadline(), hold=core.outage_keep, lease=core.clock.lease_id)

    def _refresh(self) -> None:
        """A keepalive was acknowledged: push the new deadline to the fence and the kernel.

        One pass for every held VIP: an address dump per interface and one lifetime replace
        per VIP, however many are held (haagent/net/addresses.py).
        """
        self._tell_fence()
        if not self.core.lease_ok:
            return  # the deadline passed since this was queued: nothing is extended now
        lifetime = self._lifetime()
        if lifetime is None:
            return
        try:
            gone = self.place.refresh_all(self.core.bound_vips(), lifetime)
        except RefreshError as exc:
            log.error("cannot refresh every vip's address lifetime: %s", exc)
            gone = list(exc.missing)
        except NetError as exc:
            log.error("cannot refresh the vips' address lifetimes: %s", exc)
            return
        for vip in gone:
            # Some address of it went (not necessarily all): place() binds what is missing
            # and leaves the rest as it is. "vanished from" is what bench/ counts.
            log.error(
                "vip %s (%s) vanished from %s while held; binding it again",
                vip.name,
                vip.addresses_text,
                ", ".join(dict.fromkeys(ifname for ifname, _ in self.place.spots(vip))),
            )
            try:
                self.place.place(vip, lifetime)
            except NetError as exc:
                log.error("cannot bind vip %s (%s) again: %s", vip.name, vip.addresses_text, exc)

    def _publish_member(self, *, claim: bool = False) -> None:
        """Write our member record. ``claim``: at start-up, where errors must stop the start."""
        lease_id = self.core.clock.lease_id
        if lease_id is None:
            return
        # Imported here to keep this change inside this method (the VIPs' specs: docs/keys.md).
        from haagent.cluster.schema import VipSpec

        vip = next(iter(self.vips.values()), None)
        record = MemberRecord(
            node=self.node,
            address=self._node_address(vip) if vip else None,
            version=__version__,
            started=self.started,
            config_digest=self.cfg.digest,
            lease=lease_id,
            vips=tuple(self.vips),
            health=self.core.member_health(),
            vip_specs={name: VipSpec.of_config(v) for name, v in self.vips.items()},
        )
        record = self.core.member_record(record)
        try:
            self.store.put_member(record, lease_id)
        except NodeNameTaken as exc:
            if claim:
                raise
            log.error("cannot publish member record: %s", exc)
            return
        except ETCD_ERRORS as exc:
            if claim:
                raise
            log.warning("cannot publish member record: %s", self._etcd_error(exc))
            return
        self.core.member_written(time.monotonic(), record)

    def _node_address(self, vip: VipConfig) -> str | None:
        """The node's own address on the VIP's interface, of the VIP's first family that has
        one: what operators ssh to (never one of the VIPs, which this host may hold by the
        hundred)."""
        own = sorted(
            (
                ip
                for ip in self.net.bound_ips(vip.interface)
                if not ip.is_link_local and ip not in self._vip_ips
            ),
            key=str,
        )
        for family in vip.families:
            for ip in own:
                if ip.version == family:
                    return str(ip)
        return None

    def _regrant(self) -> None:
        if self._keeper is not None:
            self._keeper.stop()
            self._keeper = None
        try:
            lease_id, ttl, sent = self.store.grant(self.cfg.lease.ttl)
        except ETCD_ERRORS as exc:
            log.warning("cannot get a new lease (%s); retrying", self._etcd_error(exc))
            self.core.regrant_failed(time.monotonic())
            return
        with contextlib.suppress(OSError):
            self._lease_file.write_text(f"{lease_id:x}\n")
        self._keeper = LeaseKeeper(self.store, lease_id, self.cfg.lease.interval, self.events.put)
        self._keeper.start()
        self.core.lease_granted(lease_id, sent, ttl)

    def _reread(self, reason: str) -> None:
        """After a deadline miss the lease turned out alive: re-read etcd, then hold again."""
        try:
            view = self.store.snapshot()
        except ETCD_ERRORS as exc:
            log.warning("cannot re-read etcd after regaining the lease: %s", self._etcd_error(exc))
            return
        self.store.request_rewatch()
        self.core.reread_done(view, reason, time.monotonic())

    def _announce(self, vip: VipConfig, remaining: int) -> None:
        if self.core.vips[vip.name].state is not State.HOLDER or self._announcer is None:
            return
        key = f"announce:{vip.name}"
        if remaining > 0:
            # Every address of the VIP in each round: one failing does not silence the others.
            for ifname, address in self.place.spots(vip):
                try:
                    # Read each time (an ioctl, ~11 µs): a re-created interface has a new MAC.
                    self._announcer.announce(
                        ifname,
                        address.ip,
                        self.place.mac(vip, address),
                        arp_reply=vip.announce.arp_reply,
                    )
                    self.metrics.announcements.labels(vip.name).inc()
                except (OSError, NetError) as exc:
                    log.warning("announcement of %s for vip %s failed: %s", address, vip.name, exc)
            if remaining > 1:
                self._timers.set(
                    key,
                    time.monotonic() + vip.announce.interval,
                    lambda: self._announce(vip, remaining - 1),
                )
                return
        if vip.announce.refresh > 0:
            self._timers.set(
                key, time.monotonic() + vip.announce.refresh, lambda: self._announce(vip, 1)
            )

    @property
    def net(self) -> AddressManager:
        assert self._net is not None
        return self._net

    @property
    def place(self) -> Placement:
        assert self._place is not None
        return self._place

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
        self.fast.stop()  # no more fence updates from the heartbeat thread
        if self._place is not None:
            for vip in list(self.core.guarded()):
                with contextlib.suppress(NetError):
                    verify = vip.name not in self.core.bound  # a bind we did not see succeed
                    self._place.remove(vip, link_later=True, verify=verify)
        lease_id = self.core.clock.lease_id
        revoked = False
        if lease_id is not None and self.store.connected:
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
                    self._etcd_error(exc),
                    self.cfg.lease.ttl,
                )
        self.core.shutdown(revoked)
        # Bounded: after shutdown the core only releases (at most unbind + resign per VIP).
        for _ in range(4 * len(self.vips) + 8):
            action = self.core.next_action()
            if action is None:
                break
            if self._place is None and isinstance(action, Unbind | Bind | Refresh | TellFence):
                continue  # stopped before the network was opened: nothing can be bound
            with contextlib.suppress(Exception):
                self._execute(action)
        if self._place is not None:
            with contextlib.suppress(NetError):
                self._place.tidy()
        # Thread joins last: stopping the fence, the checks and the keeper.
        if self._links is not None:
            self._links.stop()
        self._fence.stop()
        self.health.stop()
        if self._lease_probe is not None:
            self._lease_probe.stop(wait=self.cfg.etcd.timeout + 1.0)
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
        if self._lock_sock is not None:
            self._lock_sock.close()
            self._lock_sock = None

    # -- introspection (tests, the status CLI and metrics) -------------------------------

    def status(self, timeout: float = 2.0) -> AgentStatus:
        """A snapshot built by the loop between two actions (call from another thread)."""
        reply: queue.SimpleQueue[object] = queue.SimpleQueue()
        self.events.put(StatusRequest(reply))
        got = reply.get(timeout=timeout)
        assert isinstance(got, AgentStatus)
        return got

    def _post_health(self, event: object) -> None:
        """Called from the monitor's threads: hand the event to the loop."""
        if isinstance(event, VipHealthChanged):
            self.events.put(event)


__all__ = ["Agent", "AgentError"]

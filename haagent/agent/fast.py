"""The loop's side of fast failover (docs/safety.md, "Fast failover"): starts the heartbeat
service, keeps it told who the peers are and what we are, hands its facts to the core, and
carries out the witness's etcd writes and the probe before a bind.

Kept out of ``loop.py`` so that the loop only calls :meth:`FastFailover.sync` once a turn and
:meth:`FastFailover.execute` for the actions that are fast failover's.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from haagent.agent.core import Core, Probe
from haagent.agent.witness import (
    DropSuspicion,
    LivenessFacts,
    Refute,
    RevokeLease,
    WitnessAction,
    WriteSuspicion,
    WriteVerdict,
)
from haagent.cluster.schema import Suspicion, Verdict
from haagent.config import Config
from haagent.liveness.key import load_key
from haagent.liveness.service import LivenessService, PeerAddress, SelfFacts
from haagent.store import ETCD_ERRORS, Store, describe_error

if TYPE_CHECKING:
    from ipaddress import IPv4Address, IPv6Address

    from haagent.config import VipConfig
    from haagent.metrics import Metrics
    from haagent.store.keeper import LeaseKeeper

log = logging.getLogger("haagent.liveness")

PROBE_TIMEOUT = 0.015  # seconds per probe round; two rounds
PROBE_TRIES = 2


class FastFailover:
    def __init__(
        self,
        cfg: Config,
        core: Core,
        store: Store,
        post: Callable[[LivenessFacts], None],
        on_protection: Callable[[float], None],
        metrics: Metrics | None = None,
    ) -> None:
        self.cfg = cfg
        self.core = core
        self.store = store
        self._post = post
        self._on_protection = on_protection
        self._metrics = metrics
        self.service: LivenessService | None = None
        self._peers_of: object = None  # the members mapping last told to the service
        self._self = SelfFacts()

    def start(self) -> None:
        """Start the service if fast failover is on; AgentError-worthy problems raise
        KeyProblem or OSError with one line."""
        key = load_key(self.cfg)
        if key is None:
            why = (
                "disabled (liveness.enabled: false)"
                if self.cfg.liveness.enabled is False
                else "lease.when_etcd_unreachable is keep"
                if self.cfg.lease.when_etcd_unreachable == "keep"
                else f"no key file {self.cfg.liveness.key_file}"
            )
            log.warning(
                "fast failover is off: %s; a dead holder costs up to the lease ttl (%ds)",
                why,
                self.cfg.lease.ttl,
            )
            return
        lv = self.cfg.liveness
        m = self._metrics
        self.service = LivenessService(
            lv,
            self.cfg.cluster,
            self.cfg.node,
            key,
            self._report,
            self._on_protection,
            on_packet=m.liveness_packet if m is not None else lambda _r: None,
        )
        if m is not None:
            m.liveness(self.service.summary)
        self.service.start()
        self.core.fast = True
        log.info(
            "fast failover on: heartbeats every %.0f ms on udp port %d, a peer is suspected "
            "after %.0f ms of silence, hold %.0f ms",
            lv.interval * 1000,
            lv.port,
            lv.detection * 1000,
            lv.hold * 1000,
        )

    def stop(self) -> None:
        if self.service is not None:
            self.service.stop()

    def _report(self, facts: LivenessFacts) -> None:
        self._post(facts)

    # -- once a turn ----------------------------------------------------------------------

    def sync(self, keeper: LeaseKeeper | None) -> None:
        """Before the core's tick: the freshest protection; after decisions: what our
        heartbeats say, who the peers are, whose promises may be given again, and the
        keepalive's pace."""
        svc = self.service
        if svc is None:
            return
        core = self.core
        core.protected_until = svc.protected_until()
        members = core.view.members
        if members is not self._peers_of:
            self._peers_of = members
            peers: dict[str, PeerAddress] = {}
            for node, m in members.items():
                if node != core.node and m.liveness and m.address:
                    peers[node] = PeerAddress(m.address, m.lease)
            svc.set_peers(peers, len(peers))
        me = SelfFacts(
            lease=core.clock.lease_id if core.lease_ok else None,
            last_ack=core.clock.last_ack,
            members=len(members),
            surrender=core.surrender_ask,
        )
        if me != self._self:
            self._self = me
            svc.set_self(me)
        if core.witness.cleared:
            svc.clear(set(core.witness.cleared))
            core.witness.cleared.clear()
        if keeper is not None:
            lv = self.cfg.liveness
            # Also while actions wait (a campaign about to be sent): a key won then must find a
            # keepalive answer younger than hold when it is bound.
            busy = bool(core.held or core.bound or core.busy)
            fast = busy and not core.vouched
            normal = min(self.cfg.lease.interval, lv.keepalive)
            keeper.set_interval(lv.fast_keepalive if fast else normal)

    # -- actions --------------------------------------------------------------------------

    def execute(
        self, action: WitnessAction | Probe, place_probe: Callable[[VipConfig], str | None]
    ) -> None:
        now = time.monotonic
        core = self.core
        lease = core.clock.lease_id
        match action:
            case WriteSuspicion(target=target, lease=target_lease):
                ok = lease is not None and self._try(
                    f"record the suspicion of {target}",
                    lambda: self.store.suspect(
                        Suspicion(target, core.node, target_lease), lease or 0
                    ),
                )
                if ok:
                    log.warning(
                        "suspect %s: no heartbeat for %.0f ms",
                        target,
                        self.cfg.liveness.detection * 1000,
                    )
                core.suspicion_written(target, ok, now())
            case DropSuspicion(target=target):
                ok = self._try(
                    f"delete the suspicion of {target}",
                    lambda: self.store.unsuspect(target, core.node),
                )
                if ok:
                    log.info("heard %s again: suspicion withdrawn", target)
                core.suspicion_dropped(target, ok, now())
            case WriteVerdict(evidence=ev):
                written = False
                if lease is not None:
                    holds = dict(core.witness.facts.holds)
                    verdict = Verdict(
                        ev.target,
                        ev.lease,
                        core.node,
                        tuple(b for b, _ in ev.suspecters),
                        hold=max(holds.get(ev.target, 0.0), self.cfg.liveness.hold),
                    )
                    try:
                        written = self.store.verdict(
                            verdict, lease, ev.suspecters, ev.verdict_revision
                        )
                    except ETCD_ERRORS as exc:
                        log.warning(
                            "cannot write the verdict on %s: %s", ev.target, describe_error(exc)
                        )
                if not written:
                    log.info(
                        "verdict on %s not written: a refute or another verdict came first",
                        ev.target,
                    )
                core.verdict_written(action, written)
            case RevokeLease(node=node, lease=target_lease, reason=reason):
                if self._try(
                    f"revoke lease {target_lease:x} of {node}",
                    lambda: self.store.revoke(target_lease),
                ):
                    log.warning("revoked lease %x of %s: %s", target_lease, node, reason)
            case Refute():
                answer: bool | None
                try:
                    answer = self.store.refute(
                        core.node, [b for b, _ in action.suspecters], action.verdict_revision
                    )
                except ETCD_ERRORS as exc:
                    log.warning(
                        "cannot refute the suspicions of this host: %s", describe_error(exc)
                    )
                    answer = None
                core.refute_done(action, answer, now())
            case Probe(vip=vip):
                rt = core.vips.get(vip)
                heard = None if rt is None else place_probe(rt.cfg)
                core.probe_done(vip, heard, now())

    def _try(self, what: str, call: Callable[[], object]) -> bool:
        try:
            call()
        except ETCD_ERRORS as exc:
            log.warning("cannot %s: %s", what, describe_error(exc))
            return False
        return True


def probe_vip(ifname: str, ips: list[IPv4Address | IPv6Address]) -> str | None:
    """Who still answers for these addresses on ``ifname`` (None: nobody), via net.inuse."""
    from haagent.net import inuse

    try:
        found = inuse.probe(ifname, ips, timeout=PROBE_TIMEOUT, tries=PROBE_TRIES)
    except OSError as exc:
        # Not knowing is not "nobody": the old holder's kernel may still answer. The probe is
        # repeated; the lease's own end (the kernel lifetime) bounds how long that matters.
        return f"the probe on {ifname} failed ({exc})"
    return None if found is None else f"{found.mac} still answers for {found.address}"

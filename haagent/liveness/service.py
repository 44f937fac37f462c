"""The heartbeat service: one UDP socket and one thread per agent (docs/safety.md, "Fast
failover").

Every ``liveness.interval`` it sends each live peer (the node address in its member record,
on ``liveness.port``) one authenticated heartbeat, and it reads what the peers send. It keeps
the :class:`~haagent.liveness.peers.Liveness` state under a lock and reports to the agent's
loop only when a fact the core decides on changes (a peer suspected or heard again, a
surrender, etcd reachable elsewhere or not): at 50 heartbeats a second from each of a few
peers, the loop is not woken for each. Two things are read directly, when needed: the time
until which a quorum vouches for us (:meth:`LivenessService.protected_until`), and, through
``on_protection``, every move of it, which the loop passes to the fence so that a frozen
agent's addresses go at its hold deadline, not its lease deadline.

etcd is never written from here.
"""

from __future__ import annotations

import contextlib
import logging
import math
import select
import socket
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from haagent.agent.witness import LivenessFacts
from haagent.config import MAX_CLOCK_DRIFT, LivenessConfig
from haagent.liveness import wire
from haagent.liveness.peers import Liveness

log = logging.getLogger("haagent.liveness")

RECV_BUFFER = 4096
PROTECTION_STEP = 0.005  # seconds a new protection must move before the fence is told


@dataclass(frozen=True)
class PeerAddress:
    address: str  # IP literal
    lease: int


@dataclass(frozen=True)
class SelfFacts:
    """What our heartbeats say of us, set by the loop."""

    lease: int | None = None
    last_ack: float | None = None  # monotonic send time of our last acknowledged keepalive
    members: int = 0
    surrender: int | None = None


class LivenessService:
    def __init__(
        self,
        cfg: LivenessConfig,
        cluster: str,
        node: str,
        key: bytes,
        report: Callable[[LivenessFacts], None],
        on_protection: Callable[[float], None] = lambda _until: None,
        on_packet: Callable[[str], None] = lambda _result: None,
    ) -> None:
        self.cfg = cfg
        self.cluster = cluster
        self.node = node
        self._key = key
        self._report = report
        self._on_protection = on_protection
        self._on_packet = on_packet  # "accepted" or why it was refused (a bounded set)
        self._lock = threading.Lock()
        self._state = Liveness(node, cfg.detection, MAX_CLOCK_DRIFT)
        self._peers: dict[str, PeerAddress] = {}
        self._self = SelfFacts()
        self._view_others = 0
        self._last_facts: LivenessFacts | None = None
        self._last_key: tuple[object, ...] | None = None
        self._last_protection = -math.inf
        self._stop = threading.Event()
        self._sock = self._open(cfg.port)
        self._thread = threading.Thread(target=self._run, name="haagent-liveness", daemon=True)
        self.sent = 0
        self.send_errors = 0

    @staticmethod
    def _open(port: int) -> socket.socket:
        sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        try:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            sock.bind(("::", port))
        except OSError as exc:
            sock.close()
            raise OSError(
                f"cannot listen for heartbeats on UDP port {port}: {exc.strerror or exc}; "
                "another process has it, or set liveness.port"
            ) from None
        sock.setblocking(False)
        return sock

    # -- the loop's side ----------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2.0)
        with contextlib.suppress(OSError):
            self._sock.close()

    def set_peers(self, peers: Mapping[str, PeerAddress], view_others: int) -> None:
        """The live members that take part (node -> address and lease), not us."""
        with self._lock:
            for node, old in self._peers.items():
                new = peers.get(node)
                if new is None or new.lease != old.lease:
                    self._state.forget(node)
            self._peers = dict(peers)
            self._view_others = view_others

    def set_self(self, facts: SelfFacts) -> None:
        with self._lock:
            self._self = facts

    def clear(self, nodes: set[str]) -> None:
        with self._lock:
            for node in nodes:
                self._state.clear(node)

    def protected_until(self) -> float:
        with self._lock:
            return self._protection(time.monotonic())

    def summary(self) -> tuple[int, int, bool]:
        """(peers heard lately, peers suspected, vouched for now), for the metrics."""
        with self._lock:
            now = time.monotonic()
            heard = len(self._state.heard_set(now))
            suspected = sum(
                1 for p in self._state.peers.values() if now - p.heard_at >= self.cfg.detection
            )
            vouched = self._protection(now) > now
        return heard, suspected, vouched

    def counters(self) -> dict[str, int]:
        with self._lock:
            out = {f"rejected: {why}": n for why, n in self._state.rejected.items()}
            out["accepted"] = self._state.accepted
            out["sent"] = self.sent
            return out

    # -- the thread ---------------------------------------------------------------------

    def _protection(self, now: float) -> float:
        return self._state.protected_until(self._state.others(self._view_others, now))

    def _run(self) -> None:
        # The facts are worked out once per heartbeat sent, not per packet received: a peer's
        # silence is judged to within one interval, and an idle agent wakes its loop and its
        # fence only when something changed (what the idle CPU measurement asked for).
        next_send = time.monotonic()
        while not self._stop.is_set():
            now = time.monotonic()
            if now >= next_send:
                self._send(now)
                self._publish(now)
                next_send = max(next_send + self.cfg.interval, now)
            timeout = max(0.0, min(next_send - time.monotonic(), self.cfg.interval))
            with contextlib.suppress(OSError, ValueError):
                ready, _, _ = select.select([self._sock], [], [], timeout)
                if ready and self._receive_all():
                    self._publish(time.monotonic())

    def _send(self, now: float) -> None:
        with self._lock:
            me = self._self
            if me.lease is None and me.surrender is None:
                return
            seq = self._state.sending(now)
            heard = self._state.heard_set(now)
            targets = [(p.address, self.cfg.port) for p in self._peers.values()]
            age = None if me.last_ack is None else round((now - me.last_ack) * 1000)
        hb = wire.Heartbeat(
            cluster=self.cluster,
            node=self.node,
            lease=me.lease if me.lease is not None else me.surrender or 1,
            seq=seq,
            etcd_age_ms=None if age is None or me.lease is None else min(age, wire.MAX_AGE_MS),
            members=me.members,
            heard=dict(list(heard.items())[: wire.MAX_HEARD]),
            surrender=me.surrender,
            detection_ms=round(self.cfg.detection * 1000),
            hold_ms=round(self.cfg.hold * 1000),
        )
        data = wire.encode(hb, self._key)
        for addr in targets:
            try:
                self._sock.sendto(data, addr if ":" in addr[0] else (f"::ffff:{addr[0]}", addr[1]))
                self.sent += 1
            except OSError:
                self.send_errors += 1  # no route while a link is down: silence is the signal

    def _receive_all(self) -> bool:
        """Read what is queued; True when a peer's news needs the facts now (a surrender,
        or a peer heard again after it was suspected)."""
        urgent = False
        for _ in range(256):  # bounded: a flood costs a bounded slice per turn
            try:
                data, _addr = self._sock.recvfrom(RECV_BUFFER)
            except (BlockingIOError, InterruptedError):
                return urgent
            except OSError:
                return urgent
            now = time.monotonic()
            try:
                hb = wire.decode(data, self._key, self.cluster)
            except wire.BadPacket as exc:
                with self._lock:
                    self._state.rejected[exc.kind] += 1
                self._on_packet(exc.kind)
                continue
            with self._lock:
                peer = self._peers.get(hb.node)
                why = self._state.receive(hb, now, None if peer is None else peer.lease)
                urgent = urgent or (
                    why is None and (hb.surrender is not None or hb.node in self._state.withheld)
                )
            self._on_packet(why or "accepted")
        return urgent

    def _vouched(self, facts: LivenessFacts, now: float) -> bool:
        return facts.protected_until > now + self.cfg.detection / 2

    def _publish(self, now: float) -> None:
        with self._lock:
            st = self._state
            suspected = frozenset(n for n in st.suspected(now) if n in self._peers)
            facts = LivenessFacts(
                suspected=suspected,
                withheld=frozenset(st.withheld),
                surrenders=tuple(sorted(st.surrenders().items())),
                claimed=tuple(sorted((p.node, p.members) for p in st.peers.values())),
                holds=tuple(sorted((p.node, p.hold) for p in st.peers.values())),
                etcd_elsewhere=tuple(st.etcd_reachable_elsewhere(now, self.cfg.etcd_loss)),
                protected_until=self._protection(now),
            )
        # What the core decides on: compared as computed now, not against a stale time.
        key = (
            facts.suspected,
            facts.withheld,
            facts.surrenders,
            bool(facts.etcd_elsewhere),
            facts.protected_until > now,
            self._vouched(facts, now),
        )
        changed = key != self._last_key
        if changed:
            self._last_key = key
            self._last_facts = facts
            self._report(facts)
        p = facts.protected_until
        if p < self._last_protection or p - self._last_protection >= PROTECTION_STEP:
            self._last_protection = p
            self._on_protection(p)

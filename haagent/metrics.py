"""The agent's Prometheus metrics (docs/metrics.md), served by prometheus-client.

The loop and the health threads only ever update metric objects (a lock and an addition
each); the HTTP server is prometheus-client's own, in its own daemon thread, and reads the
values when scraped. Nothing a scrape does can block or slow the loop. Gauges about the lease
are computed at scrape time from values the loop sets.

Label values are bounded: VIP names come from the config (at most its VIP count), check
names likewise, and reasons are reduced to a fixed set of causes (:func:`cause`), so a
free-text reason never becomes a time series.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

# Why a VIP changed hands, as a label: the first matching phrase of the reason decides.
CAUSES: tuple[tuple[str, str], ...] = (
    ("shutdown", "shutdown"),
    ("reload", "reload"),
    ("carrier", "link"),
    ("check ", "health"),
    ("health", "health"),
    ("unhealthy", "health"),
    ("hold-down", "hold-down"),
    ("lease", "lease"),
    ("deadline", "lease"),
    ("etcd", "etcd"),
    ("held by", "taken"),
    ("key now held", "taken"),
    ("holder key deleted", "taken"),
    ("key absent", "election"),
    ("campaign", "election"),
)

_LATENCY = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


def cause(reason: str) -> str:
    """The bounded label for a free-text reason ("other" when nothing matches)."""
    low = reason.lower()
    for phrase, label in CAUSES:
        if phrase in low:
            return label
    return "other"


class Metrics:
    """Every metric of one agent, on a registry of its own (tests make several per process)."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.info = Gauge(
            "haagent_agent_info",
            "Always 1; the labels say which agent and config",
            ["node", "cluster", "version", "config_digest"],
            registry=r,
        )
        self.held = Gauge(
            "haagent_vip_held",
            "1 while this node holds the VIP and has it bound",
            ["vip"],
            registry=r,
        )
        self.eligible = Gauge(
            "haagent_vip_eligible",
            "1 while this node may hold the VIP (healthy, no hold-down, link up)",
            ["vip"],
            registry=r,
        )
        self.transitions = Counter(
            "haagent_vip_transitions_total",
            "Acquisitions and releases of a VIP by this node, by cause",
            ["vip", "event", "cause"],
            registry=r,
        )
        self.takeover = Histogram(
            "haagent_takeover_seconds",
            "From sending the winning campaign to the address bound (handover wait included)",
            buckets=_LATENCY,
            registry=r,
        )
        self.keepalive = Histogram(
            "haagent_lease_keepalive_seconds",
            "Round trip of acknowledged lease keepalives",
            buckets=_LATENCY,
            registry=r,
        )
        self._deadline: float | None = None  # monotonic; set by the loop
        self._deadline_lock = threading.Lock()
        self.deadline_left = Gauge(
            "haagent_lease_deadline_seconds",
            "Seconds until this node must have let go of its VIPs unless etcd answers (0: past)",
            registry=r,
        )
        self.deadline_left.set_function(self._left)
        self.check_healthy = Gauge(
            "haagent_check_healthy", "1 healthy, 0 failing, -1 not yet known", ["check"], registry=r
        )
        self.check_duration = Histogram(
            "haagent_check_duration_seconds",
            "Duration of health check runs",
            ["check"],
            buckets=_LATENCY,
            registry=r,
        )
        self.check_runs = Counter(
            "haagent_check_runs_total",
            "Health check runs by result",
            ["check", "result"],
            registry=r,
        )
        self.etcd_errors = Counter(
            "haagent_etcd_errors_total", "Failed etcd calls by kind", ["kind"], registry=r
        )
        self.announcements = Counter(
            "haagent_announcements_total",
            "Gratuitous ARP / unsolicited neighbour advertisement bursts sent",
            ["vip"],
            registry=r,
        )
        self.fence_running = Gauge(
            "haagent_fence_running", "1 while the fence process is running", registry=r
        )
        self.fence_guarded = Gauge(
            "haagent_fence_guarded_addresses", "Addresses the fence would remove", registry=r
        )
        self.liveness_packets = Counter(
            "haagent_liveness_packets_total",
            "Heartbeats received: accepted, or why refused (bad mac, replayed or reordered, "
            "stale session, not a live member, malformed, ...)",
            ["result"],
            registry=r,
        )
        self.liveness_peers = Gauge(
            "haagent_liveness_peers",
            "Peers this node hears (heard) and suspects (suspected) right now",
            ["state"],
            registry=r,
        )
        self.liveness_vouched = Gauge(
            "haagent_liveness_vouched",
            "1 while a quorum of peers vouches for this node (fast failover); 0 otherwise",
            registry=r,
        )
        self.reloads = Counter(
            "haagent_config_reloads_total", "SIGHUP reloads by result", ["result"], registry=r
        )
        self._server: Any = None

    # -- the loop's updates ------------------------------------------------------------

    def set_info(self, node: str, cluster: str, version: str, digest: str) -> None:
        self.info.clear()
        self.info.labels(node, cluster, version, digest).set(1)

    def set_deadline(self, deadline: float | None) -> None:
        with self._deadline_lock:
            self._deadline = deadline

    def _left(self) -> float:
        with self._deadline_lock:
            deadline = self._deadline
        return 0.0 if deadline is None else max(0.0, deadline - time.monotonic())

    def transition(self, vip: str, event: str, reason: str) -> None:
        self.transitions.labels(vip, event, cause(reason)).inc()

    def check_result(self, check: str, healthy: bool | None, ok: bool, duration: float) -> None:
        self.check_healthy.labels(check).set(-1 if healthy is None else int(healthy))
        self.check_duration.labels(check).observe(duration)
        self.check_runs.labels(check, "pass" if ok else "fail").inc()

    def forget_vip(self, vip: str) -> None:
        """A reload dropped the VIP: its series go (Prometheus then marks them stale)."""
        for metric in (self.held, self.eligible, self.announcements):
            with contextlib.suppress(KeyError):
                metric.remove(vip)

    def fence(self, running: Callable[[], bool], guarded: Callable[[], int]) -> None:
        self.fence_running.set_function(lambda: float(running()))
        self.fence_guarded.set_function(lambda: float(guarded()))

    def liveness(self, summary: Callable[[], tuple[int, int, bool]]) -> None:
        self.liveness_peers.labels("heard").set_function(lambda: float(summary()[0]))
        self.liveness_peers.labels("suspected").set_function(lambda: float(summary()[1]))
        self.liveness_vouched.set_function(lambda: float(summary()[2]))

    def liveness_packet(self, result: str) -> None:
        self.liveness_packets.labels(result).inc()

    # -- the endpoint ------------------------------------------------------------------

    def serve(self, host: str, port: int) -> None:
        """Start the HTTP endpoint; OSError (address in use, not local) to the caller."""
        self._server, _thread = start_http_server(port, addr=host, registry=self.registry)

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

"""The agent's lease keepalive thread: reports every answer, decides nothing."""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING

from haagent.store.errors import STORE_ERRORS, describe_error
from haagent.store.events import KeepaliveAcked, KeepaliveFailed, LeaseGone, Sink

if TYPE_CHECKING:
    from haagent.store.client import Store

log = logging.getLogger("haagent.store")


class LeaseKeeper:
    """Sends a keepalive every ``interval`` seconds from its own thread and reports each outcome.

    It never decides anything: the agent turns ``KeepaliveAcked`` into a new deadline and acts
    when the deadline passes, whatever this thread is doing (a keepalive can hang up to the RPC
    timeout; it cannot hold the deadline back).
    """

    def __init__(self, store: Store, lease_id: int, interval: float, sink: Sink) -> None:
        self.store = store
        self.lease_id = lease_id
        self.interval = interval
        self.sink = sink
        self._stop = threading.Event()
        self._wake = threading.Event()  # a shorter interval takes effect at once
        self._thread = threading.Thread(target=self._run, name="haagent-keepalive", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def set_interval(self, interval: float) -> None:
        """Fast failover speeds keepalives up while no quorum of peers vouches for us."""
        if interval != self.interval:
            shorter = interval < self.interval
            self.interval = interval
            if shorter:
                self._wake.set()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=self.store.cfg.timeout + 1.0)

    def _run(self) -> None:
        failing = False
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                ttl, sent = self.store.keepalive(self.lease_id)
            except STORE_ERRORS as exc:
                if not failing:
                    log.warning(
                        "keepalive for lease %x failed: %s", self.lease_id, describe_error(exc)
                    )
                failing = True
                self.sink(KeepaliveFailed(self.lease_id, describe_error(exc), type(exc).__name__))
            else:
                if ttl <= 0:
                    self.sink(LeaseGone(self.lease_id, "etcd says the lease no longer exists"))
                    return
                if failing:
                    log.info("keepalive for lease %x answered again", self.lease_id)
                failing = False
                self.sink(KeepaliveAcked(self.lease_id, sent, ttl))
            while not self._stop.is_set():
                left = self.interval - (time.monotonic() - started)
                if left <= 0 or self._wake.wait(left):
                    break
            self._wake.clear()

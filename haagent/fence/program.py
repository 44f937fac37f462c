"""The fence: a tiny process that removes the agent's VIPs when the agent can no longer do it.

The agent starts it in a session of its own (so a SIGKILL of the agent's process group, or a
Ctrl-C, does not reach it) and writes one JSON line to its stdin whenever what it holds or its
lease deadline changes::

    {"setup": {"cluster": "db", "endpoints": [...], ...}}   # first: how to reach etcd
    {"deadline": 12345.678, "lease": 7587869, "addresses": [["eth0", "198.51.100.200/32"], ...]}
    {"deadline": null, "hold": true, "addresses": [...]}   # keep them, no deadline (see below)
    {"exit": true}                      # graceful stop: the agent already unbound everything

The deadline is on the system-wide monotonic clock, shared by both processes. The fence removes
every listed address

* the moment stdin reaches end-of-file without an ``exit`` (the agent died: SIGKILL, crash,
  OOM kill — the kernel closes the pipe), and
* when the deadline passes without a newer one (the agent is frozen — SIGSTOP, a stalled VM
  thread, a page-fault storm — and cannot act on its own deadline).

After removing them it **revokes the agent's lease** in etcd (when it knows the lease and etcd
answers). That deletes the dead agent's holder keys at once, so another host takes over within
milliseconds instead of waiting for etcd to expire the lease — the TTL plus up to 0.5 s of
etcd's expiry sweep. The order is the agent's own on a graceful stop: unbind, then revoke, so
the old address is gone before anyone can win the key. The revoke is best effort: a fence that
cannot reach etcd (the host is cut off too) leaves the lease to expire as before. After a
missed deadline the fence removes at once but revokes only if the agent then stays silent for
``etcd.timeout`` + 0.25 s: a live agent reports its own deadline within one RPC and may regain
its lease after an etcd pause (a leader election), which a revoke would turn into a failover.
A frozen agent whose keepalive thread still runs would otherwise keep the lease alive while
answering nobody; the late revoke hands its VIPs over.

``hold`` is sent only under ``lease.when_etcd_unreachable: keep``, while the agent deliberately
keeps its VIPs past the deadline; the pipe closing still removes them.

It ignores SIGTERM and SIGINT: a service manager that signals every process of the service at
once must not make it exit before the agent has handed its VIPs over; it leaves when the agent
closes the pipe. The third line of defence, for when both are killed, is the address lifetime
the agent sets on every bind (see ``haagent/lease.py``).
"""

from __future__ import annotations

import json
import logging
import os
import select
import signal
import sys
import threading
import time
from collections.abc import Iterable, Mapping
from typing import Any

from haagent.cluster.schema import Keys
from haagent.fence.setup import etcd_from_setup
from haagent.fence.state import Address, Fence
from haagent.logs import setup_logging
from haagent.net.addresses import AddressManager, NetError
from haagent.store.client import Store
from haagent.store.errors import STORE_ERRORS, StoreError, describe_error

log = logging.getLogger("haagent.fence")


class LeaseRevoker:
    """The fence's only etcd call: revoke the lease of an agent that can no longer hold it.

    It connects in the background as soon as the fence knows etcd, so that an agent's death
    costs one RPC, not a connection set-up, before the other hosts see its keys go.
    """

    def __init__(self, setup: Mapping[str, Any]) -> None:
        cluster, cfg = etcd_from_setup(setup)
        self.timeout = cfg.timeout
        self._store = Store(cfg, Keys(cluster))
        self._ready = threading.Event()
        self._cancel = threading.Event()
        threading.Thread(target=self._connect, name="fence-etcd", daemon=True).start()

    def _connect(self) -> None:
        try:
            self._store.connect(cancel=self._cancel)
        except StoreError as exc:
            if not self._cancel.is_set():
                log.error("fence cannot use etcd (%s): a dead agent's lease expires by itself", exc)
            return
        self._ready.set()

    def revoke(self, lease_id: int, why: str) -> bool:
        if not self._ready.wait(2 * self.timeout):
            log.warning(
                "fence could not reach etcd to revoke lease %x; etcd expires it after its ttl",
                lease_id,
            )
            return False
        try:
            self._store.revoke(lease_id)
        except STORE_ERRORS as exc:
            text = describe_error(exc)
            if "not found" in text.lower():
                log.info("lease %x was already gone", lease_id)
            else:
                log.warning(
                    "fence could not revoke lease %x (%s); etcd expires it after its ttl",
                    lease_id,
                    text,
                )
            return False
        log.warning("fence revoked lease %x (%s): the other hosts take over now", lease_id, why)
        return True

    def close(self) -> None:
        self._cancel.set()
        self._store.close()


def remove(net: AddressManager, addresses: Iterable[Address], reason: str) -> None:
    for ifname, address in addresses:
        try:
            if net.unbind(ifname, address):
                log.warning("fence removed %s from %s: %s", address, ifname, reason)
        except NetError as exc:
            log.error("fence could not remove %s from %s: %s", address, ifname, exc)


def serve(stdin_fd: int, net: AddressManager) -> int:
    fence = Fence()
    revoker: LeaseRevoker | None = None

    def revoke(lease: int | None, why: str) -> None:
        """Only ever after the removal: nobody may win a key while its address is still here."""
        if revoker is not None and lease is not None:
            revoker.revoke(lease, why)

    buffer = b""
    try:
        while True:
            ready, _, _ = select.select([stdin_fd], [], [], fence.timeout(time.monotonic()))
            if ready:
                chunk = os.read(stdin_fd, 65536)
                if not chunk:
                    reason = "the agent exited without handing over (its pipe closed)"
                    remove(net, fence.take(), reason)
                    revoke(fence.lease, "its agent died")
                    return 0
                buffer += chunk
                *lines, buffer = buffer.split(b"\n")
                for line in lines:
                    if not line.strip():
                        continue
                    try:
                        message = json.loads(line)
                    except ValueError:
                        log.error("fence ignored a malformed message (%d bytes)", len(line))
                        continue
                    if not fence.update(message):
                        return 0
                    if fence.setup is not None and revoker is None:
                        revoker = LeaseRevoker(fence.setup)
            # Also after a message: it may carry a deadline that has already passed.
            addresses, reason = fence.due(time.monotonic())
            remove(net, addresses, reason)
            revoke(fence.revoke_due(time.monotonic()), "its agent is frozen past its deadline")
    finally:
        if revoker is not None:
            revoker.close()


def main() -> int:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    setup_logging("info")
    with AddressManager() as net:
        return serve(sys.stdin.fileno(), net)

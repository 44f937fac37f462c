"""The fence: a tiny process that removes the agent's VIPs when the agent can no longer do it.

The agent starts it in a session of its own (so a SIGKILL of the agent's process group, or a
Ctrl-C, does not reach it) and writes one JSON line to its stdin whenever what it holds or its
lease deadline changes. Each line says only what changed since the line before; a field that
is absent keeps its value, so a keepalive costs a few dozen bytes however many VIPs the agent
holds::

    {"setup": {"cluster": "db", "endpoints": [...], ...}}   # first: how to reach etcd
    {"deadline":12345.678,"lease":7587869,"add":[["eth0","198.51.100.200/32"]]}  # a bind
    {"deadline":12346.678}                       # a keepalive was acknowledged
    {"remove":[["eth0","198.51.100.200/32"]]}    # an unbind
    {"deadline":null,"hold":true}                # keep them, no deadline (see below)
    {"exit":true}                                # graceful stop: the agent unbound everything

``deadline`` and ``lease`` may be ``null`` (no valid lease; nothing to revoke). A fence starts
knowing nothing (no deadline, no hold, no lease, no address), and the agent's end
(``haagent.fence.client``) starts every new fence with the setup and then the whole state as
one difference from that. Agent and fence ship in one package, and the full-list messages
before this protocol were never released, so nothing else is understood.

The deadline is on the system-wide monotonic clock, shared by both processes. The fence removes
every listed address

* the moment stdin reaches end-of-file without an ``exit`` (the agent died: SIGKILL, crash,
  OOM kill — the kernel closes the pipe), and
* when the deadline passes without a newer one (the agent is frozen — SIGSTOP, a stalled VM
  thread, a page-fault storm — and cannot act on its own deadline), or at once when there is
  no deadline and no hold.

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
the agent sets on every bind (see ``haagent/decide/lease.py``).

It stays small (17 MiB of RSS, 23 MiB with TLS, measured; 55 MB before) and quick to start: it
imports neither the agent's etcd client nor pyroute2 but speaks the little of gRPC
(``etcd``, ``h2``) and rtnetlink (``netlink``) it needs itself.
"""

from __future__ import annotations

import json
import logging
import os
import select
import signal
import sys
import time
from collections.abc import Sequence

from haagent.fence.etcd import EXPIRES_BY_ITSELF, LeaseRevoker
from haagent.fence.netlink import AddressRemover, NetlinkError
from haagent.fence.setup import EtcdSettings
from haagent.fence.state import Address, Fence
from haagent.logs import setup_logging

log = logging.getLogger("haagent.fence")

READ = 1 << 16


def remove(net: AddressRemover, addresses: Sequence[Address], reason: str) -> None:
    for outcome in net.remove(addresses):
        ifname, address = outcome.address
        if outcome.removed:
            log.warning("fence removed %s from %s: %s", address, ifname, reason)
        if outcome.error is not None:
            log.error("fence could not remove %s from %s: %s", address, ifname, outcome.error)


def parse(line: bytes) -> dict[str, object] | None:
    """One line of the pipe as a message; None (logged) if it is not a JSON object."""
    try:
        message = json.loads(line)
    except ValueError:
        message = None
    if isinstance(message, dict):
        return message
    log.error("fence ignored a malformed message (%d bytes)", len(line))
    return None


def start_revoker(setup: dict[str, object]) -> LeaseRevoker | None:
    """The revoker for the agent's etcd settings; None (logged) if they cannot be used."""
    try:
        return LeaseRevoker(EtcdSettings.from_setup(setup))
    except (ValueError, OSError, RuntimeError) as exc:
        log.error("fence cannot use etcd (%s): %s", exc, EXPIRES_BY_ITSELF)
        return None


def serve(stdin_fd: int, net: AddressRemover) -> int:
    fence = Fence()
    revoker: LeaseRevoker | None = None
    etcd_known = False  # the setup was read (a bad one is reported once)

    def revoke(lease: int | None, why: str) -> None:
        """Only ever after the removal: nobody may win a key while its address is still here."""
        if revoker is not None and lease is not None:
            revoker.revoke(lease, why)

    buffer = b""
    try:
        while True:  # one turn per read or timeout; the agent decides how many there are
            ready, _, _ = select.select([stdin_fd], [], [], fence.timeout(time.monotonic()))
            if ready:
                try:
                    chunk = os.read(stdin_fd, READ)
                except OSError:
                    chunk = b""  # a pipe that cannot be read is an agent that cannot speak
                if not chunk:
                    reason = "the agent exited without handing over (its pipe closed)"
                    remove(net, fence.take(), reason)
                    revoke(fence.lease, "its agent died")
                    return 0
                buffer += chunk
                lines: list[bytes] = []
                if b"\n" in chunk:  # a long line comes in many chunks: split once it ends
                    *lines, buffer = buffer.split(b"\n")
                for line in lines:
                    message = parse(line) if line.strip() else None
                    if message is None:
                        continue
                    if not fence.update(message):
                        return 0
                    if fence.setup is not None and not etcd_known:
                        etcd_known = True
                        revoker = start_revoker(fence.setup)
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
    try:
        net = AddressRemover()
    except NetlinkError as exc:
        log.error("fence cannot start: %s", exc)
        return 1
    with net:
        return serve(sys.stdin.fileno(), net)

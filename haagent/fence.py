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
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Mapping
from ipaddress import IPv4Interface, IPv6Interface, ip_interface
from pathlib import Path
from typing import Any

from haagent.config import EtcdConfig, TLSConfig
from haagent.net.addresses import AddressManager, NetError
from haagent.schema import Keys
from haagent.store import STORE_ERRORS, Store, StoreError, describe_error

log = logging.getLogger("haagent.fence")

# s beyond etcd.timeout that a live agent gets to report its own deadline before the fence
# takes it for frozen and revokes its lease (the agent's loop is late by at most one RPC).
REVOKE_SLACK = 0.25

Address = tuple[str, IPv4Interface | IPv6Interface]


class Fence:
    """What the fence knows and decides (pure: it returns what to remove, serve() removes it)."""

    def __init__(self) -> None:
        self.deadline: float | None = None
        self.hold = False  # keep the addresses with no deadline (etcd outage, "keep" policy)
        self.addresses: list[Address] = []
        self.lease: int | None = None  # the agent's lease, revoked once the fence acted
        self.setup: dict[str, Any] | None = None  # how to reach etcd (see setup_message)
        # After acting at the deadline: when to revoke the lease unless the agent speaks first.
        self.revoke_at: float | None = None
        self.revoke_grace = 1.0 + REVOKE_SLACK  # etcd.timeout (from the setup) + slack

    def update(self, message: dict[str, object]) -> bool:
        """Apply one message; False when the agent said it is exiting."""
        if message.get("exit"):
            return False
        setup = message.get("setup")
        if isinstance(setup, dict):
            self.setup = setup
            self.revoke_grace = float(setup.get("timeout", 1.0)) + REVOKE_SLACK
            return True
        # The agent speaks, so it is not frozen: whatever it missed, it handles its lease.
        self.revoke_at = None
        lease = message.get("lease")
        self.lease = lease if isinstance(lease, int) and lease > 0 else None
        deadline = message.get("deadline")
        self.deadline = float(deadline) if isinstance(deadline, (int, float)) else None
        self.hold = bool(message.get("hold"))
        raw = message.get("addresses", [])
        addresses: list[Address] = []
        if isinstance(raw, list):
            for item in raw:
                if isinstance(item, list) and len(item) == 2:
                    addresses.append((str(item[0]), ip_interface(str(item[1]))))
        self.addresses = addresses
        return True

    def timeout(self, now: float) -> float | None:
        """How long to wait for the next message before acting; None: forever."""
        whens = [] if self.revoke_at is None else [self.revoke_at]
        if self.addresses and self.deadline is not None and not self.hold:
            whens.append(self.deadline)
        return max(0.0, min(whens) - now) if whens else None

    def due(self, now: float) -> tuple[list[Address], str]:
        """Addresses to remove now because the deadline passed, and why.

        Removing them cannot wait; revoking the lease can (see revoke_due).
        """
        if not self.addresses or self.hold or (self.deadline is not None and now < self.deadline):
            return [], ""
        late = "" if self.deadline is None else f" {(now - self.deadline) * 1000:.0f} ms ago"
        self.revoke_at = now + self.revoke_grace
        return self.take(), f"lease deadline passed{late} and the agent did not act"

    def revoke_due(self, now: float) -> int | None:
        """The lease to revoke now: the agent stayed silent for ``revoke_grace`` after the
        fence acted at its deadline, so it is frozen, not merely cut off from etcd.

        A live agent reaches the same deadline itself and tells the fence (at most one etcd
        RPC late), and may then regain the lease if etcd answers before it expires — e.g.
        after an etcd leader election. Revoking at the deadline would turn that pause into
        a failover.
        """
        if self.revoke_at is None or now < self.revoke_at:
            return None
        self.revoke_at = None
        return self.lease

    def take(self) -> list[Address]:
        """Everything still listed (the agent died): the fence removes it and forgets it."""
        addresses, self.addresses = self.addresses, []
        return addresses


def setup_message(cluster: str, etcd: EtcdConfig) -> dict[str, object]:
    """What the fence needs to revoke a lease: the agent's etcd settings, password included
    (the pipe is private to the two processes; it never goes on a command line)."""
    tls = etcd.tls
    return {
        "setup": {
            "cluster": cluster,
            "endpoints": list(etcd.endpoints),
            "tls": None
            if tls is None
            else {k: None if v is None else str(v) for k, v in vars(tls).items()},
            "username": etcd.username,
            "password": etcd.password,
            "timeout": etcd.timeout,
            "retry_interval": etcd.retry_interval,
        }
    }


def etcd_from_setup(setup: Mapping[str, Any]) -> tuple[str, EtcdConfig]:
    """The inverse of :func:`setup_message` (its ``setup`` part): (cluster, etcd settings)."""
    tls = setup.get("tls")
    return str(setup["cluster"]), EtcdConfig(
        endpoints=tuple(str(e) for e in setup["endpoints"]),
        tls=None
        if not isinstance(tls, dict)
        else TLSConfig(**{k: None if v is None else Path(v) for k, v in tls.items()}),
        username=setup.get("username"),
        password=setup.get("password"),
        timeout=float(setup.get("timeout", 1.0)),
        retry_interval=float(setup.get("retry_interval", 1.0)),
    )


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
    from haagent.cli import setup_logging

    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    setup_logging("info")
    with AddressManager() as net:
        return serve(sys.stdin.fileno(), net)


class FenceClient:
    """The agent's end: starts the fence and keeps it told. Never raises into the agent."""

    def __init__(self, setup: Mapping[str, object] | None = None) -> None:
        """``setup``: :func:`setup_message`; without it the fence never revokes a lease."""
        self._proc: subprocess.Popen[bytes] | None = None
        self._last: bytes = b""
        self._setup = b"" if setup is None else json.dumps(setup).encode() + b"\n"

    def start(self) -> None:
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "haagent.fence"],
            stdin=subprocess.PIPE,
            start_new_session=True,  # out of reach of signals sent to the agent's group
        )
        if self._setup and self._proc.stdin is not None:
            try:
                self._proc.stdin.write(self._setup)
                self._proc.stdin.flush()
            except OSError as exc:
                log.error("cannot reach the fence process: %s", exc)

    def tell(
        self,
        deadline: float | None,
        addresses: Iterable[Address],
        *,
        hold: bool = False,
        lease: int | None = None,
    ) -> None:
        message = {
            "deadline": deadline,
            "hold": hold,
            "lease": lease,
            "addresses": [[ifname, str(address)] for ifname, address in addresses],
        }
        self._send(json.dumps(message).encode() + b"\n")

    def _send(self, data: bytes) -> None:
        if data == self._last:
            return
        for attempt in (1, 2):
            proc = self._proc
            if proc is None or proc.stdin is None or proc.poll() is not None:
                log.error("fence process is gone; starting a new one")
                self.start()
                continue
            try:
                proc.stdin.write(data)
                proc.stdin.flush()
                self._last = data
                return
            except OSError as exc:  # BrokenPipeError included: the fence died
                if attempt == 2:
                    log.error("cannot reach the fence process: %s", exc)
                self._proc = None

    def stop(self, timeout: float = 1.0) -> None:
        """Graceful: the agent unbound everything itself; the fence exits without acting."""
        proc = self._proc
        if proc is None:
            return
        try:
            if proc.stdin is not None:
                proc.stdin.write(b'{"exit": true}\n')
                proc.stdin.close()
            proc.wait(timeout=timeout)
        except (OSError, subprocess.TimeoutExpired):
            proc.kill()
            proc.wait(timeout=timeout)
        self._proc = None


if __name__ == "__main__":
    raise SystemExit(main())

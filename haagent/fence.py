"""The fence: a tiny process that removes the agent's VIPs when the agent can no longer do it.

The agent starts it in a session of its own (so a SIGKILL of the agent's process group, or a
Ctrl-C, does not reach it) and writes one JSON line to its stdin whenever what it holds or its
lease deadline changes::

    {"deadline": 12345.678, "addresses": [["eth0", "198.51.100.200/32"], ...]}
    {"deadline": null, "hold": true, "addresses": [...]}   # keep them, no deadline (see below)
    {"exit": true}                      # graceful stop: the agent already unbound everything

The deadline is on the system-wide monotonic clock, shared by both processes. The fence removes
every listed address

* the moment stdin reaches end-of-file without an ``exit`` (the agent died: SIGKILL, crash,
  OOM kill — the kernel closes the pipe), and
* when the deadline passes without a newer one (the agent is frozen — SIGSTOP, a stalled VM
  thread, a page-fault storm — and cannot act on its own deadline).

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
import time
from collections.abc import Iterable
from ipaddress import IPv4Interface, IPv6Interface, ip_interface

from haagent.net.addresses import AddressManager, NetError

log = logging.getLogger("haagent.fence")

Address = tuple[str, IPv4Interface | IPv6Interface]


class Fence:
    """What the fence knows and decides (pure: it returns what to remove, serve() removes it)."""

    def __init__(self) -> None:
        self.deadline: float | None = None
        self.hold = False  # keep the addresses with no deadline (etcd outage, "keep" policy)
        self.addresses: list[Address] = []

    def update(self, message: dict[str, object]) -> bool:
        """Apply one message; False when the agent said it is exiting."""
        if message.get("exit"):
            return False
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
        if not self.addresses or self.deadline is None or self.hold:
            return None
        return max(0.0, self.deadline - now)

    def due(self, now: float) -> tuple[list[Address], str]:
        """Addresses to remove now because the deadline passed, and why."""
        if not self.addresses or self.hold or (self.deadline is not None and now < self.deadline):
            return [], ""
        late = "" if self.deadline is None else f" {(now - self.deadline) * 1000:.0f} ms ago"
        return self.take(), f"lease deadline passed{late} and the agent did not act"

    def take(self) -> list[Address]:
        """Everything still listed (the agent died): the fence removes it and forgets it."""
        addresses, self.addresses = self.addresses, []
        return addresses


def remove(net: AddressManager, addresses: Iterable[Address], reason: str) -> None:
    for ifname, address in addresses:
        try:
            if net.unbind(ifname, address):
                log.warning("fence removed %s from %s: %s", address, ifname, reason)
        except NetError as exc:
            log.error("fence could not remove %s from %s: %s", address, ifname, exc)


def serve(stdin_fd: int, net: AddressManager) -> int:
    fence = Fence()
    buffer = b""
    while True:
        ready, _, _ = select.select([stdin_fd], [], [], fence.timeout(time.monotonic()))
        if ready:
            chunk = os.read(stdin_fd, 65536)
            if not chunk:
                reason = "the agent exited without handing over (its pipe closed)"
                remove(net, fence.take(), reason)
                return 0
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                if not line.strip():
                    continue
                try:
                    message = json.loads(line)
                except ValueError:
                    log.error("fence ignored a malformed message: %r", line[:200])
                    continue
                if not fence.update(message):
                    return 0
        # Also after a message: it may carry a deadline that has already passed.
        addresses, reason = fence.due(time.monotonic())
        remove(net, addresses, reason)


def main() -> int:
    from haagent.cli import setup_logging

    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    setup_logging("info")
    with AddressManager() as net:
        return serve(sys.stdin.fileno(), net)


class FenceClient:
    """The agent's end: starts the fence and keeps it told. Never raises into the agent."""

    def __init__(self) -> None:
        self._proc: subprocess.Popen[bytes] | None = None
        self._last: bytes = b""

    def start(self) -> None:
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "haagent.fence"],
            stdin=subprocess.PIPE,
            start_new_session=True,  # out of reach of signals sent to the agent's group
        )

    def tell(
        self, deadline: float | None, addresses: Iterable[Address], *, hold: bool = False
    ) -> None:
        message = {
            "deadline": deadline,
            "hold": hold,
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
            except (BrokenPipeError, OSError) as exc:
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

"""The agent's end of the fence: start the fence process and keep it told."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from collections.abc import Iterable, Mapping

from haagent.fence.state import Address

log = logging.getLogger("haagent.fence")


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

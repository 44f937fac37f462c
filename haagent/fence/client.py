"""The agent's end of the fence: start the fence process and keep it told.

The fence is told differences (the protocol is in ``haagent.fence.program``): the client
remembers what the running fence knows and writes only what changed, so a keepalive costs a
few dozen bytes and a bind one address, whatever the number of VIPs. A new fence — the first,
or one started because the last died — knows nothing and gets the setup and the whole state.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import select
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from haagent.fence.state import Address

log = logging.getLogger("haagent.fence")

# A pipe this large holds the whole state of ~20000 VIPs, so that writing never waits for a
# fence that is busy (removing addresses, starting up) rather than stuck.
PIPE_SIZE = 1 << 20
# The longest a write waits for a fence that reads nothing before it counts as stuck.
WRITE_TIMEOUT = 0.5


@dataclass
class Known:
    """What a fence has been told: where the differences start from."""

    deadline: float | None = None
    hold: bool = False
    lease: int | None = None
    addresses: dict[Address, None] = field(default_factory=dict)  # a set in the agent's order

    def diff(
        self,
        deadline: float | None,
        addresses: dict[Address, None] | None,
        hold: bool,
        lease: int | None,
    ) -> dict[str, object]:
        """The message that brings a fence that knows this up to the given state ({}: none).

        ``addresses`` None: the same as before (the caller knows, so nothing is compared).
        """
        message: dict[str, object] = {}
        if deadline != self.deadline:
            message["deadline"] = deadline
        if lease != self.lease:
            message["lease"] = lease
        if hold != self.hold:
            message["hold"] = hold
        if addresses is not None and addresses != self.addresses:
            gone = [[i, str(a)] for i, a in self.addresses if (i, a) not in addresses]
            new = [[i, str(a)] for i, a in addresses if (i, a) not in self.addresses]
            if gone:
                message["remove"] = gone
            if new:
                message["add"] = new
        return message


def encode(message: Mapping[str, object]) -> bytes:
    return json.dumps(message, separators=(",", ":")).encode() + b"\n"


class FenceClient:
    """The agent's end: starts the fence and keeps it told.

    Only :meth:`start` raises (OSError: the agent cannot run without a fence); :meth:`tell`
    and :meth:`stop` log what goes wrong and never raise into the agent.
    """

    def __init__(
        self,
        setup: Mapping[str, object] | None = None,
        *,
        command: Sequence[str] | None = None,
        write_timeout: float = WRITE_TIMEOUT,
    ) -> None:
        """``setup``: :func:`setup_message`; without it the fence never revokes a lease.
        ``command`` replaces ``python -m haagent.fence`` (tests, other namespaces)."""
        self._proc: subprocess.Popen[bytes] | None = None
        self._setup = b"" if setup is None else encode(setup)
        self._command = list(command or (sys.executable, "-m", "haagent.fence"))
        self._write_timeout = write_timeout
        self._known = Known()  # what the running fence has been told
        # What it should guard: the agent's truth, kept across a restart of the fence (a new
        # fence is sent all of it). tell() replaces it, update() changes it in place.
        self._desired: dict[Address, None] = {}
        # The last address collection told, when it was a tuple: the same tuple again
        # cannot have changed, which spares a keepalive the comparison.
        self._told: tuple[Address, ...] | None = None
        self.bytes_written = 0  # everything written to fences, for tests and measurements
        self._lock = threading.RLock()

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    def start(self) -> None:
        """Start a fence (which knows nothing yet) and give it the setup. OSError if the
        process cannot be started; a setup that cannot be written is logged."""
        proc = subprocess.Popen(
            self._command,
            stdin=subprocess.PIPE,
            bufsize=0,
            start_new_session=True,  # out of reach of signals sent to the agent's group
        )
        assert proc.stdin is not None  # stdin=PIPE
        fd = proc.stdin.fileno()
        with contextlib.suppress(OSError):  # a smaller pipe works, it waits more
            fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
        os.set_blocking(fd, False)
        self._proc = proc
        self._known = Known()
        self._told = None
        if self._setup:
            error = self._write(self._setup)
            if error is not None:
                log.error("cannot reach the fence process: %s", error)

    def _tell(
        self,
        deadline: float | None,
        addresses: Iterable[Address],
        *,
        hold: bool = False,
        lease: int | None = None,
    ) -> None:
        """Bring the fence up to this state: the deadline, the lease it revokes and every
        address it must remove if the agent dies. Restarts a fence that died."""
        if not self._running() and not self._restart("fence process is gone"):
            return
        if isinstance(addresses, tuple) and addresses is self._told:
            wanted, changed = self._known.addresses, None
        else:
            wanted = changed = dict.fromkeys(addresses)
        message = self._known.diff(deadline, changed, hold, lease)
        if message:
            error = self._write(encode(message))
            if error is not None:
                # A dead or stuck fence: the new one starts from nothing: it gets everything.
                if not self._restart(f"cannot reach the fence process ({error})"):
                    return
                error = self._write(encode(self._known.diff(deadline, wanted, hold, lease)))
                if error is not None:
                    log.error("cannot reach the new fence process either: %s", error)
                    return
        self._known = Known(deadline, hold, lease, wanted)
        self._desired = wanted
        self._told = addresses if isinstance(addresses, tuple) else None

    def _update(
        self,
        deadline: float | None,
        *,
        add: Iterable[Address] = (),
        remove: Iterable[Address] = (),
        hold: bool = False,
        lease: int | None = None,
    ) -> None:
        """Tell only what changed: the scalars, and addresses to ``add`` or ``remove``.

        O(len(add) + len(remove)) however many addresses the fence guards: what the agent
        calls per bind, unbind and keepalive (:meth:`tell` compares whole lists). A fence that
        died or cannot be reached is replaced and sent the whole state.
        """
        desired = self._desired
        new = [a for a in add if a not in desired]
        gone = [a for a in remove if a in desired]
        for a in gone:
            del desired[a]
        for a in new:
            desired[a] = None
        if not self._running():
            if self._restart("fence process is gone"):
                self._send_all(deadline, hold, lease)
            return
        message = self._known.diff(deadline, None, hold, lease)
        if gone:
            message["remove"] = [[i, str(a)] for i, a in gone]
        if new:
            message["add"] = [[i, str(a)] for i, a in new]
        if message:
            error = self._write(encode(message))
            if error is not None:
                if self._restart(f"cannot reach the fence process ({error})"):
                    self._send_all(deadline, hold, lease)
                return
        self._known = Known(deadline, hold, lease, desired)
        self._told = None

    def tell(
        self,
        deadline: float | None,
        addresses: Iterable[Address],
        *,
        hold: bool = False,
        lease: int | None = None,
    ) -> None:
        with self._lock:
            self._tell(deadline, addresses, hold=hold, lease=lease)

    def update(
        self,
        deadline: float | None,
        *,
        add: Iterable[Address] = (),
        remove: Iterable[Address] = (),
        hold: bool = False,
        lease: int | None = None,
    ) -> None:
        """See :meth:`_update`. Thread-safe: fast failover's heartbeat thread moves the
        deadline between the loop's own updates."""
        with self._lock:
            self._update(deadline, add=add, remove=remove, hold=hold, lease=lease)

    def _send_all(self, deadline: float | None, hold: bool, lease: int | None) -> None:
        """A new fence knows nothing: send it the whole desired state."""
        error = self._write(encode(Known().diff(deadline, self._desired, hold, lease)))
        if error is not None:
            log.error("cannot reach the new fence process either: %s", error)
            return
        self._known = Known(deadline, hold, lease, self._desired)
        self._told = None

    def stop(self, timeout: float = 1.0) -> None:
        """Graceful: the agent unbound everything itself; the fence exits without acting."""
        with self._lock:
            self._stop(timeout)

    def _stop(self, timeout: float) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        try:
            if proc.poll() is None:
                self._write_to(proc, encode({"exit": True}))
            if proc.stdin is not None:
                proc.stdin.close()
            proc.wait(timeout=timeout)
        except (OSError, subprocess.TimeoutExpired):
            self._kill(proc)

    # -- helpers ----------------------------------------------------------------------

    @property
    def guarded(self) -> int:
        """How many addresses the running fence was told to guard."""
        return len(self._known.addresses)

    @property
    def running(self) -> bool:
        return self._running()

    def _running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def _restart(self, why: str) -> bool:
        """Replace the fence (killing it if it is merely stuck); False if none could start."""
        old, self._proc = self._proc, None
        if old is not None:
            status = old.poll()
            if status is None:
                self._kill(old)
                status = old.returncode
            log.error("%s (exit status %s); starting a new one", why, status)
            with contextlib.suppress(OSError):
                if old.stdin is not None:
                    old.stdin.close()
        try:
            self.start()
        except OSError as exc:
            self._proc = None
            log.error("cannot start a new fence process: %s", exc.strerror or exc)
            return False
        return True

    def _kill(self, proc: subprocess.Popen[bytes]) -> None:
        """SIGKILL our own child (by its pid, from Popen) and reap it, bounded."""
        with contextlib.suppress(OSError):
            proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=1.0)

    def _write(self, data: bytes) -> str | None:
        """Write all of ``data`` to the current fence; None if done, else why not."""
        proc = self._proc
        if proc is None:
            return "no fence process"
        return self._write_to(proc, data)

    def _write_to(self, proc: subprocess.Popen[bytes], data: bytes) -> str | None:
        if proc.stdin is None or proc.stdin.closed:
            return "its pipe is closed"
        fd = proc.stdin.fileno()
        view = memoryview(data)
        deadline = time.monotonic() + self._write_timeout
        while view:  # bounded by the deadline: every pass writes or waits until it
            try:
                written = os.write(fd, view)
            except BlockingIOError:
                written = 0
            except OSError as exc:  # BrokenPipeError included: the fence died
                return exc.strerror or str(exc)
            self.bytes_written += written
            view = view[written:]
            if view:
                left = deadline - time.monotonic()
                if left <= 0:
                    return f"it read nothing for {self._write_timeout:.1f}s"
                select.select([], [fd], [], left)
        return None

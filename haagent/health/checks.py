"""Check runners: one run of one check, always a :class:`CheckResult`, never an exception.

Each runner bounds itself by the check's timeout where the operating system lets it (socket
timeouts, killing the process group of a command). The one thing it cannot bound is a host
name lookup inside ``getaddrinfo``; :class:`haagent.health.monitor.HealthMonitor` runs every
run in a worker thread and counts one that overstays as failed, so even that never blocks.

Interface checks use the ``SIOCGIFFLAGS`` ioctl rather than ``/sys/class/net``: sysfs shows the
network namespace of whoever mounted it, not the one the agent runs in (a process that entered a
namespace with setns(2) still sees the host's /sys), while an ioctl on a socket answers for the
socket's own namespace. It is one system call, with no netlink socket to keep or parse. The
flags it returns are the ones ``ip link`` prints: ``UP`` (administratively up) and ``RUNNING``,
which the kernel sets when the operational state is up, i.e. the link has carrier and is not
dormant.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import fcntl
import http.client
import os
import select
import signal
import socket
import ssl
import struct
import subprocess
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

from haagent.config import (
    CheckConfig,
    ExecCheckConfig,
    HttpCheckConfig,
    InterfaceCheckConfig,
    TcpCheckConfig,
    VipConfig,
    program_problem,
)

__all__ = [
    "BODY_LIMIT",
    "OUTPUT_TAIL",
    "CheckResult",
    "CommandResult",
    "ProcessGroups",
    "check_exec",
    "check_http",
    "check_interface",
    "check_tcp",
    "run_check",
    "run_command",
    "vip_env",
]

BODY_LIMIT = 64 * 1024  # bytes of an HTTP body searched for expect_body
OUTPUT_TAIL = 2048  # bytes of a command's output kept for the CLI and the log
_REAP_GRACE = 0.2  # seconds to wait for a killed group's leader and the output pipe

_SIOCGIFFLAGS = 0x8913
_IFF_UP = 0x1
_IFF_RUNNING = 0x40


@dataclass(frozen=True)
class CheckResult:
    ok: bool
    detail: str  # one line, for the log and the reason of a failover
    output: str = ""  # exec: the last OUTPUT_TAIL bytes of stdout and stderr
    duration: float = 0.0  # seconds


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms" if seconds < 1 else f"{seconds:.1f} s"


def _reason(exc: BaseException) -> str:
    if isinstance(exc, socket.timeout | TimeoutError):
        return "timed out"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS certificate not accepted: {exc.verify_message or exc.reason}"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror[:1].lower() + exc.strerror[1:]
    return str(exc) or type(exc).__name__


def _failed(exc: BaseException, took: float) -> str:
    """:func:`_reason`, with how long it took when it timed out."""
    why = _reason(exc)
    return f"timed out after {_ms(took)}" if why == "timed out" else why


# --------------------------------------------------------------------------- tcp


def check_tcp(host: str, port: int, timeout: float) -> CheckResult:
    """Pass when a TCP connection to host:port is established within ``timeout`` seconds."""
    target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    start = time.monotonic()
    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except Exception as exc:  # any failure is a failed check, never an exception
        took = time.monotonic() - start
        return CheckResult(False, f"{target}: {_failed(exc, took)}", duration=took)
    took = time.monotonic() - start
    return CheckResult(True, f"connected to {target} in {_ms(took)}", duration=took)


# --------------------------------------------------------------------------- http


def check_http(check: HttpCheckConfig) -> CheckResult:
    """One request; pass on an expected status and (if set) the body substring."""
    start = time.monotonic()
    deadline = start + check.timeout
    try:
        ok, detail = _http(check, start, deadline)
    except Exception as exc:
        took = time.monotonic() - start
        return CheckResult(
            False, f"{check.method} {check.url}: {_failed(exc, took)}", duration=took
        )
    return CheckResult(ok, detail, duration=time.monotonic() - start)


def _http(check: HttpCheckConfig, start: float, deadline: float) -> tuple[bool, str]:
    parts = urlsplit(check.url)
    host = parts.hostname
    if parts.scheme not in ("http", "https") or not host:
        return False, f"{check.url}: not an http:// or https:// URL with a host"
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    remaining = max(deadline - time.monotonic(), 0.001)
    conn: http.client.HTTPConnection
    if parts.scheme == "https":
        ctx = ssl.create_default_context()
        if not check.tls_verify:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        conn = http.client.HTTPSConnection(host, parts.port, timeout=remaining, context=ctx)
    else:
        conn = http.client.HTTPConnection(host, parts.port, timeout=remaining)
    try:
        conn.request(check.method, path, headers={"User-Agent": "haagent-health-check"})
        if conn.sock is not None:
            conn.sock.settimeout(max(deadline - time.monotonic(), 0.001))
        resp = conn.getresponse()
        status = resp.status
        body = b""
        if check.expect_body is not None:
            while len(body) < BODY_LIMIT:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError("timed out reading the body")
                if conn.sock is not None:
                    conn.sock.settimeout(left)
                chunk = resp.read1(BODY_LIMIT - len(body))
                if not chunk:
                    break
                body += chunk
        took = time.monotonic() - start
    finally:
        conn.close()
    what = f"{check.method} {check.url}: {status} {resp.reason}".rstrip()
    if not check.status_ok(status):
        wanted = (
            ", ".join(str(s) for s in check.expect_status) if check.expect_status else "2xx or 3xx"
        )
        return False, f"{what}, expected {wanted}"
    if check.expect_body is not None and check.expect_body not in body.decode(
        "utf-8", errors="replace"
    ):
        return False, f"{what}, body does not contain {check.expect_body!r}"
    return True, f"{what} in {_ms(took)}"


# --------------------------------------------------------------------------- exec


@dataclass(frozen=True)
class CommandResult:
    returncode: int | None  # None: killed at the timeout, or could not be started
    timed_out: bool
    output: str  # the last OUTPUT_TAIL bytes of stdout + stderr, decoded leniently
    duration: float
    error: str = ""  # why it could not be started
    pid: int | None = None  # the process (and process group) it ran as
    timeout: float = 0.0  # the limit it ran under

    def describe(self) -> str:
        if self.error:
            return f"cannot run: {self.error}"
        if self.timed_out:
            return f"killed at the {self.timeout:g} s timeout"
        if self.returncode is None:
            return "no exit status"
        if self.returncode < 0:
            try:
                name = signal.Signals(-self.returncode).name
            except ValueError:
                name = str(-self.returncode)
            return f"killed by {name}"
        return f"exit status {self.returncode}"

    def last_line(self) -> str:
        """The last line of the output, cut to 200 characters, for one-line log messages."""
        lines = self.output.strip().splitlines()
        return lines[-1][:200] if lines else ""


class _Tail:
    """Reads a pipe to its end, keeping only its last ``limit`` bytes."""

    def __init__(self, fd: int, limit: int = OUTPUT_TAIL) -> None:
        self._fd = fd
        self._limit = limit
        self._chunks: collections.deque[bytes] = collections.deque()
        self._size = 0
        self._lock = threading.Lock()
        self.thread = threading.Thread(target=self._run, name="haagent-output", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            while chunk := os.read(self._fd, 65536):
                with self._lock:
                    self._chunks.append(chunk)
                    self._size += len(chunk)
                    while self._size - len(self._chunks[0]) >= self._limit:
                        self._size -= len(self._chunks.popleft())
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                os.close(self._fd)

    def text(self) -> str:
        with self._lock:
            data = b"".join(self._chunks)[-self._limit :]
        return data.decode("utf-8", errors="replace")


class ProcessGroups:
    """The process groups of commands still running, so that they can all be killed at once.

    A group id is only in the set while its leader has not been reaped, and it is removed under
    the same lock that :meth:`kill_all` holds: a killed group id is never one the kernel has
    handed out again.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self._pgids: set[int] = set()

    def add(self, pgid: int) -> None:
        with self.lock:
            self._pgids.add(pgid)

    def discard(self, pgid: int) -> None:
        """Call with :attr:`lock` held."""
        self._pgids.discard(pgid)

    def kill_all(self) -> int:
        """SIGKILL every group; how many there were."""
        with self.lock:
            for pgid in self._pgids:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pgid, signal.SIGKILL)
            return len(self._pgids)


def _wait_exit(pid: int, timeout: float) -> bool:
    """True when ``pid`` (our child) exited within ``timeout``; it is left unreaped."""
    try:
        fd = os.pidfd_open(pid)
    except (AttributeError, OSError):  # no pidfd_open in this Python or kernel
        fd = -1
    if fd >= 0:
        try:
            ready, _, _ = select.select([fd], [], [], max(timeout, 0))
            return bool(ready)
        finally:
            os.close(fd)
    # No pidfd (kernel before 5.3): poll without reaping.
    deadline = time.monotonic() + timeout
    while True:
        try:
            if os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
                return True
        except ChildProcessError:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.01)


def vip_env(vip: VipConfig, node: str) -> dict[str, str]:
    """What every command run about one VIP finds in its environment: a notify hook, and an
    exec check run for that VIP alone (per_vip, or the only VIP that uses it)."""
    return {
        "HAAGENT_VIP": vip.name,
        "HAAGENT_ADDRESS": str(vip.ip),
        "HAAGENT_INTERFACE": vip.interface,
        "HAAGENT_NODE": node,
    }


def run_command(
    argv: tuple[str, ...] | list[str],
    timeout: float,
    env: Mapping[str, str] | None = None,
    groups: ProcessGroups | None = None,
) -> CommandResult:
    """Run ``argv`` in its own session and process group, with ``env`` added to ours.

    At ``timeout`` the whole process group is SIGKILLed, before the leader is reaped, so the
    group id cannot have been reused. Output goes to one pipe of which only the tail is kept.
    Descendants that stay behind after the leader exits on its own are left alone; a
    descendant that started a session of its own escapes the kill, as with any supervisor that
    uses process groups. ``groups``, if given, holds the group while it runs.
    """
    start = time.monotonic()
    full_env = dict(os.environ)
    if env:
        full_env.update(env)
    try:
        rfd, wfd = os.pipe()
    except OSError as exc:
        return CommandResult(None, False, "", 0.0, error=_reason(exc), timeout=timeout)
    try:
        proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=wfd,
            stderr=wfd,
            env=full_env,
            start_new_session=True,
            close_fds=True,
        )
    except Exception as exc:
        os.close(rfd)
        os.close(wfd)
        why = _reason(exc)
        if isinstance(exc, FileNotFoundError | PermissionError):
            why = program_problem(tuple(argv)) or why
        took = time.monotonic() - start
        return CommandResult(None, False, "", took, error=why, timeout=timeout)
    os.close(wfd)
    tail = _Tail(rfd)
    if groups is not None:
        groups.add(proc.pid)
    exited = _wait_exit(proc.pid, timeout - (time.monotonic() - start))
    lock = groups.lock if groups is not None else contextlib.nullcontext()
    with lock:
        if not exited:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
        if groups is not None:
            groups.discard(proc.pid)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=None if exited else _REAP_GRACE)
    duration = time.monotonic() - start
    # The pipe ends when every holder of its write end is gone; a lingering descendant may keep
    # it open, so wait only a moment for the rest of the output.
    tail.thread.join(_REAP_GRACE)
    code = None if not exited else proc.returncode
    return CommandResult(code, not exited, tail.text(), duration, pid=proc.pid, timeout=timeout)


def check_exec(
    check: ExecCheckConfig,
    env: Mapping[str, str] | None = None,
    groups: ProcessGroups | None = None,
) -> CheckResult:
    """Pass when the command exits 0 within the timeout."""
    r = run_command(check.command, check.timeout, env, groups)
    last = r.last_line()
    detail = r.describe() + (f": {last}" if last else "")
    return CheckResult(r.returncode == 0, detail, r.output, r.duration)


# --------------------------------------------------------------------------- interface


def check_interface(name: str) -> CheckResult:
    """Pass when the interface is administratively up (IFF_UP) and running (IFF_RUNNING)."""
    start = time.monotonic()
    try:
        raw = name.encode()
        if not raw or len(raw) >= 16 or b"\0" in raw:
            return CheckResult(False, f"{name!r} is not a valid interface name")
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            req = struct.pack("16sH22x", raw, 0)
            res = fcntl.ioctl(s.fileno(), _SIOCGIFFLAGS, req)
        flags = struct.unpack_from("16sH", res)[1]
    except OSError as exc:
        took = time.monotonic() - start
        if exc.errno == errno.ENODEV:
            return CheckResult(False, f"no interface {name!r}", duration=took)
        return CheckResult(False, f"{name}: {_reason(exc)}", duration=took)
    took = time.monotonic() - start
    if not flags & _IFF_UP:
        return CheckResult(False, f"{name} is administratively down", duration=took)
    if not flags & _IFF_RUNNING:
        return CheckResult(False, f"{name} is up but has no carrier (not RUNNING)", duration=took)
    return CheckResult(True, f"{name} is up with carrier", duration=took)


# --------------------------------------------------------------------------- dispatch


def run_check(
    check: CheckConfig,
    *,
    interface: str | None = None,
    env: Mapping[str, str] | None = None,
    groups: ProcessGroups | None = None,
) -> CheckResult:
    """Run ``check`` once. Never raises.

    ``interface``: for an interface check without an interface of its own; ``env``: added to
    an exec check's environment; ``groups``: where an exec check's process group is held while
    it runs.
    """
    try:
        if isinstance(check, TcpCheckConfig):
            return check_tcp(check.host, check.port, check.timeout)
        if isinstance(check, HttpCheckConfig):
            return check_http(check)
        if isinstance(check, ExecCheckConfig):
            return check_exec(check, env, groups)
        if isinstance(check, InterfaceCheckConfig):
            name = check.interface or interface
            if name is None:
                return CheckResult(False, "no interface to check")
            return check_interface(name)
        return CheckResult(False, f"unknown check type {type(check).__name__}")
    except Exception as exc:  # a bug in a runner must not take the monitor down
        return CheckResult(False, f"check error: {type(exc).__name__}: {exc}")

"""The fence's only etcd call: revoke the lease of an agent that can no longer hold it.

:class:`LeaseRevoker` connects in the background as soon as the fence knows etcd and keeps
that connection (answering the server's PINGs, reconnecting when it breaks), so that an
agent's death costs one call, not a connection set-up, before the other hosts see its keys
go. It speaks gRPC through ``haagent.fence.rpc`` (the ``h2`` library on a socket: see there
why not grpcio, and why not etcd's JSON gateway).

Password users log in (``Authenticate``) when connecting and send the token with the call.
etcd forgets a token after ``--auth-token-ttl`` (300 s) without an auth-checked request, and
an idle fence makes none, so a revoke answered "invalid auth token" logs in again and is
retried once, as the agent's store does with its calls.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from haagent.fence.rpc import (
    NOT_FOUND,
    UNAUTHENTICATED,
    CallError,
    Connection,
    ConnectionLost,
    pb_field,
    pb_fields,
)
from haagent.fence.setup import Endpoint, EtcdSettings

if TYPE_CHECKING:
    import ssl

log = logging.getLogger("haagent.fence")

REVOKE = "/etcdserverpb.Lease/LeaseRevoke"
AUTHENTICATE = "/etcdserverpb.Auth/Authenticate"
INVALID_ARGUMENT, FAILED_PRECONDITION = 3, 9
IDLE_WAKE = 30.0  # s: how often an idle, connected thread looks up (a wake-up ends it sooner)

# What every "cannot use etcd" line ends with: the fence's revoke is best effort.
EXPIRES_BY_ITSELF = "a dead agent's lease expires by itself"

# How a revoke ended.
REVOKED, GONE, FAILED, UNREACHABLE = "revoked", "gone", "failed", "unreachable"


@dataclass
class _Job:
    lease: int
    connect_by: float  # the last moment to start a connection attempt for it
    done: threading.Event = field(default_factory=threading.Event)
    outcome: str = UNREACHABLE
    detail: str = ""


def describe(exc: BaseException, endpoint: Endpoint) -> str:
    """One line: which member, and what went wrong with it."""
    verify = getattr(exc, "verify_message", None)
    if verify:  # ssl.SSLCertVerificationError
        return f"{endpoint}: etcd's TLS certificate did not verify ({verify})"
    if isinstance(exc, TimeoutError):
        return f"{endpoint}: no answer in time"
    if isinstance(exc, OSError) and exc.strerror:
        return f"{endpoint}: {exc.strerror}"
    return f"{endpoint}: {exc}"


class LeaseRevoker:
    """Keeps a connection to etcd ready and revokes a lease on request (thread-safe)."""

    def __init__(self, settings: EtcdSettings) -> None:
        self.settings = settings
        self.timeout = settings.timeout
        self._lock = threading.Lock()
        self._job: _Job | None = None
        self._closing = False
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        # Owned by the thread from here on.
        self._conn: Connection | None = None
        self._token: str | None = None
        self._context: ssl.SSLContext | None = None
        self._fatal: str | None = None  # no retry can fix it: stop trying
        self._first = 0  # index of the endpoint to try first: the last one that worked
        self._failures = 0
        self._reported: str | None = None  # the connection failure logged last
        self._thread = threading.Thread(target=self._run, name="fence-etcd", daemon=True)
        self._thread.start()

    @property
    def budget(self) -> float:
        """The longest a revoke takes: ``2 * timeout`` to connect, then the call — and, for
        a password user whose token expired, a login and the call again."""
        return 5 * self.timeout + 0.5

    def revoke(self, lease_id: int, why: str) -> bool:
        """Revoke ``lease_id``; True if this call did. Logs the outcome, never raises."""
        job = _Job(lease_id, connect_by=time.monotonic() + 2 * self.timeout)
        with self._lock:
            self._job = job
        self._wake()
        if not self._thread.is_alive():
            outcome, detail = UNREACHABLE, self._fatal or "its etcd thread is gone"
        elif job.done.wait(self.budget):
            outcome, detail = job.outcome, job.detail
        else:
            outcome, detail = UNREACHABLE, f"no outcome within {self.budget:.1f}s"
        if outcome == REVOKED:
            log.warning("fence revoked lease %x (%s): the other hosts take over now", lease_id, why)
            return True
        if outcome == GONE:
            log.info("lease %x was already gone", lease_id)
        elif outcome == FAILED:
            log.warning(
                "fence could not revoke lease %x (%s); etcd expires it after its ttl",
                lease_id,
                detail,
            )
        else:
            log.warning(
                "fence could not reach etcd to revoke lease %x (%s); etcd expires it after its ttl",
                lease_id,
                detail,
            )
        return False

    def close(self) -> None:
        self._closing = True
        self._wake()
        self._thread.join(self.timeout + 0.5)
        if not self._thread.is_alive():  # else it may still select() on them: exit frees them
            wake_r, wake_w, self._wake_r, self._wake_w = self._wake_r, self._wake_w, -1, -1
            os.close(wake_r)
            os.close(wake_w)  # a late _wake() now writes to -1, never to a reused descriptor

    # -- the thread -------------------------------------------------------------------

    def _wake(self) -> None:
        # A full pipe wakes the thread as well; a closed one means it is gone.
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"!")

    def _run(self) -> None:
        retry_at = 0.0
        try:
            while not self._closing:  # every wait below is bounded
                with self._lock:
                    job = self._job
                if job is not None:
                    self._serve(job)
                    with self._lock:
                        if self._job is job:
                            self._job = None
                    continue
                now = time.monotonic()
                if self._conn is None and self._fatal is None and now >= retry_at:
                    if self._connect(now + self.timeout * len(self.settings.endpoints)) is None:
                        self._failures = 0
                    else:
                        self._failures += 1
                        retry_at = time.monotonic() + min(5.0, 0.2 * 2 ** min(self._failures, 5))
                if self._conn is not None or self._fatal is not None:
                    self._idle(IDLE_WAKE)
                else:
                    self._idle(max(0.0, retry_at - time.monotonic()))
        except Exception as exc:  # a bug here must not kill the fence with a traceback
            self._fatal = f"internal error: {type(exc).__name__}: {exc}"
            log.error("fence stopped using etcd (%s): %s", exc, EXPIRES_BY_ITSELF)
            with self._lock:
                job, self._job = self._job, None
            if job is not None:
                job.detail = self._fatal
                job.done.set()
        finally:
            self._drop()

    def _idle(self, wait: float) -> None:
        """Wait for a wake-up or for the server (PINGs, GOAWAY, a closed connection)."""
        conn = self._conn
        sock = -1 if conn is None else conn.fileno()
        if conn is not None and conn.buffered():
            wait = 0.0
        watched = [self._wake_r] if sock < 0 else [self._wake_r, sock]
        try:
            ready, _, _ = select.select(watched, [], [], wait)
        except (OSError, ValueError):
            ready = []
        if self._wake_r in ready:
            with contextlib.suppress(OSError):
                os.read(self._wake_r, 4096)
        if conn is not None and (sock in ready or conn.buffered()):
            try:
                conn.service()
                lost = conn.closed  # a GOAWAY: leave politely
            except ConnectionLost as exc:
                lost = str(exc)
            if lost is not None:
                log.info("fence lost its etcd connection (%s); reconnecting", lost)
                self._drop()

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def _tls(self) -> ssl.SSLContext | None:
        if self._context is None and any(e.secure for e in self.settings.endpoints):
            import ssl  # only https needs it: ~5 MB of RSS a plain-http fence does without

            s = self.settings
            try:
                context = ssl.create_default_context(cafile=s.ca)
                if s.cert is not None:
                    context.load_cert_chain(s.cert, s.key)
            except (OSError, ValueError) as exc:
                reason = getattr(exc, "strerror", None) or str(exc)
                self._give_up(f"cannot load etcd.tls files: {reason}")
                return None
            context.set_alpn_protocols(["h2"])
            self._context = context
        return self._context

    def _give_up(self, reason: str) -> None:
        """No retry can fix ``reason`` (the settings): stop trying, say so once."""
        self._fatal = reason
        # The agent, with the same settings, says so as its error.
        log.warning("fence cannot use etcd (%s): %s", reason, EXPIRES_BY_ITSELF)

    def _connect(self, until: float) -> str | None:
        """Connect to the first member that answers (and log in); why not, if none did."""
        endpoints = self.settings.endpoints
        context = self._tls()
        if self._fatal is not None:
            return self._fatal
        reasons: list[str] = []
        for k in range(len(endpoints)):
            i = (self._first + k) % len(endpoints)
            endpoint = endpoints[i]
            left = until - time.monotonic()
            if left <= 0:
                reasons.append("no time left to try the others")
                break
            try:
                conn = Connection(
                    endpoint.host,
                    endpoint.port,
                    min(self.timeout, left),
                    context if endpoint.secure else None,
                )
            except (OSError, ConnectionLost) as exc:
                reasons.append(describe(exc, endpoint))
                continue
            try:
                self._login(conn)
            except ConnectionLost as exc:
                conn.close()
                reasons.append(describe(exc, endpoint))
                continue
            except CallError as exc:
                conn.close()
                if self._fatal is not None:
                    return self._fatal
                reasons.append(describe(exc, endpoint))
                continue
            self._first = i
            self._conn = conn
            if self._reported is not None or self._failures:
                log.info("fence connected to etcd %s", endpoint)
            self._reported = None
            return None
        reason = "; ".join(reasons)
        if reason != self._reported:
            log.warning("fence cannot reach etcd yet (%s); it keeps trying", reason)
            self._reported = reason
        return reason

    def _login(self, conn: Connection) -> None:
        """Get a token for a password user (nothing to do for a certificate identity)."""
        s = self.settings
        if s.username is None:
            return
        request = pb_field(1, s.username.encode()) + pb_field(2, (s.password or "").encode())
        try:
            answer = conn.call(AUTHENTICATE, request, [], self.timeout)
        except CallError as exc:
            if exc.status == FAILED_PRECONDITION and "not enabled" in exc.message:
                self._token = None  # auth was switched off: calls need no token now
                return
            if exc.status == INVALID_ARGUMENT and "authentication failed" in exc.message:
                self._give_up(f"authentication failed: wrong etcd.username or password ({exc})")
            raise
        try:
            token = pb_fields(answer).get(2)
        except ValueError as exc:
            raise ConnectionLost(f"etcd's login answer is unreadable: {exc}") from None
        if not isinstance(token, bytes) or not token:
            raise ConnectionLost("etcd's login answer has no token")
        self._token = token.decode("ascii", "replace")

    def _serve(self, job: _Job) -> None:
        """Carry one revoke out; bounded by the job's connection deadline and a few calls."""
        reason = "not connected yet"
        relogin = self.settings.username is not None
        for _ in range(64):  # connection attempts 0.1 s apart, reconnects, one re-login
            if self._closing:
                reason = "the fence is exiting"
                break
            if self._conn is None:
                if self._fatal is not None:
                    reason = self._fatal
                    break
                if time.monotonic() >= job.connect_by:
                    break
                failure = self._connect(job.connect_by)
                if failure is not None:
                    reason = failure
                    # A member restarting refuses for a moment: try again shortly.
                    self._idle(min(0.1, max(0.0, job.connect_by - time.monotonic())))
                    continue
            conn = self._conn
            if conn is None:
                continue
            metadata = [] if self._token is None else [("token", self._token)]
            try:
                conn.call(REVOKE, pb_field(1, job.lease), metadata, self.timeout)
            except ConnectionLost as exc:
                reason = str(exc)
                self._drop()
                continue
            except CallError as exc:
                if relogin and exc.status == UNAUTHENTICATED and "auth token" in exc.message:
                    relogin = False
                    log.info("fence logs in to etcd again: %s", exc)
                    try:
                        self._login(conn)
                    except ConnectionLost as lost:
                        reason = str(lost)
                        self._drop()
                    except CallError as refused:
                        self._finish(job, FAILED, f"logging in again: {refused}")
                        return
                    continue
                self._finish(job, GONE if exc.status == NOT_FOUND else FAILED, str(exc))
                return
            self._finish(job, REVOKED, "")
            return
        self._finish(job, UNREACHABLE, reason)

    @staticmethod
    def _finish(job: _Job, outcome: str, detail: str) -> None:
        job.outcome, job.detail = outcome, detail
        job.done.set()

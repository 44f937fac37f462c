"""The Store: the only module that talks to etcd.

It owns the client and the prefix watch (the lease keepalive thread is
:mod:`haagent.store.keeper`), and turns what it reads into the typed events of
:mod:`haagent.store.events`. Values it cannot decode are logged once and ignored (or, for
holder keys, reported as held by ``UNREADABLE``, which the agent deletes: see docs/keys.md) —
never raised into the agent.

Facts about the client that shaped this code (measured against etcd 3.4 and etcd-sdk-python):

* An endpoint that failed once is skipped for ``time_retry`` seconds (default 300). After an
  etcd restart keepalives would fail for five minutes, so endpoints are created with the
  configured short ``retry_interval`` and failover on. When *every* endpoint failed recently
  the client refused all calls until one's interval ran out (with one endpoint: for a whole
  ``retry_interval`` after each failure, so a host back from a partition stayed deaf for up
  to 1 s); :class:`_Client` tries the one that failed longest ago instead.
* gRPC's own reconnect backoff grows to two minutes; it is capped at 250 ms here: while a host
  is cut off, each connection attempt waits out its whole backoff (the SYNs are dropped), so
  the cap is also how long after the heal the next attempt can start (2.4 s with the old 2 s).
* No watch resumes by itself: the watch thread re-creates it from the last seen revision + 1,
  and falls back to a fresh range read when that revision has been compacted away; it retries
  at most every :data:`WATCH_RETRY_MAX` seconds, and at once when the agent asks.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import grpc
import pyetcd
import pyetcd.events
import pyetcd.utils
from pyetcd import exceptions as etcd_exc
from pyetcd import transactions as etcd_transactions
from pyetcd.client import EtcdTokenCallCredentials
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception,
    sleep_using_event,
    stop_after_delay,
    stop_never,
    stop_when_event_set,
    wait_exponential,
)

from haagent.cluster.schema import (
    Drain,
    Holder,
    Keys,
    MemberRecord,
    Released,
    Request,
    SchemaError,
    Suspicion,
    Verdict,
)
from haagent.cluster.view import (
    ClusterView,
    DrainChange,
    HolderChange,
    MemberChange,
    ReleasedChange,
    RequestChange,
    SuspicionChange,
    VerdictChange,
)
from haagent.config import EtcdConfig
from haagent.logs import printable
from haagent.store.errors import (
    ETCD_ERRORS,
    StoreError,
    _auth_problem,
    _tls_problem,
    _token_expired,
    describe_error,
)
from haagent.store.events import Sink, StoreEvent, ViewLoaded, WatchBroken, WatchResumed

log = logging.getLogger("haagent.store")


class NodeNameTaken(StoreError):
    """Another live agent's member record holds this node name."""

    def __init__(self, node: str, lease: int, address: str | None) -> None:
        at = f" at {address}" if address else ""
        super().__init__(
            f"node name {node!r} is already used by another running agent{at} (its member "
            f"record hangs on lease {lease:x}); give every host its own node name"
        )


class _LeaseOf(etcd_transactions.BaseCompare):  # type: ignore[misc]
    """Compare a key's lease (etcd >= 3.3); the client library offers no such compare."""

    def build_compare(self, compare: Any) -> None:
        compare.target = pyetcd.etcdrpc.Compare.LEASE
        compare.lease = int(self.value)


# (key, revision) pairs remembered so that each foreign value is logged once (its key by hash:
# a key may be as long as etcd allows, and what is remembered must not grow with it).
WARNED_LIMIT = 10_000

# Campaigns per transaction: etcd refuses more than --max-txn-ops (default 128) per level.
CAMPAIGN_BATCH = 64

# Seconds between attempts to re-create a broken watch: the first retry after WATCH_RETRY_MIN,
# then doubling up to WATCH_RETRY_MAX. An attempt while etcd is unreachable fails locally
# (the channel is down), so a short cap costs etcd nothing; a long one was what kept a host
# back from a partition without a watch for up to 2 s after its lease came back.
WATCH_RETRY_MIN = 0.1
WATCH_RETRY_MAX = 0.2


def _grpc_options() -> list[tuple[str, int]]:
    # A connection attempt to an unreachable member (a partition drops the SYNs) lasts until
    # the next backoff (at least min_reconnect_backoff_ms, gRPC's minimum connect timeout) and
    # the next one starts right after: one SYN per channel every 200-300 ms at most (jitter
    # 20 %), and an attempt starts at most that long after the heal. A member that refuses
    # (down, RST) is retried at the same rate. A handshake (TCP, TLS, HTTP/2) must complete
    # within 200 ms (up to 300): no new limit, start-up needed that already (each of its
    # attempts is a new client, whose first connection attempt gets 200 ms), measured through
    # a relay adding 80 ms each way, which neither the old options nor these ever connect over.
    return [
        ("grpc.initial_reconnect_backoff_ms", 200),
        ("grpc.min_reconnect_backoff_ms", 200),
        ("grpc.max_reconnect_backoff_ms", 250),
        # Detect a silently dead connection (partition) under a long-lived watch. etcd refuses
        # pings more often than every 5 s (--grpc-keepalive-min-time), hence 6 s.
        ("grpc.keepalive_time_ms", 6000),
        ("grpc.keepalive_timeout_ms", 3000),
    ]


class _Client(pyetcd.MultiEndpointEtcd3Client):  # type: ignore[misc]
    """pyetcd's client, except when every endpoint failed within its ``time_retry``.

    pyetcd then raises NoServerAvailableError without trying anything, until the first
    endpoint's interval runs out. With one endpoint that is every call for ``retry_interval``
    (1 s) after each failure: the calls a host makes right after a partition heals (the
    keepalive that learns the lease expired, the new lease, the watch) were refused for up to
    a second although etcd answered. Instead, the endpoint that failed longest ago is tried;
    while a member is really down its gRPC channel fails the call at once, and a call that
    fails marks the endpoint again, so the endpoints take turns.
    """

    @property
    def channel(self) -> Any:
        try:
            return super().channel
        except etcd_exc.NoServerAvailableError:
            pass
        label = min(self.endpoints, key=lambda name: self.endpoints[name].last_failed)
        self._current_endpoint_label = label  # clears the cached stubs if it is another one
        endpoint = self.endpoints[label]
        endpoint.last_failed = 0  # tried again now; a failure marks it afresh
        return endpoint.use()


R = TypeVar("R")


def _relogin_once(call: Callable[..., R]) -> Callable[..., R]:
    """Run a Store call; if etcd says the login token expired, log in again and retry once.

    The client logs in once, at creation. etcd drops a password token after
    ``--auth-token-ttl`` (default 300 s) without an auth-checked request — keepalives do not
    count — so an idle standby would otherwise fail every campaign from then on.
    """

    @functools.wraps(call)
    def wrapper(self: Store, *args: Any, **kwargs: Any) -> R:
        try:
            return call(self, *args, **kwargs)
        except ETCD_ERRORS as exc:
            if not _token_expired(exc):
                raise
            self._relogin()
            return call(self, *args, **kwargs)

    return wrapper


class Store:
    def __init__(self, cfg: EtcdConfig, keys: Keys) -> None:
        self.cfg = cfg
        self.keys = keys
        self._client: Any = None
        self._warned: set[tuple[int, int]] = set()  # (hash of the key, revision)
        self._watch_thread: threading.Thread | None = None
        self._watch_stop = threading.Event()
        self._rewatch = threading.Event()
        self._login_lock = threading.Lock()
        self._next_revision = 0
        self._connect_attempts = 0

    # -- connection ----------------------------------------------------------------------

    def _make_client(self) -> Any:
        creds = None
        tls = self.cfg.tls
        if tls is not None:
            creds = grpc.ssl_channel_credentials(
                tls.ca.read_bytes() if tls.ca else None,
                tls.key.read_bytes() if tls.key else None,
                tls.cert.read_bytes() if tls.cert else None,
            )
        endpoints = [
            pyetcd.Endpoint(
                # gRPC targets are "host:port": an IPv6 literal needs its brackets back.
                f"[{host}]" if ":" in host else host,
                port,
                secure=secure,
                creds=creds if secure else None,
                time_retry=self.cfg.retry_interval,
                opts=_grpc_options(),
            )
            for host, port, secure in self.cfg.parsed_endpoints()
        ]
        client = _Client(
            endpoints=endpoints,
            timeout=self.cfg.timeout,
            user=self.cfg.username,
            password=self.cfg.password,
            failover=True,
        )
        try:
            client.status()  # prove it answers before anyone relies on it
            # Prove this account may read the prefix and write in it (what every later call
            # needs), so that a missing permission stops start-up with a clear error instead of
            # surfacing at the first write. The compare is always false, so nothing is written;
            # etcd checks the permissions of both branches anyway.
            tx = client.transactions
            prefix = self.keys.prefix
            end = pyetcd.utils.prefix_range_end(prefix.encode())
            client.transaction(
                compare=[tx.version(prefix, range_end=end) < 0],
                success=[tx.put(prefix, b"")],
                failure=[],
            )
        except BaseException:
            client.close()
            raise
        return client

    def connect(
        self, *, give_up_after: float | None = None, cancel: threading.Event | None = None
    ) -> None:
        """Connect, retrying with capped exponential backoff.

        Forever unless ``give_up_after`` seconds pass or ``cancel`` is set (then StoreError).
        Errors no retry can fix raise StoreError at once: bad credentials, missing permissions,
        and TLS trust failures once every endpoint has shown one.
        """
        cancel = cancel or threading.Event()
        tls_failed: set[str] = set()
        fatal: list[str] = []

        def retryable(exc: BaseException) -> bool:
            if not isinstance(exc, ETCD_ERRORS):
                return False
            reason = _auth_problem(exc, self.keys.prefix)
            if reason is None and (tls := _tls_problem(exc)) is not None:
                # TLS trust is per member: one with a bad certificate must not keep us away
                # from the others. Give up once as many members as we know failed that way.
                tls_failed.add(tls[1] or f"attempt {len(tls_failed) + 1}")
                if len(tls_failed) >= len(self.cfg.endpoints):
                    reason = tls[0]
            if reason is not None:
                fatal.append(reason)
            return reason is None

        def before_sleep(state: RetryCallState) -> None:
            # One count across calls: start-up connects twice (bounded, then for good).
            self._connect_attempts += 1
            exc = state.outcome.exception() if state.outcome else None
            wait = state.next_action.sleep if state.next_action else 0.0
            tls = _tls_problem(exc) if exc else None  # its details say more than pyetcd's
            log.warning(
                "etcd %s not reachable (%s); retry %d in %.1fs",
                ",".join(self.cfg.endpoints),
                tls[0] if tls else describe_error(exc) if exc else "?",
                self._connect_attempts,
                wait,
            )

        retrying = Retrying(
            retry=retry_if_exception(retryable),
            wait=wait_exponential(multiplier=0.2, max=5.0),
            stop=(stop_never if give_up_after is None else stop_after_delay(give_up_after))
            | stop_when_event_set(cancel),
            sleep=sleep_using_event(cancel),  # a set cancel cuts the backoff short
            before_sleep=before_sleep,
            reraise=True,
        )
        try:
            self._client = retrying(self._make_client)
        except ETCD_ERRORS as exc:
            eps = ",".join(self.cfg.endpoints)
            if fatal:
                raise StoreError(f"etcd {eps}: {fatal[-1]}; not retrying") from None
            raise StoreError(f"etcd {eps} not reachable: {describe_error(exc)}") from None
        log.info("connected to etcd %s", ",".join(self.cfg.endpoints))

    @property
    def connected(self) -> bool:
        return self._client is not None

    @property
    def client(self) -> Any:
        if self._client is None:
            raise StoreError("not connected")
        return self._client

    def close(self) -> None:
        self.stop_watch()
        if self._client is not None:
            self._client.close()
            self._client = None

    # -- decoding ------------------------------------------------------------------------

    def _warn_once(self, key: str, revision: int, why: str) -> None:
        seen = (hash(key), revision)
        if seen not in self._warned:
            if len(self._warned) >= WARNED_LIMIT:  # a flood of junk keys costs bounded memory
                self._warned.clear()
            self._warned.add(seen)
            log.warning("ignoring %s (revision %d): %s", printable(key), revision, printable(why))

    def _holder_from_kv(
        self, key: str, value: bytes, lease: int, create_rev: int, mod_rev: int
    ) -> Holder:
        # An unreadable key still exists, so nobody can create it: it is reported held by
        # UNREADABLE rather than absent, which would make every node campaign in vain.
        holder = Holder.from_kv(value, lease, create_rev)
        if holder.problem is not None:
            self._warn_once(key, mod_rev, f"malformed holder record: {holder.problem}")
        return holder

    def _member_from_kv(
        self, key: str, name: str, value: bytes, lease: int, mod_rev: int
    ) -> MemberRecord | None:
        """The record, or None for one no agent of ``name`` can have written: a member record
        lives exactly as long as its agent's session, so it must hang on the lease it names."""
        try:
            member = MemberRecord.from_json(value)
        except SchemaError as exc:
            self._warn_once(key, mod_rev, f"malformed member record: {exc}")
            return None
        if lease == 0 or member.lease != lease or member.node != name:
            self._warn_once(
                key,
                mod_rev,
                f"member record of {member.node} names lease {member.lease:x} but hangs on "
                f"{'no lease' if lease == 0 else f'lease {lease:x}'}: not written by haagent",
            )
            return None
        return member

    def _released_from_kv(
        self, key: str, value: bytes, lease: int, mod_rev: int
    ) -> Released | None:
        # Only a live session can vouch: a record on no lease is someone else's forgery.
        if lease == 0:
            self._warn_once(key, mod_rev, "release record on no lease: not written by haagent")
            return None
        try:
            return Released.from_json(value)
        except SchemaError as exc:
            self._warn_once(key, mod_rev, f"malformed release record: {exc}")
            return None

    def _request_from_kv(self, key: str, value: bytes, mod_rev: int) -> Request | None:
        try:
            return Request.from_json(value, revision=mod_rev)
        except SchemaError as exc:
            self._warn_once(key, mod_rev, f"malformed request: {exc}")
            return None

    def _suspicion_from_kv(
        self, key: str, target: str, by: str, value: bytes, lease: int, create_rev: int
    ) -> Suspicion | None:
        # A suspicion binds its writer only while its session lives: on no lease, a forgery.
        try:
            sus = Suspicion.from_json(
                value, target, by, own_lease=lease, create_revision=create_rev
            )
        except SchemaError as exc:
            self._warn_once(key, create_rev, f"malformed suspicion: {exc}")
            return None
        if lease == 0:
            self._warn_once(key, create_rev, "suspicion on no lease: not written by haagent")
            return None
        return sus

    def _verdict_from_kv(
        self, key: str, target: str, value: bytes, lease: int, mod_rev: int
    ) -> Verdict | None:
        try:
            return Verdict.from_json(value, target, own_lease=lease, revision=mod_rev)
        except SchemaError as exc:
            self._warn_once(key, mod_rev, f"malformed verdict: {exc}")
            return None

    def _drain_from_kv(self, key: str, value: bytes, mod_rev: int) -> Drain | None:
        try:
            return Drain.from_json(value, revision=mod_rev)
        except SchemaError as exc:
            self._warn_once(key, mod_rev, f"malformed drain record: {exc}")
            return None

    def _relogin(self) -> None:
        """Log in again with the configured user and password, on the existing channels."""
        if not (self.cfg.username and self.cfg.password):
            raise StoreError("etcd says the auth token expired, but no password is configured")
        client = self.client
        with self._login_lock:
            resp = client.authstub.Authenticate(
                pyetcd.etcdrpc.AuthenticateRequest(
                    name=self.cfg.username, password=self.cfg.password
                ),
                self.cfg.timeout,
            )
            # The same fields pyetcd's constructor sets after its own login.
            client.metadata = (("token", resp.token),)
            client.call_credentials = grpc.metadata_call_credentials(
                EtcdTokenCallCredentials(resp.token)
            )
            client._clear_old_stubs()  # the cached watcher holds the old token
        log.info("etcd auth token had expired; logged in again as %s", self.cfg.username)

    @_relogin_once
    def _add_watch(self, inbox: queue.Queue[Any]) -> int:
        return int(
            self.client.add_watch_prefix_callback(
                self.keys.prefix, inbox.put, start_revision=self._next_revision
            )
        )

    # -- reads ---------------------------------------------------------------------------

    @_relogin_once
    def snapshot(self) -> ClusterView:
        """The whole picture from one range read of the prefix."""
        resp = self.client.get_prefix_response(self.keys.prefix)
        holders: dict[str, Holder] = {}
        members: dict[str, MemberRecord] = {}
        requests: dict[str, Request] = {}
        released: dict[str, Released] = {}
        drains: dict[str, Drain] = {}
        suspicions: dict[str, dict[str, Suspicion]] = {}
        verdicts: dict[str, Verdict] = {}
        for kv in resp.kvs:
            key = kv.key.decode("utf-8", "replace")
            parsed = self.keys.parse(key)
            if parsed is None:
                self._warn_once(key, kv.mod_revision, "not a key this version knows")
            elif parsed.kind == "holder":
                holders[parsed.name] = self._holder_from_kv(
                    key, kv.value, kv.lease, kv.create_revision, kv.mod_revision
                )
            elif parsed.kind == "member":
                member = self._member_from_kv(key, parsed.name, kv.value, kv.lease, kv.mod_revision)
                if member is not None:
                    members[parsed.name] = member
            elif parsed.kind == "request":
                request = self._request_from_kv(key, kv.value, kv.mod_revision)
                if request is not None:
                    requests[parsed.name] = request
            elif parsed.kind == "released":
                rel = self._released_from_kv(key, kv.value, kv.lease, kv.mod_revision)
                if rel is not None:
                    released[parsed.name] = rel
            elif parsed.kind == "drain":
                drain = self._drain_from_kv(key, kv.value, kv.mod_revision)
                if drain is not None:
                    drains[parsed.name] = drain
            elif parsed.kind == "suspect":
                sus = self._suspicion_from_kv(
                    key, parsed.name, parsed.by, kv.value, kv.lease, kv.create_revision
                )
                if sus is not None:
                    suspicions.setdefault(parsed.name, {})[parsed.by] = sus
            elif parsed.kind == "verdict":
                verdict = self._verdict_from_kv(
                    key, parsed.name, kv.value, kv.lease, kv.mod_revision
                )
                if verdict is not None:
                    verdicts[parsed.name] = verdict
        return ClusterView.of(
            int(resp.header.revision),
            members=members,
            holders=holders,
            requests=requests,
            released=released,
            drains=drains,
            suspicions=suspicions,
            verdicts=verdicts,
        )

    # -- lease ---------------------------------------------------------------------------

    @_relogin_once
    def grant(self, ttl: int) -> tuple[int, int, float]:
        """Grant a lease; returns (id, granted ttl, monotonic send time)."""
        sent = time.monotonic()
        lease = self.client.lease(ttl)
        return int(lease.id), int(lease.ttl), sent

    def keepalive(self, lease_id: int) -> tuple[int, float]:
        """One keepalive; returns (granted ttl, monotonic send time). ttl <= 0: lease gone."""
        sent = time.monotonic()
        for resp in self.client.refresh_lease(lease_id):
            return int(resp.TTL), sent
        raise StoreError("keepalive stream closed without an answer")

    @_relogin_once
    def lease_alive(self, lease_id: int) -> bool:
        resp = self.client.get_lease_info(lease_id)
        return int(resp.TTL) > 0

    @_relogin_once
    def revoke(self, lease_id: int) -> None:
        self.client.revoke_lease(lease_id)

    # -- writes --------------------------------------------------------------------------

    @_relogin_once
    def put_member(self, record: MemberRecord, lease_id: int) -> None:
        """Write this node's member record on ``lease_id`` if the key is free or already ours.

        A node name names one agent: a second host configured with the same name must not
        overwrite the first one's record (its peers would then judge the wrong host's
        health). Raises :class:`NodeNameTaken` when the key hangs on another live lease.
        """
        key = self.keys.member(record.node)
        tx = self.client.transactions
        put = tx.put(key, record.to_json(), lease=lease_id)
        # Free, ours, or on no lease (written by hand: no live agent's claim) -> ours now.
        unleased = tx.txn(compare=[_LeaseOf(key) == 0], success=[put], failure=[tx.get(key)])
        ok, responses = self.client.transaction(
            compare=[tx.create(key) == 0],
            success=[put],
            failure=[
                tx.txn(compare=[_LeaseOf(key) == lease_id], success=[put], failure=[unleased])
            ],
        )
        if ok:
            return
        inner = responses[0].response_txn
        if inner.succeeded:
            return
        inner = inner.responses[0].response_txn
        if inner.succeeded:
            return
        kvs = inner.responses[-1].response_range.kvs
        other = int(kvs[0].lease) if kvs else 0
        address = None
        if kvs:
            with contextlib.suppress(SchemaError):
                address = MemberRecord.from_json(kvs[0].value).address
        raise NodeNameTaken(record.node, other, address)

    @_relogin_once
    def campaign(
        self, records: Sequence[tuple[str, Holder]]
    ) -> list[tuple[bool, Holder | None, int]]:
        """Create each VIP's holder key on our lease, each only if absent, in one round trip.

        ``records`` are (vip, the holder record to write). One outer transaction carries a
        nested "if create_revision(key) == 0 then put it on my lease and read it, else read it"
        per VIP: etcd runs them atomically at one revision, each deciding for its own key
        exactly as a lone transaction would, so a batch changes the cost (one RPC instead of
        N), never who wins. etcd refuses more than ``--max-txn-ops`` (default 128) operations
        per transaction level: callers batch at most :data:`CAMPAIGN_BATCH`.

        Returns, per record and in order, (won, the holder as etcd now has it, the revision
        that answer reflects).
        """
        if not records:
            return []
        tx = self.client.transactions
        keys = [self.keys.holder(vip) for vip, _ in records]
        ops = [
            tx.txn(
                compare=[tx.create(key) == 0],
                success=[tx.put(key, holder.to_json(), lease=holder.lease), tx.get(key)],
                failure=[tx.get(key)],
            )
            for key, (_, holder) in zip(keys, records, strict=True)
        ]
        _, responses = self.client.transaction(compare=[], success=ops, failure=[])
        results: list[tuple[bool, Holder | None, int]] = []
        for key, resp in zip(keys, responses, strict=True):
            inner = resp.response_txn
            kvs = inner.responses[-1].response_range.kvs
            if not kvs:
                # Deleted between compare and read cannot happen inside one txn; be explicit.
                results.append((bool(inner.succeeded), None, 0))
                continue
            kv = kvs[0]
            holder = self._holder_from_kv(
                key, kv.value, kv.lease, kv.create_revision, kv.mod_revision
            )
            results.append((bool(inner.succeeded), holder, int(kv.mod_revision)))
        return results

    @_relogin_once
    def resign(
        self, vip: str, create_revision: int, released: Released | None = None, lease: int = 0
    ) -> bool:
        """Delete the holder key only if it is still the one we created.

        With ``released`` (on ``lease``), the same transaction writes the release record that
        lets the next holder bind at once: the address is gone before the key is
        (docs/safety.md, "Handover"). Without it (purging a key no haagent wrote) only the
        delete.
        """
        key = self.keys.holder(vip)
        tx = self.client.transactions
        success = [tx.delete(key)]
        if released is not None:
            success.append(tx.put(self.keys.released(vip), released.to_json(), lease=lease))
        ok, _ = self.client.transaction(
            compare=[tx.create(key) == create_revision], success=success, failure=[]
        )
        return bool(ok)

    # -- fast failover (docs/safety.md) ----------------------------------------------------

    @_relogin_once
    def suspect(self, sus: Suspicion, lease: int) -> None:
        self.client.put(self.keys.suspect(sus.target, sus.by), sus.to_json(), lease=lease)

    @_relogin_once
    def unsuspect(self, target: str, by: str) -> None:
        self.client.delete(self.keys.suspect(target, by))

    @_relogin_once
    def verdict(
        self,
        verdict: Verdict,
        lease: int,
        evidence: Sequence[tuple[str, int]],
        verdict_revision: int,
    ) -> bool:
        """Write ``verdict`` only if every suspicion counted is still the one seen
        (suspecter, create_revision) and the verdict key is as seen (mod_revision, 0:
        absent): a refute that deleted any of them wins."""
        tx = self.client.transactions
        key = self.keys.verdict(verdict.target)
        compare = [tx.mod(key) == verdict_revision]
        compare += [tx.create(self.keys.suspect(verdict.target, by)) == rev for by, rev in evidence]
        ok, _ = self.client.transaction(
            compare=compare, success=[tx.put(key, verdict.to_json(), lease=lease)], failure=[]
        )
        return bool(ok)

    @_relogin_once
    def refute(self, target: str, suspecters: Sequence[str], verdict_revision: int) -> bool:
        """Delete the suspicions of us (``target``) while no verdict has come since the one
        seen (``verdict_revision``, 0: none). False: a verdict came first."""
        tx = self.client.transactions
        ok, _ = self.client.transaction(
            compare=[tx.mod(self.keys.verdict(target)) == verdict_revision],
            success=[tx.delete(self.keys.suspect(target, by)) for by in suspecters],
            failure=[],
        )
        return bool(ok)

    @_relogin_once
    def confirm_release(self, vip: str, released: Released, lease: int) -> None:
        """Say, on our lease, that we no longer have the address of a key someone else took."""
        self.client.put(self.keys.released(vip), released.to_json(), lease=lease)

    # -- watch ---------------------------------------------------------------------------

    def start_watch(self, from_revision: int, sink: Sink) -> None:
        self._next_revision = from_revision
        self._watch_stop.clear()
        self._watch_thread = threading.Thread(
            target=self._watch_loop, args=(sink,), name="haagent-watch", daemon=True
        )
        self._watch_thread.start()

    def request_rewatch(self) -> None:
        """Re-create the watch from the last seen revision (after a connection came back);
        a broken watch waiting to retry retries at once."""
        self._rewatch.set()

    def stop_watch(self) -> None:
        self._watch_stop.set()
        self._rewatch.set()  # wakes a retry wait
        if self._watch_thread is not None:
            self._watch_thread.join(timeout=2.0)
            self._watch_thread = None

    def _watch_loop(self, sink: Sink) -> None:
        backoff = WATCH_RETRY_MIN
        broken = False
        while not self._watch_stop.is_set():
            inbox: queue.Queue[Any] = queue.Queue()
            self._rewatch.clear()
            try:
                watch_id = self._add_watch(inbox)
            except etcd_exc.RevisionCompactedError:
                log.warning(
                    "watch revision %d compacted; re-reading everything", self._next_revision
                )
                try:
                    snap = self.snapshot()
                except ETCD_ERRORS as exc:
                    broken = self._watch_failed(sink, broken, exc, backoff)
                    backoff = min(backoff * 2, WATCH_RETRY_MAX)
                    continue
                self._next_revision = snap.revision + 1
                sink(ViewLoaded(snap))
                continue
            except ETCD_ERRORS as exc:
                broken = self._watch_failed(sink, broken, exc, backoff)
                backoff = min(backoff * 2, WATCH_RETRY_MAX)
                continue
            if broken:
                log.info("watch resumed from revision %d", self._next_revision)
                sink(WatchResumed(self._next_revision))
                broken = False
            backoff = WATCH_RETRY_MIN
            err = self._pump(inbox, sink)
            with contextlib.suppress(*ETCD_ERRORS):
                self.client.cancel_watch(watch_id)
            if err is not None:
                broken = self._watch_failed(sink, broken, err, 0.0)

    def _watch_failed(
        self, sink: Sink, broken: bool, exc: BaseException | str, wait: float
    ) -> bool:
        why = exc if isinstance(exc, str) else describe_error(exc)
        if not broken:
            log.warning("watch broken (%s); resuming from revision %d", why, self._next_revision)
            sink(WatchBroken(why))
        # Cut short by request_rewatch (the agent just heard from etcd) and by stop_watch.
        self._rewatch.wait(wait)
        return True

    def _pump(self, inbox: queue.Queue[Any], sink: Sink) -> str | None:
        """Deliver watch responses until the stream breaks (returns why) or we are told to stop."""
        while not self._watch_stop.is_set():
            if self._rewatch.is_set():
                return None
            try:
                item = inbox.get(timeout=0.25)
            except queue.Empty:
                continue
            if item is None or isinstance(item, BaseException):
                return "stream closed" if item is None else describe_error(item)
            for ev in item.events:
                out = self._translate(ev)
                if out is not None:
                    sink(out)
            self._next_revision = max(self._next_revision, int(item.header.revision) + 1)
        return None

    def _translate(self, ev: Any) -> StoreEvent | None:
        key = ev.key.decode("utf-8", "replace")
        parsed = self.keys.parse(key)
        rev = int(ev.mod_revision)
        if parsed is None:
            self._warn_once(key, rev, "not a key this version knows")
            return None
        deleted = isinstance(ev, pyetcd.events.DeleteEvent)
        if parsed.kind == "holder":
            holder = None
            if not deleted:
                holder = self._holder_from_kv(key, ev.value, ev.lease, ev.create_revision, rev)
            return HolderChange(parsed.name, holder, rev)
        if parsed.kind == "member":
            member = (
                None if deleted else self._member_from_kv(key, parsed.name, ev.value, ev.lease, rev)
            )
            return MemberChange(parsed.name, member, rev)
        if parsed.kind == "released":
            rel = None if deleted else self._released_from_kv(key, ev.value, ev.lease, rev)
            return ReleasedChange(parsed.name, rel, rev)
        if parsed.kind == "drain":
            drain = None if deleted else self._drain_from_kv(key, ev.value, rev)
            return DrainChange(parsed.name, drain, rev)
        if parsed.kind == "suspect":
            sus = None
            if not deleted:
                sus = self._suspicion_from_kv(
                    key, parsed.name, parsed.by, ev.value, ev.lease, ev.create_revision
                )
            return SuspicionChange(parsed.name, parsed.by, sus, rev)
        if parsed.kind == "verdict":
            verdict = (
                None
                if deleted
                else self._verdict_from_kv(key, parsed.name, ev.value, ev.lease, rev)
            )
            return VerdictChange(parsed.name, verdict, rev)
        request = None if deleted else self._request_from_kv(key, ev.value, rev)
        return RequestChange(parsed.name, request, rev)

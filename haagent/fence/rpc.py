"""One unary gRPC call at a time over HTTP/2: the python-hyper ``h2`` library on a socket.

The fence makes one etcd call — ``LeaseRevoke``, plus ``Authenticate`` for password users —
so it frames that gRPC call itself on top of ``h2`` (HTTP/2 and HPACK, pure Python, under
1 MB of RSS) instead of importing grpcio (~20 MB of RSS). What is ours: the socket and TLS
(ALPN "h2"), gRPC's 5-byte message prefix and its status trailers, and the two or three
protobuf fields the calls need.

Why gRPC and not etcd's JSON gateway (``POST /v3/lease/revoke``, which etcd 3.4 does serve
on the client port, as does ``/v3beta/``): an etcd started with ``--client-cert-auth`` and
auth enabled — the set-up docs/security.md recommends — answers every gateway request whose
client certificate has a common name with HTTP 400 "CommonName of client sending a request
against gateway will be ignored and not used as expected", password token or not (measured
with etcd 3.4.23). Its gRPC service takes the same certificate as the user's identity.

``h2`` treats a GOAWAY as the end of the connection, so a call in flight when the server
sends one fails with :class:`ConnectionLost` (the caller reconnects and tries again).
"""

from __future__ import annotations

import contextlib
import socket
import struct
import sys
import time
from typing import TYPE_CHECKING
from urllib.parse import unquote

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
from hpack import HeaderTuple, NeverIndexedHeaderTuple

from haagent.fence.setup import Endpoint

if TYPE_CHECKING:
    import ssl

GRPC_STATUS = (
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
)
NOT_FOUND, UNAUTHENTICATED = 5, 16


class CallError(Exception):
    """The server answered the call with a gRPC error; the connection is still good.

    ``str()`` is ``"NOT_FOUND: etcdserver: requested lease not found"``, the way
    ``haagent.store.errors.describe_error`` words gRPC errors for the agent.
    """

    def __init__(self, status: int, message: str) -> None:
        name = GRPC_STATUS[status] if 0 <= status < len(GRPC_STATUS) else f"status {status}"
        super().__init__(f"{name}: {message}" if message else name)
        self.status = status
        self.message = message


class ConnectionLost(Exception):
    """The connection cannot carry (more) calls: closed, reset, timed out or garbled."""


# ----------------------------------------------------------------------------- protobuf


def varint(value: int) -> bytes:
    value &= (1 << 64) - 1  # int64 fields: two's complement, as protobuf sends them
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def pb_field(number: int, value: int | bytes) -> bytes:
    """One protobuf field: a varint, or length-delimited bytes/string."""
    if isinstance(value, int):
        return varint(number << 3) + varint(value)
    return varint(number << 3 | 2) + varint(len(value)) + value


def pb_fields(message: bytes) -> dict[int, int | bytes]:
    """The top-level fields of a protobuf message (the last one wins, as in protobuf)."""
    fields: dict[int, int | bytes] = {}
    i = 0

    def read_varint() -> int:
        nonlocal i
        value = 0
        for shift in range(0, 70, 7):
            byte = message[i]
            i += 1
            value |= (byte & 0x7F) << shift
            if not byte & 0x80:
                return value
        raise ValueError("protobuf varint too long")

    try:
        while i < len(message):
            key = read_varint()
            number, wire = key >> 3, key & 7
            if wire == 0:
                fields[number] = read_varint()
            elif wire == 2:
                length = read_varint()
                fields[number] = message[i : i + length]
                i += length
            elif wire in (1, 5):
                i += 8 if wire == 1 else 4
            else:
                raise ValueError(f"protobuf wire type {wire} not supported")
        if i > len(message):
            raise IndexError
    except IndexError:
        raise ValueError("truncated protobuf message") from None
    return fields


# --------------------------------------------------------------------------- connection


class Connection:
    """One HTTP/2 connection to one server; one call at a time; not thread-safe."""

    def __init__(
        self,
        host: str,
        port: int,
        timeout: float,
        context: ssl.SSLContext | None = None,
    ) -> None:
        """Connect, say hello and wait for the server's SETTINGS, all within ``timeout``.

        Raises OSError (TCP, TLS) or ConnectionLost (HTTP/2).
        """
        deadline = time.monotonic() + timeout
        self.authority = Endpoint(host, port, context is not None).authority
        self.scheme = "http" if context is None else "https"
        self._timeout = timeout
        raw = socket.create_connection((host, port), timeout=timeout)
        sock: socket.socket = raw
        try:
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            # Notice a silently dead connection within ~30 s of idling, not the kernel's
            # two hours: the fence reconnects before it needs the connection.
            raw.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 15)
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, 5)
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 3)
            if context is not None:
                raw.settimeout(max(0.001, deadline - time.monotonic()))
                tls = context.wrap_socket(raw, server_hostname=host)
                sock = tls
                if tls.selected_alpn_protocol() != "h2":
                    raise ConnectionLost("etcd did not agree to HTTP/2 in the TLS handshake")
        except BaseException:
            sock.close()  # the TLS socket once it wraps the raw one, which it detached
            raise
        self._sock = sock
        self._h2 = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
        )
        # h2's defaults, without server push.
        self._h2.local_settings = h2.settings.Settings(
            client=True,
            initial_values={
                h2.settings.SettingCodes.ENABLE_PUSH: 0,
                h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: 100,
                h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: 65536,
            },
        )
        self._settled = False  # the server's SETTINGS came
        self._active: int | None = None  # the stream of the call in progress
        self._fields: dict[str, str] = {}  # its headers and trailers so far
        self._data = bytearray()  # its DATA so far
        self._ended = False  # its END_STREAM came
        self.closed: str | None = None  # why no new call may start, once that is so
        try:
            self._h2.initiate_connection()
            self._flush()
            while not self._settled:  # bounded by the deadline: _fill raises once it passes
                self._fill(deadline)
        except BaseException:
            self.close()
            raise

    def fileno(self) -> int:
        return self._sock.fileno()

    def close(self) -> None:
        self.closed = self.closed or "closed"
        self._sock.close()

    def buffered(self) -> bool:
        """Bytes already decrypted that select() would not report."""
        pending = getattr(self._sock, "pending", None)
        return pending is not None and pending() > 0

    def service(self) -> None:
        """Handle whatever the server sent while we were idle (PING, SETTINGS, GOAWAY)."""
        try:
            for _ in range(1000):  # a read per turn; an idle connection gets a handful
                if not self._fill(None):
                    return
        except ConnectionLost:
            self.close()
            raise

    def call(
        self,
        path: str,
        message: bytes,
        metadata: list[tuple[str, str]],
        timeout: float,
    ) -> bytes:
        """One unary call: the response message, CallError for a gRPC error status, or
        ConnectionLost (then the connection is closed: make a new one)."""
        if self.closed is not None:
            raise ConnectionLost(self.closed)
        deadline = time.monotonic() + timeout
        headers: list[HeaderTuple | tuple[str, str]] = [
            (":method", "POST"),
            (":scheme", self.scheme),
            (":path", path),
            (":authority", self.authority),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
            ("grpc-timeout", f"{max(1, int(timeout * 1000))}m"),
            # Tokens stay out of HPACK's tables (ours, and any proxy's).
            *(NeverIndexedHeaderTuple(name, value) for name, value in metadata),
        ]
        body = b"\x00" + struct.pack(">I", len(message)) + message
        try:
            try:
                stream = self._h2.get_next_available_stream_id()
                self._active, self._fields, self._data, self._ended = stream, {}, bytearray(), False
                self._h2.send_headers(stream, headers)
                self._h2.send_data(stream, body, end_stream=True)
            except h2.exceptions.H2Error as exc:
                raise ConnectionLost(f"cannot send the call: {exc}") from None
            self._sock.settimeout(timeout)  # service() may have left it non-blocking
            self._flush()
            while not self._ended:  # bounded by the deadline: _fill raises once it passes
                self._fill(deadline)
            return _grpc_result(self._fields, bytes(self._data))
        except CallError:
            raise  # an answer: the connection carries on
        except BaseException:
            self.close()
            raise
        finally:
            self._active = None

    # -- helpers ----------------------------------------------------------------------

    def _flush(self) -> None:
        data = self._h2.data_to_send()
        if not data:
            return
        if self._sock.gettimeout() == 0.0:  # service() reads without waiting, not writes
            self._sock.settimeout(self._timeout)
        try:
            self._sock.sendall(data)
        except OSError as exc:
            raise ConnectionLost(f"cannot write to etcd: {exc.strerror or exc}") from None

    def _fill(self, deadline: float | None) -> bool:
        """Read more and handle it; False if nothing is there (``deadline`` None: do not
        wait). h2 answers PINGs and SETTINGS and gives back flow-control windows."""
        if deadline is None:
            self._sock.settimeout(0.0)
        else:
            left = deadline - time.monotonic()
            if left <= 0:
                raise ConnectionLost("etcd did not answer in time")
            self._sock.settimeout(left)
        try:
            chunk = self._sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return False
        except TimeoutError:
            raise ConnectionLost("etcd did not answer in time") from None
        except OSError as exc:
            # ssl is loaded exactly when this can be a TLS socket (plain http never needs it).
            tls = sys.modules.get("ssl")
            if tls is not None and isinstance(exc, tls.SSLWantReadError | tls.SSLWantWriteError):
                return False  # no whole TLS record yet
            raise ConnectionLost(f"cannot read from etcd: {exc.strerror or exc}") from None
        if not chunk:
            raise ConnectionLost("etcd closed the connection")
        try:
            events = self._h2.receive_data(chunk)
        except (h2.exceptions.H2Error, ValueError) as exc:  # ValueError: not UTF-8
            with contextlib.suppress(ConnectionLost):
                self._flush()  # h2's GOAWAY, saying why
            raise ConnectionLost(f"etcd broke the HTTP/2 protocol: {exc}") from None
        for event in events:
            self._handle(event)
        self._flush()
        if self.closed is not None and not (self._active is not None and self._ended):
            raise ConnectionLost(self.closed)  # a GOAWAY, unless it came after our answer
        return True

    def _handle(self, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.RemoteSettingsChanged):
            self._settled = True
        elif isinstance(event, h2.events.ConnectionTerminated):
            code = int(event.error_code) if event.error_code is not None else 0
            detail = (event.additional_data or b"")[:64].decode("ascii", "replace").strip()
            why = f"etcd is closing the connection (GOAWAY, error code {code}"
            why += f", {detail})" if detail else ")"
            self.closed = why
        elif getattr(event, "stream_id", None) != self._active or self._active is None:
            return  # another stream's, or the connection's (PING, WINDOW_UPDATE)
        elif isinstance(event, h2.events.ResponseReceived | h2.events.TrailersReceived):
            self._fields.update((str(n), str(v)) for n, v in event.headers or ())
        elif isinstance(event, h2.events.DataReceived):
            self._data += event.data or b""
            # Give the windows back at once: each stream carries one small answer.
            self._h2.acknowledge_received_data(event.flow_controlled_length or 0, self._active)
        elif isinstance(event, h2.events.StreamEnded):
            self._ended = True
        elif isinstance(event, h2.events.StreamReset):
            code = int(event.error_code) if event.error_code is not None else -1
            raise ConnectionLost(f"etcd reset the call (HTTP/2 error code {code})")


def _grpc_result(fields: dict[str, str], data: bytes) -> bytes:
    status = fields.get(":status", "")
    if status != "200":
        raise ConnectionLost(f"etcd answered HTTP status {status or 'none'} to a gRPC call")
    code = fields.get("grpc-status")
    if code is None or not code.isdigit():
        raise ConnectionLost("etcd's answer has no gRPC status")
    if int(code) != 0:
        raise CallError(int(code), unquote(fields.get("grpc-message", "")))
    if len(data) < 5 or data[0] != 0:
        raise ConnectionLost("etcd's answer has no uncompressed gRPC message")
    length = struct.unpack(">I", data[1:5])[0]
    if len(data) < 5 + length:
        raise ConnectionLost("etcd's answer is truncated")
    return data[5 : 5 + length]

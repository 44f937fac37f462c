"""One unary gRPC call at a time over HTTP/2, on the standard library alone.

The fence makes one etcd call — ``LeaseRevoke``, plus ``Authenticate`` for password users —
so it speaks just enough HTTP/2 for that itself instead of importing grpcio (~20 MB of RSS).

Why gRPC and not etcd's JSON gateway (``POST /v3/lease/revoke``, which etcd 3.4 does serve
on the client port, as does ``/v3beta/``): an etcd started with ``--client-cert-auth`` and
auth enabled — the set-up docs/security.md recommends — answers every gateway request whose
client certificate has a common name with HTTP 400 "CommonName of client sending a request
against gateway will be ignored and not used as expected", password token or not (measured
with etcd 3.4.23). Its gRPC service takes the same certificate as the user's identity.

What is left out, because one call at a time on one connection never needs it:

* HPACK's dynamic table: our SETTINGS set SETTINGS_HEADER_TABLE_SIZE to 0, which forbids the
  server to index anything, and we index nothing either (RFC 7541 §4.2, RFC 9113 §6.5.2).
  Only the static table's ``:status`` entries matter to us; gRPC's own headers are literal.
* Server push (disabled in our SETTINGS), priorities, concurrent streams, and flow control
  beyond giving back every byte of DATA we receive.
"""

from __future__ import annotations

import socket
import struct
import sys
import time
from typing import TYPE_CHECKING
from urllib.parse import unquote

if TYPE_CHECKING:
    import ssl

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
# Frame types and flags (RFC 9113 §6).
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY = range(8)
WINDOW_UPDATE, CONTINUATION = 8, 9
END_STREAM = ACK = 0x1
END_HEADERS = 0x4
PADDED = 0x8
PRIORITY_FLAG = 0x20
MAX_FRAME = 16384  # SETTINGS_MAX_FRAME_SIZE's default; we never raise it
# Our SETTINGS: no dynamic header table (see above), no server push.
CLIENT_SETTINGS = struct.pack(">HIHI", 0x1, 0, 0x2, 0)

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


# --------------------------------------------------------------------------------- HPACK

# RFC 7541 Appendix B: the bit length of each symbol's Huffman code, symbols 0..256 (EOS).
# The code is canonical (codes of one length count up in symbol order, each length starting
# where the shorter ones left off), so these lengths define it completely.
# fmt: off
HUFFMAN_LENGTHS = (
    13, 23, 28, 28, 28, 28, 28, 28, 28, 24, 30, 28, 28, 30, 28, 28,  #   0- 15
    28, 28, 28, 28, 28, 28, 30, 28, 28, 28, 28, 28, 28, 28, 28, 28,  #  16- 31
    6, 10, 10, 12, 13, 6, 8, 11, 10, 10, 8, 11, 8, 6, 6, 6,  #  32- 47
    5, 5, 5, 6, 6, 6, 6, 6, 6, 6, 7, 8, 15, 6, 12, 10,  #  48- 63
    13, 6, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7,  #  64- 79
    7, 7, 7, 7, 7, 7, 7, 7, 8, 7, 8, 13, 19, 13, 14, 6,  #  80- 95
    15, 5, 6, 5, 6, 5, 6, 6, 6, 5, 7, 7, 6, 6, 6, 5,  #  96-111
    6, 7, 6, 5, 5, 6, 7, 7, 7, 7, 7, 15, 11, 14, 13, 28,  # 112-127
    20, 22, 20, 20, 22, 22, 22, 23, 22, 23, 23, 23, 23, 23, 24, 23,  # 128-143
    24, 24, 22, 23, 24, 23, 23, 23, 23, 21, 22, 23, 22, 23, 23, 24,  # 144-159
    22, 21, 20, 22, 22, 23, 23, 21, 23, 22, 22, 24, 21, 22, 23, 23,  # 160-175
    21, 21, 22, 21, 23, 22, 23, 23, 20, 22, 22, 22, 23, 22, 22, 23,  # 176-191
    26, 26, 20, 19, 22, 23, 22, 25, 26, 26, 26, 27, 27, 26, 24, 25,  # 192-207
    19, 21, 26, 27, 27, 26, 27, 24, 21, 21, 26, 26, 28, 27, 27, 27,  # 208-223
    20, 24, 20, 21, 22, 21, 21, 23, 22, 22, 25, 25, 24, 24, 26, 23,  # 224-239
    26, 27, 26, 26, 27, 27, 27, 27, 27, 28, 27, 27, 27, 27, 27, 26,  # 240-255
    30,  # EOS
)
# fmt: on
EOS = 256
_huffman: dict[tuple[int, int], int] = {}  # (length, code) -> symbol, built on first use


def huffman_codes() -> dict[tuple[int, int], int]:
    if not _huffman:
        code, previous = -1, 0
        for symbol in sorted(range(len(HUFFMAN_LENGTHS)), key=lambda s: (HUFFMAN_LENGTHS[s], s)):
            length = HUFFMAN_LENGTHS[symbol]
            code = (code + 1) << (length - previous)
            previous = length
            _huffman[(length, code)] = symbol
    return _huffman


def huffman_decode(data: bytes) -> bytes:
    codes = huffman_codes()
    out = bytearray()
    code = length = 0
    for byte in data:
        for shift in range(7, -1, -1):
            code = (code << 1) | ((byte >> shift) & 1)
            length += 1
            symbol = codes.get((length, code))
            if symbol is not None:
                if symbol == EOS:
                    raise ValueError("Huffman string contains EOS")
                out.append(symbol)
                code = length = 0
            elif length >= 30:
                raise ValueError("invalid Huffman code")
    # Padding: the most significant bits of EOS (all ones), shorter than a byte.
    if length > 7 or code != (1 << length) - 1:
        raise ValueError("invalid Huffman padding")
    return bytes(out)


def hpack_int(value: int, prefix: int, first: int = 0) -> bytes:
    """``value`` with a ``prefix``-bit prefix; ``first`` holds the bits above the prefix."""
    limit = (1 << prefix) - 1
    if value < limit:
        return bytes([first | value])
    out = bytearray([first | limit])
    value -= limit
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _read_int(block: bytes, i: int, prefix: int) -> tuple[int, int]:
    limit = (1 << prefix) - 1
    value = block[i] & limit
    i += 1
    if value < limit:
        return value, i
    for shift in range(0, 29, 7):  # values beyond 2**28 are no header we could want
        byte = block[i]
        i += 1
        value += (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, i
    raise ValueError("HPACK integer too large")


def _read_string(block: bytes, i: int) -> tuple[str, int]:
    huffman = block[i] & 0x80
    length, i = _read_int(block, i, 7)
    raw = block[i : i + length]
    if len(raw) != length:
        raise ValueError("truncated HPACK string")
    text = huffman_decode(raw) if huffman else raw
    return text.decode("utf-8", "replace"), i + length


# The static table's :status entries (RFC 7541 Appendix A); no other static entry matters.
_STATUS = {8: "200", 9: "204", 10: "206", 11: "304", 12: "400", 13: "404", 14: "500"}
_STATIC_SIZE = 61


def decode_headers(block: bytes) -> list[tuple[str, str]]:
    """The header fields of one complete header block. Static-table fields other than
    ``:status`` come back with an empty name: nothing here reads them."""
    fields: list[tuple[str, str]] = []
    i = 0
    try:
        while i < len(block):
            byte = block[i]
            if byte & 0x80:  # indexed field
                index, i = _read_int(block, i, 7)
                if not 0 < index <= _STATIC_SIZE:
                    raise ValueError(f"HPACK index {index} outside the static table")
                fields.append((":status", _STATUS[index]) if index in _STATUS else ("", ""))
                continue
            if byte & 0xE0 == 0x20:  # dynamic table size update: ours stays 0
                _, i = _read_int(block, i, 5)
                continue
            # Literal, with incremental indexing (01), without (0000) or never indexed (0001).
            index, i = _read_int(block, i, 6 if byte & 0x40 else 4)
            if index > _STATIC_SIZE:
                raise ValueError(f"HPACK index {index} outside the static table")
            if index:
                name = ":status" if index in _STATUS else ""
            else:
                name, i = _read_string(block, i)
            value, i = _read_string(block, i)
            fields.append((name, value))
    except IndexError:
        raise ValueError("truncated HPACK header block") from None
    return fields


def encode_headers(fields: list[tuple[str, str]]) -> bytes:
    """Literal fields without indexing, new names, no Huffman: never ambiguous, never stateful."""
    out = bytearray()
    for name, value in fields:
        raw_name, raw_value = name.encode(), value.encode()
        out += b"\x00" + hpack_int(len(raw_name), 7) + raw_name
        out += hpack_int(len(raw_value), 7) + raw_value
    return bytes(out)


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


# ------------------------------------------------------------------------------- frames


def frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    return struct.pack(">IBBI", len(payload), kind, flags, stream)[1:] + payload


def _unpad(flags: int, payload: bytes) -> bytes:
    if flags & PADDED:
        if not payload or payload[0] >= len(payload):
            raise ConnectionLost("etcd sent a frame with bad padding")
        payload = payload[1 : len(payload) - payload[0]]
    return payload


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
        self.authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self.scheme = "http" if context is None else "https"
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
        self._buffer = bytearray()
        self._next_stream = 1
        self._active: int | None = None  # the stream of the call in progress
        self.closed: str | None = None  # why no new call may start, once that is so
        try:
            self._send(PREFACE + frame(SETTINGS, 0, 0, CLIENT_SETTINGS))
            while True:  # bounded by the deadline: _wait_frame raises once it passes
                kind, flags, _, _ = self._wait_frame(deadline)
                if kind == SETTINGS and not flags & ACK:
                    break
        except BaseException:
            self.close()
            raise

    def fileno(self) -> int:
        return self._sock.fileno()

    def close(self) -> None:
        self.closed = self.closed or "closed"
        self._sock.close()

    def buffered(self) -> bool:
        """Bytes already read (or decrypted) that select() would not report."""
        pending = getattr(self._sock, "pending", None)
        return len(self._buffer) >= 9 or (pending is not None and pending() > 0)

    def service(self) -> None:
        """Handle whatever the server sent while we were idle (PING, SETTINGS, GOAWAY)."""
        for _ in range(1000):  # a frame per turn; an idle connection gets a handful
            if self._frame(None) is None:
                return

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
        stream = self._next_stream
        self._next_stream += 2
        self._active = stream
        headers = [
            (":method", "POST"),
            (":scheme", self.scheme),
            (":path", path),
            (":authority", self.authority),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
            ("grpc-timeout", f"{max(1, int(timeout * 1000))}m"),
            *metadata,
        ]
        block = encode_headers(headers)
        body = b"\x00" + struct.pack(">I", len(message)) + message
        if len(block) > MAX_FRAME or len(body) > MAX_FRAME:
            raise ValueError("call too large for one frame")
        try:
            self._sock.settimeout(timeout)  # service() may have left it non-blocking
            self._send(
                frame(HEADERS, END_HEADERS, stream, block) + frame(DATA, END_STREAM, stream, body)
            )
            fields, data = self._response(stream, deadline)
            return _grpc_result(fields, data)
        except CallError:
            raise  # an answer: the connection carries on
        except BaseException:
            self.close()
            raise
        finally:
            self._active = None

    # -- helpers ----------------------------------------------------------------------

    def _response(self, stream: int, deadline: float) -> tuple[dict[str, str], bytes]:
        fields: dict[str, str] = {}
        data = bytearray()
        fragment = bytearray()
        ended = False
        while True:  # bounded by the deadline: _wait_frame raises once it passes
            kind, flags, sid, payload = self._wait_frame(deadline)
            if sid != stream:
                continue
            if kind == RST_STREAM:
                code = struct.unpack(">I", payload[:4])[0] if len(payload) >= 4 else -1
                raise ConnectionLost(f"etcd reset the call (HTTP/2 error code {code})")
            if kind == DATA:
                data += _unpad(flags, payload)
            elif kind in (HEADERS, CONTINUATION):
                if kind == HEADERS:
                    payload = _unpad(flags, payload)
                    if flags & PRIORITY_FLAG:
                        payload = payload[5:]
                fragment += payload
                if flags & END_HEADERS:
                    try:
                        fields.update((n, v) for n, v in decode_headers(bytes(fragment)) if n)
                    except ValueError as exc:
                        raise ConnectionLost(f"etcd sent unreadable headers: {exc}") from None
                    fragment.clear()
            ended = ended or bool(flags & END_STREAM and kind in (DATA, HEADERS))
            if ended and not fragment:
                return fields, bytes(data)

    def _send(self, data: bytes) -> None:
        try:
            self._sock.sendall(data)
        except OSError as exc:
            raise ConnectionLost(f"cannot write to etcd: {exc.strerror or exc}") from None

    def _fill(self, deadline: float | None) -> bool:
        """Read more; False if nothing is there (``deadline`` None: do not wait)."""
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
        self._buffer += chunk
        return True

    def _frame(self, deadline: float | None) -> tuple[int, int, int, bytes] | None:
        """The next frame that is not connection housekeeping; None if none is complete
        and ``deadline`` is None. PING and SETTINGS are answered, GOAWAY obeyed."""
        while True:  # each turn consumes a frame or reads; reads are bounded by deadline
            if len(self._buffer) >= 9:
                length = int.from_bytes(self._buffer[:3], "big")
                if length > MAX_FRAME:
                    raise ConnectionLost(f"etcd sent a {length}-byte frame, above {MAX_FRAME}")
                if len(self._buffer) >= 9 + length:
                    kind, flags = self._buffer[3], self._buffer[4]
                    sid = int.from_bytes(self._buffer[5:9], "big") & 0x7FFFFFFF
                    payload = bytes(self._buffer[9 : 9 + length])
                    del self._buffer[: 9 + length]
                    if not self._housekeeping(kind, flags, sid, payload):
                        return kind, flags, sid, payload
                    continue
            if not self._fill(deadline) and deadline is None:
                return None

    def _wait_frame(self, deadline: float) -> tuple[int, int, int, bytes]:
        got = self._frame(deadline)
        if got is None:  # cannot happen: with a deadline _frame reads until it passes
            raise ConnectionLost("etcd did not answer in time")
        return got

    def _housekeeping(self, kind: int, flags: int, sid: int, payload: bytes) -> bool:
        if kind == DATA and payload:
            # Give the connection's receive window back at once; stream windows are never
            # a concern: each stream carries one small answer.
            self._send(frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", len(payload))))
            return False
        if sid != 0:
            return kind not in (DATA, HEADERS, CONTINUATION, RST_STREAM)
        if kind == SETTINGS:
            if not flags & ACK:
                self._send(frame(SETTINGS, ACK, 0))
            return False  # the connection code wants to see the first one
        if kind == PING:
            if not flags & ACK:
                self._send(frame(PING, ACK, 0, payload[:8]))
            return True
        if kind == GOAWAY:
            last, code = struct.unpack(">II", payload[:8]) if len(payload) >= 8 else (0, 0)
            detail = payload[8:72].decode("ascii", "replace").strip()
            why = f"etcd is closing the connection (GOAWAY, error code {code}"
            why += f", {detail})" if detail else ")"
            self.closed = why
            if self._active is None or self._active > (last & 0x7FFFFFFF):
                raise ConnectionLost(why)
            return True  # our call was accepted: its answer still comes
        return True  # WINDOW_UPDATE, PRIORITY, unknown types: nothing to do


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

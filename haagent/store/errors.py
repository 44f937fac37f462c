"""What etcd RPCs can raise, and the one-line explanations of the failures no retry fixes."""

from __future__ import annotations

import re
from typing import Any

import grpc
from pyetcd import exceptions as etcd_exc

# Every failure the client can raise for an RPC: its own exceptions, and raw gRPC errors for
# status codes it does not translate (PERMISSION_DENIED, UNAUTHENTICATED, …).
ETCD_ERRORS: tuple[type[BaseException], ...] = (etcd_exc.Etcd3Exception, grpc.RpcError)


class StoreError(Exception):
    pass


# What a single Store call can raise: etcd/gRPC failures and our own.
STORE_ERRORS: tuple[type[BaseException], ...] = (*ETCD_ERRORS, StoreError)


def describe_error(exc: BaseException) -> str:
    if isinstance(exc, grpc.RpcError):
        code = exc.code() if hasattr(exc, "code") else None
        details = exc.details() if hasattr(exc, "details") else str(exc)
        return f"{getattr(code, 'name', code)}: {details}"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


# gRPC names the peer it failed on in the details: "... ipv4:198.51.100.2:2379: Tls ...".
_PEER_IN_DETAILS = re.compile(r"\b(ipv[46]:\S+):\s")


def _rpc_error(exc: BaseException) -> tuple[Any, str, str] | None:
    """(code, "CODE: details", details) of the gRPC error behind ``exc``, if there is one.

    pyetcd turns UNAVAILABLE & co. into its own exceptions without the details; the gRPC error
    is their ``__context__``.
    """
    err = exc if isinstance(exc, grpc.RpcError) else exc.__context__
    if not isinstance(err, grpc.RpcError) or not hasattr(err, "code"):
        return None
    code = err.code()
    details = str(err.details() or "") if hasattr(err, "details") else ""
    return code, f"{getattr(code, 'name', code)}: {details}", details


def _token_expired(exc: BaseException) -> bool:
    """etcd forgot our password login (idle for --auth-token-ttl, or a member restarted)."""
    rpc = _rpc_error(exc)
    return (
        rpc is not None
        and rpc[0] == grpc.StatusCode.UNAUTHENTICATED
        and ("invalid auth token" in rpc[2])
    )


def _auth_problem(exc: BaseException, prefix: str) -> str | None:
    """Credentials or permissions etcd refused: the same answer from every member, for good."""
    rpc = _rpc_error(exc)
    if rpc is None:
        return None
    code, what, details = rpc
    if code == grpc.StatusCode.UNAUTHENTICATED and "security level" in details:
        # gRPC itself refuses to send the etcd token (a call credential) over plain http.
        return f"etcd.username/password need https:// endpoints and etcd.tls ({what})"
    if code == grpc.StatusCode.INVALID_ARGUMENT and "authentication failed" in details:
        return f"authentication failed: wrong etcd.username or password ({what})"
    if code == grpc.StatusCode.INVALID_ARGUMENT and "user name is empty" in details:
        return (
            "etcd requires authentication: set etcd.username and etcd.password_file, or use a "
            f"client certificate whose CN is an etcd user ({what})"
        )
    if code in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED):
        return (
            "the etcd user (etcd.username, or the CN of the client certificate) may not read "
            f"and write {prefix}; grant its role readwrite on that prefix ({what})"
        )
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return what  # never transient: the request itself is wrong
    if code == grpc.StatusCode.FAILED_PRECONDITION and "authentication is not enabled" in details:
        return f"etcd.username is set but authentication is off in etcd ({what})"
    return None


def _tls_problem(exc: BaseException) -> tuple[str, str | None] | None:
    """(reason, peer) when the TLS handshake with one etcd member failed for lack of trust."""
    rpc = _rpc_error(exc)
    if rpc is None:
        return None
    _, what, details = rpc
    peer = m.group(1) if (m := _PEER_IN_DETAILS.search(details)) else None
    if "Hostname Verification Check failed" in details:
        return (
            "TLS handshake failed: etcd's server certificate does not name the address dialled "
            f"(its subjectAltName) ({what})",
            peer,
        )
    if "CERTIFICATE_VERIFY_FAILED" in details or "handshake failed" in details.lower():
        return (
            "TLS handshake failed: etcd's server certificate is not signed by etcd.tls.ca "
            f"({what})",
            peer,
        )
    if "TSI_DATA_CORRUPTED" in details:
        # TLS 1.3: the client finishes its side of the handshake first; the server's "bad
        # certificate" alert then arrives as data gRPC cannot decrypt.
        return (
            "etcd rejected the TLS connection: no client certificate (etcd.tls.cert/key), or "
            f"one not signed by a CA etcd trusts ({what})",
            peer,
        )
    return None

"""The first message on the fence's pipe: how to reach etcd (both ends use it).

The fence reads it as :class:`EtcdSettings`, which needs nothing beyond the standard library:
importing ``haagent.config`` (and with it PyYAML) would cost the fence ~60 ms of start-up and
8 MB of RSS (measured) for settings the agent has validated already.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from haagent.config import EtcdConfig


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
        }
    }


@dataclass(frozen=True)
class Endpoint:
    """One etcd client URL, as the fence dials it."""

    host: str  # an IPv6 literal without its brackets
    port: int
    secure: bool

    @property
    def authority(self) -> str:
        """``host:port`` for the HTTP/2 ``:authority`` header, IPv6 in brackets."""
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def __str__(self) -> str:
        return f"{'https' if self.secure else 'http'}://{self.authority}"


@dataclass(frozen=True)
class EtcdSettings:
    """The fence's view of the setup message: only what a lease revoke needs."""

    endpoints: tuple[Endpoint, ...]
    ca: str | None = None  # None: the system's trust store (as the agent's gRPC does)
    cert: str | None = None
    key: str | None = None
    username: str | None = None
    password: str | None = field(default=None, repr=False)  # never in logs or tracebacks
    timeout: float = 1.0  # seconds, per etcd call

    @classmethod
    def from_setup(cls, setup: Mapping[str, Any]) -> EtcdSettings:
        """Parse the ``setup`` part of :func:`setup_message`; ValueError says what is wrong."""
        raw = setup.get("endpoints")
        if not isinstance(raw, list) or not raw:
            raise ValueError("the setup names no etcd endpoint")
        endpoints = []
        for item in raw:
            url = urlsplit(str(item).strip())
            try:
                port = url.port
            except ValueError:
                port = None
            if url.scheme not in ("http", "https") or not url.hostname or port is None:
                raise ValueError(f"etcd endpoint {item!r} is not scheme://host:port")
            endpoints.append(Endpoint(url.hostname, port, url.scheme == "https"))
        tls = setup.get("tls")
        tls = tls if isinstance(tls, dict) else {}

        def text(value: object) -> str | None:
            return None if value is None else str(value)

        timeout = setup.get("timeout", 1.0)
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0:
            raise ValueError(f"etcd timeout {timeout!r} is not a positive number of seconds")
        return cls(
            endpoints=tuple(endpoints),
            ca=text(tls.get("ca")),
            cert=text(tls.get("cert")),
            key=text(tls.get("key")),
            username=text(setup.get("username")),
            password=text(setup.get("password")),
            timeout=float(timeout),
        )

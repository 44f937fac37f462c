"""Configuration: one YAML file turned into frozen dataclasses, or every error in it at once.

Validation collects *all* problems and raises :class:`ConfigErrors`; each :class:`ConfigError`
names the file, a dotted key path (``vips[1].address``) and the reason. Nothing here touches the
network. Two things touch the file system: :func:`load_config` reads the config file, and
:func:`parse_config` reads ``etcd.password_file`` so that the secret is checked at load time.
:func:`check_host` holds the checks that are only true on one machine (interfaces, TLS files),
so that ``haagent check-config --no-host-checks`` can validate a file for another host.

The lease rules are what keeps invariant 1 (at most one holder): the agent drops its VIPs at
``send time of the last acknowledged keepalive + ttl - margin``. etcd expires the lease ``ttl``
after it *received* that keepalive, so the agent is always ``margin`` early, as long as nothing
blocks it for longer than the margin: hence ``etcd.timeout < lease.margin``.
"""

from __future__ import annotations

import difflib
import hashlib
import math
import os
import re
import shlex
import shutil
import socket
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from ipaddress import (
    AddressValueError,
    IPv4Address,
    IPv4Interface,
    IPv6Address,
    IPv6Interface,
    NetmaskValueError,
)
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar, get_args
from urllib.parse import urlsplit

import yaml

from haagent.cluster.schema import NAME_RE

__all__ = [
    "CHECK_TYPES",
    "LOG_LEVELS",
    "NAME_RE",
    "NOTIFY_KINDS",
    "PER_VIP_LIMIT",
    "SHELL",
    "AnnounceConfig",
    "CheckConfig",
    "CheckMap",
    "CheckType",
    "Config",
    "ConfigError",
    "ConfigErrors",
    "EtcdConfig",
    "ExecCheckConfig",
    "HttpCheckConfig",
    "InterfaceCheckConfig",
    "LeaseConfig",
    "NotifyConfig",
    "NotifyKind",
    "TLSConfig",
    "TcpCheckConfig",
    "VipConfig",
    "check_host",
    "describe",
    "load_config",
    "parse_config",
    "parse_endpoint",
    "program_problem",
]

# Cluster, node and VIP names become etcd key segments (the rule lives with the schema).
_NAME = re.compile(NAME_RE)
_NAME_RULE = (
    "1-63 characters of a-z, 0-9, '.', '_' and '-', starting and ending with a letter or digit "
    "(it becomes part of etcd keys)"
)
LOG_LEVELS = ("debug", "info", "warning", "error")
_IFNAMSIZ = 16  # Linux: interface names are at most 15 bytes
_HOST_LABEL = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://(.*)$", re.DOTALL)


# --------------------------------------------------------------------------- errors


class ConfigError(Exception):
    """One problem: the file, the dotted key path (empty for the whole file) and the reason."""

    def __init__(
        self,
        file: str,
        key: str,
        reason: str,
        *,
        line: int | None = None,
        column: int | None = None,
    ) -> None:
        self.file = file
        self.key = key
        self.reason = reason
        self.line = line  # 1-based; only for YAML syntax errors
        self.column = column
        super().__init__(str(self))

    def __str__(self) -> str:
        if not self.key:
            return f"{self.file}: {self.reason}"
        return f"{self.file}: {self.key}: {self.reason}"

    def __repr__(self) -> str:
        return f"ConfigError({self.file!r}, {self.key!r}, {self.reason!r})"


class ConfigErrors(Exception):
    """Every problem found in one config; ``str()`` is one error per line."""

    def __init__(self, errors: Iterable[ConfigError]) -> None:
        self.errors: list[ConfigError] = list(errors)
        super().__init__(str(self))

    def __str__(self) -> str:
        return "\n".join(str(e) for e in self.errors)


# --------------------------------------------------------------------------- dataclasses


@dataclass(frozen=True)
class TLSConfig:
    ca: Path | None = None  # CA bundle to verify etcd's certificate
    cert: Path | None = None  # client certificate (cert and key go together)
    key: Path | None = None


@dataclass(frozen=True)
class EtcdConfig:
    endpoints: tuple[str, ...] = ("http://127.0.0.1:2379",)
    tls: TLSConfig | None = None
    username: str | None = None
    password: str | None = field(default=None, repr=False)  # never in logs or tracebacks
    # Where ``password`` was read from, if it came from a file: haagent.security judges its mode.
    password_file: Path | None = None
    timeout: float = 1.0  # seconds, per etcd RPC
    retry_interval: float = 1.0  # seconds before a failed endpoint is tried again

    def parsed_endpoints(self) -> tuple[tuple[str, int, bool], ...]:
        """``(host without brackets, port, secure)`` for each endpoint; ValueError if invalid."""
        return tuple(parse_endpoint(e) for e in self.endpoints)


# The answer to "hold on or let go" wherever the file asks it (lease and VIP health).
ReleaseOrKeep = Literal["release", "keep"]
_RELEASE_OR_KEEP: tuple[str, ...] = get_args(ReleaseOrKeep)


@dataclass(frozen=True)
class LeaseConfig:
    ttl: int = 5  # seconds, etcd lease TTL
    margin: float = 1.5  # VIPs are dropped at last acked keepalive send time + ttl - margin
    keepalive_interval: float | None = None  # None: ttl / 5
    # What a holder does when its deadline passes without an answer from etcd: "release" (safe:
    # a partitioned host cannot tell it apart from an etcd outage) or "keep" (availability
    # during a real etcd outage, at the risk of two holders if it is a partition instead).
    when_etcd_unreachable: ReleaseOrKeep = "release"

    @property
    def interval(self) -> float:
        """Seconds between keepalives."""
        if self.keepalive_interval is not None:
            return self.keepalive_interval
        return self.ttl / 5


@dataclass(frozen=True)
class AnnounceConfig:
    count: int = 3  # gratuitous ARP / unsolicited NA packets sent on acquire
    interval: float = 0.2  # seconds between them
    refresh: float = 0.0  # seconds between re-announcements while holding; 0 = off
    arp_reply: bool = False  # also send the reply form of gratuitous ARP


CheckType = Literal["tcp", "http", "exec", "interface"]
CHECK_TYPES: tuple[CheckType, ...] = get_args(CheckType)
HttpMethod = Literal["GET", "HEAD"]
_HTTP_METHODS: tuple[str, ...] = get_args(HttpMethod)
NotifyKind = Literal["acquire", "release", "fault"]
NOTIFY_KINDS: tuple[NotifyKind, ...] = get_args(NotifyKind)
SHELL = "/bin/sh"  # a command written as one string runs as (SHELL, "-c", string)


def _shell_text(argv: tuple[str, ...]) -> str | None:
    """The text of a command written as one string (``(SHELL, "-c", text)``), else None."""
    if len(argv) == 3 and argv[:2] == (SHELL, "-c"):
        return argv[2]
    return None


@dataclass(frozen=True, kw_only=True)
class CheckConfig:
    """What every health check has; the subclass for its ``type`` adds the rest.

    A check turns healthy after ``rise`` consecutive passes and unhealthy after ``fall``
    consecutive failures (see haagent.health.state for the start-up rule). Each run is given up
    and counted as a failure after ``timeout`` seconds; ``timeout <= interval``.
    """

    type: ClassVar[CheckType]
    name: str
    interval: float = 2.0  # seconds between the starts of two runs
    timeout: float = 1.0  # seconds one run may take
    rise: int = 2  # consecutive passes to become healthy
    fall: int = 3  # consecutive failures to become unhealthy


@dataclass(frozen=True, kw_only=True)
class TcpCheckConfig(CheckConfig):
    """Passes when a TCP connection to host:port is established within the timeout."""

    type: ClassVar[CheckType] = "tcp"
    host: str = "127.0.0.1"  # an IP address or a host name (resolved at every run)
    port: int


@dataclass(frozen=True, kw_only=True)
class HttpCheckConfig(CheckConfig):
    """Passes when the URL answers with an expected status (and body) within the timeout."""

    type: ClassVar[CheckType] = "http"
    url: str  # http:// or https://
    method: HttpMethod = "GET"
    expect_status: tuple[int, ...] = ()  # empty: any 2xx or 3xx (redirects are not followed)
    expect_body: str | None = None  # substring of the first 64 KiB of the body
    tls_verify: bool = True  # https: verify the server certificate and host name

    def status_ok(self, status: int) -> bool:
        if self.expect_status:
            return status in self.expect_status
        return 200 <= status < 400


@dataclass(frozen=True, kw_only=True)
class ExecCheckConfig(CheckConfig):
    """Passes when the command exits 0 within the timeout."""

    type: ClassVar[CheckType] = "exec"
    command: tuple[str, ...]  # argv; a string in the file becomes (SHELL, "-c", string)
    # False: one run per interval for all the VIPs that use it (HAAGENT_VIPS, HAAGENT_HOLDING);
    # True: one run per VIP, with that VIP's HAAGENT_VIP ... HAAGENT_STATE. At most
    # PER_VIP_LIMIT VIPs may use a per_vip check.
    per_vip: bool = False


@dataclass(frozen=True, kw_only=True)
class InterfaceCheckConfig(CheckConfig):
    """Passes when the interface is administratively up and has carrier (IFF_UP, IFF_RUNNING)."""

    type: ClassVar[CheckType] = "interface"
    interface: str | None = None  # None: the interface of each VIP that uses the check

    def interface_for(self, vip: VipConfig) -> str:
        return self.interface if self.interface is not None else vip.interface


@dataclass(frozen=True)
class NotifyConfig:
    """Commands run when this host acquires or releases a VIP, or a VIP's checks fail.

    Each is an argv tuple (a string in the file becomes ``(SHELL, "-c", string)``) or None.
    """

    on_acquire: tuple[str, ...] | None = None
    on_release: tuple[str, ...] | None = None
    on_fault: tuple[str, ...] | None = None
    timeout: float = 10.0  # seconds before a hook's process group is killed

    def command(self, kind: NotifyKind) -> tuple[str, ...] | None:
        """The command for "acquire", "release" or "fault"."""
        cmd: tuple[str, ...] | None = getattr(self, f"on_{kind}")
        return cmd


class CheckMap(Mapping[str, CheckConfig]):
    """A read-only mapping of check names to checks that, unlike MappingProxyType, can be
    hashed, pickled and deep-copied like the rest of the config tree."""

    __slots__ = ("_items",)

    def __init__(self, items: Mapping[str, CheckConfig] | Iterable[tuple[str, CheckConfig]] = ()):
        self._items: dict[str, CheckConfig] = dict(items)

    def __getitem__(self, name: str) -> CheckConfig:
        return self._items[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __hash__(self) -> int:
        return hash(tuple(self._items.items()))

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Mapping):
            return self._items == dict(other)
        return NotImplemented

    def __repr__(self) -> str:
        return f"CheckMap({self._items!r})"

    def __reduce__(self) -> tuple[type[CheckMap], tuple[dict[str, CheckConfig]]]:
        return (CheckMap, (self._items,))


DEFAULT_HOLD_DOWN = 5.0


@dataclass(frozen=True)
class VipConfig:
    name: str
    address: IPv4Interface | IPv6Interface
    interface: str
    announce: AnnounceConfig = field(default_factory=AnnounceConfig)
    checks: tuple[str, ...] = ()  # names in Config.checks; healthy here when all pass
    hold_down: float = DEFAULT_HOLD_DOWN  # seconds without campaigning after this host released it
    when_all_unhealthy: ReleaseOrKeep = "release"
    notify: NotifyConfig = field(default_factory=NotifyConfig)
    # Layer 2 (docs/layer2.md): bind on a macvlan with the VRRP virtual MAC of ``vrid`` so
    # clients' neighbour caches never go stale; or do not bind at all (announce-only) and answer
    # ARP/NDP for the VIP while holding it, for traffic taken by IPVS/nftables/XDP.
    vmac: bool = False
    vrid: int = 0  # 1-255 with vmac; derived from the VIP name when not given
    bind: bool = True

    @property
    def ip(self) -> IPv4Address | IPv6Address:
        return self.address.ip

    @property
    def family(self) -> int:
        return self.address.version


def derived_vrid(vip_name: str) -> int:
    """A stable VRID (1-255) from the VIP name, for vmac VIPs that do not set one."""
    return int(hashlib.sha256(vip_name.encode()).hexdigest(), 16) % 255 + 1


def _default_node() -> str:
    return socket.gethostname().split(".", 1)[0].lower()


@dataclass(frozen=True)
class Config:
    cluster: str = "default"
    node: str = field(default_factory=_default_node)
    etcd: EtcdConfig = field(default_factory=EtcdConfig)
    lease: LeaseConfig = field(default_factory=LeaseConfig)
    announce: AnnounceConfig = field(default_factory=AnnounceConfig)  # defaults for each VIP
    vips: tuple[VipConfig, ...] = ()
    log_level: str = "info"
    # Named health checks, referenced by VipConfig.checks; read-only.
    checks: Mapping[str, CheckConfig] = field(default_factory=CheckMap)
    source: Path | None = None  # the file it came from
    digest: str = ""  # first 12 hex chars of sha256 over the file's bytes

    def vip(self, name: str) -> VipConfig:
        for v in self.vips:
            if v.name == name:
                return v
        raise KeyError(name)

    def vip_checks(self, vip: VipConfig | str) -> tuple[CheckConfig, ...]:
        """The checks a VIP depends on, in the order it lists them."""
        v = self.vip(vip) if isinstance(vip, str) else vip
        return tuple(self.checks[name] for name in v.checks)


# --------------------------------------------------------------------------- endpoints


def parse_endpoint(endpoint: str) -> tuple[str, int, bool]:
    """``"https://[2001:db8::1]:2379"`` -> ``("2001:db8::1", 2379, True)``.

    Raises ValueError with a reason a human can act on.
    """
    m = _SCHEME.match(endpoint.strip())
    if not m:
        raise ValueError("expected http://host:port or https://host:port")
    scheme, rest = m.group(1).lower(), m.group(2)
    if scheme not in ("http", "https"):
        raise ValueError(f"scheme {m.group(1)!r} is not supported; use http or https")
    if rest.endswith("/"):
        rest = rest[:-1]
    if "@" in rest:
        raise ValueError("credentials in the URL are not supported; use etcd.username/password")
    if any(c in rest for c in "/?#"):
        raise ValueError(
            "an etcd endpoint has no path, query or fragment; write scheme://host:port"
        )
    if rest.startswith("["):
        close = rest.find("]")
        if close < 0:
            raise ValueError("missing ']' after the IPv6 address")
        host, after = rest[1:close], rest[close + 1 :]
        try:
            IPv6Address(host)
        except AddressValueError as exc:
            raise ValueError(f"bad IPv6 address in brackets: {exc}") from None
        if not after:
            raise ValueError("a port is required (etcd's client port is usually 2379)")
        if not after.startswith(":"):
            raise ValueError("expected ':port' after the ']'")
        port_text = after[1:]
    else:
        colons = rest.count(":")
        if colons == 0:
            raise ValueError("a port is required (etcd's client port is usually 2379)")
        if colons > 1:
            raise ValueError("IPv6 addresses must be in brackets, e.g. http://[2001:db8::1]:2379")
        host, port_text = rest.split(":")
        if not host:
            raise ValueError("the host is missing")
        if re.fullmatch(r"[0-9.]+", host):
            try:
                IPv4Address(host)
            except AddressValueError as exc:
                raise ValueError(f"bad IPv4 address: {exc}") from None
        elif len(host) > 253 or not all(_HOST_LABEL.match(p) for p in host.split(".")):
            raise ValueError(f"{host!r} is not a valid host name or IP address")
    if not port_text.isascii() or not port_text.isdigit():
        raise ValueError(f"port {port_text!r} is not a number")
    port = int(port_text)
    if not 1 <= port <= 65535:
        raise ValueError(f"port {port} is out of range 1-65535")
    return host, port, scheme == "https"


# --------------------------------------------------------------------------- parsing helpers

_T = TypeVar("_T")
_MISSING: Any = object()


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _found(value: object) -> str:
    """How a YAML value reads to a human: 'a string ("1s")', 'true/false (True)', 'null'."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"true/false ({str(value).lower()})"
    if isinstance(value, int):
        return f"an integer ({value})"
    if isinstance(value, float):
        return f"a number ({value})"
    if isinstance(value, str):
        text = value if len(value) <= 40 else value[:37] + "..."
        return f"a string ({text!r})"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return f"a {type(value).__name__} ({value})"


class _Collector:
    def __init__(self, source: str, base_dir: Path | None) -> None:
        self.source = source
        self.base_dir = base_dir
        self.errors: list[ConfigError] = []

    def error(self, key: str, reason: str) -> None:
        self.errors.append(ConfigError(self.source, key, reason))

    def mapping(self, value: object, path: str, allowed: Iterable[str]) -> dict[str, Any] | None:
        """The mapping at ``path`` with unknown keys reported; None (reported) if not a mapping."""
        if not isinstance(value, dict):
            self.error(path, f"expected a mapping, found {_found(value)}")
            return None
        allowed = list(allowed)
        out: dict[str, Any] = {}
        for k, v in value.items():
            if isinstance(k, str) and k in allowed:
                out[k] = v
                continue
            shown = k if isinstance(k, str) else repr(k)
            reason = f"unknown key {k!r}"
            close = difflib.get_close_matches(str(k), allowed, n=1, cutoff=0.6)
            if not close and isinstance(k, str):
                close = [a for a in allowed if a == k.lower().replace("-", "_")]
            if close:
                reason += f"; did you mean {close[0]!r}?"
            else:
                reason += f"; expected one of: {', '.join(allowed)}"
            self.error(_join(path, str(shown)), reason)
        return out

    def string(self, value: object, key: str) -> str | None:
        if not isinstance(value, str):
            hint = "; quote it" if isinstance(value, int | float) else ""
            self.error(key, f"expected a string, found {_found(value)}{hint}")
            return None
        if not value.strip():
            self.error(key, "must not be empty")
            return None
        return value

    def name(self, value: object, key: str) -> str | None:
        text = self.string(value, key)
        if text is None:
            return None
        if not _NAME.match(text):
            hint = " (names are lower-case)" if _NAME.match(text.lower()) else ""
            self.error(key, f"{text!r} is not a valid name{hint}: {_NAME_RULE}")
            return None
        return text

    def number(self, value: object, key: str) -> float | None:
        if isinstance(value, bool) or not isinstance(value, int | float):
            self.error(key, f"expected a number of seconds, found {_found(value)}")
            return None
        if not math.isfinite(value):
            self.error(key, f"expected a finite number, found {value}")
            return None
        return float(value)

    def integer(self, value: object, key: str) -> int | None:
        if isinstance(value, bool) or not isinstance(value, int):
            self.error(key, f"expected an integer, found {_found(value)}")
            return None
        return value

    def boolean(self, value: object, key: str) -> bool | None:
        if not isinstance(value, bool):
            self.error(key, f"expected true or false, found {_found(value)}")
            return None
        return value

    def path(self, value: object, key: str) -> Path | None:
        text = self.string(value, key)
        if text is None:
            return None
        p = Path(text)
        if not p.is_absolute() and self.base_dir is not None:
            p = self.base_dir / p
        return p


class _Section:
    """Validated values of one mapping; a key that was given but invalid is remembered as bad."""

    def __init__(self, col: _Collector, raw: dict[str, Any] | None, path: str) -> None:
        self.col = col
        self.raw = raw or {}
        self.path = path
        self.values: dict[str, Any] = {}
        self.bad: set[str] = set()

    def key(self, name: str) -> str:
        return _join(self.path, name)

    def take(
        self,
        name: str,
        convert: Callable[[object, str], _T | None],
        check: Callable[[_T], str | None] | None = None,
        *,
        nullable: bool = False,
    ) -> None:
        if name not in self.raw:
            return
        value = self.raw[name]
        if value is None and nullable:
            self.values[name] = None
            return
        converted = convert(value, self.key(name))
        if converted is None:
            self.bad.add(name)
            return
        problem = check(converted) if check else None
        if problem:
            self.col.error(self.key(name), problem)
            self.bad.add(name)
            return
        self.values[name] = converted

    def get(self, name: str, default: Any) -> Any:
        """The value to cross-check against; ``_MISSING`` when it was given but is invalid."""
        if name in self.bad:
            return _MISSING
        return self.values.get(name, default)


def _one_of(
    v: str, choices: Sequence[str], *, fold: Callable[[str], str] | None = None
) -> str | None:
    """Problem text when ``v`` (or ``fold(v)``) is not one of ``choices``, with a did-you-mean."""
    folded = fold(v) if fold is not None else v
    if folded in choices:
        return None
    reason = f"{v!r} is not one of {', '.join(choices)}"
    if close := difflib.get_close_matches(folded, choices, n=1, cutoff=0.6):
        reason += f"; did you mean {close[0]!r}?"
    return reason


def _log_level_problem(v: str) -> str | None:
    return _one_of(v, LOG_LEVELS, fold=str.lower)


def _positive(v: float) -> str | None:
    return None if v > 0 else f"must be greater than 0, found {v:g}"


def _at_least_one(v: int) -> str | None:
    return None if v >= 1 else f"must be at least 1, found {v}"


# --------------------------------------------------------------------------- sections

_TOP_KEYS = ("cluster", "node", "log_level", "etcd", "lease", "announce", "checks", "vips")
_ETCD_KEYS = (
    "endpoints",
    "tls",
    "username",
    "password",
    "password_file",
    "timeout",
    "retry_interval",
)
_TLS_KEYS = ("ca", "cert", "key")
_LEASE_KEYS = ("ttl", "margin", "keepalive_interval", "when_etcd_unreachable")
_ANNOUNCE_KEYS = ("count", "interval", "refresh", "arp_reply")
_VIP_KEYS = (
    "name",
    "address",
    "interface",
    "announce",
    "checks",
    "hold_down",
    "when_all_unhealthy",
    "notify",
    "vmac",
    "vrid",
    "bind",
)
_CHECK_KEYS = ("type", "interval", "timeout", "rise", "fall")
_CHECK_TYPE_KEYS: dict[str, tuple[str, ...]] = {
    "tcp": ("host", "port"),
    "http": ("url", "method", "expect_status", "expect_body", "tls_verify"),
    "exec": ("command", "per_vip"),
    "interface": ("interface",),
}
_NOTIFY_KEYS = (*(f"on_{kind}" for kind in NOTIFY_KINDS), "timeout")
MIN_CHECK_INTERVAL = 0.1
# VIPs that may use one per_vip exec check. Each costs a process every interval and up to
# three threads, the cost that sharing removes; a per-VIP script (keepalived's way) serves a
# handful of VIPs, 64 is plenty for that, and beyond it one run should go through HAAGENT_VIPS.
PER_VIP_LIMIT = 64
# What only a per-VIP run of an exec check finds in its environment.
_PER_VIP_VARS = re.compile(r"\bHAAGENT_(VIP|ADDRESS|INTERFACE|STATE)\b")


def _parse_endpoints(col: _Collector, value: object, path: str) -> tuple[str, ...] | None:
    if not isinstance(value, list):
        hint = '; write a list, e.g. ["http://198.51.100.2:2379"]' if isinstance(value, str) else ""
        col.error(path, f"expected a list of endpoint URLs, found {_found(value)}{hint}")
        return None
    if not value:
        col.error(path, "at least one endpoint is required")
        return None
    out: list[str] = []
    seen: dict[tuple[str, int], int] = {}
    ok = True
    for i, item in enumerate(value):
        key = f"{path}[{i}]"
        text = col.string(item, key)
        if text is None:
            ok = False
            continue
        text = text.strip()
        try:
            host, port, _ = parse_endpoint(text)
        except ValueError as exc:
            col.error(key, f"{text!r}: {exc}")
            ok = False
            continue
        ident = (host.lower(), port)
        if ident in seen:
            col.error(key, f"duplicate of {path}[{seen[ident]}]")
            ok = False
            continue
        seen[ident] = i
        out.append(text)
    return tuple(out) if ok else None


def _parse_tls(col: _Collector, value: object, path: str) -> TLSConfig | None:
    raw = col.mapping(value, path, _TLS_KEYS)
    if raw is None:
        return None
    s = _Section(col, raw, path)
    for k in _TLS_KEYS:
        s.take(k, col.path, nullable=True)
    ca, cert, key = (s.values.get(k) for k in _TLS_KEYS)
    if cert is not None and key is None and "key" not in s.bad:
        col.error(s.key("cert"), f"set without {s.key('key')}; a client certificate needs its key")
    if key is not None and cert is None and "cert" not in s.bad:
        col.error(s.key("key"), f"set without {s.key('cert')}; a client key needs its certificate")
    return TLSConfig(ca=ca, cert=cert, key=key)


def _read_password_file(col: _Collector, path: Path, key: str) -> str | None:
    try:
        data = path.read_bytes()
    except OSError as exc:
        col.error(key, f"cannot read {str(path)!r}: {exc.strerror or exc}")
        return None
    try:
        text = data.decode("utf-8").rstrip("\r\n")
    except UnicodeDecodeError:
        col.error(key, f"{str(path)!r} is not UTF-8 text")
        return None
    if not text:
        col.error(key, f"{str(path)!r} is empty")
        return None
    return text


def _parse_etcd(col: _Collector, value: object) -> tuple[EtcdConfig, _Section]:
    path = "etcd"
    raw = None if value is None else col.mapping(value, path, _ETCD_KEYS)
    s = _Section(col, raw, path)
    if "endpoints" in s.raw:
        endpoints = _parse_endpoints(col, s.raw["endpoints"], s.key("endpoints"))
        if endpoints is None:
            s.bad.add("endpoints")
        else:
            s.values["endpoints"] = endpoints
    if s.raw.get("tls") is not None:
        tls = _parse_tls(col, s.raw["tls"], s.key("tls"))
        if tls is None:
            s.bad.add("tls")
        else:
            s.values["tls"] = tls
    s.take("username", col.string, nullable=True)
    s.take("password", col.string, nullable=True)
    s.take("password_file", col.path, nullable=True)
    s.take("timeout", col.number, _positive)
    s.take("retry_interval", col.number, _positive)

    # Cross-field rules.
    endpoints = s.get("endpoints", EtcdConfig.endpoints)
    tls = s.get("tls", None)
    if endpoints is not _MISSING and tls is not _MISSING:
        secure = [i for i, e in enumerate(endpoints) if parse_endpoint(e)[2]]
        if secure and (tls is None or tls.ca is None):
            first = f"{s.key('endpoints')}[{secure[0]}]"
            col.error(
                _join(s.key("tls"), "ca"),
                f"required because {first} uses https: the CA bundle that signed etcd's "
                "server certificate",
            )
        if not secure and tls is not None:
            col.error(
                s.key("tls"),
                "set, but no endpoint uses https, so it would be ignored; "
                "use https:// endpoints or remove tls",
            )
    password: str | None = s.values.get("password")
    password_file: Path | None = s.values.get("password_file")
    if password is not None and password_file is not None:
        col.error(
            s.key("password_file"),
            f"set together with {s.key('password')}; use one or the other",
        )
    elif password_file is not None:
        password = _read_password_file(col, password_file, s.key("password_file"))
        if password is None:
            s.bad.add("password_file")
    username: str | None = s.values.get("username")
    secret_given = password is not None or {"password", "password_file"} & s.bad
    if username is not None and not secret_given:
        col.error(
            s.key("username"),
            f"set without a password; add {s.key('password')} or {s.key('password_file')}",
        )
    if username is None and "username" not in s.bad and password is not None:
        which = "password_file" if password_file is not None else "password"
        col.error(s.key(which), f"set without {s.key('username')}; etcd needs both")

    cfg = EtcdConfig(
        endpoints=s.values.get("endpoints", EtcdConfig.endpoints),
        tls=s.values.get("tls"),
        username=username,
        password=password,
        password_file=password_file,
        timeout=s.values.get("timeout", EtcdConfig.timeout),
        retry_interval=s.values.get("retry_interval", EtcdConfig.retry_interval),
    )
    return cfg, s


def _parse_lease(col: _Collector, value: object) -> tuple[LeaseConfig, _Section]:
    path = "lease"
    raw = None if value is None else col.mapping(value, path, _LEASE_KEYS)
    s = _Section(col, raw, path)
    s.take(
        "ttl",
        col.integer,
        lambda v: None if v >= 2 else f"must be an integer of at least 2 seconds, found {v}",
    )
    s.take("margin", col.number, _positive)
    s.take("keepalive_interval", col.number, _positive, nullable=True)
    s.take("when_etcd_unreachable", col.string, lambda v: _one_of(v, _RELEASE_OR_KEEP))

    ttl = s.get("ttl", LeaseConfig.ttl)
    margin = s.get("margin", LeaseConfig.margin)
    if ttl is not _MISSING and margin is not _MISSING:
        if margin >= ttl / 2:
            col.error(
                s.key("margin"),
                f"must be less than half of lease.ttl ({ttl / 2:g} s), found {margin:g}: the "
                f"agent drops its VIPs {ttl - margin:g} s after sending its last acknowledged "
                "keepalive, so a margin this large gives up VIPs on ordinary etcd delays; "
                "raise lease.ttl instead",
            )
        else:
            explicit = s.get("keepalive_interval", None)
            if explicit is not _MISSING:
                interval = explicit if explicit is not None else ttl / 5
                how = "" if explicit is not None else f" (derived as lease.ttl / 5 = {interval:g})"
                if interval >= ttl - margin:
                    col.error(
                        s.key("keepalive_interval"),
                        f"keepalive interval{how} must be less than lease.ttl - lease.margin "
                        f"({ttl - margin:g} s), found {interval:g}: otherwise the deadline "
                        "passes before the next keepalive is even sent",
                    )
    cfg = LeaseConfig(
        ttl=s.values.get("ttl", LeaseConfig.ttl),
        margin=s.values.get("margin", LeaseConfig.margin),
        keepalive_interval=s.values.get("keepalive_interval"),
        when_etcd_unreachable=s.values.get(
            "when_etcd_unreachable", LeaseConfig.when_etcd_unreachable
        ),
    )
    return cfg, s


def _parse_announce(
    col: _Collector, value: object, path: str, base: AnnounceConfig
) -> AnnounceConfig:
    raw = None if value is None else col.mapping(value, path, _ANNOUNCE_KEYS)
    s = _Section(col, raw, path)
    s.take("count", col.integer, _at_least_one)
    s.take("interval", col.number, _positive)
    s.take(
        "refresh",
        col.number,
        lambda v: (
            f"must be 0 (off) or at least 1 second, found {v:g}: faster re-announcements "
            "only flood the segment"
            if v < 0 or 0 < v < 1
            else None
        ),
    )
    s.take("arp_reply", col.boolean)
    return replace(base, **s.values)


def _parse_address(text: str) -> IPv4Interface | IPv6Interface:
    """A VIP address; ValueError with the reason."""
    text = text.strip()
    addr_text, slash, prefix = text.partition("/")
    if "%" in addr_text:
        raise ValueError("scoped addresses (with '%') cannot be a VIP")
    if slash and not prefix:
        raise ValueError("missing prefix length after '/'")
    iface: IPv4Interface | IPv6Interface
    try:
        if ":" in addr_text:
            IPv6Address(addr_text)
            iface = IPv6Interface(text)
        elif re.fullmatch(r"[0-9.]+", addr_text):
            IPv4Address(addr_text)
            iface = IPv4Interface(text)
        else:
            raise ValueError("not an IPv4 or IPv6 address (host names are not allowed)")
    except NetmaskValueError:
        limit = 32 if ":" not in addr_text else 128
        raise ValueError(f"prefix {prefix!r} is not a prefix length from 1 to {limit}") from None
    except AddressValueError as exc:
        raise ValueError(str(exc)) from None
    ip = iface.ip
    if ip.is_unspecified:
        raise ValueError("the unspecified address cannot be a VIP")
    if ip.is_loopback:
        raise ValueError("a loopback address cannot be a VIP")
    if ip.is_multicast:
        raise ValueError("a multicast address cannot be a VIP")
    if ip.is_link_local:
        raise ValueError("a link-local address cannot be a VIP")
    if isinstance(ip, IPv4Address) and ip == IPv4Address("255.255.255.255"):
        raise ValueError("the broadcast address cannot be a VIP")
    if isinstance(ip, IPv6Address) and ip.ipv4_mapped is not None:
        raise ValueError("write an IPv4-mapped address as plain IPv4")
    net = iface.network
    if net.prefixlen == 0:
        raise ValueError("a /0 prefix would route every destination out of the interface")
    host_bits = net.max_prefixlen - net.prefixlen
    if host_bits >= 2 and ip == net.network_address:
        what = "network address" if ip.version == 4 else "subnet-router anycast address"
        raise ValueError(
            f"{ip} is the {what} of {net}, not a host address; pick a host address in {net}"
        )
    if ip.version == 4 and host_bits >= 2 and ip == net.broadcast_address:
        raise ValueError(f"{ip} is the broadcast address of {net}, not a host address")
    return iface


def _interface_problem(name: str) -> str | None:
    """Linux's own rule for interface names (dev_valid_name)."""
    if len(name.encode()) >= _IFNAMSIZ:
        return f"{name!r} is longer than {_IFNAMSIZ - 1} bytes, the Linux limit"
    if name in (".", ".."):
        return f"{name!r} is not a valid interface name"
    if ":" in name:
        return (
            f"{name!r}: ':' is not allowed; address labels such as eth0:1 are not interfaces, "
            "name the interface itself"
        )
    if "/" in name or any(c.isspace() for c in name):
        return f"{name!r}: interface names cannot contain '/' or white space"
    return None


def _not_negative(v: float) -> str | None:
    return None if v >= 0 else f"must be 0 or more, found {v:g}"


def _check_interval(v: float) -> str | None:
    if v < MIN_CHECK_INTERVAL:
        return (
            f"must be at least {MIN_CHECK_INTERVAL:g} seconds, found {v:g}: faster checks only "
            "load the host and the service"
        )
    return None


def _host_problem(host: str) -> str | None:
    """A host for a tcp check or in a URL: an IP address or a syntactically valid host name."""
    if host.startswith("["):
        return f"{host!r}: write an IPv6 address without brackets"
    if ":" in host:
        try:
            IPv6Address(host)
        except AddressValueError as exc:
            return f"{host!r} is not a valid IPv6 address: {exc}"
        return None
    if re.fullmatch(r"[0-9.]+", host):
        try:
            IPv4Address(host)
        except AddressValueError as exc:
            return f"{host!r} is not a valid IPv4 address: {exc}"
        return None
    name = host[:-1] if host.endswith(".") else host
    if len(name) > 253 or not name or not all(_HOST_LABEL.match(p) for p in name.split(".")):
        return f"{host!r} is not a valid host name or IP address"
    return None


def _url_problem(url: str) -> str | None:
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        return f"{url!r}: {exc}"
    if parts.scheme.lower() not in ("http", "https"):
        shown = parts.scheme or "none"
        return f"{url!r}: scheme {shown!r} is not supported; use http:// or https://"
    if "@" in parts.netloc:
        return f"{url!r}: credentials in the URL are not supported"
    if not parts.hostname:
        return f"{url!r}: the host is missing"
    if problem := _host_problem(parts.hostname):
        return f"{url!r}: {problem}"
    if port is not None and not 1 <= port <= 65535:
        return f"{url!r}: port {port} is out of range 1-65535"
    return None


def _parse_command(col: _Collector, value: object, key: str) -> tuple[str, ...] | None:
    """A list is argv, run without a shell; a string is run with ``/bin/sh -c``."""
    if isinstance(value, str):
        if not value.strip():
            col.error(key, "must not be empty")
            return None
        return (SHELL, "-c", value)
    if not isinstance(value, list):
        col.error(
            key,
            "expected a list (the program and its arguments, run without a shell) or a string "
            f"(run with {SHELL} -c), found {_found(value)}",
        )
        return None
    if not value:
        col.error(key, "must not be empty; give the program and its arguments")
        return None
    argv: list[str] = []
    for i, item in enumerate(value):
        if not isinstance(item, str):
            hint = "; quote it" if isinstance(item, int | float) else ""
            col.error(f"{key}[{i}]", f"expected a string, found {_found(item)}{hint}")
            return None
        argv.append(item)
    if not argv[0].strip():
        col.error(f"{key}[0]", "the program must not be empty")
        return None
    return tuple(argv)


def _parse_status_list(col: _Collector, value: object, key: str) -> tuple[int, ...] | None:
    items = value if isinstance(value, list) else [value]
    if not items:
        col.error(key, "must not be empty; leave it out to accept any 2xx or 3xx status")
        return None
    out: list[int] = []
    for i, item in enumerate(items):
        ikey = f"{key}[{i}]" if isinstance(value, list) else key
        if isinstance(item, bool) or not isinstance(item, int):
            col.error(ikey, f"expected an HTTP status code (an integer), found {_found(item)}")
            return None
        if not 100 <= item <= 599:
            col.error(ikey, f"{item} is not an HTTP status code (100-599)")
            return None
        if item not in out:
            out.append(item)
    return tuple(out)


def _parse_check(col: _Collector, name: str, value: object, path: str) -> CheckConfig | None:
    if not isinstance(value, dict):
        col.error(path, f"expected a mapping with at least 'type', found {_found(value)}")
        return None
    kind: str | None = None
    if value.get("type") is None:
        col.error(_join(path, "type"), f"required; one of: {', '.join(CHECK_TYPES)}")
    else:
        text = col.string(value["type"], _join(path, "type"))
        if text is not None:
            if problem := _one_of(text, CHECK_TYPES):
                col.error(_join(path, "type"), problem)
            else:
                kind = text
    if kind is None:
        # Without a type the other keys cannot be judged; report only unknown keys.
        everything = list(_CHECK_KEYS) + [k for ks in _CHECK_TYPE_KEYS.values() for k in ks]
        col.mapping(value, path, everything)
        return None
    own = _CHECK_KEYS + _CHECK_TYPE_KEYS[kind]
    body: dict[object, object] = {}
    for k, v in value.items():
        others = [t for t, ks in _CHECK_TYPE_KEYS.items() if t != kind and k in ks]
        if others and k not in own:
            col.error(
                _join(path, str(k)),
                f"{k!r} belongs to {' and '.join(others)} checks; this check is type {kind!r}",
            )
        else:
            body[k] = v
    raw = col.mapping(body, path, own)
    s = _Section(col, raw, path)
    s.take("interval", col.number, _check_interval)
    s.take("timeout", col.number, _positive)
    s.take("rise", col.integer, _at_least_one)
    s.take("fall", col.integer, _at_least_one)
    interval = s.get("interval", CheckConfig.interval)
    timeout = s.get("timeout", CheckConfig.timeout)
    if interval is not _MISSING and timeout is not _MISSING and timeout > interval:
        col.error(
            s.key("timeout"),
            f"must not be more than interval ({interval:g} s), found {timeout:g}: runs of one "
            "check never overlap, so a longer timeout would silently stretch the interval, and "
            "fall x interval would no longer bound how long a hung service goes unnoticed",
        )
    common: dict[str, Any] = {
        k: s.values[k] for k in ("interval", "timeout", "rise", "fall") if k in s.values
    }

    def required(key: str) -> bool:
        if s.raw.get(key) is None:
            if key not in s.bad:
                col.error(s.key(key), f"required for {kind} checks")
            return False
        return True

    # s.bad only grows, so "not s.bad" below also covers the common keys above.
    if kind == "tcp":
        s.take("host", col.string, _host_problem)
        if required("port"):
            s.take(
                "port",
                col.integer,
                lambda v: None if 1 <= v <= 65535 else f"port {v} is out of range 1-65535",
            )
        if s.bad or "port" not in s.values:
            return None
        host = s.values.get("host", TcpCheckConfig.host)
        return TcpCheckConfig(name=name, host=host, port=s.values["port"], **common)
    if kind == "http":
        if required("url"):
            s.take("url", col.string, _url_problem)
        s.take(
            "method",
            col.string,
            lambda v: None if v.upper() in _HTTP_METHODS else _one_of(v, _HTTP_METHODS),
        )
        s.take("expect_status", lambda v, key: _parse_status_list(col, v, key))
        s.take("expect_body", col.string)
        s.take("tls_verify", col.boolean)
        method = s.values.get("method", "GET").upper()
        if method == "HEAD" and "expect_body" in s.values:
            col.error(s.key("expect_body"), "set with method HEAD, which has no body; use GET")
            s.bad.add("expect_body")
        url = s.values.get("url")
        if url is not None and "tls_verify" in s.values and urlsplit(url).scheme != "https":
            col.error(
                s.key("tls_verify"),
                "set, but the url is not https, so it would be ignored; use an https:// url "
                "or remove tls_verify",
            )
            s.bad.add("tls_verify")
        if s.bad or url is None:
            return None
        return HttpCheckConfig(
            name=name,
            url=url,
            method=method,
            expect_status=s.values.get("expect_status", ()),
            expect_body=s.values.get("expect_body"),
            tls_verify=s.values.get("tls_verify", True),
            **common,
        )
    if kind == "exec":
        command = None
        if required("command"):
            command = _parse_command(col, s.raw["command"], s.key("command"))
        s.take("per_vip", col.boolean)
        if s.bad or command is None:
            return None
        return ExecCheckConfig(
            name=name, command=command, per_vip=s.values.get("per_vip", False), **common
        )
    s.take("interface", col.string, _interface_problem, nullable=True)
    if s.bad:
        return None
    return InterfaceCheckConfig(name=name, interface=s.values.get("interface"), **common)


def _parse_checks(col: _Collector, value: object) -> tuple[dict[str, CheckConfig], set[str]]:
    """The valid checks, and the names of every check defined (valid or not)."""
    path = "checks"
    if value is None:
        return {}, set()
    if not isinstance(value, dict):
        col.error(path, f"expected a mapping of check names to checks, found {_found(value)}")
        return {}, set()
    out: dict[str, CheckConfig] = {}
    defined: set[str] = set()
    for raw_name, body in value.items():
        key = _join(path, str(raw_name))
        if isinstance(raw_name, str):
            defined.add(raw_name)
        name = col.name(raw_name, key)
        check = _parse_check(col, name or str(raw_name), body, key)
        if name is not None and check is not None:
            out[name] = check
    return out, defined


def _some(names: Sequence[str], shown: int = 3) -> str:
    """``"a, b, c, ..."``: a list that may hold a thousand VIPs, cut for one error line."""
    return ", ".join(names[:shown]) + (", ..." if len(names) > shown else "")


def _check_exec_sharing(
    col: _Collector, checks: Mapping[str, CheckConfig], vips: Sequence[VipConfig]
) -> None:
    """What the VIPs that use each exec check imply for it, now that both are known.

    A per_vip check is bounded by PER_VIP_LIMIT. A shared check used by several VIPs runs
    without the per-VIP variables, so a command that names one of them would read an empty
    value without anyone noticing; only the command's own text can be seen here (a script
    file it starts cannot), which catches the inline commands written for per-VIP runs.
    """
    users: dict[str, list[str]] = {}
    for vip in vips:
        for name in vip.checks:
            users.setdefault(name, []).append(vip.name)
    for name, check in checks.items():
        if not isinstance(check, ExecCheckConfig):
            continue
        names = users.get(name, [])
        if check.per_vip:
            if len(names) > PER_VIP_LIMIT:
                col.error(
                    f"checks.{name}.per_vip",
                    f"used by {len(names)} VIPs ({_some(names)}), more than {PER_VIP_LIMIT}: "
                    f"per_vip starts one process per VIP every {check.interval:g} s; remove "
                    "per_vip so that one run serves them all (the command gets HAAGENT_VIPS "
                    "and HAAGENT_HOLDING), or split the VIPs between several checks",
                )
            continue
        found = sorted(set(_PER_VIP_VARS.findall(" ".join(check.command))))
        if len(names) > 1 and found:
            shown = " and ".join(f"$HAAGENT_{v}" for v in found)
            col.error(
                f"checks.{name}.command",
                f"uses {shown}, which a shared run does not set: {len(names)} VIPs use this "
                f"check ({_some(names)}) and it runs once for all of them, with HAAGENT_VIPS "
                "and HAAGENT_HOLDING instead; read those, or set per_vip: true to run it "
                "once per VIP",
            )


def _parse_notify(col: _Collector, value: object, path: str) -> NotifyConfig | None:
    raw = col.mapping(value, path, _NOTIFY_KEYS)
    if raw is None:
        return None
    s = _Section(col, raw, path)
    for key in (f"on_{kind}" for kind in NOTIFY_KINDS):
        if s.raw.get(key) is None:
            continue
        command = _parse_command(col, s.raw[key], s.key(key))
        if command is None:
            s.bad.add(key)
        else:
            s.values[key] = command
    s.take("timeout", col.number, _positive)
    if s.bad:
        return None
    return NotifyConfig(**s.values)


def _parse_vip_checks(
    col: _Collector,
    value: object,
    key: str,
    checks: Mapping[str, CheckConfig],
    defined: set[str],
) -> tuple[str, ...] | None:
    if not isinstance(value, list):
        hint = f"; write a list, e.g. [{value}]" if isinstance(value, str) else ""
        col.error(key, f"expected a list of check names, found {_found(value)}{hint}")
        return None
    out: list[str] = []
    ok = True
    for i, item in enumerate(value):
        ikey = f"{key}[{i}]"
        name = col.string(item, ikey)
        if name is None:
            ok = False
            continue
        if name not in defined:
            reason = f"unknown check {name!r}"
            if close := difflib.get_close_matches(name, sorted(defined), n=1, cutoff=0.6):
                reason += f"; did you mean {close[0]!r}?"
            elif defined:
                reason += f"; defined checks: {', '.join(sorted(defined))}"
            else:
                reason += "; define it under the top-level checks:"
            col.error(ikey, reason)
            ok = False
        elif name in out:
            col.error(ikey, f"check {name!r} is listed twice")
            ok = False
        elif name not in checks:
            ok = False  # its definition is invalid, which is already reported
        else:
            out.append(name)
    return tuple(out) if ok else None


def _parse_vips(
    col: _Collector,
    value: object,
    announce: AnnounceConfig,
    checks: Mapping[str, CheckConfig],
    defined: set[str],
) -> tuple[VipConfig, ...]:
    path = "vips"
    if value is None or value == []:
        col.error(path, "at least one VIP is required; an agent with no VIP has nothing to do")
        return ()
    if not isinstance(value, list):
        col.error(path, f"expected a list of VIP mappings, found {_found(value)}")
        return ()
    out: list[VipConfig] = []
    names: dict[str, int] = {}
    ips: dict[IPv4Address | IPv6Address, int] = {}
    for i, item in enumerate(value):
        vpath = f"{path}[{i}]"
        raw = col.mapping(item, vpath, _VIP_KEYS)
        if raw is None:
            continue
        for required in ("name", "address", "interface"):
            if raw.get(required) is None:
                col.error(_join(vpath, required), "required")
        name = None
        if raw.get("name") is not None:
            name = col.name(raw["name"], _join(vpath, "name"))
        if name is not None:
            if name in names:
                col.error(
                    _join(vpath, "name"),
                    f"duplicate VIP name {name!r} (also {path}[{names[name]}])",
                )
            else:
                names[name] = i
        address = None
        if raw.get("address") is not None:
            akey = _join(vpath, "address")
            text = col.string(raw["address"], akey)
            if text is not None:
                try:
                    address = _parse_address(text)
                except ValueError as exc:
                    col.error(akey, f"{text!r}: {exc}")
            if address is not None:
                if address.ip in ips:
                    j = ips[address.ip]
                    col.error(akey, f"{address.ip} is already the address of {path}[{j}]")
                else:
                    ips[address.ip] = i
        interface = None
        if raw.get("interface") is not None:
            ikey = _join(vpath, "interface")
            interface = col.string(raw["interface"], ikey)
            if interface is not None and (problem := _interface_problem(interface)):
                col.error(ikey, problem)
                interface = None
        vip_announce = announce
        if raw.get("announce") is not None:
            vip_announce = _parse_announce(col, raw["announce"], _join(vpath, "announce"), announce)
        s = _Section(col, raw, vpath)
        if raw.get("checks") is not None:
            listed = _parse_vip_checks(col, raw["checks"], s.key("checks"), checks, defined)
            if listed is None:
                s.bad.add("checks")
            else:
                s.values["checks"] = listed
        s.take("hold_down", col.number, _not_negative)
        s.take("vmac", col.boolean)
        s.take("bind", col.boolean)
        s.take(
            "vrid", col.integer, lambda v: None if 1 <= v <= 255 else f"must be 1-255, found {v}"
        )
        if s.values.get("vmac") and s.values.get("bind") is False:
            col.error(
                s.key("vmac"),
                "vmac needs the VIP bound (on the macvlan); with bind: false haagent answers "
                "ARP/NDP itself with the node's MAC — choose one",
            )
            s.bad.add("vmac")
        if "vrid" in s.values and not s.values.get("vmac"):
            col.error(s.key("vrid"), "only means something with vmac: true")
            s.bad.add("vrid")
        if s.values.get("vmac") and "vrid" not in s.values and name is not None:
            s.values["vrid"] = derived_vrid(name)
        s.take(
            "when_all_unhealthy",
            col.string,
            lambda v: _one_of(v, _RELEASE_OR_KEEP),
        )
        if (
            s.values.get("when_all_unhealthy") == "keep"
            and not s.values.get("checks")
            and "checks" not in s.bad
        ):
            col.error(
                s.key("when_all_unhealthy"),
                "set to keep, but this VIP has no checks, so it is always healthy here and the "
                "setting would do nothing; add checks or remove it",
            )
            s.bad.add("when_all_unhealthy")
        if raw.get("notify") is not None:
            notify = _parse_notify(col, raw["notify"], s.key("notify"))
            if notify is None:
                s.bad.add("notify")
            else:
                s.values["notify"] = notify
        if name is not None and address is not None and interface is not None and not s.bad:
            out.append(VipConfig(name, address, interface, vip_announce, **s.values))
    # Two vmac VIPs of one family and VRID would share a virtual MAC and move together.
    seen: dict[tuple[int, int], str] = {}
    for i, v in enumerate(out):
        if not v.vmac:
            continue
        other = seen.setdefault((v.family, v.vrid), v.name)
        if other != v.name:
            col.error(
                f"{path}[{i}].vrid",
                f"VRID {v.vrid} (IPv{v.family}) is already used by VIP {other!r}: each vmac VIP "
                "needs its own virtual MAC; set vrid explicitly",
            )
    return tuple(out)


# --------------------------------------------------------------------------- entry points


def parse_config(data: object, source: str = "<config>", *, base_dir: Path | None = None) -> Config:
    """Validate what ``yaml.safe_load`` returned; raise ConfigErrors listing every problem.

    Relative TLS and password file paths are taken relative to ``base_dir`` (the config file's
    directory when called from :func:`load_config`), else to the working directory.
    ``etcd.password_file`` is read here.
    """
    col = _Collector(source, base_dir)
    if not isinstance(data, dict):
        hint = " (the file is empty)" if data is None else ""
        col.error("", f"the top level must be a mapping of settings, found {_found(data)}{hint}")
        raise ConfigErrors(col.errors)
    raw = col.mapping(data, "", _TOP_KEYS) or {}
    top = _Section(col, raw, "")
    top.take("cluster", col.name)
    top.take("node", col.name)
    top.take("log_level", col.string, _log_level_problem)
    node = top.values.get("node")
    if node is None and "node" not in top.bad:
        node = _default_node()
        if not _NAME.match(node):
            col.error(
                "node",
                f"not set, and this host's name {node!r} is not a valid node name "
                f"({_NAME_RULE}); set node explicitly",
            )

    etcd, etcd_s = _parse_etcd(col, raw.get("etcd"))
    lease, lease_s = _parse_lease(col, raw.get("lease"))
    timeout = etcd_s.get("timeout", EtcdConfig.timeout)
    margin = lease_s.get("margin", LeaseConfig.margin)
    if timeout is not _MISSING and margin is not _MISSING and timeout >= margin:
        col.error(
            "etcd.timeout",
            f"must be less than lease.margin ({margin:g} s), found {timeout:g}: one etcd call "
            "can block the agent for up to etcd.timeout, and if that is longer than the margin "
            "the agent could still hold its VIPs when etcd expires its lease and another node "
            "takes them over; lower etcd.timeout or raise lease.margin",
        )
    elif timeout is not _MISSING and not col.errors:
        # A keepalive that hangs for the whole timeout must still leave room for the next one
        # before the deadline, or one slow etcd answer costs every VIP this node holds.
        budget = lease.ttl - lease.margin
        if lease.interval + timeout >= budget:
            col.error(
                "lease.keepalive_interval",
                f"keepalive interval ({lease.interval:g} s) + etcd.timeout ({timeout:g} s) must be "
                f"less than lease.ttl - lease.margin ({budget:g} s): otherwise a single slow "
                "keepalive makes the agent drop its VIPs; shorten the interval or raise lease.ttl",
            )
    announce = _parse_announce(col, raw.get("announce"), "announce", AnnounceConfig())
    checks, defined = _parse_checks(col, raw.get("checks"))
    vips = _parse_vips(col, raw.get("vips"), announce, checks, defined)
    _check_exec_sharing(col, checks, vips)

    if col.errors:
        raise ConfigErrors(col.errors)
    assert node is not None
    return Config(
        cluster=top.values.get("cluster", Config.cluster),
        node=node,
        etcd=etcd,
        lease=lease,
        announce=announce,
        vips=vips,
        log_level=top.values.get("log_level", Config.log_level).lower(),
        checks=CheckMap(checks),
    )


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys instead of silently keeping the last one."""


def _construct_mapping_no_dups(loader: _StrictLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    seen: dict[tuple[str, str], yaml.Node] = {}
    for key_node, _ in node.value:
        if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
            ident = (key_node.tag, key_node.value)
            if ident in seen:
                first = seen[ident].start_mark
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f"duplicate key {key_node.value!r} (first at line {first.line + 1})",
                    key_node.start_mark,
                )
            seen[ident] = key_node
    return loader.construct_mapping(node)


_StrictLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping_no_dups
)


def load_config(path: str | Path) -> Config:
    """Read and validate a config file; ConfigErrors if it cannot be read, parsed or validated."""
    p = Path(path)
    source = str(p)
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise ConfigErrors(
            [ConfigError(source, "", f"cannot read: {exc.strerror or exc}")]
        ) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        reason = f"not UTF-8 text (invalid byte at offset {exc.start})"
        raise ConfigErrors([ConfigError(source, "", reason)]) from None
    try:
        doc = yaml.load(text, Loader=_StrictLoader)  # a SafeLoader subclass: no arbitrary objects
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        what = exc.problem or exc.context or "invalid YAML"
        if exc.context and exc.problem:
            what = f"{exc.problem} ({exc.context})"
        if mark is None:
            raise ConfigErrors([ConfigError(source, "", f"YAML error: {what}")]) from None
        line, column = mark.line + 1, mark.column + 1
        err = ConfigError(
            source,
            "",
            f"line {line}, column {column}: YAML error: {what}",
            line=line,
            column=column,
        )
        raise ConfigErrors([err]) from None
    except yaml.YAMLError as exc:
        raise ConfigErrors([ConfigError(source, "", f"YAML error: {exc}")]) from None
    cfg = parse_config(doc, source, base_dir=p.parent)
    return replace(cfg, source=p, digest=hashlib.sha256(data).hexdigest()[:12])


def _check_readable(path: Path, key: str, source: str) -> ConfigError | None:
    try:
        with path.open("rb") as f:
            head = f.read(1 << 20)
    except OSError as exc:
        return ConfigError(source, key, f"cannot read {str(path)!r}: {exc.strerror or exc}")
    if b"-----BEGIN" not in head:
        return ConfigError(source, key, f"{str(path)!r} is not PEM (no '-----BEGIN' line)")
    return None


def program_problem(argv: tuple[str, ...]) -> str | None:
    """Why ``argv`` cannot be started on this host, or None.

    A bare program name is looked up in PATH. For a shell command ``(SHELL, "-c", text)`` the
    shell is checked, and the first word of ``text`` when it is an absolute path (anything else
    may be a shell builtin, keyword or function, which only the shell can tell).
    """
    programs = [argv[0]]
    if (text := _shell_text(argv)) is not None:
        try:
            words = shlex.split(text)
        except ValueError as exc:
            return f"the shell command cannot be parsed: {exc}"
        if words and words[0].startswith("/"):
            programs.append(words[0])
    for program in programs:
        if "/" not in program:
            if shutil.which(program) is None:
                return f"{program!r} is not an executable file in PATH"
            continue
        if not os.path.exists(program):
            return f"{program!r} does not exist"
        if os.path.isdir(program) or not os.access(program, os.X_OK):
            return f"{program!r} is not an executable file"
    return None


def _used_checks(cfg: Config) -> dict[str, CheckConfig]:
    """The checks some VIP lists, in the order they are defined: the only ones that ever run."""
    used = {name for vip in cfg.vips for name in vip.checks}
    return {name: check for name, check in cfg.checks.items() if name in used}


def check_host(cfg: Config) -> list[ConfigError]:
    """Checks that are only true on this machine.

    VIP interfaces and the interfaces of interface checks exist, the programs of exec checks and
    notify hooks can be started, TLS files are readable. Only checks used by some VIP are
    looked at: the others never run on this host.
    """
    source = str(cfg.source) if cfg.source is not None else "<config>"
    errors: list[ConfigError] = []
    used = _used_checks(cfg)
    # (key, interface) for every interface this host must have, VIPs' first.
    interfaces = [(f"vips[{i}].interface", vip.interface) for i, vip in enumerate(cfg.vips)]
    interfaces += [
        (f"checks.{name}.interface", check.interface)
        for name, check in used.items()
        if isinstance(check, InterfaceCheckConfig) and check.interface is not None
    ]
    try:
        present = {name for _, name in socket.if_nameindex()}
    except OSError as exc:
        errors.append(ConfigError(source, "vips", f"cannot list network interfaces: {exc}"))
    else:
        have = ", ".join(sorted(present)) or "none"
        errors += [
            ConfigError(source, key, f"no interface {iface!r} on this host (it has: {have})")
            for key, iface in interfaces
            if iface not in present
        ]
    for name, check in used.items():
        if isinstance(check, ExecCheckConfig) and (problem := program_problem(check.command)):
            errors.append(ConfigError(source, f"checks.{name}.command", problem))
    for i, vip in enumerate(cfg.vips):
        for kind in NOTIFY_KINDS:
            command = vip.notify.command(kind)
            if command is not None and (problem := program_problem(command)):
                errors.append(ConfigError(source, f"vips[{i}].notify.on_{kind}", problem))
    tls = cfg.etcd.tls
    if tls is not None:
        for name in ("ca", "cert", "key"):
            p: Path | None = getattr(tls, name)
            if p is not None and (err := _check_readable(p, f"etcd.tls.{name}", source)):
                errors.append(err)
    return errors


def _secs(v: float) -> str:
    return f"{v:g} s"


def describe(cfg: Config) -> str:
    """A short human summary, as printed by ``haagent check-config``."""
    lease = cfg.lease
    auth = f", user {cfg.etcd.username}" if cfg.etcd.username else ""
    tls = ", tls" if cfg.etcd.tls else ""
    lines = [
        f"cluster {cfg.cluster}, node {cfg.node}"
        + (f", config digest {cfg.digest}" if cfg.digest else ""),
        f"etcd: {', '.join(cfg.etcd.endpoints)} (timeout {_secs(cfg.etcd.timeout)}{tls}{auth})",
        f"lease: ttl {lease.ttl} s, keepalive every {_secs(lease.interval)}, VIPs dropped "
        f"{_secs(lease.ttl - lease.margin)} after the last acknowledged keepalive was sent "
        f"(margin {_secs(lease.margin)})",
        f"vips ({len(cfg.vips)}):",
    ]
    width = max((len(v.name) for v in cfg.vips), default=0)
    for v in cfg.vips:
        a = v.announce
        refresh = f"refresh every {_secs(a.refresh)}" if a.refresh > 0 else "no refresh"
        health = ""
        if v.checks:
            health = f", checks {', '.join(v.checks)}"
            if v.when_all_unhealthy == "keep":
                health += ", kept when no host is healthy"
        lines.append(
            f"  {v.name:<{width}}  {v.address} on {v.interface} "
            f"(announce {a.count} x {_secs(a.interval)}, {refresh}{health})"
        )
    used = _used_checks(cfg)
    if used:
        lines.append(f"checks ({len(used)} used):")
        cwidth = max(len(n) for n in used)
        for name, c in used.items():
            lines.append(
                f"  {name:<{cwidth}}  {c.type} {_check_target(c)}: every "
                f"{_secs(c.interval)}, timeout {_secs(c.timeout)}, rise {c.rise}, fall {c.fall}"
                + (", once per VIP" if isinstance(c, ExecCheckConfig) and c.per_vip else "")
            )
    return "\n".join(lines)


def _check_target(c: CheckConfig) -> str:
    if isinstance(c, TcpCheckConfig):
        host = f"[{c.host}]" if ":" in c.host else c.host
        return f"{host}:{c.port}"
    if isinstance(c, HttpCheckConfig):
        return f"{c.method} {c.url}"
    if isinstance(c, ExecCheckConfig):
        text = _shell_text(c.command)
        return text if text is not None else shlex.join(c.command)
    if isinstance(c, InterfaceCheckConfig):
        return c.interface or "(the VIP's interface)"
    return ""

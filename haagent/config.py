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
import re
import socket
from collections.abc import Callable, Iterable
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
from typing import Any, TypeVar

import yaml

__all__ = [
    "LOG_LEVELS",
    "NAME_RE",
    "AnnounceConfig",
    "Config",
    "ConfigError",
    "ConfigErrors",
    "EtcdConfig",
    "LeaseConfig",
    "TLSConfig",
    "VipConfig",
    "check_host",
    "describe",
    "load_config",
    "parse_config",
    "parse_endpoint",
]

# Cluster, node and VIP names become etcd key segments: lower-case, no slashes.
NAME_RE = r"^[a-z0-9]([a-z0-9_.-]{0,61}[a-z0-9])?$"
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
    timeout: float = 1.0  # seconds, per etcd RPC
    retry_interval: float = 1.0  # seconds before a failed endpoint is tried again

    def parsed_endpoints(self) -> tuple[tuple[str, int, bool], ...]:
        """``(host without brackets, port, secure)`` for each endpoint; ValueError if invalid."""
        return tuple(parse_endpoint(e) for e in self.endpoints)


@dataclass(frozen=True)
class LeaseConfig:
    ttl: int = 5  # seconds, etcd lease TTL
    margin: float = 1.5  # VIPs are dropped at last acked keepalive send time + ttl - margin
    keepalive_interval: float | None = None  # None: ttl / 5

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


@dataclass(frozen=True)
class VipConfig:
    name: str
    address: IPv4Interface | IPv6Interface
    interface: str
    announce: AnnounceConfig = field(default_factory=AnnounceConfig)

    @property
    def ip(self) -> IPv4Address | IPv6Address:
        return self.address.ip

    @property
    def family(self) -> int:
        return self.address.version


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
    source: Path | None = None  # the file it came from
    digest: str = ""  # first 12 hex chars of sha256 over the file's bytes

    def vip(self, name: str) -> VipConfig:
        for v in self.vips:
            if v.name == name:
                return v
        raise KeyError(name)


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


def _log_level_problem(v: str) -> str | None:
    if v.lower() in LOG_LEVELS:
        return None
    reason = f"{v!r} is not one of {', '.join(LOG_LEVELS)}"
    if close := difflib.get_close_matches(v.lower(), LOG_LEVELS, n=1, cutoff=0.6):
        reason += f"; did you mean {close[0]!r}?"
    return reason


def _positive(v: float) -> str | None:
    return None if v > 0 else f"must be greater than 0, found {v:g}"


# --------------------------------------------------------------------------- sections

_TOP_KEYS = ("cluster", "node", "log_level", "etcd", "lease", "announce", "vips")
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
_LEASE_KEYS = ("ttl", "margin", "keepalive_interval")
_ANNOUNCE_KEYS = ("count", "interval", "refresh", "arp_reply")
_VIP_KEYS = ("name", "address", "interface", "announce")


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
    )
    return cfg, s


def _parse_announce(
    col: _Collector, value: object, path: str, base: AnnounceConfig
) -> AnnounceConfig:
    raw = None if value is None else col.mapping(value, path, _ANNOUNCE_KEYS)
    s = _Section(col, raw, path)
    s.take("count", col.integer, lambda v: None if v >= 1 else f"must be at least 1, found {v}")
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


def _parse_vips(col: _Collector, value: object, announce: AnnounceConfig) -> tuple[VipConfig, ...]:
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
        if name is not None and address is not None and interface is not None:
            out.append(VipConfig(name, address, interface, vip_announce))
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
    vips = _parse_vips(col, raw.get("vips"), announce)

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


def check_host(cfg: Config) -> list[ConfigError]:
    """Checks that are only true on this machine: VIP interfaces exist, TLS files are readable."""
    source = str(cfg.source) if cfg.source is not None else "<config>"
    errors: list[ConfigError] = []
    try:
        present = {name for _, name in socket.if_nameindex()}
    except OSError as exc:
        errors.append(ConfigError(source, "vips", f"cannot list network interfaces: {exc}"))
    else:
        for i, vip in enumerate(cfg.vips):
            if vip.interface not in present:
                have = ", ".join(sorted(present)) or "none"
                errors.append(
                    ConfigError(
                        source,
                        f"vips[{i}].interface",
                        f"no interface {vip.interface!r} on this host (it has: {have})",
                    )
                )
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
        lines.append(
            f"  {v.name:<{width}}  {v.address} on {v.interface} "
            f"(announce {a.count} x {_secs(a.interval)}, {refresh})"
        )
    return "\n".join(lines)

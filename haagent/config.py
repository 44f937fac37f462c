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
import stat
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from ipaddress import (
    AddressValueError,
    IPv4Address,
    IPv4Interface,
    IPv6Address,
    IPv6Interface,
    NetmaskValueError,
    ip_address,
)
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar, get_args
from urllib.parse import urlsplit

import yaml

from haagent.cluster.schema import (
    DEFAULT_PRIORITY,
    MAX_PRIORITY,
    MAX_VIP_ADDRESSES,
    NAME_RE,
    valid_name,
)

__all__ = [
    "CHECK_TYPES",
    "LOG_LEVELS",
    "MAX_CHECKS",
    "MAX_CONFIG_BYTES",
    "MAX_ERRORS",
    "MAX_VIPS",
    "MAX_VIP_ADDRESSES",
    "MAX_YAML_DEPTH",
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

# Cluster, node and VIP names become etcd key segments: the rule (NAME_RE, valid_name) lives
# with the schema.
_NAME_RULE = (
    "1-63 characters of a-z, 0-9, '.', '_' and '-', starting and ending with a letter or digit "
    "(it becomes part of etcd keys)"
)
LOG_LEVELS = ("debug", "info", "warning", "error")
_IFNAMSIZ = 16  # Linux: interface names are at most 15 bytes
_HOST_LABEL = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://(.*)$", re.DOTALL)

# --------------------------------------------------------------------------- bounds
# Every number and size a file can set has a range (docs/configuration.md#limits). The parser is
# the only gate before the agent: what it accepts must not overflow a float, a timeout of the
# standard library or a kernel field later, and a hostile file must not cost more than a
# moment to refuse. The ranges are generous for real setups, not tight around the defaults.

MAX_CONFIG_BYTES = 1 << 20  # a config with 4096 VIPs is about 400 KiB
MAX_YAML_DEPTH = 32  # a config needs 6 levels (vips[0].notify.on_acquire[0])
MAX_ERRORS = 100  # reported per file; a broken file need not print thousands of lines
MAX_VIPS = 4096
MAX_CHECKS = 1024  # each check has a scheduler thread of its own
MAX_VIP_CHECKS = 64
MAX_ENDPOINTS = 16  # etcd clusters have 3, 5 or 7 members
MAX_STRING = 255  # any string without a more specific limit below
MAX_ADDRESS = 64  # the longest IPv6 text with a prefix is 49 characters
MAX_URL = 2048
MAX_PATH = 4095  # PATH_MAX, less the terminating NUL
MAX_PASSWORD = 1024
MAX_PASSWORD_FILE = 4096  # bytes; the file holds one password
MAX_COMMAND = 8192  # characters of a command, all its arguments together
MAX_ARGV = 256
MAX_EXPECT_BODY = 4096
MAX_STATUS_CODES = 100

TTL_RANGE = (2, 3600)  # etcd grants no lease under 2 s; an hour is a very slow failover
MIN_MARGIN = 0.1
MIN_ETCD_TIMEOUT = 0.05
MIN_KEEPALIVE_INTERVAL = 0.1
RETRY_INTERVAL_RANGE = (0.05, 300.0)
ANNOUNCE_COUNT_RANGE = (1, 100)
ANNOUNCE_INTERVAL_RANGE = (0.01, 10.0)
ANNOUNCE_REFRESH_RANGE = (1.0, 86400.0)  # or 0 (off)
CHECK_INTERVAL_RANGE = (0.1, 3600.0)
MIN_CHECK_TIMEOUT = 0.01
RISE_FALL_RANGE = (1, 100)
HOLD_DOWN_RANGE = (0.0, 3600.0)
NOTIFY_TIMEOUT_RANGE = (0.1, 3600.0)
VRID_RANGE = (1, 255)
PORT_RANGE = (1, 65535)


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
PRIORITY_RANGE = (0, MAX_PRIORITY)
PREEMPT_DELAY_RANGE = (0.0, 86400.0)
REBALANCE_RANGE = (1, 1000)
STARTUP_WAIT_RANGE = (0.0, 60.0)
CAMPAIGN_STEP_RANGE = (0.0, 2.0)


@dataclass(frozen=True)
class PlacementConfig:
    """Which host holds which VIP (docs/placement.md): the defaults of every VIP, and the
    pace of handovers this host starts for placement."""

    priority: int = DEFAULT_PRIORITY  # this node's priority for every VIP; higher wins
    preempt: bool = True  # hand a VIP over to a better-ranked host that became ready
    preempt_delay: float = 5.0  # seconds a better host must stay ready before it gets the VIP
    # VIPs this host hands over for placement at a time (preemption); a move or drain is not
    # held back by it
    rebalance: int = 4
    # Seconds after start before the first campaign: peers starting with us publish their
    # member records meanwhile, so a cold start takes each VIP once, by its best host.
    startup_wait: float = 2.0
    # Seconds a candidate of rank r waits, times r, before it campaigns for a free key; the
    # best-ranked live candidate campaigns at once.
    campaign_step: float = 0.1


DEFAULT_LIVENESS_KEY = Path("/etc/haagent/liveness.key")
LIVENESS_PORT = 7470
MIN_LIVENESS_KEY = 16  # bytes of HMAC key
LIVENESS_INTERVAL_RANGE = (0.005, 1.0)
LIVENESS_MULTIPLIER_RANGE = (3, 50)
LIVENESS_HOLD_RANGE = (0.01, 5.0)
LIVENESS_REFUTE_RANGE = (0.0, 1.0)
LIVENESS_ETCD_LOSS_RANGE = (0.05, 10.0)
# The drift of one monotonic clock against real time that every liveness timing tolerates:
# 1 %, ten thousand times an NTP-disciplined clock's and a hundred times a free-running
# crystal's. Two clocks apart by 2 x this are still inside the argument (docs/safety.md).
MAX_CLOCK_DRIFT = 0.01


@dataclass(frozen=True)
class LivenessConfig:
    """Fast failover (docs/safety.md, "Fast failover"): heartbeats between the agents and a
    quorum of them witnessing a holder's silence, so a dead holder costs a fraction of a second
    instead of a lease TTL. ``enabled=None``: on when the key file exists."""

    enabled: bool | None = None
    key_file: Path = DEFAULT_LIVENESS_KEY
    port: int = LIVENESS_PORT
    interval: float = 0.02  # seconds between two heartbeats to each peer
    # Heartbeats missed before a peer is suspected. BFD's default is 3; 4 because a Python
    # thread on a loaded 2-core host was measured silent for 60 ms (false suspicions).
    multiplier: int = 4
    # Seconds a holder that no quorum of peers vouches for keeps its VIPs after the send time
    # of its last acknowledged keepalive; a new holder waits this long after a verdict.
    hold: float = 0.06
    # Seconds a quorum's suspicion must stand before the verdict: the suspect's chance to refute.
    refute_window: float = 0.02
    # Seconds without a keepalive answer after which a holder whose peers still reach etcd
    # gives its VIPs up and asks them to revoke its lease.
    etcd_loss: float = 0.3

    @property
    def detection(self) -> float:
        """Seconds of silence after which a peer is suspected."""
        return self.interval * self.multiplier

    @property
    def keepalive(self) -> float:
        """The keepalive interval while a quorum of peers vouches for this host."""
        return self.etcd_loss / 3

    @property
    def fast_keepalive(self) -> float:
        """The keepalive interval while none does: ``hold`` must see an answer in time."""
        return self.hold / 3


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
    # Placement (decide.rank): None takes placement.priority.
    priority: int | None = None
    preempt: bool = PlacementConfig.preempt
    preempt_delay: float = PlacementConfig.preempt_delay
    # The VIP's further addresses (``addresses:`` in the file; ``address`` is the first). One
    # election for all of them: they are bound, announced and released together, so a v4/v6
    # pair can never end up on two hosts.
    extra_addresses: tuple[IPv4Interface | IPv6Interface, ...] = ()

    @property
    def addresses(self) -> tuple[IPv4Interface | IPv6Interface, ...]:
        """Every address of the VIP, the primary (``address``) first."""
        return (self.address, *self.extra_addresses)

    @property
    def ip(self) -> IPv4Address | IPv6Address:
        """The primary address's IP."""
        return self.address.ip

    @property
    def ips(self) -> tuple[IPv4Address | IPv6Address, ...]:
        return tuple(a.ip for a in self.addresses)

    @property
    def family(self) -> int:
        """The primary address's IP version (4 or 6)."""
        return self.address.version

    @property
    def families(self) -> tuple[int, ...]:
        """The IP versions of the VIP's addresses, each once, in the order they first occur."""
        return tuple(dict.fromkeys(a.version for a in self.addresses))

    @property
    def addresses_text(self) -> str:
        """``198.51.100.10/32, 2001:db8::10/128``: every address, for log and error lines."""
        return ", ".join(str(a) for a in self.addresses)


def derived_vrid(vip_name: str) -> int:
    """A stable VRID (1-255) from the VIP name, for vmac VIPs that do not set one."""
    return int(hashlib.sha256(vip_name.encode()).hexdigest(), 16) % 255 + 1


def _default_node() -> str:
    return socket.gethostname().split(".", 1)[0].lower()


@dataclass(frozen=True)
class MetricsConfig:
    """The Prometheus endpoint (docs/metrics.md): off unless ``listen`` is set."""

    listen: tuple[str, int] | None = None  # (IP literal, port)

    @property
    def url(self) -> str | None:
        if self.listen is None:
            return None
        host, port = self.listen
        return f"http://{f'[{host}]' if ':' in host else host}:{port}/metrics"


def parse_listen(text: str) -> tuple[str, int]:
    """``"127.0.0.1:9187"`` or ``"[::1]:9187"`` -> (IP, port); ValueError with the fix."""
    text = text.strip()
    if text.startswith("["):
        host, sep, port_text = text[1:].partition("]:")
        if not sep:
            raise ValueError("expected [IPv6]:port, e.g. [::1]:9187")
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep or ":" in host:
            raise ValueError("expected IP:port, e.g. 127.0.0.1:9187 (IPv6 in brackets)")
    try:
        ip = ip_address(host)
    except ValueError:
        raise ValueError(
            f"{host!r} is not an IP address; the endpoint binds an address, not a host name"
        ) from None
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ValueError(f"port must be 1-65535, found {port_text[:12]!r}")
    return str(ip), int(port_text)


@dataclass(frozen=True)
class Config:
    cluster: str = "default"
    node: str = field(default_factory=_default_node)
    etcd: EtcdConfig = field(default_factory=EtcdConfig)
    lease: LeaseConfig = field(default_factory=LeaseConfig)
    announce: AnnounceConfig = field(default_factory=AnnounceConfig)  # defaults for each VIP
    vips: tuple[VipConfig, ...] = ()
    log_level: str = "info"
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    placement: PlacementConfig = field(default_factory=PlacementConfig)
    liveness: LivenessConfig = field(default_factory=LivenessConfig)
    # Named health checks, referenced by VipConfig.checks; read-only.
    checks: Mapping[str, CheckConfig] = field(default_factory=CheckMap)
    source: Path | None = None  # the file it came from
    digest: str = ""  # first 12 hex chars of sha256 over the file's bytes

    def vip(self, name: str) -> VipConfig:
        for v in self.vips:
            if v.name == name:
                return v
        raise KeyError(name)

    def priority_of(self, vip: VipConfig) -> int:
        """This node's placement priority for ``vip``."""
        return self.placement.priority if vip.priority is None else vip.priority

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


def _int_text(v: int) -> str:
    """An integer for an error line: its digits, or how many there are when that is absurd.

    ``str()`` refuses integers of more than 4300 digits (CPython's limit against slow
    conversions), and a 1000-digit number helps nobody read the line anyway.
    """
    if -(10**18) < v < 10**18:
        return str(v)
    try:
        digits = len(str(abs(v)))
    except ValueError:
        return f"an integer of about {int(v.bit_length() * math.log10(2))} digits"
    return f"an integer of {digits} digits"


def _port_problem(port: int) -> str | None:
    """The port rule of tcp checks and check URLs (parse_endpoint words its own)."""
    lo, hi = PORT_RANGE
    return None if lo <= port <= hi else f"port {_int_text(port)} is out of range {lo}-{hi}"


def _shown(value: object, limit: int = 60) -> str:
    """``repr(value)`` cut to ``limit`` characters: safe for any value a file can hold."""
    if isinstance(value, int) and not isinstance(value, bool):
        return _int_text(value)
    try:
        text = repr(value)
    except (ValueError, RecursionError):  # a huge integer or a self-containing list inside
        return f"a {type(value).__name__}"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _key_text(key: object) -> str:
    """A mapping key as it goes into a dotted key path: itself when it reads well on one line."""
    if isinstance(key, str) and key.isprintable() and 0 < len(key) <= 64:
        return key
    return _shown(key)


def _found(value: object) -> str:
    """How a YAML value reads to a human: 'a string ("1s")', 'true/false (True)', 'null'."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"true/false ({str(value).lower()})"
    if isinstance(value, int):
        if -(10**18) < value < 10**18:
            return f"an integer ({value})"
        return _int_text(value)
    if isinstance(value, float):
        return f"a number ({value})"
    if isinstance(value, str):
        return f"a string ({_shown(value, 40)})"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return f"a {type(value).__name__} ({_shown(value, 40)})"


def _text_problem(text: str, limit: int) -> str | None:
    """Why ``text`` cannot be a setting: too long, or not text the OS and the logs can carry.

    A NUL cannot pass into a path, an argv or a log line (Python raises ValueError at the
    system call), and a lone surrogate (YAML's "\\ud800") cannot even be encoded as UTF-8.
    """
    if len(text) > limit:
        return f"too long: {len(text)} characters, at most {limit}"
    if (nul := text.find("\0")) >= 0:
        return f"contains a NUL character (at position {nul})"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return (
            f"contains {text[exc.start]!r} (at position {exc.start}), a lone surrogate, "
            "which is not a character"
        )
    return None


class _Collector:
    def __init__(self, source: str, base_dir: Path | None) -> None:
        self.source = source
        self.base_dir = base_dir
        self.errors: list[ConfigError] = []
        self.dropped = 0  # errors past MAX_ERRORS, counted but not kept

    def error(self, key: str, reason: str) -> None:
        if len(self.errors) >= MAX_ERRORS:
            self.dropped += 1
            return
        self.errors.append(ConfigError(self.source, key, reason))

    def all_errors(self) -> list[ConfigError]:
        """The errors kept, and one line saying how many more there were."""
        if not self.dropped:
            return list(self.errors)
        more = ConfigError(
            self.source,
            "",
            f"{self.dropped} more error(s) not shown; fix the ones above and check again",
        )
        return [*self.errors, more]

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
            if len(self.errors) >= MAX_ERRORS:
                self.dropped += 1  # not shown, so not worth a suggestion either
                continue
            reason = f"unknown key {_shown(k)}"
            close: list[str] = []
            if isinstance(k, str) and len(k) <= 64:
                close = difflib.get_close_matches(k, allowed, n=1, cutoff=0.6)
                if not close:
                    close = [a for a in allowed if a == k.lower().replace("-", "_")]
            elif isinstance(k, bool | float) or (isinstance(k, int) and abs(k) < 10**18):
                close = difflib.get_close_matches(str(k), allowed, n=1, cutoff=0.6)
            if close:
                reason += f"; did you mean {close[0]!r}?"
            else:
                reason += f"; expected one of: {', '.join(allowed)}"
            self.error(_join(path, _key_text(k)), reason)
        return out

    def string(self, value: object, key: str, *, limit: int = MAX_STRING) -> str | None:
        if not isinstance(value, str):
            hint = "; quote it" if isinstance(value, int | float) else ""
            self.error(key, f"expected a string, found {_found(value)}{hint}")
            return None
        if problem := _text_problem(value, limit):
            self.error(key, problem)
            return None
        if not value.strip():
            self.error(key, "must not be empty")
            return None
        return value

    def name(self, value: object, key: str) -> str | None:
        text = self.string(value, key)
        if text is None:
            return None
        if not valid_name(text):
            hint = " (names are lower-case)" if valid_name(text.lower()) else ""
            self.error(key, f"{_shown(text, 80)} is not a valid name{hint}: {_NAME_RULE}")
            return None
        return text

    def number(self, value: object, key: str) -> float | None:
        if isinstance(value, bool) or not isinstance(value, int | float):
            self.error(key, f"expected a number of seconds, found {_found(value)}")
            return None
        try:
            number = float(value)
        except OverflowError:  # an integer beyond any float: beyond every range too
            self.error(key, f"far out of range: found {_found(value)}")
            return None
        if not math.isfinite(number):
            self.error(key, f"expected a finite number, found {value}")
            return None
        return number

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
        text = self.string(value, key, limit=MAX_PATH)
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


def _seconds(lo: float, hi: float | None = None, why: str = "") -> Callable[[float], str | None]:
    """A range check for a duration: ``lo <= v`` and, with ``hi``, ``v <= hi``."""

    def check(v: float) -> str | None:
        if v >= lo and (hi is None or v <= hi):
            return None
        what = f"from {lo:g} to {hi:g} seconds" if hi is not None else f"at least {lo:g} seconds"
        return f"must be {what}, found {v:g}" + (f": {why}" if why else "")

    return check


def _whole(lo: int, hi: int, unit: str = "", why: str = "") -> Callable[[int], str | None]:
    """A range check for an integer."""

    def check(v: int) -> str | None:
        if lo <= v <= hi:
            return None
        unit_text = f" {unit}" if unit else ""
        return f"must be from {lo} to {hi}{unit_text}, found {_int_text(v)}" + (
            f": {why}" if why else ""
        )

    return check


# --------------------------------------------------------------------------- sections

_TOP_KEYS = (
    "cluster",
    "node",
    "log_level",
    "etcd",
    "lease",
    "announce",
    "metrics",
    "placement",
    "liveness",
    "checks",
    "vips",
)
_LIVENESS_KEYS = (
    "enabled",
    "key_file",
    "port",
    "interval",
    "multiplier",
    "hold",
    "refute_window",
    "etcd_loss",
)
_PLACEMENT_KEYS = (
    "priority",
    "preempt",
    "preempt_delay",
    "rebalance",
    "startup_wait",
    "campaign_step",
)
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
    "addresses",
    "interface",
    "announce",
    "checks",
    "hold_down",
    "when_all_unhealthy",
    "notify",
    "vmac",
    "vrid",
    "bind",
    "priority",
    "preempt",
    "preempt_delay",
)
_CHECK_KEYS = ("type", "interval", "timeout", "rise", "fall")
_CHECK_TYPE_KEYS: dict[str, tuple[str, ...]] = {
    "tcp": ("host", "port"),
    "http": ("url", "method", "expect_status", "expect_body", "tls_verify"),
    "exec": ("command", "per_vip"),
    "interface": ("interface",),
}
_NOTIFY_KEYS = (*(f"on_{kind}" for kind in NOTIFY_KINDS), "timeout")
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
    if len(value) > MAX_ENDPOINTS:
        col.error(
            path,
            f"{len(value)} endpoints, more than {MAX_ENDPOINTS}: list the members of one etcd "
            "cluster (usually 3, 5 or 7)",
        )
        return None
    out: list[str] = []
    seen: dict[tuple[str, int], int] = {}
    ok = True
    for i, item in enumerate(value):
        key = f"{path}[{i}]"
        text = col.string(item, key, limit=MAX_URL)
        if text is None:
            ok = False
            continue
        text = text.strip()
        try:
            host, port, _ = parse_endpoint(text)
        except ValueError as exc:
            col.error(key, f"{_shown(text)}: {exc}")
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
        data = _read_regular(path, MAX_PASSWORD_FILE)
    except _Unreadable as exc:
        col.error(key, f"{str(path)!r}: {exc}")
        return None
    try:
        text = data.decode("utf-8").rstrip("\r\n")
    except UnicodeDecodeError:
        col.error(key, f"{str(path)!r} is not UTF-8 text")
        return None
    if not text:
        col.error(key, f"{str(path)!r} is empty")
        return None
    if problem := _text_problem(text, MAX_PASSWORD):
        col.error(key, f"{str(path)!r}: the password is {problem}")
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
    s.take("password", lambda v, k: col.string(v, k, limit=MAX_PASSWORD), nullable=True)
    s.take("password_file", col.path, nullable=True)
    s.take(
        "timeout",
        col.number,
        _seconds(MIN_ETCD_TIMEOUT, why="a shorter etcd call times out even on a quiet LAN"),
    )
    s.take("retry_interval", col.number, _seconds(*RETRY_INTERVAL_RANGE))

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
    elif username is not None and endpoints is not _MISSING:
        # docs/security.md: the password's token is a gRPC call credential, which gRPC only
        # sends over TLS; etcd would take it over http, but the agent could never start.
        plain = [i for i, e in enumerate(endpoints) if not parse_endpoint(e)[2]]
        if plain:
            first = f"{s.key('endpoints')}[{plain[0]}]"
            col.error(
                s.key("username"),
                f"username and password need https:// endpoints and etcd.tls: {first} is "
                f"{_shown(endpoints[plain[0]])}, and gRPC will not send etcd's login token over "
                "plain http, so the agent could never start; use https:// endpoints with "
                "etcd.tls.ca, or log in with a client certificate instead (etcd.tls.cert and "
                "etcd.tls.key, whose CN names the etcd user) and remove username and password",
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
        _whole(
            *TTL_RANGE,
            "seconds",
            "etcd grants no shorter lease, and a longer one leaves a crashed host's VIPs "
            "unanswered for longer than an hour",
        ),
    )
    s.take("margin", col.number, _seconds(MIN_MARGIN, why="it must cover unbinding the VIPs"))
    s.take(
        "keepalive_interval",
        col.number,
        _seconds(MIN_KEEPALIVE_INTERVAL, why="faster keepalives only load etcd"),
        nullable=True,
    )
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
    s.take("count", col.integer, _whole(*ANNOUNCE_COUNT_RANGE))
    s.take("interval", col.number, _seconds(*ANNOUNCE_INTERVAL_RANGE))
    lo, hi = ANNOUNCE_REFRESH_RANGE
    s.take(
        "refresh",
        col.number,
        lambda v: (
            None
            if v == 0 or lo <= v <= hi
            else f"must be 0 (off) or from {lo:g} to {hi:g} seconds, found {v:g}: faster "
            "re-announcements only flood the segment"
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
        return f"{_shown(name)} is longer than {_IFNAMSIZ - 1} bytes, the Linux limit"
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


def _host_problem(host: str) -> str | None:
    """A host for a tcp check or in a URL: an IP address or a syntactically valid host name."""
    if host.startswith("["):
        return f"{_shown(host)}: write an IPv6 address without brackets"
    if ":" in host:
        try:
            IPv6Address(host)
        except AddressValueError as exc:
            return f"{_shown(host)} is not a valid IPv6 address: {exc}"
        return None
    if re.fullmatch(r"[0-9.]+", host):
        try:
            IPv4Address(host)
        except AddressValueError as exc:
            return f"{_shown(host)} is not a valid IPv4 address: {exc}"
        return None
    name = host[:-1] if host.endswith(".") else host
    if len(name) > 253 or not name or not all(_HOST_LABEL.match(p) for p in name.split(".")):
        return f"{_shown(host)} is not a valid host name or IP address"
    return None


def _url_problem(url: str) -> str | None:
    shown = _shown(url)
    # http.client refuses these when it sends the request; say so now, not at every run.
    if bad := next((c for c in url if ord(c) <= 0x20 or ord(c) == 0x7F), None):
        return f"{shown}: contains {bad!r}; percent-encode it (a space is %20)"
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        return f"{shown}: {exc}"
    if parts.scheme.lower() not in ("http", "https"):
        scheme = parts.scheme or "none"
        return f"{shown}: scheme {scheme!r} is not supported; use http:// or https://"
    if "@" in parts.netloc:
        return f"{shown}: credentials in the URL are not supported"
    if not parts.hostname:
        return f"{shown}: the host is missing"
    if problem := _host_problem(parts.hostname):
        return f"{shown}: {problem}"
    if port is not None and (problem := _port_problem(port)):
        return f"{shown}: {problem}"
    return None


def _parse_command(col: _Collector, value: object, key: str) -> tuple[str, ...] | None:
    """A list is argv, run without a shell; a string is run with ``/bin/sh -c``."""
    if isinstance(value, str):
        if problem := _text_problem(value, MAX_COMMAND):
            col.error(key, problem)
            return None
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
    if len(value) > MAX_ARGV:
        col.error(key, f"{len(value)} arguments, more than {MAX_ARGV}")
        return None
    argv: list[str] = []
    for i, item in enumerate(value):
        if not isinstance(item, str):
            hint = "; quote it" if isinstance(item, int | float) else ""
            col.error(f"{key}[{i}]", f"expected a string, found {_found(item)}{hint}")
            return None
        if problem := _text_problem(item, MAX_COMMAND):
            col.error(f"{key}[{i}]", problem)
            return None
        argv.append(item)
    if (total := sum(len(a) for a in argv)) > MAX_COMMAND:
        col.error(key, f"too long: {total} characters in all, at most {MAX_COMMAND}")
        return None
    if not argv[0].strip():
        col.error(f"{key}[0]", "the program must not be empty")
        return None
    return tuple(argv)


def _parse_status_list(col: _Collector, value: object, key: str) -> tuple[int, ...] | None:
    items = value if isinstance(value, list) else [value]
    if not items:
        col.error(key, "must not be empty; leave it out to accept any 2xx or 3xx status")
        return None
    if len(items) > MAX_STATUS_CODES:
        col.error(key, f"{len(items)} status codes, more than {MAX_STATUS_CODES}")
        return None
    out: list[int] = []
    for i, item in enumerate(items):
        ikey = f"{key}[{i}]" if isinstance(value, list) else key
        if isinstance(item, bool) or not isinstance(item, int):
            col.error(ikey, f"expected an HTTP status code (an integer), found {_found(item)}")
            return None
        if not 100 <= item <= 599:
            col.error(ikey, f"{_int_text(item)} is not an HTTP status code (100-599)")
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
    s.take("interval", col.number, _seconds(*CHECK_INTERVAL_RANGE))
    s.take("timeout", col.number, _seconds(MIN_CHECK_TIMEOUT))
    s.take("rise", col.integer, _whole(*RISE_FALL_RANGE))
    s.take("fall", col.integer, _whole(*RISE_FALL_RANGE))
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
            s.take("port", col.integer, _port_problem)
        if s.bad or "port" not in s.values:
            return None
        host = s.values.get("host", TcpCheckConfig.host)
        return TcpCheckConfig(name=name, host=host, port=s.values["port"], **common)
    if kind == "http":
        if required("url"):
            s.take("url", lambda v, key: col.string(v, key, limit=MAX_URL), _url_problem)
        s.take(
            "method",
            col.string,
            lambda v: None if v.upper() in _HTTP_METHODS else _one_of(v, _HTTP_METHODS),
        )
        s.take("expect_status", lambda v, key: _parse_status_list(col, v, key))
        s.take("expect_body", lambda v, key: col.string(v, key, limit=MAX_EXPECT_BODY))
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
    if len(value) > MAX_CHECKS:
        col.error(
            path,
            f"{len(value)} checks, more than {MAX_CHECKS}: each check runs in a thread of its "
            "own; let VIPs share checks (one check serves any number of VIPs)",
        )
        # Defined all the same, so that the VIPs naming them add no "unknown check" errors.
        return {}, {k for k in value if isinstance(k, str)}
    out: dict[str, CheckConfig] = {}
    defined: set[str] = set()
    for raw_name, body in value.items():
        key = _join(path, _key_text(raw_name))
        if isinstance(raw_name, str):
            defined.add(raw_name)
        name = col.name(raw_name, key)
        check = _parse_check(col, name or _key_text(raw_name), body, key)
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
    s.take("timeout", col.number, _seconds(*NOTIFY_TIMEOUT_RANGE))
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
        hint = ""
        if isinstance(value, str):
            hint = f"; write a list, e.g. [{value if _key_text(value) == value else 'name'}]"
        col.error(key, f"expected a list of check names, found {_found(value)}{hint}")
        return None
    if len(value) > MAX_VIP_CHECKS:
        col.error(key, f"{len(value)} checks, more than {MAX_VIP_CHECKS} for one VIP")
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
            reason = f"unknown check {_shown(name)}"
            if close := difflib.get_close_matches(name, sorted(defined), n=1, cutoff=0.6):
                reason += f"; did you mean {close[0]!r}?"
            elif defined:
                reason += f"; defined checks: {_some(sorted(map(_key_text, defined)), 10)}"
            else:
                reason += "; define it under the top-level checks:"
            col.error(ikey, reason)
            ok = False
        elif name in out:
            col.error(ikey, f"check {_shown(name)} is listed twice")
            ok = False
        elif name not in checks:
            ok = False  # its definition is invalid, which is already reported
        else:
            out.append(name)
    return tuple(out) if ok else None


def _parse_placement(col: _Collector, value: object) -> PlacementConfig:
    if value is None:
        return PlacementConfig()
    raw = col.mapping(value, "placement", _PLACEMENT_KEYS)
    s = _Section(col, raw, "placement")
    s.take("priority", col.integer, _whole(*PRIORITY_RANGE))
    s.take("preempt", col.boolean)
    s.take("preempt_delay", col.number, _seconds(*PREEMPT_DELAY_RANGE))
    s.take("rebalance", col.integer, _whole(*REBALANCE_RANGE, "VIPs at a time"))
    s.take("startup_wait", col.number, _seconds(*STARTUP_WAIT_RANGE))
    s.take("campaign_step", col.number, _seconds(*CAMPAIGN_STEP_RANGE))
    return PlacementConfig(**s.values)


def _parse_liveness(col: _Collector, value: object, lease: LeaseConfig) -> LivenessConfig:
    """The ``liveness`` section and the timing rules the safety argument rests on
    (docs/safety.md, "Fast failover: the timing rules")."""
    if value is None:
        return LivenessConfig()
    raw = col.mapping(value, "liveness", _LIVENESS_KEYS)
    s = _Section(col, raw, "liveness")
    s.take("enabled", col.boolean)
    s.take("key_file", col.path)
    s.take("port", col.integer, _whole(1, 65535))
    s.take("interval", col.number, _seconds(*LIVENESS_INTERVAL_RANGE))
    s.take("multiplier", col.integer, _whole(*LIVENESS_MULTIPLIER_RANGE, "heartbeats"))
    s.take("hold", col.number, _seconds(*LIVENESS_HOLD_RANGE))
    s.take("refute_window", col.number, _seconds(*LIVENESS_REFUTE_RANGE))
    s.take("etcd_loss", col.number, _seconds(*LIVENESS_ETCD_LOSS_RANGE))
    if s.bad:
        return LivenessConfig()
    cfg = LivenessConfig(**s.values)
    if cfg.enabled is False:
        return cfg
    budget = lease.ttl - lease.margin
    if cfg.etcd_loss >= budget:
        col.error(
            s.key("etcd_loss"),
            f"must be less than lease.ttl - lease.margin ({budget:g} s), found "
            f"{cfg.etcd_loss:g}: a holder cut off from etcd must give up before its lease "
            "deadline would make it anyway",
        )
    if cfg.hold >= budget:
        col.error(
            s.key("hold"),
            f"must be less than lease.ttl - lease.margin ({budget:g} s), found {cfg.hold:g}",
        )
    if cfg.hold < 3 * cfg.interval:
        col.error(
            s.key("hold"),
            f"must be at least 3 x liveness.interval ({3 * cfg.interval:g} s), found "
            f"{cfg.hold:g}: a holder no quorum vouches for needs a keepalive answer every "
            "hold / 3 seconds, and that must not be more often than the heartbeats",
        )
    if cfg.detection * (1 - 2 * MAX_CLOCK_DRIFT) <= cfg.interval:
        col.error(
            s.key("multiplier"),
            "liveness.interval x multiplier leaves no room for clock drift; raise multiplier",
        )
    return cfg


def _take_vip_placement(
    col: _Collector, s: _Section, node: str | None, placement: PlacementConfig
) -> None:
    """A VIP's ``priority`` (a number: this node's; a mapping of node to number: one file for
    every host, nodes not named take placement.priority), ``preempt`` and ``preempt_delay``."""
    value = s.raw.get("priority")
    if isinstance(value, dict):
        key = s.key("priority")
        ok = True
        for n, p in value.items():
            nkey = _join(key, _key_text(n))
            good_name = col.name(n, nkey) is not None
            number = col.integer(p, nkey)
            if number is not None and (problem := _whole(*PRIORITY_RANGE)(number)):
                col.error(nkey, problem)
                number = None
            ok = ok and good_name and number is not None
        if not ok:
            s.bad.add("priority")
        elif node is not None and node in value:
            s.values["priority"] = value[node]
    elif value is not None:
        s.take("priority", col.integer, _whole(*PRIORITY_RANGE))
    s.values.setdefault("preempt", placement.preempt)
    s.values.setdefault("preempt_delay", placement.preempt_delay)
    s.take("preempt", col.boolean)
    s.take("preempt_delay", col.number, _seconds(*PREEMPT_DELAY_RANGE))


def _parse_vips(
    col: _Collector,
    value: object,
    announce: AnnounceConfig,
    checks: Mapping[str, CheckConfig],
    defined: set[str],
    node: str | None,
    placement: PlacementConfig,
) -> tuple[VipConfig, ...]:
    path = "vips"
    if value is None or value == []:
        col.error(path, "at least one VIP is required; an agent with no VIP has nothing to do")
        return ()
    if not isinstance(value, list):
        col.error(path, f"expected a list of VIP mappings, found {_found(value)}")
        return ()
    if len(value) > MAX_VIPS:
        col.error(
            path,
            f"{len(value)} VIPs, more than {MAX_VIPS}: split them between several clusters "
            "(each with its own agents)",
        )
        return ()
    out: list[VipConfig] = []
    where: list[int] = []  # the index in the file of each VIP in out
    names: dict[str, int] = {}
    ips: dict[IPv4Address | IPv6Address, str] = {}  # IP -> the key that gave it
    for i, item in enumerate(value):
        vpath = f"{path}[{i}]"
        raw = col.mapping(item, vpath, _VIP_KEYS)
        if raw is None:
            continue
        for required in ("name", "interface"):
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
        addresses = _parse_vip_addresses(col, raw, vpath, ips)
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
        s.take("hold_down", col.number, _seconds(*HOLD_DOWN_RANGE))
        _take_vip_placement(col, s, node, placement)
        s.take("vmac", col.boolean)
        s.take("bind", col.boolean)
        s.take("vrid", col.integer, _whole(*VRID_RANGE))
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
        if name is not None and addresses and interface is not None and not s.bad:
            first, *more = addresses
            out.append(
                VipConfig(
                    name, first, interface, vip_announce, extra_addresses=tuple(more), **s.values
                )
            )
            where.append(i)
    # Two vmac VIPs of one family and VRID would share a virtual MAC and move together. A VIP
    # with addresses of both families has a vmac of each, both with its VRID.
    seen: dict[tuple[int, int], str] = {}
    for i, v in zip(where, out, strict=True):
        if not v.vmac:
            continue
        for family in v.families:
            other = seen.setdefault((family, v.vrid), v.name)
            if other != v.name:
                col.error(
                    f"{path}[{i}].vrid",
                    f"VRID {v.vrid} (IPv{family}) is already used by VIP {other!r}: each vmac "
                    "VIP needs its own virtual MAC; set vrid explicitly",
                )
                break
    return tuple(out)


def _parse_vip_addresses(
    col: _Collector,
    raw: dict[str, Any],
    vpath: str,
    ips: dict[IPv4Address | IPv6Address, str],
) -> list[IPv4Interface | IPv6Interface] | None:
    """A VIP's ``address`` or ``addresses`` (exactly one of them), each address checked by
    :func:`_parse_address` and unique in the whole file; None when there is an error.

    ``ips`` maps every address seen so far to the key that gave it, and gains this VIP's.
    """
    one, many = raw.get("address"), raw.get("addresses")
    if one is not None and many is not None:
        col.error(
            _join(vpath, "addresses"),
            "set together with address; give either address (one) or addresses (a list), "
            "and put every address of the VIP in addresses",
        )
        return None
    if many is None:
        if one is None:
            col.error(_join(vpath, "address"), "required")
            return None
        items: list[tuple[str, object]] = [(_join(vpath, "address"), one)]
    else:
        key = _join(vpath, "addresses")
        if not isinstance(many, list):
            hint = "; write a list, or use address for one" if isinstance(many, str) else ""
            col.error(key, f"expected a list of addresses, found {_found(many)}{hint}")
            return None
        if not many:
            col.error(key, "must list at least one address")
            return None
        if len(many) > MAX_VIP_ADDRESSES:
            col.error(
                key,
                f"{len(many)} addresses, more than {MAX_VIP_ADDRESSES}: make several VIPs "
                "(each fails over on its own)",
            )
            return None
        items = [(f"{key}[{j}]", item) for j, item in enumerate(many)]
    out: list[IPv4Interface | IPv6Interface] = []
    ok = True
    for akey, value in items:
        text = col.string(value, akey, limit=MAX_ADDRESS)
        if text is None:
            ok = False
            continue
        try:
            address = _parse_address(text)
        except ValueError as exc:
            col.error(akey, f"{text!r}: {exc}")
            ok = False
            continue
        if address.ip in ips:
            first = ips[address.ip]
            owner = first.rsplit(".", 1)[0]
            if first.startswith(vpath + "."):
                col.error(akey, f"{address.ip} is listed twice (also {first})")
            elif first.endswith(".address"):
                col.error(akey, f"{address.ip} is already the address of {owner}")
            else:
                col.error(akey, f"{address.ip} is already an address of {owner} ({first})")
            ok = False
            continue
        ips[address.ip] = akey
        out.append(address)
    return out if ok else None


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
        raise ConfigErrors(col.all_errors())
    raw = col.mapping(data, "", _TOP_KEYS) or {}
    top = _Section(col, raw, "")
    top.take("cluster", col.name)
    top.take("node", col.name)
    top.take("log_level", col.string, _log_level_problem)
    node = top.values.get("node")
    if node is None and "node" not in top.bad:
        node = _default_node()
        if not valid_name(node):
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
    metrics = _parse_metrics(col, raw.get("metrics"))
    checks, defined = _parse_checks(col, raw.get("checks"))
    placement = _parse_placement(col, raw.get("placement"))
    liveness = _parse_liveness(col, raw.get("liveness"), lease)
    vips = _parse_vips(col, raw.get("vips"), announce, checks, defined, node, placement)
    _check_exec_sharing(col, checks, vips)

    if col.errors:
        raise ConfigErrors(col.all_errors())
    assert node is not None
    return Config(
        cluster=top.values.get("cluster", Config.cluster),
        node=node,
        etcd=etcd,
        lease=lease,
        announce=announce,
        vips=vips,
        log_level=top.values.get("log_level", Config.log_level).lower(),
        metrics=metrics,
        placement=placement,
        liveness=liveness,
        checks=CheckMap(checks),
    )


def _parse_metrics(col: _Collector, value: object) -> MetricsConfig:
    if value is None:
        return MetricsConfig()
    raw = col.mapping(value, "metrics", ("listen",))
    if raw is None or raw.get("listen") is None:
        return MetricsConfig()
    text = col.string(raw["listen"], "metrics.listen", limit=64)
    if text is None:
        return MetricsConfig()
    try:
        return MetricsConfig(parse_listen(text))
    except ValueError as exc:
        col.error("metrics.listen", str(exc))
        return MetricsConfig()


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys, deep nesting and values Python cannot build.

    PyYAML composes nested collections recursively, so a few thousand '[' overflow the
    interpreter's stack (RecursionError); and some constructors raise plain ValueError (the
    date 2001-13-45, an integer of more than 4300 digits). Each becomes a YAML error with its
    line and column instead of a traceback.
    """

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def fetch_flow_collection_start(self, TokenClass: Any) -> None:
        # The scanner reads up to 1024 characters ahead past every '[' or '{' it has not
        # resolved, at a cost that grows with the square of their number (about a second for a
        # run of 1000): stop at the limit here, before the composer ever sees them.
        if self.flow_level >= MAX_YAML_DEPTH:
            raise yaml.scanner.ScannerError(
                None,
                None,
                f"nested more than {MAX_YAML_DEPTH} levels deep (a haagent config needs 6)",
                self.get_mark(),
            )
        super().fetch_flow_collection_start(TokenClass)

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        if self.check_event(yaml.AliasEvent):
            return super().compose_node(parent, index)  # a node composed (and counted) before
        self._depth += 1
        try:
            if self._depth > MAX_YAML_DEPTH:
                event: Any = self.peek_event()  # type: ignore[no-untyped-call]
                raise yaml.composer.ComposerError(
                    None,
                    None,
                    f"nested more than {MAX_YAML_DEPTH} levels deep (a haagent config needs 6)",
                    event.start_mark,
                )
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep)
        except yaml.YAMLError:
            raise
        except Exception as exc:
            # PyYAML's constructors trust the resolver's patterns, which an explicit tag skips:
            # "!!int" alone raises IndexError, "!!bool x" KeyError, "!!timestamp x"
            # AttributeError. Whatever the exception, the value is what is wrong.
            kind = str(node.tag).rsplit(":", 1)[-1]
            why = f": {exc}" if isinstance(exc, ValueError | OverflowError) else ""
            raise yaml.constructor.ConstructorError(
                None, None, f"cannot read this value as {kind!r}{why}", node.start_mark
            ) from None


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
                    f"duplicate key {_shown(key_node.value)} (first at line {first.line + 1})",
                    key_node.start_mark,
                )
            seen[ident] = key_node
    return loader.construct_mapping(node)


# Characters of an integer in YAML: CPython's own limit for decimal digits (int() refuses
# more). Below it the number reaches the setting and is refused there with its key.
_MAX_INT_TEXT = 4300


def _construct_int(loader: _StrictLoader, node: yaml.ScalarNode) -> int:
    # Caught before int() so that the error names the value, not a Python setting.
    if len(node.value) > _MAX_INT_TEXT:
        raise yaml.constructor.ConstructorError(
            None,
            None,
            f"an integer written with {len(node.value)} characters is too large for any setting",
            node.start_mark,
        )
    return loader.construct_yaml_int(node)


_StrictLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping_no_dups
)
_StrictLoader.add_constructor("tag:yaml.org,2002:int", _construct_int)


class _Unreadable(Exception):
    """Why a file cannot be read, in words that complete "<file>: ..."."""


_FILE_KINDS: tuple[tuple[Callable[[int], bool], str], ...] = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def _size_text(n: int) -> str:
    return f"{n >> 20} MiB" if n >= 1 << 20 else f"{n >> 10} KiB"


def _read_regular(path: Path, limit: int, *, truncate: bool = False) -> bytes:
    """The bytes of the regular file ``path``, at most ``limit`` of them.

    Larger files are refused, or with ``truncate`` cut to their first ``limit`` bytes. Anything
    but a regular file is refused: a FIFO would block the read until some writer comes, a
    device such as /dev/zero never ends. O_NONBLOCK lets the open of a FIFO return at once (it
    changes nothing for a regular file), and the kind is judged on the open descriptor, so a
    file swapped in after a check cannot slip through.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as exc:
        raise _Unreadable(f"cannot read: {exc.strerror or exc}") from None
    except ValueError:  # os.open refuses a NUL in the path before any system call
        raise _Unreadable("cannot read: the path contains a NUL character") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            kind = next((k for test, k in _FILE_KINDS if test(st.st_mode)), "not a file")
            raise _Unreadable(f"not a regular file but {kind}")
        if st.st_size > limit and not truncate:
            raise _Unreadable(f"larger than {_size_text(limit)} ({st.st_size} bytes)")
        chunks: list[bytes] = []
        got = 0
        while got <= limit:
            chunk = os.read(fd, min(1 << 16, limit + 1 - got))
            if not chunk:
                break
            chunks.append(chunk)
            got += len(chunk)
    except OSError as exc:
        raise _Unreadable(f"cannot read: {exc.strerror or exc}") from None
    finally:
        os.close(fd)
    data = b"".join(chunks)
    if len(data) > limit:
        if not truncate:  # it grew while being read
            raise _Unreadable(f"larger than {_size_text(limit)}")
        data = data[:limit]
    return data


def _one_line(text: str, limit: int = 200) -> str:
    """A parser's message as one bounded line (some quote the offending text)."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _yaml_error(source: str, exc: yaml.YAMLError, text: str) -> ConfigError:
    if isinstance(exc, yaml.reader.ReaderError):
        # Offsets into the text, not marks: turn them into a line and a column too.
        pos = max(0, min(exc.position, len(text)))
        line = text.count("\n", 0, pos) + 1
        column = pos - (text.rfind("\n", 0, pos) + 1) + 1
        what = f"{exc.reason}: {_shown(exc.character)}"
        return ConfigError(
            source,
            "",
            f"line {line}, column {column}: YAML error: {_one_line(what)}",
            line=line,
            column=column,
        )
    if not isinstance(exc, yaml.MarkedYAMLError):
        return ConfigError(source, "", f"YAML error: {_one_line(str(exc))}")
    mark = exc.problem_mark or exc.context_mark
    what = exc.problem or exc.context or "invalid YAML"
    if exc.context and exc.problem:
        what = f"{exc.problem} ({exc.context})"
    what = _one_line(what)
    if mark is None:
        return ConfigError(source, "", f"YAML error: {what}")
    line, column = mark.line + 1, mark.column + 1
    return ConfigError(
        source,
        "",
        f"line {line}, column {column}: YAML error: {what}",
        line=line,
        column=column,
    )


def load_config(path: str | Path) -> Config:
    """Read and validate a config file; ConfigErrors if it cannot be read, parsed or validated.

    The file must be a regular file of at most MAX_CONFIG_BYTES, with YAML nested at most
    MAX_YAML_DEPTH levels.
    """
    p = Path(path)
    source = str(p)
    try:
        data = _read_regular(p, MAX_CONFIG_BYTES)
    except _Unreadable as exc:
        raise ConfigErrors([ConfigError(source, "", str(exc))]) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        reason = f"not UTF-8 text (invalid byte at offset {exc.start})"
        raise ConfigErrors([ConfigError(source, "", reason)]) from None
    try:
        doc = yaml.load(text, Loader=_StrictLoader)  # a SafeLoader subclass: no arbitrary objects
    except yaml.YAMLError as exc:
        raise ConfigErrors([_yaml_error(source, exc, text)]) from None
    except RecursionError:  # the depth limit should come first; this is the backstop
        reason = "YAML error: nested too deeply (a haagent config needs 6 levels)"
        raise ConfigErrors([ConfigError(source, "", reason)]) from None
    cfg = parse_config(doc, source, base_dir=p.parent)
    return replace(cfg, source=p, digest=hashlib.sha256(data).hexdigest()[:12])


def _check_readable(path: Path, key: str, source: str) -> ConfigError | None:
    try:
        head = _read_regular(path, 1 << 20, truncate=True)
    except _Unreadable as exc:
        return ConfigError(source, key, f"{str(path)!r}: {exc}")
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
    errors += _foreign_vips(cfg, source)
    tls = cfg.etcd.tls
    if tls is not None:
        for name in ("ca", "cert", "key"):
            p: Path | None = getattr(tls, name)
            if p is not None and (err := _check_readable(p, f"etcd.tls.{name}", source)):
                errors.append(err)
    # Lazy: the key loader imports this module.
    from haagent.liveness.key import KeyProblem, load_key

    try:
        load_key(cfg)
    except KeyProblem as exc:
        errors.append(ConfigError(source, "liveness.key_file", str(exc)))
    return errors


def _foreign_vips(cfg: Config, source: str) -> list[ConfigError]:
    """VIPs with an address this host already has, configured outside haagent."""
    # Lazy: placement imports this module, and only host checks need netlink.
    from haagent.net.addresses import AddressManager, NetError
    from haagent.net.placement import Placement, foreign_problem

    index = {vip.name: i for i, vip in enumerate(cfg.vips)}
    try:
        with AddressManager() as net:
            place = Placement(net)
            found = place.foreign(cfg.vips)
    except NetError as exc:
        return [ConfigError(source, "vips", f"cannot list this host's addresses: {exc}")]
    vips = {vip.name: vip for vip in cfg.vips}
    out: list[ConfigError] = []
    for name, what in found.items():
        vip, key = vips[name], f"vips[{index[name]}].address"
        if vip.extra_addresses:
            key = f"vips[{index[name]}].addresses[{vip.ips.index(next(iter(what)))}]"
        out.append(ConfigError(source, key, foreign_problem(name, vip, what)))
    return out


def _secs(v: float) -> str:
    return f"{v:g} s"


def _describe_liveness(cfg: Config) -> str:
    lv = cfg.liveness
    if lv.enabled is False or cfg.lease.when_etcd_unreachable == "keep":
        return "fast failover: off (a dead holder costs up to the lease ttl)"
    when = "" if lv.enabled else f" if {lv.key_file} exists"
    return (
        f"fast failover: on{when}; heartbeats every {_secs(lv.interval)} on udp {lv.port}, a "
        f"silent peer suspected after {_secs(lv.detection)}, verdict after "
        f"{_secs(lv.refute_window)}, new holder binds {_secs(lv.hold)} after the lease is "
        f"gone; a holder gives up {_secs(lv.hold)} after its last keepalive when no quorum "
        f"vouches for it, and {_secs(lv.etcd_loss)} after etcd went silent while peers "
        "reach it"
    )


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
        _describe_liveness(cfg),
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
            f"  {v.name:<{width}}  {v.addresses_text} on {v.interface} "
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

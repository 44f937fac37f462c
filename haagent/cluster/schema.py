"""The etcd key layout and the JSON records stored under it: haagent's public contract.

Everything here is pure: it turns records into bytes and back and names keys. The layout and
the record fields are documented for external tools in docs/keys.md; a change that breaks a
reader must bump the version segment (``/haagent/v1/``) or the record's ``schema`` string.
"""

from __future__ import annotations

import enum
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from haagent.config import VipConfig

ROOT = "/haagent/v1"
HOLDER_SCHEMA = "haagent.holder/v1"
MEMBER_SCHEMA = "haagent.member/v1"
REQUEST_SCHEMA = "haagent.request/v1"
RELEASED_SCHEMA = "haagent.released/v1"
DRAIN_SCHEMA = "haagent.drain/v1"
SUSPECT_SCHEMA = "haagent.suspect/v1"
VERDICT_SCHEMA = "haagent.verdict/v1"
MAX_SUSPECTERS = 64

# The node a holder key names when its value is not a record this version can read.
UNREADABLE = "(unreadable)"

# Placement priorities (keepalived's ``priority``): higher is preferred.
DEFAULT_PRIORITY = 100
MAX_PRIORITY = 1_000_000

KeyKind = Literal["member", "holder", "request", "released", "drain", "suspect", "verdict"]

# Cluster, node and VIP names become etcd key segments: lower-case, no slashes, no control
# characters. A key or record naming anything else was not written by haagent; refusing it
# here also keeps untrusted text (a newline in a key name) out of every log line.
NAME_RE = r"^[a-z0-9]([a-z0-9_.-]{0,61}[a-z0-9])?$"
_NAME = re.compile(NAME_RE)


def valid_name(text: str) -> bool:
    # fullmatch: "$" alone would also match before a trailing newline ("db\n").
    return _NAME.fullmatch(text) is not None


class SchemaError(ValueError):
    """A value under the haagent prefix that is not a record this version understands.

    ``newer`` is set when the value is a record of the same kind with a schema version this
    version does not know (``haagent.holder/v2``): written by a newer haagent during a rolling
    upgrade, to be respected rather than treated as garbage (docs/keys.md).
    """

    def __init__(self, message: str, *, newer: bool = False) -> None:
        super().__init__(message)
        self.newer = newer


@dataclass(frozen=True)
class ParsedKey:
    kind: KeyKind
    name: str  # the node for member and drain keys, the VIP for holder, request, released;
    # the suspected node for suspect and verdict keys
    by: str = ""  # the suspecting node of a suspect key


@dataclass(frozen=True)
class Keys:
    """Key names for one cluster."""

    cluster: str

    @property
    def prefix(self) -> str:
        return f"{ROOT}/{self.cluster}/"

    def member(self, node: str) -> str:
        return f"{self.prefix}members/{node}"

    def holder(self, vip: str) -> str:
        return f"{self.prefix}vips/{vip}/holder"

    def request(self, vip: str) -> str:
        return f"{self.prefix}vips/{vip}/request"

    def released(self, vip: str) -> str:
        return f"{self.prefix}vips/{vip}/released"

    def drain(self, node: str) -> str:
        return f"{self.prefix}drain/{node}"

    def suspect(self, target: str, by: str) -> str:
        return f"{self.prefix}suspects/{target}/{by}"

    def suspects_of(self, target: str) -> str:
        return f"{self.prefix}suspects/{target}/"

    def verdict(self, target: str) -> str:
        return f"{self.prefix}verdicts/{target}"

    def parse(self, key: str | bytes) -> ParsedKey | None:
        """Classify a key under the cluster prefix; None for anything this version does not know."""
        text = key.decode("utf-8", "replace") if isinstance(key, bytes) else key
        if not text.startswith(self.prefix):
            return None
        parts = text[len(self.prefix) :].split("/")
        if len(parts) == 2 and parts[0] == "members" and valid_name(parts[1]):
            return ParsedKey("member", parts[1])
        if len(parts) == 2 and parts[0] == "drain" and valid_name(parts[1]):
            return ParsedKey("drain", parts[1])
        if len(parts) == 2 and parts[0] == "verdicts" and valid_name(parts[1]):
            return ParsedKey("verdict", parts[1])
        if (
            len(parts) == 3
            and parts[0] == "suspects"
            and valid_name(parts[1])
            and valid_name(parts[2])
        ):
            return ParsedKey("suspect", parts[1], parts[2])
        if len(parts) == 3 and parts[0] == "vips" and valid_name(parts[1]):
            if parts[2] == "holder":
                return ParsedKey("holder", parts[1])
            if parts[2] == "request":
                return ParsedKey("request", parts[1])
            if parts[2] == "released":
                return ParsedKey("released", parts[1])
        return None


def _encode(record: Mapping[str, Any]) -> bytes:
    return json.dumps(record, sort_keys=True, separators=(",", ":")).encode()


def _decode(raw: bytes, schema: str) -> dict[str, Any]:
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, ValueError) as exc:
        raise SchemaError(f"not JSON: {exc}") from None
    except RecursionError:  # a value nested deeper than any record: nothing we wrote
        raise SchemaError("not JSON: nested too deeply") from None
    if not isinstance(data, dict):
        raise SchemaError(f"expected a JSON object, found {type(data).__name__}")
    found = data.get("schema")
    if found != schema:
        kind = schema.rsplit("/", 1)[0] + "/"
        newer = isinstance(found, str) and found.startswith(kind) and _newer(found, schema)
        shown = found[:60] if isinstance(found, str) else found
        raise SchemaError(f"schema is {shown!r}, expected {schema!r}", newer=newer)
    return data


def _newer(found: str, known: str) -> bool:
    """``haagent.holder/v2`` is newer than ``haagent.holder/v1``; ``/vx`` is not a version."""
    mine, theirs = known.rsplit("/v", 1)[1], found.rsplit("/v", 1)[-1]
    digits = theirs.isascii() and theirs.isdigit() and mine.isascii() and mine.isdigit()
    return digits and len(theirs) <= 6 and int(theirs) > int(mine)


def _time(value: object, name: str) -> float:
    """A unix time from a record: finite, and a float (a 400-digit integer is not a time)."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise SchemaError(f"field {name!r} is not a number")
    try:
        t = float(value)
    except OverflowError:
        raise SchemaError(f"field {name!r} is out of range") from None
    if t != t or t in (float("inf"), float("-inf")):
        raise SchemaError(f"field {name!r} is not a finite number")
    return t


def _name_field(data: Mapping[str, Any], name: str) -> str:
    value = _field(data, name, str)
    if not valid_name(value):
        raise SchemaError(f"field {name!r} is not a valid node name: {value[:64]!r}")
    return str(value)


def _field(data: Mapping[str, Any], name: str, kind: type | tuple[type, ...]) -> Any:
    value = data.get(name)
    # bool is an int in Python; a number field holding true/false is malformed.
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise SchemaError(f"field {name!r} missing or not {getattr(kind, '__name__', kind)}")
    return value


class HealthState(enum.Enum):
    UNKNOWN = "unknown"  # the checks have not risen or fallen yet
    HEALTHY = "healthy"
    UNHEALTHY = "unhealthy"


@dataclass(frozen=True)
class Health:
    """A node's health for one VIP, as its member record publishes it.

    On the wire it stays the v1 text (``"healthy"``, ``"unknown"``, ``"unhealthy: <reason>"``)
    so that existing readers keep working; inside haagent it is a typed value, never compared
    as a string.
    """

    state: HealthState
    reason: str = ""

    @property
    def healthy(self) -> bool:
        return self.state is HealthState.HEALTHY

    @property
    def known(self) -> bool:
        return self.state is not HealthState.UNKNOWN

    def to_text(self) -> str:
        if self.state is HealthState.UNHEALTHY:
            return f"unhealthy: {self.reason}" if self.reason else "unhealthy"
        return str(self.state.value)

    @classmethod
    def from_text(cls, text: str) -> Health:
        if text == "healthy":
            return HEALTHY
        if text == "unknown":
            return UNKNOWN
        if text.startswith("unhealthy"):
            return cls(
                HealthState.UNHEALTHY, text.removeprefix("unhealthy").removeprefix(":").strip()
            )
        # A value this version does not know (a newer writer): not evidence of health.
        return cls(HealthState.UNKNOWN, f"unrecognised health {text[:80]!r}")


HEALTHY = Health(HealthState.HEALTHY)
UNKNOWN = Health(HealthState.UNKNOWN)

# "check pg failed: connection refused (3/3); check web failed: …" (health/state.py): each
# clause starts with "check <name> failed: ", and a check name never holds a space.
_FAILING_CLAUSE = re.compile(r"(?:^|; )check (\S+) failed: ")


def failing_checks(health: Health) -> tuple[tuple[str, str], ...]:
    """(check name, detail) of each failing check named in an unhealthy ``health``'s reason."""
    if health.state is not HealthState.UNHEALTHY:
        return ()
    text = health.reason
    found = list(_FAILING_CLAUSE.finditer(text))
    out: list[tuple[str, str]] = []
    for i, m in enumerate(found):
        end = found[i + 1].start() if i + 1 < len(found) else len(text)
        out.append((m.group(1), text[m.end() : end]))
    return tuple(out)


def health_to_dict(health: Health) -> dict[str, Any]:
    """The structured form of ``health`` (member records' ``health_state``, docs/keys.md)."""
    out: dict[str, Any] = {"state": health.state.value, "reason": health.reason}
    if health.state is HealthState.UNHEALTHY:
        out["failing"] = [{"check": c, "detail": d} for c, d in failing_checks(health)]
    return out


def health_from_dict(data: object) -> Health | None:
    """A structured health value, or None when it is not one this version can read.

    ``failing`` is derived from ``reason`` (so writing a record again gives the same bytes);
    readers that want it ready-made read it from the JSON.
    """
    if not isinstance(data, dict):
        return None
    state, reason = data.get("state"), data.get("reason", "")
    if not isinstance(reason, str):
        return None
    try:
        parsed = HealthState(state)
    except ValueError:
        return None
    if parsed is HealthState.HEALTHY and not reason:
        return HEALTHY
    if parsed is HealthState.UNKNOWN and not reason:
        return UNKNOWN
    return Health(parsed, reason)


VipMode = Literal["node-mac", "vmac", "announce-only"]
VIP_MODES: tuple[VipMode, ...] = ("node-mac", "vmac", "announce-only")


# Addresses of one VIP (``addresses:`` in the config; keepalived's virtual_ipaddress list): a
# service's v4 and v6 and a few more. The config refuses more, readers drop a longer list.
MAX_VIP_ADDRESSES = 16
# The longest "ip/prefix" a reader keeps (IPv6 with a prefix takes at most 49 characters).
_MAX_CIDR = 64


def _extra_cidrs(value: object, first: str) -> tuple[str, ...]:
    """The further addresses of a spec's ``addresses`` list, after ``first``; () when the
    field is absent or is not what an agent writes (a list of at most MAX_VIP_ADDRESSES
    strings that starts with the spec's own address): informational, so a malformed one is
    dropped and the spec keeps its first address, as a reader that knows no ``addresses``."""
    if not isinstance(value, list) or not 2 <= len(value) <= MAX_VIP_ADDRESSES:
        return ()
    if not all(isinstance(v, str) and 0 < len(v) <= _MAX_CIDR for v in value):
        return ()
    if value[0] != first:
        return ()
    return tuple(value[1:])


@dataclass(frozen=True)
class VipSpec:
    """What a VIP is on one host, as that host's config says: published so that a tool can
    draw the picture from etcd alone and spot hosts that disagree (docs/keys.md).

    Informational only: no agent ever binds an address it read from etcd; each binds what
    its own config says (docs/security.md).
    """

    address: str  # the IP, without prefix (of the first address, if it has several)
    prefix: int
    interface: str
    mode: VipMode = "node-mac"  # node MAC (bound normally), vmac, or announce-only
    checks: tuple[str, ...] = ()  # names of the health checks this host runs for it
    # The VIP's further addresses as "ip/prefix" (configuration.md: ``addresses``), after the
    # first one above; in JSON, ``addresses`` lists all of them, and only when there are more
    # than one, so that single-address records stay as they were.
    extra: tuple[str, ...] = ()

    @property
    def cidr(self) -> str:
        return f"{self.address}/{self.prefix}"

    @property
    def cidrs(self) -> tuple[str, ...]:
        """Every address as "ip/prefix", the first one first."""
        return (self.cidr, *self.extra)

    @classmethod
    def of_config(cls, vip: VipConfig) -> VipSpec:
        mode: VipMode = "vmac" if vip.vmac else "node-mac" if vip.bind else "announce-only"
        return cls(
            str(vip.ip),
            vip.address.network.prefixlen,
            vip.interface,
            mode,
            vip.checks,
            tuple(str(a) for a in vip.extra_addresses),
        )

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "address": self.address,
            "prefix": self.prefix,
            "interface": self.interface,
            "mode": self.mode,
            "checks": list(self.checks),
        }
        if self.extra:
            out["addresses"] = list(self.cidrs)
        return out

    @classmethod
    def from_dict(cls, data: object) -> VipSpec | None:
        """The spec, or None for a value this version cannot read (never raises)."""
        if not isinstance(data, dict):
            return None
        address, prefix = data.get("address"), data.get("prefix")
        interface, mode = data.get("interface"), data.get("mode", "node-mac")
        checks = data.get("checks", [])
        if not (isinstance(address, str) and isinstance(interface, str)):
            return None
        if not isinstance(prefix, int) or isinstance(prefix, bool) or not 0 <= prefix <= 128:
            return None
        if mode not in VIP_MODES:
            return None
        if not isinstance(checks, list) or not all(isinstance(c, str) for c in checks):
            return None
        address = address[:64]
        extra = _extra_cidrs(data.get("addresses"), f"{address}/{prefix}")
        return cls(address, prefix, interface[:64], mode, tuple(checks), extra)


@dataclass(frozen=True)
class Holder:
    """A VIP's holder key: the record in its value plus what etcd says about the key.

    ``lease`` and ``create_revision`` come from the key's metadata, never from the JSON (a
    hand-written value could claim anything); the record's own ``lease`` field is written for
    readers and must agree. ``problem`` is set when the value is not a record this version
    understands: such a key still *exists* (nobody can create it), so it is reported as held by
    :data:`UNREADABLE` rather than absent.

    ``epoch`` is the cluster revision at which the campaigning node saw the key absent. Each
    new holder must have observed its predecessor's key disappear, so epochs grow strictly
    from holder to holder and can serve as a fencing token.
    """

    node: str
    lease: int
    create_revision: int = 0
    since: float = 0.0  # unix time the holder won the key
    epoch: int = 0
    reason: str = ""
    problem: str | None = None
    newer: bool = False  # unreadable because a newer haagent wrote it (a rolling upgrade)
    # The VIP as the holder's config has it, for readers (optional, informational: no agent
    # binds from it).
    spec: VipSpec | None = None

    @property
    def readable(self) -> bool:
        return self.problem is None

    def to_json(self) -> bytes:
        record: dict[str, Any] = {
            "schema": HOLDER_SCHEMA,
            "node": self.node,
            "since": round(self.since, 3),
            "epoch": self.epoch,
            "reason": self.reason,
            "lease": f"{self.lease:x}",
        }
        if self.spec is not None:
            record["spec"] = self.spec.to_dict()
        return _encode(record)

    @classmethod
    def from_json(cls, raw: bytes, *, lease: int | None = None, create_revision: int = 0) -> Holder:
        """Decode a value; ``lease`` (the key's metadata) overrides the record's own field."""
        data = _decode(raw, HOLDER_SCHEMA)
        lease_hex = _field(data, "lease", str)
        try:
            recorded = int(lease_hex, 16)
        except ValueError:
            raise SchemaError(f"field 'lease' is not hexadecimal: {lease_hex!r}") from None
        return cls(
            node=_name_field(data, "node"),
            lease=recorded if lease is None else lease,
            create_revision=create_revision,
            since=_time(_field(data, "since", (int, float)), "since"),
            epoch=_field(data, "epoch", int),
            reason=_field(data, "reason", str),
            # Optional and informational: a malformed one is dropped, never fatal.
            spec=VipSpec.from_dict(data.get("spec")),
        )

    @classmethod
    def from_kv(cls, raw: bytes, lease: int, create_revision: int) -> Holder:
        """What a key holds, never raising: a value we cannot read becomes an UNREADABLE holder."""
        try:
            return cls.from_json(raw, lease=lease, create_revision=create_revision)
        except SchemaError as exc:
            return cls(
                node=UNREADABLE,
                lease=lease,
                create_revision=create_revision,
                problem=str(exc),
                newer=exc.newer,
            )


@dataclass(frozen=True)
class MemberRecord:
    """Value of ``members/<node>``, on the node's lease: the node is alive while it exists."""

    node: str
    address: str | None
    version: str
    started: float
    config_digest: str
    lease: int
    vips: tuple[str, ...] = ()
    draining: bool = False
    health: Mapping[str, Health] = field(default_factory=dict)
    # Each VIP as this host's config has it (address, prefix, interface, mode, checks).
    vip_specs: Mapping[str, VipSpec] = field(default_factory=dict)
    # Placement (decide.rank): this node's priority for every VIP, and the VIPs its config
    # gives another one. Ranked by every agent from these records, so all agree.
    priority: int = DEFAULT_PRIORITY
    priorities: Mapping[str, int] = field(default_factory=dict)
    # False during the start-up wait: better-ranked but not ready members are waited for
    # (bounded) before a free key is taken, and are never preempted for.
    ready: bool = True
    # Sends and answers heartbeats (fast failover, docs/safety.md): only such members count
    # in a quorum against a silent holder, and only they are expected to vouch for one.
    liveness: bool = False

    def priority_for(self, vip: str) -> int:
        return self.priorities.get(vip, self.priority)

    def to_json(self) -> bytes:
        return _encode(
            {
                "schema": MEMBER_SCHEMA,
                "node": self.node,
                "address": self.address,
                "version": self.version,
                "started": round(self.started, 3),
                "config_digest": self.config_digest,
                "lease": f"{self.lease:x}",
                "vips": list(self.vips),
                "draining": self.draining,
                # Both forms of health: the v1 text for readers that know only it, and the
                # structured one (docs/keys.md, "health and health_state").
                "health": {vip: h.to_text() for vip, h in self.health.items()},
                "health_state": {vip: health_to_dict(h) for vip, h in self.health.items()},
                "vip_specs": {vip: spec.to_dict() for vip, spec in self.vip_specs.items()},
                "priority": self.priority,
                "priorities": dict(self.priorities),
                "ready": self.ready,
                "liveness": self.liveness,
            }
        )

    @classmethod
    def from_json(cls, raw: bytes) -> MemberRecord:
        data = _decode(raw, MEMBER_SCHEMA)
        address = data.get("address")
        if address is not None and not isinstance(address, str):
            raise SchemaError("field 'address' is not a string")
        vips = data.get("vips", [])
        if not isinstance(vips, list) or not all(isinstance(v, str) for v in vips):
            raise SchemaError("field 'vips' is not a list of strings")
        health = data.get("health", {})
        if not isinstance(health, dict) or not all(isinstance(v, str) for v in health.values()):
            raise SchemaError("field 'health' is not an object of strings")
        try:
            lease = int(_field(data, "lease", str), 16)
        except ValueError:
            raise SchemaError("field 'lease' is not hexadecimal") from None
        parsed_health = {vip: Health.from_text(text) for vip, text in health.items()}
        # The structured form wins where it is readable (the same writer wrote both); the
        # text stays the fallback for records of agents that write only it.
        structured = data.get("health_state")
        if isinstance(structured, dict):
            for vip, value in structured.items():
                h = health_from_dict(value)
                if h is not None and isinstance(vip, str):
                    parsed_health[vip] = h
        specs: dict[str, VipSpec] = {}
        raw_specs = data.get("vip_specs")
        if isinstance(raw_specs, dict):  # informational: malformed entries are dropped
            for vip, value in raw_specs.items():
                spec = VipSpec.from_dict(value)
                if spec is not None and isinstance(vip, str):
                    specs[vip] = spec
        return cls(
            node=_name_field(data, "node"),
            address=address,
            version=_field(data, "version", str),
            started=_time(_field(data, "started", (int, float)), "started"),
            config_digest=_field(data, "config_digest", str),
            lease=lease,
            vips=tuple(vips),
            draining=data.get("draining") is True,
            health=parsed_health,
            vip_specs=specs,
            # Optional, like every field added in a version: a malformed one is dropped (the
            # default), never the record, which would hide a live agent.
            priority=_priority(data.get("priority")),
            priorities=_priorities(data.get("priorities")),
            ready=data.get("ready", True) is not False,
            liveness=data.get("liveness") is True,
        )


def _is_priority(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_PRIORITY


def _priority(value: object) -> int:
    return value if isinstance(value, int) and _is_priority(value) else DEFAULT_PRIORITY


def _priorities(value: object) -> dict[str, int]:
    if not isinstance(value, dict):
        return {}
    return {v: p for v, p in value.items() if isinstance(v, str) and _is_priority(p)}


@dataclass(frozen=True)
class Request:
    """Value of ``vips/<vip>/request``: what an operator asked of a VIP (``haagent move``).

    Written by the CLI, read by every agent, on no lease (it survives restarts). A move to
    ``to`` is pending while the VIP's holder key is older than the request (its
    create_revision below ``revision``): the holder hands over. Once ``to`` holds a key newer
    than the request, the move is done, and the request stays as a placement preference that
    ranks ``to`` first (decide.rank) until ``haagent move --clear`` deletes it.
    """

    action: str  # "move"
    to: str | None = None  # target node; None: the next-ranked one
    by: str = ""  # who asked (user@host), for the log
    at: float = 0.0  # unix time of the request
    revision: int = 0  # mod_revision of the key (from etcd, not the JSON)

    def to_json(self) -> bytes:
        return _encode(
            {
                "schema": REQUEST_SCHEMA,
                "action": self.action,
                "to": self.to,
                "by": self.by,
                "at": round(self.at, 3),
            }
        )

    @classmethod
    def from_json(cls, raw: bytes, *, revision: int = 0) -> Request:
        data = _decode(raw, REQUEST_SCHEMA)
        action = _field(data, "action", str)
        if action not in REQUEST_ACTIONS:
            raise SchemaError(f"unknown action {action[:40]!r}")
        to = data.get("to")
        if to is not None and (not isinstance(to, str) or not valid_name(to)):
            raise SchemaError("field 'to' is not a node name")
        by = data.get("by", "")
        at = data.get("at", 0.0)
        if not isinstance(by, str) or not isinstance(at, (int, float)) or isinstance(at, bool):
            raise SchemaError("field 'by' or 'at' malformed")
        return cls(action=action, to=to, by=by, at=_time(at, "at"), revision=revision)


REQUEST_ACTIONS = frozenset({"move"})


@dataclass(frozen=True)
class Released:
    """Value of ``vips/<vip>/released``, on the releaser's lease: "I, ``node``, no longer have
    the address of the holder key created at ``create_revision``".

    The break-before-make proof for the next holder when the key went away without its
    lease (docs/safety.md, "Handover"): written in the same transaction as a resign, and by a
    holder that lost its key to someone else's write once it has unbound.
    """

    node: str
    create_revision: int
    at: float = 0.0
    # Why the holder let go ("unhealthy: check pg failed: …", "shutdown"): for readers; ""
    # when the writer did not say (older agents, or a key taken by someone else's write).
    reason: str = ""
    # (node, create_revision) of the release records this one overwrote, newest first:
    # carried forward so that a release is not lost when the next holder lets go before the
    # one after it could read it (a handover chain during a rebalance).
    earlier: tuple[tuple[str, int], ...] = ()

    def to_json(self) -> bytes:
        return _encode(
            {
                "schema": RELEASED_SCHEMA,
                "node": self.node,
                "create_revision": self.create_revision,
                "at": round(self.at, 3),
                "reason": self.reason,
                "earlier": [{"node": n, "create_revision": r} for n, r in self.earlier],
            }
        )

    def chain(self) -> tuple[tuple[str, int], ...]:
        """This release and the ones it carries, newest first, at most MAX_EARLIER + 1."""
        return ((self.node, self.create_revision), *self.earlier)[: MAX_EARLIER + 1]

    @classmethod
    def from_json(cls, raw: bytes) -> Released:
        data = _decode(raw, RELEASED_SCHEMA)
        at = data.get("at", 0.0)
        if not isinstance(at, (int, float)) or isinstance(at, bool):
            raise SchemaError("field 'at' is not a number")
        reason = data.get("reason", "")
        return cls(
            node=_name_field(data, "node"),
            create_revision=_field(data, "create_revision", int),
            at=_time(at, "at"),
            reason=reason if isinstance(reason, str) else "",
            earlier=_earlier(data.get("earlier", [])),
        )

    def vouches_for(self, holder: Holder) -> bool:
        return (holder.node, holder.create_revision) in self.chain()


MAX_EARLIER = 8


def _earlier(value: object) -> tuple[tuple[str, int], ...]:
    """The carried releases; malformed entries are dropped (optional, never fatal)."""
    if not isinstance(value, list):
        return ()
    out: list[tuple[str, int]] = []
    for item in value[:MAX_EARLIER]:
        if not isinstance(item, dict):
            continue
        node, rev = item.get("node"), item.get("create_revision")
        good_rev = isinstance(rev, int) and not isinstance(rev, bool) and rev > 0
        if isinstance(node, str) and valid_name(node) and good_rev:
            assert isinstance(rev, int)
            out.append((node, rev))
    return tuple(out)


@dataclass(frozen=True)
class Drain:
    """Value of ``drain/<node>``, on no lease: ``haagent drain`` asked ``node`` to hand over
    its VIPs and campaign for none until ``haagent undrain`` deletes the key. Kept apart from
    the member record (which lives and dies with the agent's lease) so a drain survives
    restarts of the agent."""

    by: str = ""  # who asked (user@host)
    at: float = 0.0  # unix time of the request
    reason: str = ""  # the operator's words, if any
    revision: int = 0  # mod_revision of the key (from etcd, not the JSON)

    def to_json(self) -> bytes:
        return _encode(
            {"schema": DRAIN_SCHEMA, "by": self.by, "at": round(self.at, 3), "reason": self.reason}
        )

    @classmethod
    def from_json(cls, raw: bytes, *, revision: int = 0) -> Drain:
        data = _decode(raw, DRAIN_SCHEMA)
        by, at, reason = data.get("by", ""), data.get("at", 0.0), data.get("reason", "")
        if not isinstance(by, str) or not isinstance(reason, str):
            raise SchemaError("field 'by' or 'reason' is not a string")
        return cls(by=by[:255], at=_time(at, "at"), reason=reason[:255], revision=revision)


def _lease_field(data: Mapping[str, Any], name: str) -> int:
    v = data.get(name)
    if isinstance(v, bool) or not isinstance(v, int) or not 0 < v < 2**63:
        raise SchemaError(f"field {name!r} is not a lease id")
    return v


@dataclass(frozen=True)
class Suspicion:
    """Value of ``suspects/<target>/<by>``, on the suspecter's lease: ``by`` has not heard a
    heartbeat of ``target`` (in its session ``lease``) for the detection time, and promises
    it no more until it deletes this key (docs/safety.md, "Fast failover")."""

    target: str
    by: str
    lease: int  # the target's lease the suspicion is about
    own_lease: int = 0  # the lease the key hangs on (from etcd)
    create_revision: int = 0  # from etcd

    def to_json(self) -> bytes:
        return _encode({"schema": SUSPECT_SCHEMA, "lease": self.lease})

    @classmethod
    def from_json(
        cls, raw: bytes, target: str, by: str, *, own_lease: int = 0, create_revision: int = 0
    ) -> Suspicion:
        data = _decode(raw, SUSPECT_SCHEMA)
        return cls(target, by, _lease_field(data, "lease"), own_lease, create_revision)


@dataclass(frozen=True)
class Verdict:
    """Value of ``verdicts/<target>``, on the writer's lease: a majority of the other live
    members suspected ``target`` in its session ``lease`` and it did not refute in time; the
    lease is revoked and a new holder binds only after ``liveness.hold`` (docs/safety.md)."""

    target: str
    lease: int  # the condemned lease
    by: str
    suspecters: tuple[str, ...] = ()
    # The condemned's liveness.hold as it announced it (seconds): the new holder waits at
    # least this long after the lease is gone.
    hold: float = 0.0
    own_lease: int = 0  # from etcd
    revision: int = 0  # mod_revision, from etcd

    def to_json(self) -> bytes:
        return _encode(
            {
                "schema": VERDICT_SCHEMA,
                "lease": self.lease,
                "by": self.by,
                "suspecters": list(self.suspecters),
                "hold": round(self.hold, 3),
            }
        )

    @classmethod
    def from_json(
        cls, raw: bytes, target: str, *, own_lease: int = 0, revision: int = 0
    ) -> Verdict:
        data = _decode(raw, VERDICT_SCHEMA)
        by = data.get("by")
        if not isinstance(by, str) or not valid_name(by):
            raise SchemaError("field 'by' is not a node name")
        raw_sus = data.get("suspecters", [])
        if not isinstance(raw_sus, list) or len(raw_sus) > MAX_SUSPECTERS:
            raise SchemaError("field 'suspecters' is not a list of node names")
        sus = tuple(n for n in raw_sus if isinstance(n, str) and valid_name(n))
        hold = data.get("hold", 0.0)
        if isinstance(hold, bool) or not isinstance(hold, int | float) or not 0 <= hold <= 60:
            raise SchemaError("field 'hold' is not a number of seconds from 0 to 60")
        return cls(target, _lease_field(data, "lease"), by, sus, float(hold), own_lease, revision)

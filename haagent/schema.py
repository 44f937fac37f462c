"""The etcd key layout and the JSON records stored under it: haagent's public contract.

Everything here is pure: it turns records into bytes and back and names keys. The layout and
the record fields are documented for external tools in docs/keys.md; a change that breaks a
reader must bump the version segment (``/haagent/v1/``) or the record's ``schema`` string.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

ROOT = "/haagent/v1"
HOLDER_SCHEMA = "haagent.holder/v1"
MEMBER_SCHEMA = "haagent.member/v1"
REQUEST_SCHEMA = "haagent.request/v1"

KeyKind = Literal["member", "holder", "request"]


class SchemaError(ValueError):
    """A value under the haagent prefix that is not a record this version understands."""


@dataclass(frozen=True)
class ParsedKey:
    kind: KeyKind
    name: str  # the node for members, the VIP for holder and request keys


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

    def parse(self, key: str | bytes) -> ParsedKey | None:
        """Classify a key under the cluster prefix; None for anything this version does not know."""
        text = key.decode("utf-8", "replace") if isinstance(key, bytes) else key
        if not text.startswith(self.prefix):
            return None
        parts = text[len(self.prefix) :].split("/")
        if len(parts) == 2 and parts[0] == "members" and parts[1]:
            return ParsedKey("member", parts[1])
        if len(parts) == 3 and parts[0] == "vips" and parts[1]:
            if parts[2] == "holder":
                return ParsedKey("holder", parts[1])
            if parts[2] == "request":
                return ParsedKey("request", parts[1])
        return None


def _encode(record: Mapping[str, Any]) -> bytes:
    return json.dumps(record, sort_keys=True, separators=(",", ":")).encode()


def _decode(raw: bytes, schema: str) -> dict[str, Any]:
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, ValueError) as exc:
        raise SchemaError(f"not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise SchemaError(f"expected a JSON object, found {type(data).__name__}")
    found = data.get("schema")
    if found != schema:
        raise SchemaError(f"schema is {found!r}, expected {schema!r}")
    return data


def _field(data: Mapping[str, Any], name: str, kind: type | tuple[type, ...]) -> Any:
    value = data.get(name)
    # bool is an int in Python; a number field holding true/false is malformed.
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise SchemaError(f"field {name!r} missing or not {getattr(kind, '__name__', kind)}")
    return value


@dataclass(frozen=True)
class HolderRecord:
    """Value of ``vips/<vip>/holder``: who answers for the VIP, since when and why.

    ``epoch`` is the cluster revision at which the campaigning node saw the key absent. Each
    new holder must have observed its predecessor's key disappear, so epochs grow strictly
    from holder to holder and can serve as a fencing token.
    """

    node: str
    since: float  # unix time the holder won the key
    epoch: int
    reason: str
    lease: int  # the etcd lease the key hangs on (also in the key's metadata)

    def to_json(self) -> bytes:
        return _encode(
            {
                "schema": HOLDER_SCHEMA,
                "node": self.node,
                "since": round(self.since, 3),
                "epoch": self.epoch,
                "reason": self.reason,
                "lease": f"{self.lease:x}",
            }
        )

    @classmethod
    def from_json(cls, raw: bytes) -> HolderRecord:
        data = _decode(raw, HOLDER_SCHEMA)
        lease_hex = _field(data, "lease", str)
        try:
            lease = int(lease_hex, 16)
        except ValueError:
            raise SchemaError(f"field 'lease' is not hexadecimal: {lease_hex!r}") from None
        return cls(
            node=_field(data, "node", str),
            since=float(_field(data, "since", (int, float))),
            epoch=_field(data, "epoch", int),
            reason=_field(data, "reason", str),
            lease=lease,
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
    health: Mapping[str, str] = field(default_factory=dict)

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
                "health": dict(self.health),
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
        return cls(
            node=_field(data, "node", str),
            address=address,
            version=_field(data, "version", str),
            started=float(_field(data, "started", (int, float))),
            config_digest=_field(data, "config_digest", str),
            lease=lease,
            vips=tuple(vips),
            draining=bool(data.get("draining", False)),
            health=health,
        )

"""The heartbeat on the wire: what one agent tells the others every ``liveness.interval``.

Pure: bytes in, a :class:`Heartbeat` or a :class:`BadPacket` reason out, and back.

A datagram is ``MAGIC + JSON body + HMAC-SHA256(key, MAGIC + body)``. The MAC covers every
byte before it, so a forged or altered packet is refused before its body is parsed. A replay
of an old packet is refused by the receiver (:mod:`haagent.liveness.peers`): each packet
names the sender's lease, which etcd never grants twice, and carries a sequence number that
must grow within that lease. No field is a wall-clock time; ages are the sender's own
monotonic measurements.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from dataclasses import dataclass, field

from haagent.cluster.schema import valid_name

MAGIC = b"HAHB1"
MAC_SIZE = 32
MAX_DATAGRAM = 1400  # below any Ethernet MTU with IPv6 and UDP headers: never fragmented
MAX_HEARD = 64  # peers one heartbeat may list (the fleets haagent is for have 2-50 hosts)
MAX_SEQ = 2**62
MAX_LEASE = 2**63 - 1
MAX_AGE_MS = 10**7
MAX_MEMBERS = 10_000


class BadPacket(ValueError):
    """Why a datagram was refused; the reason is counted, never trusted further.

    ``kind`` is one of :data:`KINDS`: a bounded label for the metric, whatever the packet."""

    def __init__(self, message: str, kind: str = "malformed") -> None:
        super().__init__(message)
        self.kind = kind


KINDS = ("bad mac", "malformed", "another cluster", "oversized", "not a heartbeat")


@dataclass(frozen=True)
class Heartbeat:
    cluster: str
    node: str
    lease: int  # the sender's etcd lease: its session
    seq: int  # grows by one per heartbeat within the session
    # Milliseconds since the send time of the sender's last acknowledged keepalive; None: it
    # has no live lease. Lets a holder cut off from etcd tell "only me" from "everyone".
    etcd_age_ms: int | None = None
    members: int = 0  # live members in the sender's view, itself included
    # Whom the sender hears: peer -> the newest sequence number it received from that peer
    # (and does not suspect). A promise not to suspect that peer before that packet plus the
    # detection time has passed (docs/safety.md).
    heard: dict[str, int] = field(default_factory=dict)
    # A lease the sender gave up after unbinding every VIP on it: peers that reach etcd
    # revoke it for the sender, which cannot.
    surrender: int | None = None
    # The sender's liveness.interval x multiplier and liveness.hold, in ms: a promise lasts
    # as long as the promiser waits before it suspects, and a new holder waits as long as the
    # old one holds (configs may differ between hosts during a rollout).
    detection_ms: int = 0
    hold_ms: int = 0


def _mac(key: bytes, data: bytes) -> bytes:
    return hmac.new(key, data, hashlib.sha256).digest()


def encode(hb: Heartbeat, key: bytes) -> bytes:
    body: dict[str, object] = {
        "c": hb.cluster,
        "n": hb.node,
        "l": hb.lease,
        "s": hb.seq,
        "m": hb.members,
        "h": hb.heard,
        "d": hb.detection_ms,
        "g": hb.hold_ms,
    }
    if hb.etcd_age_ms is not None:
        body["e"] = hb.etcd_age_ms
    if hb.surrender is not None:
        body["r"] = hb.surrender
    data = MAGIC + json.dumps(body, separators=(",", ":"), sort_keys=True).encode()
    out = data + _mac(key, data)
    if len(out) > MAX_DATAGRAM:
        raise ValueError(f"heartbeat of {len(out)} bytes exceeds {MAX_DATAGRAM}")
    return out


def _int(body: dict[str, object], name: str, hi: int, *, lo: int = 0) -> int:
    v = body.get(name)
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise BadPacket(f"field {name!r} is not an integer from {lo} to {hi}")
    return v


def _name(v: object, what: str) -> str:
    if not isinstance(v, str) or not valid_name(v):
        raise BadPacket(f"{what} is not a valid node name")
    return v


def decode(data: bytes, key: bytes, cluster: str) -> Heartbeat:
    """The heartbeat in ``data`` if it is authentic and for ``cluster``; BadPacket otherwise."""
    if len(data) > MAX_DATAGRAM:
        raise BadPacket("oversized", "oversized")
    if len(data) < len(MAGIC) + MAC_SIZE + 2 or not data.startswith(MAGIC):
        raise BadPacket("not a haagent heartbeat", "not a heartbeat")
    signed, mac = data[:-MAC_SIZE], data[-MAC_SIZE:]
    if not hmac.compare_digest(mac, _mac(key, signed)):
        raise BadPacket("bad mac", "bad mac")
    try:
        body = json.loads(signed[len(MAGIC) :])
    except ValueError:
        raise BadPacket("malformed body") from None
    if not isinstance(body, dict):
        raise BadPacket("malformed body")
    if body.get("c") != cluster:
        raise BadPacket("another cluster", "another cluster")
    heard_raw = body.get("h", {})
    if not isinstance(heard_raw, dict) or len(heard_raw) > MAX_HEARD:
        raise BadPacket("malformed heard set")
    heard: dict[str, int] = {}
    for peer, seq in heard_raw.items():
        if isinstance(seq, bool) or not isinstance(seq, int) or not 0 <= seq <= MAX_SEQ:
            raise BadPacket("malformed heard set")
        heard[_name(peer, "a heard peer")] = seq
    age = _int(body, "e", MAX_AGE_MS) if "e" in body else None
    surrender = _int(body, "r", MAX_LEASE, lo=1) if "r" in body else None
    return Heartbeat(
        cluster=cluster,
        node=_name(body.get("n"), "the sender"),
        lease=_int(body, "l", MAX_LEASE, lo=1),
        seq=_int(body, "s", MAX_SEQ),
        etcd_age_ms=age,
        members=_int(body, "m", MAX_MEMBERS),
        heard=heard,
        surrender=surrender,
        detection_ms=_int(body, "d", MAX_AGE_MS) if "d" in body else 0,
        hold_ms=_int(body, "g", MAX_AGE_MS) if "g" in body else 0,
    )

"""Network partitions inside a lab host: nftables drops by IP address, one or both ways.

Every cut lives in one nftables table, ``inet haagent_lab_part``, in the namespace of the
node it is applied to (never in the switch, never in a peer), apart from topology's
``haagent_lab`` table of :meth:`Lab.block_etcd`, so the two can be set and lifted
independently. The drops match the node addresses (IPv4 and IPv6, :class:`Node`) of the
other side:

* ``cut_peers(lab, node, direction)``: IP between ``node`` and the other hosts of
  ``lab.hosts`` — ``"out"`` drops what ``node`` sends to them (output hook, by destination:
  the peers stop hearing ``node``, ``node`` still hears them), ``"in"`` what they send to it
  (input hook, by source: ``node`` hears no peer, the peers still hear it), ``"both"`` both.
* ``cut_etcd_and_peers(lab, node)``: both ways, the peers and every etcd member.
* ``break_receive(lab, node)``: a broken receive path — the datagrams (UDP, and by default
  VRRP, IP protocol 112) the peers send ``node`` are dropped on its input; TCP, ICMP and
  everything ``node`` sends pass, etcd and the client are untouched.
* ``heal(lab, node)`` removes the table (idempotent), ``heal_all(lab)`` on every node.

The client (``lab.client``) is never cut, nor is anything else not named above. Neither is
the neighbour protocol: ARP is not IP (an ``inet`` table never sees it) and ICMPv6 neighbour
and router discovery (types 133-137) is accepted before any drop, so neighbour caches keep
resolving through a cut and a heal takes effect at once. Multicast and broadcast that
``node`` *sends* are not cut (their destination names no peer); what the peers send is, by
its source. Every drop is counted: :func:`dropped`.

**Cuts compose.** Each call adds its drops to what is already cut on that node (a union of
address sets, one rule set rebuilt atomically in a single ``nft -f`` transaction), and no call
lifts another's: ``cut_peers(lab, h1, "out")`` then ``cut_peers(lab, h1, "in")`` is
``cut_peers(lab, h1)``; ``break_receive`` after ``cut_peers(…, "out")`` gives the one-way
cut plus the deaf input; repeating a call changes nothing. ``heal`` lifts everything of this
module on the node at once; there is no partial heal (heal, then cut again).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Literal

from haagent.lab.topology import Lab, Node

TABLE = "haagent_lab_part"
PRIORITY = -20  # before topology's block_etcd (-10) and the bench's VRRP counter (0)

Direction = Literal["both", "out", "in"]
# Protocols break_receive can drop, by the names nft knows (112 is VRRP: nft has no name).
PROTOCOLS = {"udp": "udp", "tcp": "tcp", "vrrp": "112", "icmp": "icmp", "icmpv6": "ipv6-icmp"}
DEFAULT_DEAF = ("udp", "vrrp")

# Set name -> element type. in/out: every IP packet, by source (in) or destination (out);
# deaf: (source, protocol) pairs dropped on input.
_SETS = {
    "in4": "ipv4_addr",
    "in6": "ipv6_addr",
    "out4": "ipv4_addr",
    "out6": "ipv6_addr",
    "deaf4": "ipv4_addr . inet_proto",
    "deaf6": "ipv6_addr . inet_proto",
}
_ND = "icmpv6 type { nd-router-solicit, nd-router-advert, nd-neighbor-solicit, "
_ND += "nd-neighbor-advert, nd-redirect } accept"


def _skeleton() -> str:
    """The table, its sets (kept as they are) and its two chains (rebuilt): ``add`` of what
    exists is a no-op, ``flush chain`` + the rules make the rule set exactly this one."""
    lines = [f"add table inet {TABLE}"]
    for name, kind in _SETS.items():
        lines.append(f"add set inet {TABLE} {name} {{ type {kind}; }}")
    for chain, hook in (("input", "input"), ("output", "output")):
        lines.append(
            f"add chain inet {TABLE} {chain} "
            f"{{ type filter hook {hook} priority {PRIORITY}; policy accept; }}"
        )
        lines.append(f"flush chain inet {TABLE} {chain}")
        lines.append(f"add rule inet {TABLE} {chain} {_ND}")
    rule = f"add rule inet {TABLE}"
    lines += [
        f"{rule} input ip saddr @in4 counter drop",
        f"{rule} input ip6 saddr @in6 counter drop",
        f"{rule} input ip saddr . meta l4proto @deaf4 counter drop",
        f"{rule} input ip6 saddr . meta l4proto @deaf6 counter drop",
        f"{rule} output ip daddr @out4 counter drop",
        f"{rule} output ip6 daddr @out6 counter drop",
    ]
    return "\n".join(lines) + "\n"


def _elements(name: str, items: Iterable[str]) -> str:
    items = list(items)
    if not items:
        return ""
    return f"add element inet {TABLE} {name} {{ {', '.join(items)} }}\n"


def _apply(lab: Lab, node: Node, script: str) -> None:
    lab.run(node, ["nft", "-f", "-"], input=_skeleton() + script)


def _addresses(nodes: Iterable[Node]) -> tuple[list[str], list[str]]:
    nodes = list(nodes)
    return [str(n.ipv4) for n in nodes], [str(n.ipv6) for n in nodes]


def peers(lab: Lab, node: Node) -> list[Node]:
    """The other hosts of the lab (not etcd, not the client)."""
    return [h for h in lab.hosts if h != node]


def _cut(lab: Lab, node: Node, others: Sequence[Node], direction: Direction) -> None:
    if direction not in ("both", "out", "in"):
        raise ValueError(f"direction must be 'both', 'out' or 'in', not {direction!r}")
    v4, v6 = _addresses(others)
    script = ""
    if direction in ("both", "in"):
        script += _elements("in4", v4) + _elements("in6", v6)
    if direction in ("both", "out"):
        script += _elements("out4", v4) + _elements("out6", v6)
    _apply(lab, node, script)


def cut_peers(lab: Lab, node: Node, direction: Direction = "both") -> None:
    """Drop IP between ``node`` and every other host of ``lab.hosts``: ``"out"`` what it
    sends them, ``"in"`` what they send it, ``"both"`` both. etcd and the client still
    reach it, and it them. Adds to the cuts already on ``node``."""
    _cut(lab, node, peers(lab, node), direction)


def cut_etcd_and_peers(lab: Lab, node: Node) -> None:
    """Drop IP both ways between ``node`` and the other hosts and every etcd member; the
    client still reaches it (and it the client). Adds to the cuts already on ``node``."""
    _cut(lab, node, [*peers(lab, node), *lab.etcd_nodes], "both")


def break_receive(lab: Lab, node: Node, protocols: Sequence[str] = DEFAULT_DEAF) -> None:
    """``node`` receives no datagram from its peers: what they send it with one of
    ``protocols`` (names of :data:`PROTOCOLS`; UDP and VRRP by default: haagent's heartbeats
    and keepalived's adverts) is dropped on its input. It still sends to them; etcd and the
    client are untouched. Adds to the cuts already on ``node``."""
    unknown = [p for p in protocols if p not in PROTOCOLS]
    if unknown or not protocols:
        raise ValueError(f"protocols must be some of {sorted(PROTOCOLS)}, not {list(protocols)}")
    v4, v6 = _addresses(peers(lab, node))
    protos = [PROTOCOLS[p] for p in protocols]
    script = _elements("deaf4", (f"{a} . {p}" for a in v4 for p in protos))
    script += _elements("deaf6", (f"{a} . {p}" for a in v6 for p in protos))
    _apply(lab, node, script)


def heal(lab: Lab, node: Node) -> None:
    """Lift every cut of this module on ``node`` (its table goes); no error if there is none.
    Topology's :meth:`Lab.block_etcd` table is left alone."""
    lab.run(node, ["nft", "-f", "-"], input=f"table inet {TABLE}\ndelete table inet {TABLE}\n")


def heal_all(lab: Lab) -> None:
    """:func:`heal` on every node of the lab (hosts, etcd members, client)."""
    for node in lab.nodes:
        heal(lab, node)


def cut_now(lab: Lab, node: Node) -> dict[str, list[str]]:
    """What is cut on ``node`` now: set name -> elements (``{}`` when healed)."""
    proc = lab.run(node, ["nft", "-j", "list", "table", "inet", TABLE], check=False)
    if proc.returncode != 0:
        return {}
    out: dict[str, list[str]] = {}
    for item in json.loads(proc.stdout).get("nftables", []):
        s = item.get("set")
        if s is None:
            continue
        elems = []
        for e in s.get("elem", []):
            if isinstance(e, dict) and "concat" in e:
                elems.append(" . ".join(str(x) for x in e["concat"]))
            else:
                elems.append(str(e))
        out[s["name"]] = elems
    return out


def dropped(lab: Lab, node: Node) -> dict[str, int]:
    """Packets dropped on ``node`` by this module so far, per chain (``input``, ``output``);
    zeros when nothing is cut."""
    counts = {"input": 0, "output": 0}
    proc = lab.run(node, ["nft", "-j", "list", "table", "inet", TABLE], check=False)
    if proc.returncode != 0:
        return counts
    for item in json.loads(proc.stdout).get("nftables", []):
        rule = item.get("rule")
        if not rule:
            continue
        for expr in rule.get("expr", []):
            if isinstance(expr, dict) and "counter" in expr:
                counts[rule["chain"]] += int(expr["counter"]["packets"])
    return counts

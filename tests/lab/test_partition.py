"""haagent.lab.partition cuts what it says, one way or both, and heal lifts it.

Real packets: a UDP listener in every namespace of a lab (three hosts, etcd, the client)
logs the datagrams it receives; in each round every node sends one datagram to every other
node's IPv4 and IPv6 address, and who heard whom is compared with what the cut should let
through, pair by pair and family by family. ICMP (ping) and the neighbour caches are checked
where the cut is meant to leave them alone.
"""

from __future__ import annotations

import itertools
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

import pytest

from haagent.lab import partition
from haagent.lab.topology import Lab, Node
from haagent.lab.wait import poll_until, wait_until
from tests.lab.conftest import require

pytestmark = pytest.mark.lab

PORT = 7471

LISTENER = f"""
import socket, sys
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
s.bind(("::", {PORT}))
print("ready", flush=True)
while True:
    data, addr = s.recvfrom(512)
    print("got", data.decode(), flush=True)
"""

# argv: round tag, sender role, then "role/family/address" per target
SENDER = f"""
import socket, sys
tag, me = sys.argv[1], sys.argv[2]
for target in sys.argv[3:]:
    role, fam, addr = target.split("/")
    af = socket.AF_INET if fam == "4" else socket.AF_INET6
    with socket.socket(af, socket.SOCK_DGRAM) as s:
        try:
            s.sendto(f"{{tag}}/{{me}}/{{role}}/{{fam}}".encode(), (addr, {PORT}))
        except OSError as exc:  # an output drop says EPERM: that is the cut
            print(target, exc, file=sys.stderr)
"""

Pair = tuple[str, str, str]  # sender role, receiver role, family


def _ready(log: Path) -> bool:
    return "ready" in log.read_text()


class Net:
    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        self.logs: dict[str, Path] = {}
        self.rounds = itertools.count()

    def start(self) -> None:
        for node in self.lab.nodes:
            log = self.lab.workdir / f"{node.role}.udplisten.log"
            self.logs[node.role] = log
            self.lab.popen(node, [sys.executable, "-u", "-c", LISTENER], log=log)
        for log in self.logs.values():
            wait_until(partial(_ready, log), 10, what=f"listener {log.name}")

    def _send(self, tag: str, node: Node) -> None:
        targets = [
            f"{n.role}/{fam}/{addr}"
            for n in self.lab.nodes
            if n != node
            for fam, addr in (("4", n.ipv4), ("6", n.ipv6))
        ]
        argv = [sys.executable, "-c", SENDER, tag, node.role, *targets]
        self.lab.run(node, argv, timeout=10)

    def heard(self, tag: str) -> set[Pair]:
        out: set[Pair] = set()
        for role, log in self.logs.items():
            for line in log.read_text().splitlines():
                parts = line.split(" ", 1)
                if parts[0] != "got":
                    continue
                t, sender, receiver, fam = parts[1].split("/")
                if t == tag and receiver == role:
                    out.add((sender, receiver, fam))
        return out

    def matrix(self, expected: set[Pair]) -> set[Pair]:
        """One round: every node sends to every other; returns who heard whom, once every
        expected datagram arrived (bounded) and a little longer for unexpected ones."""
        tag = f"r{next(self.rounds)}"
        with ThreadPoolExecutor(len(self.lab.nodes)) as pool:
            list(pool.map(lambda n: self._send(tag, n), self.lab.nodes))
        poll_until(lambda: expected <= self.heard(tag), 2.0, 0.02)
        time.sleep(0.1)
        return self.heard(tag)

    def all_pairs(self) -> set[Pair]:
        roles = [n.role for n in self.lab.nodes]
        return {(a, b, f) for a in roles for b in roles if a != b for f in ("4", "6")}

    def expect(self, blocked: Callable[[str, str], bool]) -> set[Pair]:
        return {(a, b, f) for a, b, f in self.all_pairs() if not blocked(a, b)}

    def check(self, blocked: Callable[[str, str], bool]) -> None:
        want = self.expect(blocked)
        got = self.matrix(want)
        assert got == want, {"missing": sorted(want - got), "unexpected": sorted(got - want)}


@pytest.fixture(scope="module")
def net() -> Iterator[Net]:
    require("ip", "etcd", "etcdctl", "nft")
    with Lab(hosts=3) as lab:
        n = Net(lab)
        n.start()
        yield n


@pytest.fixture
def lab(net: Net) -> Iterator[Lab]:
    try:
        yield net.lab
    finally:
        partition.heal_all(net.lab)


def nothing(_a: str, _b: str) -> bool:
    return False


HOSTS = {"h1", "h2", "h3"}
PEERS = HOSTS - {"h1"}


def test_cut_peers_both_ways_and_heal(net: Net, lab: Lab) -> None:
    h1, h2 = lab.host("h1"), lab.host("h2")
    net.check(nothing)  # the baseline: everybody hears everybody
    partition.cut_peers(lab, h1)
    # The neighbour protocol is left alone: h2 resolves h1 afresh through the cut.
    lab.run(h2, ["ip", "neigh", "flush", "dev", h2.ifname])
    net.check(lambda a, b: "h1" in (a, b) and (a in PEERS or b in PEERS))
    neigh = lab.run(h2, ["ip", "neigh", "show", "dev", h2.ifname]).stdout
    for addr in (h1.ipv4, h1.ipv6):
        line = next((ln for ln in neigh.splitlines() if ln.startswith(f"{addr} ")), "")
        assert "lladdr" in line and "FAILED" not in line, neigh
    assert lab.ping(h2, h1.ipv4, timeout=0.3) is None  # ICMP is IP too
    assert lab.ping(h1, h2.ipv6, timeout=0.3) is None
    assert lab.ping(lab.client, h1.ipv4) is not None  # the client and etcd still reach it
    assert lab.ping(h1, lab.etcd_nodes[0].ipv6) is not None
    assert partition.dropped(lab, h1)["input"] > 0
    assert partition.dropped(lab, h2) == {"input": 0, "output": 0}  # only h1 is cut
    partition.heal(lab, h1)
    partition.heal(lab, h1)  # idempotent
    assert partition.cut_now(lab, h1) == {}
    net.check(nothing)
    assert lab.ping(h2, h1.ipv4) is not None


def test_one_way_cuts_drop_one_direction_only(net: Net, lab: Lab) -> None:
    h1 = lab.host("h1")
    partition.cut_peers(lab, h1, "out")  # the peers stop hearing h1; h1 hears them
    net.check(lambda a, b: a == "h1" and b in PEERS)
    partition.heal(lab, h1)
    partition.cut_peers(lab, h1, "in")  # h1 hears no peer; they hear it
    net.check(lambda a, b: b == "h1" and a in PEERS)
    partition.cut_peers(lab, h1, "out")  # cuts compose: in + out = both
    net.check(lambda a, b: (a == "h1" and b in PEERS) or (b == "h1" and a in PEERS))
    with pytest.raises(ValueError):
        partition.cut_peers(lab, h1, "sideways")  # type: ignore[arg-type]


def test_cut_from_etcd_and_peers_leaves_the_client(net: Net, lab: Lab) -> None:
    h3 = lab.host("h3")
    others = {"h1", "h2", "etcd"}
    partition.cut_etcd_and_peers(lab, h3)
    net.check(lambda a, b: (a == "h3" and b in others) or (b == "h3" and a in others))
    assert lab.ping(lab.client, h3.ipv6) is not None
    assert lab.ping(h3, lab.etcd_nodes[0].ipv4, timeout=0.3) is None
    partition.heal_all(lab)
    net.check(nothing)


def test_a_broken_receive_path_drops_datagrams_from_peers_only(net: Net, lab: Lab) -> None:
    h2 = lab.host("h2")
    partition.break_receive(lab, h2)
    net.check(lambda a, b: b == "h2" and a in HOSTS - {"h2"})
    assert lab.ping(lab.host("h1"), h2.ipv4) is not None  # ICMP is no datagram: it passes
    # Composes with a one-way cut of the same node, and heals whole.
    partition.cut_peers(lab, h2, "out")
    net.check(lambda a, b: {a, b} <= HOSTS and "h2" in (a, b))
    partition.heal(lab, h2)
    net.check(nothing)
    with pytest.raises(ValueError):
        partition.break_receive(lab, h2, protocols=("sctp",))


def test_heal_without_a_cut_is_no_error(lab: Lab) -> None:
    for node in lab.nodes:
        partition.heal(lab, node)
    assert all(partition.cut_now(lab, n) == {} for n in lab.nodes)
    with pytest.raises(subprocess.CalledProcessError):
        lab.run(lab.hosts[0], ["nft", "list", "table", "inet", partition.TABLE])

"""Layer 2 against a real kernel: the virtual MAC (macvlan) and the announce-only responder.

Topology (one per module, every name carries a random "hxl2"+4-hex prefix ``<p>``)::

    ns <p>sw: bridge <p>br (learning switch), ports <p>sa, <p>sb, <p>sc
       ├── ns <p>a  host A   <p>a  198.51.100.1/24    2001:db8::1/64    fe80::a
       ├── ns <p>b  host B   <p>b  198.51.100.2/24    2001:db8::2/64    fe80::b
       └── ns <p>c  client   <p>c  198.51.100.100/24  2001:db8::64/64   fe80::c

A and B run the lab's UDP/TCP echo service (``haagent.lab.responder``) on port 7000 and
have strict reverse-path filtering (rp_filter=1), which a vmac setup must survive. Code
under test runs in forked children that setns() into a namespace (``tests/lab/nsutil``);
the pytest process only inspects with ``ip -n`` / ``bridge -n``.
"""

from __future__ import annotations

import multiprocessing
import os
import secrets
import select
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import closing, suppress
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address, ip_address, ip_interface
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import pytest

from haagent.config import VipConfig
from haagent.net.addresses import AddressManager
from haagent.net.announce import Announcer
from haagent.net.frames import (
    ARP_REPLY,
    ARP_REQUEST,
    BROADCAST,
    ND_NA,
    UNSPECIFIED6,
    arp_frame,
    mac_bytes,
    mac_str,
    multicast_mac,
    ns_frame,
    parse_arp,
    parse_nd,
    solicited_node,
)
from haagent.net.placement import Placement
from haagent.net.responder import (
    ETH_P_ALL,
    PACKET_OUTGOING,
    SO_TIMESTAMPNS,
    Responder,
    who_answers,
)
from haagent.net.vmac import (
    VirtualMac,
    parse_vmac_ifname,
    vmac_ifname,
    vmac_in_use,
    vmac_table,
    vrrp_mac,
)
from tests.lab.conftest import wait_until as wait_for
from tests.lab.nsutil import Segment, ip, run_in_ns, start_in_ns, sysctl

pytestmark = pytest.mark.lab

REPO = Path(__file__).resolve().parents[2]
NODE = {"a": 1, "b": 2, "c": 100}
PORT = 7000
VRID = 12
FAMILY = {4: socket.AF_INET, 6: socket.AF_INET6}
VMAC_VIP = {4: "198.51.100.200", 6: "2001:db8::200"}
ANNOUNCE_ONLY_VIP = {4: "198.51.100.210", 6: "2001:db8::210"}
FORK = multiprocessing.get_context("fork")


def host_ip(member: str, version: int) -> str:
    n = NODE[member]
    return f"198.51.100.{n}" if version == 4 else f"2001:db8::{n:x}"


@dataclass
class Net:
    seg: Segment
    services: list[subprocess.Popen[str]]

    def ns(self, m: str) -> str:
        return self.seg.ns(m)

    def dev(self, m: str) -> str:
        return self.seg.ifname(m)

    def mac(self, m: str) -> str:
        return self.seg.mac(m)

    def port(self, m: str) -> str:
        return f"{self.seg.prefix}s{m}"

    def fdb_port(self, mac: str) -> str | None:
        """The switch port the bridge has learnt ``mac`` on (None: unknown, i.e. flooded)."""
        out = subprocess.run(
            ["bridge", "-n", self.ns("sw"), "fdb", "show", "br", f"{self.seg.prefix}br"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
        for line in out.splitlines():
            f = line.split()
            if f and f[0] == mac and "permanent" not in f and "dev" in f:
                return f[f.index("dev") + 1]
        return None

    def neigh(self, vip: str) -> tuple[str | None, str | None]:
        out = ip("neigh", "show", vip, "dev", self.dev("c"), ns=self.ns("c")).split()
        mac = out[out.index("lladdr") + 1].lower() if "lladdr" in out else None
        return mac, (out[-1] if out else None)

    def vmacs(self, m: str) -> list[str]:
        """Names of the vmac interfaces in host ``m`` ("vmac4.12@parent" -> "vmac4.12")."""
        out = ip("-br", "link", "show", ns=self.ns(m))
        names = [line.split()[0].split("@")[0] for line in out.splitlines()]
        return [n for n in names if n.startswith("vmac")]


def _start_service(ns: str, name: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [
            "ip",
            "netns",
            "exec",
            ns,
            sys.executable,
            "-m",
            "haagent.lab.responder",
            "--name",
            name,
            "--port",
            str(PORT),
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    return proc


@pytest.fixture(scope="module")
def net() -> Iterator[Net]:
    seg = Segment("hxl2" + secrets.token_hex(2), ("a", "b", "c"))
    services: list[subprocess.Popen[str]] = []
    try:
        seg.create()
        seg.add_host_addresses(NODE)
        for m in ("a", "b"):
            sysctl(seg.ns(m), "net.ipv4.conf.all.rp_filter", "1")
            services.append(_start_service(seg.ns(m), m))
        for proc in services:
            assert proc.stdout is not None
            ready, _, _ = select.select([proc.stdout], [], [], 10)
            assert ready and proc.stdout.readline().startswith("ready"), "service did not start"
        yield Net(seg, services)
    finally:
        for proc in services:
            proc.terminate()
        for proc in services:
            with suppress(subprocess.TimeoutExpired):
                proc.wait(5)
            if proc.poll() is None:
                proc.kill()
                proc.wait(5)
        seg.destroy()


# -- functions that run inside a namespace (forked child) ----------------------------------


def do_acquire_vmac(parent: str, version: int, vip: str) -> dict[str, Any]:
    """What the agent does on winning a VIP in vmac mode, in its order, timed."""
    family, ip_ = FAMILY[version], ip_address(vip)
    with VirtualMac() as vm, AddressManager() as am, Announcer() as an:
        an.prepare([parent])
        t0 = time.perf_counter()
        name = vm.up(parent, VRID, family)
        t1 = time.perf_counter()
        bound = am.bind(name, ip_interface(f"{vip}/{ip_.max_prefixlen}"))
        rule = vm.add_source_rule(name, ip_)
        an.announce(name, ip_, vrrp_mac(VRID, family))
        t2 = time.perf_counter()
        again = vm.up(parent, VRID, family)  # idempotent
        rule_again = vm.add_source_rule(name, ip_)
        return dict(
            name=name,
            again=again,
            bound=bound,
            rule=rule,
            rule_again=rule_again,
            info=vm.info(name),
            existing=[i.ifname for i in vm.existing()],
            up_s=t1 - t0,
            total_s=t2 - t0,
        )


def do_release_vmac(name: str) -> tuple[bool, bool, float]:
    with VirtualMac() as vm:
        t0 = time.perf_counter()
        first = vm.down(name)
        elapsed = time.perf_counter() - t0
        return first, vm.down(name), elapsed


def do_source_rule(name: str, vip: str, add: bool) -> bool:
    with VirtualMac() as vm:
        if add:
            return vm.add_source_rule(name, ip_address(vip))
        return vm.remove_source_rule(name, ip_address(vip))


def do_in_use(parent: str, vip: str) -> tuple[bool, float]:
    t0 = time.perf_counter()
    got = vmac_in_use(parent, ip_address(vip), VRID, timeout=0.2)
    return got, time.perf_counter() - t0


def do_refusals(parent: str) -> dict[str, str]:
    """Interfaces that are not haagent's vmac are never modified or deleted."""
    out: dict[str, str] = {}
    with VirtualMac() as vm:
        subprocess.run(
            ["ip", "link", "add", "vmac4.77", "link", parent, "type", "macvlan", "mode", "bridge"],
            check=True,
            timeout=10,
        )
        try:
            for key, call in (
                ("down_parent", lambda: vm.down(parent)),
                ("up_foreign", lambda: vm.up(parent, 77, socket.AF_INET)),
            ):
                try:
                    call()
                    out[key] = "accepted"
                except Exception as exc:
                    out[key] = f"{type(exc).__name__}: {exc}"
        finally:
            subprocess.run(["ip", "link", "del", "vmac4.77"], check=True, timeout=10)
    return out


def do_sysctls(parent: str, name: str) -> dict[str, str]:
    keys = [("ipv4", parent, "arp_ignore"), ("ipv4", parent, "arp_announce")]
    keys += [("ipv4", name, k) for k in ("arp_ignore", "arp_announce", "arp_filter")]
    keys += [("ipv6", name, k) for k in ("disable_ipv6", "accept_dad", "accept_ra")]
    out = {}
    for proto, dev, key in keys:
        with suppress(OSError):
            out[f"{proto}.{dev}.{key}"] = Path(
                f"/proc/sys/net/{proto}/conf/{dev}/{key}"
            ).read_text()
    return {k: v.strip() for k, v in out.items()}


def is_resolution(frame: bytes, ip_: IPv4Address | IPv6Address) -> bool:
    """Is ``frame`` an ARP request or NS (any form) for ``ip_``, i.e. a resolution of it?"""
    arp, nd = parse_arp(frame), parse_nd(frame)
    return bool(
        (arp and arp.op == ARP_REQUEST and arp.tpa == ip_)
        or (nd and nd.type != ND_NA and nd.target == ip_)
    )


def is_answer(frame: bytes, ip_: IPv4Address | IPv6Address) -> bool:
    """Is ``frame`` an ARP reply or NA for ``ip_``?"""
    arp, nd = parse_arp(frame), parse_nd(frame)
    return bool(
        (arp and arp.op == ARP_REPLY and arp.spa == ip_)
        or (nd and nd.type == ND_NA and nd.target == ip_)
    )


def do_talk(dev: str, vip: str, proto: str) -> dict[str, Any]:
    """One UDP datagram / one TCP line to the VIP's service. Returns the answer, the
    Ethernet sources of every frame that came from the VIP meanwhile, and whether this
    host sent ARP requests / NS for the VIP (i.e. had to resolve it)."""
    ip_ = ip_address(vip)
    fam = socket.AF_INET if ip_.version == 4 else socket.AF_INET6
    cap = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    cap.bind((dev, 0))
    cap.setblocking(False)
    answer = None
    try:
        if proto == "udp":
            with socket.socket(fam, socket.SOCK_DGRAM) as s:
                s.settimeout(1.0)
                s.connect((vip, PORT))
                s.send(b"hello")
                answer = s.recv(100).decode()
        else:
            with socket.create_connection((vip, PORT), timeout=1.0) as s:
                s.sendall(b"hello\n")
                answer = s.makefile().readline().strip()
    except OSError as exc:
        answer = f"error: {exc}"
    time.sleep(0.01)
    sources, resolved = set(), []
    while True:
        try:
            frame, addr = cap.recvfrom(2048)
        except BlockingIOError:
            break
        if addr[2] == PACKET_OUTGOING:
            if is_resolution(frame, ip_):
                resolved.append(mac_str(frame[0:6]))
            continue
        if frame[12:14] == b"\x08\x00" and IPv4Address(frame[26:30]) == ip_:
            sources.add(mac_str(frame[6:12]))
        if frame[12:14] == b"\x86\xdd" and IPv6Address(frame[22:38]) == ip_:
            sources.add(mac_str(frame[6:12]))
    cap.close()
    return dict(answer=answer, sources=sources, resolved=resolved)


def do_ask(
    dev: str,
    target: str,
    form: str,
    eth_dst: str | None = None,
    count: int = 1,
    timeout: float = 0.3,
) -> list[dict[str, Any]]:
    """Send ``count`` questions for ``target`` in ``form`` and collect every answer.

    Forms: "arp" (who-has from our address), "arp-probe" (from 0.0.0.0), "ns" (to the
    solicited-node group), "ns-unicast" (to the target address and ``eth_dst``), "ns-dad"
    (from ::). With count > 1 each question ends at its first answer (latency runs).
    Each answer: MAC claimed, Ethernet source/destination, IPv6 dst and NA flags, and the
    round trip from just before sending to the kernel's receive timestamp of the answer.
    """
    ip_ = ip_address(target)
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    s.bind((dev, 0))
    s.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    own = bytes(s.getsockname()[4][:6])
    me4, me6 = IPv4Address("198.51.100.100"), IPv6Address("2001:db8::64")
    if isinstance(ip_, IPv4Address):
        sender = {"arp": me4, "arp-probe": IPv4Address(0)}[form]
        ask = arp_frame(ARP_REQUEST, BROADCAST, own, sender, b"\0" * 6, ip_)
    elif form == "ns-unicast":
        assert eth_dst is not None
        ask = ns_frame(mac_bytes(eth_dst), own, me6, ip_, ip_)
    else:
        group = solicited_node(ip_)
        source = {"ns": me6, "ns-dad": UNSPECIFIED6}[form]
        ask = ns_frame(multicast_mac(group), own, source, group, ip_)
    answers: list[dict[str, Any]] = []
    with s:
        for _ in range(count):
            # Empty the queue of anything older than this question.
            s.setblocking(False)
            with suppress(BlockingIOError):
                while True:
                    s.recv(2048)
            sent = time.time_ns()
            s.send(ask)
            deadline = time.monotonic() + timeout
            got = False
            while (left := deadline - time.monotonic()) > 0 and not (got and count > 1):
                s.settimeout(left)
                try:
                    frame, anc, _, addr = s.recvmsg(2048, socket.CMSG_SPACE(16))
                except TimeoutError:
                    break
                if addr[2] == PACKET_OUTGOING:
                    continue
                stamp = 0
                for level, kind, data in anc:
                    if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
                        sec, nsec = struct.unpack("=qq", data[:16])
                        stamp = sec * 1_000_000_000 + nsec
                arp, nd = parse_arp(frame), parse_nd(frame)
                extra: dict[str, Any]
                if arp and arp.op == ARP_REPLY and arp.spa == ip_:
                    mac, extra = arp.sha, {"tha": mac_str(arp.tha), "tpa": str(arp.tpa)}
                elif nd and nd.type == ND_NA and nd.target == ip_:
                    mac = nd.lladdr or nd.eth_src
                    extra = {"dst": str(nd.dst), "flags": nd.flags & 0xE0}
                else:
                    continue
                got = True
                answers.append(
                    dict(
                        mac=mac_str(mac),
                        eth_src=mac_str(frame[6:12]),
                        eth_dst=mac_str(frame[0:6]),
                        rtt=(stamp - sent) / 1e9 if stamp else None,
                        **extra,
                    )
                )
    return answers


def _capture_sent(
    ready: Any,
    stop: Any,
    dev: str,
    keep: Callable[[bytes], bool],
    show: Callable[[bytes], str],
    seconds: float,
) -> list[str]:
    """``show(frame)`` of every frame this host sends on ``dev`` that ``keep`` accepts, until
    ``stop`` is set or, should the test never set it, ``seconds`` have passed."""
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL)) as s:
        s.bind((dev, 0))
        s.settimeout(0.02)  # how often ``stop`` is looked at
        ready.set()
        sent: list[str] = []
        deadline = time.monotonic() + seconds
        while not stop.is_set() and time.monotonic() < deadline:
            try:
                frame, addr = s.recvfrom(2048)
            except TimeoutError:
                continue
            if addr[2] == PACKET_OUTGOING and keep(frame):
                sent.append(show(frame))
        return sent


def do_capture_answers(ready: Any, stop: Any, dev: str, target: str) -> list[str]:
    """Every ARP reply / NA for ``target`` this host *sends* until ``stop`` is set."""
    ip_ = ip_address(target)
    return _capture_sent(ready, stop, dev, lambda frame: is_answer(frame, ip_), bytes.hex, 10)


def do_capture_resolution(ready: Any, stop: Any, dev: str, target: str) -> list[str]:
    """Every ARP request / NS for ``target`` this host sends until ``stop`` is set, as the
    Ethernet destination it was sent to."""
    ip_ = ip_address(target)
    return _capture_sent(
        ready, stop, dev, lambda frame: is_resolution(frame, ip_), lambda f: mac_str(f[0:6]), 20
    )


def do_serve_responder(conn: Connection) -> None:
    """A Responder driven over a pipe: ("hold", ifname, ip, mac), ("release", ifname, ip),
    ("stats",), ("close",). Replies ("ok", value) or ("err", message)."""
    r = Responder()
    try:
        while True:
            if not conn.poll(30):
                return
            cmd, *args = conn.recv()
            try:
                if cmd == "close":
                    r.close()
                    conn.send(("ok", None))
                    return
                value = getattr(r, cmd)(*args)
                conn.send(("ok", value))
            except Exception as exc:
                conn.send(("err", f"{type(exc).__name__}: {exc}"))
    finally:
        r.close()


def do_announce(dev: str, vip: str, mac: str) -> None:
    with Announcer() as a:
        a.announce(dev, ip_address(vip), mac)


class ResponderProc:
    def __init__(self, ns: str) -> None:
        self.conn, child_end = FORK.Pipe()
        self.child = start_in_ns(ns, do_serve_responder, child_end)
        child_end.close()

    def call(self, *cmd: Any) -> Any:
        self.conn.send(cmd)
        assert self.conn.poll(10), f"responder did not answer {cmd}"
        status, value = self.conn.recv()
        assert status == "ok", value
        return value

    def close(self) -> None:
        with suppress(Exception):
            self.call("close")
        with suppress(Exception):
            self.child.result(5)
        self.conn.close()


def cleanup_vmac(ns: str, name: str) -> None:
    """Link, rules and table, whatever state a failed test left them in."""
    with suppress(Exception):
        run_in_ns(ns, do_release_vmac, name)
    ip("link", "del", name, ns=ns, check=False)


def capture(ns: str, fn: Callable[..., list[str]], *args: Any) -> tuple[Any, Any]:
    ready, stop = FORK.Event(), FORK.Event()
    child = start_in_ns(ns, fn, ready, stop, *args)
    if not ready.wait(5):
        stop.set()
        child.result(5)  # re-raises the child's error if it had one; reaps it either way
        raise AssertionError("capture did not start")
    return child, stop


# -- unit-level checks that need no namespace ----------------------------------------------


def test_names_macs_and_tables() -> None:
    assert vrrp_mac(12, socket.AF_INET) == "00:00:5e:00:01:0c"
    assert vrrp_mac(255, socket.AF_INET6) == "00:00:5e:00:02:ff"
    assert vmac_ifname(12, socket.AF_INET) == "vmac4.12"
    assert len(vmac_ifname(255, socket.AF_INET6)) <= 15
    assert parse_vmac_ifname("vmac6.255") == (255, socket.AF_INET6)
    assert vmac_table(1, socket.AF_INET) != vmac_table(1, socket.AF_INET6)
    for bad in (0, 256):
        with pytest.raises(ValueError):
            vrrp_mac(bad, socket.AF_INET)
    with pytest.raises(ValueError):
        vrrp_mac(1, 4)  # a version number is not an address family
    for name in ("eth0", "vmac4.0", "vmac5.1", "vmac4.256", "vmac4.12x"):
        with pytest.raises(ValueError):
            parse_vmac_ifname(name)


# -- virtual MAC ---------------------------------------------------------------------------


@pytest.mark.parametrize("version", [4, 6])
def test_vmac_failover_keeps_the_client_mac_and_moves_the_switch(net: Net, version: int) -> None:
    vip, family = VMAC_VIP[version], FAMILY[version]
    vmac, name = vrrp_mac(VRID, family), vmac_ifname(VRID, family)
    a, b, c = net.ns("a"), net.ns("b"), net.ns("c")
    try:
        assert net.vmacs("a") == [] and net.vmacs("b") == []

        # -- A takes the VIP --------------------------------------------------------------
        got = run_in_ns(a, do_acquire_vmac, net.dev("a"), version, vip)
        assert (got["name"], got["again"], got["bound"], got["rule"]) == (name, name, True, True)
        assert got["rule_again"] is False
        info = got["info"]
        assert (info.parent, info.mac, info.mode, info.up) == (net.dev("a"), vmac, "private", True)
        assert got["existing"] == [name]
        assert net.vmacs("a") == [name] and net.vmacs("b") == []
        sysctls = run_in_ns(a, do_sysctls, net.dev("a"), name)
        assert sysctls[f"ipv4.{net.dev('a')}.arp_ignore"] == "1"
        assert sysctls[f"ipv4.{net.dev('a')}.arp_announce"] == "2"
        assert sysctls[f"ipv4.{name}.arp_ignore"] == "1"
        assert sysctls[f"ipv6.{name}.disable_ipv6"] == ("1" if version == 4 else "0")
        if version == 6:
            assert sysctls[f"ipv6.{name}.accept_dad"] == "0"
            # No link-local address on the vmac: it would be the same on every host.
            assert "fe80" not in ip("-6", "addr", "show", "dev", name, ns=a)

        # The client resolves the VIP to the virtual MAC and reaches A; every frame from
        # the VIP (UDP and TCP replies) carries the virtual MAC, even with rp_filter=1.
        for proto in ("udp", "tcp"):
            talk = run_in_ns(c, do_talk, net.dev("c"), vip, proto)
            assert talk["answer"].startswith("a "), talk
            assert talk["sources"] == {vmac}, talk
        assert net.neigh(vip)[0] == vmac
        assert net.fdb_port(vmac) == net.port("a")
        # A reaches its own VIP (the local table, over lo: the macvlan mode is irrelevant).
        assert run_in_ns(a, do_talk, "lo", vip, "udp")["answer"].startswith("a ")
        # B sees that the virtual MAC answers for the VIP elsewhere.
        in_use, _ = run_in_ns(b, do_in_use, net.dev("b"), vip)
        assert in_use is True

        # -- failover: A lets go, B takes over --------------------------------------------
        sniff, stop = capture(c, do_capture_resolution, net.dev("c"), vip)
        try:
            first, second, down_s = run_in_ns(a, do_release_vmac, name)
            assert (first, second) == (True, False)
            assert net.vmacs("a") == [] and net.vmacs("b") == []
            assert ip("rule", "show", ns=a).count("lookup") == 3  # local, main, default
            in_use, probe_s = run_in_ns(b, do_in_use, net.dev("b"), vip)
            assert in_use is False and probe_s >= 0.2
            assert net.neigh(vip)[0] == vmac  # the client noticed nothing

            assert net.fdb_port(vmac) == net.port("a")  # the switch still points at A
            got = run_in_ns(b, do_acquire_vmac, net.dev("b"), version, vip)
            # The first frames from the virtual MAC at B (the announcement; for IPv6 also
            # the MLD report of binding the VIP) moved the FDB: at the first look.
            assert net.fdb_port(vmac) == net.port("b")
            assert net.vmacs("a") == [] and net.vmacs("b") == [name]

            for proto in ("udp", "tcp"):
                talk = run_in_ns(c, do_talk, net.dev("c"), vip, proto)
                assert talk["answer"].startswith("b "), talk
                assert talk["sources"] == {vmac}, talk
            assert net.neigh(vip)[0] == vmac
        finally:
            stop.set()
            resolutions = sniff.result(10)
        # The client never had to resolve the VIP again: same MAC, no ARP request, no NS.
        assert resolutions == [], resolutions
        print(
            f"\nIPv{version} vmac: up {got['up_s'] * 1e3:.1f} ms, up+bind+rule+announce "
            f"{got['total_s'] * 1e3:.1f} ms, down {down_s * 1e3:.1f} ms"
        )
    finally:
        for m in ("a", "b"):
            cleanup_vmac(net.ns(m), name)
        ip("neigh", "flush", "dev", net.dev("c"), ns=c, check=False)


@pytest.mark.parametrize("version", [4, 6])
def test_only_the_vmac_answers_and_a_standby_stays_silent(net: Net, version: int) -> None:
    """With the VIP on A's vmac: a who-has / NS from the client gets exactly one answer,
    from the virtual MAC; A's own interface does not answer, and B (standby: no vmac, VIP
    not bound) sends nothing. Control (IPv4): with arp_ignore=0 on A's parent (and rp_filter
    at its default 0), the parent answers too, with the node MAC -- the reason for that
    sysctl. IPv6 needs no sysctl: Linux answers an NS only for addresses on the interface
    it arrived on."""
    vip, family = VMAC_VIP[version], FAMILY[version]
    vmac, name = vrrp_mac(VRID, family), vmac_ifname(VRID, family)
    a, c = net.ns("a"), net.ns("c")
    forms = ["arp", "arp-probe"] if version == 4 else ["ns", "ns-dad"]
    try:
        run_in_ns(a, do_acquire_vmac, net.dev("a"), version, vip)
        sniff_b, stop_b = capture(net.ns("b"), do_capture_answers, net.dev("b"), vip)
        try:
            for form in forms:
                answers = run_in_ns(c, do_ask, net.dev("c"), vip, form)
                assert [x["mac"] for x in answers] == [vmac], (form, answers)
                assert {x["eth_src"] for x in answers} == {vmac}
            if version == 6:
                unicast = run_in_ns(c, do_ask, net.dev("c"), vip, "ns-unicast", vmac)
                assert [x["mac"] for x in unicast] == [vmac], unicast
        finally:
            stop_b.set()
            assert sniff_b.result(10) == [], "the standby answered"
        if version == 4:
            # Control. Strict rp_filter alone also silences the parent here (the reverse
            # path of the asker, looked up from the VIP, is the vmac thanks to the source
            # rule), so it is relaxed to the kernel default for the control.
            parent = net.dev("a")
            sysctl(a, "net.ipv4.conf.all.rp_filter", "0")
            sysctl(a, f"net.ipv4.conf.{parent}.arp_ignore", "0")
            try:
                answers = run_in_ns(c, do_ask, net.dev("c"), vip, "arp")
            finally:
                sysctl(a, f"net.ipv4.conf.{parent}.arp_ignore", "1")
                sysctl(a, "net.ipv4.conf.all.rp_filter", "1")
            assert sorted(x["mac"] for x in answers) == sorted([vmac, net.mac("a")]), answers

            # Control for arp_announce=2 on the parent: without the source rule, A's reply
            # to the client leaves through the parent, which must first ARP for the client.
            # With arp_announce=0 that request carries the VIP as sender IP and the node
            # MAC, and the client (its target) rewrites its entry for the VIP to the node
            # MAC; with 2 it carries A's own address and the entry keeps the virtual MAC.
            assert run_in_ns(a, do_source_rule, name, vip, False) is True
            try:
                # First, what the source rule does for strict rp_filter: without it the
                # client's packets, arriving on the vmac, fail the reverse-path check.
                talk = run_in_ns(c, do_talk, net.dev("c"), vip, "udp")
                assert talk["answer"].startswith("error"), talk
                sysctl(a, "net.ipv4.conf.all.rp_filter", "0")
                seen = {}
                for announce in ("0", "2"):
                    sysctl(a, f"net.ipv4.conf.{parent}.arp_announce", announce)
                    for ns in (a, c):
                        ip("neigh", "flush", "all", ns=ns)
                    talk = run_in_ns(c, do_talk, net.dev("c"), vip, "udp")
                    assert talk["answer"].startswith("a "), talk
                    seen[announce] = net.neigh(vip)[0]
            finally:
                sysctl(a, f"net.ipv4.conf.{parent}.arp_announce", "2")
                sysctl(a, "net.ipv4.conf.all.rp_filter", "1")
            assert seen == {"0": net.mac("a"), "2": vmac}, seen
    finally:
        cleanup_vmac(a, name)
        ip("neigh", "flush", "dev", net.dev("c"), ns=c, check=False)


def test_vmac_refuses_foreign_interfaces(net: Net) -> None:
    got = run_in_ns(net.ns("b"), do_refusals, net.dev("b"))
    assert got["down_parent"].startswith("NetError") and "not a virtual MAC" in got["down_parent"]
    assert got["up_foreign"].startswith("NetError") and "mode is bridge" in got["up_foreign"]
    assert net.vmacs("b") == []
    assert net.dev("b") in ip("-br", "link", "show", ns=net.ns("b"))


# -- announce-only responder ---------------------------------------------------------------


def nft_dnat(ns: str, version: int, vip: str, to: str) -> None:
    """Traffic for the VIP goes to the host's own address (what IPVS/XDP would take)."""
    family = "ip" if version == 4 else "ip6"
    rules = (
        "table inet hxl2 {\n"
        "  chain pre { type nat hook prerouting priority dstnat; policy accept;\n"
        f"    {family} daddr {vip} dnat {family} to {to}\n"
        "  }\n"
        "}\n"
    )
    subprocess.run(
        ["ip", "netns", "exec", ns, "nft", "-f", "-"],
        input=rules,
        text=True,
        check=True,
        timeout=10,
    )


@pytest.mark.parametrize("version", [4, 6])
def test_responder_answers_for_an_unbound_vip_and_hands_over(net: Net, version: int) -> None:
    vip = ANNOUNCE_ONLY_VIP[version]
    a, b, c = net.ns("a"), net.ns("b"), net.ns("c")
    mac_a, mac_b, mac_c = net.mac("a"), net.mac("b"), net.mac("c")
    resp_a = resp_b = None
    neigh = "ipv4" if version == 4 else "ipv6"
    try:
        for m in ("a", "b"):
            nft_dnat(net.ns(m), version, vip, host_ip(m, version))
        resp_a = ResponderProc(a)
        resp_b = ResponderProc(b)
        assert run_in_ns(c, do_ask, net.dev("c"), vip, "arp" if version == 4 else "ns") == []

        resp_a.call("hold", net.dev("a"), vip, mac_a)
        resp_a.call("hold", net.dev("a"), vip, mac_a)  # idempotent
        assert vip not in ip("addr", ns=a)  # nothing bound anywhere
        if version == 4:
            (ans,) = run_in_ns(c, do_ask, net.dev("c"), vip, "arp")
            assert (ans["mac"], ans["eth_src"], ans["eth_dst"]) == (mac_a, mac_a, mac_c)
            assert (ans["tha"], ans["tpa"]) == (mac_c, "198.51.100.100")
            (probe,) = run_in_ns(c, do_ask, net.dev("c"), vip, "arp-probe")
            assert probe["mac"] == mac_a and probe["tpa"] == "0.0.0.0"
        else:
            # The NIC would only deliver the multicast NS because of this membership.
            group = mac_str(multicast_mac(solicited_node(IPv6Address(vip))))
            assert group in ip("maddr", "show", "dev", net.dev("a"), ns=a)
            for form in ("ns", "ns-unicast"):
                (ans,) = run_in_ns(c, do_ask, net.dev("c"), vip, form, mac_a)
                assert (ans["mac"], ans["eth_src"], ans["eth_dst"]) == (mac_a, mac_a, mac_c)
                assert ans["dst"] == "2001:db8::64"
                assert ans["flags"] == 0x60, f"{form}: R,S,O = {ans['flags'] >> 5:03b}"
            (dad,) = run_in_ns(c, do_ask, net.dev("c"), vip, "ns-dad")
            assert dad["dst"] == "ff02::1" and dad["flags"] == 0x20  # defends: S=0, O=1

        # The client's kernel resolves the VIP and reaches A's service through the DNAT.
        for proto in ("udp", "tcp"):
            talk = run_in_ns(c, do_talk, net.dev("c"), vip, proto)
            assert talk["answer"].startswith("a "), talk
        assert net.neigh(vip) == (mac_a, "REACHABLE")

        # The client's own reachability probe (STALE -> DELAY -> PROBE: a *unicast* ARP
        # request / NS to A's MAC) is answered: the entry becomes REACHABLE again instead of
        # FAILED. delay_first_probe_time=0 makes the kernel probe at once.
        sysctl(c, f"net.{neigh}.neigh.{net.dev('c')}.delay_first_probe_time", "0")
        ip("neigh", "change", vip, "lladdr", mac_a, "dev", net.dev("c"), "nud", "stale", ns=c)
        sniff, stop = capture(c, do_capture_resolution, net.dev("c"), vip)
        try:
            assert run_in_ns(c, do_talk, net.dev("c"), vip, "udp")["answer"].startswith("a ")
            wait_for(
                lambda: net.neigh(vip) == (mac_a, "REACHABLE"),
                2.0,
                what=f"the client's probe to make its entry for {vip} REACHABLE again",
                detail=lambda: net.neigh(vip),
            )
        finally:
            stop.set()
            probes = sniff.result(10)
        assert probes and set(probes) == {mac_a}, probes  # unicast, to A's MAC

        # Latency: 200 questions, each waiting for its answer.
        form = "arp" if version == 4 else "ns"
        answers = run_in_ns(c, do_ask, net.dev("c"), vip, form, None, 200, 0.5)
        assert len(answers) == 200
        rtts = sorted(x["rtt"] for x in answers)
        stats = resp_a.call("stats")
        assert stats.latency_p50 < 0.001, stats
        print(
            f"\nIPv{version} responder: in-thread p50 {stats.latency_p50 * 1e6:.0f} us, "
            f"p99 {stats.latency_p99 * 1e6:.0f} us, max {stats.latency_max * 1e6:.0f} us "
            f"({stats.samples} answers); client round trip p50 "
            f"{rtts[len(rtts) // 2] * 1e6:.0f} us, p99 {rtts[int(len(rtts) * 0.99)] * 1e6:.0f} "
            f"us, max {rtts[-1] * 1e6:.0f} us"
        )

        # release(): silence at once, group left.
        assert resp_a.call("release", net.dev("a"), vip) is True
        assert resp_a.call("release", net.dev("a"), vip) is False
        silent = ["arp", "arp-probe"] if version == 4 else ["ns", "ns-unicast", "ns-dad"]
        for question in silent:
            assert run_in_ns(c, do_ask, net.dev("c"), vip, question, mac_a) == [], question
        if version == 6:
            assert group not in ip("maddr", "show", "dev", net.dev("a"), ns=a)

        # B takes over and announces; the client's entry follows and it reaches B.
        resp_b.call("hold", net.dev("b"), vip, mac_b)
        run_in_ns(b, do_announce, net.dev("b"), vip, mac_b)
        wait_for(
            lambda: net.neigh(vip)[0] == mac_b,
            1.0,
            what=f"the client's entry for {vip} to move to B's {mac_b}",
            detail=lambda: net.neigh(vip),
        )
        assert run_in_ns(c, do_talk, net.dev("c"), vip, "udp")["answer"].startswith("b ")
        assert [x["mac"] for x in run_in_ns(c, do_ask, net.dev("c"), vip, form)] == [mac_b]
    finally:
        for r in (resp_a, resp_b):
            if r is not None:
                r.close()
        for m in ("a", "b"):
            subprocess.run(
                ["ip", "netns", "exec", net.ns(m), "nft", "delete", "table", "inet", "hxl2"],
                capture_output=True,
                check=False,
                timeout=10,
            )
        ip("neigh", "flush", "dev", net.dev("c"), ns=c, check=False)


def do_responder_edges(dev: str, peer: str) -> dict[str, Any]:
    """Errors the caller gets at once; a deleted and re-created interface is recovered."""
    out: dict[str, Any] = {}
    with Responder() as r:
        calls: list[tuple[str, Callable[[], None]]] = [
            ("no_such_if", lambda: r.hold("hxl2nosuchif", "198.51.100.99", "02:00:00:00:00:99")),
            ("bad_mac", lambda: r.hold(dev, "198.51.100.99", "ff:ff:ff:ff:ff:ff")),
        ]
        for key, call in calls:
            try:
                call()
                out[key] = "accepted"
            except Exception as exc:
                out[key] = f"{type(exc).__name__}: {exc}"
        r.hold(dev, "198.51.100.99", "02:00:00:00:00:99")
        out["held"] = r.held()
        subprocess.run(["ip", "link", "del", dev], check=True, timeout=10)
        subprocess.run(
            ["ip", "link", "add", dev, "type", "veth", "peer", "name", peer], check=True, timeout=10
        )
        for d in (dev, peer):
            subprocess.run(["ip", "link", "set", d, "up"], check=True, timeout=10)
        # The responder notices (ENETDOWN), reopens by name and answers on the new link.
        answered = wait_for(
            lambda: who_answers(peer, IPv4Address("198.51.100.99"), timeout=0.1),
            3.0,
            what=f"the responder to answer again on the re-created {dev}",
        )
        out["after_recreate"] = answered
        out["stats"] = r.stats()
    return out


def test_responder_errors_and_recovery(net: Net) -> None:
    ns, dev, peer = net.ns("a"), net.seg.prefix + "x0", net.seg.prefix + "x1"
    ip("link", "add", dev, "type", "veth", "peer", "name", peer, ns=ns)
    try:
        for d in (dev, peer):
            ip("link", "set", d, "up", ns=ns)
        got = run_in_ns(ns, do_responder_edges, dev, peer)
        assert got["no_such_if"].startswith("NetError") and "hxl2nosuchif" in got["no_such_if"]
        assert got["bad_mac"].startswith("NetError") and "unicast" in got["bad_mac"]
        assert got["held"] == {(dev, IPv4Address("198.51.100.99")): "02:00:00:00:00:99"}
        assert got["after_recreate"] == ["02:00:00:00:00:99"], got
    finally:
        ip("link", "del", dev, ns=ns, check=False)


def dual_vmac_vip(parent: str) -> VipConfig:
    """One vmac VIP carrying an IPv4 and an IPv6 address."""
    v4, v6 = ip_interface(f"{VMAC_VIP[4]}/32"), ip_interface(f"{VMAC_VIP[6]}/128")
    return VipConfig("pair", v4, parent, vmac=True, vrid=VRID, extra_addresses=(v6,))


def do_place_announce(vip: VipConfig) -> list[tuple[str, str, str]]:
    """What the agent does on winning the VIP: place every address, then announce each from
    where it lives with its MAC. (interface, address, MAC) of each."""
    with AddressManager() as am, closing(Placement(am)) as place, Announcer() as an:
        place.place(vip, None)
        spots = [(i, str(a), place.mac(vip, a)) for i, a in place.spots(vip)]
        for ifname, address, mac in spots:
            an.announce(ifname, ip_interface(address).ip, mac)
        return spots


def do_remove_in_two_steps(vip: VipConfig) -> dict[str, Any]:
    """The agent's release: the addresses first (links kept for tidy()), then the links."""
    with AddressManager() as am, closing(Placement(am)) as place:
        removed = place.remove(vip, link_later=True)
        after_remove = {i: sorted(str(a) for a in am.owned(i)) for i, _ in place.spots(vip)}
        links_kept = [i for i, _ in place.spots(vip) if am.exists(i)]
        place.tidy()
        return dict(
            removed=removed,
            owned=after_remove,
            kept=links_kept,
            left=[i for i, _ in place.spots(vip) if am.exists(i)],
        )


def test_a_vmac_vip_with_both_families_has_a_vmac_each_and_moves_whole(net: Net) -> None:
    """One VIP, an IPv4 and an IPv6 address: a vmac of each family with the VIP's VRID, each
    address answered with its own family's virtual MAC, and both gone from A (addresses at
    once, links at tidy) before B places them."""
    names = [vmac_ifname(VRID, FAMILY[4]), vmac_ifname(VRID, FAMILY[6])]
    macs = {4: vrrp_mac(VRID, FAMILY[4]), 6: vrrp_mac(VRID, FAMILY[6])}
    c = net.ns("c")
    try:
        for m, other in (("a", None), ("b", "a")):
            if other is not None:
                got = run_in_ns(
                    net.ns(other), do_remove_in_two_steps, dual_vmac_vip(net.dev(other))
                )
                assert got["removed"] is True
                assert got["owned"] == {names[0]: [], names[1]: []}, got
                assert got["kept"] == names and got["left"] == [], got
                assert net.vmacs(other) == []
            spots = run_in_ns(net.ns(m), do_place_announce, dual_vmac_vip(net.dev(m)))
            assert spots == [
                (names[0], f"{VMAC_VIP[4]}/32", macs[4]),
                (names[1], f"{VMAC_VIP[6]}/128", macs[6]),
            ]
            assert net.vmacs(m) == names
            for version in (4, 6):
                for proto in ("udp", "tcp"):
                    talk = run_in_ns(c, do_talk, net.dev("c"), VMAC_VIP[version], proto)
                    assert talk["answer"].startswith(f"{m} "), (version, proto, talk)
                    assert talk["sources"] == {macs[version]}, (version, proto, talk)
                assert net.neigh(VMAC_VIP[version])[0] == macs[version]
                assert net.fdb_port(macs[version]) == net.port(m)
        got = run_in_ns(net.ns("b"), do_remove_in_two_steps, dual_vmac_vip(net.dev("b")))
        assert got["left"] == [] and net.vmacs("b") == []
    finally:
        for m in ("a", "b"):
            for name in names:
                cleanup_vmac(net.ns(m), name)
        ip("neigh", "flush", "dev", net.dev("c"), ns=c, check=False)


def test_nothing_left_behind(net: Net) -> None:
    """Runs last in this module: no vmac, rule or table of ours survives the tests above."""
    for m in ("a", "b"):
        assert net.vmacs(m) == []
        rules = ip("rule", "show", ns=net.ns(m)) + ip("-6", "rule", "show", ns=net.ns(m))
        assert "16000:" not in rules, rules
        for fam in FAMILY.values():
            table = str(vmac_table(VRID, fam))
            assert ip("route", "show", "table", table, ns=net.ns(m), check=False) == ""
            assert ip("-6", "route", "show", "table", table, ns=net.ns(m), check=False) == ""
    assert os.geteuid() == 0

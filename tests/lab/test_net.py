"""The Net layer against a real kernel: addresses, gratuitous ARP, unsolicited NA.

Topology (one per module, names carry a random "hxn"+4-hex prefix)::

    ns <p>sw: bridge <p>br
       ├── ns <p>a  (old holder)   <p>a  198.51.100.1/24  2001:db8::1/64   fe80::a
       ├── ns <p>b  (new holder)   <p>b  198.51.100.2/24  2001:db8::2/64   fe80::b
       └── ns <p>c  (client)       <p>c  198.51.100.100/24 2001:db8::100/64 fe80::c

How code under test runs: ``nsutil.run_in_ns`` forks a child that ``setns()``es into the
namespace before it creates an AddressManager or Announcer, so netlink, packet sockets and
/proc/thread-self/net are all that namespace's; the pytest process stays where it is and
only inspects with ``ip -n``. Each test uses its own VIPs and removes them when done.
"""

from __future__ import annotations

import multiprocessing
import re
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from ipaddress import IPv4Address, IPv4Interface, IPv6Address, IPv6Interface, ip_interface
from pathlib import Path
from typing import Any

import pytest

from haagent.net.addresses import AddressManager, ForeignAddress, NetError
from haagent.net.announce import Announcer
from tests.lab.conftest import wait_until as wait_for
from tests.lab.nsutil import Segment, ip, run_in_ns, segment, start_in_ns, sysctl

pytestmark = pytest.mark.lab

REPO = Path(__file__).resolve().parents[2]
NODE = {"a": 1, "b": 2, "c": 100}
CLIENT_LOCKTIME = "1000"  # centiseconds: 10 s


@pytest.fixture(scope="module")
def net() -> Iterator[Segment]:
    with segment("a", "b", "c") as seg:
        seg.add_host_addresses(NODE)
        yield seg


@pytest.fixture
def spare(net: Segment) -> Iterator[str]:
    """A second interface in namespace a (a veth pair local to it), IPv6 disabled on it."""
    ns, dev = net.ns("a"), net.prefix + "x0"
    ip("link", "add", dev, "type", "veth", "peer", "name", net.prefix + "x1", ns=ns)
    try:
        sysctl(ns, f"net.ipv6.conf.{dev}.disable_ipv6", "1")
        ip("link", "set", dev, "up", ns=ns)
        ip("link", "set", net.prefix + "x1", "up", ns=ns)
        yield dev
    finally:
        ip("link", "del", dev, ns=ns, check=False)


def addr_lines(ns: str, dev: str, ip_: IPv4Address | IPv6Address) -> list[str]:
    """Lines of `ip addr` for ``ip_`` on ``dev``, with the flags line the kernel reports."""
    fam = "-4" if ip_.version == 4 else "-6"
    out = ip("-o", fam, "addr", "show", "dev", dev, ns=ns)
    return [line for line in out.splitlines() if re.search(rf"inet6? {re.escape(str(ip_))}/", line)]


def neigh(ns: str, dev: str, ip_: IPv4Address | IPv6Address) -> tuple[str | None, str | None]:
    """(lladdr, state) of the neighbour entry for ``ip_`` in ``ns``."""
    out = ip("neigh", "show", str(ip_), "dev", dev, ns=ns).split()
    mac = out[out.index("lladdr") + 1].lower() if "lladdr" in out else None
    return mac, (out[-1] if out else None)


def snapshot(ns: str, dev: str) -> str:
    """Everything bind/unbind could leave behind: addresses, routes of all tables, groups."""
    parts = [
        ip("addr", "show", "dev", dev, ns=ns),
        ip("-4", "route", "show", "table", "all", ns=ns),
        ip("-6", "route", "show", "table", "all", ns=ns),
        ip("maddr", "show", "dev", dev, ns=ns),
    ]
    return "\n".join(parts)


# -- functions that run inside a namespace (forked child) ----------------------------------


def do_bind(dev: str, *addrs: str) -> list[bool]:
    with AddressManager() as m:
        return [m.bind(dev, ip_interface(a)) for a in addrs]


def do_unbind(dev: str, *addrs: str) -> list[bool]:
    with AddressManager() as m:
        return [m.unbind(dev, ip_interface(a)) for a in addrs]


def do_query(dev: str, addr: str) -> dict[str, Any]:
    with AddressManager() as m:
        return {
            "exists": m.exists(dev),
            "mac": m.mac(dev),
            "is_bound": m.is_bound(dev, ip_interface(addr)),
            "bound_ips": m.bound_ips(dev),
        }


def do_announce(dev: str, addr: str, mac: str | None = None, arp_reply: bool = False) -> None:
    with AddressManager() as m, Announcer() as a:
        a.announce(dev, ip_interface(addr).ip, mac or m.mac(dev), arp_reply=arp_reply)


def do_poke(addr: str) -> None:
    """Send one UDP datagram to ``addr``: the kernel resolves its MAC first (ARP / NS)."""
    ip_ = ip_interface(addr).ip
    fam = socket.AF_INET if ip_.version == 4 else socket.AF_INET6
    with socket.socket(fam, socket.SOCK_DGRAM) as s:
        s.sendto(b"poke", (str(ip_), 9))


def do_capture(ready: Any, dev: str, src_mac: str, want: int, timeout: float) -> list[bytes]:
    """Frames from ``src_mac`` that are ARP or ICMPv6 neighbour advertisements."""
    eth_p_all = 0x0003
    frames: list[bytes] = []
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(eth_p_all)) as s:
        s.bind((dev, 0))
        s.settimeout(0.05)
        ready.set()
        deadline = time.monotonic() + timeout
        while len(frames) < want and time.monotonic() < deadline:
            try:
                frame = s.recv(2048)
            except TimeoutError:
                continue
            if frame[6:12] != bytes.fromhex(src_mac.replace(":", "")):
                continue
            ethertype = frame[12:14]
            if ethertype == b"\x08\x06" or (
                ethertype == b"\x86\xdd" and frame[20] == 58 and frame[54] == 136
            ):
                frames.append(frame)
    return frames


def do_announce_many(dev: str, vip4: str, vip6: str, n: int) -> dict[str, Any]:
    with AddressManager() as m, Announcer() as a:
        mac = m.mac(dev)
        for i in range(n):
            a.announce(dev, ip_interface(vip4 if i % 2 else vip6).ip, mac)
        first = dict(opened=a.sockets_opened, interfaces=a.open_interfaces)
        a.announce("lo", IPv4Address("198.51.100.250"), "00:00:00:00:00:00")
        second = dict(opened=a.sockets_opened, interfaces=a.open_interfaces)
        a.close()
        return dict(first=first, second=second, closed=a.open_interfaces)


def do_announce_across_recreate(dev: str, peer: str) -> dict[str, Any]:
    with Announcer() as a:
        mac = "02:00:00:00:00:01"
        a.announce(dev, IPv4Address("198.51.100.251"), mac)
        before = a.sockets_opened
        subprocess.run(["ip", "link", "del", dev], check=True, timeout=10)
        subprocess.run(
            ["ip", "link", "add", dev, "type", "veth", "peer", "name", peer], check=True, timeout=10
        )
        subprocess.run(["ip", "link", "set", dev, "up"], check=True, timeout=10)
        a.announce(dev, IPv4Address("198.51.100.251"), mac)
        errors = []
        for bad in ("hxnnosuchif", dev):
            if bad == dev:
                subprocess.run(["ip", "link", "set", dev, "down"], check=True, timeout=10)
            try:
                a.announce(bad, IPv4Address("198.51.100.251"), mac)
            except NetError as exc:
                errors.append(str(exc))
        return dict(before=before, after=a.sockets_opened, errors=errors)


# -- addresses -----------------------------------------------------------------------------


def test_bind_unbind_ipv4_is_idempotent(net: Segment) -> None:
    ns, dev, vip = net.ns("b"), net.ifname("b"), IPv4Interface("198.51.100.10/32")
    try:
        assert run_in_ns(ns, do_bind, dev, str(vip), str(vip)) == [True, False]
        lines = addr_lines(ns, dev, vip.ip)
        assert len(lines) == 1, lines
        assert f"inet {vip.ip}/32 " in lines[0]
        assert run_in_ns(ns, do_unbind, dev, str(vip), str(vip)) == [True, False]
        assert addr_lines(ns, dev, vip.ip) == []
    finally:
        ip("addr", "del", str(vip), "dev", dev, ns=ns, check=False)


def test_bind_unbind_ipv6_is_idempotent_and_never_tentative(net: Segment) -> None:
    """The old holder (a) still has the VIP when the new one (b) binds it: a failover.

    Without IFA_F_NODAD b's copy would be "tentative" at once and "dadfailed" as soon as
    a answered b's DAD probe. router_solicitation_delay=0 makes b start DAD at once, so
    the control below (same situation, plain `ip addr add`) fails within milliseconds.
    """
    a, b, dev_a, dev_b = net.ns("a"), net.ns("b"), net.ifname("a"), net.ifname("b")
    vip, control = IPv6Interface("2001:db8::20/128"), IPv6Interface("2001:db8::21/128")
    sysctl(b, f"net.ipv6.conf.{dev_b}.router_solicitation_delay", "0")
    try:
        for held in (vip, control):
            ip("addr", "add", str(held), "dev", dev_a, "nodad", ns=a)
        # Control: DAD is live on b, and a's answer makes a plain add fail.
        ip("addr", "add", str(control), "dev", dev_b, ns=b)
        assert "tentative" in addr_lines(b, dev_b, control.ip)[0]
        wait_for(
            lambda: "dadfailed" in addr_lines(b, dev_b, control.ip)[0],
            3.0,
            what=f"the control {control} on b to fail DAD",
        )

        assert run_in_ns(b, do_bind, dev_b, str(vip), str(vip)) == [True, False]
        lines = addr_lines(b, dev_b, vip.ip)
        assert len(lines) == 1, lines
        assert "nodad" in lines[0]
        # Watch past the point where the control had failed.
        deadline = time.monotonic() + 0.5
        while time.monotonic() < deadline:
            (line,) = addr_lines(b, dev_b, vip.ip)
            assert "tentative" not in line and "dadfailed" not in line, line
            time.sleep(0.05)
        assert run_in_ns(b, do_unbind, dev_b, str(vip), str(vip)) == [True, False]
        assert addr_lines(b, dev_b, vip.ip) == []
    finally:
        for ns, dev in ((a, dev_a), (b, dev_b)):
            for held in (vip, control):
                ip("addr", "del", str(held), "dev", dev, ns=ns, check=False)


def test_host_length_bind_adds_no_prefix_route_and_unbind_leaves_nothing(net: Segment) -> None:
    ns, dev = net.ns("b"), net.ifname("b")
    vip4, vip6 = "198.51.100.11/32", "2001:db8::11/128"
    before = snapshot(ns, dev)
    try:
        for _ in range(3):
            assert run_in_ns(ns, do_bind, dev, vip4, vip6) == [True, True]
            main6 = ip("-6", "route", "show", "table", "main", ns=ns)
            assert "2001:db8::11 " not in main6, main6
            main4 = ip("-4", "route", "show", "table", "main", ns=ns)
            assert "198.51.100.11 " not in main4, main4
            local = ip("route", "show", "table", "local", ns=ns)
            local += ip("-6", "route", "show", "table", "local", ns=ns)
            assert "local 198.51.100.11 " in local and "local 2001:db8::11 " in local, local
            assert run_in_ns(ns, do_unbind, dev, vip4, vip6) == [True, True]
        assert snapshot(ns, dev) == before
    finally:
        for v in (vip4, vip6):
            ip("addr", "del", v, "dev", dev, ns=ns, check=False)


@pytest.mark.parametrize(
    "vip, route",
    [
        ("203.0.113.5/24", "203.0.113.0/24 "),  # new subnet: the kernel adds a prefix route
        ("2001:db8:1::5/64", "2001:db8:1::/64 "),
        ("198.51.100.12/24", None),  # the node's own subnet: a secondary address
        ("2001:db8::12/64", None),
    ],
)
def test_wider_prefix_bind_unbind_leaves_nothing(net: Segment, vip: str, route: str | None) -> None:
    ns, dev = net.ns("b"), net.ifname("b")
    before = snapshot(ns, dev)
    try:
        for _ in range(3):
            assert run_in_ns(ns, do_bind, dev, vip, vip) == [True, False]
            if route is not None:
                assert route in ip("route", "show", "table", "main", ns=ns) + ip(
                    "-6", "route", "show", "table", "main", ns=ns
                )
            assert run_in_ns(ns, do_unbind, dev, vip, vip) == [True, False]
        # The node's own address and its prefix route survive; nothing of the VIP remains.
        assert snapshot(ns, dev) == before
    finally:
        ip("addr", "del", vip, "dev", dev, ns=ns, check=False)


def do_bind_error(dev: str, addr: str) -> str:
    with AddressManager() as m:
        try:
            m.bind(dev, ip_interface(addr))
        except ForeignAddress as exc:
            return str(exc)
    return "bound"


def test_the_hosts_own_address_is_never_haagents(net: Segment) -> None:
    """A VIP equal to the node's own address, with its own prefix or a host-length one: not
    bound as haagent's, refused by bind, untouched by unbind."""
    ns, dev = net.ns("b"), net.ifname("b")
    for vip in ("198.51.100.2/32", "198.51.100.2/24", "2001:db8::2/128", "2001:db8::2/64"):
        assert run_in_ns(ns, do_query, dev, vip)["is_bound"] is False
        assert "not added by haagent" in run_in_ns(ns, do_bind_error, dev, vip)
        assert run_in_ns(ns, do_unbind, dev, vip) == [False]
    assert len(addr_lines(ns, dev, IPv4Address("198.51.100.2"))) == 1
    assert len(addr_lines(ns, dev, IPv6Address("2001:db8::2"))) == 1


def test_queries_report_the_kernel_view(net: Segment) -> None:
    ns, dev = net.ns("b"), net.ifname("b")
    q = run_in_ns(ns, do_query, dev, "198.51.100.2/24")
    assert q["exists"] is True
    assert q["mac"] == net.mac("b")
    assert q["is_bound"] is False  # the node's own address: there, but not haagent's
    assert q["bound_ips"] == {
        IPv4Address("198.51.100.2"),
        IPv6Address("2001:db8::2"),
        IPv6Address("fe80::b"),
    }


def do_errors(dev: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    with AddressManager() as m:
        out["exists"] = m.exists("hxnnosuchif")
        out["unbind"] = m.unbind("hxnnosuchif", IPv4Interface("198.51.100.14/32"))
        out["is_bound"] = m.is_bound("hxnnosuchif", IPv4Interface("198.51.100.14/32"))
        out["bound_ips"] = m.bound_ips("hxnnosuchif")
        for key, call in (
            ("bind_missing", lambda: m.bind("hxnnosuchif", IPv4Interface("198.51.100.14/32"))),
            ("mac_missing", lambda: m.mac("hxnnosuchif")),
            ("bind_v6_disabled", lambda: m.bind(dev, IPv6Interface("2001:db8::14/128"))),
        ):
            try:
                call()
            except NetError as exc:
                out[key] = str(exc)
    return out


def test_errors_name_the_interface_and_the_kernel_reason(net: Segment, spare: str) -> None:
    got = run_in_ns(net.ns("a"), do_errors, spare)
    assert got["exists"] is False
    assert got["unbind"] is False and got["is_bound"] is False and got["bound_ips"] == set()
    assert got["bind_missing"] == "cannot bind 198.51.100.14/32 on hxnnosuchif: no such interface"
    assert "hxnnosuchif" in got["mac_missing"] and "no such interface" in got["mac_missing"]
    msg = got["bind_v6_disabled"]
    assert spare in msg and "2001:db8::14/128" in msg and "disabled" in msg.lower(), msg


# -- announcements -------------------------------------------------------------------------


def failover(net: Segment, vip: str) -> tuple[str, str]:
    """a holds ``vip`` and the client resolves it for real (REACHABLE, a's MAC); then a
    releases it and b binds it. Returns (old MAC, new MAC)."""
    a, b, c = net.ns("a"), net.ns("b"), net.ns("c")
    dev_c, ip_ = net.ifname("c"), ip_interface(vip).ip
    old, new = net.mac("a"), net.mac("b")
    assert run_in_ns(a, do_bind, net.ifname("a"), vip) == [True]
    run_in_ns(c, do_poke, vip)
    wait_for(
        lambda: neigh(c, dev_c, ip_) == (old, "REACHABLE"),
        3.0,
        what=f"the client to resolve {ip_} to {old}",
        detail=lambda: f"its entry: {neigh(c, dev_c, ip_)}",
    )
    assert run_in_ns(a, do_unbind, net.ifname("a"), vip) == [True]
    assert run_in_ns(b, do_bind, net.ifname("b"), vip) == [True]
    # Nothing but our announcement will tell the client.
    time.sleep(0.05)
    assert neigh(c, dev_c, ip_)[0] == old
    return old, new


@pytest.fixture
def cleanup_vip(net: Segment) -> Iterator[list[str]]:
    vips: list[str] = []
    yield vips
    for v in vips:
        for m in ("a", "b"):
            ip("addr", "del", v, "dev", net.ifname(m), ns=net.ns(m), check=False)
        ip("neigh", "del", v.split("/")[0], "dev", net.ifname("c"), ns=net.ns("c"), check=False)


def test_gratuitous_arp_request_moves_client_neighbour_within_locktime(
    net: Segment, cleanup_vip: list[str]
) -> None:
    """Locktime: we neither wait past it nor set it to 0. The client's locktime is raised to
    10 s and its entry was refreshed by a's ARP reply a few ms earlier, so the entry is
    locked for anything but a *gratuitous* ARP (sender IP = target IP), which Linux lets
    override regardless. That is the stronger claim and needs no sleep: a broadcast-target
    ARP reply, the form MetalLB used, would be ignored here and fail this test."""
    vip = "198.51.100.30/32"
    cleanup_vip.append(vip)
    c, dev_c = net.ns("c"), net.ifname("c")
    sysctl(c, f"net.ipv4.neigh.{dev_c}.locktime", CLIENT_LOCKTIME)
    _, new = failover(net, vip)
    run_in_ns(net.ns("b"), do_announce, net.ifname("b"), vip)
    ip_ = ip_interface(vip).ip
    wait_for(
        lambda: neigh(c, dev_c, ip_)[0] == new,
        2.0,
        what=f"the client's entry for {vip} to move to {new}",
        detail=lambda: f"it has {neigh(c, dev_c, ip_)}",
    )


def test_unsolicited_na_moves_client_neighbour(net: Segment, cleanup_vip: list[str]) -> None:
    vip = "2001:db8::30/128"
    cleanup_vip.append(vip)
    c, dev_c = net.ns("c"), net.ifname("c")
    _, new = failover(net, vip)
    run_in_ns(net.ns("b"), do_announce, net.ifname("b"), vip)
    ip_ = ip_interface(vip).ip
    wait_for(
        lambda: neigh(c, dev_c, ip_)[0] == new,
        2.0,
        what=f"the client's entry for {vip} to move to {new}",
        detail=lambda: f"it has {neigh(c, dev_c, ip_)}",
    )


def _icmpv6_checksum_ok(src: bytes, dst: bytes, icmp: bytes) -> bool:
    data = src + dst + struct.pack("!I3xB", len(icmp), 58) + icmp
    if len(data) % 2:
        data += b"\0"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total == 0xFFFF


def test_announcement_packet_shapes(net: Segment, cleanup_vip: list[str]) -> None:
    b, dev_b, mac = net.ns("b"), net.ifname("b"), net.mac("b")
    vip4, vip6, unbound6 = "198.51.100.31/32", "2001:db8::31/128", "2001:db8::32/128"
    cleanup_vip.extend([vip4, vip6])
    assert run_in_ns(b, do_bind, dev_b, vip4, vip6) == [True, True]

    ready = multiprocessing.get_context("fork").Event()
    sniffer = start_in_ns(net.ns("c"), do_capture, ready, net.ifname("c"), mac, 4, 5.0)
    assert ready.wait(5), "sniffer did not start"
    run_in_ns(b, do_announce, dev_b, vip4, None, True)  # request + reply
    run_in_ns(b, do_announce, dev_b, vip6)  # VIP bound: source is the VIP
    run_in_ns(b, do_announce, dev_b, unbound6)  # not bound here: source is the link-local
    frames = sniffer.result(10)
    assert len(frames) == 4, [f.hex() for f in frames]
    mac_b = bytes.fromhex(mac.replace(":", ""))
    vip4_b = socket.inet_aton("198.51.100.31")

    arps = [f for f in frames if f[12:14] == b"\x08\x06"]
    assert len(arps) == 2
    for f, op, tha in ((arps[0], 1, b"\0" * 6), (arps[1], 2, mac_b)):
        assert f[0:6] == b"\xff" * 6 and f[6:12] == mac_b
        htype, ptype, hlen, plen, got_op = struct.unpack("!HHBBH", f[14:22])
        assert (htype, ptype, hlen, plen) == (1, 0x0800, 6, 4)
        assert got_op == op
        sha, spa, got_tha, tpa = f[22:28], f[28:32], f[32:38], f[38:42]
        assert sha == mac_b and spa == vip4_b and tpa == vip4_b
        # Request: RFC 5227 zero target MAC. Reply: target MAC = sender MAC, which is
        # what makes Linux treat a reply as gratuitous.
        assert got_tha == tha

    nas = [f for f in frames if f[12:14] == b"\x86\xdd"]
    assert len(nas) == 2
    for f, target, source in (
        (nas[0], "2001:db8::31", "2001:db8::31"),
        (nas[1], "2001:db8::32", "fe80::b"),
    ):
        assert f[0:6] == bytes.fromhex("333300000001") and f[6:12] == mac_b
        plen, nh, hlim = struct.unpack("!HBB", f[18:22])
        src, dst = f[22:38], f[38:54]
        assert (nh, hlim) == (58, 255)
        assert IPv6Address(src) == IPv6Address(source)
        assert IPv6Address(dst) == IPv6Address("ff02::1")
        icmp = f[54 : 54 + plen]
        assert (icmp[0], icmp[1]) == (136, 0)
        assert _icmpv6_checksum_ok(src, dst, icmp)
        flags = struct.unpack("!I", icmp[4:8])[0]
        assert flags >> 29 == 0b001, f"R,S,O = {flags >> 29:03b}"  # R=0 S=0 O=1
        assert IPv6Address(icmp[8:24]) == IPv6Address(target)
        assert icmp[24:32] == bytes([2, 1]) + mac_b  # Target Link-Layer Address option
        assert plen == 32


def test_announcer_keeps_one_socket_per_interface(net: Segment, cleanup_vip: list[str]) -> None:
    b, dev_b = net.ns("b"), net.ifname("b")
    vip4, vip6 = "198.51.100.33/32", "2001:db8::33/128"
    cleanup_vip.extend([vip4, vip6])
    assert run_in_ns(b, do_bind, dev_b, vip4, vip6) == [True, True]
    got = run_in_ns(b, do_announce_many, dev_b, vip4, vip6, 50)
    assert got["first"]["opened"] == 1
    assert got["first"]["interfaces"] == {dev_b}
    assert got["second"] == {"opened": 2, "interfaces": {dev_b, "lo"}}
    assert got["closed"] == frozenset()


def test_announcer_survives_interface_recreation_and_names_failures(
    net: Segment, spare: str
) -> None:
    got = run_in_ns(net.ns("a"), do_announce_across_recreate, spare, net.prefix + "x1")
    assert got["before"] == 1 and got["after"] == 2, got
    assert "hxnnosuchif" in got["errors"][0]
    assert spare in got["errors"][1] and "down" in got["errors"][1].lower(), got["errors"]


def test_announcing_never_imports_scapy_and_is_quiet(net: Segment, cleanup_vip: list[str]) -> None:
    """A fresh interpreter, as the agent runs: announcing imports no scapy (the frames are
    haagent.net.frames') and prints nothing."""
    b, dev_b = net.ns("b"), net.ifname("b")
    vip6 = "2001:db8::34/128"
    cleanup_vip.append(vip6)
    assert run_in_ns(b, do_bind, dev_b, vip6) == [True]
    code = (
        "import sys\n"
        "from ipaddress import ip_address\n"
        "from haagent.net.announce import Announcer\n"
        "assert not any(m.startswith('scapy') for m in sys.modules), 'scapy imported'\n"
        f"a = Announcer()\n"
        f"a.announce({dev_b!r}, ip_address('198.51.100.34'), '02:00:00:00:00:34')\n"
        f"a.announce({dev_b!r}, ip_address('2001:db8::34'), '02:00:00:00:00:34')\n"
        "assert not any(m.startswith('scapy') for m in sys.modules), 'scapy imported'\n"
        "a.close()\n"
    )
    r = subprocess.run(
        ["ip", "netns", "exec", b, sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=REPO,
        check=False,
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout == "" and r.stderr == "", (r.stdout, r.stderr)

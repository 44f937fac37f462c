"""Layer 2 with real agents: what a client's neighbour cache and the switch see across a failover.

The building blocks are tested in test_layer2.py; here the agents drive them.
"""

from __future__ import annotations

import json
import signal
import socket
import time
from ipaddress import IPv4Address, IPv6Address

import pytest

from haagent.lab.probe import read_records, summarize
from haagent.lab.topology import Lab, Node
from haagent.lab.wait import wait_until
from haagent.net.vmac import vmac_ifname, vrrp_mac
from tests.lab.conftest import Agents, etcd_holder, start_probe

pytestmark = pytest.mark.lab

VRID = 42


def neighbour_mac(lab: Lab, ip: IPv4Address | IPv6Address) -> str | None:
    out = lab.run(lab.client, ["ip", "-j", "neigh", "show", str(ip), "dev", "eth0"]).stdout
    entries = [e for e in json.loads(out or "[]") if e.get("lladdr")]
    return str(entries[0]["lladdr"]) if entries else None


def host_mac(lab: Lab, host: Node) -> str:
    out = lab.run(host, ["ip", "-j", "link", "show", "eth0"]).stdout
    return str(json.loads(out)[0]["address"])


def fdb_port(lab: Lab, mac: str) -> str | None:
    """The switch port (named after the host) the bridge forwards ``mac`` to."""
    out = lab.run(lab.switch_ns, ["bridge", "-j", "fdb", "show", "br", "br0"]).stdout
    ports = [e["ifname"] for e in json.loads(out or "[]") if e.get("mac") == mac]
    return str(ports[0]) if ports else None


def vmac_up_on(lab: Lab, family: int) -> list[str]:
    name = vmac_ifname(VRID, socket.AF_INET if family == 4 else socket.AF_INET6)
    return [
        h.role
        for h in lab.hosts
        if lab.run(h, ["ip", "link", "show", name], check=False).returncode == 0
    ]


def hand_over(agents: Agents, ip: IPv4Address | IPv6Address, tag: str) -> tuple[str, str]:
    """SIGTERM the holder while the client probes; returns (old, new) as the client saw them."""
    lab = agents.lab
    old = agents.wait_single_holder(ip)
    out, proc = start_probe(lab, ip, 3.0, tag)
    agents.signal(lab.host(old), signal.SIGTERM)
    proc.wait(timeout=30)
    s = summarize(read_records(out))
    assert len(s.responders) == 2 and s.responders[0] == old, (s.responders, agents.dump())
    assert [(a, b) for _, a, b in s.transitions] == [(old, s.responders[1])]
    return old, s.responders[1]


@pytest.mark.parametrize("family", [4, 6])
def test_vmac_failover_keeps_the_clients_neighbour_entry_and_moves_the_switch(
    lab: Lab, agents: Agents, family: int
) -> None:
    ip = lab.vip4(0) if family == 4 else lab.vip6(0)
    af = socket.AF_INET if family == 4 else socket.AF_INET6
    vmac = vrrp_mac(VRID, af)
    agents.vips = [("web", str(ip))]
    agents.extra = {
        "vips": [
            {"name": "web", "address": str(ip), "interface": "eth0", "vmac": True, "vrid": VRID}
        ]
    }
    agents.start_all()
    holder = agents.wait_single_holder(ip)
    assert vmac_up_on(lab, family) == [holder]  # standbys never have the virtual MAC
    assert lab.probe_once(str(ip))["by"] == holder
    assert neighbour_mac(lab, ip) == vmac
    assert fdb_port(lab, vmac) == holder
    _, new = hand_over(agents, ip, f"vmac{family}")
    # The client never needed a new resolution: same MAC, and the switch moved it.
    assert neighbour_mac(lab, ip) == vmac
    assert fdb_port(lab, vmac) == new
    assert vmac_up_on(lab, family) == [new]
    assert lab.probe_once(str(ip))["by"] == new


@pytest.mark.parametrize("family", [4, 6])
def test_node_mac_failover_updates_the_clients_neighbour_entry(
    lab: Lab, agents: Agents, family: int
) -> None:
    ip = lab.vip4(0) if family == 4 else lab.vip6(0)
    agents.vips = [("web", str(ip))]
    agents.start_all()
    holder = agents.wait_single_holder(ip)
    assert lab.probe_once(str(ip))["by"] == holder
    assert neighbour_mac(lab, ip) == host_mac(lab, lab.host(holder))
    _, new = hand_over(agents, ip, f"node{family}")
    # Updated by the gratuitous ARP / unsolicited NA, not by a lookup after a timeout: the
    # client was answered within the handover (hand_over checks one clean switch).
    assert neighbour_mac(lab, ip) == host_mac(lab, lab.host(new))


def dnat(lab: Lab, host: Node, vip: IPv4Address, add: bool) -> None:
    table = "haagent_test_dnat"
    if not add:
        lab.run(host, ["nft", "delete", "table", "ip", table], check=False)
        return
    rules = f"""table ip {table} {{
    chain pre {{
        type nat hook prerouting priority -100
        ip daddr {vip} udp dport 7000 dnat to {host.ipv4}:7000
        ip daddr {vip} tcp dport 7000 dnat to {host.ipv4}:7000
    }}
}}
"""
    lab.run(host, ["nft", "-f", "-"], input=rules)


def test_announce_only_vip_is_answered_for_and_reaches_a_dnat_service(
    lab: Lab, agents: Agents
) -> None:
    ip = lab.vip4(0)
    for h in lab.hosts:
        dnat(lab, h, ip, True)
    try:
        agents.vips = [("web", str(ip))]
        agents.extra = {
            "vips": [{"name": "web", "address": str(ip), "interface": "eth0", "bind": False}]
        }
        agents.start_all()
        old = wait_until(
            lambda: etcd_holder(lab, agents.cluster, "web"),
            10,
            what="a holder key for the announce-only vip",
            detail=agents.dump,
        )
        assert agents.holders(ip) == []  # announce-only: bound nowhere
        assert lab.probe_once(str(ip))["by"] == old
        assert lab.probe_once(str(ip), tcp=True)["by"] == old
        assert neighbour_mac(lab, ip) == host_mac(lab, lab.host(old))
        agents.signal(lab.host(old), signal.SIGTERM)
        assert agents.wait_exit(lab.host(old), 2) == 0
        new = wait_until(
            lambda: (by := lab.probe_once(str(ip), timeout=0.2)["by"]) not in (None, old) and by,
            10,
            what=f"a host other than {old} to answer for {ip}",
            detail=agents.dump,
        )
        assert etcd_holder(lab, agents.cluster, "web") == new
        assert neighbour_mac(lab, ip) == host_mac(lab, lab.host(str(new)))
    finally:
        for h in lab.hosts:
            dnat(lab, h, ip, False)


@pytest.mark.parametrize("family", [4, 6])
def test_periodic_refresh_heals_a_stale_client_cache(lab: Lab, agents: Agents, family: int) -> None:
    """A client whose entry went wrong while the holder stayed put (a healed partition, a lost
    announcement) is corrected by the next periodic re-announcement, with no traffic of its own."""
    ip = lab.vip4(0) if family == 4 else lab.vip6(0)
    agents.vips = [("web", str(ip))]
    agents.extra = {
        "vips": [
            {"name": "web", "address": str(ip), "interface": "eth0", "announce": {"refresh": 1}}
        ]
    }
    agents.start_all()
    holder = agents.wait_single_holder(ip)
    right = host_mac(lab, lab.host(holder))
    # Past the acquire burst (3 x 0.1 s, a fixed schedule with nothing to observe at its end):
    # only the refresh can heal it now.
    time.sleep(0.5)
    wrong = "02:00:00:00:00:99"
    lab.run(
        lab.client,
        ["ip", "neigh", "replace", str(ip), "lladdr", wrong, "dev", "eth0", "nud", "stale"],
    )
    assert neighbour_mac(lab, ip) == wrong
    wait_until(
        lambda: neighbour_mac(lab, ip) == right,
        3.0,
        what=f"the client's entry for {ip} to be corrected to {right}",
        detail=agents.dump,
    )

"""The lab itself, for real: namespaces, a bridge, etcd, the responder and the probe.

Needs root, iproute2, nftables and etcd-server. Every lab made here is torn down in a
finally/fixture, and the last tests prove that tear-down and leftover cleanup leave nothing.
"""

from __future__ import annotations

import argparse
import gc
import json
import re
import subprocess
import time
from collections.abc import Iterator
from ipaddress import IPv4Address, IPv6Address
from pathlib import Path

import pytest

from haagent.lab import cli as lab_cli
from haagent.lab.etcd import EtcdCluster, EtcdError
from haagent.lab.probe import read_records, summarize
from haagent.lab.topology import (
    STATE_ROOT,
    Lab,
    LabError,
    cleanup_leftovers,
    find_leftovers,
    list_netns,
    pid_alive,
)
from haagent.lab.wait import wait_until
from tests.lab.conftest import require

PORT = 7000
MEASURED: dict[str, float] = {}
NEEDS = ("ip", "etcd", "etcdctl", "nft")


def ns_list() -> set[str]:
    """What `ip netns list` shows (names only)."""
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True)
    return {line.split()[0] for line in out.stdout.splitlines() if line.strip()}


# --------------------------------------------------------------------------- pure (no root)


def test_names_and_addresses_follow_the_plan() -> None:
    lab = Lab(3, lab_id="hx0abcd")  # nothing is built until up()
    assert lab.switch_ns == "hx0abcd-sw"
    assert [n.netns for n in lab.hosts] == ["hx0abcd-h1", "hx0abcd-h2", "hx0abcd-h3"]
    assert lab.client.netns == "hx0abcd-cl" and lab.etcd_nodes[0].netns == "hx0abcd-etcd"
    assert lab.host("h2").ipv4 == IPv4Address("198.51.100.12")
    assert lab.host("h2").ipv6 == IPv6Address("2001:db8:100::12")
    assert lab.client.ipv4 == IPv4Address("198.51.100.100")
    assert lab.client.ipv6 == IPv6Address("2001:db8:100::100")
    assert lab.etcd_endpoints == ["http://198.51.100.2:2379"]
    assert Lab.vip4(0) == IPv4Address("198.51.100.200")
    assert Lab.vip4(49) == IPv4Address("198.51.100.249")
    assert Lab.vip6(0) == IPv6Address("2001:db8:100::200")
    assert Lab.vip6(49) == IPv6Address("2001:db8:100::249")
    with pytest.raises(ValueError):
        Lab.vip4(50)
    three = Lab(1, etcd_members=3, lab_id="hx0abce")
    assert [n.role for n in three.etcd_nodes] == ["etcd1", "etcd2", "etcd3"]
    assert [str(n.ipv4) for n in three.etcd_nodes] == [
        "198.51.100.2",
        "198.51.100.3",
        "198.51.100.4",
    ]
    assert re.fullmatch(r"hx[0-9a-f]{5}", Lab(1).lab_id)
    for bad in ("hx12", "HX12345", "hx1234g", "lab12345"):
        with pytest.raises(ValueError):
            Lab(1, lab_id=bad)
    with pytest.raises(ValueError):
        Lab(1, etcd_members=2)


def test_agent_config_has_the_agreed_shape(tmp_path: Path) -> None:
    import yaml

    lab = Lab(2, lab_id="hx0abcd", workdir=tmp_path)
    path = lab.write_agent_config(
        lab.hosts[0], [("web4", str(Lab.vip4(0)))], ttl=5, extra={"log_level": "debug"}
    )
    assert path == tmp_path / "h1.yaml"
    assert yaml.safe_load(path.read_text()) == {
        "cluster": "hx0abcd",
        "node": "h1",
        "etcd": {"endpoints": ["http://198.51.100.2:2379"], "timeout": 0.5},
        "lease": {"ttl": 5, "margin": 1.0},
        "announce": {"count": 3, "interval": 0.1},
        "vips": [{"name": "web4", "address": "198.51.100.200", "interface": "eth0"}],
        "log_level": "debug",
    }


# --------------------------------------------------------------------------- real labs

lab_only = pytest.mark.lab


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    require(*NEEDS)
    the_lab = Lab(hosts=2)
    try:
        started = time.monotonic()
        the_lab.up()
        MEASURED["up"] = time.monotonic() - started
        the_lab.start_responder(the_lab.host("h1"), PORT)
        yield the_lab
    finally:
        the_lab.down()


@lab_only
def test_topology_is_built_as_documented(lab: Lab) -> None:
    assert set(lab.namespaces) <= ns_list()
    sw = lab.switch_ns
    bridge = json.loads(lab.run(sw, ["ip", "-d", "-j", "link", "show", "br0"]).stdout)[0]
    info = bridge["linkinfo"]["info_data"]
    assert info["stp_state"] == 0 and info["mcast_snooping"] == 0
    ports = json.loads(lab.run(sw, ["ip", "-j", "link", "show", "master", "br0"]).stdout)
    assert sorted(p["ifname"] for p in ports) == sorted(n.role for n in lab.nodes)
    for n in lab.nodes:
        assert lab.bound(n) == {n.ipv4, n.ipv6}
        lo = json.loads(lab.run(n, ["ip", "-j", "link", "show", "lo"]).stdout)[0]
        assert "UP" in lo["flags"]
    # Nothing of the lab in the root namespace.
    root = subprocess.run(["ip", "-j", "link"], capture_output=True, text=True, check=True)
    assert lab.lab_id not in root.stdout
    state = json.loads((STATE_ROOT / lab.lab_id / "state.json").read_text())
    assert state["lab_id"] == lab.lab_id and state["status"] == "up"
    assert {n["netns"] for n in state["nodes"]} == {n.netns for n in lab.nodes}
    assert any(p["argv"][0] == "/usr/bin/etcd" for p in state["processes"])
    assert MEASURED["up"] < 15


@lab_only
def test_etcd_answers_from_the_client(lab: Lab) -> None:
    lab.etcd.etcdctl("put", f"/lab-test/{lab.lab_id}", "hello")
    got = lab.etcd.etcdctl("get", "--print-value-only", f"/lab-test/{lab.lab_id}")
    assert got.stdout.strip() == "hello"
    # over IPv6 too
    got6 = lab.etcd.etcdctl(
        "get", "--print-value-only", f"/lab-test/{lab.lab_id}", endpoints=lab.etcd_endpoints6
    )
    assert got6.stdout.strip() == "hello"


@lab_only
def test_everyone_reaches_everyone_over_v4_and_v6(lab: Lab) -> None:
    h1, h2, cl = lab.host("h1"), lab.host("h2"), lab.client
    for src, dst in [(h1, h2), (h2, h1), (cl, h1), (h1, cl), (cl, h2)]:
        for addr in (dst.ipv4, dst.ipv6):
            assert lab.ping(src, addr) is not None, f"{src.role} -> {dst.role} {addr}"


@lab_only
@pytest.mark.parametrize("family", [4, 6])
def test_responder_answers_on_own_and_extra_address(lab: Lab, family: int) -> None:
    h1 = lab.host("h1")
    own = h1.ipv4 if family == 4 else h1.ipv6
    extra = Lab.vip4(49) if family == 4 else Lab.vip6(49)
    lab.add_address(h1, extra)
    try:
        assert extra in lab.bound(h1)
        for target in (own, extra):
            for tcp in (False, True):
                # connected UDP socket: only a reply from `target` itself is accepted
                got = lab.probe_once(target, PORT, tcp=tcp)
                assert got == {"by": "h1", "source": str(target)}, (target, tcp)
        # Where does the UDP reply really come from? Not from h1's primary address.
        raw = lab.probe_once(extra, PORT, unconnected=True)
        assert raw == {"by": "h1", "source": str(extra)}
    finally:
        lab.del_address(h1, extra)
    assert extra not in lab.bound(h1)


@lab_only
def test_cut_link_isolates_and_restore_link_reconnects(lab: Lab) -> None:
    h1 = lab.host("h1")
    lab.cut_link(h1)
    try:
        assert lab.probe_once(h1.ipv4, PORT, timeout=0.3)["by"] is None
        assert lab.ping(lab.host("h2"), h1.ipv6, timeout=0.3) is None
        assert not lab.etcd.healthy_from(h1)
    finally:
        lab.restore_link(h1)
    wait_until(lambda: lab.probe_once(h1.ipv4, PORT)["by"] == "h1", 5, what="h1 to answer again")
    wait_until(lambda: lab.etcd.healthy_from(h1), 5, what="h1 to reach etcd again")


@lab_only
def test_block_etcd_cuts_etcd_but_not_clients(lab: Lab) -> None:
    h1, h2 = lab.host("h1"), lab.host("h2")
    lab.block_etcd(h1)
    lab.block_etcd(h1)  # idempotent
    try:
        assert not lab.etcd.healthy_from(h1)
        assert lab.ping(h1, lab.etcd_nodes[0].ipv6, timeout=0.3) is None
        assert lab.etcd.healthy_from(h2)
        assert lab.probe_once(h1.ipv4, PORT)["by"] == "h1"
        assert lab.probe_once(h1.ipv6, PORT, tcp=True)["by"] == "h1"
    finally:
        lab.unblock_etcd(h1)
    lab.unblock_etcd(h1)  # idempotent
    wait_until(lambda: lab.etcd.healthy_from(h1), 5, what="h1 to reach etcd again")


@lab_only
def test_probe_run_records_every_probe(lab: Lab) -> None:
    out = lab.workdir / "probe-test.jsonl"
    proc = lab.start_probe(lab.host("h1").ipv4, out, port=PORT, interval=0.01, duration=1.0)
    assert proc.wait(timeout=10) == 0
    records = read_records(out)
    assert 50 <= len(records) <= 101
    assert [r.seq for r in records] == list(range(len(records)))
    s = summarize(records)
    assert s.answered == s.sent and s.responders == ["h1"] and s.transitions == []
    assert s.longest_gap_ms is not None and s.longest_gap_ms < 200


@lab_only
def test_status_reports_what_is_really_there(lab: Lab, capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser()
    lab_cli.add_lab_parser(parser.add_subparsers())
    args = parser.parse_args(["lab", "status", "--id", lab.lab_id, "--json"])
    assert args.func(args) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["lab_id"] == lab.lab_id and info["status"] == "up"
    rows = {r["netns"]: r for r in info["namespaces"]}
    assert all(r["exists"] for r in rows.values())
    comms = {p["comm"] for p in rows[lab.etcd_nodes[0].netns]["processes"]}
    assert "etcd" in comms
    assert str(lab.host("h1").ipv4) in rows[lab.host("h1").netns]["bound"]
    args = parser.parse_args(["lab", "status", "--id", lab.lab_id])
    assert args.func(args) == 0
    assert lab.host("h2").netns in capsys.readouterr().out


# --------------------------------------------------------------------------- lifecycles


@lab_only
def test_three_member_etcd_survives_losing_one() -> None:
    require(*NEEDS)
    lab = Lab(hosts=1, etcd_members=3)
    try:
        lab.up()
        lab.etcd.etcdctl("put", "k", "v1")
        lab.etcd.kill("etcd2")
        assert not lab.etcd.healthy("etcd2")

        # If etcd2 was the leader, the others elect a new one first (election timeout 1 s, more
        # on a loaded machine): the cluster must accept the write within a bounded time.
        def put() -> bool:
            r = lab.etcd.etcdctl("put", "k", "v2", endpoints=lab.etcd_endpoints[:1], check=False)
            return r.returncode == 0

        wait_until(put, 15, 0.2, what="two of three etcd members to accept a write")
        lab.etcd.start("etcd2")
        lab.etcd.wait_healthy(["etcd2"], timeout=15)
        got = lab.etcd.etcdctl("get", "--print-value-only", "k", endpoints=lab.etcd_endpoints[1:2])
        assert got.stdout.strip() == "v2"
    finally:
        lab.down()
    assert not set(lab.namespaces) & ns_list()


@lab_only
def test_failed_up_removes_what_it_built(monkeypatch: pytest.MonkeyPatch) -> None:
    require(*NEEDS)

    def broken(self: EtcdCluster, *args: object, **kwargs: object) -> float:
        raise EtcdError("etcd did not come up (simulated)")

    monkeypatch.setattr(EtcdCluster, "wait_healthy", broken)
    lab = Lab(hosts=1)
    with pytest.raises(EtcdError, match="simulated"):
        lab.up()
    assert not set(lab.namespaces) & ns_list()
    assert not (STATE_ROOT / lab.lab_id).exists()
    etcd = lab.etcd.process("etcd")
    assert etcd is not None and etcd.poll() is not None


@lab_only
def test_up_refuses_an_existing_lab_and_touches_nothing() -> None:
    require(*NEEDS)
    lab = Lab(hosts=1)
    squatter = lab.hosts[0].netns
    subprocess.run(["ip", "netns", "add", squatter], check=True)
    try:
        with pytest.raises(LabError, match="already exists"):
            lab.up()
        assert squatter in ns_list()
    finally:
        subprocess.run(["ip", "netns", "del", squatter], check=False)


@lab_only
def test_down_leaves_nothing_behind() -> None:
    require(*NEEDS)
    lab = Lab(hosts=1)
    try:
        lab.up()
        responder = lab.start_responder(lab.hosts[0], PORT)
        sleeper = lab.popen(lab.client, ["sleep", "300"])
        etcd = lab.etcd.process("etcd")
        assert etcd is not None
        pids = [responder.pid, sleeper.pid, etcd.pid]
        started = time.monotonic()
    finally:
        lab.down()
    took = time.monotonic() - started
    assert not set(lab.namespaces) & ns_list()
    assert not set(lab.namespaces) & set(list_netns())
    assert not any(pid_alive(p) for p in pids)
    assert not (STATE_ROOT / lab.lab_id).exists()
    assert took < 5, took
    lab.down()  # idempotent


@lab_only
def test_cleanup_leftovers_removes_an_abandoned_lab() -> None:
    require(*NEEDS)
    lab = Lab(hosts=1)
    lab_id, namespaces = lab.lab_id, set(lab.namespaces)
    try:
        lab.up()
        lab.start_responder(lab.hosts[0], PORT)
        etcd = lab.etcd.process("etcd")
        assert etcd is not None
        pids = [p["pid"] for p in lab.processes()]
        del lab, etcd  # the owner "dies" without down()
        gc.collect()
        # Aim at this lab only: other labs on the machine may belong to running tests.
        assert set(find_leftovers(lab_id)) == namespaces
        removed = cleanup_leftovers(lab_id)
        assert namespaces <= set(removed)
        assert str(STATE_ROOT / lab_id) in removed
        assert not namespaces & ns_list()
        wait_until(
            lambda: not any(pid_alive(p) for p in pids), 3, what="every process of the lab to end"
        )
        assert find_leftovers(lab_id) == []
        assert cleanup_leftovers(lab_id) == []
    finally:
        cleanup_leftovers(lab_id)

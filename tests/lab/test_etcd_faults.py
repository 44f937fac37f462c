"""etcd failures with a three-member etcd cluster: what the agents do, and that they stay safe."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest

from haagent.lab.probe import read_records, summarize
from haagent.lab.topology import Lab, Node
from tests.lab.conftest import Agents, require, start_probe, wait_until

pytestmark = pytest.mark.lab

ELECTION_TIMEOUT = 1.0  # the lab's etcd runs with --election-timeout 1000


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    require("ip", "etcd", "etcdctl", "nft")
    with Lab(hosts=3, etcd_members=3) as lab:
        for h in lab.hosts:
            lab.start_responder(h)
        yield lab


@pytest.fixture(autouse=True)
def all_members_up(lab: Lab) -> Iterator[None]:
    """Whatever a test kills, the next one starts with the whole etcd cluster healthy."""
    yield
    for m in lab.etcd_nodes:
        if not lab.etcd.healthy(m):
            lab.etcd.stop(m)
            lab.etcd.start(m)
    lab.etcd.wait_healthy()


def leader(lab: Lab) -> Node:
    out = lab.etcd.etcdctl("endpoint", "status", "-w", "json").stdout
    statuses = json.loads(out)
    leader_id = statuses[0]["Status"]["leader"]
    for st in statuses:
        if st["Status"]["header"]["member_id"] == leader_id:
            host = st["Endpoint"].split("//")[1].rsplit(":", 1)[0]
            return next(m for m in lab.etcd_nodes if str(m.ipv4) == host)
    raise AssertionError(f"no leader in {statuses}")


def test_agent_started_while_etcd_unreachable_binds_nothing_then_campaigns(
    lab: Lab, agents: Agents
) -> None:
    host = lab.hosts[0]
    agents.start_cut_off_from_etcd(host)
    time.sleep(1.0)  # a while, to see that nothing gets bound
    assert agents.holders(lab.vip4(0)) == []
    lab.unblock_etcd(host)
    assert agents.wait_single_holder(lab.vip4(0), timeout=15) == host.role
    assert "acquired vip web4" in agents.log(host)


def test_losing_the_etcd_leader_costs_at_most_ttl_plus_election(lab: Lab, agents: Agents) -> None:
    agents.start_all()
    ip = lab.vip4(0)
    agents.wait_single_holder(ip)
    budget = agents.ttl + ELECTION_TIMEOUT
    out, proc = start_probe(lab, ip, budget + 6, "leader")
    time.sleep(0.5)
    lab.etcd.kill(leader(lab))
    proc.wait(timeout=60)
    s = summarize(read_records(out))
    assert s.answered > 0 and s.last_answered is not None
    gap = s.longest_gap_ms or 0.0
    assert gap <= budget * 1000, f"VIP unreachable for {gap:.0f} ms > {budget} s\n{agents.dump()}"
    assert len(agents.holders(ip)) == 1
    # The client never saw two hosts interleave.
    assert len(s.transitions) <= 1, s.transitions


def test_whole_etcd_cluster_down_drops_vips_at_the_deadline_and_recovers(
    lab: Lab, agents: Agents
) -> None:
    agents.start_all()
    ip = lab.vip4(0)
    old = agents.wait_single_holder(ip)
    for m in lab.etcd_nodes:
        lab.etcd.kill(m)
    # A host cannot tell "etcd is down for everyone" from "I am cut off": it drops at its deadline.
    assert wait_until(lambda: agents.holders(ip) == [], agents.ttl + 1), agents.dump()
    # The fence acts at the same deadline and may remove the address first; the agent's own
    # line follows within milliseconds.
    dropped = wait_until(lambda: "lease deadline passed" in agents.log(lab.host(old)), 2)
    assert dropped, agents.log(lab.host(old))
    for m in lab.etcd_nodes:
        lab.etcd.start(m)
    lab.etcd.wait_healthy()
    agents.wait_single_holder(ip, timeout=20)


def test_when_etcd_unreachable_keep_holds_through_a_whole_etcd_outage(
    lab: Lab, agents: Agents
) -> None:
    agents.extra = {
        "lease": {"ttl": agents.ttl, "margin": agents.margin, "when_etcd_unreachable": "keep"}
    }
    agents.start_all()
    ip = lab.vip4(0)
    holder = agents.wait_single_holder(ip)
    for m in lab.etcd_nodes:
        lab.etcd.kill(m)
    kept = wait_until(
        lambda: "keeping vip web4 past the lease deadline" in agents.log(lab.host(holder)),
        agents.ttl + 2,
    )
    assert kept, agents.dump()
    # Well past the deadline and the address lifetime: the fence and the kernel stood down too.
    for _ in range(20):
        assert agents.holders(ip) == [holder]
        time.sleep(0.15)
    for m in lab.etcd_nodes:
        lab.etcd.start(m)
    lab.etcd.wait_healthy()
    back = wait_until(lambda: "vips kept" in agents.log(lab.host(holder)), 20)
    assert back, agents.log(lab.host(holder))
    assert agents.holders(ip) == [holder]


def test_holder_cut_from_etcd_unbinds_before_new_holder_binds(lab: Lab, agents: Agents) -> None:
    agents.start_all()
    v4 = lab.vip4(0)
    old = agents.wait_single_holder(v4)
    old_host = lab.host(old)
    out, probe = start_probe(lab, v4, agents.ttl + 4.0, "partition")
    time.sleep(0.3)
    lab.block_etcd(old_host)  # clients still reach it; etcd does not
    probe.wait(timeout=30)
    s = summarize(read_records(out))
    assert len(s.responders) == 2 and s.responders[0] == old, (s.responders, agents.dump())
    new = s.responders[1]
    # The client saw one switch and never an answer from the old holder afterwards.
    assert [(a, b) for _, a, b in s.transitions] == [(old, new)], s.transitions
    new_host = lab.host(new)
    released = agents.events(old_host, r"released vip web4 .*lease deadline passed")
    acquired = agents.events(new_host, r"acquired vip web4 ")
    assert released, agents.log(old_host)
    assert acquired, agents.log(new_host)
    assert released[-1].at < acquired[-1].at, (
        f"old holder released at {released[-1].at}, new bound at {acquired[-1].at}"
    )
    assert agents.holders(v4) == [new]

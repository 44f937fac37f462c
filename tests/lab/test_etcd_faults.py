"""etcd failures with a three-member etcd cluster: what the agents do, and that they stay safe."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest

from haagent.lab.history import check_history, holding_intervals, start_address_recorder
from haagent.lab.probe import read_records, summarize
from haagent.lab.topology import Lab, Node
from haagent.lab.wait import wait_until
from tests.lab.conftest import Agents, etcd_holder, holder_record, require, start_probe

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
    host, ip = lab.hosts[0], lab.vip4(0)
    # A leftover of an earlier run: etcd not answering at start-up, the agent drops it at the
    # end of its start-up grace (lease.margin), which is the moment awaited below.
    lab.add_address(host, ip)
    with start_address_recorder(lab, [host], tag="cutoff") as recorder:
        agents.start_cut_off_from_etcd(host)
        wait_until(
            lambda: ip not in lab.bound(host),
            agents.margin + 5,
            what=f"{host.role}, cut off from etcd, to drop the leftover {ip}",
            detail=lambda: agents.log(host),
        )
        tried = lab.etcd_drops(host)
        wait_until(
            lambda: lab.etcd_drops(host) > tried,
            5,
            what=f"{host.role} to go on trying etcd after its start-up grace",
            detail=lambda: agents.log(host),
        )
        events = recorder.stop()
    bound = [e for e in events if e.ip == ip and e.added and not e.initial]
    assert bound == [], f"bound while etcd was unreachable: {bound}\n{agents.log(host)}"
    lab.unblock_etcd(host)
    assert agents.wait_single_holder(ip, timeout=15) == host.role
    assert etcd_holder(lab, agents.cluster, "web4") == host.role


def test_losing_the_etcd_leader_costs_at_most_ttl_plus_election(lab: Lab, agents: Agents) -> None:
    agents.start_all()
    ip = lab.vip4(0)
    agents.wait_single_holder(ip)
    budget = agents.ttl + ELECTION_TIMEOUT
    out, proc = start_probe(lab, ip, budget + 6, "leader")
    time.sleep(0.5)  # answers before the fault (the probe's records come only at its end)
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
    wait_until(
        lambda: agents.holders(ip) == [],
        agents.ttl + 1,
        what=f"{old} to drop {ip} at its lease deadline, etcd down",
        detail=agents.dump,
    )
    # The fence acts at the same deadline and may remove the address first; that the agent
    # itself noticed too is only in its log (nothing else is left to show it, etcd being down).
    wait_until(
        lambda: "lease deadline passed" in agents.log(lab.host(old)),
        2,
        what=f"the agent on {old} to log its lease deadline",
        detail=lambda: agents.log(lab.host(old)),
    )
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
    before = holder_record(lab, agents.cluster, "web4")
    assert before is not None and before["node"] == holder
    with start_address_recorder(lab, [lab.host(holder)], tag="keep") as recorder:
        killed = time.monotonic()
        for m in lab.etcd_nodes:
            lab.etcd.kill(m)
        # The holder's deadline comes at most ttl - margin after the kill (its last keepalive
        # was answered before it). From just after it until well past the address lifetime the
        # VIP stays bound: the agent, the fence and the kernel all stood down. Watching that
        # long is the point.
        time.sleep(max(0.0, killed + agents.ttl - agents.margin + 0.5 - time.monotonic()))
        while time.monotonic() < killed + agents.ttl + 3:
            assert agents.holders(ip) == [holder], agents.dump()
            time.sleep(0.15)
        events = recorder.stop()
    for m in lab.etcd_nodes:
        lab.etcd.start(m)
    lab.etcd.wait_healthy()
    # Kept, not won again: the same holder key on the same lease, for longer than a lease TTL
    # after etcd came back (a lease nobody kept alive would have expired by then).
    until = time.monotonic() + agents.ttl + 2
    while time.monotonic() < until:
        assert holder_record(lab, agents.cluster, "web4") == before, agents.dump()
        assert agents.holders(ip) == [holder], agents.dump()
        time.sleep(0.2)
    # Bound without a break from before the outage on, the time before the deadline included.
    held = holding_intervals(events, ip, until=time.time()).get(holder, [])
    assert len(held) == 1, f"{holder} lost {ip} for a while: {held}\n{agents.dump()}"


def test_holder_cut_from_etcd_unbinds_before_new_holder_binds(lab: Lab, agents: Agents) -> None:
    agents.start_all()
    v4 = lab.vip4(0)
    old = agents.wait_single_holder(v4)
    old_host = lab.host(old)
    with start_address_recorder(lab, lab.hosts, tag="partition") as recorder:
        out, probe = start_probe(lab, v4, agents.ttl + 4.0, "partition")
        time.sleep(0.3)  # answers before the fault (the probe's records come only at its end)
        lab.block_etcd(old_host)  # clients still reach it; etcd does not
        probe.wait(timeout=30)
        events = recorder.stop()
    records = read_records(out)
    s = summarize(records)
    assert len(s.responders) == 2 and s.responders[0] == old, (s.responders, agents.dump())
    new = s.responders[1]
    # The client saw one switch and never an answer from the old holder afterwards.
    assert [(a, b) for _, a, b in s.transitions] == [(old, new)], s.transitions
    # In the kernels: the old holder's address was gone before the new holder's came.
    report = check_history(events, records, v4, until=time.time())
    assert report.ok, (report.double_holder, report.interleavings, report.intervals)
    released = report.intervals[old][-1][1]
    acquired = report.intervals[new][-1][0]
    assert released <= acquired, f"old holder released at {released}, new bound at {acquired}"
    assert agents.holders(v4) == [new]
    assert etcd_holder(lab, agents.cluster, "web4") == new

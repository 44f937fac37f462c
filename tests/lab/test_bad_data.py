"""Foreign and malformed values in etcd: logged once, ignored or removed; never a crash,
never a VIP blocked for good. The rules are in docs/keys.md."""

from __future__ import annotations

import json
import time

import pytest

from haagent.lab.topology import Lab, Node
from haagent.lab.wait import wait_until
from tests.lab.conftest import Agents, etcd_holder, holder_record

pytestmark = pytest.mark.lab


def etcdctl(lab: Lab, *args: str) -> str:
    return lab.etcd.etcdctl(*args).stdout


def grant(lab: Lab, ttl: int) -> str:
    # "lease 694d8b3a1c2e4f05 granted with TTL(3s)"
    return etcdctl(lab, "lease", "grant", str(ttl)).split()[1]


def assert_all_running(agents: Agents) -> None:
    for role, proc in agents.procs.items():
        assert proc.poll() is None, f"agent {role} died\n{agents.dump()}"
        assert agents.member(role) is not None, f"agent {role} lost its lease\n{agents.dump()}"
        # No crash of a thread either: that only shows in the log.
        assert "Traceback" not in agents.log(agents.lab.host(role))


def test_foreign_keys_are_logged_once_and_ignored(lab: Lab, agents: Agents) -> None:
    agents.start_all()
    holder = agents.wait_single_holder(lab.vip4(0))
    prefix = f"/haagent/v1/{agents.cluster}"
    etcdctl(lab, "put", f"{prefix}/foreign/thing", "hello")
    etcdctl(lab, "put", f"{prefix}/vips/web4/notes", "not ours")
    etcdctl(lab, "put", f"{prefix}/members/h9", "garbage member")
    # "Logged once" is the behaviour under test here (docs/keys.md), so these are log matches.
    wanted = {
        f"ignoring {prefix}/foreign/thing": 1,
        f"ignoring {prefix}/vips/web4/notes": 1,
        "malformed member record": 1,
    }

    def counts(host: Node) -> dict[str, int]:
        log = agents.log(host)
        return {line: log.count(line) for line in wanted}

    for h in lab.hosts:
        wait_until(
            lambda: all(counts(h).values()),  # noqa: B023
            5,
            what=f"the agent on {h.role} to log each foreign value",
            detail=lambda: agents.log(h),  # noqa: B023
        )
    time.sleep(0.5)  # and no second time: half a second of watching is the point
    for h in lab.hosts:
        assert counts(h) == wanted, agents.log(h)
    assert agents.holders(lab.vip4(0)) == [holder]
    assert etcd_holder(lab, agents.cluster, "web4") == holder
    assert_all_running(agents)


def test_garbage_holder_key_without_lease_is_removed_and_the_vip_elected(
    lab: Lab, agents: Agents
) -> None:
    key = f"/haagent/v1/{agents.cluster}/vips/web4/holder"
    etcdctl(lab, "put", key, "{{{ not json")
    agents.start_all()
    holder = agents.wait_single_holder(lab.vip4(0))
    # The garbage is gone: the key is a holder record, on the lease of the host bound to it.
    record = holder_record(lab, agents.cluster, "web4")
    member = agents.member(holder)
    assert record is not None and member is not None
    assert record["node"] == holder and record["lease"] == member["lease"], (record, member)
    assert_all_running(agents)


def test_wrong_schema_holder_on_a_live_lease_is_removed(lab: Lab, agents: Agents) -> None:
    key = f"/haagent/v1/{agents.cluster}/vips/web4/holder"
    lease = grant(lab, 60)
    etcdctl(lab, "put", f"--lease={lease}", key, json.dumps({"schema": "other/v9", "node": "x"}))
    agents.start_all()
    holder = agents.wait_single_holder(lab.vip4(0))
    record = holder_record(lab, agents.cluster, "web4")
    assert record is not None and record["schema"] == "haagent.holder/v1", record
    assert record["node"] == holder, record
    assert_all_running(agents)


def test_holder_overwritten_by_hand_while_held_recovers_with_one_holder(
    lab: Lab, agents: Agents
) -> None:
    agents.start_all()
    agents.wait_single_holder(lab.vip4(0))
    key = f"/haagent/v1/{agents.cluster}/vips/web4/holder"
    # A valid-looking value, but put without a lease: no holder's key looks like that.
    value = json.loads(etcdctl(lab, "get", key, "--print-value-only"))
    put = json.loads(etcdctl(lab, "put", key, json.dumps(value), "-w", "json"))
    by_hand = int(put["header"]["revision"])

    def replaced() -> bool:
        """The key put by hand is gone and a holder's key, on a lease, took its place."""
        out = json.loads(etcdctl(lab, "get", key, "-w", "json"))
        kvs = out.get("kvs", [])
        return bool(kvs) and int(kvs[0]["create_revision"]) > by_hand and kvs[0].get("lease", 0)

    wait_until(replaced, 5, what="the lease-less holder key to be replaced", detail=agents.dump)
    holder = agents.wait_single_holder(lab.vip4(0))
    assert etcd_holder(lab, agents.cluster, "web4") == holder
    time.sleep(0.5)  # and it stays that way: half a second of watching is the point
    assert agents.holders(lab.vip4(0)) == [holder]
    assert_all_running(agents)


def test_holder_naming_an_unknown_node_is_respected_until_its_lease_expires(
    lab: Lab, agents: Agents
) -> None:
    key = f"/haagent/v1/{agents.cluster}/vips/web4/holder"
    ttl = 8  # long enough that starting three agents fits well inside it
    lease = grant(lab, ttl)
    t0 = time.monotonic()
    record = {
        "schema": "haagent.holder/v1",
        "node": "ghost",
        "since": time.time(),
        "epoch": 1,
        "reason": "written by a test",
        "lease": lease,
    }
    etcdctl(lab, "put", f"--lease={lease}", key, json.dumps(record))
    agents.start_all()
    while time.monotonic() - t0 < ttl - 1.0:  # watching until just before it expires
        assert agents.holders(lab.vip4(0)) == [], "campaigned over a live holder"
        assert etcd_holder(lab, agents.cluster, "web4") == "ghost"
        time.sleep(0.1)
    agents.wait_single_holder(lab.vip4(0), timeout=ttl + 5)
    assert_all_running(agents)

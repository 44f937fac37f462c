"""Foreign and malformed values in etcd: logged once, ignored or removed; never a crash,
never a VIP blocked for good. The rules are in docs/keys.md."""

from __future__ import annotations

import json
import time

import pytest

from haagent.lab.topology import Lab
from tests.lab.conftest import Agents, wait_until

pytestmark = pytest.mark.lab


def etcdctl(lab: Lab, *args: str) -> str:
    return lab.etcd.etcdctl(*args).stdout


def grant(lab: Lab, ttl: int) -> str:
    # "lease 694d8b3a1c2e4f05 granted with TTL(3s)"
    return etcdctl(lab, "lease", "grant", str(ttl)).split()[1]


def assert_all_running(agents: Agents) -> None:
    for role, proc in agents.procs.items():
        assert proc.poll() is None, f"agent {role} died\n{agents.dump()}"
        assert "Traceback" not in agents.log(agents.lab.host(role))


def test_foreign_keys_are_logged_once_and_ignored(lab: Lab, agents: Agents) -> None:
    agents.start_all()
    holder = agents.wait_single_holder(lab.vip4(0))
    prefix = f"/haagent/v1/{agents.cluster}"
    etcdctl(lab, "put", f"{prefix}/foreign/thing", "hello")
    etcdctl(lab, "put", f"{prefix}/vips/web4/notes", "not ours")
    etcdctl(lab, "put", f"{prefix}/members/h9", "garbage member")
    assert wait_until(lambda: "foreign/thing" in agents.log(lab.hosts[0]), 5)
    time.sleep(0.5)
    for h in lab.hosts:
        log = agents.log(h)
        assert log.count(f"ignoring {prefix}/foreign/thing") == 1, log
        assert log.count(f"ignoring {prefix}/vips/web4/notes") == 1, log
        assert "malformed member record" in log
    assert agents.holders(lab.vip4(0)) == [holder]
    assert_all_running(agents)


def test_garbage_holder_key_without_lease_is_removed_and_the_vip_elected(
    lab: Lab, agents: Agents
) -> None:
    key = f"/haagent/v1/{agents.cluster}/vips/web4/holder"
    etcdctl(lab, "put", key, "{{{ not json")
    agents.start_all()
    agents.wait_single_holder(lab.vip4(0))
    logs = "".join(agents.log(h) for h in lab.hosts)
    assert "deleted invalid holder key of vip web4 (unreadable value" in logs
    assert_all_running(agents)


def test_wrong_schema_holder_on_a_live_lease_is_removed(lab: Lab, agents: Agents) -> None:
    key = f"/haagent/v1/{agents.cluster}/vips/web4/holder"
    lease = grant(lab, 60)
    etcdctl(lab, "put", f"--lease={lease}", key, json.dumps({"schema": "other/v9", "node": "x"}))
    agents.start_all()
    agents.wait_single_holder(lab.vip4(0))
    assert_all_running(agents)


def test_holder_overwritten_by_hand_while_held_recovers_with_one_holder(
    lab: Lab, agents: Agents
) -> None:
    agents.start_all()
    agents.wait_single_holder(lab.vip4(0))
    key = f"/haagent/v1/{agents.cluster}/vips/web4/holder"
    # A valid-looking value, but put without a lease: no holder's key looks like that.
    value = json.loads(etcdctl(lab, "get", key, "--print-value-only"))
    etcdctl(lab, "put", key, json.dumps(value))
    assert wait_until(
        lambda: "attached to no lease" in "".join(agents.log(h) for h in lab.hosts), 5
    ), agents.dump()
    agents.wait_single_holder(lab.vip4(0))
    time.sleep(0.5)
    assert len(agents.holders(lab.vip4(0))) == 1
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
    while time.monotonic() - t0 < ttl - 1.0:
        assert agents.holders(lab.vip4(0)) == [], "campaigned over a live holder"
        time.sleep(0.1)
    agents.wait_single_holder(lab.vip4(0), timeout=ttl + 5)
    assert_all_running(agents)

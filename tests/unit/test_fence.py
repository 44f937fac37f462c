"""The fence's decisions (pure); the lab tests show it removing real addresses."""

import json
from ipaddress import ip_interface
from pathlib import Path

from haagent.config import EtcdConfig, TLSConfig
from haagent.fence.setup import etcd_from_setup, setup_message
from haagent.fence.state import Fence

V4 = ("eth0", ip_interface("198.51.100.200/32"))
V6 = ("eth0", ip_interface("2001:db8::200/128"))
MSG = {
    "deadline": 10.0,
    "addresses": [["eth0", "198.51.100.200/32"], ["eth0", "2001:db8::200/128"]],
}


def test_nothing_to_do_without_addresses():
    f = Fence()
    f.update({"deadline": 1.0, "addresses": []})
    assert f.timeout(5.0) is None
    assert f.due(5.0) == ([], "")


def test_waits_until_the_deadline_then_removes_everything_once():
    f = Fence()
    f.update(MSG)
    assert f.timeout(4.0) == 6.0
    assert f.due(9.99) == ([], "")
    addresses, reason = f.due(10.25)
    assert addresses == [V4, V6]
    assert reason == "lease deadline passed 250 ms ago and the agent did not act"
    assert f.due(11.0) == ([], "")


def test_newer_deadline_postpones():
    f = Fence()
    f.update(MSG)
    f.update({**MSG, "deadline": 20.0})
    assert f.due(15.0) == ([], "")


def test_addresses_without_a_deadline_are_due_at_once():
    f = Fence()
    f.update({"deadline": None, "addresses": MSG["addresses"]})
    assert f.timeout(0.0) is None
    assert f.due(0.0)[0] == [V4, V6]


def test_exit_message_stops_and_keeps_nothing_to_remove_by_itself():
    f = Fence()
    f.update(MSG)
    assert f.update({"exit": True}) is False


def test_take_on_agent_death_returns_everything_once():
    f = Fence()
    f.update(MSG)
    assert f.take() == [V4, V6]
    assert f.take() == []


def test_hold_keeps_addresses_past_any_deadline_until_told_otherwise():
    f = Fence()
    f.update({"deadline": None, "hold": True, "addresses": MSG["addresses"]})
    assert f.timeout(100.0) is None
    assert f.due(100.0) == ([], "")
    f.update(MSG)  # back to normal: the old deadline applies again
    assert f.due(100.0)[0] == [V4, V6]


def test_remembers_the_lease_it_revokes_after_acting():
    f = Fence()
    f.update({**MSG, "lease": 0x1234})
    assert f.lease == 0x1234
    f.update(MSG)  # the agent lost its lease: nothing to revoke
    assert f.lease is None
    f.update({**MSG, "lease": "1234"})  # not an etcd lease id
    assert f.lease is None


def test_setup_message_changes_nothing_else():
    f = Fence()
    f.update({**MSG, "lease": 7})
    message = setup_message("db", EtcdConfig())
    assert f.update(json.loads(json.dumps(message))) is True
    assert f.setup == message["setup"]
    assert (f.lease, f.deadline, f.addresses) == (7, 10.0, [V4, V6])


def test_etcd_settings_survive_the_pipe():
    etcd = EtcdConfig(
        endpoints=("https://198.51.100.2:2379", "https://[2001:db8::2]:2379"),
        tls=TLSConfig(ca=Path("/etc/haagent/ca.pem"), cert=Path("/c.pem"), key=None),
        username="haagent",
        password="s3cret",
        timeout=0.5,
        retry_interval=2.0,
    )
    setup = json.loads(json.dumps(setup_message("db", etcd)))["setup"]
    assert etcd_from_setup(setup) == ("db", etcd)
    plain = EtcdConfig()
    assert etcd_from_setup(setup_message("x", plain)["setup"]) == ("x", plain)  # type: ignore[arg-type]


def test_after_the_deadline_a_silent_agent_loses_its_lease_a_speaking_one_does_not():
    f = Fence()
    f.update({"setup": {"cluster": "db", "endpoints": [], "timeout": 0.5}})
    f.update({**MSG, "lease": 7})
    assert f.due(10.0)[0] == [V4, V6]  # removal cannot wait
    assert f.timeout(10.0) == 0.75  # revocation can: etcd.timeout + slack
    assert f.revoke_due(10.7) is None
    assert f.revoke_due(10.75) == 7
    assert f.revoke_due(11.0) is None  # once

    f.update({**MSG, "lease": 7})
    assert f.due(10.0)[0] == [V4, V6]
    f.update({"deadline": None, "lease": 7, "addresses": []})  # the agent released by itself
    assert f.revoke_due(20.0) is None
    assert f.timeout(20.0) is None

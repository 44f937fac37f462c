"""End-to-end: three real agents, a real etcd, real namespaces, a real client."""

from __future__ import annotations

import signal
import time
from ipaddress import IPv4Address, IPv6Address, ip_address

import pytest

from haagent.lab.probe import read_records, summarize
from haagent.lab.topology import Lab
from haagent.lab.wait import wait_until
from tests.lab.conftest import Agents, etcd_holder, holder_record, start_probe

pytestmark = pytest.mark.lab

PORT = 7000


def client_probe(lab: Lab, target: object, *, tcp: bool = False) -> str | None:
    """Ask the responder behind ``target`` who it is, from inside the client namespace."""
    by = lab.probe_once(str(target), PORT, tcp=tcp, timeout=0.3)["by"]
    return str(by) if by else None


def test_exactly_one_holder_and_client_reaches_it(lab: Lab, agents: Agents) -> None:
    agents.start_all()
    v4, v6 = lab.vip4(0), lab.vip6(0)
    h4 = agents.wait_single_holder(v4)
    h6 = agents.wait_single_holder(v6)
    assert etcd_holder(lab, agents.cluster, "web4") == h4
    assert etcd_holder(lab, agents.cluster, "web6") == h6
    for target, holder in ((v4, h4), (v6, h6)):
        assert client_probe(lab, target) == holder, f"UDP to {target}\n{agents.dump()}"
        assert client_probe(lab, target, tcp=True) == holder, f"TCP to {target}"
    # Still exactly one holder after things settled (no late second bind): half a second of
    # watching is the point here.
    time.sleep(0.5)
    assert agents.holders(v4) == [h4] and agents.holders(v6) == [h6]
    # The winner wrote down why it campaigned (docs/keys.md).
    record = holder_record(lab, agents.cluster, "web4")
    assert record is not None and record["reason"], record


def test_sigterm_hands_over_within_a_second(lab: Lab, agents: Agents) -> None:
    agents.ttl = 5  # a takeover within 1 s proves it came from the watch, not lease expiry
    agents.start_all()
    v4 = lab.vip4(0)
    old = agents.wait_single_holder(v4)
    out, probe = start_probe(lab, v4, 4.0, "sigterm")
    # Half a second of answers from the old holder first. (The probe writes its records when
    # it ends, so "it has heard the old holder" cannot be awaited; at 5 ms a probe the first
    # answers come within milliseconds.)
    time.sleep(0.5)
    agents.signal(lab.host(old), signal.SIGTERM)
    assert agents.wait_exit(lab.host(old), timeout=1.0) == 0, "agent did not exit within 1 s"
    # It revoked its lease on the way out: its member record is gone at once, not at expiry.
    assert agents.member(old) is None, agents.log(lab.host(old))
    probe.wait(timeout=15)
    s = summarize(read_records(out))
    assert len(s.responders) == 2 and s.responders[0] == old, (s.responders, agents.dump())
    new = s.responders[1]
    # One switch from old to new, never back, never interleaved.
    assert [(a, b) for _, a, b in s.transitions] == [(old, new)]
    assert s.longest_gap_ms is not None and s.longest_gap_ms < 1000, s.longest_gap_ms
    assert agents.holders(v4) == [new]
    assert etcd_holder(lab, agents.cluster, "web4") == new


def test_sigkill_and_link_cut_fails_over_within_ttl(lab: Lab, agents: Agents) -> None:
    agents.start_all()
    v4 = lab.vip4(0)
    old = agents.wait_single_holder(v4)
    old_host = lab.host(old)
    agents.signal(old_host, signal.SIGKILL, group=True)
    lab.cut_link(old_host)
    t0 = time.monotonic()
    new = agents.wait_other_holder(v4, old, agents.ttl + 1.0)
    took = time.monotonic() - t0
    assert client_probe(lab, v4) == new
    assert etcd_holder(lab, agents.cluster, "web4") == new
    assert took <= agents.ttl + 1.0


def test_restarted_agent_removes_stale_address_and_never_doubles(lab: Lab, agents: Agents) -> None:
    agents.start_all()
    v4 = lab.vip4(0)
    holder = agents.wait_single_holder(v4)
    other = lab.host(next(h.role for h in lab.hosts if h.role != holder))
    agents.signal(other, signal.SIGTERM)
    assert agents.wait_exit(other, 5) == 0, agents.log(other)
    # A leftover of an earlier run (an older version, a hand edit): bound, no lifetime.
    lab.add_address(other, v4)
    assert sorted(agents.holders(v4)) == sorted([holder, other.role])
    agents.start(other)
    wait_until(
        lambda: v4 not in lab.bound(other),
        10,
        what=f"the restarted agent on {other.role} to remove the stale {v4}",
        detail=lambda: agents.log(other),
    )
    for _ in range(10):  # and it does not come back: etcd says someone else holds it
        assert agents.holders(v4) == [holder]
        time.sleep(0.1)
    assert etcd_holder(lab, agents.cluster, "web4") == holder


def test_restart_within_ttl_adopts_lease_without_failover(lab: Lab, agents: Agents) -> None:
    agents.ttl = 5
    agents.start_all()
    v4 = lab.vip4(0)
    old = agents.wait_single_holder(v4)
    old_host = lab.host(old)
    before = agents.member(old)
    assert before is not None
    # Agent and fence die together (a service manager's SIGKILL of the whole service): the
    # fence cannot revoke the lease, so it is still alive when the agent comes back.
    agents.kill_with_fence(old_host)
    agents.wait_exit(old_host, 2)
    agents.start(old_host)  # returns once the new run has published its member record
    after = agents.member(old)
    assert after is not None and after["lease"] == before["lease"], (before, after)  # adopted
    # The address may have gone with its lifetime meanwhile; the adopting agent binds it again.
    assert agents.wait_single_holder(v4) == old
    # And it stays with the old host: nobody else ever won it.
    for _ in range(20):
        assert agents.holders(v4) == [old]
        time.sleep(0.1)
    assert etcd_holder(lab, agents.cluster, "web4") == old
    assert ip_address(str(v4)) in lab.bound(old_host)


def test_sigterm_while_etcd_is_unreachable_at_start_up_exits_cleanly(
    lab: Lab, agents: Agents
) -> None:
    host = lab.hosts[0]
    agents.start_cut_off_from_etcd(host)
    assert agents.holders(lab.vip4(0)) == []  # binds nothing while it cannot prove a lease
    agents.signal(host, signal.SIGTERM)
    assert agents.wait_exit(host, 1.5) == 0, agents.log(host)
    assert agents.holders(lab.vip4(0)) == []
    assert agents.member(host.role) is None  # it never got as far as a lease


def test_rolling_restart_keeps_every_vip_reachable(lab: Lab, agents: Agents) -> None:
    agents.start_all()
    vips: dict[str, IPv4Address | IPv6Address] = {"v4": lab.vip4(0), "v6": lab.vip6(0)}
    for ip in vips.values():
        agents.wait_single_holder(ip)
    probes = {tag: start_probe(lab, ip, 14.0, f"rolling-{tag}") for tag, ip in vips.items()}
    time.sleep(0.5)  # answers before the first restart (see the SIGTERM test above)
    for host in lab.hosts:
        agents.signal(host, signal.SIGTERM)
        assert agents.wait_exit(host, 2) == 0, agents.log(host)
        agents.start(host)  # returns once the new run holds a lease (is a member)
        # The next host goes only when every VIP is bound where etcd says it is held.
        agents.wait_settled()
    for tag, (out, proc) in probes.items():
        proc.wait(timeout=30)
        s = summarize(read_records(out))
        # Only graceful handovers: short gaps, and the VIP answered before and after each one.
        assert s.longest_gap_ms is not None and s.longest_gap_ms < 500, (tag, s.longest_gap_ms)
        assert s.answered >= 0.9 * s.sent, (tag, s.answered, s.sent)
    for ip in vips.values():
        agents.wait_single_holder(ip)

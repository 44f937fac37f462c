"""End-to-end: three real agents, a real etcd, real namespaces, a real client."""

from __future__ import annotations

import signal
import time
from ipaddress import IPv4Address, IPv6Address, ip_address

import pytest

from haagent.lab.probe import read_records, summarize
from haagent.lab.topology import Lab
from tests.lab.conftest import Agents, etcd_holder, start_probe, wait_until

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
    # Still exactly one holder after things settled (no late second bind).
    time.sleep(0.5)
    assert agents.holders(v4) == [h4] and agents.holders(v6) == [h6]
    acquired = agents.events(lab.host(h4), r"acquired vip web4 .*: ")
    assert acquired, agents.dump()


def test_sigterm_hands_over_within_a_second(lab: Lab, agents: Agents) -> None:
    agents.ttl = 5  # a takeover within 1 s proves it came from the watch, not lease expiry
    agents.start_all()
    v4 = lab.vip4(0)
    old = agents.wait_single_holder(v4)
    out, probe = start_probe(lab, v4, 4.0, "sigterm")
    time.sleep(0.5)
    agents.signal(lab.host(old), signal.SIGTERM)
    assert agents.wait_exit(lab.host(old), timeout=1.0) == 0, "agent did not exit within 1 s"
    probe.wait(timeout=15)
    s = summarize(read_records(out))
    assert len(s.responders) == 2 and s.responders[0] == old, (s.responders, agents.dump())
    new = s.responders[1]
    # One switch from old to new, never back, never interleaved.
    assert [(a, b) for _, a, b in s.transitions] == [(old, new)]
    assert s.longest_gap_ms is not None and s.longest_gap_ms < 1000, s.longest_gap_ms
    assert agents.holders(v4) == [new]
    assert agents.events(lab.host(old), r"released vip web4 .*: shutdown"), agents.log(
        lab.host(old)
    )


def test_sigkill_and_link_cut_fails_over_within_ttl(lab: Lab, agents: Agents) -> None:
    agents.start_all()
    v4 = lab.vip4(0)
    old = agents.wait_single_holder(v4)
    old_host = lab.host(old)
    agents.signal(old_host, signal.SIGKILL, group=True)
    lab.cut_link(old_host)
    t0 = time.monotonic()
    new = wait_until(
        lambda: [h for h in agents.holders(v4) if h != old] or None, agents.ttl + 1.0, 0.02
    )
    took = time.monotonic() - t0
    assert new, f"no takeover within TTL + 1 s\n{agents.dump()}"
    assert client_probe(lab, v4) == new[0]  # type: ignore[index]
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
    assert wait_until(lambda: v4 not in lab.bound(other), 10), agents.log(other)
    assert "removed stale address of vip web4" in agents.log(other)
    for _ in range(10):  # and it does not come back: etcd says someone else holds it
        assert agents.holders(v4) == [holder]
        time.sleep(0.1)


def test_restart_within_ttl_adopts_lease_without_failover(lab: Lab, agents: Agents) -> None:
    agents.ttl = 5
    agents.start_all()
    v4 = lab.vip4(0)
    old = agents.wait_single_holder(v4)
    old_host = lab.host(old)
    # Agent and fence die together (a service manager's SIGKILL of the whole service): the
    # fence cannot revoke the lease, so it is still alive when the agent comes back.
    agents.kill_with_fence(old_host)
    agents.wait_exit(old_host, 2)
    agents.start(old_host)
    assert wait_until(lambda: "adopted lease" in agents.log(old_host), 10), agents.log(old_host)
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
    assert "stopped during start-up" in agents.log(host)


def test_rolling_restart_keeps_every_vip_reachable(lab: Lab, agents: Agents) -> None:
    agents.start_all()
    vips: dict[str, IPv4Address | IPv6Address] = {"v4": lab.vip4(0), "v6": lab.vip6(0)}
    for ip in vips.values():
        agents.wait_single_holder(ip)
    probes = {tag: start_probe(lab, ip, 14.0, f"rolling-{tag}") for tag, ip in vips.items()}
    time.sleep(0.5)
    for host in lab.hosts:
        runs = agents.log(host).count("granted lease")  # the log is appended to across runs
        agents.signal(host, signal.SIGTERM)
        assert agents.wait_exit(host, 2) == 0, agents.log(host)
        agents.start(host)  # returns once the new run holds a lease
        assert agents.log(host).count("granted lease") > runs, agents.log(host)
        time.sleep(1.0)
    for tag, (out, proc) in probes.items():
        proc.wait(timeout=30)
        s = summarize(read_records(out))
        # Only graceful handovers: short gaps, and the VIP answered before and after each one.
        assert s.longest_gap_ms is not None and s.longest_gap_ms < 500, (tag, s.longest_gap_ms)
        assert s.answered >= 0.9 * s.sent, (tag, s.answered, s.sent)
    for ip in vips.values():
        agents.wait_single_holder(ip)

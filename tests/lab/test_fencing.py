"""Dead or frozen agent ⇒ dead address, before anyone else can bind it.

Every peer we measured (keepalived, vip-manager, ucarp) left the VIP bound on the old host when
only its daemon was SIGKILLed. These tests kill or freeze the holder's agent while its host and
link stay up, and watch every host's kernel the whole time: the address must never be bound on
two hosts at once.
"""

from __future__ import annotations

import signal
import sys
import time
from ipaddress import IPv4Address, IPv6Address

import pytest

from haagent.lab.history import HistoryReport, check_history, start_address_recorder
from haagent.lab.probe import read_records
from haagent.lab.topology import Lab
from tests.lab.conftest import Agents, start_probe, wait_until

pytestmark = pytest.mark.lab


class History:
    """The whole record of one test: every host's kernel address events (ip monitor) and a
    client probing the VIP every 5 ms, judged by haagent.lab.history at the end."""

    def __init__(self, agents: Agents, ip: IPv4Address | IPv6Address, seconds: float) -> None:
        self.lab = agents.lab
        self.ip = ip
        self.seconds = seconds

    def __enter__(self) -> History:
        self.recorder = start_address_recorder(self.lab, self.lab.hosts, tag=f"v{self.ip.version}")
        try:
            self.out, self.probe = start_probe(
                self.lab, self.ip, self.seconds, f"hist{self.ip.version}"
            )
        except BaseException:
            self.recorder.stop()  # __exit__ does not run when __enter__ fails
            raise
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        try:
            if exc_type is None:  # a failed test need not wait for the probe's full run
                self.probe.wait(timeout=self.seconds + 30)
        finally:
            Lab.stop(self.probe)  # nothing to do once it has finished
            self.events = self.recorder.stop()

    def report(self) -> HistoryReport:
        probes = read_records(self.out)
        return check_history(self.events, probes, self.ip, until=time.time())


def _other_holder(agents: Agents, ip: IPv4Address | IPv6Address, old: str, timeout: float) -> str:
    got = wait_until(lambda: [h for h in agents.holders(ip) if h != old] or None, timeout, 0.02)
    assert got, f"no takeover from {old} within {timeout}s\n{agents.dump()}"
    assert isinstance(got, list)
    return str(got[0])


@pytest.mark.parametrize("family", [4, 6])
def test_sigkill_of_the_agents_process_group_never_leaves_two_holders(
    lab: Lab, agents: Agents, family: int
) -> None:
    agents.start_all()
    ip = lab.vip4(0) if family == 4 else lab.vip6(0)
    vip = "web4" if family == 4 else "web6"
    with History(agents, ip, 24.0) as history:
        for _ in range(3):
            old = agents.wait_single_holder(ip)
            old_host = lab.host(old)
            agents.signal(old_host, signal.SIGKILL, group=True)
            # The fence removes the address as soon as the agent's pipe closes.
            gone = wait_until(lambda: ip not in lab.bound(old_host), 2, 0.01)  # noqa: B023
            assert gone, agents.log(old_host)
            new = _other_holder(agents, ip, old, agents.ttl + 2)
            assert f"fence removed {ip}" in agents.log(old_host)
            agents.wait_exit(old_host, 5)
            agents.start(old_host)  # back as a standby for the next round
            assert agents.wait_single_holder(ip) == new
    report = history.report()
    assert report.intervals, "no address events recorded"
    assert len([h for h, ivs in report.intervals.items() if ivs]) >= 2, report.intervals
    assert report.ok, f"{vip}: two holders {report.double_holder}, {report.interleavings}"


def test_dead_agents_lease_is_revoked_so_another_host_takes_over_at_once(
    lab: Lab, agents: Agents
) -> None:
    # A long TTL: a takeover well before it can only come from the fence revoking the lease.
    agents.ttl = 10
    agents.start_all()
    ip = lab.vip4(0)
    with History(agents, ip, 8.0) as history:
        old = agents.wait_single_holder(ip)
        old_host = lab.host(old)
        started = time.monotonic()
        agents.signal(old_host, signal.SIGKILL, group=True)
        new = _other_holder(agents, ip, old, 3.0)
        took = time.monotonic() - started
        log = agents.log(old_host)
        assert "fence revoked lease" in log, log
        assert log.index(f"fence removed {ip}") < log.index("fence revoked lease"), log
    report = history.report()
    assert report.ok, f"two holders {report.double_holder}, {report.interleavings}"
    assert took < agents.ttl / 2, f"{new} took over after {took:.1f}s"


def test_frozen_agent_loses_the_address_before_the_lease_expires(lab: Lab, agents: Agents) -> None:
    agents.start_all()
    ip = lab.vip4(0)
    with History(agents, ip, 2 * (agents.ttl + 5.0) + 4) as history:
        for _ in range(2):
            old = agents.wait_single_holder(ip)
            old_host = lab.host(old)
            agents.signal(old_host, signal.SIGSTOP)
            try:
                new = _other_holder(agents, ip, old, agents.ttl + 2)
                assert ip not in lab.bound(old_host)
            finally:
                agents.signal(old_host, signal.SIGCONT)
            # Thawed, it finds its deadline long gone and stays a standby.
            time.sleep(agents.ttl)
            assert agents.holders(ip) == [new], agents.log(old_host)
    report = history.report()
    assert report.ok, f"two holders {report.double_holder}, {report.interleavings}"
    # The fence removed the address and revoked the lease its frozen agent kept alive no more.
    assert "lease deadline passed" in agents.log(old_host)
    assert "fence revoked lease" in agents.log(old_host)


def test_kernel_lifetime_removes_the_address_when_agent_and_fence_die(
    lab: Lab, agents: Agents
) -> None:
    agents.start_all()
    ip = lab.vip4(0)
    with History(agents, ip, agents.ttl + 6.0) as history:
        old = agents.wait_single_holder(ip)
        old_host = lab.host(old)
        agents.kill_with_fence(old_host)  # nobody left to act on the pipe closing
        gone = wait_until(lambda: ip not in lab.bound(old_host), agents.ttl + 1, 0.01)
        assert gone, "the address outlived its lifetime"
        _other_holder(agents, ip, old, agents.ttl + 2)
    report = history.report()
    assert report.ok, f"two holders {report.double_holder}, {report.interleavings}"


def test_cleanup_command_removes_configured_addresses(lab: Lab, agents: Agents) -> None:
    host = lab.hosts[0]
    agents.start(host)
    assert agents.wait_single_holder(lab.vip4(0)) == host.role
    agents.signal(host, signal.SIGKILL, group=True)
    agents.wait_exit(host, 5)
    assert wait_until(lambda: lab.vip4(0) not in lab.bound(host), 2)  # the fence did its job
    lab.add_address(host, lab.vip4(0))  # as if fence and lifetime had not run
    r = lab.run(host, [sys.executable, "-m", "haagent", "cleanup", "-c", str(agents.configs["h1"])])
    assert "vip web4 (198.51.100.200/32 on eth0): removed" in r.stdout
    assert lab.vip4(0) not in lab.bound(host)

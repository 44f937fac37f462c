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
from haagent.lab.wait import wait_until
from tests.lab.conftest import Agents, etcd_holder, start_probe

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
            wait_until(
                lambda: ip not in lab.bound(old_host),  # noqa: B023
                2,
                0.01,
                what=f"{ip} to be gone from {old}, its agent killed",
                detail=lambda: agents.log(old_host),  # noqa: B023
            )
            new = agents.wait_other_holder(ip, old, agents.ttl + 2)
            # That it was the fence (not the address lifetime, which may run out about as
            # soon) shows only in the log: the fence is the behaviour under test.
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
        new = agents.wait_other_holder(ip, old, 3.0)
        took = time.monotonic() - started
        # Its lease is gone long before the TTL could expire it: the fence revoked it.
        assert agents.member(old) is None, agents.log(old_host)
    # And removed the address first: never two holders in the kernels.
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
            member = agents.member(old)
            assert member is not None
            agents.signal(old_host, signal.SIGSTOP)
            try:
                new = agents.wait_other_holder(ip, old, agents.ttl + 2)
                assert ip not in lab.bound(old_host)
            finally:
                agents.signal(old_host, signal.SIGCONT)
            # Thawed, it finds its lease gone and comes back as a standby, on a new lease.
            wait_until(
                lambda: (m := agents.member(old)) is not None and m["lease"] != member["lease"],  # noqa: B023
                agents.ttl + 5,
                what=f"the thawed agent on {old} to rejoin on a new lease",
                detail=lambda: agents.log(old_host),  # noqa: B023
            )
            assert agents.holders(ip) == [new], agents.log(old_host)
            assert etcd_holder(lab, agents.cluster, "web4") == new
    report = history.report()
    assert report.ok, f"two holders {report.double_holder}, {report.interleavings}"
    # The fence, not lease expiry, ended the lease the frozen agent no longer kept alive:
    # only the log tells revocation from expiry.
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
        wait_until(
            lambda: ip not in lab.bound(old_host),
            agents.ttl + 1,
            0.01,
            what=f"{ip} on {old} to reach the end of its lifetime",
        )
        agents.wait_other_holder(ip, old, agents.ttl + 2)
    report = history.report()
    assert report.ok, f"two holders {report.double_holder}, {report.interleavings}"


def test_cleanup_command_removes_configured_addresses(lab: Lab, agents: Agents) -> None:
    host = lab.hosts[0]
    agents.start(host)
    assert agents.wait_single_holder(lab.vip4(0)) == host.role
    agents.signal(host, signal.SIGKILL, group=True)
    agents.wait_exit(host, 5)
    # The fence did its job.
    wait_until(lambda: lab.vip4(0) not in lab.bound(host), 2, what="the fence to remove the VIP")
    lab.add_address(host, lab.vip4(0))  # as if fence and lifetime had not run
    r = lab.run(host, [sys.executable, "-m", "haagent", "cleanup", "-c", str(agents.configs["h1"])])
    assert "vip web4 (198.51.100.200/32 on eth0): removed" in r.stdout
    assert lab.vip4(0) not in lab.bound(host)

"""One VIP, two addresses (an IPv4 and an IPv6): one election, never split between hosts.

Three real agents hold a VIP configured with ``addresses: [198.51.100.200, 2001:db8:100::200]``
through every failure mode of ``make bench``: a graceful stop, a SIGKILL of the agent (its
fence removes both addresses, then revokes the lease), its link cut, the agent frozen
(SIGSTOP: the fence acts at the deadline), SIGKILL with the link cut, an etcd partition of
the holder, ``haagent move``, and a failed health check. A client probes both addresses every 5 ms
throughout and every host's kernel address events are recorded; haagent/lab/history.py
judges both: per address no two holders and no interleaved answers, and across the two
addresses no *split* (its module doc defines one from the probes and from the kernels).
"""

from __future__ import annotations

import itertools
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from ipaddress import IPv4Address, IPv6Address
from pathlib import Path

import pytest

from haagent.lab.history import (
    AddressEvent,
    Recorder,
    check_history,
    split_windows,
    splits,
    start_address_recorder,
)
from haagent.lab.probe import ProbeRecord, read_records, summarize
from haagent.lab.topology import Lab, Node
from haagent.lab.wait import wait_until
from haagent.net.vmac import vmac_ifname, vrrp_mac
from tests.lab.conftest import Agents, etcd_holder, start_probe

pytestmark = pytest.mark.lab

FAST = {"interval": 0.2, "timeout": 0.2, "rise": 2, "fall": 2}
PROBE_SECONDS = 120.0  # an upper bound: the probes are stopped when the test is done
VRID = 61

IP = IPv4Address | IPv6Address


def configure(agents: Agents, **vip: object) -> tuple[IPv4Address, IPv6Address]:
    """The VIP ``svc`` with one address of each family, and an exec check that passes while
    a flag file of the host exists."""
    lab = agents.lab
    v4, v6 = lab.vip4(0), lab.vip6(0)
    agents.vips = [("svc", str(v4))]
    agents.extra = {
        "checks": {
            "svc": {"type": "exec", "command": f"test -e {flag_dir(lab)}/$HAAGENT_NODE", **FAST}
        },
        "vips": [
            {
                "name": "svc",
                "addresses": [str(v4), str(v6)],
                "interface": "eth0",
                "checks": ["svc"],
                "hold_down": 1.0,
                **vip,
            }
        ],
    }
    flag_dir(lab).mkdir(exist_ok=True)
    for h in lab.hosts:
        (flag_dir(lab) / h.role).touch()
    return v4, v6


def flag_dir(lab: Lab) -> Path:
    return lab.workdir / "address-group-healthy"


def bound_on(agents: Agents, ips: tuple[IP, ...]) -> dict[IP, list[str]]:
    """For each address, the hosts that have it bound now (kernel, any interface)."""
    bound = {h.role: agents.lab.bound(h, all_interfaces=True) for h in agents.lab.hosts}
    return {ip: [role for role, have in bound.items() if ip in have] for ip in ips}


def wait_whole_on_one(agents: Agents, ips: tuple[IP, ...], old: str | None, timeout: float) -> str:
    """Both addresses bound on one host (not ``old``) and on no other: that host."""

    def whole() -> str | None:
        on = bound_on(agents, ips)
        hosts = {tuple(hs) for hs in on.values()}
        if len(hosts) == 1 and len(first := next(iter(hosts))) == 1 and first[0] != old:
            return first[0]
        return None

    return str(
        wait_until(
            whole,
            timeout,
            0.02,
            what=f"{', '.join(map(str, ips))} all bound on one host other than {old}",
            detail=lambda: f"bound: {bound_on(agents, ips)}\n{agents.dump()}",
        )
    )


def check_new_holder(agents: Agents, ips: tuple[IP, ...], old: str | None, timeout: float) -> str:
    """After a failure: one new host has both addresses, etcd names it, and the client
    reaches it on both."""
    new = wait_whole_on_one(agents, ips, old, timeout)
    assert etcd_holder(agents.lab, agents.cluster, "svc") == new, agents.dump()
    for ip in ips:
        assert agents.lab.probe_once(str(ip), timeout=0.5)["by"] == new, (ip, agents.dump())
    return new


class Watch:
    """The client probing every address, and every host's kernel, for the whole test."""

    def __init__(self, lab: Lab, ips: tuple[IP, ...]) -> None:
        self.lab = lab
        self.ips = ips
        self.recorder: Recorder | None = None
        self.probes: dict[IP, tuple[Path, subprocess.Popen[bytes]]] = {}

    def start(self) -> None:
        self.recorder = start_address_recorder(self.lab, self.lab.hosts, tag="group")
        for ip in self.ips:
            self.probes[ip] = start_probe(self.lab, ip, PROBE_SECONDS, f"group{ip.version}")

    def stop(self) -> tuple[list[AddressEvent], dict[IP, list[ProbeRecord]]]:
        """Stop probing (each probe writes its records on SIGTERM) and recording."""
        for _, proc in self.probes.values():
            Lab.stop(proc, timeout=10)
        events = self.recorder.stop() if self.recorder is not None else []
        records = {ip: read_records(out) for ip, (out, _) in self.probes.items() if out.exists()}
        return events, records


@contextmanager
def watching(lab: Lab, ips: tuple[IP, ...]) -> Iterator[Watch]:
    w = Watch(lab, ips)
    try:
        w.start()
        yield w
    finally:
        w.stop()  # idempotent: a second stop finds everything stopped


def judge(agents: Agents, w: Watch, hosts_in_order: list[str]) -> None:
    """Per address no double holder and no double answer; across them no split, from the
    probes and from the kernels; both streams saw the same chain of holders."""
    events, records = w.stop()
    until = time.time()
    assert set(records) == set(w.ips), records.keys()
    intervals = {}
    for ip in w.ips:
        report = check_history(events, records[ip], ip, until=until)
        assert report.intervals, f"no address events recorded for {ip}"
        assert report.ok, f"{ip}: two holders {report.double_holder}, {report.interleavings}"
        intervals[ip] = report.intervals
    assert split_windows(intervals) == [], (split_windows(intervals), intervals)
    found = splits(records)
    assert found == [], found[:5]
    for ip in w.ips:
        s = summarize(records[ip])
        # Every holder answered on this address, in the order of the failures, one switch
        # per failure.
        got = [(a, b) for _, a, b in s.transitions]
        assert got == list(itertools.pairwise(hosts_in_order)), (ip, got, hosts_in_order)
        assert s.answered >= 0.5 * s.sent, (ip, s.answered, s.sent)


def rejoin(agents: Agents, host: Node, lease_before: str, timeout: float) -> None:
    """Wait for ``host``'s agent to be a member again on a new lease (a standby)."""
    wait_until(
        lambda: (m := agents.member(host.role)) is not None and m["lease"] != lease_before,
        timeout,
        what=f"the agent on {host.role} to rejoin on a new lease",
        detail=lambda: agents.log(host),
    )


def lease_of(agents: Agents, role: str) -> str:
    member = agents.member(role)
    assert member is not None, agents.dump()
    return str(member["lease"])


def test_two_addresses_fail_over_together_through_every_failure(lab: Lab, agents: Agents) -> None:
    started = time.monotonic()
    ips = configure(agents)
    agents.start_all()
    holder = check_new_holder(agents, ips, None, 15)
    chain = [holder]

    def restart(host: Node) -> None:
        agents.start(host)  # returns once it is a member: a standby

    def sigterm(host: Node) -> Callable[[], None]:
        agents.signal(host, signal.SIGTERM)
        assert agents.wait_exit(host, 3) == 0, agents.log(host)
        return lambda: restart(host)

    def sigkill(host: Node) -> Callable[[], None]:
        # The agent's process group only: its fence, in a session of its own, lives on,
        # removes both addresses when the pipe closes, then revokes the lease.
        agents.signal(host, signal.SIGKILL, group=True)
        agents.wait_exit(host, 3)
        return lambda: restart(host)

    def link_cut(host: Node) -> Callable[[], None]:
        lease = lease_of(agents, host.role)
        lab.cut_link(host)

        def back() -> None:
            lab.restore_link(host)
            rejoin(agents, host, lease, agents.ttl + 10)

        return back

    def freeze(host: Node) -> Callable[[], None]:
        lease = lease_of(agents, host.role)
        agents.signal(host, signal.SIGSTOP)

        def back() -> None:
            agents.signal(host, signal.SIGCONT)
            rejoin(agents, host, lease, agents.ttl + 10)

        return back

    def sigkill_cut(host: Node) -> Callable[[], None]:
        # Agent and link together: nothing of the old host can act, the lease expires.
        agents.signal(host, signal.SIGKILL, group=True)
        lab.cut_link(host)
        agents.wait_exit(host, 3)

        def back() -> None:
            lab.restore_link(host)
            restart(host)

        return back

    def etcd_partition(host: Node) -> Callable[[], None]:
        lease = lease_of(agents, host.role)
        lab.block_etcd(host)  # clients still reach it; etcd does not

        def back() -> None:
            lab.unblock_etcd(host)
            rejoin(agents, host, lease, agents.ttl + 10)

        return back

    def move(host: Node) -> Callable[[], None]:
        target = next(h.role for h in lab.hosts if h.role != host.role)
        argv = [sys.executable, "-m", "haagent", "move", "svc", "--to", target, "--wait"]
        argv += ["--endpoints", ",".join(lab.etcd_endpoints), "--cluster", agents.cluster]
        proc = lab.run(lab.client, argv, check=False, timeout=30)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        return lambda: None

    def unhealthy(host: Node) -> Callable[[], None]:
        (flag_dir(lab) / host.role).unlink()
        return lambda: (flag_dir(lab) / host.role).touch()

    failures = {
        "sigterm": sigterm,
        "sigkill": sigkill,
        "link cut": link_cut,
        "sigstop": freeze,
        "sigkill and link cut": sigkill_cut,
        "etcd partition": etcd_partition,
        "move": move,
        "health check": unhealthy,
    }
    with watching(lab, ips) as w:
        time.sleep(0.3)  # answers from the first holder before the first failure
        for what, fail in failures.items():
            old = lab.host(holder)
            recover = fail(old)
            try:
                # A link cut and a freeze wait out the TTL (or the deadline and the fence's
                # grace); the others hand over at once.
                holder = check_new_holder(agents, ips, old.role, agents.ttl + 4)
            except AssertionError as exc:
                raise AssertionError(f"after {what} of {old.role}: {exc}") from None
            finally:
                recover()
            chain.append(holder)
            assert f"vip svc ({ips[0]}/32, {ips[1]}/128 on eth0" in agents.log(lab.host(holder))
            # The old host is a standby again; the VIP stayed whole where it went.
            assert wait_whole_on_one(agents, ips, None, 2) == holder
            time.sleep(0.2)  # answers from the new holder before the next failure
        judge(agents, w, chain)
    # The fence removed both addresses of the SIGKILLed agent, and revoked its lease.
    killed = lab.host(chain[1])
    for ip in ips:
        assert f"fence removed {ip}" in agents.log(killed), agents.log(killed)
    print(f"\nchain {' -> '.join(chain)} in {time.monotonic() - started:.1f} s")


def test_a_vmac_vip_with_two_families_moves_both_virtual_macs_together(
    lab: Lab, agents: Agents
) -> None:
    """vmac: a macvlan per family, both with the VIP's VRID, on the holder only; the client's
    neighbour entries keep the virtual MACs across the handover."""
    ips = configure(agents, vmac=True, vrid=VRID)
    names = {vmac_ifname(VRID, socket.AF_INET), vmac_ifname(VRID, socket.AF_INET6)}
    macs = {4: vrrp_mac(VRID, socket.AF_INET), 6: vrrp_mac(VRID, socket.AF_INET6)}

    def vmacs(host: Node) -> set[str]:
        out = lab.run(host, ["ip", "-br", "link", "show"]).stdout
        return {line.split()[0].split("@")[0] for line in out.splitlines()} & names

    def neighbour(ip: IP) -> str | None:
        out = lab.run(lab.client, ["ip", "neigh", "show", str(ip), "dev", "eth0"]).stdout.split()
        return out[out.index("lladdr") + 1] if "lladdr" in out else None

    agents.start_all()
    old = check_new_holder(agents, ips, None, 15)
    assert {h.role: vmacs(h) for h in lab.hosts} == {
        h.role: names if h.role == old else set() for h in lab.hosts
    }
    assert [neighbour(ip) for ip in ips] == [macs[4], macs[6]]
    with watching(lab, ips) as w:
        time.sleep(0.3)
        agents.signal(lab.host(old), signal.SIGTERM)
        assert agents.wait_exit(lab.host(old), 3) == 0, agents.log(lab.host(old))
        new = check_new_holder(agents, ips, old, 5)
        time.sleep(0.2)
        judge(agents, w, [old, new])
    assert [neighbour(ip) for ip in ips] == [macs[4], macs[6]]  # the client noticed nothing
    wait_until(
        lambda: (
            {h.role: vmacs(h) for h in lab.hosts}
            == {h.role: names if h.role == new else set() for h in lab.hosts}
        ),
        3,
        what=f"the virtual MACs up on {new} only",
    )


def test_a_half_bound_leftover_is_removed_whole_at_start_up(lab: Lab, agents: Agents) -> None:
    """An agent starting with one address of the VIP bound (a leftover of an earlier run)
    while etcd names another holder removes it: start-up counts a VIP as placed when any of
    its addresses is, and keeps or removes it whole."""
    ips = configure(agents)
    agents.start_all()
    holder = check_new_holder(agents, ips, None, 15)
    other = lab.host(next(h.role for h in lab.hosts if h.role != holder))
    agents.signal(other, signal.SIGTERM)
    assert agents.wait_exit(other, 3) == 0, agents.log(other)
    lab.add_address(other, ips[1])  # marked as haagent's, no lifetime: only IPv6
    assert bound_on(agents, ips)[ips[1]] == sorted([holder, other.role])
    agents.start(other)
    wait_until(
        lambda: ips[1] not in lab.bound(other),
        10,
        what=f"the restarted agent on {other.role} to remove the stale {ips[1]}",
        detail=lambda: agents.log(other),
    )
    assert f"removed stale address of vip svc ({ips[0]}/32, {ips[1]}/128)" in agents.log(other)
    for _ in range(5):  # and nothing comes back: both stay with the holder
        assert bound_on(agents, ips) == {ips[0]: [holder], ips[1]: [holder]}
        time.sleep(0.1)

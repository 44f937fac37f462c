"""Fixtures for tests that need root, network namespaces and a real etcd.

Each test module gets its own lab (unique namespace prefix, own etcd); each test its own
cluster name, so tests in a module never see each other's keys, locks or leases.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv6Address, ip_address
from pathlib import Path
from typing import Any, TypedDict

import pytest

from haagent.lab.probe import started_marker
from haagent.lab.topology import Lab, Node

# Re-exported: test_layer2.py and test_net.py import it from here.
from haagent.lab.wait import wait_until as wait_until


def _unavailable(*binaries: str) -> str | None:
    if os.geteuid() != 0:
        return "needs root for network namespaces"
    missing = [b for b in binaries if shutil.which(b) is None]
    return f"missing {', '.join(missing)} (run `make deps`)" if missing else None


def require(*binaries: str) -> None:
    """Skip the test (fail it under CI) unless we are root and have ``binaries``."""
    why = _unavailable(*binaries)
    if why is not None:
        if os.environ.get("CI"):
            pytest.fail(why)
        pytest.skip(why)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    why = _unavailable("ip")
    if why is None:
        return
    labs = [item for item in items if "lab" in item.keywords]
    if labs and os.environ.get("CI"):
        # CI must never pass by skipping the tests that matter.
        raise pytest.UsageError(f"{len(labs)} lab tests cannot run here: {why}")
    for item in labs:
        item.add_marker(pytest.mark.skip(reason=why))


def start_probe(
    lab: Lab, target: object, seconds: float, tag: str
) -> tuple[Path, subprocess.Popen[bytes]]:
    """A client probe every 5 ms for ``seconds``; returns once it is sending."""
    out = lab.workdir / f"probe-{tag}.jsonl"
    proc = lab.start_probe(str(target), out, interval=0.005, duration=seconds)
    wait_until(started_marker(out).exists, 10, what=f"the probe of {target} to start sending")
    return out, proc


def _record(lab: Lab, key: str) -> dict[str, Any] | None:
    out = lab.etcd.etcdctl("get", "--print-value-only", key, check=False).stdout.strip()
    if not out:
        return None
    record: dict[str, Any] = json.loads(out)
    return record


def holder_record(lab: Lab, cluster: str, vip: str) -> dict[str, Any] | None:
    """The VIP's holder record in etcd (docs/keys.md), None if there is no holder key."""
    return _record(lab, f"/haagent/v1/{cluster}/vips/{vip}/holder")


def etcd_holder(lab: Lab, cluster: str, vip: str) -> str | None:
    """The node named by the VIP's holder key in etcd, None if there is no such key."""
    record = holder_record(lab, cluster, vip)
    return str(record["node"]) if record else None


def member_record(lab: Lab, cluster: str, node: str) -> dict[str, Any] | None:
    """The node's member record in etcd (docs/keys.md): present exactly while its agent's
    lease lives."""
    return _record(lab, f"/haagent/v1/{cluster}/members/{node}")


class Identity(TypedDict, total=False):
    """How an agent logs in to etcd: the arguments of Lab.write_agent_config."""

    tls: Mapping[str, str | Path]
    username: str
    password: str
    password_file: Path


# Tests of failover mechanics start agents one by one and expect a VIP to stay where it
# went: no preemption moving it mid-test, no start-up wait adding seconds to every start.
# tests/lab/test_placement.py (and the soak, and the bench) run placement's defaults.
LEGACY_PLACEMENT: dict[str, object] = {"preempt": False, "startup_wait": 0}


@dataclass
class Agents:
    """The agents of one test: started from per-host configs, always stopped at teardown."""

    lab: Lab
    cluster: str
    vips: list[tuple[str, str]]
    ttl: int = 3
    margin: float = 1.0
    extra: dict[str, object] = field(default_factory=dict)  # more top-level config keys
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    configs: dict[str, Path] = field(default_factory=dict)
    launched: dict[str, float] = field(default_factory=dict)  # time.time() of the last start
    log_start: dict[str, int] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        # The module's lab outlives a test and its agent logs are appended to: what an earlier
        # test's agents wrote must not satisfy this test's waits and assertions.
        self.log_start = {h.role: len(self.lab.agent_log(h)) for h in self.lab.hosts}

    def start(
        self,
        host: Node,
        identity: Identity | None = None,
        *,
        vips: list[tuple[str, str]] | None = None,
        wait: bool = True,
    ) -> subprocess.Popen[bytes]:
        """Start the host's agent; with ``wait``, return once it holds a lease (is a member).

        ``identity`` (default: the lab's, see Lab.write_agent_config) and ``vips`` (default:
        ``self.vips``) are for this host only."""
        cfg = self.lab.write_agent_config(
            host,
            self.vips if vips is None else vips,
            ttl=self.ttl,
            margin=self.margin,
            extra={"cluster": self.cluster, "placement": LEGACY_PLACEMENT, **self.extra},
            **(identity or {}),
        )
        self.configs[host.role] = cfg
        launched = time.time()
        proc = self.lab.start_agent(host, cfg)
        self.procs[host.role] = proc
        self.launched[host.role] = launched
        if wait:
            # Signals sent before the agent is up would hit a half-started interpreter.
            self.wait_member(host)
        return proc

    def is_member(self, host: Node) -> bool:
        """The agent started last on ``host`` has published its member record: it holds a
        lease (granted or adopted). A record of an earlier run does not count."""
        record = self.member(host.role)
        # `started` is the agent's own time.time() at start-up, rounded to 1 ms.
        return record is not None and record["started"] >= self.launched[host.role] - 0.001

    def wait_member(self, host: Node, timeout: float = 15) -> None:
        proc = self.procs[host.role]
        wait_until(
            lambda: self.is_member(host) or proc.poll() is not None,
            timeout,
            what=f"the agent on {host.role} to publish its member record",
            detail=lambda: self.log(host),
        )
        assert proc.poll() is None, f"agent {host.role} exited {proc.returncode}\n{self.log(host)}"

    def member(self, node: str) -> dict[str, Any] | None:
        return member_record(self.lab, self.cluster, node)

    def start_cut_off_from_etcd(self, host: Node) -> None:
        """Block etcd for ``host``, start its agent, return once the block has dropped the
        agent's first attempt to reach etcd."""
        self.lab.block_etcd(host)
        proc = self.start(host, wait=False)
        wait_until(
            lambda: self.lab.etcd_drops(host) > 0 or proc.poll() is not None,
            10,
            what=f"the agent on {host.role} to try etcd through the block",
            detail=lambda: self.log(host),
        )
        assert proc.poll() is None, f"agent {host.role} exited {proc.returncode}\n{self.log(host)}"

    def start_all(self) -> None:
        for h in self.lab.hosts:
            self.start(h, wait=False)
        for h in self.lab.hosts:
            self.wait_member(h)

    def signal(self, host: Node, sig: signal.Signals, *, group: bool = False) -> None:
        proc = self.procs[host.role]
        if group:
            os.killpg(proc.pid, sig)
        else:
            proc.send_signal(sig)

    def kill_with_fence(self, host: Node) -> None:
        """SIGKILL the agent and its fence together, as a service manager's final kill does.

        The agent is stopped first: seeing its fence die, it would start a new one."""
        proc = self.procs[host.role]
        os.killpg(proc.pid, signal.SIGSTOP)
        out = self.lab.run(host, ["pgrep", "-P", str(proc.pid), "-f", "haagent.fence"])
        fences = [int(pid) for pid in out.stdout.split()]
        assert fences, f"no fence process under agent {proc.pid} on {host.role}"
        for pid in fences:
            os.kill(pid, signal.SIGKILL)
        os.killpg(proc.pid, signal.SIGKILL)

    def wait_exit(self, host: Node, timeout: float) -> int | None:
        try:
            return self.procs[host.role].wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop_all(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=5)

    def log(self, host: Node) -> str:
        """This test's part of the host's agent log."""
        return self.lab.agent_log(host)[self.log_start.get(host.role, 0) :]

    def holders(self, ip: IPv4Address | IPv6Address) -> list[str]:
        """Hosts that have ``ip`` bound right now on any interface (eth0, a vmac, …), from the
        kernel of each namespace."""
        return [h.role for h in self.lab.hosts if ip in self.lab.bound(h, all_interfaces=True)]

    def wait_single_holder(self, ip: IPv4Address | IPv6Address, timeout: float = 10) -> str:
        got = wait_until(
            lambda: hs if len(hs := self.holders(ip)) == 1 else None,
            timeout,
            what=f"a single host to have {ip} bound",
            detail=lambda: f"bound on: {self.holders(ip)}\n{self.dump()}",
        )
        return str(got[0])

    def wait_other_holder(self, ip: IPv4Address | IPv6Address, old: str, timeout: float) -> str:
        """A host other than ``old`` has ``ip`` bound (``old`` may still have it too)."""
        got = wait_until(
            lambda: [h for h in self.holders(ip) if h != old],
            timeout,
            0.02,
            what=f"a host other than {old} to bind {ip}",
            detail=self.dump,
        )
        return got[0]

    def wait_settled(self, timeout: float = 10) -> dict[str, str]:
        """Every VIP of ``self.vips`` is bound on exactly the host its holder key in etcd
        names; that host per VIP."""

        def settled() -> dict[str, str] | None:
            # Each kernel once per poll, then etcd per VIP (stopping at the first miss).
            bound = {h.role: self.lab.bound(h, all_interfaces=True) for h in self.lab.hosts}
            found: dict[str, str] = {}
            for name, address in self.vips:
                on = [role for role, ips in bound.items() if ip_address(address) in ips]
                if len(on) != 1 or etcd_holder(self.lab, self.cluster, name) != on[0]:
                    return None
                found[name] = on[0]
            return found

        return wait_until(
            settled,
            timeout,
            what=f"each of {[n for n, _ in self.vips]} bound where etcd says it is held",
            detail=self.dump,
        )

    def dump(self) -> str:
        parts = []
        for h in self.lab.hosts:
            if h.role in self.procs:
                parts.append(f"--- {h.role} agent log ---\n{self.log(h)[-4000:]}")
        return "\n".join(parts)


def remove_addresses(lab: Lab, addresses: Iterable[IPv4Address | IPv6Address]) -> None:
    """Delete these addresses from eth0 of every host, wherever they are bound (one `ip`
    batch per host): a SIGKILLed or stuck agent cannot clean up, and none may reach the
    next test."""
    batch = "".join(
        f"address del {ip}/{32 if ip.version == 4 else 128} dev eth0\n" for ip in addresses
    )
    for h in lab.hosts:
        lab.run(h, ["ip", "-force", "-batch", "-"], input=batch, check=False, timeout=30)


_TEST_NUMBER = itertools.count(1)


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    require("ip", "etcd", "etcdctl", "nft")
    with Lab(hosts=3) as lab:
        for h in lab.hosts:
            lab.start_responder(h)
        yield lab


@pytest.fixture
def agents(lab: Lab) -> Iterator[Agents]:
    # A cluster per test: keys, lock and lease files never leak between tests.
    cluster = f"{lab.lab_id}-t{next(_TEST_NUMBER)}"
    a = Agents(lab, cluster, vips=[("web4", str(lab.vip4(0))), ("web6", str(lab.vip6(0)))])
    try:
        yield a
    finally:
        a.stop_all()
        remove_addresses(lab, (lab.vip4(0), lab.vip6(0)))
        for h in lab.hosts:
            lab.restore_link(h)
            lab.unblock_etcd(h)

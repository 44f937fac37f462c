"""Fixtures for tests that need root, network namespaces and a real etcd.

Each test module gets its own lab (unique namespace prefix, own etcd); each test its own
cluster name, so tests in a module never see each other's keys, locks or leases.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from ipaddress import IPv4Address, IPv6Address
from pathlib import Path
from typing import TypedDict

import pytest

from haagent.lab.probe import started_marker
from haagent.lab.topology import Lab, Node


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


def wait_until(pred: Callable[[], object], timeout: float, interval: float = 0.05) -> object:
    """Poll ``pred`` until it returns something truthy; bounded by ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() >= deadline:
            return value
        time.sleep(interval)


def start_probe(
    lab: Lab, target: object, seconds: float, tag: str
) -> tuple[Path, subprocess.Popen[bytes]]:
    """A client probe every 5 ms for ``seconds``; returns once it is sending."""
    out = lab.workdir / f"probe-{tag}.jsonl"
    proc = lab.start_probe(str(target), out, interval=0.005, duration=seconds)
    assert wait_until(started_marker(out).exists, 10), "probe did not start"
    return out, proc


def etcd_holder(lab: Lab, cluster: str, vip: str) -> str | None:
    """The node named by the VIP's holder key in etcd, None if there is no such key."""
    key = f"/haagent/v1/{cluster}/vips/{vip}/holder"
    out = lab.etcd.etcdctl("get", "--print-value-only", key, check=False).stdout.strip()
    return str(json.loads(out)["node"]) if out else None


LOG_LINE = re.compile(r"^(\S+Z) (\w+) (\S+): (.*)$")


@dataclass
class LogEvent:
    at: datetime
    level: str
    message: str


def parse_log(text: str) -> list[LogEvent]:
    out = []
    for line in text.splitlines():
        m = LOG_LINE.match(line)
        if m:
            at = datetime.strptime(m.group(1), "%Y-%m-%dT%H:%M:%S.%fZ")
            out.append(LogEvent(at, m.group(2), m.group(4)))
    return out


class Identity(TypedDict, total=False):
    """How an agent logs in to etcd: the arguments of Lab.write_agent_config."""

    tls: Mapping[str, str | Path]
    username: str
    password: str
    password_file: Path


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
        runs = self._lease_lines(host)
        cfg = self.lab.write_agent_config(
            host,
            self.vips if vips is None else vips,
            ttl=self.ttl,
            margin=self.margin,
            extra={"cluster": self.cluster, **self.extra},
            **(identity or {}),
        )
        self.configs[host.role] = cfg
        proc = self.lab.start_agent(host, cfg)
        self.procs[host.role] = proc
        if wait:
            # Signals sent before the agent is up would hit a half-started interpreter.
            up = wait_until(lambda: self._lease_lines(host) > runs or proc.poll() is not None, 15)
            assert up and proc.poll() is None, f"agent {host.role} did not start\n{self.log(host)}"
        return proc

    def _lease_lines(self, host: Node) -> int:
        # The log is appended to across restarts: count, do not search.
        log = self.log(host)
        return log.count("haagent.agent: granted lease") + log.count("adopted lease")

    def start_cut_off_from_etcd(self, host: Node) -> None:
        """Block etcd for ``host``, start its agent, return once it logs etcd as not reachable."""
        before = self.log(host).count("not reachable")
        self.lab.block_etcd(host)
        self.start(host, wait=False)
        said = wait_until(lambda: self.log(host).count("not reachable") > before, 10)
        assert said, self.log(host)

    def start_all(self) -> None:
        runs = {h.role: self._lease_lines(h) for h in self.lab.hosts}
        for h in self.lab.hosts:
            self.start(h, wait=False)
        for h in self.lab.hosts:
            up = wait_until(lambda: self._lease_lines(h) > runs[h.role], 15)  # noqa: B023
            assert up, f"agent {h.role} did not start\n{self.dump()}"

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

    def events(self, host: Node, pattern: str) -> list[LogEvent]:
        return [e for e in parse_log(self.log(host)) if re.search(pattern, e.message)]

    def holders(self, ip: IPv4Address | IPv6Address) -> list[str]:
        """Hosts that have ``ip`` bound right now on any interface (eth0, a vmac, …), from the
        kernel of each namespace."""
        return [h.role for h in self.lab.hosts if ip in self.lab.bound(h, all_interfaces=True)]

    def wait_single_holder(self, ip: IPv4Address | IPv6Address, timeout: float = 10) -> str:
        got = wait_until(lambda: (hs := self.holders(ip)) and len(hs) == 1 and hs, timeout)
        assert got, (
            f"no single holder of {ip} within {timeout}s: {self.holders(ip)}\n" + self.dump()
        )
        assert isinstance(got, list)
        return str(got[0])

    def dump(self) -> str:
        parts = []
        for h in self.lab.hosts:
            if h.role in self.procs:
                parts.append(f"--- {h.role} agent log ---\n{self.log(h)[-4000:]}")
        return "\n".join(parts)


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
        for h in lab.hosts:
            # Leave no VIP behind for the next test (a SIGKILLed agent cannot clean up).
            for ip in (lab.vip4(0), lab.vip6(0)):
                lab.run(
                    h,
                    ["ip", "addr", "del", f"{ip}/{32 if ip.version == 4 else 128}", "dev", "eth0"],
                    check=False,
                )
            lab.restore_link(h)
            lab.unblock_etcd(h)

"""Health checks moving VIPs, end to end: real services in the host namespaces, real agents,
a real etcd, a real client."""

from __future__ import annotations

import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from subprocess import Popen

import pytest

from haagent.lab.history import holding_intervals, start_address_recorder
from haagent.lab.topology import Lab, Node
from haagent.lab.wait import wait_until
from tests.lab.conftest import Agents, etcd_holder, member_record

pytestmark = pytest.mark.lab

SERVICE_PORT = 7100
FAST = {"interval": 0.2, "timeout": 0.2, "rise": 2, "fall": 2}
HOLD_DOWN = 1.0  # s, the VIP's hold_down unless a test sets its own


@dataclass
class Service:
    """What a check looks at on one host, and how the test breaks and mends it."""

    brk: Callable[[], None]
    fix: Callable[[], None]


class Services:
    def __init__(self, lab: Lab, kind: str) -> None:
        self.lab = lab
        self.kind = kind
        self.servers: dict[str, Popen[bytes]] = {}

    def flag(self, host: Node) -> Path:
        return self.lab.workdir / f"healthy-{host.role}"

    def check(self) -> dict[str, object]:
        if self.kind == "tcp":
            return {"type": "tcp", "port": SERVICE_PORT, **FAST}
        if self.kind == "http":
            url = f"http://127.0.0.1:{SERVICE_PORT}/"
            return {"type": "http", "url": url, "expect_status": [200], **FAST}
        if self.kind == "exec":
            return {
                "type": "exec",
                "command": f"test -e {self.lab.workdir}/healthy-$HAAGENT_NODE",
                **FAST,
            }
        return {"type": "interface", "interface": "svc0", **FAST}

    def setup(self, host: Node) -> Service:
        if self.kind in ("tcp", "http"):
            self._serve(host)
            return Service(lambda: self._stop(host), lambda: self._serve(host))
        if self.kind == "exec":
            self.flag(host).touch()
            return Service(lambda: self.flag(host).unlink(), lambda: self.flag(host).touch())
        self.lab.run(host, ["ip", "link", "add", "svc0", "type", "veth", "peer", "name", "svc1"])
        self.lab.run(host, ["ip", "link", "set", "svc0", "up"])
        self.lab.run(host, ["ip", "link", "set", "svc1", "up"])
        return Service(lambda: self._link(host, "down"), lambda: self._link(host, "up"))

    def _link(self, host: Node, state: str) -> None:
        self.lab.run(host, ["ip", "link", "set", "svc1", state])

    def _serve(self, host: Node) -> None:
        argv = [sys.executable, "-m", "http.server", str(SERVICE_PORT), "--bind", "127.0.0.1"]
        self.servers[host.role] = self.lab.popen(host, argv)
        probe = [
            sys.executable,
            "-c",
            f"import socket; socket.create_connection(('127.0.0.1', {SERVICE_PORT}), 1)",
        ]
        wait_until(
            lambda: self.lab.run(host, probe, check=False).returncode == 0,
            10,
            what=f"the test service on {host.role} to accept connections",
        )

    def _stop(self, host: Node) -> None:
        self.lab.stop(self.servers.pop(host.role))

    def teardown(self) -> None:
        for proc in self.servers.values():
            self.lab.stop(proc)
        for h in self.lab.hosts:
            self.flag(h).unlink(missing_ok=True)
            if self.kind == "interface":
                self.lab.run(h, ["ip", "link", "del", "svc0"], check=False)


def configure(agents: Agents, check: dict[str, object], **vip: object) -> None:
    lab = agents.lab
    agents.vips = [("web4", str(lab.vip4(0)))]
    agents.extra = {
        "checks": {"svc": check},
        "vips": [
            {
                "name": "web4",
                "address": str(lab.vip4(0)),
                "interface": "eth0",
                "checks": ["svc"],
                "hold_down": HOLD_DOWN,
                **vip,
            }
        ],
    }


def member_health(lab: Lab, cluster: str, node: str) -> str | None:
    record = member_record(lab, cluster, node)
    return record["health"].get("web4") if record else None


@pytest.fixture(params=["tcp", "http", "exec", "interface"])
def services(lab: Lab, request: pytest.FixtureRequest) -> Iterator[Services]:
    s = Services(lab, request.param)
    try:
        yield s
    finally:
        s.teardown()


def test_failing_check_moves_the_vip_and_recovery_makes_the_host_eligible_again(
    lab: Lab, agents: Agents, services: Services
) -> None:
    svc = {h.role: services.setup(h) for h in lab.hosts}
    configure(agents, services.check())
    agents.start_all()
    ip = lab.vip4(0)
    old = agents.wait_single_holder(ip)
    old_host = lab.host(old)
    svc[old].brk()
    new = agents.wait_other_holder(ip, old, 10)
    released = time.monotonic()
    assert lab.probe_once(str(ip))["by"] == new
    assert etcd_holder(lab, agents.cluster, "web4") == new
    wait_until(
        lambda: (member_health(lab, agents.cluster, old) or "").startswith("unhealthy"),
        5,
        what=f"{old}'s member record to say web4 is unhealthy there",
        detail=agents.dump,
    )
    assert old not in agents.holders(ip)  # it let go for its check: it still runs, unhealthy
    (third,) = (h for h in lab.hosts if h.role not in (old, new))

    # While unhealthy it does not campaign. Leave it the only other candidate, then have the
    # holder let go: campaigning would win it the VIP at once.
    agents.signal(third, signal.SIGTERM)
    assert agents.wait_exit(third, 5) == 0, agents.log(third)
    with start_address_recorder(lab, [old_host], tag="unhealthy") as recorder:
        agents.signal(lab.host(new), signal.SIGTERM)
        assert agents.wait_exit(lab.host(new), 5) == 0, agents.log(lab.host(new))
        assert etcd_holder(lab, agents.cluster, "web4") is None  # released on shutdown
        # Watch past its hold-down (counted from the release for the check), so that only
        # its health can be what keeps it out.
        until = max(time.monotonic() + 1.0, released + HOLD_DOWN + 1.0)
        while time.monotonic() < until:
            assert etcd_holder(lab, agents.cluster, "web4") is None, agents.log(old_host)
            time.sleep(0.1)
        events = recorder.stop()
    bound = [e for e in events if e.host == old and e.ip == ip and e.added]
    assert bound == [], f"{old} bound {ip} while unhealthy: {bound}\n{agents.log(old_host)}"
    assert agents.holders(ip) == []

    # Recovery does not move the VIP back (no preemption)...
    agents.start(lab.host(new))
    assert agents.wait_single_holder(ip) == new  # the only healthy candidate
    svc[old].fix()
    wait_until(
        lambda: member_health(lab, agents.cluster, old) == "healthy",
        10,
        what=f"{old}'s member record to say web4 is healthy there again",
        detail=agents.dump,
    )
    assert agents.holders(ip) == [new]
    assert etcd_holder(lab, agents.cluster, "web4") == new
    # ... but makes the host eligible again: it takes over when the holder lets go.
    agents.signal(lab.host(new), signal.SIGTERM)
    assert agents.wait_exit(lab.host(new), 5) == 0, agents.log(lab.host(new))
    assert agents.wait_single_holder(ip) == old
    assert etcd_holder(lab, agents.cluster, "web4") == old


def test_flapping_check_moves_are_bounded_by_hold_down(lab: Lab, agents: Agents) -> None:
    flags = {h.role: lab.workdir / f"healthy-{h.role}" for h in lab.hosts[:2]}
    for f in flags.values():
        f.touch()
    check = {
        "type": "exec",
        "command": f"test -e {lab.workdir}/healthy-$HAAGENT_NODE",
        "interval": 0.1,
        "timeout": 0.1,
        "rise": 1,
        "fall": 1,
    }
    configure(agents, check, hold_down=2.0)
    for h in lab.hosts[:2]:
        agents.start(h)
    agents.wait_single_holder(lab.vip4(0))
    stop = threading.Event()
    seconds = 6.0

    def flap() -> None:  # each host's check flips every 0.4 s, the two out of phase
        end = time.monotonic() + seconds
        n = 0
        while not stop.is_set() and time.monotonic() < end:
            for i, f in enumerate(flags.values()):
                if (n + i) % 2:
                    f.unlink(missing_ok=True)
                else:
                    f.touch()
            n += 1
            stop.wait(0.4)

    t = threading.Thread(target=flap)
    with start_address_recorder(lab, lab.hosts[:2], tag="flap") as recorder:
        t.start()
        try:
            t.join(seconds + 5)
        finally:
            stop.set()
            for f in flags.values():
                f.unlink(missing_ok=True)
        events = recorder.stop()
    # A move is a host binding the VIP while the checks flap; the binding of the holder from
    # before is in the recorder's initial snapshot and begins at its start.
    intervals = holding_intervals(events, lab.vip4(0), until=time.time())
    moves = sum(1 for ivs in intervals.values() for s, _ in ivs if s > recorder.started_at)
    # Without damping the VIP would follow every flip (~15 moves); hold_down 2 s allows
    # each host one acquisition per 2 s at most.
    assert 1 <= moves <= 8, f"{moves} moves: {intervals}\n{agents.dump()}"


def test_when_no_host_is_healthy_the_vip_is_released_by_default(lab: Lab, agents: Agents) -> None:
    flags = {h.role: lab.workdir / f"healthy-{h.role}" for h in lab.hosts}
    for f in flags.values():
        f.touch()
    configure(
        agents, {"type": "exec", "command": f"test -e {lab.workdir}/healthy-$HAAGENT_NODE", **FAST}
    )
    agents.start_all()
    ip = lab.vip4(0)
    agents.wait_single_holder(ip)
    for f in flags.values():
        f.unlink()
    wait_until(lambda: agents.holders(ip) == [], 5, what=f"{ip} bound nowhere", detail=agents.dump)
    assert etcd_holder(lab, agents.cluster, "web4") is None

    # Each agent publishes its member record after acting on the check: allow it a moment.
    def all_unhealthy() -> bool:
        return all(
            (member_health(lab, agents.cluster, h.role) or "").startswith("unhealthy")
            for h in lab.hosts
        )

    wait_until(all_unhealthy, 5, what="every member record to say unhealthy", detail=agents.dump)
    assert agents.holders(ip) == [] and etcd_holder(lab, agents.cluster, "web4") is None
    flags["h2"].touch()
    assert agents.wait_single_holder(ip) == "h2"


def test_when_all_unhealthy_keep_leaves_it_on_the_last_holder(lab: Lab, agents: Agents) -> None:
    flags = {h.role: lab.workdir / f"healthy-{h.role}" for h in lab.hosts}
    for f in flags.values():
        f.touch()
    configure(
        agents,
        {"type": "exec", "command": f"test -e {lab.workdir}/healthy-$HAAGENT_NODE", **FAST},
        when_all_unhealthy="keep",
    )
    agents.start_all()
    ip = lab.vip4(0)
    holder = agents.wait_single_holder(ip)
    others = [h.role for h in lab.hosts if h.role != holder]
    for role in others:
        flags[role].unlink()

    def unhealthy(role: str) -> bool:
        return (member_health(lab, agents.cluster, role) or "").startswith("unhealthy")

    for role in others:
        wait_until(
            lambda: unhealthy(role),  # noqa: B023
            5,
            what=f"{role}'s member record to say unhealthy",
            detail=agents.dump,
        )
    flags[holder].unlink()
    # The holder publishes its health after acting on its check (here: keeping the VIP).
    wait_until(
        lambda: unhealthy(holder),
        5,
        what=f"the holder {holder}'s member record to say unhealthy",
        detail=agents.dump,
    )
    for _ in range(10):  # and it stays put: a second of watching
        assert agents.holders(ip) == [holder]
        assert etcd_holder(lab, agents.cluster, "web4") == holder
        time.sleep(0.1)
    # As soon as another host is healthy again, the unhealthy holder lets it go.
    flags[others[0]].touch()
    wait_until(
        lambda: agents.holders(ip) == [others[0]],
        10,
        what=f"{ip} to move to {others[0]}, healthy again",
        detail=agents.dump,
    )


def test_notify_hooks_run_with_their_environment_and_never_block(lab: Lab, agents: Agents) -> None:
    log = lab.workdir / "notify.log"
    hook = f'echo "$HAAGENT_EVENT $HAAGENT_VIP $HAAGENT_ADDRESS $HAAGENT_NODE" >> {log}'
    agents.vips = [("web4", str(lab.vip4(0)))]
    agents.extra = {
        "vips": [
            {
                "name": "web4",
                "address": str(lab.vip4(0)),
                "interface": "eth0",
                # on_release hangs: it must be killed at its timeout and hold nothing up.
                "notify": {"on_acquire": hook, "on_release": f"{hook}; sleep 60", "timeout": 1},
            }
        ]
    }
    host = lab.hosts[0]
    agents.start(host)
    assert agents.wait_single_holder(lab.vip4(0)) == host.role
    wait_until(
        lambda: log.exists() and "acquire" in log.read_text(), 5, what="the on_acquire hook to run"
    )
    assert log.read_text().splitlines()[0] == f"acquire web4 {lab.vip4(0)} h1"
    agents.signal(host, signal.SIGTERM)
    assert agents.wait_exit(host, 4) == 0, agents.log(host)  # not held up by the hung hook
    assert f"release web4 {lab.vip4(0)} h1" in log.read_text()

"""Placement end to end: priorities, preemption, ``haagent move`` and ``drain``, the spread.

Real agents, a real etcd, a client in its own namespace. Every handover is judged by the
history checker (address events of every host against the client's probes): zero double
holders, zero interleaved answers. These tests run placement's defaults except where a test
says otherwise (the other lab tests turn preemption off: tests/lab/conftest.py).
"""

from __future__ import annotations

import signal
import sys
import time
from collections import Counter
from collections.abc import Iterator
from ipaddress import IPv4Address, ip_address
from typing import Any

import pytest

from bench.observe import HolderWatch, count_key_events, parse_vips, snapshot
from haagent.lab.history import check_history, start_address_recorder
from haagent.lab.probe import read_records, summarize
from haagent.lab.topology import Lab
from haagent.lab.wait import poll_until, wait_until
from tests.lab.conftest import Agents, etcd_holder, remove_addresses, start_probe

pytestmark = pytest.mark.lab

FAST = {"preempt_delay": 1.0, "startup_wait": 0.5}  # seconds, so the tests stay short
_N = iter(range(1, 1000))


@pytest.fixture
def agents(lab: Lab) -> Iterator[Agents]:
    a = Agents(lab, f"{lab.lab_id}-p{next(_N)}", vips=[("web4", str(lab.vip4(0)))])
    try:
        yield a
    finally:
        a.stop_all()
        remove_addresses(lab, parse_vips(a.vips).values())


def cli(lab: Lab, agents: Agents, *args: str) -> tuple[int, str]:
    argv = [
        *(sys.executable, "-m", "haagent"),
        *args,
        *("--endpoints", ",".join(lab.etcd_endpoints), "--cluster", agents.cluster),
    ]
    proc = lab.run(lab.client, argv, check=False, timeout=60)
    out = proc.stdout + proc.stderr
    assert "Traceback" not in out, out
    return proc.returncode, out


def judged_handover(
    lab: Lab, agents: Agents, v4: IPv4Address, old: str, act: Any, tag: str
) -> tuple[str, float]:
    """Probe the VIP and record every host's addresses while ``act()`` runs; assert one clean
    switch away from ``old`` (no double holder, no interleaved answer); the new holder and the
    client's longest gap in ms."""
    recorder = start_address_recorder(lab, lab.hosts, tag=f"{agents.cluster}-{tag}")
    try:
        out, probe = start_probe(lab, v4, 6.0, f"{agents.cluster}-{tag}")
        time.sleep(0.3)
        act()
        probe.wait(timeout=30)
        events = recorder.stop()
    finally:
        recorder.stop()
    records = read_records(out)
    s = summarize(records)
    assert s.responders and s.responders[0] == old, (s.responders, agents.dump())
    assert len(s.responders) == 2, (s.responders, s.transitions, agents.dump())
    new = s.responders[1]
    assert [(a, b) for _, a, b in s.transitions] == [(old, new)], s.transitions
    report = check_history(events, records, v4, until=time.time())
    assert report.ok, (report.double_holder, report.interleavings, report.intervals)
    assert s.longest_gap_ms is not None
    return new, s.longest_gap_ms


@pytest.mark.parametrize("preempt", [True, False], ids=["preempt", "no-preempt"])
def test_priorities_are_respected_and_a_returning_host_preempts_only_with_preempt(
    lab: Lab, agents: Agents, preempt: bool
) -> None:
    agents.extra = {"placement": {**FAST, "preempt": preempt}}
    v4 = lab.vip4(0)
    agents.vips = [("web4", str(v4))]
    for h in lab.hosts:  # h2 first, then h3, then h1
        prio = {"h1": 100, "h2": 200, "h3": 150}[h.role]
        agents.extra["placement"] = {**FAST, "preempt": preempt, "priority": prio}
        agents.start(h, wait=False)
    for h in lab.hosts:
        agents.wait_member(h)
    assert agents.wait_single_holder(v4) == "h2"
    agents.signal(lab.host("h2"), signal.SIGTERM)
    assert agents.wait_exit(lab.host("h2"), 5) == 0
    wait_until(lambda: agents.holders(v4) == ["h3"], 5, what="h3 (priority 150) to take over")
    agents.extra["placement"] = {**FAST, "preempt": preempt, "priority": 200}
    if preempt:
        new, gap = judged_handover(
            lab, agents, v4, "h3", lambda: agents.start(lab.host("h2")), "back"
        )
        assert new == "h2"
        assert gap < 1000, gap  # a graceful handover, not a failover
    else:
        agents.start(lab.host("h2"))
        time.sleep(FAST["preempt_delay"] + 2.0)  # what preemption would have waited, and more
        assert agents.holders(v4) == ["h3"]
    assert etcd_holder(lab, agents.cluster, "web4") == agents.holders(v4)[0]


def test_move_hands_over_gracefully_and_refuses_what_cannot_be_done(
    lab: Lab, agents: Agents
) -> None:
    agents.extra = {"placement": FAST}
    agents.start_all()
    v4 = lab.vip4(0)
    old = agents.wait_single_holder(v4)
    target = next(h.role for h in lab.hosts if h.role != old)

    result: dict[str, tuple[int, str]] = {}

    def move() -> None:
        result["move"] = cli(lab, agents, "move", "web4", "--to", target, "--wait")

    new, gap = judged_handover(lab, agents, v4, old, move, "move")
    code, out = result["move"]
    assert code == 0, out
    assert new == target and gap < 1000, (new, gap)
    # The pin stays: the VIP is not preempted back, even though it ranked first elsewhere.
    time.sleep(FAST["preempt_delay"] + 1.0)
    assert agents.holders(v4) == [target]
    # Refusals: a node that does not exist; the holder itself is not a move.
    code, out = cli(lab, agents, "move", "web4", "--to", "nope")
    assert code != 0 and "nope" in out, out
    code, out = cli(lab, agents, "move", "web4", "--to", target)
    assert code == 0 and "already" in out, out
    # Without --to: the next-ranked host, and then --clear removes the pin.
    code, out = cli(lab, agents, "move", "web4", "--wait")
    assert code == 0, out
    assert agents.wait_single_holder(v4) != target
    code, out = cli(lab, agents, "move", "web4", "--clear")
    assert code == 0, out


def test_drain_hands_everything_over_and_refuses_to_strand_a_vip(lab: Lab, agents: Agents) -> None:
    agents.extra = {"placement": FAST}
    agents.start_all()
    v4 = lab.vip4(0)
    old = agents.wait_single_holder(v4)
    others = [h.role for h in lab.hosts if h.role != old]
    code, out = cli(lab, agents, "drain", old, "--wait")
    assert code == 0, out
    new = agents.wait_single_holder(v4)
    assert new != old
    wait_until(
        lambda: (agents.member(old) or {}).get("draining") is True,
        5,
        what=f"{old}'s member record to say draining",
    )
    code, out = cli(lab, agents, "drain", old)  # idempotent
    assert code == 0, out
    # Draining the other two would leave web4 with nobody: the last one is refused.
    code, out = cli(lab, agents, "drain", others[0] if others[0] != new else others[1])
    assert code == 0, out
    code, out = cli(lab, agents, "drain", new)
    assert code != 0 and "web4" in out, out
    assert agents.holders(v4) == [new]
    # Undrained, the first node campaigns again (it may take the VIP back by preemption).
    for node in (old, *others):
        code, out = cli(lab, agents, "undrain", node)
        assert code == 0, out
    wait_until(
        lambda: all((agents.member(h.role) or {}).get("draining") is False for h in lab.hosts),
        5,
        what="every member record to say not draining",
    )
    agents.wait_settled()


def test_100_vips_spread_evenly_and_a_leaving_host_moves_only_its_share(
    lab: Lab, agents: Agents
) -> None:
    agents.vips = Lab.scale_vips(100)
    agents.extra = {"placement": {"preempt_delay": 1.0}}  # start-up wait: the default
    vips = parse_vips(agents.vips)
    watch = HolderWatch(lab, agents.cluster, tag=agents.cluster).start()
    try:
        agents.start_all()
        first = converge(agents, vips)
        spread = Counter(first.etcd.values())
        assert all(abs(n - 100 / 3) <= 0.2 * 100 / 3 for n in spread.values()), spread
        assert set(spread) == {"h1", "h2", "h3"}, spread
        watch.caught_up(first.revision)
        cold = count_key_events(watch.events(), 0, first.revision)
        assert cold.acquires <= 100, f"cold start: {cold.acquires} acquires for 100 VIPs"
        leaving = "h3"
        own = {v for v, n in first.etcd.items() if n == leaving}
        agents.signal(lab.host(leaving), signal.SIGTERM)
        assert agents.wait_exit(lab.host(leaving), 10) == 0
        after = converge(agents, vips, without=leaving)
        time.sleep(2.0)  # a preemption the departure caused would show by now (delay 1 s)
        after = converge(agents, vips, without=leaving)
        moved = {v for v in vips if first.etcd[v] != after.etcd[v]}
        assert own <= moved, "a VIP of the leaving host did not move"
        extra = moved - own
        assert len(extra) <= 0.2 * len(own) + 1, f"{len(extra)} VIPs of staying hosts moved"
    finally:
        watch.stop()


def converge(agents: Agents, vips: dict[str, Any], *, without: str | None = None) -> Any:
    hosts = [h for h in agents.lab.hosts if h.role != without]

    def done() -> Any:
        s = snapshot(agents.lab, agents.cluster, vips, hosts)
        ok = len(s.etcd) == len(vips) and all(
            ip_address(str(vips[name])) in s.kernel.get(node, frozenset())
            for name, node in s.etcd.items()
        )
        return s if ok and sum(len(b) for b in s.kernel.values()) == len(vips) else None

    got = poll_until(done, 30, 0.25)
    assert got is not None, f"not converged\n{agents.dump()}"
    return got

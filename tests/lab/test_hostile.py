"""Rude neighbours, in the lab with real etcd: duplicate identities, foreign writes to our
keys, newer records, forged key names and missing capabilities never crash an agent, never
cost a VIP its holder, and each refusal is one line naming the cause."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from haagent.lab.history import check_history, start_address_recorder
from haagent.lab.topology import Lab, Node
from haagent.lab.wait import wait_until
from tests.lab.conftest import Agents, etcd_holder, holder_record, member_record

pytestmark = pytest.mark.lab


REFUSE_TIMEOUT = 20.0  # s an agent that is to refuse to start may take to exit
_REFUSED = itertools.count(1)


def _run_refused(
    lab: Lab, host: Node, cfg: Path, state_dir: str, *, wrap: Sequence[str] = ()
) -> tuple[int, str]:
    """Run an agent on ``host`` that is expected to refuse to start (``wrap``: a command it
    runs under); its exit code and output. Should it start after all, it is stopped
    (SIGTERM: it lets go of what it took, its fence with it) before the test fails."""
    log = lab.workdir / f"{host.role}.refused.{next(_REFUSED)}.log"
    argv = [*wrap, sys.executable, "-m", "haagent", "run", "-c", str(cfg)]
    proc = lab.popen(host, [*argv, "--state-dir", state_dir], log=log)
    try:
        code: int | None = proc.wait(REFUSE_TIMEOUT)
    except subprocess.TimeoutExpired:
        code = None
    finally:
        Lab.stop(proc)
    out = log.read_text(errors="replace")
    assert code is not None, f"still running after {REFUSE_TIMEOUT:g} s, not refused:\n{out}"
    assert "Traceback" not in out, out
    return code, out


def _start_raw(
    lab: Lab, agents: Agents, host_index: int, *, node: str, state_dir: str = ""
) -> tuple[int, str]:
    """Start an agent on ``lab.hosts[host_index]`` named ``node``; return its exit code
    (it is expected to refuse to start)."""
    host = lab.hosts[host_index]
    cfg = lab.write_agent_config(host, agents.vips, extra={"cluster": agents.cluster, "node": node})
    state = state_dir or str(lab.workdir / f"state-{host.role}-{node}-dup")
    return _run_refused(lab, host, cfg, state)


def _h1_holds_web4(lab: Lab, agents: Agents) -> Node:
    h1 = lab.hosts[0]
    agents.start(h1)
    assert agents.wait_single_holder(lab.vip4(0)) == "h1"
    return h1


def test_a_second_host_with_a_taken_node_name_stops_before_touching_anything(
    lab: Lab, agents: Agents
) -> None:
    _h1_holds_web4(lab, agents)
    lease = member_record(lab, agents.cluster, "h1")["lease"]  # type: ignore[index]
    code, out = _start_raw(lab, agents, 1, node="h1")
    assert code == 1
    [line] = [ln for ln in out.splitlines() if "ERROR" in ln]
    assert "node name 'h1' is already used by another running agent at 198.51.100.11" in line
    assert "give every host its own node name" in line
    # The first h1 kept its record and its VIPs; the impostor bound nothing.
    assert member_record(lab, agents.cluster, "h1")["lease"] == lease  # type: ignore[index]
    assert agents.holders(lab.vip4(0)) == ["h1"]
    assert lab.vip4(0) not in lab.bound(lab.hosts[1])


def test_a_second_agent_on_the_same_host_is_refused_whatever_its_state_dir(
    lab: Lab, agents: Agents
) -> None:
    h1 = _h1_holds_web4(lab, agents)
    code, out = _start_raw(lab, agents, 0, node="h1", state_dir=str(lab.workdir / "other"))
    assert code == 1
    assert "another haagent already runs for cluster" in out and "on this host" in out
    assert "removed stale address" not in out
    assert lab.vip4(0) in lab.bound(h1)  # never removed, not even for a moment it could see


def test_member_record_deleted_or_overwritten_is_restored(lab: Lab, agents: Agents) -> None:
    h2 = lab.hosts[1]
    agents.start(h2)
    key = f"/haagent/v1/{agents.cluster}/members/h2"
    original = member_record(lab, agents.cluster, "h2")
    assert original is not None
    lab.etcd.etcdctl("del", key)
    wait_until(
        lambda: member_record(lab, agents.cluster, "h2"),
        5,
        what="h2 to write its deleted member record again",
    )
    lab.etcd.etcdctl("put", key, "garbage")  # on no lease: not a record anyone may trust

    def restored() -> bool:
        out = lab.etcd.etcdctl("get", "--print-value-only", key).stdout.strip()
        try:
            return bool(json.loads(out)["lease"] == original["lease"])
        except (ValueError, KeyError, TypeError):
            return False

    wait_until(restored, 5, what="h2 to replace the garbage over its member record")
    assert agents.procs["h2"].poll() is None


def test_a_newer_schema_holder_on_a_live_lease_is_respected(lab: Lab, agents: Agents) -> None:
    grant = lab.etcd.etcdctl("lease", "grant", "60").stdout.split()
    lease = grant[1]  # "lease 694d... granted with TTL(60s)"
    key = f"/haagent/v1/{agents.cluster}/vips/web4/holder"
    newer = json.dumps({"schema": "haagent.holder/v2", "node": "h9", "holder": {"x": 1}})
    lab.etcd.etcdctl("put", key, newer, f"--lease={lease}")
    agents.start_all()
    agents.wait_single_holder(lab.vip6(0))
    time.sleep(1.0)  # the point: nobody deletes it, however long they look
    got = lab.etcd.etcdctl("get", "--print-value-only", key).stdout.strip()
    assert json.loads(got)["schema"] == "haagent.holder/v2"
    assert agents.holders(lab.vip4(0)) == []
    # Once its lease goes, the VIP is campaigned for as usual.
    lab.etcd.etcdctl("lease", "revoke", lease)
    agents.wait_single_holder(lab.vip4(0))


def test_key_names_from_etcd_never_forge_log_lines(lab: Lab, agents: Agents) -> None:
    agents.start(lab.hosts[0])
    forged = f"/haagent/v1/{agents.cluster}/members/x\n2026-01-01T00:00:00.000Z ERROR FORGED"
    lab.etcd.etcdctl("put", forged, "{}")
    wait_until(
        lambda: "not a key this version knows" in agents.log(lab.hosts[0]),
        5,
        what="the agent to notice the foreign key",
    )
    log = agents.log(lab.hosts[0])
    assert not any(line.startswith("2026-01-01") for line in log.splitlines()), log


def test_missing_capability_is_one_line_and_no_campaign(lab: Lab, agents: Agents) -> None:
    host = lab.hosts[2]
    cfg = lab.write_agent_config(host, agents.vips, extra={"cluster": agents.cluster})
    no_raw = ("setpriv", "--bounding-set", "-net_raw", "--inh-caps", "-net_raw")
    code, out = _run_refused(lab, host, cfg, str(lab.workdir / "state-nocap"), wrap=no_raw)
    assert code == 1, out
    assert "missing capability CAP_NET_RAW" in out and "AmbientCapabilities" in out
    assert etcd_holder(lab, agents.cluster, "web4") is None


@pytest.mark.parametrize("family", [4, 6])
def test_third_party_deletes_and_overwrites_of_a_held_key_never_make_two_holders(
    lab: Lab, agents: Agents, family: int
) -> None:
    """50 foreign writes to the live holder key (delete, garbage on no lease, a future
    schema): whoever wins next binds only once the old holder confirmed or its lease is gone;
    the history checker, over kernel address events of every host, finds no overlap."""
    agents.start_all()
    ip = lab.vip4(0) if family == 4 else lab.vip6(0)
    vip = "web4" if family == 4 else "web6"
    key = f"/haagent/v1/{agents.cluster}/vips/{vip}/holder"
    agents.wait_single_holder(ip)
    with start_address_recorder(lab, lab.hosts, tag=f"tamper{family}") as recorder:
        for i in range(50):
            before = holder_record(lab, agents.cluster, vip)
            if i % 3 == 0:
                lab.etcd.etcdctl("del", key)
            elif i % 3 == 1:
                lab.etcd.etcdctl("put", key, "garbage")
            else:
                lab.etcd.etcdctl("put", key, json.dumps({"schema": "haagent.holder/v2"}))

            def rewon(before: object = before) -> bool:
                now = holder_record(lab, agents.cluster, vip)
                return now is not None and now != before and len(agents.holders(ip)) == 1

            wait_until(rewon, 10, 0.02, what=f"{vip} held again after foreign write #{i + 1}")
        events = recorder.stop()
    report = check_history(events, [], ip, until=time.time())
    assert not report.double_holder, f"two holders: {report.double_holder}\n{agents.dump()}"
    for h in lab.hosts:
        assert "Traceback" not in agents.log(h)


def test_a_holder_that_loses_its_carrier_releases_at_once_and_can_hold_again(
    lab: Lab, agents: Agents
) -> None:
    """Not at the lease deadline: nothing can be served over a link without carrier."""
    agents.ttl = 10  # a deadline far away: only the link event can explain a quick release
    agents.margin = 2.0
    agents.start_all()
    ip = lab.vip4(0)
    old = agents.wait_single_holder(ip)
    host = lab.host(old)
    started = time.monotonic()
    lab.cut_link(host)
    try:
        wait_until(
            lambda: ip not in lab.bound(host), 3, 0.02, what=f"{old} to drop {ip} without carrier"
        )
        took = time.monotonic() - started
        assert took < 3, took  # the deadline would be ttl - margin = 8 s away
        assert "eth0 lost its carrier" in agents.log(host)
    finally:
        lab.restore_link(host)
    # Back on the segment: its resign, retried meanwhile, goes through; the VIP is held again
    # by exactly one host (the old one may win it back: it is eligible again).
    agents.wait_single_holder(ip, timeout=agents.ttl + 5)
    assert "has its carrier back" in agents.log(host)


@pytest.mark.parametrize("family", [4, 6])
def test_a_vip_equal_to_the_hosts_own_address_is_refused_and_never_removed(
    lab: Lab, agents: Agents, family: int
) -> None:
    """The data-loss defect: ``address:`` equal to eth0's own address. check-config and run
    refuse it with one line, and neither run nor cleanup removes the host's address, which
    carries haagent's etcd traffic."""
    h2 = lab.hosts[1]
    own = str(h2.ipv4 if family == 4 else h2.ipv6)
    cfg = lab.write_agent_config(h2, [("own", own)], extra={"cluster": agents.cluster})
    check = lab.run(h2, [sys.executable, "-m", "haagent", "check-config", str(cfg)], check=False)
    assert check.returncode == 1, check.stdout + check.stderr
    assert "Traceback" not in check.stderr
    [line] = check.stderr.splitlines()
    assert f"vips[0].address: vip own: {own} is already configured on this host outside" in line
    assert f"/{24 if family == 4 else 64} on {h2.ifname}" in line, line
    code, out = _run_refused(lab, h2, cfg, str(lab.workdir / "state-own"))
    assert code == 1
    [line] = [ln for ln in out.splitlines() if "ERROR" in ln]
    assert f"{own} is already configured on this host outside haagent" in line, out
    cleanup = lab.run(h2, [sys.executable, "-m", "haagent", "cleanup", "-c", str(cfg)])
    assert "not bound; left alone:" in cleanup.stdout, cleanup.stdout
    addrs = lab.run(h2, ["ip", "-o", "addr", "show", "dev", h2.ifname]).stdout
    assert f" {own}/" in addrs, addrs

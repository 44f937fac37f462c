"""The read-only CLI as a user runs it: subprocesses against a real etcd, during real failovers.

One lab for the module: etcd with TLS client certificates and auth, three agents as the
``haagent`` user, and every CLI call made from the client namespace as ``haagent-ro``, a user
whose role may only *read* ``/haagent/v1/`` (docs/security.md, "A read-only role").
"""

from __future__ import annotations

import json
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from haagent.cli.changes import LEASE_ENDED
from haagent.lab.topology import Lab
from haagent.lab.wait import wait_until
from tests.lab.conftest import Agents, etcd_holder, remove_addresses, require

pytestmark = pytest.mark.lab

RO_USER = "haagent-ro"
_COUNT = iter(range(1, 1000))


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    require("ip", "etcd", "etcdctl", "nft", "openssl")
    with Lab(hosts=3, etcd_tls=True, etcd_auth=True) as lab:
        # docs/security.md: the read-only role, made exactly as documented there.
        for step in (
            ("role", "add", RO_USER),
            ("role", "grant-permission", RO_USER, "--prefix=true", "read", "/haagent/v1/"),
            ("user", "add", RO_USER, "--no-password"),
            ("user", "grant-role", RO_USER, RO_USER),
        ):
            lab.etcd.etcdctl(*step)
        yield lab


@pytest.fixture
def agents(lab: Lab) -> Iterator[Agents]:
    a = Agents(lab, f"{lab.lab_id}-c{next(_COUNT)}", vips=vips(lab))
    try:
        yield a
    finally:
        a.stop_all()
        remove_addresses(lab, (lab.vip4(2), lab.vip6(2)))
        for m in lab.etcd_nodes:
            if not lab.etcd.healthy(m):
                lab.etcd.stop(m)
                lab.etcd.start(m)
        lab.etcd.wait_healthy()


def vips(lab: Lab) -> list[tuple[str, str]]:
    return [("web4", str(lab.vip4(2))), ("web6", str(lab.vip6(2)))]


def identity(lab: Lab, user: str = RO_USER) -> list[str]:
    assert lab.etcd.pki is not None
    pair = lab.etcd.client_cert(user)
    return ["--cacert", str(lab.etcd.pki.ca.cert), "--cert", str(pair.cert), "--key", str(pair.key)]


def cli_argv(lab: Lab, agents: Agents, command: str, *args: str, user: str = RO_USER) -> list[str]:
    """``haagent COMMAND`` with this lab's connection options; ``args`` last, so they win."""
    return [
        *(sys.executable, "-m", "haagent", command),
        *("--endpoints", ",".join(lab.etcd_endpoints), "--cluster", agents.cluster),
        *identity(lab, user),
        *args,
    ]


def cli(lab: Lab, agents: Agents, *args: str, user: str = RO_USER) -> tuple[int, str, str]:
    proc = lab.run(lab.client, cli_argv(lab, agents, *args, user=user), check=False, timeout=30)
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc.returncode, proc.stdout, proc.stderr


def cli_json(lab: Lab, agents: Agents, *args: str) -> tuple[int, Any]:
    code, out, err = cli(lab, agents, *args, "--json")
    assert code in (0, 1), (code, out, err)
    return code, json.loads(out)


def start_watch(lab: Lab, agents: Agents, tag: str, *args: str) -> tuple[Any, Path]:
    out = lab.workdir / f"watch-{agents.cluster}-{tag}.log"
    proc = lab.popen(lab.client, cli_argv(lab, agents, "watch", "--timeout", "90", *args), log=out)
    wait_until(lambda: "watching cluster" in out.read_text(), 20, what=f"watch {tag} to start")
    return proc, out


def json_lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.startswith("{")]


def test_read_only_role_shows_status_and_members_and_cannot_write(lab: Lab, agents: Agents) -> None:
    agents.start_all()
    held = agents.wait_settled()
    # A member publishes its health after the checks rose; wait for every VIP to be held *and*
    # for each member to report itself healthy, so the standby columns are complete.
    wait_until(
        lambda: all(len(v["standby"]) == 2 for v in cli_json(lab, agents, "status")[1]["vips"]),
        15,
        what="every member healthy for every VIP",
    )
    code, data = cli_json(lab, agents, "status")
    assert code == 0 and data["all_held"] and data["cluster"] == agents.cluster
    by_name = {v["name"]: v for v in data["vips"]}
    for name, address in vips(lab):
        v = by_name[name]
        assert v["holder"] == held[name] == etcd_holder(lab, agents.cluster, name)
        assert v["spec"]["address"] == address and v["spec"]["interface"] == "eth0"
        assert v["spec"]["mode"] == "node-mac" and held[name] not in v["standby"]
        assert v["epoch"] > 0 and v["reason"] and v["held_for"].endswith("s")
    # The human table: one row per VIP with its address and holder; exit 0.
    code, out, err = cli(lab, agents, "status")
    assert code == 0, err
    row = next(line for line in out.splitlines() if " web4 " in line)
    assert f"{lab.vip4(2)}/32" in row and f" {held['web4']} " in row and "eth0" in row
    # One VIP; an unknown one; an unknown cluster, listing the ones there are.
    code, one = cli_json(lab, agents, "status", "web4")
    assert code == 0 and [v["name"] for v in one["vips"]] == ["web4"]
    code, _, err = cli(lab, agents, "status", "nosuch")
    assert code == 2 and err.strip() == (
        f"error: unknown vip 'nosuch' in cluster '{agents.cluster}' (vips: web4, web6)"
    )
    code, _, err = cli(lab, agents, "status", "--cluster", "nosuch")
    assert code == 2 and "unknown cluster 'nosuch'" in err and agents.cluster in err
    assert err.count("\n") == 1
    # members: every agent, its version, specs and health; and the table.
    code, out, err = cli(lab, agents, "members", "--json")
    assert code == 0, err
    members = {m["node"]: m for m in json.loads(out)["members"]}
    assert sorted(members) == ["h1", "h2", "h3"]
    for m in members.values():
        assert m["version"] and m["config_digest"] and m["uptime"]
        assert m["health"]["web4"]["state"] == "healthy"
    assert json.loads(out)["disagreements"] == []
    code, out, err = cli(lab, agents, "members")
    assert code == 0 and all(f" {h} " in out for h in members) and "web4: healthy" in out
    assert "warning" not in err
    # The same through the environment variables instead of options.
    assert lab.etcd.pki is not None
    pair = lab.etcd.client_cert(RO_USER)
    env = {
        "HAAGENT_ENDPOINTS": ",".join(lab.etcd_endpoints),
        "HAAGENT_CLUSTER": agents.cluster,
        "HAAGENT_CACERT": str(lab.etcd.pki.ca.cert),
        "HAAGENT_CERT": str(pair.cert),
        "HAAGENT_KEY": str(pair.key),
    }
    proc = lab.run(
        lab.client, [sys.executable, "-m", "haagent", "status"], env=env, check=False, timeout=30
    )
    assert proc.returncode == 0 and " web4 " in proc.stdout, proc.stderr
    # The role really is read-only: a write under the prefix is refused.
    put = lab.etcd.etcdctl("put", f"/haagent/v1/{agents.cluster}/x", "y", user=RO_USER, check=False)
    assert put.returncode != 0 and "permission denied" in put.stderr, put
    # A certificate whose CN is no etcd user: auth refused, one line, exit 2.
    code, _, err = cli(lab, agents, "status", user="nobody")
    assert code == 2 and err.startswith("error: etcd ") and "auth refused" in err, err
    assert err.count("\n") == 1


def test_watch_reports_a_real_failover_with_reasons(lab: Lab, agents: Agents) -> None:
    agents.start_all()
    held = agents.wait_settled()
    jproc, jout = start_watch(lab, agents, "json", "--json")
    hproc, hout = start_watch(lab, agents, "human")
    try:
        old = held["web4"]
        # The agent dies; its fence revokes its lease: holder and member keys go at once.
        agents.signal(lab.host(old), signal.SIGKILL)
        new = agents.wait_other_holder(lab.vip4(2), old, agents.ttl + 2)

        def failover() -> list[dict[str, Any]] | None:
            events = json_lines(jout)
            acquired = [e for e in events if e["event"] == "acquired" and e.get("vip") == "web4"]
            return events if acquired else None

        events = wait_until(failover, 15, what="watch --json to report the takeover")
        released = next(e for e in events if e["event"] == "released" and e["vip"] == "web4")
        acquired = next(e for e in events if e["event"] == "acquired" and e["vip"] == "web4")
        assert released["node"] == old and released["reason"] == LEASE_ENDED
        assert acquired["node"] == new and acquired["reason"]
        assert acquired["epoch"] >= released["revision"] and not acquired["reread"]
        assert any(e["event"] == "member_left" and e["node"] == old for e in events)
        assert events.index(released) < events.index(acquired)
        wait_until(
            lambda: f"acquired  web4 by {new}" in hout.read_text(),
            10,
            what="the human watch to report the takeover",
        )
        text = hout.read_text()
        assert f"released  web4 by {old}: its lease ended" in text
        assert f"left      {old}" in text
        # The dead agent comes back: the watch says it joined.
        agents.start(lab.host(old))
        wait_until(
            lambda: any(
                e["event"] == "member_joined" and e["node"] == old for e in json_lines(jout)
            ),
            15,
            what="watch to report the restarted member",
        )
        agents.wait_settled()
        code, data = cli_json(lab, agents, "status")
        assert code == 0 and data["all_held"]
    finally:
        Lab.stop(jproc)
        Lab.stop(hproc)
    assert "Traceback" not in jout.read_text() + hout.read_text()


def test_exit_codes_unheld_and_etcd_down_and_watch_survives_the_restart(
    lab: Lab, agents: Agents
) -> None:
    # web6 depends on a check that fails everywhere: no host may hold it.
    agents.extra = {
        "checks": {
            "dead": {
                "type": "tcp",
                "port": 1,
                "interval": 0.2,
                "timeout": 0.1,
                "rise": 1,
                "fall": 1,
            }
        },
        "vips": [
            {"name": "web4", "address": str(lab.vip4(2)), "interface": "eth0"},
            {"name": "web6", "address": str(lab.vip6(2)), "interface": "eth0", "checks": ["dead"]},
        ],
    }
    agents.start_all()
    agents.wait_single_holder(lab.vip4(2))

    def web6_unhealthy_everywhere() -> bool:
        _, data = cli_json(lab, agents, "members")
        return all(m["health"].get("web6", {}).get("state") == "unhealthy" for m in data["members"])

    wait_until(web6_unhealthy_everywhere, 15, what="web6 unhealthy on every member")
    code, out, _ = cli(lab, agents, "status")
    assert code == 1 and "not held: web6" in out and "no healthy member" in out
    code, data = cli_json(lab, agents, "status")
    assert code == 1 and not data["all_held"]
    web6 = next(v for v in data["vips"] if v["name"] == "web6")
    assert web6["state"] == "unheld" and not web6["healthy_somewhere"] and web6["standby"] == []
    assert cli(lab, agents, "status", "web4")[0] == 0
    assert cli(lab, agents, "status", "web6")[0] == 1
    # The failing check's detail, per member.
    code, data = cli_json(lab, agents, "members")
    failing = data["members"][0]["health"]["web6"]["failing"]
    assert failing and failing[0]["check"] == "dead" and failing[0]["detail"], failing

    wproc, wout = start_watch(lab, agents, "restart", "--json")
    try:
        etcd = lab.etcd_nodes[0]
        lab.etcd.stop(etcd)
        code, _, err = cli(lab, agents, "status", "--etcd-timeout", "0.5")
        assert code == 2 and err.count("\n") == 1, err
        assert err.startswith(f"error: etcd not reachable: {lab.etcd_endpoints[0]}: "), err
        wait_until(
            lambda: any(e["event"] == "watch_lost" for e in json_lines(wout)),
            15,
            what="watch to notice etcd going away",
        )
        lab.etcd.start(etcd)
        lab.etcd.wait_healthy()
        wait_until(
            lambda: any(e["event"] == "reread" for e in json_lines(wout)),
            20,
            what="watch to resume and re-read after etcd came back",
        )
        # It still reports changes after the restart: a member leaves.
        agents.signal(lab.hosts[2], signal.SIGTERM)
        assert agents.wait_exit(lab.hosts[2], 5) == 0
        wait_until(
            lambda: any(
                e["event"] == "member_left" and e["node"] == lab.hosts[2].role
                for e in json_lines(wout)
            ),
            15,
            what="watch to report a member leaving after the etcd restart",
        )
        wait_until(lambda: cli(lab, agents, "status", "web4")[0] == 0, 20, what="web4 held")
    finally:
        Lab.stop(wproc)
    assert "Traceback" not in wout.read_text()

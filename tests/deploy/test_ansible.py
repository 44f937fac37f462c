"""ansible/ for real: the haagent role on three booted Debian hosts, under real systemd.

The hosts are Debian bookworm roots (debootstrap, minbase plus a few packages), built once and
cached under /var/cache/haagent-deploy-test/ by a hash of their package list, copied for each
target and booted with ``systemd-nspawn -b`` (systemd as PID 1) inside the network namespace of
one of the lab's hosts: the containers are the lab's h1..h3, on its bridge, next to its etcd
(TLS with client certificates) and its client. ansible-playbook reaches them through the
``nsenter`` connection plugin next to this file (no ssh, no collection). haagent is installed
from a wheel built from this tree, its dependencies from a wheelhouse downloaded once and
cached, so the hosts install offline.

One deployment for the module; the tests run in order on it: files and unit, the liveness key
the role generated (the same bytes on every host, the agents hearing each other), election and
a failover by ``systemctl stop``, idempotence, a refused bad VIP, a reload on a config change,
a refused short liveness key, and last fast failover turned off on h1 while h2 and h3 get a
key from ansible-vault.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from ipaddress import ip_address
from pathlib import Path
from typing import Any

import pytest
import yaml

from haagent.lab.topology import Lab
from haagent.lab.wait import wait_until
from tests.deploy.harness import (
    ANSIBLE,
    CAP_NET_ADMIN,
    CAP_NET_RAW,
    REPO,
    UNIT,
    VENV_BIN,
    WORK,
    Container,
    _run,
    base_root,
    booted_hosts,
    playbook,
    ran,
    task_results,
    wheel,
    wheelhouse,
)
from tests.lab.conftest import etcd_holder, member_record, require

pytestmark = pytest.mark.lab

KEY = "/etc/haagent/liveness.key"
RESTART_TASK = "Restart when the config changed a section only a restart applies"
METRICS_PORT = 9187


# ------------------------------------------------------------------------------- the play


@dataclass
class Deployment:
    lab: Lab
    hosts: list[Container]
    workdir: Path
    vars: dict[str, Any]
    runs: list[Path] = field(default_factory=list)

    @property
    def cluster(self) -> str:
        return str(self.vars["haagent_cluster"])

    def host(self, role: str) -> Container:
        return next(c for c in self.hosts if c.node.role == role)

    def play(
        self,
        extra: dict[str, Any] | None = None,
        *,
        host_vars: dict[str, dict[str, Any]] | None = None,
        args: tuple[str, ...] = (),
    ) -> tuple[int, dict[str, Any]]:
        """ansible-playbook site.yml on the three hosts: (exit code, json callback output)."""
        hv = host_vars or {}
        inventory = {
            "all": {
                "children": {
                    "haagent": {
                        "hosts": {
                            c.node.role: {"ansible_host": str(c.leader), **hv.get(c.node.role, {})}
                            for c in self.hosts
                        },
                        "vars": {
                            "ansible_connection": "nsenter",
                            "ansible_python_interpreter": "/usr/bin/python3",
                            **self.vars,
                        },
                    }
                }
            }
        }
        rc, result, log = playbook(
            self.workdir,
            inventory,
            {"haagent_serial": "100%", **(extra or {})},
            len(self.runs),
            args,
        )
        self.runs.append(log)
        return rc, result

    @property
    def key_store(self) -> Path:
        """Where the role keeps the key it generated: next to the inventory (the workdir)."""
        return self.workdir / "credentials" / f"haagent-liveness-{self.cluster}.key"

    def holder(self, vip: str) -> str | None:
        return etcd_holder(self.lab, self.cluster, vip)

    def bound_on(self, address: str) -> list[str]:
        ip = ip_address(address)
        return [
            c.node.role for c in self.hosts if ip in self.lab.bound(c.node, all_interfaces=True)
        ]


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    require("ip", "etcd", "etcdctl", "nft", "openssl", "debootstrap", "systemd-nspawn", "nsenter")
    started = time.monotonic()
    base = base_root()
    house = wheelhouse()
    built = wheel(tmp_path_factory.mktemp("wheel"))
    print(f"images ready in {time.monotonic() - started:.1f} s")
    with Lab(hosts=3, etcd_tls=True) as lab:
        workdir = WORK / lab.lab_id
        with booted_hosts(lab, base, workdir) as hosts:
            for c in hosts:
                lab.start_responder(c.node)
            print(f"hosts booted in {time.monotonic() - started:.1f} s")
            assert lab.etcd.pki is not None
            cert = lab.etcd.client_cert("haagent")
            variables: dict[str, Any] = {
                "haagent_wheel": str(built),
                "haagent_wheelhouse": str(house),
                "haagent_cluster": f"{lab.lab_id}-deploy",
                "haagent_etcd_endpoints": lab.etcd_endpoints,
                "haagent_etcd_timeout": 0.5,
                "haagent_etcd_tls_ca": lab.etcd.pki.ca.cert.read_text(),
                "haagent_etcd_tls_cert": cert.cert.read_text(),
                "haagent_etcd_tls_key": cert.key.read_text(),
                "haagent_lease_ttl": 3,
                "haagent_lease_margin": 1.0,
                "haagent_announce": {"count": 3, "interval": 0.1},
                # Read by the liveness tests: peers heard, heartbeats refused.
                "haagent_config_extra": {"metrics": {"listen": f"127.0.0.1:{METRICS_PORT}"}},
                "haagent_vips": [
                    {"name": "web4", "address": str(lab.vip4(0)), "interface": "eth0"},
                    {"name": "web6", "address": str(lab.vip6(0)), "interface": "eth0"},
                    {"name": "vm4", "address": str(lab.vip4(1)), "interface": "eth0", "vmac": True},
                ],
            }
            yield Deployment(lab, hosts, workdir, variables)


@pytest.fixture(scope="module")
def first_play(deployment: Deployment) -> dict[str, Any]:
    rc, result = deployment.play()
    assert rc == 0, deployment.runs[-1].read_text()[-4000:]
    return result


# ------------------------------------------------------------------------------- the tests


def test_ansible_lint_production_profile() -> None:
    assert (VENV_BIN / "ansible-lint").exists(), "ansible-lint: pip install -e '.[test]'"
    proc = _run(
        [str(VENV_BIN / "ansible-lint"), "--profile", "production", "--offline", "-q"],
        timeout=300,
        cwd=str(ANSIBLE),
        env={**os.environ, "PATH": f"{VENV_BIN}:{os.environ.get('PATH', '')}"},
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_files_modes_owners_unit_and_sysctls(
    deployment: Deployment, first_play: dict[str, Any]
) -> None:
    for c in deployment.hosts:
        stats = first_play["stats"][c.node.role]
        assert stats["failures"] == 0 and stats["unreachable"] == 0, stats
        listing = c.sh(
            "stat -c '%n %U:%G %a' /etc/haagent /etc/haagent/haagent.yaml "
            "/etc/haagent/etcd-ca.pem /etc/haagent/etcd-client.pem /etc/haagent/etcd-client.key "
            "/var/lib/haagent /etc/systemd/system/haagent.service /etc/sysctl.d/60-haagent.conf "
            f"/opt/haagent/bin/haagent {KEY}"
        )
        modes = dict(line.split(" ", 1) for line in listing.splitlines())
        assert modes == {
            "/etc/haagent": "root:haagent 750",
            "/etc/haagent/haagent.yaml": "root:haagent 640",
            "/etc/haagent/etcd-ca.pem": "root:haagent 644",
            "/etc/haagent/etcd-client.pem": "root:haagent 644",
            "/etc/haagent/etcd-client.key": "haagent:haagent 600",
            "/var/lib/haagent": "haagent:haagent 750",
            "/etc/systemd/system/haagent.service": "root:root 644",
            "/etc/sysctl.d/60-haagent.conf": "root:root 644",
            "/opt/haagent/bin/haagent": "root:root 755",
            # Owner-only, for the agent (User=haagent) that reads it at start.
            KEY: "haagent:haagent 600",
        }, c.node.role
        # The config is what the inventory says, and haagent accepts it on this host.
        config = yaml.safe_load(c.sh("cat /etc/haagent/haagent.yaml"))
        assert config["node"] == c.node.role and config["cluster"] == deployment.cluster
        assert config["etcd"]["tls"] == {
            "ca": "/etc/haagent/etcd-ca.pem",
            "cert": "/etc/haagent/etcd-client.pem",
            "key": "/etc/haagent/etcd-client.key",
        }
        assert [v["address"] for v in config["vips"]] == [
            v["address"] for v in deployment.vars["haagent_vips"]
        ]
        # Fast failover on by default, on the key the role installed; no placement section.
        assert config["liveness"] == {"enabled": True, "key_file": KEY}
        assert "placement" not in config
        check = json.loads(
            c.sh("/opt/haagent/bin/haagent check-config --json /etc/haagent/haagent.yaml")
        )
        assert check["ok"], check
        # The unit: the plain copy in packaging/ is the role's template with its defaults.
        unit = c.sh(f"cat /etc/systemd/system/{UNIT}")
        plain = (REPO / "packaging" / "haagent.service").read_text()
        assert _unit_body(unit) == _unit_body(plain)
        assert c.sh(f"systemd-analyze verify /etc/systemd/system/{UNIT} 2>&1", check=True) == ""
        props = _show(
            c,
            "User",
            "Restart",
            "AmbientCapabilities",
            "CapabilityBoundingSet",
            "NoNewPrivileges",
            "ProtectSystem",
            "ProtectHome",
            "PrivateTmp",
            "RestrictAddressFamilies",
            "ReadWritePaths",
            "ExecReload",
            "ExecStopPost",
            "KillMode",
            "UnitFileState",
            "ActiveState",
        )
        assert props["User"] == "haagent" and props["Restart"] == "always"
        assert props["AmbientCapabilities"] == "cap_net_admin cap_net_raw"
        assert props["CapabilityBoundingSet"] == "cap_net_admin cap_net_raw"
        assert props["NoNewPrivileges"] == "yes" and props["ProtectSystem"] == "strict"
        assert props["ProtectHome"] == "yes" and props["PrivateTmp"] == "yes"
        assert set(props["RestrictAddressFamilies"].split()) == {
            "AF_NETLINK",
            "AF_PACKET",
            "AF_INET",
            "AF_INET6",
            "AF_UNIX",
        }
        assert props["ReadWritePaths"] == "/var/lib/haagent"
        assert "/bin/kill" in props["ExecReload"] and "-HUP" in props["ExecReload"]
        assert "haagent cleanup" in props["ExecStopPost"].replace("/opt/haagent/bin/", "")
        assert props["KillMode"] == "mixed"
        assert props["UnitFileState"] == "enabled" and props["ActiveState"] == "active"
        # The running agent: the unit's user and exactly the two capabilities.
        status = c.sh(f"cat /proc/{c.main_pid()}/status")
        fields = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
        uid = c.sh("id -u haagent")
        assert fields["Uid"].split()[:2] == [uid, uid]
        two = (1 << CAP_NET_ADMIN) | (1 << CAP_NET_RAW)
        for key in ("CapEff", "CapPrm", "CapBnd", "CapAmb"):
            assert int(fields[key], 16) == two, (key, fields[key])
        assert fields["NoNewPrivs"].strip() == "1"
        # Sysctls: the vmac VIP's parent, in the file and applied in the host's namespace.
        sysctls = c.sh("grep -v '^#' /etc/sysctl.d/60-haagent.conf")
        assert sysctls.split("\n") == [
            "net/ipv4/conf/eth0/arp_ignore = 1",
            "net/ipv4/conf/eth0/arp_announce = 2",
        ]
        assert c.sh("sysctl -n net.ipv4.conf.eth0.arp_ignore net.ipv4.conf.eth0.arp_announce") == (
            "1\n2"
        )


def _unit_body(text: str) -> list[str]:
    return [line for line in text.splitlines() if line and not line.startswith("#")]


def _show(c: Container, *props: str) -> dict[str, str]:
    out = c.sh(f"systemctl show {UNIT} " + " ".join(f"-p {p}" for p in props))
    return dict(line.split("=", 1) for line in out.splitlines())


def _key_digest(c: Container) -> str:
    return c.sh(f"sha256sum {KEY}").split()[0]


def _metric(c: Container, name: str, **labels: str) -> float:
    """One sample of the agent's /metrics (0 when absent)."""
    text = c.sh(
        "python3 -c 'import urllib.request, sys; "
        f'sys.stdout.write(urllib.request.urlopen("http://127.0.0.1:{METRICS_PORT}/metrics", '
        "timeout=5).read().decode())'"
    )
    want = name + ("{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}" if labels else "")
    for line in text.splitlines():
        key, _, value = line.rpartition(" ")
        if key == want:
            return float(value)
    return 0.0


def _wait_heard(c: Container, n: int) -> None:
    wait_until(
        lambda: _metric(c, "haagent_liveness_peers", state="heard") == n,
        20,
        what=f"{c.node.role} to hear {n} peer(s) on the liveness port",
        detail=lambda: c.sh(f"journalctl -u {UNIT} --no-pager -n 20", check=False),
    )


def _agent_log(c: Container) -> str:
    """What the running agent (its current PID) has logged."""
    return c.sh(f"journalctl -u {UNIT} _PID={c.main_pid()} --no-pager -o cat", check=False)


def _assert_not_logged(d: Deployment, secret: str) -> None:
    """Neither the play's output nor the task results of the record carry ``secret``."""
    for log in d.runs:
        assert secret not in log.read_text(), log
        record = log.with_suffix(".json")
        assert secret not in record.read_text(), record


def test_liveness_key_generated_once_identical_and_heard(
    deployment: Deployment, first_play: dict[str, Any]
) -> None:
    store = deployment.key_store
    assert store.stat().st_mode & 0o777 == 0o600, oct(store.stat().st_mode)
    text = store.read_text().strip()
    assert re.fullmatch(r"[A-Za-z0-9+/]{64}", text), "64 base64 characters: 48 random bytes"
    want = hashlib.sha256(base64.b64decode(text)).hexdigest()
    for c in deployment.hosts:
        assert _key_digest(c) == want, c.node.role
        assert task_results(first_play, c.node.role)["Write the liveness key"]["changed"]
        assert "fast failover on" in _agent_log(c), c.node.role
        record = member_record(deployment.lab, deployment.cluster, c.node.role)
        assert record is not None and record["liveness"] is True, record
    # The same key everywhere and the port open: each agent hears both others, and refuses
    # no heartbeat for a bad MAC.
    for c in deployment.hosts:
        _wait_heard(c, 2)
        assert _metric(c, "haagent_liveness_packets_total", result="bad mac") == 0
    _assert_not_logged(deployment, text)


def test_agents_elect_client_reaches_vip_and_stop_moves_it(
    deployment: Deployment, first_play: dict[str, Any]
) -> None:
    lab, vip = deployment.lab, str(deployment.lab.vip4(0))

    def settled() -> str | None:
        on = deployment.bound_on(vip)
        return on[0] if len(on) == 1 and deployment.holder("web4") == on[0] else None

    old = wait_until(settled, 20, what=f"{vip} bound on the host etcd names as holder")
    assert lab.probe_once(vip)["by"] == old
    c = deployment.host(old)
    c.sh(f"systemctl stop {UNIT}", timeout=40)  # as systemd does it: SIGTERM, ExecStopPost
    new = wait_until(
        lambda: h if (h := settled()) not in (None, old) else None,
        10,
        what=f"{vip} to move off {old}",
    )
    assert lab.probe_once(vip)["by"] == new
    assert old not in deployment.bound_on(vip)
    assert c.active() == "inactive"
    c.sh(f"systemctl start {UNIT}")
    wait_until(
        lambda: member_record(lab, deployment.cluster, old) is not None,
        20,
        what=f"{old} to be a member again",
    )


def test_second_run_changes_nothing(deployment: Deployment, first_play: dict[str, Any]) -> None:
    pids = {c.node.role: c.main_pid() for c in deployment.hosts}
    keys = {c.node.role: _key_digest(c) for c in deployment.hosts}
    stored = deployment.key_store.read_text()
    rc, result = deployment.play()
    assert rc == 0, deployment.runs[-1].read_text()[-4000:]
    for c in deployment.hosts:
        changed = [n for n, r in task_results(result, c.node.role).items() if r["changed"]]
        assert result["stats"][c.node.role]["changed"] == 0, (c.node.role, changed)
        assert c.main_pid() == pids[c.node.role]
        # The key was generated once: the same file on the controller, the same on the host.
        assert not ran(result, c.node.role, "Write the liveness key"), c.node.role
        assert _key_digest(c) == keys[c.node.role]
    assert deployment.key_store.read_text() == stored


def test_invalid_vip_fails_the_play_and_touches_nothing(
    deployment: Deployment, first_play: dict[str, Any]
) -> None:
    before = {
        c.node.role: (c.main_pid(), c.sh("sha256sum /etc/haagent/haagent.yaml"))
        for c in deployment.hosts
    }
    digests = {c.node.role: _member_digest(deployment, c) for c in deployment.hosts}
    vips = [dict(v) for v in deployment.vars["haagent_vips"]]
    vips[0]["address"] = "198.51.100.300"
    rc, result = deployment.play({"haagent_vips": vips})
    assert rc != 0
    for c in deployment.hosts:
        res = task_results(result, c.node.role)["Render the config file"]
        assert res["status"] == "failed", res
        text = json.dumps(res)
        assert "failed to validate" in text and "vips[0].address" in text, text
        assert not ran(result, c.node.role, "Reload haagent")
        assert (c.main_pid(), c.sh("sha256sum /etc/haagent/haagent.yaml")) == before[c.node.role]
        assert c.active() == "active"
        assert _member_digest(deployment, c) == digests[c.node.role]


def _member_digest(d: Deployment, c: Container) -> str:
    record = member_record(d.lab, d.cluster, c.node.role)
    assert record is not None, f"no member record for {c.node.role}"
    return str(record["config_digest"])


def test_config_change_reloads_not_restarts(
    deployment: Deployment, first_play: dict[str, Any]
) -> None:
    pids = {c.node.role: c.main_pid() for c in deployment.hosts}
    rc, result = deployment.play({"haagent_announce": {"count": 4, "interval": 0.1}})
    assert rc == 0, deployment.runs[-1].read_text()[-4000:]
    for c in deployment.hosts:
        role = c.node.role
        assert task_results(result, role)["Render the config file"]["changed"], role
        assert ran(result, role, "Reload haagent"), role
        assert not ran(result, role, "Restart haagent"), role
        assert yaml.safe_load(c.sh("cat /etc/haagent/haagent.yaml"))["announce"]["count"] == 4
        new = json.loads(
            c.sh("/opt/haagent/bin/haagent check-config --json /etc/haagent/haagent.yaml")
        )["digest"]
        # The agent re-read its file (SIGHUP): same process, the new digest in its record.
        _wait_digest(deployment, c, new)
        assert c.main_pid() == pids[role]
        log = c.sh(f"journalctl -u {UNIT} --no-pager -o cat", check=False)
        assert re.search(r"reloaded config", log), log[-2000:]


def _wait_digest(d: Deployment, c: Container, digest: str) -> None:
    wait_until(
        lambda: _member_digest(d, c) == digest,
        10,
        what=f"{c.node.role}'s member record to carry the new config digest {digest}",
        detail=lambda: c.sh(f"journalctl -u {UNIT} --no-pager -n 20", check=False),
    )


def test_short_liveness_key_fails_before_any_change(
    deployment: Deployment, first_play: dict[str, Any]
) -> None:
    c = deployment.host("h1")
    before = (c.main_pid(), c.sh("sha256sum /etc/haagent/haagent.yaml"), _key_digest(c))
    short = base64.b64encode(os.urandom(15)).decode()
    rc, result = deployment.play({"haagent_liveness_key": short}, args=("--limit", "h1"))
    assert rc != 0
    res = task_results(result, "h1")["Check the length of the liveness key"]
    assert res["status"] == "failed", res
    assert "decodes to 15 bytes" in res["result"]["msg"] and "16 to 4096" in res["result"]["msg"]
    # The check comes first: nothing was installed, written or restarted.
    assert not ran(result, "h1", "Install the OS packages haagent needs")
    assert result["stats"]["h1"]["changed"] == 0
    assert (c.main_pid(), c.sh("sha256sum /etc/haagent/haagent.yaml"), _key_digest(c)) == before
    _assert_not_logged(deployment, short)


def test_liveness_off_on_h1_and_a_vaulted_key_on_h2_h3(
    deployment: Deployment, first_play: dict[str, Any]
) -> None:
    """One play, two cases: h1 with haagent_liveness_enabled false (no key written, the agent
    restarted lease-only); h2 and h3 with haagent_liveness_key from ansible-vault, 32 bytes
    that are not UTF-8, installed byte for byte and heard by each other."""
    d = deployment
    pids = {c.node.role: c.main_pid() for c in d.hosts}
    h1_key = _key_digest(d.host("h1"))
    raw = b"\xff" + os.urandom(30) + b"\x01"
    b64 = base64.b64encode(raw).decode()
    password = d.workdir / "vault-password"
    password.write_text("deploy-test-vault-password\n")
    env = {**os.environ, "ANSIBLE_HOME": str(d.workdir / "ansible-home"), "ANSIBLE_NOCOLOR": "1"}
    argv = [str(VENV_BIN / "ansible-vault"), "encrypt_string", "--stdin-name"]
    argv += ["haagent_liveness_key", "--vault-password-file", str(password)]
    proc = _run(
        argv,
        60,
        input=b64,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    assert "!vault" in proc.stdout and b64 not in proc.stdout
    vaulted = d.workdir / "vaulted.yml"
    vaulted.write_text(proc.stdout)
    rc, result = d.play(
        host_vars={"h1": {"haagent_liveness_enabled": False}},
        args=("-e", f"@{vaulted}", "--vault-password-file", str(password)),
    )
    assert rc == 0, d.runs[-1].read_text()[-4000:]
    want = hashlib.sha256(raw).hexdigest()
    for c in d.hosts:
        role = c.node.role
        config = yaml.safe_load(c.sh("cat /etc/haagent/haagent.yaml"))
        check = json.loads(
            c.sh("/opt/haagent/bin/haagent check-config --json /etc/haagent/haagent.yaml")
        )
        assert check["ok"], check
        assert c.main_pid() != pids[role], f"{role}: a new key or liveness setting restarts"
        assert not ran(result, role, "Reload haagent"), role
        if role == "h1":
            assert config["liveness"] == {"enabled": False}
            assert not ran(result, role, "Write the liveness key")
            assert _key_digest(c) == h1_key  # left as it was, unused
            assert ran(result, role, RESTART_TASK)
            assert "fast failover is off: disabled" in _agent_log(c)
        else:
            assert config["liveness"] == {"enabled": True, "key_file": KEY}
            assert task_results(result, role)["Write the liveness key"]["changed"], role
            assert c.sh(f"stat -c '%U:%G %a' {KEY}") == "haagent:haagent 600"
            assert _key_digest(c) == want, role
            assert "fast failover on" in _agent_log(c), role
    for c in d.hosts:
        _wait_member_liveness(d, c.node.role, c.node.role != "h1")
    # h2 and h3 share the new key and hear each other; h1 sends no heartbeat.
    for role in ("h2", "h3"):
        _wait_heard(d.host(role), 1)
        assert _metric(d.host(role), "haagent_liveness_packets_total", result="bad mac") == 0
    _assert_not_logged(d, b64)


def _wait_member_liveness(d: Deployment, role: str, on: bool) -> None:
    def says() -> bool:
        record = member_record(d.lab, d.cluster, role)
        return record is not None and record["liveness"] is on

    wait_until(says, 20, what=f"{role}'s member record to say liveness {on}")

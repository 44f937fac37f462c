"""ansible/ for real: the etcd role on three booted Debian hosts, under real systemd.

The same hosts as test_ansible.py (the cached bookworm root booted with ``systemd-nspawn -b`` in
the network namespaces of the lab's h1..h3, reached by the ``nsenter`` connection), this time
as the ``etcd`` group of site.yml. Certificates come from ansible/trial-ca.yml for the hosts'
addresses; etcd-server and etcd-client are installed by the role's ``apt`` task, offline, from
.debs cached once per root and dropped into each host's apt archive. The lab's own etcd is not
used (its network only).

Asserted: one cluster of three started members (the same cluster id from every endpoint),
healthy over TLS with a client certificate, from the lab's client and with the command of
docs/deployment.md on a member; a client without a certificate refused; with the role's auth
step, the agents' certificate (CN haagent) writes under /haagent/v1/ and is refused elsewhere;
keys owner-only; a second run with changed=0.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from haagent.lab.topology import Lab
from tests.deploy.harness import (
    ANSIBLE,
    VENV_BIN,
    WORK,
    Container,
    _run,
    base_root,
    booted_hosts,
    etcd_debs,
    playbook,
    task_results,
)
from tests.lab.conftest import require

pytestmark = pytest.mark.lab

ROOT_PASSWORD = "trial-root-password"  # a throw-away cluster
PREFIX = "/haagent/v1/"


@dataclass
class EtcdHosts:
    lab: Lab
    hosts: list[Container]
    workdir: Path
    pki: Path
    runs: list[Path] = field(default_factory=list)

    def inventory(self, *, clients: bool = False) -> dict[str, Any]:
        members = {
            c.node.role: {"ansible_host": str(c.leader), "etcd_address": str(c.node.ipv4)}
            for c in self.hosts
        }
        groups: dict[str, Any] = {"etcd": {"hosts": members}}
        if clients:  # trial-ca.yml makes one client certificate per haagent host
            groups["haagent"] = {"hosts": dict.fromkeys(members)}
        return {
            "all": {
                "vars": {
                    "ansible_connection": "nsenter",
                    "ansible_python_interpreter": "/usr/bin/python3",
                },
                "children": groups,
            }
        }

    def pem(self, name: str) -> str:
        return (self.pki / name).read_text()

    def play(self) -> tuple[int, dict[str, Any]]:
        inventory = self.inventory()
        for c in self.hosts:
            inventory["all"]["children"]["etcd"]["hosts"][c.node.role].update(
                etcd_tls_cert=self.pem(f"{c.node.role}.pem"),
                etcd_tls_key=self.pem(f"{c.node.role}.key"),
            )
        inventory["all"]["vars"].update(
            etcd_cluster_token=f"{self.lab.lab_id}-etcd",
            etcd_tls_ca=self.pem("ca.pem"),
            etcd_auth_enable=True,
            etcd_root_password=ROOT_PASSWORD,
            etcd_root_cert=self.pem("root.pem"),
            etcd_root_key=self.pem("root.key"),
            etcd_haagent_prefix=PREFIX,
        )
        rc, result, log = playbook(self.workdir, inventory, {}, len(self.runs))
        self.runs.append(log)
        return rc, result

    @property
    def endpoints(self) -> str:
        return ",".join(f"https://{c.node.ipv4}:2379" for c in self.hosts)

    def etcdctl(
        self, *args: str, cert: str | None = "root", endpoints: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """etcdctl from the lab's client namespace (this machine's etcdctl 3.4)."""
        argv = ["ip", "netns", "exec", self.lab.client.netns, "etcdctl"]
        argv += [f"--endpoints={endpoints or self.endpoints}", f"--cacert={self.pki}/ca.pem"]
        argv += ["--dial-timeout=2s", "--command-timeout=4s"]
        if cert is not None:
            argv += [f"--cert={self.pki}/{cert}.pem", f"--key={self.pki}/{cert}.key"]
        return _run([*argv, *args], 20, env={"ETCDCTL_API": "3", "PATH": "/usr/sbin:/usr/bin"})


@pytest.fixture(scope="module")
def etcd_hosts() -> Iterator[EtcdHosts]:
    require("ip", "etcdctl", "openssl", "debootstrap", "systemd-nspawn", "nsenter", "apt-get")
    started = time.monotonic()
    base = base_root()
    debs = etcd_debs(base)

    def with_debs(root: Path) -> None:  # what `apt-get install --download-only` leaves
        for deb in debs.glob("*.deb"):
            shutil.copy2(deb, root / "var/cache/apt/archives" / deb.name)

    with Lab(hosts=3) as lab:
        workdir = WORK / f"{lab.lab_id}-etcd"
        with booted_hosts(lab, base, workdir, prepare=with_debs) as hosts:
            print(f"hosts booted in {time.monotonic() - started:.1f} s")
            d = EtcdHosts(lab, hosts, workdir, workdir / "pki")
            _trial_ca(d)
            yield d


def _trial_ca(d: EtcdHosts) -> None:
    """ansible/trial-ca.yml for the hosts' addresses, into <workdir>/pki."""
    inv = d.workdir / "trial-ca-inventory.yml"
    inv.write_text(json.dumps(d.inventory(clients=True)))
    argv = [str(VENV_BIN / "ansible-playbook"), "-i", str(inv), str(ANSIBLE / "trial-ca.yml")]
    argv += ["-e", json.dumps({"trial_pki_dir": str(d.pki)})]
    env = {"PATH": f"{VENV_BIN}:/usr/sbin:/usr/bin:/sbin:/bin", "ANSIBLE_NOCOLOR": "1"}
    env |= {"ANSIBLE_CONFIG": str(ANSIBLE / "ansible.cfg")}
    env |= {"ANSIBLE_HOME": str(d.workdir / "ansible-home")}
    env |= {"ANSIBLE_LOCAL_TEMP": str(d.workdir / "ansible-tmp")}
    proc = _run(argv, 120, env=env, cwd=str(ANSIBLE))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for c in d.hosts:
        san = _run(
            ["openssl", "x509", "-noout", "-ext", "subjectAltName"],
            10,
            input=d.pem(f"{c.node.role}.pem"),
        ).stdout
        assert f"IP Address:{c.node.ipv4}" in san, san


@pytest.fixture(scope="module")
def first_play(etcd_hosts: EtcdHosts) -> dict[str, Any]:
    rc, result = etcd_hosts.play()
    assert rc == 0, etcd_hosts.runs[-1].read_text()[-4000:]
    return result


def test_one_cluster_of_three_over_tls(etcd_hosts: EtcdHosts, first_play: dict[str, Any]) -> None:
    d = etcd_hosts
    ids = set()
    for c in d.hosts:
        proc = d.etcdctl("-w", "json", "member", "list", endpoints=f"https://{c.node.ipv4}:2379")
        assert proc.returncode == 0, proc.stderr
        listing = json.loads(proc.stdout)
        ids.add(listing["header"]["cluster_id"])
        members = {m.get("name", ""): m for m in listing["members"]}
        # A started member has its name and client URLs; an unstarted one has neither.
        assert sorted(members) == ["h1", "h2", "h3"], listing
        for h in d.hosts:
            m = members[h.node.role]
            assert m["peerURLs"] == [f"https://{h.node.ipv4}:2380"], m
            assert m["clientURLs"] == [f"https://{h.node.ipv4}:2379"], m
    assert len(ids) == 1, f"the members are in different clusters: {ids}"
    proc = d.etcdctl("-w", "json", "endpoint", "health")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    health = {e["endpoint"]: e["health"] for e in json.loads(proc.stdout)}
    assert health == dict.fromkeys(d.endpoints.split(","), True), health
    # The check of docs/deployment.md, on a member with its own files.
    c = d.hosts[0]
    out = c.sh(
        f"ETCDCTL_API=3 etcdctl --endpoints=https://{c.node.ipv4}:2379"
        " --cacert=/etc/etcd/pki/ca.pem --cert=/etc/etcd/pki/server.pem"
        " --key=/etc/etcd/pki/server.key endpoint health --cluster 2>&1"
    )
    assert out.count("is healthy") == 3, out


def test_client_without_certificate_is_refused(
    etcd_hosts: EtcdHosts, first_play: dict[str, Any]
) -> None:
    for c in etcd_hosts.hosts:
        endpoint = f"https://{c.node.ipv4}:2379"
        proc = etcd_hosts.etcdctl("get", "/haagent/v1/x", cert=None, endpoints=endpoint)
        assert proc.returncode != 0, proc.stdout
        assert etcd_hosts.etcdctl("get", "/x", endpoints=endpoint).returncode == 0


def test_haagent_user_is_limited_to_its_prefix(
    etcd_hosts: EtcdHosts, first_play: dict[str, Any]
) -> None:
    d = etcd_hosts
    key = f"{PREFIX}deploy-test/probe"
    put = d.etcdctl("put", key, "ok", cert="haagent-h1")
    assert put.returncode == 0, put.stderr
    get = d.etcdctl("get", "--print-value-only", key, cert="haagent-h2")
    assert get.returncode == 0 and get.stdout.strip() == "ok", get.stderr
    for args in (("put", "/outside", "no"), ("get", "/outside"), ("put", "/haagent/v2/x", "no")):
        proc = d.etcdctl(*args, cert="haagent-h1")
        assert proc.returncode != 0 and "permission denied" in proc.stderr, (args, proc)
    assert d.etcdctl("get", "/outside", cert="root").returncode == 0


def test_files_and_modes(etcd_hosts: EtcdHosts, first_play: dict[str, Any]) -> None:
    for c in etcd_hosts.hosts:
        listing = c.sh(
            "stat -c '%n %U:%G %a' /etc/etcd/pki /etc/etcd/pki/ca.pem /etc/etcd/pki/server.pem"
            " /etc/etcd/pki/server.key /etc/etcd/pki/peer.key /var/lib/etcd/default"
        )
        assert dict(line.split(" ", 1) for line in listing.splitlines()) == {
            "/etc/etcd/pki": "root:etcd 750",
            "/etc/etcd/pki/ca.pem": "root:etcd 644",
            "/etc/etcd/pki/server.pem": "root:etcd 644",
            "/etc/etcd/pki/server.key": "etcd:etcd 600",
            "/etc/etcd/pki/peer.key": "etcd:etcd 600",
            "/var/lib/etcd/default": "etcd:etcd 700",
        }, c.node.role
        assert c.sh("systemctl is-enabled etcd.service") == "enabled"
        assert c.sh("systemctl is-active etcd.service") == "active"


def test_second_run_changes_nothing(etcd_hosts: EtcdHosts, first_play: dict[str, Any]) -> None:
    pids = {
        c.node.role: c.sh("systemctl show -p MainPID --value etcd.service")
        for c in etcd_hosts.hosts
    }
    rc, result = etcd_hosts.play()
    assert rc == 0, etcd_hosts.runs[-1].read_text()[-4000:]
    for c in etcd_hosts.hosts:
        changed = [n for n, r in task_results(result, c.node.role).items() if r["changed"]]
        assert result["stats"][c.node.role]["changed"] == 0, (c.node.role, changed)
        assert c.sh("systemctl show -p MainPID --value etcd.service") == pids[c.node.role]

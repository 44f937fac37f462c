"""ansible/ for real: the haagent role on three booted Debian hosts, under real systemd.

The hosts are Debian bookworm roots (debootstrap, minbase plus a few packages), built once and
cached under /var/cache/haagent-deploy-test/ by a hash of their package list, copied for each
target and booted with ``systemd-nspawn -b`` (systemd as PID 1) inside the network namespace of
one of the lab's hosts: the containers are the lab's h1..h3, on its bridge, next to its etcd
(TLS with client certificates) and its client. ansible-playbook reaches them through the
``nsenter`` connection plugin next to this file (no ssh, no collection). haagent is installed
from a wheel built from this tree, its dependencies from a wheelhouse downloaded once and
cached, so the hosts install offline.

One deployment for the module; the tests run in order on it: files and unit, election and a
failover by ``systemctl stop``, idempotence, a refused bad VIP, a reload on a config change.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from ipaddress import ip_address
from pathlib import Path
from typing import Any

import pytest
import yaml

from haagent.lab.topology import Lab, Node
from haagent.lab.wait import wait_until
from tests.lab.conftest import etcd_holder, member_record, require

pytestmark = pytest.mark.lab

REPO = Path(__file__).resolve().parents[2]
ANSIBLE = REPO / "ansible"
HERE = Path(__file__).resolve().parent
VENV_BIN = Path(sys.executable).parent
CACHE = Path("/var/cache/haagent-deploy-test")
WORK = Path("/var/tmp/haagent-deploy-test")
SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
# What a fresh host has before the play: a minimal Debian with Python (Ansible needs it on the
# target), systemd, and the Python apt bindings for ansible.builtin.apt.
ROOT_PACKAGES = (
    "python3",
    "python3-venv",
    "python3-apt",
    "python3-packaging",
    "systemd",
    "systemd-sysv",
    "dbus",
    "iproute2",
    "procps",
    "libcap2-bin",
)
CAP_NET_ADMIN, CAP_NET_RAW = 12, 13
UNIT = "haagent.service"
PLAY_TIMEOUT = 420


def _run(argv: list[str], timeout: float, **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False, **kw)


def _check(argv: list[str], timeout: float, **kw: Any) -> str:
    proc = _run(argv, timeout, **kw)
    assert proc.returncode == 0, f"{argv} exited {proc.returncode}:\n{proc.stdout}{proc.stderr}"
    return proc.stdout


# ------------------------------------------------------------------------------- the images


def _locked(path: Path) -> Any:
    path.parent.mkdir(parents=True, exist_ok=True)
    f = open(path, "w")  # noqa: SIM115 - held for the duration of the build
    fcntl.flock(f, fcntl.LOCK_EX)
    return f


def base_root() -> Path:
    """The cached minbase root (built once per package list; ~1 min cold)."""
    key = hashlib.sha256(" ".join((SUITE, MIRROR, *ROOT_PACKAGES)).encode()).hexdigest()[:12]
    root = CACHE / f"root-{key}"
    with _locked(CACHE / "root.lock"):
        if (root / ".complete").exists():
            return root
        tmp = CACHE / f"root-{key}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        argv = ["debootstrap", "--variant=minbase", f"--include={','.join(ROOT_PACKAGES)}"]
        _check([*argv, SUITE, str(tmp), MIRROR], timeout=600)
        shutil.rmtree(tmp / "var/cache/apt/archives", ignore_errors=True)
        (tmp / "var/cache/apt/archives/partial").mkdir(parents=True)
        (tmp / ".complete").touch()
        shutil.rmtree(root, ignore_errors=True)
        tmp.rename(root)
    return root


def wheel(out: Path) -> Path:
    """haagent's wheel, built from this tree (once per session)."""
    _check(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(out), str(REPO)],
        timeout=300,
    )
    (built,) = out.glob("haagent-*.whl")
    return built


def wheelhouse() -> Path:
    """The wheels of haagent's dependencies, downloaded once per dependency list."""
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    key = hashlib.sha256("\n".join(sorted(deps)).encode()).hexdigest()[:12]
    house = CACHE / f"wheels-{key}"
    with _locked(CACHE / "wheels.lock"):
        if (house / ".complete").exists():
            return house / "wheels"
        shutil.rmtree(house, ignore_errors=True)
        argv = [sys.executable, "-m", "pip", "download", "-q", "--only-binary=:all:"]
        _check([*argv, "-d", str(house / "wheels"), *deps], timeout=600)
        (house / ".complete").touch()
    return house / "wheels"


# ------------------------------------------------------------------------------- the hosts


def _status(pid: int) -> dict[str, str]:
    """/proc/<pid>/status as a dict; empty if the process is gone."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return {}
    return {k: v.strip() for k, _, v in (line.partition(":") for line in text.splitlines())}


@dataclass
class Container:
    """One booted target: its root, its lab host (network namespace) and its systemd."""

    node: Node
    root: Path
    machine: str
    log: Path
    proc: subprocess.Popen[bytes] | None = None
    leader: int | None = None

    def boot(self) -> None:
        argv = ["systemd-nspawn", "-q", "--register=no", "--keep-unit", "-b"]
        argv += ["-D", str(self.root), f"--machine={self.machine}"]
        argv += [f"--network-namespace-path=/run/netns/{self.node.netns}"]
        # The bounding set of a container lacks CAP_NET_ADMIN unless nspawn made its network.
        argv += ["--capability=CAP_NET_ADMIN"]
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT
            )

    def find_leader(self) -> int | None:
        """PID (here) of the container's systemd: in its netns, PID 1 of its own PID ns, and a
        descendant of our nspawn."""
        if self.proc is None:
            return None
        for pid in _run(["ip", "netns", "pids", self.node.netns], 10).stdout.split():
            status = _status(int(pid))
            nspid = status.get("NSpid", "").split()
            if len(nspid) > 1 and nspid[-1] == "1" and self._descends(int(pid)):
                return int(pid)
        return None

    def _descends(self, pid: int) -> bool:
        assert self.proc is not None
        for _ in range(8):
            ppid = int(_status(pid).get("PPid", "0"))
            if ppid == self.proc.pid:
                return True
            if ppid <= 1:
                return False
            pid = ppid
        return False

    def wait_booted(self) -> None:
        assert self.proc is not None
        self.leader = wait_until(
            lambda: self.find_leader() if self.proc and self.proc.poll() is None else -1,
            30,
            what=f"the container of {self.node.role} to start systemd",
            detail=lambda: self.log.read_text(errors="replace")[-2000:],
        )
        assert self.leader > 0, self.log.read_text(errors="replace")[-2000:]
        # What nspawn does for a network of its own: /proc/sys/net writable (the agent and
        # `sysctl -p` set the interface sysctls of their namespace).
        self.sh(
            "mount --bind /proc/sys/net /proc/sys/net && mount -o remount,bind,rw /proc/sys/net"
        )
        state = wait_until(
            lambda: (
                s
                if (s := self.sh("systemctl is-system-running", check=False))
                in ("running", "degraded")
                else None
            ),
            60,
            what=f"systemd in {self.node.role} to finish booting",
        )
        # Boot-time units of a container on overlayfs (user sessions, sysusers) may fail;
        # only haagent's own unit matters below, and it is checked there.
        if state != "running":
            failed = self.sh("systemctl list-units --failed --plain --no-legend", check=False)
            print(f"{self.node.role}: {state}: {failed}")

    def sh(self, script: str, *, check: bool = True, timeout: float = 30) -> str:
        """Run a shell command in the container (all its namespaces, its root)."""
        assert self.leader is not None
        ns = ["--mount", "--uts", "--ipc", "--net", "--pid", "--cgroup", "--root", "--wd"]
        argv = ["nsenter", "--target", str(self.leader), *ns, "--", "/bin/sh", "-c", script]
        proc = _run(argv, timeout, env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})
        if check:
            assert proc.returncode == 0, f"{script!r} in {self.node.role}: {proc.stderr}"
        return proc.stdout.strip()

    def main_pid(self) -> int:
        return int(self.sh(f"systemctl show -p MainPID --value {UNIT}"))

    def active(self) -> str:
        return self.sh(f"systemctl is-active {UNIT}", check=False)

    def shutdown(self) -> None:
        """Power off (SIGTERM to nspawn: an orderly shutdown), SIGKILL after a bound."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        leader = self.find_leader()
        if leader is not None:  # its init outlived nspawn: kill the PID namespace
            os.kill(leader, signal.SIGKILL)
            wait_until(lambda: self.find_leader() is None, 10, what="the container to die")
        shutil.rmtree(f"/run/systemd/nspawn/propagate/{self.machine}", ignore_errors=True)


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

    def play(self, extra: dict[str, Any] | None = None) -> tuple[int, dict[str, Any]]:
        """ansible-playbook site.yml on the three hosts: (exit code, json callback output)."""
        inventory = {
            "all": {
                "children": {
                    "haagent": {
                        "hosts": {c.node.role: {"ansible_host": str(c.leader)} for c in self.hosts},
                        "vars": {
                            "ansible_connection": "nsenter",
                            "ansible_python_interpreter": "/usr/bin/python3",
                            **self.vars,
                        },
                    }
                }
            }
        }
        n = len(self.runs)
        inv = self.workdir / f"inventory-{n}.yml"
        inv.write_text(yaml.safe_dump(inventory, sort_keys=False))
        record = self.workdir / f"play-{n}.json"
        record.unlink(missing_ok=True)
        argv = [str(VENV_BIN / "ansible-playbook"), "-i", str(inv), str(ANSIBLE / "site.yml")]
        argv += ["-e", json.dumps({"haagent_serial": "100%", **(extra or {})})]
        env = {
            **os.environ,
            "ANSIBLE_CONFIG": str(ANSIBLE / "ansible.cfg"),
            "ANSIBLE_CONNECTION_PLUGINS": str(HERE / "connection_plugins"),
            "ANSIBLE_CALLBACK_PLUGINS": str(HERE / "callback_plugins"),
            "ANSIBLE_CALLBACKS_ENABLED": "record",
            "HAAGENT_PLAY_RECORD": str(record),
            "ANSIBLE_HOME": str(self.workdir / "ansible-home"),
            "ANSIBLE_LOCAL_TEMP": str(self.workdir / "ansible-tmp"),
            "ANSIBLE_NOCOLOR": "1",
            "ANSIBLE_FORKS": "3",
            "PATH": f"{VENV_BIN}:{os.environ.get('PATH', '/usr/sbin:/usr/bin:/sbin:/bin')}",
        }
        started = time.monotonic()
        proc = _run(argv, PLAY_TIMEOUT, env=env, cwd=str(ANSIBLE))
        out = self.workdir / f"play-{n}.log"
        out.write_text(proc.stdout + "\n--- stderr ---\n" + proc.stderr)
        self.runs.append(out)
        print(f"play {n}: exit {proc.returncode} in {time.monotonic() - started:.1f} s ({out})")
        if not record.exists():
            pytest.fail(
                f"ansible-playbook exited {proc.returncode} without a recap:\n{proc.stderr}"
            )
        result: dict[str, Any] = json.loads(record.read_text())
        return proc.returncode, result

    def holder(self, vip: str) -> str | None:
        return etcd_holder(self.lab, self.cluster, vip)

    def bound_on(self, address: str) -> list[str]:
        ip = ip_address(address)
        return [
            c.node.role for c in self.hosts if ip in self.lab.bound(c.node, all_interfaces=True)
        ]


def task_results(result: dict[str, Any], host: str) -> dict[str, dict[str, Any]]:
    """Task name -> this host's last result in the run (status, changed, result)."""
    # get_name() is "<role> : <task>" for the tasks and handlers of a role.
    return {r["task"].split(" : ", 1)[-1]: r for r in result["results"] if r["host"] == host}


def ran(result: dict[str, Any], host: str, name: str) -> bool:
    res = task_results(result, host).get(name)
    return res is not None and res["status"] != "skipped"


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
        hosts: list[Container] = []
        mounts: list[Path] = []
        try:
            for node in lab.hosts:
                # Each host: the cached root read-only below, its own changes above.
                root = workdir / node.role / "root"
                for d in ("upper", "work", "root"):
                    (workdir / node.role / d).mkdir(parents=True)
                layers = f"lowerdir={base},upperdir={root.parent}/upper,workdir={root.parent}/work"
                _check(["mount", "-t", "overlay", "overlay", "-o", layers, str(root)], 30)
                mounts.append(root)
                # It fails on an overlayfs root, and has nothing to do: the packages made
                # their users when the image was built.
                (root / "etc/systemd/system/systemd-sysusers.service").symlink_to("/dev/null")
                c = Container(
                    node, root, f"{lab.lab_id}-{node.role}", workdir / f"{node.role}.boot.log"
                )
                hosts.append(c)
                c.boot()
            for c in hosts:
                c.wait_booted()
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
                "haagent_vips": [
                    {"name": "web4", "address": str(lab.vip4(0)), "interface": "eth0"},
                    {"name": "web6", "address": str(lab.vip6(0)), "interface": "eth0"},
                    {"name": "vm4", "address": str(lab.vip4(1)), "interface": "eth0", "vmac": True},
                ],
            }
            yield Deployment(lab, hosts, workdir, variables)
        finally:
            for c in hosts:
                c.shutdown()
            for m in mounts:
                _run(["umount", str(m)], 30)
            if not any(os.path.ismount(m) for m in mounts):
                shutil.rmtree(workdir, ignore_errors=True)


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
            "/opt/haagent/bin/haagent"
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
    rc, result = deployment.play()
    assert rc == 0, deployment.runs[-1].read_text()[-4000:]
    for c in deployment.hosts:
        changed = [n for n, r in task_results(result, c.node.role).items() if r["changed"]]
        assert result["stats"][c.node.role]["changed"] == 0, (c.node.role, changed)
        assert c.main_pid() == pids[c.node.role]


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

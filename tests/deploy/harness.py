"""Shared by the deploy tests: the cached Debian root, the wheels, booted nspawn containers in
the lab's host namespaces, and ansible-playbook runs with a JSON record (see test_ansible.py).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from haagent.lab.topology import Lab, Node
from haagent.lab.wait import wait_until

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


def task_results(result: dict[str, Any], host: str) -> dict[str, dict[str, Any]]:
    """Task name -> this host's last result in the run (status, changed, result)."""
    # get_name() is "<role> : <task>" for the tasks and handlers of a role.
    return {r["task"].split(" : ", 1)[-1]: r for r in result["results"] if r["host"] == host}


def ran(result: dict[str, Any], host: str, name: str) -> bool:
    res = task_results(result, host).get(name)
    return res is not None and res["status"] != "skipped"


# ------------------------------------------------------------------------------- etcd's .debs

# The packages the etcd role installs: downloaded once per cached root (they must match its
# apt lists) and dropped into each host's /var/cache/apt/archives, so `apt` installs offline.
ETCD_PACKAGES = ("etcd-server", "etcd-client")


def etcd_debs(root: Path) -> Path:
    """The .debs of ETCD_PACKAGES and whatever they need that ``root`` lacks."""
    key = hashlib.sha256(" ".join((root.name, *ETCD_PACKAGES)).encode()).hexdigest()[:12]
    debs = CACHE / f"debs-{key}"
    with _locked(CACHE / "debs.lock"):
        if (debs / ".complete").exists():
            return debs / "archives"
        shutil.rmtree(debs, ignore_errors=True)
        (debs / "archives/partial").mkdir(parents=True)
        (debs / "apt-cache").mkdir()
        # The host's apt, on the root's lists and dpkg status: what apt in the root would fetch.
        opts = {
            "Dir::State::Lists": root / "var/lib/apt/lists",
            "Dir::State::status": root / "var/lib/dpkg/status",
            "Dir::Etc::SourceList": root / "etc/apt/sources.list",
            "Dir::Etc::SourceParts": root / "etc/apt/sources.list.d",
            "Dir::Cache": debs / "apt-cache",
            "Dir::Cache::Archives": debs / "archives",
            "APT::Get::Download-Only": "true",
        }
        argv = ["apt-get", "-q", "-y", *(f"-o{k}={v}" for k, v in opts.items())]
        _check([*argv, "install", *ETCD_PACKAGES], timeout=300)
        shutil.rmtree(debs / "apt-cache")
        assert list((debs / "archives").glob("etcd-server_*.deb")), "no etcd-server .deb"
        (debs / ".complete").touch()
    return debs / "archives"


# ------------------------------------------------------------------------------- booting


@contextlib.contextmanager
def booted_hosts(
    lab: Lab, base: Path, workdir: Path, prepare: Callable[[Path], None] | None = None
) -> Iterator[list[Container]]:
    """The lab's hosts as booted containers (overlay on ``base``, ``prepare(root)`` before
    boot); shut down, unmounted and removed on the way out, whatever happened."""
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
            if prepare is not None:
                prepare(root)
            c = Container(
                node, root, f"{lab.lab_id}-{node.role}", workdir / f"{node.role}.boot.log"
            )
            hosts.append(c)
            c.boot()
        for c in hosts:
            c.wait_booted()
        yield hosts
    finally:
        for c in hosts:
            c.shutdown()
        for m in mounts:
            _run(["umount", str(m)], 30)
        if not any(os.path.ismount(m) for m in mounts):
            shutil.rmtree(workdir, ignore_errors=True)


# ------------------------------------------------------------------------------- playing


def playbook(
    workdir: Path,
    inventory: dict[str, Any],
    extra: dict[str, Any],
    n: int,
    args: Sequence[str] = (),
) -> tuple[int, dict[str, Any], Path]:
    """ansible-playbook site.yml with ``inventory`` (and more ``args``, e.g. ``--limit``):
    (exit code, json record, log file)."""
    inv = workdir / f"inventory-{n}.yml"
    inv.write_text(yaml.safe_dump(inventory, sort_keys=False))
    record = workdir / f"play-{n}.json"
    record.unlink(missing_ok=True)
    argv = [str(VENV_BIN / "ansible-playbook"), "-i", str(inv), str(ANSIBLE / "site.yml")]
    argv += ["-e", json.dumps(extra), *args]
    env = {
        **os.environ,
        "ANSIBLE_CONFIG": str(ANSIBLE / "ansible.cfg"),
        "ANSIBLE_CONNECTION_PLUGINS": str(HERE / "connection_plugins"),
        "ANSIBLE_CALLBACK_PLUGINS": str(HERE / "callback_plugins"),
        "ANSIBLE_CALLBACKS_ENABLED": "record",
        "HAAGENT_PLAY_RECORD": str(record),
        "ANSIBLE_HOME": str(workdir / "ansible-home"),
        "ANSIBLE_LOCAL_TEMP": str(workdir / "ansible-tmp"),
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_FORKS": "3",
        "PATH": f"{VENV_BIN}:{os.environ.get('PATH', '/usr/sbin:/usr/bin:/sbin:/bin')}",
    }
    started = time.monotonic()
    proc = _run(argv, PLAY_TIMEOUT, env=env, cwd=str(ANSIBLE))
    out = workdir / f"play-{n}.log"
    out.write_text(proc.stdout + "\n--- stderr ---\n" + proc.stderr)
    print(f"play {n}: exit {proc.returncode} in {time.monotonic() - started:.1f} s ({out})")
    if not record.exists():
        pytest.fail(f"ansible-playbook exited {proc.returncode} without a recap:\n{proc.stderr}")
    result: dict[str, Any] = json.loads(record.read_text())
    return proc.returncode, result, out

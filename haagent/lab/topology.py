"""A haagent cluster on one machine, built from network namespaces.

One lab is a learning switch (a Linux bridge in its own namespace), one namespace per host,
a client namespace and one or three real etcd members, each with a veth into the switch::

    <id>-h1 eth0 ──┐
    <id>-h2 eth0 ──┤      <id>-sw
    <id>-cl eth0 ──┼── br0 (ports h1, h2, cl, etcd)
    <id>-etcd eth0 ┘

Every name carries the lab id (``hx`` + 5 hex digits), so labs coexist and leftovers are
recognisable. Addresses come only from the documentation ranges. Nothing of a lab lives in
the root namespace: the veth pairs are created directly inside their namespaces.

A state file (``/run/haagent-lab/<id>/state.json``) records the topology and every process
started through the lab, so that ``haagent lab status`` / ``down`` work from another process,
and :func:`cleanup_leftovers` removes labs whose owner died without tearing them down.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address
from pathlib import Path
from types import TracebackType
from typing import Any

import yaml

from haagent.lab import pki as lab_pki
from haagent.lab.etcd import AGENT_USER, ROOT_USER, EtcdCluster
from haagent.lab.node import Node as Node  # re-exported: the lab's users import it from here

STATE_ROOT = Path("/run/haagent-lab")
NETNS_DIR = Path("/run/netns")
STATE_SCHEMA = 1

SUBNET4 = IPv4Network("198.51.100.0/24")
SUBNET6 = IPv6Network("2001:db8:100::/64")
ETCD_HOST_PARTS = (2, 3, 4)
HOST_BASE = 10  # h<i> gets host part 10 + i
CLIENT_HOST_PART = 100
VIP_BASE = 200
VIP_COUNT = 50  # .200-.249 and ::200-::249
# Many VIPs for scale runs (Lab.scale_vips): IPv4 from the lab subnet above the client
# (.101-.254, Lab.vip4's among them) and then all of SCALE_NET4, which is on no lab subnet
# (bound as /32 like any VIP, but the client has no route to it: scale runs judge from the
# kernels and etcd, not from probes); IPv6 from SCALE_NET6, inside the lab's /64.
SCALE_NET4 = IPv4Network("203.0.113.0/24")
SCALE_NET6 = IPv6Network("2001:db8:100::1:0/112")
MAX_HOSTS = 50
BRIDGE = "br0"
NFT_TABLE = "haagent_lab"

LAB_ID_RE = re.compile(r"^hx[0-9a-f]{5}$")
_NS_RE = re.compile(r"^(hx[0-9a-f]{5})-[a-z0-9]+$")

# How long a process gets between SIGTERM and SIGKILL when a lab is torn down.
TERM_GRACE = 1.0


class LabError(RuntimeError):
    """Building, using or tearing down a lab failed."""


def _addr4(host_part: int) -> IPv4Address:
    return SUBNET4[host_part]


def _addr6(host_part: int) -> IPv6Address:
    # The IPv6 address carries the same digits as the IPv4 host part: .11 -> ::11, .100 -> ::100
    return SUBNET6[int(str(host_part), 16)]


# --------------------------------------------------------------------------- low level


def _cmd(argv: Sequence[str], *, timeout: float = 10, input: str | None = None) -> str:
    """Run a command in the root namespace; raise LabError with its stderr on failure."""
    try:
        proc = subprocess.run(
            list(argv), capture_output=True, text=True, timeout=timeout, input=input, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise LabError(f"{' '.join(argv)}: timed out after {timeout}s") from exc
    if proc.returncode != 0:
        raise LabError(f"{' '.join(argv)}: exit {proc.returncode}: {proc.stderr.strip()}")
    return proc.stdout


def list_netns() -> list[str]:
    """Names of all named network namespaces (what `ip netns list` shows)."""
    try:
        return sorted(os.listdir(NETNS_DIR))
    except FileNotFoundError:
        return []


def netns_pids(netns: str) -> list[int]:
    """Processes whose network namespace is `netns` (`ip netns pids`); [] if it is gone."""
    try:
        proc = subprocess.run(
            ["ip", "netns", "pids", netns], capture_output=True, text=True, timeout=10, check=False
        )
    except subprocess.TimeoutExpired:
        return []
    if proc.returncode != 0:
        return []
    return [int(tok) for tok in proc.stdout.split() if tok.isdigit()]


def stat_fields(pid: int) -> list[str] | None:
    """The fields of ``/proc/<pid>/stat`` after the command: state, ppid, pgrp, … (field 3 of
    proc(5) at index 0); None if the process does not exist."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # comm may contain spaces and parentheses; the state follows the last ')'
    return stat[stat.rfind(")") + 2 :].split()


def _proc_state(pid: int) -> str | None:
    """The one-letter state of a process, None if it does not exist."""
    fields = stat_fields(pid)
    return fields[0] if fields else None


def pid_alive(pid: int) -> bool:
    """True if the process exists and is not a zombie."""
    state = _proc_state(pid)
    return state is not None and state not in ("Z", "X")


def _reap(pid: int) -> None:
    """Collect a killed child of ours, so it does not linger as a zombie. No-op otherwise."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def _signal(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def kill_netns_processes(
    namespaces: Iterable[str],
    *,
    grace: float = TERM_GRACE,
    own: Iterable[subprocess.Popen[bytes]] = (),
) -> list[int]:
    """SIGTERM every process in the namespaces, SIGKILL what is left after `grace` seconds.

    Repeats a few times to catch processes spawned meanwhile. Returns the pids signalled.
    """
    namespaces = list(namespaces)
    own_by_pid = {p.pid: p for p in own}
    signalled: list[int] = []
    for _round in range(3):
        pids = [pid for ns in namespaces for pid in netns_pids(ns) if pid != os.getpid()]
        if not pids:
            break
        for pid in pids:
            _signal(pid, signal.SIGTERM)
        signalled.extend(pids)
        deadline = time.monotonic() + grace
        killed = False
        while True:
            for pid in pids:
                if pid in own_by_pid:
                    own_by_pid[pid].poll()
                else:
                    _reap(pid)
            alive = [pid for pid in pids if pid_alive(pid)]
            if not alive:
                break
            if time.monotonic() >= deadline:
                if killed:
                    break  # a process that survives SIGKILL for 2 s: give up, report nothing
                for pid in alive:
                    _signal(pid, signal.SIGKILL)
                killed = True
                deadline = time.monotonic() + 2.0
            time.sleep(0.02)
    for proc in own_by_pid.values():
        if proc.poll() is None and not pid_alive(proc.pid):
            proc.poll()
    return signalled


def delete_netns(netns: str) -> bool:
    """Delete a named namespace; False if it did not exist."""
    if netns not in list_netns():
        return False
    try:
        _cmd(["ip", "netns", "del", netns])
    except LabError:
        if netns in list_netns():
            raise
        return False
    return True


# --------------------------------------------------------------------------- the lab


class Lab:
    """A switch, N hosts, a client and etcd, each in its own network namespace.

    ``etcd_tls``: etcd serves https only and wants a client certificate from a CA made in
    ``<workdir>/pki`` (``haagent.lab.pki``). ``etcd_auth``: after start, users ``root`` and
    ``haagent`` and the role ``haagent`` (readwrite on ``/haagent/v1/`` only), then ``auth
    enable``. Agent configs written by :meth:`write_agent_config` log in as ``haagent``: by
    certificate with TLS, by password without. ``etcd_args``: more etcd flags.
    """

    def __init__(
        self,
        hosts: int = 3,
        *,
        etcd_members: int = 1,
        lab_id: str | None = None,
        workdir: Path | None = None,
        etcd_tls: bool = False,
        etcd_auth: bool = False,
        etcd_args: Sequence[str] = (),
    ) -> None:
        if not 1 <= hosts <= MAX_HOSTS:
            raise ValueError(f"hosts must be between 1 and {MAX_HOSTS}, not {hosts}")
        if etcd_members not in (1, 3):
            raise ValueError(f"etcd_members must be 1 or 3, not {etcd_members}")
        if lab_id is None:
            lab_id = _new_lab_id()
        elif not LAB_ID_RE.match(lab_id):
            raise ValueError(f"lab id must be 'hx' and 5 lowercase hex digits, not {lab_id!r}")
        self.lab_id: str = lab_id
        self.state_dir: Path = STATE_ROOT / lab_id
        self._owns_workdir = workdir is None
        self.workdir: Path = workdir if workdir is not None else self.state_dir
        self.switch_ns: str = f"{lab_id}-sw"

        def node(role: str, part: int) -> Node:
            return Node(role, f"{lab_id}-{role}", _addr4(part), _addr6(part))

        if etcd_members == 1:
            self.etcd_nodes: list[Node] = [node("etcd", ETCD_HOST_PARTS[0])]
        else:
            self.etcd_nodes = [
                node(f"etcd{i}", part) for i, part in enumerate(ETCD_HOST_PARTS, start=1)
            ]
        self.hosts: list[Node] = [node(f"h{i}", HOST_BASE + i) for i in range(1, hosts + 1)]
        self.client: Node = node("cl", CLIENT_HOST_PART)
        self.etcd: EtcdCluster = EtcdCluster(
            self,
            self.etcd_nodes,
            self.workdir,
            token=lab_id,
            pki=lab_pki.LabPKI(self.workdir / "pki") if etcd_tls else None,
            auth=etcd_auth,
            extra_args=etcd_args,
        )
        self._procs: list[subprocess.Popen[bytes]] = []
        self._proc_records: list[dict[str, Any]] = []
        self._status = "new"
        self._created = time.time()

    # ---------------------------------------------------------------- names and addresses

    @property
    def nodes(self) -> list[Node]:
        """Every node with an address: etcd members, hosts, client."""
        return [*self.etcd_nodes, *self.hosts, self.client]

    @property
    def namespaces(self) -> list[str]:
        return [self.switch_ns, *(n.netns for n in self.nodes)]

    @property
    def etcd_endpoints(self) -> list[str]:
        """Client URLs of the etcd members: https:// when the lab runs etcd with TLS."""
        return self.etcd.endpoints

    @property
    def etcd_endpoints6(self) -> list[str]:
        return self.etcd.endpoints6

    @staticmethod
    def vip4(i: int) -> IPv4Address:
        """The i-th (0-based) address reserved for VIPs: 198.51.100.200 + i."""
        if not 0 <= i < VIP_COUNT:
            raise ValueError(f"VIP index must be 0..{VIP_COUNT - 1}, not {i}")
        return _addr4(VIP_BASE + i)

    @staticmethod
    def vip6(i: int) -> IPv6Address:
        """The i-th (0-based) IPv6 VIP: 2001:db8:100::200 … ::249 (same digits as vip4)."""
        if not 0 <= i < VIP_COUNT:
            raise ValueError(f"VIP index must be 0..{VIP_COUNT - 1}, not {i}")
        return _addr6(VIP_BASE + i)

    @staticmethod
    def scale_vips(count: int) -> list[tuple[str, str]]:
        """``count`` VIPs as (name, address) for :meth:`write_agent_config`, named
        ``vip0000`` …, alternating IPv4 and IPv6 while IPv4 lasts (408 addresses: see
        SCALE_NET4), IPv6 only after that. Not to be combined with vip4()/vip6() in one
        cluster: the first IPv4 ones overlap."""
        pool4 = [SUBNET4[p] for p in range(CLIENT_HOST_PART + 1, 255)]
        pool4 += list(SCALE_NET4.hosts())
        limit = len(pool4) + SCALE_NET6.num_addresses - 1
        if not 0 <= count <= limit:
            raise ValueError(f"scale VIP count must be 0..{limit}, not {count}")
        n4 = min(len(pool4), (count + 1) // 2)
        v4 = iter(pool4[:n4])
        v6 = (SCALE_NET6[i] for i in range(1, count - n4 + 1))
        out: list[tuple[str, str]] = []
        for i in range(count):
            address = next(v4, None) if i % 2 == 0 else None
            out.append((f"vip{i:04d}", str(address if address is not None else next(v6))))
        return out

    def host(self, role: str) -> Node:
        """The node with that role ('h1', 'cl', 'etcd', 'etcd2', …)."""
        for n in self.nodes:
            if n.role == role:
                return n
        raise KeyError(f"lab {self.lab_id} has no node {role!r}")

    def _netns(self, node: Node | str) -> str:
        if isinstance(node, Node):
            return node.netns
        if node in self.namespaces:
            return node
        if node == "sw":
            return self.switch_ns
        return self.host(node).netns

    # ---------------------------------------------------------------- lifecycle

    def up(self) -> Lab:
        """Build the topology, start etcd and wait until it answers. All or nothing."""
        if self._status == "up":
            return self
        existing = set(list_netns())
        clash = [ns for ns in self.namespaces if ns in existing]
        if clash or self.state_dir.exists():
            raise LabError(f"lab {self.lab_id} already exists ({', '.join(clash) or 'state'})")
        try:
            self._status = "building"
            self.state_dir.mkdir(parents=True, exist_ok=False)
            self.workdir.mkdir(parents=True, exist_ok=True)
            self._write_state()
            self._build_network()
            self._write_state()
            if self.etcd.pki is not None:
                lab_pki.build(
                    self.etcd.pki.directory,
                    [(n.role, [n.ipv4, n.ipv6]) for n in self.etcd_nodes],
                    [ROOT_USER, AGENT_USER],
                )
            self.etcd.start()
            self.etcd.wait_healthy()
            if self.etcd.auth:
                self.etcd.enable_auth()
            self._status = "up"
            self._write_state()
        except BaseException:
            self.down()
            raise
        return self

    def _build_network(self) -> None:
        sw = self.switch_ns
        for ns in self.namespaces:
            _cmd(["ip", "netns", "add", ns])
            _cmd(["ip", "-n", ns, "link", "set", "lo", "up"])
        # The switch is pure L2: no IPv6 on the bridge, so it sends nothing of its own.
        self._ns_sysctl(sw, "net.ipv6.conf.all.disable_ipv6", "1")
        self._ns_sysctl(sw, "net.ipv6.conf.default.disable_ipv6", "1")
        _cmd(
            ["ip", "-n", sw, *f"link add {BRIDGE} type bridge stp_state 0 mcast_snooping 0".split()]
        )
        _cmd(["ip", "-n", sw, "link", "set", BRIDGE, "up"])
        for n in self.nodes:
            peer = ["peer", "name", n.role, "netns", sw]
            # Both ends are created directly in their namespaces: nothing ever appears in the
            # root namespace, so a crash here cannot leave a stray interface behind.
            _cmd(["ip", *f"link add {n.ifname} netns {n.netns} type veth".split(), *peer])
            _cmd(["ip", "-n", sw, "link", "set", n.role, "master", BRIDGE])
            _cmd(["ip", "-n", sw, "link", "set", n.role, "up"])
            _cmd(["ip", "-n", n.netns, "addr", "add", f"{n.ipv4}/24", "dev", n.ifname])
            _cmd(["ip", "-n", n.netns, "addr", "add", f"{n.ipv6}/64", "dev", n.ifname, "nodad"])
            _cmd(["ip", "-n", n.netns, "link", "set", n.ifname, "up"])

    @staticmethod
    def _ns_sysctl(netns: str, key: str, value: str) -> None:
        _cmd(["ip", "netns", "exec", netns, "sysctl", "-q", "-w", f"{key}={value}"])

    def down(self) -> None:
        """Kill every process in the lab's namespaces, delete them, remove the state.

        Idempotent; parts that are already gone are skipped silently.
        """
        present = set(list_netns())
        namespaces = [ns for ns in self.namespaces if ns in present]
        kill_netns_processes(namespaces, own=self._procs)
        # Processes recorded by the lab that left their namespace are not ours to chase, but
        # our own children get reaped.
        for proc in self._procs:
            if proc.poll() is None and not pid_alive(proc.pid):
                proc.poll()
        errors: list[str] = []
        for ns in namespaces:
            try:
                delete_netns(ns)
            except LabError as exc:
                errors.append(str(exc))
        shutil.rmtree(self.state_dir, ignore_errors=True)
        self._status = "down"
        if errors:
            raise LabError("; ".join(errors))

    def __enter__(self) -> Lab:
        return self.up()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.down()

    # ---------------------------------------------------------------- state file

    @property
    def state_file(self) -> Path:
        return self.state_dir / "state.json"

    def state(self) -> dict[str, Any]:
        return {
            "schema": STATE_SCHEMA,
            "lab_id": self.lab_id,
            "status": self._status,
            "created": self._created,
            "owner_pid": os.getpid(),
            "workdir": str(self.workdir),
            "workdir_owned": self._owns_workdir,
            "switch_ns": self.switch_ns,
            "bridge": BRIDGE,
            "etcd_members": len(self.etcd_nodes),
            "etcd_tls": self.etcd.tls,
            "etcd_auth": self.etcd.auth,
            "etcd_args": self.etcd.extra_args,
            "hosts": len(self.hosts),
            "etcd_endpoints": self.etcd_endpoints,
            "nodes": [
                {
                    "role": n.role,
                    "kind": n.kind,
                    "netns": n.netns,
                    "ifname": n.ifname,
                    "ipv4": str(n.ipv4),
                    "ipv6": str(n.ipv6),
                }
                for n in self.nodes
            ],
            "processes": self._proc_records,
        }

    def _write_state(self) -> None:
        if not self.state_dir.is_dir():
            return
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.state(), indent=2) + "\n")
        tmp.replace(self.state_file)

    @classmethod
    def load(cls, lab_id: str) -> Lab:
        """Re-attach to a lab built by another process, from its state file."""
        path = STATE_ROOT / lab_id / "state.json"
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise LabError(f"no lab {lab_id} (no {path})") from None
        except (OSError, ValueError) as exc:
            raise LabError(f"unreadable state {path}: {exc}") from exc
        workdir = None if data.get("workdir_owned", True) else Path(data["workdir"])
        lab = cls(
            int(data["hosts"]),
            etcd_members=int(data["etcd_members"]),
            lab_id=lab_id,
            workdir=workdir,
            etcd_tls=bool(data.get("etcd_tls", False)),
            etcd_auth=bool(data.get("etcd_auth", False)),
            etcd_args=[str(a) for a in data.get("etcd_args", [])],
        )
        # Auth is switched on once, at up(); a lab that got that far has it on.
        lab.etcd.auth_enabled = lab.etcd.auth and lab.etcd.password_file(ROOT_USER).exists()
        lab._status = str(data.get("status", "unknown"))
        lab._created = float(data.get("created", 0.0))
        lab._proc_records = list(data.get("processes", []))
        return lab

    # ---------------------------------------------------------------- processes

    def run(
        self,
        node: Node | str,
        argv: Sequence[str],
        *,
        check: bool = True,
        timeout: float = 10,
        input: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run a command in the node's namespace and wait (bounded) for it; output captured.

        With check, a non-zero exit raises CalledProcessError (stderr attached as a note).
        """
        full = ["ip", "netns", "exec", self._netns(node), *argv]
        proc = subprocess.run(
            full,
            capture_output=True,
            text=True,
            timeout=timeout,
            input=input,
            env=_env(env),
            check=False,
        )
        if check and proc.returncode != 0:
            exc = subprocess.CalledProcessError(proc.returncode, full, proc.stdout, proc.stderr)
            exc.add_note(f"stderr: {proc.stderr.strip()}")
            raise exc
        return proc

    def popen(
        self,
        node: Node | str,
        argv: Sequence[str],
        *,
        log: Path | None = None,
        env: Mapping[str, str] | None = None,
    ) -> subprocess.Popen[bytes]:
        """Start a long-running process in the node's namespace, in its own process group.

        stdout and stderr go to `log` (default: a file in the workdir). The process is
        recorded in the state file and killed by down().
        """
        netns = self._netns(node)
        if log is None:
            stem = Path(argv[0]).name
            log = self.workdir / f"{netns.split('-', 1)[1]}.{stem}.{len(self._procs)}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "ab") as out:
            proc = subprocess.Popen(
                ["ip", "netns", "exec", netns, *argv],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env=_env(env),
            )
        self._procs.append(proc)
        self._proc_records.append(
            {
                "pid": proc.pid,
                "netns": netns,
                "argv": list(argv),
                "log": str(log),
                "started": time.time(),
            }
        )
        self._write_state()
        return proc

    @staticmethod
    def stop(proc: subprocess.Popen[bytes], *, timeout: float = 5.0) -> int:
        """SIGTERM a process started by popen(), SIGKILL it after `timeout`; its exit code."""
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5.0)
        return proc.returncode

    def processes(self) -> list[dict[str, Any]]:
        """Recorded processes with an `alive` flag."""
        return [{**rec, "alive": pid_alive(int(rec["pid"]))} for rec in self._proc_records]

    # ---------------------------------------------------------------- agents

    def agent_etcd_security(self) -> dict[str, object]:
        """The ``etcd`` config keys that let an agent in as ``haagent`` on this lab's etcd.

        TLS: ``tls.{ca,cert,key}`` with haagent's client certificate, whose CN already names
        the user. Auth without TLS: ``username`` + ``password_file``. Neither: nothing.
        """
        out: dict[str, object] = {}
        if self.etcd.pki is not None:
            pair = self.etcd.client_cert(AGENT_USER)
            ca = self.etcd.pki.ca.cert
            out["tls"] = {"ca": str(ca), "cert": str(pair.cert), "key": str(pair.key)}
        elif self.etcd.auth:
            out["username"] = AGENT_USER
            out["password_file"] = str(self.etcd.password_file(AGENT_USER))
        return out

    def write_agent_config(
        self,
        host: Node,
        vips: Sequence[tuple[str, str]],
        *,
        ttl: int = 3,
        margin: float = 1.0,
        extra: Mapping[str, object] | None = None,
        tls: Mapping[str, str | Path] | None = None,
        username: str | None = None,
        password: str | None = None,
        password_file: Path | None = None,
    ) -> Path:
        """Write <workdir>/<role>.yaml for an agent on `host`; vips are (name, address).

        On a lab with etcd TLS/auth the agent gets :meth:`agent_etcd_security` (user
        ``haagent``) unless ``tls`` (``{"ca", "cert", "key"}`` paths), ``username``,
        ``password`` or ``password_file`` are given: then exactly those. ``extra`` replaces
        whole top-level sections, ``etcd`` included.
        """
        etcd: dict[str, object] = {"endpoints": self.etcd_endpoints, "timeout": 0.5}
        given = (tls, username, password, password_file)
        if all(v is None for v in given):
            etcd.update(self.agent_etcd_security())
        else:
            if tls is not None:
                etcd["tls"] = {k: str(v) for k, v in tls.items()}
            if username is not None:
                etcd["username"] = username
            if password is not None:
                etcd["password"] = password
            if password_file is not None:
                etcd["password_file"] = str(password_file)
        config: dict[str, object] = {
            "cluster": self.lab_id,
            "node": host.role,
            "etcd": etcd,
            "lease": {"ttl": ttl, "margin": margin},
            "announce": {"count": 3, "interval": 0.1},
            "vips": [
                {"name": name, "address": address, "interface": host.ifname}
                for name, address in vips
            ],
        }
        if extra:
            config.update(extra)
        path = self.workdir / f"{host.role}.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        if password is not None:
            path.chmod(0o600)  # it holds a secret (haagent.security warns otherwise)
        return path

    def agent_log_path(self, host: Node) -> Path:
        return self.workdir / f"{host.role}.agent.log"

    def start_agent(self, host: Node, config: Path) -> subprocess.Popen[bytes]:
        """Run `python -m haagent run -c CONFIG` in the host's namespace."""
        return self.popen(
            host,
            # Lock and lease files stay in the lab, not in this machine's /run/haagent.
            [
                *(sys.executable, "-m", "haagent", "run", "-c", str(config)),
                *("--state-dir", str(self.workdir / "state")),
            ],
            log=self.agent_log_path(host),
            env={"PYTHONUNBUFFERED": "1"},
        )

    def agent_log(self, host: Node) -> str:
        try:
            return self.agent_log_path(host).read_text(errors="replace")
        except FileNotFoundError:
            return ""

    # ---------------------------------------------------------------- faults

    def cut_link(self, node: Node) -> None:
        """Take the switch port of `node` down: it loses all of L2 (clients and etcd)."""
        _cmd(["ip", "-n", self.switch_ns, "link", "set", node.role, "down"])

    def restore_link(self, node: Node) -> None:
        _cmd(["ip", "-n", self.switch_ns, "link", "set", node.role, "up"])

    def block_etcd(self, node: Node) -> None:
        """Drop everything between `node` and every etcd member; clients still reach it.

        The drops are counted: :meth:`etcd_drops` tells whether anything on `node` has tried
        to reach etcd since."""
        v4 = ", ".join(str(n.ipv4) for n in self.etcd_nodes)
        v6 = ", ".join(str(n.ipv6) for n in self.etcd_nodes)
        ruleset = f"""
table inet {NFT_TABLE}
delete table inet {NFT_TABLE}
table inet {NFT_TABLE} {{
    chain input {{
        type filter hook input priority -10; policy accept;
        ip saddr {{ {v4} }} drop
        ip6 saddr {{ {v6} }} drop
    }}
    chain output {{
        type filter hook output priority -10; policy accept;
        ip daddr {{ {v4} }} counter drop
        ip6 daddr {{ {v6} }} counter drop
    }}
}}
"""
        _cmd(["ip", "netns", "exec", node.netns, "nft", "-f", "-"], input=ruleset)

    def etcd_drops(self, node: Node) -> int:
        """Packets `node` has sent towards etcd since :meth:`block_etcd`, all dropped; 0 when
        etcd is not blocked for it."""
        argv = ["nft", "-j", "list", "chain", "inet", NFT_TABLE, "output"]
        proc = subprocess.run(
            ["ip", "netns", "exec", node.netns, *argv],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
        if proc.returncode != 0:
            return 0  # no such table: not blocked
        return sum(
            int(expr["counter"]["packets"])
            for item in json.loads(proc.stdout).get("nftables", [])
            for expr in item.get("rule", {}).get("expr", [])
            if isinstance(expr, dict) and "counter" in expr
        )

    def unblock_etcd(self, node: Node) -> None:
        ruleset = f"table inet {NFT_TABLE}\ndelete table inet {NFT_TABLE}\n"
        _cmd(["ip", "netns", "exec", node.netns, "nft", "-f", "-"], input=ruleset)

    # ---------------------------------------------------------------- inspection

    def bound(
        self, node: Node, *, include_link_local: bool = False, all_interfaces: bool = False
    ) -> set[IPv4Address | IPv6Address]:
        """Addresses on the node's interface, or with ``all_interfaces`` on any of its
        interfaces (a vmac, lo, …); link-local ones only if asked."""
        dev = [] if all_interfaces else ["dev", node.ifname]
        out = _cmd(["ip", "-n", node.netns, "-j", "addr", "show", *dev])
        result: set[IPv4Address | IPv6Address] = set()
        for link in json.loads(out or "[]"):
            for info in link.get("addr_info", []):
                if "local" not in info:
                    continue
                addr = ip_address(info["local"])
                if addr.is_link_local and not include_link_local:
                    continue
                result.add(addr)
        return result

    def add_address(
        self, node: Node, address: IPv4Address | IPv6Address, *, marked: bool = True
    ) -> None:
        """Bind an extra /32 or /128 on the node's interface: as an agent would (marked as
        haagent's, haagent/lab/bind.py), or ``marked=False`` as an operator would by hand."""
        plen = 32 if isinstance(address, IPv4Address) else 128
        if marked:
            bind = [sys.executable, "-m", "haagent.lab.bind", node.ifname, f"{address}/{plen}"]
            _cmd(["ip", "netns", "exec", node.netns, *bind])
            return
        nodad = ["nodad"] if plen == 128 else []
        _cmd(
            ["ip", "-n", node.netns, "addr", "add", f"{address}/{plen}", "dev", node.ifname, *nodad]
        )

    def del_address(self, node: Node, address: IPv4Address | IPv6Address) -> None:
        plen = 32 if isinstance(address, IPv4Address) else 128
        _cmd(["ip", "-n", node.netns, "addr", "del", f"{address}/{plen}", "dev", node.ifname])

    # ---------------------------------------------------------------- responder and probe

    def start_responder(
        self, node: Node, port: int = 7000, *, ready_timeout: float = 5.0
    ) -> subprocess.Popen[bytes]:
        """Start the UDP+TCP responder (named after the node's role) and wait until it listens."""
        log = self.workdir / f"{node.role}.responder.{port}.log"
        log.unlink(missing_ok=True)
        argv = [sys.executable, "-m", "haagent.lab.responder", "--name", node.role]
        argv += ["--port", str(port)]
        proc = self.popen(
            node,
            argv,
            log=log,
            env={"PYTHONUNBUFFERED": "1"},
        )
        deadline = time.monotonic() + ready_timeout
        while time.monotonic() < deadline:
            text = log.read_text(errors="replace") if log.exists() else ""
            if any(line.startswith("ready ") for line in text.splitlines()):
                return proc
            if proc.poll() is not None:
                raise LabError(f"responder on {node.role} exited {proc.returncode}: {text[-500:]}")
            time.sleep(0.02)
        self.stop(proc)
        raise LabError(f"responder on {node.role} not ready after {ready_timeout}s")

    def probe_once(
        self,
        target: IPv4Address | IPv6Address | str,
        port: int = 7000,
        *,
        tcp: bool = False,
        timeout: float = 0.5,
        node: Node | str | None = None,
        unconnected: bool = False,
    ) -> dict[str, Any]:
        """One probe from `node` (default: the client); {"by": name|None, "source": addr|None}.

        With `unconnected` a UDP reply is accepted from any source address and `source` tells
        which one it came from; otherwise (like a real client) only from the target.
        """
        argv = [sys.executable, "-m", "haagent.lab.probe", "--once", "--target", str(target)]
        argv += ["--port", str(port), "--timeout", str(timeout)]
        if tcp:
            argv.append("--tcp")
        if unconnected:
            argv.append("--unconnected")
        proc = self.run(
            node if node is not None else self.client, argv, check=False, timeout=timeout + 10
        )
        try:
            result: dict[str, Any] = json.loads(proc.stdout)
        except ValueError:
            raise LabError(f"probe failed (exit {proc.returncode}): {proc.stderr[-500:]}") from None
        return result

    def ping(
        self,
        node: Node | str,
        target: IPv4Address | IPv6Address | str,
        *,
        timeout: float = 1.0,
    ) -> float | None:
        """One ICMP echo from `node` to `target`; the round trip in seconds or None."""
        argv = [sys.executable, "-m", "haagent.lab.probe", "--ping", "--target", str(target)]
        proc = self.run(node, [*argv, "--timeout", str(timeout)], check=False, timeout=timeout + 10)
        try:
            rtt = json.loads(proc.stdout)["rtt"]
        except (ValueError, KeyError, TypeError):
            raise LabError(f"ping failed (exit {proc.returncode}): {proc.stderr[-500:]}") from None
        return None if rtt is None else float(rtt)

    def start_probe(
        self,
        target: IPv4Address | IPv6Address | str,
        out: Path,
        *,
        port: int = 7000,
        interval: float = 0.005,
        duration: float = 5.0,
        tcp: bool = False,
        node: Node | str | None = None,
    ) -> subprocess.Popen[bytes]:
        """Start a probe run from `node` (default: the client) writing JSON lines to `out`."""
        argv = [sys.executable, "-m", "haagent.lab.probe", "--target", str(target)]
        argv += ["--port", str(port), "--interval", str(interval), "--duration", str(duration)]
        argv += ["--out", str(out)]
        if tcp:
            argv.append("--tcp")
        return self.popen(node if node is not None else self.client, argv)


def _env(extra: Mapping[str, str] | None) -> dict[str, str] | None:
    if not extra:
        return None
    return {**os.environ, **extra}


def _new_lab_id() -> str:
    existing = {m.group(1) for ns in list_netns() if (m := _NS_RE.match(ns))}
    for _ in range(100):
        lab_id = "hx" + secrets.token_hex(3)[:5]
        if lab_id not in existing and not (STATE_ROOT / lab_id).exists():
            return lab_id
    raise LabError("could not find a free lab id")


# --------------------------------------------------------------------------- leftovers


def lab_ids(prefix: str = "hx") -> list[str]:
    """Ids of labs present on this machine (namespaces or state), starting with `prefix`."""
    ids = {m.group(1) for ns in list_netns() if (m := _NS_RE.match(ns))}
    if STATE_ROOT.is_dir():
        ids |= {p.name for p in STATE_ROOT.iterdir() if LAB_ID_RE.match(p.name)}
    return sorted(i for i in ids if i.startswith(prefix))


def find_leftovers(prefix: str = "hx") -> list[str]:
    """Namespaces named like a lab (``hx`` + 5 hex + ``-role``) whose lab id starts with
    `prefix`. The default finds every lab; pass a longer prefix (a whole id) to aim at one."""
    return [ns for ns in list_netns() if (m := _NS_RE.match(ns)) and m.group(1).startswith(prefix)]


def cleanup_leftovers(prefix: str = "hx") -> list[str]:
    """Kill the processes in lab namespaces, delete them and remove stale state dirs.

    Returns the namespaces and directories removed. Labs still in use by a live process are
    removed too: this is `haagent lab down --all`.
    """
    namespaces = find_leftovers(prefix)
    ids = sorted({ns.split("-", 1)[0] for ns in namespaces} | set(lab_ids(prefix)))
    kill_netns_processes(namespaces)
    removed: list[str] = []
    for ns in namespaces:
        try:
            if delete_netns(ns):
                removed.append(ns)
        except LabError:
            continue
    for lab_id in ids:
        state_dir = STATE_ROOT / lab_id
        if state_dir.exists():
            shutil.rmtree(state_dir, ignore_errors=True)
            removed.append(str(state_dir))
    return removed

"""Real etcd members (Debian's /usr/bin/etcd, 3.4) inside the lab's namespaces.

Each member listens only on its own lab addresses (client 2379, peer 2380, IPv4 and IPv6),
keeps its data in the lab workdir and logs to a file there. Health is checked with
``etcdctl endpoint health`` run from the client namespace, i.e. over the lab network.

A system etcd the Debian package may have started on 127.0.0.1 is never touched: everything
here is addressed by namespace and lab address.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from ipaddress import IPv4Address, IPv6Address
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from haagent.lab.topology import Node

ETCD = "/usr/bin/etcd"
ETCDCTL = "/usr/bin/etcdctl"
CLIENT_PORT = 2379
PEER_PORT = 2380
START_TIMEOUT = 15.0
HEALTH_INTERVAL = 0.1


class EtcdError(RuntimeError):
    """An etcd member did not start, stop or answer in time."""


class Runner(Protocol):
    """What the cluster needs from the lab: run and spawn commands in a namespace."""

    @property
    def client(self) -> Node: ...

    def run(
        self,
        node: Node | str,
        argv: Sequence[str],
        *,
        check: bool = True,
        timeout: float = 10,
        input: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]: ...

    def popen(
        self,
        node: Node | str,
        argv: Sequence[str],
        *,
        log: Path | None = None,
        env: Mapping[str, str] | None = None,
    ) -> subprocess.Popen[bytes]: ...


def _url(addr: IPv4Address | IPv6Address, port: int) -> str:
    host = f"[{addr}]" if isinstance(addr, IPv6Address) else str(addr)
    return f"http://{host}:{port}"


def client_url(node: Node) -> str:
    return _url(node.ipv4, CLIENT_PORT)


def peer_url(node: Node) -> str:
    return _url(node.ipv4, PEER_PORT)


def member_argv(node: Node, members: Sequence[Node], data_dir: Path, token: str) -> list[str]:
    """The etcd command line of one member of a static cluster."""
    initial = ",".join(f"{m.role}={peer_url(m)}" for m in members)
    return [
        ETCD,
        "--name",
        node.role,
        "--data-dir",
        str(data_dir),
        "--listen-client-urls",
        f"{_url(node.ipv4, CLIENT_PORT)},{_url(node.ipv6, CLIENT_PORT)}",
        "--advertise-client-urls",
        client_url(node),
        "--listen-peer-urls",
        peer_url(node),
        "--initial-advertise-peer-urls",
        peer_url(node),
        "--initial-cluster",
        initial,
        "--initial-cluster-token",
        token,
        # Ignored when the data dir already holds a member, so a restart reuses this argv.
        "--initial-cluster-state",
        "new",
        "--heartbeat-interval",
        "100",
        "--election-timeout",
        "1000",
        "--logger",
        "zap",
        "--log-outputs",
        "stderr",
    ]


def _etcd_env() -> dict[str, str]:
    # ETCD_* variables in our environment would silently override the flags above.
    return {k: v for k, v in os.environ.items() if not k.startswith("ETCD")}


def _tail(path: Path, lines: int = 20) -> str:
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


class EtcdCluster:
    """The lab's etcd members: start, wait for health, stop/kill/restart one member."""

    def __init__(self, lab: Runner, members: Sequence[Node], workdir: Path, *, token: str):
        self._lab = lab
        self.members = list(members)
        self.workdir = workdir
        self.token = token
        self._procs: dict[str, subprocess.Popen[bytes]] = {}

    def data_dir(self, node: Node) -> Path:
        return self.workdir / f"{node.role}.data"

    def log_path(self, node: Node) -> Path:
        return self.workdir / f"{node.role}.log"

    @property
    def endpoints(self) -> list[str]:
        return [client_url(m) for m in self.members]

    def _member(self, node: Node | str) -> Node:
        role = node if isinstance(node, str) else node.role
        for m in self.members:
            if m.role == role:
                return m
        raise KeyError(f"no etcd member {role!r}")

    # ---------------------------------------------------------------- processes

    def start(self, node: Node | str | None = None) -> None:
        """Start one member, or all of them (without waiting; see wait_healthy)."""
        targets = self.members if node is None else [self._member(node)]
        for m in targets:
            proc = self._procs.get(m.role)
            if proc is not None and proc.poll() is None:
                continue
            self.data_dir(m).mkdir(parents=True, exist_ok=True, mode=0o700)
            argv = member_argv(m, self.members, self.data_dir(m), self.token)
            self._procs[m.role] = self._lab.popen(m, argv, log=self.log_path(m), env=_etcd_env())

    def process(self, node: Node | str) -> subprocess.Popen[bytes] | None:
        return self._procs.get(self._member(node).role)

    def _signal(self, node: Node | str, sig: int, timeout: float) -> int | None:
        proc = self.process(node)
        if proc is None or proc.poll() is not None:
            return None if proc is None else proc.returncode
        proc.send_signal(sig)
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            return proc.wait(5.0)

    def stop(self, node: Node | str, *, timeout: float = 5.0) -> int | None:
        """SIGTERM one member and wait (SIGKILL after `timeout`); its exit code."""
        return self._signal(node, signal.SIGTERM, timeout)

    def kill(self, node: Node | str) -> int | None:
        """SIGKILL one member (a crash) and reap it."""
        return self._signal(node, signal.SIGKILL, 5.0)

    def pause(self, node: Node | str) -> None:
        """SIGSTOP one member: alive but silent (a hung server)."""
        proc = self.process(node)
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGSTOP)

    def resume(self, node: Node | str) -> None:
        proc = self.process(node)
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGCONT)

    def restart(self, node: Node | str, *, wait: bool = True) -> None:
        """Stop one member and start it again on the same data dir."""
        self.stop(node)
        self.start(node)
        if wait:
            self.wait_healthy([node])

    # ---------------------------------------------------------------- client side

    def etcdctl(
        self,
        *args: str,
        endpoints: Sequence[str] | None = None,
        check: bool = True,
        timeout: float = 10.0,
        node: Node | str | None = None,
        dial_timeout: float = 1.0,
        command_timeout: float = 2.0,
    ) -> subprocess.CompletedProcess[str]:
        """Run `etcdctl` (API v3) against the lab's etcd, from `node` (default: the client)."""
        eps = ",".join(endpoints if endpoints is not None else self.endpoints)
        argv = [ETCDCTL, f"--endpoints={eps}"]
        argv += [f"--dial-timeout={dial_timeout}s", f"--command-timeout={command_timeout}s"]
        return self._lab.run(
            self._lab.client if node is None else node,
            [*argv, *args],
            check=check,
            timeout=timeout,
            env={"ETCDCTL_API": "3"},
        )

    def healthy(self, node: Node | str) -> bool:
        """Does this member answer (a quorum read), seen from the client?"""
        proc = self.etcdctl(
            "endpoint",
            "health",
            endpoints=[client_url(self._member(node))],
            check=False,
            dial_timeout=0.5,
            command_timeout=1.0,
        )
        return proc.returncode == 0

    def healthy_from(self, node: Node | str) -> bool:
        """Can `node` (a host, say) reach a healthy etcd: the view of an agent there."""
        proc = self.etcdctl(
            "endpoint", "health", node=node, check=False, dial_timeout=0.5, command_timeout=1.0
        )
        return proc.returncode == 0

    def wait_healthy(
        self, nodes: Sequence[Node | str] | None = None, *, timeout: float = START_TIMEOUT
    ) -> float:
        """Wait until every given member (default: all) answers; seconds it took.

        Raises EtcdError with the tail of the logs of the members still down.
        """
        pending = [self._member(n) for n in (nodes if nodes is not None else self.members)]
        start = time.monotonic()
        deadline = start + timeout
        while pending:
            for m in list(pending):
                proc = self._procs.get(m.role)
                if proc is not None and proc.poll() is not None:
                    raise EtcdError(
                        f"etcd member {m.role} exited with {proc.returncode}:\n"
                        + _tail(self.log_path(m))
                    )
                if self.healthy(m):
                    pending.remove(m)
            if not pending:
                break
            if time.monotonic() >= deadline:
                tails = "\n".join(f"--- {m.role}:\n{_tail(self.log_path(m))}" for m in pending)
                raise EtcdError(
                    f"etcd members {[m.role for m in pending]} not healthy after {timeout}s\n"
                    + tails
                )
            time.sleep(HEALTH_INTERVAL)
        return time.monotonic() - start

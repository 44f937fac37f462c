"""Real etcd members (Debian's /usr/bin/etcd, 3.4) inside the lab's namespaces.

Each member listens only on its own lab addresses (client 2379, peer 2380, IPv4 and IPv6),
keeps its data in the lab workdir and logs to a file there. Health is checked with
``etcdctl endpoint health`` run from the client namespace, i.e. over the lab network.

Optionally secured (see docs/security.md):

* **TLS** (``pki`` given): client URLs are ``https``, and etcd requires a client certificate
  signed by the lab CA (``--client-cert-auth --trusted-ca-file``). Peer traffic stays plain
  ``http`` inside the lab.
* **Auth** (``auth=True``, after :meth:`EtcdCluster.enable_auth`): users ``root`` and
  ``haagent`` with random passwords kept in ``<workdir>/secrets/<user>.password`` (0600), and a
  role ``haagent`` allowed to read and write the prefix ``/haagent/v1/`` and nothing else. With
  TLS too, a client certificate's common name is an etcd user: a request that carries no
  password token acts as that user.

``etcdctl`` runs as ``root`` by default (its certificate with TLS, its password without), or
as any other user (``user=``).

A system etcd the Debian package may have started on 127.0.0.1 is never touched: everything
here is addressed by namespace and lab address.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from ipaddress import IPv4Address, IPv6Address
from pathlib import Path
from typing import Protocol

from haagent.lab.node import Node
from haagent.lab.pki import CertPair, LabPKI

ETCD = "/usr/bin/etcd"
ETCDCTL = "/usr/bin/etcdctl"
CLIENT_PORT = 2379
PEER_PORT = 2380
START_TIMEOUT = 15.0
HEALTH_INTERVAL = 0.1

# Auth: the administrator, and the one user and role the agents use.
ROOT_USER = "root"
AGENT_USER = "haagent"
AGENT_ROLE = "haagent"
AGENT_PREFIX = "/haagent/v1/"


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


def _url(addr: IPv4Address | IPv6Address, port: int, scheme: str = "http") -> str:
    host = f"[{addr}]" if isinstance(addr, IPv6Address) else str(addr)
    return f"{scheme}://{host}:{port}"


def client_url(node: Node, *, tls: bool = False, ipv6: bool = False) -> str:
    return _url(node.ipv6 if ipv6 else node.ipv4, CLIENT_PORT, "https" if tls else "http")


def peer_url(node: Node) -> str:
    return _url(node.ipv4, PEER_PORT)


def member_argv(
    node: Node,
    members: Sequence[Node],
    data_dir: Path,
    token: str,
    *,
    pki: LabPKI | None = None,
    extra: Sequence[str] = (),
) -> list[str]:
    """The etcd command line of one member of a static cluster.

    With ``pki`` the client URLs are https with the member's server certificate, and only
    clients with a certificate from the lab CA are let in. ``extra`` flags come last.
    """
    initial = ",".join(f"{m.role}={peer_url(m)}" for m in members)
    tls = pki is not None
    security: list[str] = []
    if pki is not None:
        server = pki.server(node.role)
        security = [
            "--cert-file",
            str(server.cert),
            "--key-file",
            str(server.key),
            "--client-cert-auth",
            "--trusted-ca-file",
            str(pki.ca.cert),
        ]
    return [
        ETCD,
        "--name",
        node.role,
        "--data-dir",
        str(data_dir),
        "--listen-client-urls",
        f"{client_url(node, tls=tls)},{client_url(node, tls=tls, ipv6=True)}",
        "--advertise-client-urls",
        client_url(node, tls=tls),
        *security,
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
        *extra,
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

    def __init__(
        self,
        lab: Runner,
        members: Sequence[Node],
        workdir: Path,
        *,
        token: str,
        pki: LabPKI | None = None,
        auth: bool = False,
        extra_args: Sequence[str] = (),
    ):
        self._lab = lab
        self.members = list(members)
        self.workdir = workdir
        self.token = token
        self.pki = pki
        self.auth = auth  # wanted: the lab calls enable_auth() once the members answer
        self.auth_enabled = False  # set by enable_auth(), or by a lab re-attaching
        self.extra_args = list(extra_args)  # more etcd flags, e.g. --auth-token-ttl
        self._procs: dict[str, subprocess.Popen[bytes]] = {}

    @property
    def tls(self) -> bool:
        return self.pki is not None

    def data_dir(self, node: Node) -> Path:
        return self.workdir / f"{node.role}.data"

    def log_path(self, node: Node) -> Path:
        return self.workdir / f"{node.role}.log"

    @property
    def endpoints(self) -> list[str]:
        return [client_url(m, tls=self.tls) for m in self.members]

    @property
    def endpoints6(self) -> list[str]:
        return [client_url(m, tls=self.tls, ipv6=True) for m in self.members]

    # ---------------------------------------------------------------- identities

    @property
    def secrets_dir(self) -> Path:
        return self.workdir / "secrets"

    def password_file(self, user: str) -> Path:
        """Where the password of an auth user is kept (0600); made by enable_auth()."""
        return self.secrets_dir / f"{user}.password"

    def password(self, user: str) -> str:
        return self.password_file(user).read_text().strip()

    def client_cert(self, user: str) -> CertPair:
        """The lab CA's client certificate for ``user`` (CN = user), made on first use."""
        if self.pki is None:
            raise EtcdError("the lab's etcd does not use TLS")
        return self.pki.ensure_client(user)

    def _new_password(self, user: str) -> str:
        self.secrets_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        path = self.password_file(user)
        password = secrets.token_hex(16)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(password + "\n")
        return password

    def enable_auth(self) -> None:
        """Create root, the role limited to the haagent prefix and its user; auth enable.

        The exact etcdctl commands of docs/security.md. Run once, after the first start.
        """
        root_pw = self._new_password(ROOT_USER)
        agent_pw = self._new_password(AGENT_USER)
        steps: list[tuple[str, ...]] = [
            ("user", "add", ROOT_USER, f"--new-user-password={root_pw}", "--interactive=false"),
            ("user", "grant-role", ROOT_USER, "root"),
            ("role", "add", AGENT_ROLE),
            ("role", "grant-permission", AGENT_ROLE, "--prefix=true", "readwrite", AGENT_PREFIX),
            ("user", "add", AGENT_USER, f"--new-user-password={agent_pw}", "--interactive=false"),
            ("user", "grant-role", AGENT_USER, AGENT_ROLE),
            ("auth", "enable"),
        ]
        for step in steps:
            # Before `auth enable` anyone may do this (with TLS: any client of the lab CA).
            proc = self.etcdctl(*step, check=False)
            if proc.returncode != 0:
                raise EtcdError(
                    f"etcdctl {' '.join(step[:3])}: exit {proc.returncode}: {proc.stderr.strip()}"
                )
        self.auth_enabled = True

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
            argv = member_argv(
                m, self.members, self.data_dir(m), self.token, pki=self.pki, extra=self.extra_args
            )
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

    def identity_args(
        self,
        user: str | None = ROOT_USER,
        *,
        password: str | None = None,
        cert: CertPair | None = None,
    ) -> list[str]:
        """etcdctl flags that make a request act as ``user``.

        With TLS: ``user``'s client certificate (or ``cert``), and ``--user/--password`` only
        if a ``password`` is given (then the password decides who we are). Without TLS but with
        auth: ``user``'s stored password unless ``password`` is given. ``user=None``: nobody
        (TLS: no client certificate at all, unless ``cert``).
        """
        args: list[str] = []
        if self.pki is not None:
            args.append(f"--cacert={self.pki.ca.cert}")
            pair = cert if cert is not None else (self.client_cert(user) if user else None)
            if pair is not None:
                args += [f"--cert={pair.cert}", f"--key={pair.key}"]
        if user is not None and (password is not None or (self.auth_enabled and not self.tls)):
            pw = password if password is not None else self.password(user)
            args += [f"--user={user}", f"--password={pw}"]
        return args

    def etcdctl(
        self,
        *args: str,
        endpoints: Sequence[str] | None = None,
        check: bool = True,
        timeout: float = 10.0,
        node: Node | str | None = None,
        dial_timeout: float = 1.0,
        command_timeout: float = 2.0,
        user: str | None = ROOT_USER,
        password: str | None = None,
        cert: CertPair | None = None,
        input: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run `etcdctl` (API v3) against the lab's etcd, from `node` (default: the client).

        On a secured etcd it acts as ``user`` (default root); see :meth:`identity_args`.
        ``input`` goes to its stdin (``etcdctl txn`` reads its operations from there).
        """
        eps = ",".join(endpoints if endpoints is not None else self.endpoints)
        argv = [ETCDCTL, f"--endpoints={eps}"]
        argv += [f"--dial-timeout={dial_timeout}s", f"--command-timeout={command_timeout}s"]
        argv += self.identity_args(user, password=password, cert=cert)
        return self._lab.run(
            self._lab.client if node is None else node,
            [*argv, *args],
            check=check,
            timeout=timeout,
            input=input,
            env={"ETCDCTL_API": "3"},
        )

    def healthy(self, node: Node | str) -> bool:
        """Does this member answer (a quorum read), seen from the client?"""
        proc = self.etcdctl(
            "endpoint",
            "health",
            endpoints=[client_url(self._member(node), tls=self.tls)],
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

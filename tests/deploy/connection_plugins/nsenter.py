"""Ansible connection into a running container by its PID 1: ``nsenter`` instead of ssh.

tests/deploy boots each target with ``systemd-nspawn -b --register=no`` (no machined, no
system bus on this machine, so ``machinectl`` cannot reach it). ``ansible_host`` is the PID, as
this machine sees it, of the container's systemd; every command and file transfer runs in
all of its namespaces (mount, UTS, IPC, network, PID, cgroup) with its root, as root. Only
ansible-core is needed; no collection.
"""

from __future__ import annotations

import subprocess

from ansible.errors import AnsibleConnectionFailure, AnsibleError  # type: ignore[import-untyped]
from ansible.plugins.connection import ConnectionBase  # type: ignore[import-untyped]

DOCUMENTATION = """
    name: nsenter
    short_description: run in the namespaces of a container's PID 1 (tests only)
    description:
        - Enters every namespace of the process given as ansible_host with nsenter(1).
    author: haagent
    options:
        remote_addr:
            description: PID of the container's init as this machine sees it.
            type: str
            vars:
                - name: ansible_host
        command_timeout:
            description: Seconds one command may take.
            type: int
            default: 600
            vars:
                - name: ansible_nsenter_timeout
"""

# The container's own PATH and a clean environment: nothing of the controller leaks in.
_ENV = ["/usr/bin/env", "-i", "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]
_ENV += ["LANG=C.UTF-8", "HOME=/root"]


class Connection(ConnectionBase):  # type: ignore[misc]
    transport = "nsenter"
    has_pipelining = True
    default_user = "root"

    def _pid(self) -> str:
        pid = str(self.get_option("remote_addr") or "")
        if not pid.isdigit():
            raise AnsibleConnectionFailure(f"nsenter: ansible_host must be a PID, not {pid!r}")
        return pid

    def _argv(self, *argv: str) -> list[str]:
        ns = ["--mount", "--uts", "--ipc", "--net", "--pid", "--cgroup"]
        return ["nsenter", "--target", self._pid(), *ns, "--root", "--wd", "--", *_ENV, *argv]

    def _connect(self) -> Connection:
        if not getattr(self, "_connected", False):
            probe = subprocess.run(self._argv("/bin/true"), capture_output=True, timeout=30)
            if probe.returncode != 0:
                raise AnsibleConnectionFailure(f"nsenter failed: {probe.stderr!r}")
            self._connected = True
        return self

    def exec_command(
        self, cmd: str, in_data: bytes | None = None, sudoable: bool = True
    ) -> tuple[int, bytes, bytes]:
        super().exec_command(cmd, in_data=in_data, sudoable=sudoable)
        proc = subprocess.run(
            self._argv("/bin/sh", "-c", cmd),
            input=in_data,
            stdin=None if in_data is not None else subprocess.DEVNULL,
            capture_output=True,
            timeout=int(self.get_option("command_timeout")),
        )
        return proc.returncode, proc.stdout, proc.stderr

    def put_file(self, in_path: str, out_path: str) -> None:
        super().put_file(in_path, out_path)
        with open(in_path, "rb") as src:
            proc = subprocess.run(
                self._argv("/bin/sh", "-c", 'cat > "$1"', "sh", out_path),
                stdin=src,
                capture_output=True,
                timeout=120,
            )
        if proc.returncode != 0:
            raise AnsibleError(f"nsenter: cannot write {out_path}: {proc.stderr!r}")

    def fetch_file(self, in_path: str, out_path: str) -> None:
        super().fetch_file(in_path, out_path)
        with open(out_path, "wb") as dst:
            proc = subprocess.run(
                self._argv("/bin/cat", "--", in_path),
                stdout=dst,
                stderr=subprocess.PIPE,
                timeout=120,
            )
        if proc.returncode != 0:
            raise AnsibleError(f"nsenter: cannot read {in_path}: {proc.stderr!r}")

    def close(self) -> None:
        self._connected = False

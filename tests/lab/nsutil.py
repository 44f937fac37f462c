"""Tiny namespace helpers for tests/lab/test_net.py and test_layer2.py.

Code under test runs *inside* a namespace in a forked child: the child calls
``pyroute2.netns.setns()`` before it creates anything, so its IPRoute, its packet sockets
and its /proc/thread-self/net all belong to that namespace, and the pytest process never
leaves the host's namespace. Forking (instead of ``ip netns exec python ...``) keeps the
modules the parent already imported, so a child starts in milliseconds, not a second.
"""

from __future__ import annotations

import multiprocessing
import secrets
import subprocess
import traceback
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

_FORK = multiprocessing.get_context("fork")


def unique_prefix() -> str:
    """'hxn' + 4 hex digits: short enough for 15-character link names."""
    return "hxn" + secrets.token_hex(2)


def ip(*args: str, ns: str | None = None, check: bool = True) -> str:
    cmd = ["ip", *(["-n", ns] if ns else []), *args]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=10, check=False)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {r.stderr.strip()}")
    return r.stdout


def _child(conn: Connection, ns: str, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
    from pyroute2.netns import setns

    try:
        setns(ns, flags=0)  # flags=0: never create a namespace by mistake
        conn.send(("ok", fn(*args)))
    except BaseException as exc:
        conn.send(("err", (exc, traceback.format_exc())))


@dataclass
class Child:
    """A function running in a forked child inside a namespace."""

    proc: Any
    conn: Connection
    name: str

    def result(self, timeout: float = 20) -> Any:
        try:
            if not self.conn.poll(timeout):
                raise TimeoutError(f"{self.name} gave no result within {timeout}s")
            status, value = self.conn.recv()
        finally:
            self.proc.join(2)
            if self.proc.is_alive():
                self.proc.kill()
                self.proc.join(2)
            self.conn.close()
        if status == "err":
            exc, tb = value
            exc.add_note(f"--- in namespace child ---\n{tb}")
            raise exc
        return value


def start_in_ns(ns: str, fn: Callable[..., Any], *args: Any) -> Child:
    parent, child = _FORK.Pipe(duplex=False)
    proc = _FORK.Process(target=_child, args=(child, ns, fn, args), daemon=True)
    proc.start()
    child.close()
    return Child(proc, parent, f"{getattr(fn, '__name__', fn)} in {ns}")


def run_in_ns(ns: str, fn: Callable[..., Any], *args: Any, timeout: float = 20) -> Any:
    """Run ``fn(*args)`` inside namespace ``ns``; return its result or re-raise its exception."""
    return start_in_ns(ns, fn, *args).result(timeout)


def _write_sysctl(key: str, value: str) -> None:
    with open("/proc/sys/" + key.replace(".", "/"), "w") as f:
        f.write(value)


def sysctl(ns: str, key: str, value: str) -> None:
    """Set a per-namespace sysctl (net.*) inside ``ns``."""
    run_in_ns(ns, _write_sysctl, key, value)


@dataclass
class Segment:
    """One Ethernet segment: a bridge in namespace ``<prefix>sw`` and a namespace per member,
    each with one veth (named ``<prefix><member>``) plugged into the bridge."""

    prefix: str
    members: tuple[str, ...]
    namespaces: list[str] = field(default_factory=list)

    def ns(self, member: str) -> str:
        return f"{self.prefix}{member}"

    def ifname(self, member: str) -> str:
        return f"{self.prefix}{member}"

    def mac(self, member: str) -> str:
        out = ip("-br", "link", "show", "dev", self.ifname(member), ns=self.ns(member))
        return out.split()[2].lower()

    def add_host_addresses(self, numbers: Mapping[str, int]) -> None:
        """Give member ``m`` 198.51.100.<n>/24, 2001:db8::<n in hex>/64 and, instead of its
        random link-local address, fe80::<m>/64, for each ``m: n`` of ``numbers``.

        IPv6 addresses are added with nodad, so nothing waits for their DAD; DAD stays
        enabled on the interface (accept_dad=1): other addresses still do it."""
        for m, n in numbers.items():
            ns, dev = self.ns(m), self.ifname(m)
            ip("addr", "add", f"198.51.100.{n}/24", "dev", dev, ns=ns)
            ip("addr", "add", f"2001:db8::{n:x}/64", "dev", dev, "nodad", ns=ns)
            ip("addr", "flush", "dev", dev, "scope", "link", ns=ns)
            ip("addr", "add", f"fe80::{m}/64", "dev", dev, "nodad", ns=ns)

    def _add_ns(self, name: str) -> None:
        ip("netns", "add", name)
        self.namespaces.append(name)
        ip("link", "set", "lo", "up", ns=name)

    def create(self) -> None:
        sw = f"{self.prefix}sw"
        self._add_ns(sw)
        ip("link", "add", f"{self.prefix}br", "type", "bridge", ns=sw)
        ip("link", "set", f"{self.prefix}br", "up", ns=sw)
        for m in self.members:
            self._add_ns(self.ns(m))
            port = f"{self.prefix}s{m}"
            ip("link", "add", port, "type", "veth", "peer", "name", self.ifname(m),
               "netns", self.ns(m), ns=sw)  # fmt: skip
            ip("link", "set", port, "master", f"{self.prefix}br", "up", ns=sw)
            ip("link", "set", self.ifname(m), "up", ns=self.ns(m))

    def destroy(self) -> None:
        # Deleting a namespace destroys the veth ends inside it, and with them their peers.
        for name in reversed(self.namespaces):
            ip("netns", "del", name, check=False)
        self.namespaces.clear()


@contextmanager
def segment(*members: str) -> Iterator[Segment]:
    seg = Segment(unique_prefix(), members)
    try:
        seg.create()
        yield seg
    finally:
        seg.destroy()

"""Health check runners, the monitor and notify hooks, for real, in a throwaway namespace.

Every runner runs *inside* the test's namespace: a forked child (``tests/lab/nsutil``) enters
it with setns() before it does anything else, so its sockets, ioctls and the commands it starts
belong to that namespace. Servers are started there with ``ip netns exec``. Addresses are
documentation addresses on a veth pair whose ends are both inside the namespace; nothing leaves
it.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import secrets
import select
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from ipaddress import IPv4Address, IPv4Interface
from multiprocessing.connection import Connection
from typing import Any

import pytest
import yaml

from haagent.config import (
    SHELL,
    ExecCheckConfig,
    HttpCheckConfig,
    NotifyConfig,
    VipConfig,
    parse_config,
)
from haagent.health.checks import (
    OUTPUT_TAIL,
    CheckResult,
    check_exec,
    check_http,
    check_interface,
    check_tcp,
    run_check,
)
from haagent.health.monitor import HealthMonitor, VipHealthChanged
from haagent.health.notify import Notifier
from haagent.lab import pki
from haagent.lab.wait import wait_until
from tests.lab.nsutil import ip, run_in_ns, start_in_ns

pytestmark = pytest.mark.lab

_FORK = multiprocessing.get_context("fork")
ADDR = "198.51.100.1"
ADDR6 = "2001:db8::1"
BLACKHOLE = "198.51.100.99"  # on-link, but nobody answers ARP for it: SYNs go nowhere
PORT = 8080


# --------------------------------------------------------------------------- namespace


@pytest.fixture
def ns() -> Iterator[str]:
    """A fresh namespace ``hxh<4 hex>`` with lo up and a veth end holding ADDR and ADDR6."""
    name = "hxh" + secrets.token_hex(2)
    ip("netns", "add", name)
    try:
        ip("link", "set", "lo", "up", ns=name)
        # Both ends of a veth pair stay inside; the addresses live on one end, and nothing
        # answers for other addresses of the prefix.
        ip("link", "add", f"{name}s", "type", "veth", "peer", "name", f"{name}p", ns=name)
        ip("addr", "add", f"{ADDR}/24", "dev", f"{name}s", ns=name)
        ip("addr", "add", f"{ADDR6}/64", "dev", f"{name}s", "nodad", ns=name)
        ip("link", "set", f"{name}s", "up", ns=name)
        ip("link", "set", f"{name}p", "up", ns=name)
        yield name
    finally:
        # Anything a test left running in it (only processes this test started live there).
        for pid in ip("netns", "pids", name, check=False).split():
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid), signal.SIGKILL)
        ip("netns", "del", name, check=False)


# --------------------------------------------------------------------------- a test server

_SERVER = textwrap.dedent(
    """
    import http.server, socket, sys, time

    class Handler(http.server.BaseHTTPRequestHandler):
        def _answer(self, body):
            if self.path == "/slow":
                time.sleep(5)
            status = int(self.path.split("/")[2]) if self.path.startswith("/status/") else 200
            data = {"/body": b"nothing to see", "/big": b"x" * 200000 + b"ok"}.get(
                self.path, b"ok: all good"
            )
            self.send_response(status)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if body:
                self.wfile.write(data)

        def do_GET(self):
            self._answer(True)

        def do_HEAD(self):
            self._answer(False)

        def log_message(self, *args):
            pass

    class Server(http.server.ThreadingHTTPServer):
        address_family = socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET
        daemon_threads = True

    srv = Server((sys.argv[1], int(sys.argv[2])), Handler)
    if len(sys.argv) > 3:
        import ssl
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(sys.argv[3], sys.argv[4])
        srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
    print("ready", flush=True)
    srv.serve_forever()
    """
)


class Server:
    """The HTTP (and so TCP) server above, listening in ``ns``; stop() makes the port refuse."""

    def __init__(self, ns: str, host: str = ADDR, port: int = PORT, *tls: str) -> None:
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, sys.executable, "-c", _SERVER, host, str(port), *tls],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], 10)
        line = self.proc.stdout.readline() if ready else ""
        if line.strip() != "ready":
            self.stop()
            err = self.proc.stderr.read() if self.proc.stderr else ""
            raise RuntimeError(f"test server did not start: {line!r} {err}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(5)
        for f in (self.proc.stdout, self.proc.stderr):
            if f is not None:
                f.close()


@contextlib.contextmanager
def server(ns: str, *args: Any) -> Iterator[Server]:
    s = Server(ns, *args)
    try:
        yield s
    finally:
        s.stop()


def gone(pid: int) -> bool:
    """No such process, or only a zombie waiting for a parent that does not reap it."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


# --------------------------------------------------------------------------- tcp


def test_tcp_passes_on_a_listener_and_fails_when_it_stops(ns):
    with server(ns):
        ok = run_in_ns(ns, check_tcp, ADDR, PORT, 1.0)
        assert ok.ok and ok.detail.startswith(f"connected to {ADDR}:{PORT} in ")
    refused = run_in_ns(ns, check_tcp, ADDR, PORT, 1.0)
    assert not refused.ok and refused.detail == f"{ADDR}:{PORT}: connection refused"

    with server(ns, ADDR6):
        ok6 = run_in_ns(ns, check_tcp, ADDR6, PORT, 1.0)
        assert ok6.ok and f"[{ADDR6}]:{PORT}" in ok6.detail


def test_tcp_times_out_within_its_timeout(ns):
    r = run_in_ns(ns, check_tcp, BLACKHOLE, PORT, 0.3)
    assert not r.ok and r.detail.startswith(f"{BLACKHOLE}:{PORT}: timed out after ")
    assert 0.25 <= r.duration < 1.5


# --------------------------------------------------------------------------- http


def _http_results(base: str) -> dict[str, CheckResult]:
    def h(path: str, **kw: Any) -> HttpCheckConfig:
        return HttpCheckConfig(name="web", url=base + path, timeout=kw.pop("timeout", 1.0), **kw)

    return {
        "ok": check_http(h("/health", expect_body="all good")),
        "status": check_http(h("/status/503")),
        "status_wanted": check_http(h("/status/503", expect_status=(503,))),
        "status_not_listed": check_http(h("/status/204", expect_status=(200,))),
        "body": check_http(h("/body", expect_body="all good")),
        "big": check_http(h("/big", expect_body="ok")),  # "ok" only after the first 64 KiB
        "head": check_http(h("/health", method="HEAD")),
        "slow": check_http(h("/slow", timeout=0.4)),
    }


def test_http_status_body_and_timeout_against_a_real_server(ns):
    with server(ns):
        r = run_in_ns(ns, _http_results, f"http://{ADDR}:{PORT}")
    assert r["ok"].ok and r["ok"].detail.startswith(f"GET http://{ADDR}:{PORT}/health: 200 OK in ")
    assert not r["status"].ok and r["status"].detail.endswith(
        "503 Service Unavailable, expected 2xx or 3xx"
    )
    assert r["status_wanted"].ok
    assert not r["status_not_listed"].ok and r["status_not_listed"].detail.endswith("expected 200")
    assert not r["body"].ok and r["body"].detail.endswith("body does not contain 'all good'")
    assert not r["big"].ok  # bodies are searched in their first 64 KiB only
    assert r["head"].ok and r["head"].detail.startswith("HEAD ")
    slow = r["slow"]
    assert not slow.ok and "timed out after" in slow.detail
    assert 0.35 <= slow.duration < 1.5


def test_http_refused_and_bad_urls_are_failures_not_exceptions(ns):
    refused = run_in_ns(ns, check_http, HttpCheckConfig(name="w", url=f"http://{ADDR}:{PORT}/"))
    assert not refused.ok and refused.detail.endswith(": connection refused")
    bad = run_check(HttpCheckConfig(name="w", url="http://[2001:db8::1/"))
    assert not bad.ok and bad.detail
    other = run_check(HttpCheckConfig(name="w", url="ftp://h/"))
    assert not other.ok and "not an http:// or https:// URL" in other.detail


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")
def test_https_verifies_the_certificate_unless_told_not_to(ns, tmp_path):
    # Signed by a throwaway CA that no trust store knows.
    ca = pki.make_ca(tmp_path)
    pair = pki.make_server_cert(ca, tmp_path, "srv", [IPv4Address(ADDR)], days=1)
    url = f"https://{ADDR}:{PORT}/health"
    with server(ns, ADDR, PORT, str(pair.cert), str(pair.key)):
        loose = run_in_ns(ns, check_http, HttpCheckConfig(name="w", url=url, tls_verify=False))
        strict = run_in_ns(ns, check_http, HttpCheckConfig(name="w", url=url))
    assert loose.ok, loose.detail
    assert not strict.ok and "TLS certificate not accepted" in strict.detail


# --------------------------------------------------------------------------- exec


def test_exec_pass_fail_env_and_output_tail(ns, tmp_path):
    env_file = tmp_path / "env"
    env = {"HAAGENT_VIP": "db", "HAAGENT_ADDRESS": "198.51.100.200", "HAAGENT_STATE": "holder"}

    def run() -> list[CheckResult]:
        return [
            check_exec(ExecCheckConfig(name="e", command=("/bin/true",))),
            check_exec(ExecCheckConfig(name="e", command=(SHELL, "-c", "echo broken >&2; exit 3"))),
            check_exec(ExecCheckConfig(name="e", command=(SHELL, "-c", f"env > {env_file}")), env),
            check_exec(
                ExecCheckConfig(
                    name="e",
                    command=(
                        SHELL,
                        "-c",
                        "i=0; while [ $i -lt 500 ]; do echo line $i; i=$((i+1)); done; echo last",
                    ),
                )
            ),
            check_exec(ExecCheckConfig(name="e", command=("ip", "-o", "link", "show", "lo"))),
        ]

    ok, fail, envr, chatty, inside = run_in_ns(ns, run)
    assert ok.ok and ok.detail == "exit status 0"
    assert not fail.ok and fail.detail == "exit status 3: broken" and fail.output == "broken\n"
    assert envr.ok
    got = dict(line.split("=", 1) for line in env_file.read_text().splitlines() if "=" in line)
    assert {k: got[k] for k in env} == env
    assert "PATH" in got  # the agent's own environment is kept
    assert chatty.ok and len(chatty.output.encode()) <= OUTPUT_TAIL
    assert chatty.output.endswith("line 499\nlast\n") and chatty.detail == "exit status 0: last"
    assert inside.ok and "lo:" in inside.output


def test_exec_timeout_kills_the_whole_process_group(ns, tmp_path):
    pids = tmp_path / "pids"
    script = f"sleep 30 & echo $! > {pids}; echo $$ >> {pids}; echo started; wait"
    r = run_in_ns(
        ns, check_exec, ExecCheckConfig(name="e", timeout=0.5, command=(SHELL, "-c", script))
    )
    assert not r.ok and r.detail == "killed at the 0.5 s timeout: started"
    assert 0.45 <= r.duration < 1.5
    child, shell = (int(p) for p in pids.read_text().split())
    # SIGKILL was sent to the group before run_command returned; the orphaned sleep is reaped
    # (or left a zombie) by whoever adopted it.
    wait_until(
        lambda: gone(child) and gone(shell),
        3,
        what=f"the shell {shell} and its child {child} to end",
    )


def test_exec_that_cannot_start_is_a_failure_with_the_reason():
    missing = run_check(ExecCheckConfig(name="e", command=("/nonexistent/check",)))
    assert not missing.ok and missing.detail == "cannot run: '/nonexistent/check' does not exist"
    unknown = run_check(ExecCheckConfig(name="e", command=("no-such-program-haagent",)))
    assert not unknown.ok and "not an executable file in PATH" in unknown.detail


# --------------------------------------------------------------------------- interface


def _wait_interface(name: str, want: bool, timeout: float) -> tuple[CheckResult, float]:
    """Check until the result is ``want`` (carrier changes reach the flags via the kernel's
    link watcher, which may take up to a second); that result and when it came."""
    start = time.monotonic()
    r = wait_until(
        lambda: got if (got := check_interface(name)).ok is want else None,
        timeout,
        0.02,
        what=f"the interface check of {name} to say ok={want}",
        detail=lambda: f"it says: {check_interface(name)}",
    )
    return r, time.monotonic() - start


def test_interface_check_follows_admin_state_and_carrier(ns):
    a, b = f"{ns}a", f"{ns}b"
    ip("link", "add", a, "type", "veth", "peer", "name", b, ns=ns)
    ip("link", "set", a, "up", ns=ns)
    ip("link", "set", b, "up", ns=ns)
    r, _ = run_in_ns(ns, _wait_interface, a, True, 5)
    assert r.ok and r.detail == f"{a} is up with carrier"

    ip("link", "set", b, "down", ns=ns)  # the peer down: a loses carrier
    r, took = run_in_ns(ns, _wait_interface, a, False, 5)
    assert not r.ok and r.detail == f"{a} is up but has no carrier (not RUNNING)", took

    ip("link", "set", a, "down", ns=ns)
    r, _ = run_in_ns(ns, _wait_interface, a, False, 5)
    assert r.detail == f"{a} is administratively down"

    ip("link", "set", a, "up", ns=ns)
    ip("link", "set", b, "up", ns=ns)
    r, _ = run_in_ns(ns, _wait_interface, a, True, 5)
    assert r.ok

    missing = run_in_ns(ns, check_interface, "hxhnope0")
    assert not missing.ok and missing.detail == "no interface 'hxhnope0'"
    # The host's interfaces are not visible in the namespace: the check answers for its own.
    assert run_in_ns(ns, check_interface, a).ok and not check_interface(a).ok


# --------------------------------------------------------------------------- monitor


_MONITOR_CONFIG = """
node: n1
checks:
  pg: {{type: tcp, host: {addr}, port: {port}, interval: 0.2, timeout: 0.1, rise: 2, fall: 3}}
  env: {{type: exec, command: "env | grep ^HAAGENT_ > {env_file}", interval: 0.2, timeout: 0.2,
         rise: 1, fall: 1}}
  hang: {{type: exec, command: ["sleep", "30"], interval: 0.4, timeout: 0.3, rise: 1, fall: 1}}
  stuck: {{type: tcp, host: {addr}, port: 1, interval: 0.4, timeout: 0.2, rise: 1, fall: 2}}
vips:
  - {{name: db, address: 198.51.100.200, interface: lo, checks: [pg, env]}}
  - {{name: plain, address: 198.51.100.201, interface: lo}}
  - {{name: slow, address: 198.51.100.202, interface: lo, checks: [hang]}}
  - {{name: wedged, address: 198.51.100.203, interface: lo, checks: [stuck]}}
"""


def _run_monitor(cfg_text: str, events: Connection, control: Connection) -> dict[str, Any]:
    """In the namespace: run a HealthMonitor, send its events, obey set_state/stop."""

    def sink(ev: object) -> None:
        assert isinstance(ev, VipHealthChanged)
        events.send((time.monotonic(), ev.vip, ev.healthy, ev.reason))

    mon = HealthMonitor(parse_config(yaml.safe_load(cfg_text)), sink)
    mon.start()
    while True:
        cmd = control.recv()
        if cmd[0] == "set_state":
            mon.set_state(cmd[1], cmd[2])
        elif cmd[0] == "stop":
            start = time.monotonic()
            mon.stop(timeout=2.0)
            return {
                "stop_took": time.monotonic() - start,
                "snapshot": mon.snapshot(),
                "db": mon.vip_healthy("db"),
                "slow": mon.vip_healthy("slow"),
            }


class Events:
    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.seen: list[tuple[float, str, bool, str]] = []

    def wait(self, vip: str, healthy: bool, timeout: float) -> tuple[float, str, bool, str]:
        """The next event for ``vip`` (it must say ``healthy``), within ``timeout`` seconds."""
        for old in self.seen:
            if old[1] == vip:
                self.seen.remove(old)
                assert old[2] is healthy, old
                return old
        deadline = time.monotonic() + timeout
        while self.conn.poll(max(deadline - time.monotonic(), 0)):
            ev: tuple[float, str, bool, str] = self.conn.recv()
            if ev[1] == vip:
                assert ev[2] is healthy, (ev, self.seen)
                return ev
            self.seen.append(ev)
        raise AssertionError(f"no event for {vip} within {timeout} s; other events: {self.seen}")


def _wedge_check_named_stuck(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the runner of the check named "stuck" never return, as a DNS lookup might.

    Patched in this process before the fork, so that the monitor's child inherits it."""
    never = threading.Event()

    def run_check_with_a_wedge(check: Any, **kw: Any) -> CheckResult:
        if check.name == "stuck":
            never.wait()
        return run_check(check, **kw)

    monkeypatch.setattr("haagent.health.monitor.run_check", run_check_with_a_wedge)


def test_monitor_reports_fall_and_rise_and_a_hung_check_blocks_nothing(ns, tmp_path, monkeypatch):
    _wedge_check_named_stuck(monkeypatch)
    env_file = tmp_path / "env"
    cfg_text = _MONITOR_CONFIG.format(addr=ADDR, port=PORT, env_file=env_file)
    ev_recv, ev_send = _FORK.Pipe(duplex=False)
    ctl_recv, ctl_send = _FORK.Pipe(duplex=False)
    srv = Server(ns)
    started = time.monotonic()
    monitor = start_in_ns(ns, _run_monitor, cfg_text, ev_send, ctl_recv)
    ev_send.close()
    ctl_recv.close()
    events = Events(ev_recv)
    try:
        t, _, _, reason = events.wait("plain", True, 3)  # no checks: healthy from the start
        assert reason == "no checks" and t - started < 2
        t, _, _, reason = events.wait("db", True, 3)  # pg rose: 2 passes, 0.2 s apart
        assert reason.startswith("all 2 checks pass") and reason.endswith(" (2/2)")

        # A check that hangs is killed at its timeout and fails; a runner that never returns
        # is failed by the scheduler; neither delayed db's rise above.
        _, _, _, reason = events.wait("slow", False, 3)
        assert reason == "check hang failed: killed at the 0.3 s timeout (not healthy yet)"
        _, _, _, reason = events.wait("wedged", False, 3)
        assert reason == "check stuck failed: no answer within the 0.2 s timeout (not healthy yet)"

        srv.stop()
        stopped = time.monotonic()
        t, _, _, reason = events.wait("db", False, 3)
        # Three failures counted (fall=3), runs 0.2 s apart: well within 2 s.
        assert reason == f"check pg failed: {ADDR}:{PORT}: connection refused (3/3)"
        assert t - stopped < 2.0

        srv = Server(ns)
        restarted = time.monotonic()
        t, _, _, reason = events.wait("db", True, 3)
        assert reason.startswith("all 2 checks pass; last to recover: pg: connected to ")
        assert reason.endswith(" (2/2)")  # rise=2
        assert t - restarted < 2.0

        ctl_send.send(("set_state", "db", "holder"))
        wait_until(
            lambda: env_file.exists() and "HAAGENT_STATE=holder" in env_file.read_text(),
            3,
            what="the exec check to run with HAAGENT_STATE=holder",
        )
        got = dict(line.split("=", 1) for line in env_file.read_text().splitlines())
        assert got == {
            "HAAGENT_VIP": "db",
            "HAAGENT_ADDRESS": "198.51.100.200",
            "HAAGENT_INTERFACE": "lo",
            "HAAGENT_STATE": "holder",
            "HAAGENT_NODE": "n1",
            "HAAGENT_CHECK": "env",
            "HAAGENT_VIPS": "db",
            "HAAGENT_HOLDING": "db",
        }

        ctl_send.send(("stop",))
        assert monitor.conn.poll(5), "monitor did not stop"
        status, result = monitor.conn.recv()
        assert status == "ok", result
    finally:
        srv.stop()
        monitor.proc.join(3)
        if monitor.proc.is_alive():
            monitor.proc.kill()
            monitor.proc.join(2)
        for c in (ev_recv, ctl_send, monitor.conn):
            c.close()
    assert result["stop_took"] < 2.5
    assert result["db"] is True and result["slow"] is False
    snap = result["snapshot"]
    assert set(snap) == {"pg", "env", "hang", "stuck"}
    assert snap["pg"]["healthy"] is True and snap["pg"]["vips"] == ["db"]
    assert snap["pg"]["detail"].startswith("connected to")
    assert snap["hang"]["healthy"] is False and snap["hang"]["type"] == "exec"
    assert "previous run has not returned" in snap["stuck"]["detail"]
    assert snap["env"]["output"] == ""
    assert not [e for e in events.seen if e[1] in ("db", "plain")], events.seen


def test_monitor_names_instances_of_a_check_used_in_several_ways():
    cfg = parse_config(
        yaml.safe_load(
            """
            node: n1
            checks:
              link: {type: interface}
              script: {type: exec, command: ["/bin/true"]}
              pg: {type: tcp, port: 5432}
            vips:
              - {name: a, address: 198.51.100.1, interface: lo, checks: [link, script, pg]}
              - {name: b, address: 198.51.100.2, interface: lo, checks: [link, script, pg]}
              - {name: c, address: 198.51.100.3, interface: hxhnope0, checks: [link]}
            """
        )
    )
    mon = HealthMonitor(cfg, lambda ev: None)
    snap = mon.snapshot()
    assert snap.keys() == {"link@lo", "link@hxhnope0", "script", "pg"}
    assert snap["link@lo"]["vips"] == ["a", "b"] and snap["pg"]["vips"] == ["a", "b"]
    assert snap["script"]["vips"] == ["a", "b"]
    assert all(v["healthy"] is None for v in snap.values())
    assert mon.vip_healthy("a") is None and mon.vip_reason("c").startswith("waiting for check link")


# --------------------------------------------------------------------------- notify


def _vip(notify: NotifyConfig) -> VipConfig:
    return VipConfig("db", IPv4Interface("198.51.100.200/32"), "eth0", notify=notify)


def test_notify_runs_with_the_environment_in_order(tmp_path, caplog):
    out = tmp_path / "events"
    hook = f"env | grep ^HAAGENT_ | sort >> {out}; echo --- >> {out}"
    vip = _vip(NotifyConfig(on_acquire=(SHELL, "-c", hook), on_release=(SHELL, "-c", hook)))
    n = Notifier("pg1")
    start = time.monotonic()
    n.fire("acquire", vip, "won the election")
    n.fire("release", vip, "check pg failed: connection refused (3/3)")
    n.fire("fault", vip, "no on_fault: nothing runs")
    assert time.monotonic() - start < 0.2
    assert n.wait_idle(5)
    blocks = [b.strip().splitlines() for b in out.read_text().split("---") if b.strip()]
    assert blocks == [
        [
            "HAAGENT_ADDRESS=198.51.100.200",
            "HAAGENT_EVENT=acquire",
            "HAAGENT_INTERFACE=eth0",
            "HAAGENT_NODE=pg1",
            "HAAGENT_REASON=won the election",
            "HAAGENT_VIP=db",
        ],
        [
            "HAAGENT_ADDRESS=198.51.100.200",
            "HAAGENT_EVENT=release",
            "HAAGENT_INTERFACE=eth0",
            "HAAGENT_NODE=pg1",
            "HAAGENT_REASON=check pg failed: connection refused (3/3)",
            "HAAGENT_VIP=db",
        ],
    ]
    assert n.last[("db", "release")].returncode == 0
    assert n.close(2)


def test_a_hung_hook_is_killed_at_its_timeout_without_blocking_fire(tmp_path, caplog):
    pidfile = tmp_path / "pid"
    vip = _vip(
        NotifyConfig(
            on_fault=(SHELL, "-c", f"echo $$ > {pidfile}; echo stuck; sleep 30"),
            on_release=("/nonexistent/notify",),
            on_acquire=(SHELL, "-c", "echo nope >&2; exit 4"),
            timeout=0.5,
        )
    )
    n = Notifier("pg1")
    caplog.set_level(logging.INFO, logger="haagent.notify")
    start = time.monotonic()
    n.fire("fault", vip, "checks failed")
    n.fire("release", vip, "moved")
    n.fire("acquire", vip, "won")
    assert time.monotonic() - start < 0.2  # fire() never waits for a hook
    assert n.wait_idle(5)
    assert time.monotonic() - start >= 0.5
    shell = int(pidfile.read_text())
    wait_until(lambda: gone(shell), 3, what=f"the hook's shell {shell} to end")
    messages = [r.getMessage() for r in caplog.records if r.name == "haagent.notify"]
    assert "on_fault for vip db failed: killed at the 0.5 s timeout; it said: stuck" in messages
    assert (
        "on_release for vip db failed: cannot run: '/nonexistent/notify' does not exist" in messages
    )
    assert "on_acquire for vip db failed: exit status 4; it said: nope" in messages
    assert all(r.levelno == logging.WARNING for r in caplog.records if r.name == "haagent.notify")
    assert n.close(1)
    n.fire("acquire", vip, "after close")  # refused with a log line, never raised
    assert n.wait_idle(1)

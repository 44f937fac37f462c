"""The fence process on its own, in a lab host, against a real etcd with TLS and auth.

The test plays the agent: it drives a real ``FenceClient`` whose fence runs in the host's
network namespace, binds the addresses there itself and then "dies" by closing the pipe, or
falls silent past its deadline. etcd serves https only, wants client certificates
(``--client-cert-auth``) and has auth on — the set-up whose certificate identities etcd's
JSON gateway refuses — and forgets password tokens after 2 s, so that the password fence
must log in again.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from ipaddress import IPv4Interface, IPv6Interface, ip_interface
from pathlib import Path

import pytest

from haagent.config import EtcdConfig, TLSConfig
from haagent.fence.client import FenceClient
from haagent.fence.setup import setup_message
from haagent.fence.state import Address
from haagent.lab.etcd import AGENT_USER
from haagent.lab.topology import Lab, Node
from haagent.lab.wait import wait_until
from tests.lab.conftest import require

pytestmark = pytest.mark.lab

IFNAME = "fz0"  # one end of a veth pair inside the host's namespace: eth0 stays the lab's
TIMEOUT = 0.5  # etcd.timeout, as the lab's agents have it


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    require("ip", "etcd", "etcdctl")
    with Lab(hosts=1, etcd_tls=True, etcd_auth=True, etcd_args=["--auth-token-ttl", "2"]) as lab:
        host = lab.hosts[0]
        lab.run(host, ["ip", "link", "add", IFNAME, "type", "veth", "peer", "name", "fz1"])
        for ifname in (IFNAME, "fz1"):
            lab.run(host, ["ip", "link", "set", ifname, "up"])
        yield lab


def addresses(n: int) -> list[Address]:
    """250 IPv4 (203.0.113.0/24), the rest IPv6 (2001:db8:f::/64)."""
    out: list[tuple[str, IPv4Interface | IPv6Interface]] = [
        (IFNAME, ip_interface(f"203.0.113.{i + 1}/32")) for i in range(min(n, 250))
    ]
    out += [(IFNAME, ip_interface(f"2001:db8:f::{i:x}/128")) for i in range(1, n - len(out) + 1)]
    return out


def bind(lab: Lab, host: Node, held: list[Address]) -> None:
    """As the agent binds: marked as haagent's, or the fence would leave them alone."""
    ifnames = {i for i, _ in held}
    assert len(ifnames) == 1, ifnames
    batch = "".join(f"{a}\n" for _, a in held)
    lab.run(host, [sys.executable, "-m", "haagent.lab.bind", *ifnames], input=batch, timeout=60)


def test_an_address_configured_outside_haagent_survives_the_fence(lab: Lab) -> None:
    """The fence removes only haagent's entries (exact prefix, marked): an agent told it of
    an address the host has by hand, then died. The hand-made entry stays."""
    host = lab.hosts[0]
    client, log = start_fence(lab, host, etcd_settings(lab, password=False), "foreign")
    own, held = addresses(2)
    try:
        lab.run(host, ["ip", "addr", "add", str(own[1]), "dev", own[0]])
        bind(lab, host, [held])
        client.tell(time.monotonic() + 60, [own, held])
        proc = die(client)
        wait_until(lambda: str(held[1]) not in bound(lab, host), 15, what="the fence to remove it")
        assert proc.wait(10) is not None
        assert str(own[1]) in bound(lab, host), log.read_text()
    finally:
        client.stop()
        lab.run(host, ["ip", "addr", "del", str(own[1]), "dev", own[0]], check=False)
        lab.run(host, ["ip", "addr", "del", str(held[1]), "dev", held[0]], check=False)


def bound(lab: Lab, host: Node) -> set[str]:
    out = lab.run(host, ["ip", "-o", "addr", "show", "dev", IFNAME]).stdout
    return {
        m.group(1) for m in re.finditer(r"inet6? (\S+)", out) if not m.group(1).startswith("fe80")
    }


def etcd_settings(lab: Lab, *, password: bool) -> EtcdConfig:
    """Certificate identity (CN haagent), or the haagent password with a certificate whose
    CN names no user — so that only the token can make the revoke succeed."""
    assert lab.etcd.pki is not None
    ca = lab.etcd.pki.ca.cert
    if not password:
        pair = lab.etcd.client_cert(AGENT_USER)
        return EtcdConfig(
            endpoints=tuple(lab.etcd_endpoints),
            tls=TLSConfig(ca=ca, cert=pair.cert, key=pair.key),
            timeout=TIMEOUT,
        )
    pair = lab.etcd.pki.ensure_client("nobody")
    return EtcdConfig(
        endpoints=tuple(lab.etcd_endpoints),
        tls=TLSConfig(ca=ca, cert=pair.cert, key=pair.key),
        username=AGENT_USER,
        password=lab.etcd.password(AGENT_USER),
        timeout=TIMEOUT,
    )


def start_fence(lab: Lab, host: Node, etcd: EtcdConfig, name: str) -> tuple[FenceClient, Path]:
    log = lab.workdir / f"{name}.fence.log"
    python = f"exec {shlex.quote(sys.executable)} -m haagent.fence 2>>{shlex.quote(str(log))}"
    command = ["ip", "netns", "exec", host.netns, "sh", "-c", python]
    client = FenceClient(setup_message(lab.lab_id, etcd), command=command)
    client.start()
    return client, log


def die(client: FenceClient) -> subprocess.Popen[bytes]:
    """The agent dies: its end of the pipe closes without an exit message.

    The client keeps the process, so that its ``stop()`` (after the wait, or when the test
    failed first) kills a fence that is still running rather than leaving it behind."""
    proc = client._proc
    assert proc is not None and proc.stdin is not None
    proc.stdin.close()
    return proc


@contextmanager
def guarding_one(
    lab: Lab, name: str, *, password: bool
) -> Iterator[tuple[FenceClient, Path, str, int, list[Address]]]:
    """A fence that guards one bound address and knows a lease that holds a key: (client,
    its log, the key, the lease, the address). The client is stopped at the end."""
    host = lab.hosts[0]
    key = f"/haagent/v1/{lab.lab_id}/members/{name}"
    lease = grant(lab, key)
    client, log = start_fence(lab, host, etcd_settings(lab, password=password), name)
    held = addresses(1)
    try:
        client.tell(time.monotonic() + 60, held, lease=lease)
        bind(lab, host, held)
        yield client, log, key, lease, held
    finally:
        client.stop()


def grant(lab: Lab, key: str) -> int:
    out = lab.etcd.etcdctl("lease", "grant", "60", user=AGENT_USER).stdout
    lease = out.split()[1]
    lab.etcd.etcdctl("put", f"--lease={lease}", key, "x", user=AGENT_USER)
    return int(lease, 16)


def exists(lab: Lab, key: str) -> bool:
    return bool(lab.etcd.etcdctl("get", "--keys-only", key, user=AGENT_USER).stdout.strip())


def logged_at(log: str, text: str) -> float:
    """The time of the first line containing ``text`` (the fence logs UTC, to the ms)."""
    line = next(line for line in log.splitlines() if text in line)
    stamp = line.split(" ", 1)[0].rstrip("Z")
    return datetime.fromisoformat(stamp + "+00:00").timestamp()


def connected(lab: Lab, host: Node) -> bool:
    """Some process in the host's namespace (the fence: nothing else runs there) has a
    connection to etcd's client port."""
    out = lab.run(host, ["ss", "-Htn", "state", "established", "dport", "2379"]).stdout
    return bool(out.strip())


def rss_kib(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+)", status).group(1))  # type: ignore[union-attr]


def test_a_mass_takeover_costs_bytes_per_change_and_a_death_removes_everything(lab: Lab) -> None:
    host = lab.hosts[0]
    key = f"/haagent/v1/{lab.lab_id}/members/mass"
    lease = grant(lab, key)
    client, log = start_fence(lab, host, etcd_settings(lab, password=False), "mass")
    all_addresses = addresses(1000)
    try:
        # Taking over 1000 VIPs one by one, a keepalive every 50: the fence is told of each
        # address before it is bound (the binds follow in one batch, for speed).
        deadline = time.monotonic() + 300
        held: list[Address] = []
        binds: list[int] = []
        keepalives: list[int] = []
        for i, address in enumerate(all_addresses):
            before = client.bytes_written
            held.append(address)
            client.tell(deadline, held, lease=lease)
            binds.append(client.bytes_written - before)
            if i % 50 == 49:
                deadline += 1.0
                before = client.bytes_written
                client.tell(deadline, held, lease=lease)
                keepalives.append(client.bytes_written - before)
        bind(lab, host, held)
        assert len(bound(lab, host)) == 1000
        # The whole state once, instead of 1000 lists of up to 1000 addresses (~16 MB).
        assert sum(binds) < 60_000, sum(binds)
        assert max(binds[1:]) < 60, max(binds[1:])
        assert max(keepalives) <= 40, keepalives  # {"deadline":2345.6789012345678}\n
        pid = client.pid
        assert pid is not None
        wait_until(
            lambda: connected(lab, host), 5, what="the fence to connect to etcd in the background"
        )
        assert rss_kib(pid) < 30 * 1024, rss_kib(pid)  # TLS included

        died = time.monotonic()
        proc = die(client)
        wait_until(
            lambda: not bound(lab, host), 15, 0.01, what="the fence to remove 1000 addresses"
        )
        assert proc.wait(timeout=15) == 0
        took = time.monotonic() - died
    finally:
        client.stop()
    text = log.read_text()
    assert "Traceback" not in text, text
    reason = "the agent exited without handing over (its pipe closed)"
    assert f"fence removed {all_addresses[0][1]} from {IFNAME}: {reason}" in text
    assert text.count("fence removed ") == 1000
    # Only after the last address was gone did the other hosts get their chance.
    revoked = f"fence revoked lease {lease:x} (its agent died): the other hosts take over now"
    assert revoked in text, text[-2000:]
    assert logged_at(text, revoked) >= logged_at(text, f"fence removed {all_addresses[-1][1]} ")
    assert not exists(lab, key)
    assert took < 10, took


def test_a_password_fence_logs_in_again_after_its_token_expired(lab: Lab) -> None:
    host = lab.hosts[0]
    with guarding_one(lab, "password", password=True) as (client, log, key, lease, _):
        wait_until(lambda: connected(lab, host), 5, what="the fence to connect and log in")
        # Past --auth-token-ttl 2 (etcd checks every second): the token the fence got when
        # it connected is gone. etcd says nothing when it drops a token, so this is a sleep.
        time.sleep(3.5)
        proc = die(client)
        assert proc.wait(timeout=10) == 0
    text = log.read_text()
    assert "Traceback" not in text, text
    assert "fence logs in to etcd again: UNAUTHENTICATED: etcdserver: invalid auth token" in text
    assert f"fence revoked lease {lease:x} (its agent died)" in text, text
    assert not exists(lab, key)
    assert not bound(lab, host)


def test_a_silent_agent_loses_its_address_at_the_deadline_and_its_lease_after_the_grace(
    lab: Lab,
) -> None:
    host = lab.hosts[0]
    with guarding_one(lab, "frozen", password=False) as (client, log, key, lease, held):
        client.tell(time.monotonic() + 0.5, held, lease=lease)  # then nothing: "frozen"
        wait_until(lambda: not bound(lab, host), 3, 0.01, what="the deadline removal")
        wait_until(lambda: not exists(lab, key), 5, what="the revoke after the grace")
        client.stop()  # the agent comes back and stops: the fence exits without acting
    text = log.read_text()
    assert "Traceback" not in text, text
    removed = logged_at(text, f"fence removed {held[0][1]} from {IFNAME}: lease deadline passed")
    revoked = logged_at(text, f"fence revoked lease {lease:x} (its agent is frozen past")
    assert revoked - removed >= TIMEOUT + 0.25 - 0.01  # the grace a live agent gets


def test_an_unreachable_etcd_is_a_warning_after_the_removal_not_a_hang(lab: Lab) -> None:
    host = lab.hosts[0]
    member = lab.etcd_nodes[0]
    nobody = EtcdConfig(endpoints=(f"https://{member.ipv4}:2399",), timeout=TIMEOUT)
    client, log = start_fence(lab, host, nobody, "unreachable")
    held = addresses(1)
    try:
        client.tell(time.monotonic() + 60, held, lease=0x1234)
        bind(lab, host, held)
        started = time.monotonic()
        proc = die(client)
        assert proc.wait(timeout=10) == 0
        took = time.monotonic() - started
    finally:
        client.stop()
    text = log.read_text()
    assert "Traceback" not in text, text
    assert not bound(lab, host)
    assert "fence could not reach etcd to revoke lease 1234 (" in text, text
    assert "etcd expires it after its ttl" in text
    assert took < 2 * TIMEOUT + 2, took

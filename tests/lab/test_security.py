"""etcd with TLS client certificates, auth and a role limited to /haagent/v1/, for real.

One lab for the module: etcd 3.4 with ``--client-cert-auth`` and auth enabled, users ``root``
and ``haagent``, the role ``haagent`` granted readwrite on the prefix ``/haagent/v1/`` only.
Agents identify either by their client certificate (CN = haagent, no password: the lab's
default) or by user name + password over the same TLS connection.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import pytest

from haagent.cluster.schema import Holder
from haagent.lab import pki
from haagent.lab.etcd import AGENT_PREFIX, AGENT_USER
from haagent.lab.topology import Lab
from haagent.lab.wait import wait_until
from tests.lab.conftest import Agents, Identity, etcd_holder, require

pytestmark = pytest.mark.lab

OUTSIDE = "/not-haagent/x"
LOG_LINE = re.compile(r"^\S+Z (DEBUG|INFO|WARNING|ERROR|CRITICAL) \S+: ")


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    require("ip", "etcd", "etcdctl", "nft", "openssl")
    with Lab(hosts=3, etcd_tls=True, etcd_auth=True) as lab:
        yield lab


_COUNT = iter(range(1, 1000))


@pytest.fixture
def agents(lab: Lab) -> Iterator[Agents]:
    a = Agents(
        lab,
        f"{lab.lab_id}-s{next(_COUNT)}",
        vips=[("web4", str(lab.vip4(1))), ("web6", str(lab.vip6(1)))],
    )
    try:
        yield a
    finally:
        a.stop_all()
        for h in lab.hosts:
            for ip in (lab.vip4(1), lab.vip6(1)):
                plen = 32 if ip.version == 4 else 128
                lab.run(h, ["ip", "addr", "del", f"{ip}/{plen}", "dev", "eth0"], check=False)


def password_identity(lab: Lab, user: str = AGENT_USER) -> Identity:
    """user + password over TLS (the client certificate only opens the TLS connection)."""
    return {
        "tls": tls_paths(lab, user),
        "username": user,
        "password_file": lab.etcd.password_file(user),
    }


def tls_paths(lab: Lab, user: str) -> Mapping[str, Path]:
    assert lab.etcd.pki is not None
    pair = lab.etcd.client_cert(user)
    return {"ca": lab.etcd.pki.ca.cert, "cert": pair.cert, "key": pair.key}


# --------------------------------------------------------------------------- what the role allows


@pytest.mark.parametrize("identity", ["cert", "password"])
def test_limited_user_can_use_the_prefix_and_nothing_else(lab: Lab, identity: str) -> None:
    def as_agent(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        pw = lab.etcd.password(AGENT_USER) if identity == "password" else None
        return lab.etcd.etcdctl(*args, user=AGENT_USER, password=pw, check=False, input=stdin)

    key = f"{AGENT_PREFIX}{lab.lab_id}-perm-{identity}/k"
    assert as_agent("put", key, "v").returncode == 0
    assert as_agent("get", "--print-value-only", key).stdout.strip() == "v"
    assert as_agent("del", key).returncode == 0
    denied = [
        ("put", OUTSIDE, "v"),
        ("get", OUTSIDE),
        ("del", OUTSIDE),
        ("put", "/haagent/v2/x", "v"),  # another version of the schema
        ("put", "/haagent/v1", "v"),  # the prefix without its slash is not in the range
        ("get", "--prefix", "/"),
        ("user", "list"),
        ("role", "grant-permission", "haagent", "readwrite", OUTSIDE),
        ("auth", "disable"),
    ]
    for args in denied:
        r = as_agent(*args)
        assert r.returncode != 0, f"etcdctl {' '.join(args)} allowed as {AGENT_USER}"
        assert "permission denied" in r.stderr, r.stderr
    # root wrote nothing outside either; prove root could, then clean up.
    lab.etcd.etcdctl("put", OUTSIDE, "root")
    assert as_agent("get", OUTSIDE).returncode != 0
    lab.etcd.etcdctl("del", OUTSIDE)
    # A transaction is checked as a whole, both branches: a write outside the prefix in the
    # branch that does not run is refused all the same (haagent's connect relies on this).
    txn = f'version("{key}") < "0"\n\nput {OUTSIDE} v\n\n\n'
    r = as_agent("txn", stdin=txn)
    assert r.returncode != 0 and "permission denied" in r.stderr, r


def test_lease_api_needs_no_key_permission_but_attaching_does(lab: Lab) -> None:
    def as_agent(*args: str) -> subprocess.CompletedProcess[str]:
        return lab.etcd.etcdctl(*args, user=AGENT_USER, check=False)

    grant = as_agent("lease", "grant", "30")
    assert grant.returncode == 0, grant.stderr
    lease = grant.stdout.split()[1]
    assert as_agent("lease", "keep-alive", "--once", lease).returncode == 0
    key = f"{AGENT_PREFIX}{lab.lab_id}-lease/holder"
    assert as_agent("put", key, "v", f"--lease={lease}").returncode == 0
    r = as_agent("put", OUTSIDE, "v", f"--lease={lease}")
    assert r.returncode != 0 and "permission denied" in r.stderr
    # The create-if-absent campaign haagent runs, as the limited user, on its lease:
    txn = f'create("{key}") = "0"\n\nput {key} again --lease={lease}\n\nget {key}\n\n'
    r = lab.etcd.etcdctl("txn", user=AGENT_USER, check=False, input=txn)
    assert r.returncode == 0 and "FAILURE" in r.stdout, r
    # Revoking a lease deletes its keys, so etcd wants write permission on every one of them:
    # a key root hung outside the prefix on an agent's lease blocks that agent's revoke.
    lab.etcd.etcdctl("put", OUTSIDE, "root", f"--lease={lease}")
    r = as_agent("lease", "revoke", lease)
    assert r.returncode != 0 and "permission denied" in r.stderr, r
    lab.etcd.etcdctl("del", OUTSIDE)
    # Keepalives are not permission-checked at all: any client that gets through TLS (here a
    # CA-signed certificate whose CN is no etcd user) can keep anyone's lease alive. It cannot
    # revoke it, read it or write with it.
    stranger = "stranger-cn"
    r = lab.etcd.etcdctl("lease", "keep-alive", "--once", lease, user=stranger, check=False)
    assert r.returncode == 0 and "keepalived with TTL" in r.stdout, r
    for args in (("lease", "revoke", lease), ("put", key, "x", f"--lease={lease}"), ("get", key)):
        r = lab.etcd.etcdctl(*args, user=stranger, check=False)
        assert r.returncode != 0 and "permission denied" in r.stderr, (args, r)
    assert as_agent("lease", "revoke", lease).returncode == 0
    assert lab.etcd.etcdctl("get", "--print-value-only", key).stdout.strip() == ""


def test_certificate_identity_needs_no_password(lab: Lab) -> None:
    """A user made with --no-password exists only as the CN of a client certificate."""
    lab.etcd.etcdctl("user", "add", "certonly", "--no-password")
    lab.etcd.etcdctl("user", "grant-role", "certonly", "haagent")
    key = f"{AGENT_PREFIX}{lab.lab_id}-certonly/k"
    assert lab.etcd.etcdctl("put", key, "v", user="certonly", check=False).returncode == 0
    r = lab.etcd.etcdctl("put", key, "v", user="certonly", password="guess", check=False)
    assert r.returncode != 0 and "authentication failed" in r.stderr, r
    lab.etcd.etcdctl("del", key)


# --------------------------------------------------------------------------- agents


@pytest.mark.parametrize("identity", ["cert", "password"])
def test_agents_with_limited_role_elect_one_holder_and_hand_over(
    lab: Lab, agents: Agents, identity: str
) -> None:
    agents.ttl = 5  # a takeover well within the TTL proves it came from the watch
    for h in lab.hosts:
        agents.start(h, password_identity(lab) if identity == "password" else None)
    v4, v6 = lab.vip4(1), lab.vip6(1)
    h4 = agents.wait_single_holder(v4)
    h6 = agents.wait_single_holder(v6)
    assert etcd_holder(lab, agents.cluster, "web4") == h4
    assert etcd_holder(lab, agents.cluster, "web6") == h6
    time.sleep(0.5)  # no late second bind: half a second of watching is the point
    assert agents.holders(v4) == [h4] and agents.holders(v6) == [h6]
    members = lab.etcd.etcdctl(
        "get", "--prefix", "--keys-only", f"/haagent/v1/{agents.cluster}/members/"
    ).stdout.split()
    assert len(members) == 3, members

    old = lab.host(h4)
    agents.procs[old.role].send_signal(signal.SIGTERM)
    assert agents.wait_exit(old, timeout=5) == 0, agents.dump()
    # It revoked its lease (with its limited role) on the way out: its member record is gone
    # at once, not when the 5 s TTL runs out.
    assert agents.member(old.role) is None, agents.log(old)
    new = agents.wait_single_holder(v4, timeout=3)
    assert new != old.role
    assert etcd_holder(lab, agents.cluster, "web4") == new
    for h in lab.hosts:  # no thread died of a permission error: only the log can tell
        assert "Traceback" not in agents.log(h), agents.dump()


def _rogue_ca(lab: Lab) -> pki.LabPKI:
    directory = lab.workdir / "rogue-pki"
    rogue = pki.LabPKI(directory)
    if not rogue.ca.exists():
        rogue = pki.build(directory, [], [AGENT_USER])
    return rogue


def _reader(lab: Lab) -> Identity:
    """A user whose role may only read the prefix, identified by its certificate."""
    if "reader" not in lab.etcd.etcdctl("user", "list").stdout.split():
        lab.etcd.etcdctl("role", "add", "reader")
        lab.etcd.etcdctl("role", "grant-permission", "reader", "--prefix=true", "read", "/haagent/")
        lab.etcd.etcdctl("user", "add", "reader", "--no-password")
        lab.etcd.etcdctl("user", "grant-role", "reader", "reader")
    return {"tls": tls_paths(lab, "reader")}


BAD_IDENTITIES: dict[str, tuple[Callable[[Lab], Identity], str]] = {
    "wrong password": (
        lambda lab: {"tls": tls_paths(lab, AGENT_USER), "username": AGENT_USER, "password": "x"},
        "authentication failed: wrong etcd.username or password",
    ),
    "unknown user": (
        lambda lab: {"tls": tls_paths(lab, AGENT_USER), "username": "ghost", "password": "x"},
        "authentication failed",
    ),
    "client cert from another CA": (
        lambda lab: {"tls": {**tls_paths(lab, AGENT_USER), **_rogue_client(lab)}},
        "etcd rejected the TLS connection",
    ),
    "no client cert": (
        lambda lab: {"tls": {"ca": tls_paths(lab, AGENT_USER)["ca"]}},
        "etcd rejected the TLS connection",
    ),
    "server cert not trusted": (
        lambda lab: {"tls": {**tls_paths(lab, AGENT_USER), "ca": _rogue_ca(lab).ca.cert}},
        "TLS handshake failed: etcd's server certificate is not signed by etcd.tls.ca",
    ),
    "role may only read": (_reader, "may not read and write /haagent/v1/"),
}


def _rogue_client(lab: Lab) -> dict[str, Path]:
    pair = _rogue_ca(lab).client(AGENT_USER)
    return {"cert": pair.cert, "key": pair.key}


@pytest.mark.parametrize("case", sorted(BAD_IDENTITIES))
def test_bad_credentials_stop_start_up_with_one_clear_error(
    lab: Lab, agents: Agents, case: str
) -> None:
    make, reason = BAD_IDENTITIES[case]
    host = lab.hosts[0]
    started = time.monotonic()
    agents.start(host, make(lab), wait=False)  # it is meant not to get a lease
    code = agents.wait_exit(host, timeout=20)
    took = time.monotonic() - started
    log = agents.log(host)
    assert code == 1, f"exit {code} after {took:.1f}s\n{log}"
    # One clear error line is the behaviour under test here: these are log matches.
    assert "Traceback" not in log, log
    errors = [line for line in log.splitlines() if re.match(r"^\S+Z ERROR ", line)]
    assert len(errors) == 1, log
    (line,) = errors
    assert lab.etcd_endpoints[0] in line and reason in line and "not retrying" in line, line
    assert "not reachable" not in log, "a permanent error was retried:\n" + log
    assert lab.vip4(1) not in lab.bound(host)


def test_password_auth_needs_tls_with_this_client() -> None:
    """gRPC will not send etcd's token over plain http: haagent says so and stops."""
    with Lab(hosts=1, etcd_auth=True) as plain:
        assert plain.etcd_endpoints[0].startswith("http://")
        host = plain.hosts[0]
        r = plain.etcd.etcdctl("put", OUTSIDE, "v", user=AGENT_USER, check=False)
        assert "permission denied" in r.stderr  # etcd itself does password auth over http
        cfg = plain.write_agent_config(host, [("web", str(plain.vip4(1)))])
        text = cfg.read_text()
        assert "username: haagent" in text and "password_file:" in text
        proc = plain.start_agent(host, cfg)
        try:
            code = proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            Lab.stop(proc)
            code = None
        log = plain.agent_log(host)
        assert code == 1, log
        # Saying why is the behaviour under test: a log match.
        assert "need https:// endpoints and etcd.tls" in log and "Traceback" not in log, log


def test_password_agent_still_campaigns_after_its_token_expired() -> None:
    with Lab(hosts=2, etcd_tls=True, etcd_auth=True, etcd_args=["--auth-token-ttl", "2"]) as small:
        a = Agents(small, f"{small.lab_id}-tok", vips=[("web4", str(small.vip4(1)))])
        h1, h2 = small.hosts
        try:
            a.start(h1)  # certificate identity: no token to lose
            assert a.wait_single_holder(small.vip4(1)) == "h1"
            a.start(h2, password_identity(small))
            # Past the 2 s token TTL: h2 only sends keepalives, which do not renew the token.
            # Letting it expire is the point of this wait.
            time.sleep(4)
            a.procs["h1"].send_signal(signal.SIGTERM)
            assert a.wait_exit(h1, timeout=5) == 0
            wait_until(
                lambda: a.holders(small.vip4(1)) == ["h2"],
                3 + 3,
                what=f"h2, its token expired, to take over {small.vip4(1)}",
                detail=a.dump,
            )
        finally:
            a.stop_all()


def test_a_prefix_account_moves_vips_only_between_nodes_configured_for_them(
    lab: Lab, agents: Agents
) -> None:
    """What a stolen haagent identity can do to holder keys, and what it cannot.

    etcd does not check who owns a lease when a key is attached to it, and lease ids are
    public (member records), so the account can hang a holder key on any node's lease. The
    node binds only a VIP of its own config; the record carries no address at all.
    """
    v4 = lab.vip4(1)
    h1, h2, h3 = lab.hosts
    for h in (h1, h2):
        agents.start(h)
    agents.start(h3, vips=[("other", str(lab.vip6(1)))])  # h3 is not configured for web4
    old = agents.wait_single_holder(v4)
    members = f"/haagent/v1/{agents.cluster}/members/"
    assert all(agents.member(h.role) for h in (h1, h2, h3))  # start() waited for each
    spare = ({"h1", "h2"} - {old}).pop()
    key = f"/haagent/v1/{agents.cluster}/vips/web4/holder"

    def lease_of(node: str) -> int:
        out = lab.etcd.etcdctl("get", "--print-value-only", f"{members}{node}").stdout
        return int(json.loads(out)["lease"], 16)

    def forge(node: str) -> None:
        lease = lease_of(node)
        record = Holder(node=node, lease=lease, since=time.time(), epoch=1, reason="forged")
        lab.etcd.etcdctl(
            "put", key, record.to_json().decode(), f"--lease={lease:x}", user=AGENT_USER
        )

    # A key naming h3 on h3's own lease: the old holder lets go, h3 has no such VIP, and nobody
    # may campaign while the key exists: an outage for as long as h3's lease lives.
    forge("h3")
    wait_until(
        lambda: agents.holders(v4) == [], 3, what=f"{old} to let {v4} go", detail=agents.dump
    )
    time.sleep(1.0)  # and nobody binds it: a second of watching is the point
    assert agents.holders(v4) == [], agents.dump()
    assert v4 not in lab.bound(h3)
    assert etcd_holder(lab, agents.cluster, "web4") == "h3"  # the forged key still stands
    # A key naming the spare node on its lease: that node binds the VIP of its own config.
    forge(spare)
    assert agents.wait_single_holder(v4, timeout=3) == spare
    assert etcd_holder(lab, agents.cluster, "web4") == spare


def test_auth_can_be_enabled_under_running_agents_with_certificates() -> None:
    """TLS first, then users, role and `auth enable`: the agents' CN becomes their identity."""
    with Lab(hosts=2, etcd_tls=True) as small:
        a = Agents(small, f"{small.lab_id}-mig", vips=[("web4", str(small.vip4(1)))])
        h1, h2 = small.hosts
        try:
            for h in (h1, h2):
                a.start(h)
            old = a.wait_single_holder(small.vip4(1))
            small.etcd.enable_auth()
            r = small.etcd.etcdctl("put", OUTSIDE, "v", user=AGENT_USER, check=False)
            assert "permission denied" in r.stderr, r  # auth is really on now
            a.procs[old].send_signal(signal.SIGTERM)
            assert a.wait_exit(small.host(old), timeout=5) == 0, a.dump()
            # It revoked its lease as user haagent: the member record is gone at once.
            assert a.member(old) is None, a.dump()
            new = a.wait_single_holder(small.vip4(1), timeout=3)
            assert new != old
        finally:
            a.stop_all()

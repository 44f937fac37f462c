"""The operator commands (``move``, ``drain``, ``undrain``) as a user runs them: subprocesses in
the client namespace against a real etcd with TLS client certificates and auth.

Most tests run no agent: the records the commands read are real records on real leases,
written with ``etcdctl`` as an agent would write them (member records on each node's lease,
holder keys on the holder's), and the handover an agent would make is made the same way (the
holder key deleted, the target's created on its lease). So each test controls exactly the
picture the command decides on. The last test runs real agents for one move and one drain;
tests/lab/test_placement.py judges those handovers with the history checker.

Every call is made as ``haagent-op``, the operator role made exactly as docs/security.md
("An operator role") says, except where a test shows what a role without it gets.
"""

from __future__ import annotations

import base64
import json
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from haagent.cluster.schema import (
    HEALTHY,
    Health,
    HealthState,
    Holder,
    Keys,
    MemberRecord,
)
from haagent.lab.topology import Lab
from haagent.lab.wait import wait_until
from tests.lab.conftest import Agents, etcd_holder, remove_addresses, require

pytestmark = pytest.mark.lab

OP_USER = "haagent-op"
RO_USER = "haagent-ro"
BAD = Health(HealthState.UNHEALTHY, "check pg failed: connection refused (3/3)")
_COUNT = iter(range(1, 1000))


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    require("ip", "etcd", "etcdctl", "nft", "openssl")
    with Lab(hosts=3, etcd_tls=True, etcd_auth=True) as lab:
        # docs/security.md: the read-only role and the operator's, as documented there (the
        # operator's per-cluster lines are granted per test: each test is its own cluster).
        for step in (
            ("role", "add", RO_USER),
            ("role", "grant-permission", RO_USER, "--prefix=true", "read", "/haagent/v1/"),
            ("user", "add", RO_USER, "--no-password"),
            ("user", "grant-role", RO_USER, RO_USER),
            ("role", "add", OP_USER),
            ("role", "grant-permission", OP_USER, "--prefix=true", "read", "/haagent/v1/"),
            ("user", "add", OP_USER, "--no-password"),
            ("user", "grant-role", OP_USER, OP_USER),
        ):
            lab.etcd.etcdctl(*step)
        yield lab


@dataclass
class Cluster:
    """One test's cluster in etcd: records written as the agents write them."""

    lab: Lab
    name: str
    leases: dict[str, str] = field(default_factory=dict)  # node -> lease id (hex)

    @property
    def keys(self) -> Keys:
        return Keys(self.name)

    def etcdctl(self, *args: str, check: bool = True) -> str:
        return self.lab.etcd.etcdctl(*args, check=check).stdout

    def lease(self, node: str) -> str:
        if node not in self.leases:
            # "lease 694d8b3a1c2e4f05 granted with TTL(120s)"
            self.leases[node] = self.etcdctl("lease", "grant", "120").split()[1]
        return self.leases[node]

    def member(self, node: str, health: dict[str, Health], **kw: Any) -> None:
        """``node``'s member record on its own lease, as its agent publishes it."""
        lease = self.lease(node)
        record = MemberRecord(
            node=node,
            address=None,
            version="0.1.0",
            started=time.time(),
            config_digest="abc",
            lease=int(lease, 16),
            vips=tuple(sorted(health)),
            health=health,
            **kw,
        )
        self.etcdctl("put", f"--lease={lease}", self.keys.member(node), record.to_json().decode())

    def hold(self, vip: str, node: str) -> None:
        """``node`` wins ``vip``: its holder key on its lease (a handover deletes the old one
        first, as the old holder's resign does)."""
        self.etcdctl("del", self.keys.holder(vip))
        lease = self.lease(node)
        record = Holder(node, int(lease, 16), since=time.time(), epoch=1, reason="key absent")
        self.etcdctl("put", f"--lease={lease}", self.keys.holder(vip), record.to_json().decode())

    def kv(self, key: str) -> dict[str, Any] | None:
        """The key's value (decoded JSON) and revisions, None if absent."""
        out = json.loads(self.etcdctl("get", key, "-w", "json"))
        kvs = out.get("kvs") or []
        if not kvs:
            return None
        value = json.loads(base64.b64decode(kvs[0]["value"]))
        return {"value": value, "mod": int(kvs[0]["mod_revision"])}

    def grant_operator(self, *vips: str) -> None:
        """The operator role's per-cluster lines of docs/security.md."""
        for vip in vips:
            self.etcdctl("role", "grant-permission", OP_USER, "readwrite", self.keys.request(vip))
        self.etcdctl(
            "role", "grant-permission", OP_USER, "--prefix=true", "readwrite",
            f"{self.keys.prefix}drain/",
        )  # fmt: skip

    def close(self) -> None:
        for lease in self.leases.values():
            self.etcdctl("lease", "revoke", lease, check=False)
        self.etcdctl("del", "--prefix", self.keys.prefix, check=False)


@pytest.fixture
def cl(lab: Lab) -> Iterator[Cluster]:
    """h1 holds web; h1, h2 and h3 are healthy for it; db is configured on all three and
    nobody is healthy for it (so nobody holds it)."""
    c = Cluster(lab, f"{lab.lab_id}-s{next(_COUNT)}")
    try:
        for node in ("h1", "h2", "h3"):
            c.member(node, {"web": HEALTHY, "db": BAD})
        c.hold("web", "h1")
        c.grant_operator("web", "db")
        yield c
    finally:
        c.close()


def identity(lab: Lab, user: str) -> list[str]:
    assert lab.etcd.pki is not None
    pair = lab.etcd.client_cert(user)
    return ["--cacert", str(lab.etcd.pki.ca.cert), "--cert", str(pair.cert), "--key", str(pair.key)]


def argv(c: Cluster, *args: str, user: str = OP_USER) -> list[str]:
    return [
        *(sys.executable, "-m", "haagent", *args),
        *("--endpoints", ",".join(c.lab.etcd_endpoints), "--cluster", c.name),
        *identity(c.lab, user),
    ]


def cli(c: Cluster, *args: str, user: str = OP_USER) -> tuple[int, str, str]:
    proc = c.lab.run(c.lab.client, argv(c, *args, user=user), check=False, timeout=60)
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr
    return proc.returncode, proc.stdout, proc.stderr


def cli_json(c: Cluster, *args: str) -> tuple[int, dict[str, Any]]:
    code, out, err = cli(c, *args, "--json")
    assert out.count("\n") == 1, (out, err)
    data: dict[str, Any] = json.loads(out)
    return code, data


def one_line(err: str) -> str:
    assert err.count("\n") == 1, err
    return err.strip()


def test_move_writes_the_request_status_shows_it_and_clear_removes_it(cl: Cluster) -> None:
    code, data = cli_json(cl, "move", "web", "--to", "h2")
    assert code == 0 and data["result"] == "requested", data
    assert (data["holder"], data["target"], data["vip"]) == ("h1", "h2", "web")
    req = cl.kv(cl.keys.request("web"))
    assert req is not None and req["mod"] == data["request_revision"]
    assert req["value"]["schema"] == "haagent.request/v1"
    assert (req["value"]["action"], req["value"]["to"]) == ("move", "h2")
    assert "@" in req["value"]["by"] and abs(req["value"]["at"] - time.time()) < 60
    # status: the move is pending while h1's key is older than the request.
    code, out, _ = cli(cl, "status", "web", "--json")
    move = json.loads(out)["vips"][0]["move"]
    assert move["state"] == "pending" and move["to"] == "h2" and move["revision"] == req["mod"]
    code, out, _ = cli(cl, "status", "web")
    assert "move to h2 pending" in next(line for line in out.splitlines() if " web " in line)
    # Asking again for the same pending move writes nothing.
    code, out, _ = cli(cl, "move", "web", "--to", "h2")
    assert code == 0 and "already pending" in out
    assert cl.kv(cl.keys.request("web"))["mod"] == req["mod"]  # type: ignore[index]
    # The handover, as h1 and h2 make it: now a pin.
    cl.hold("web", "h2")
    code, out, _ = cli(cl, "status", "web")
    assert "pinned to h2" in next(line for line in out.splitlines() if " web " in line)
    code, out, _ = cli(cl, "move", "web", "--to", "h2")
    assert code == 0 and out.strip() == "vip web is already on h2 (pinned there)"
    # --clear removes the pin; again, there is nothing to clear; an unknown VIP is an error.
    code, out, _ = cli(cl, "move", "web", "--clear")
    assert code == 0 and out.strip() == (
        "removed the move request of vip web (pinned to h2): no pin any more"
    )
    assert cl.kv(cl.keys.request("web")) is None
    code, out, _ = cli(cl, "move", "web", "--clear")
    assert code == 0 and "nothing to clear" in out
    code, _, err = cli(cl, "move", "nosuch", "--clear")
    assert code == 2 and one_line(err).startswith("error: unknown vip 'nosuch'")
    code, out, _ = cli(cl, "status", "web", "--json")
    assert json.loads(out)["vips"][0]["move"] is None


def test_move_refusals_say_why_in_one_line_and_write_nothing(cl: Cluster) -> None:
    cl.member("h4", {"db": HEALTHY})  # not configured for web
    cl.member("h2", {"web": BAD, "db": BAD})
    cl.member("h5", {"web": HEALTHY}, ready=False)
    cases = [
        (("nosuch", "--to", "h2"), 2, "error: unknown vip 'nosuch' (vips: db, web)"),
        (("db", "--to", "h2"), 1, "refused: vip db is not held by anyone: nothing to move"),
        (("web", "--to", "h9"), 2, "error: no live member named 'h9' (members: h1, h2, h3,"),
        (("web", "--to", "h4"), 2, "error: h4 is not configured for vip web"),
        (("web", "--to", "h2"), 1, "refused: h2 is not healthy for web (unhealthy: check pg"),
        (("web", "--to", "h5"), 1, "refused: h5 is still in its start-up wait"),
    ]
    for args, want, words in cases:
        code, out, err = cli(cl, "move", *args)
        assert code == want and not out and one_line(err).startswith(words), (args, code, err)
    # Draining (by the drain command itself) makes a target refused too.
    assert cli(cl, "drain", "h3")[0] == 0
    code, _, err = cli(cl, "move", "web", "--to", "h3")
    assert code == 1 and one_line(err) == "refused: h3 is draining (haagent undrain h3 first)"
    # Without --to, with h2 unhealthy, h3 draining and h5 starting, nobody is left.
    code, data = cli_json(cl, "move", "web")
    assert code == 1 and data["result"] == "refused"
    assert data["reason"].startswith("no other host can take vip web now: ")
    assert cl.kv(cl.keys.request("web")) is None
    # The holder itself: already there (and pinned there).
    code, out, _ = cli(cl, "move", "web", "--to", "h1")
    assert code == 0 and out.startswith("vip web is already on h1; pinned it there (request at")
    assert cl.kv(cl.keys.request("web"))["value"]["to"] == "h1"  # type: ignore[index]


def test_move_without_target_takes_the_next_ranked_host_and_wait_reports_the_move(
    cl: Cluster,
) -> None:
    out = cl.lab.workdir / f"move-wait-{cl.name}.log"
    proc = cl.lab.popen(
        cl.lab.client, argv(cl, "move", "web", "--wait", "--timeout", "30"), log=out
    )
    try:
        line = wait_until(
            lambda: next((ln for ln in out.read_text().splitlines() if "waiting" in ln), None),
            20,
            what="move --wait to write its request",
        )
        req = cl.kv(cl.keys.request("web"))
        assert req is not None and req["value"]["to"] in ("h2", "h3"), req
        to = req["value"]["to"]
        assert line.startswith(f"move vip web from h1 to {to}: requested at revision {req['mod']}")
        cl.hold("web", to)  # the handover an agent makes
        assert proc.wait(timeout=20) == 0, out.read_text()
    finally:
        Lab.stop(proc)
    last = out.read_text().strip().splitlines()[-1]
    assert last.startswith(f"moved vip web from h1 to {to} in ") and last.endswith(" s"), last


def test_move_wait_times_out_with_the_state_and_keeps_the_request(cl: Cluster) -> None:
    started = time.monotonic()
    code, _, err = cli(cl, "move", "web", "--to", "h2", "--wait", "--timeout", "1")
    assert code == 1 and time.monotonic() - started < 20
    assert one_line(err).startswith("refused: timed out after 1 s: vip web is held by h1; ")
    assert cl.kv(cl.keys.request("web")) is not None


STALE = """
import json, subprocess, sys
from haagent.cli import connect as conn, drain, move, steer
from haagent.cli.main import build_parser
from haagent.cluster.schema import Drain, Request

spec = json.loads(sys.argv[1])
args = build_parser().parse_args(spec["argv"])
target, store = conn.connect(args)
view = conn.snapshot(store, target)
# Someone else changes the cluster after the read, before the write.
for step in spec["meanwhile"]:
    subprocess.run(step, check=True, capture_output=True, timeout=20)
if spec["what"] == "move":
    assert steer.plan_move(view, "web", "h2").kind == "write"
    got = move._write(store, target, view, "web", "h2", Request("move", to="h2"))
    print(json.dumps({"written": got, "why": move._what_changed(store, view, "web", "h2")}))
else:
    assert steer.plan_drain(view, "h2").kind == "write"
    got = drain._write(store, target, view, "h2", Drain(), checked=True)
    print(json.dumps({"written": got}))
store.close()
"""


def run_stale(cl: Cluster, what: str, meanwhile: list[list[str]]) -> dict[str, Any]:
    """Decide on a picture, let ``meanwhile`` change etcd, then write: in one process in the
    client namespace, through the commands' own functions."""
    command = ["move", "web", "--to", "h2"] if what == "move" else ["drain", "h2"]
    spec = {"what": what, "argv": argv(cl, *command)[3:], "meanwhile": meanwhile}
    proc = cl.lab.run(
        cl.lab.client, [sys.executable, "-c", STALE, json.dumps(spec)], check=False, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    result: dict[str, Any] = json.loads(proc.stdout)
    return result


def etcdctl_argv(cl: Cluster, *args: str) -> list[str]:
    eps = ",".join(cl.lab.etcd_endpoints)
    return ["etcdctl", f"--endpoints={eps}", *cl.lab.etcd.identity_args(), *args]


def test_a_move_decided_on_a_stale_picture_is_not_written(cl: Cluster) -> None:
    # Nothing changed: written.
    got = run_stale(cl, "move", [])
    assert isinstance(got["written"], int) and got["written"] > 0
    cl.etcdctl("del", cl.keys.request("web"))
    # The holder changed between the read and the write (h1 resigned, h3 won): not written.
    lease = cl.lease("h3")
    record = Holder("h3", int(lease, 16), since=time.time(), epoch=2, reason="key absent")
    meanwhile = [
        etcdctl_argv(cl, "del", cl.keys.holder("web")),
        etcdctl_argv(
            cl, "put", f"--lease={lease}", cl.keys.holder("web"), record.to_json().decode()
        ),
    ]
    got = run_stale(cl, "move", meanwhile)
    assert got == {"written": None, "why": "vip web is now held by h3"}
    assert cl.kv(cl.keys.request("web")) is None
    # The target went unhealthy meanwhile (its record rewritten): not written either.
    sick = MemberRecord(
        "h2",
        None,
        "0.1.0",
        time.time(),
        "abc",
        int(cl.lease("h2"), 16),
        ("web",),
        health={"web": BAD},
    )
    put = etcdctl_argv(
        cl, "put", f"--lease={cl.lease('h2')}", cl.keys.member("h2"), sick.to_json().decode()
    )
    got = run_stale(cl, "move", [put])
    assert got == {"written": None, "why": "h2's member record changed"}
    assert cl.kv(cl.keys.request("web")) is None


def test_a_drain_decided_on_a_stale_picture_is_not_written(cl: Cluster) -> None:
    # h3 is drained by someone else after the read: h1 may now be web's last host.
    got = run_stale(
        cl, "drain", [etcdctl_argv(cl, "put", cl.keys.drain("h3"), '{"schema":"haagent.drain/v1"}')]
    )
    assert got == {"written": None}
    assert cl.kv(cl.keys.drain("h2")) is None
    # And drained meanwhile itself: nothing to write, it is drained.
    got = run_stale(
        cl, "drain", [etcdctl_argv(cl, "put", cl.keys.drain("h2"), '{"schema":"haagent.drain/v1"}')]
    )
    assert got == {"written": False}


def test_drain_and_undrain_are_idempotent_and_refuse_to_strand_a_vip(cl: Cluster) -> None:
    watch_log = cl.lab.workdir / f"watch-{cl.name}.log"
    watch = cl.lab.popen(
        cl.lab.client, argv(cl, "watch", "--json", "--timeout", "60", user=RO_USER), log=watch_log
    )
    try:
        wait_until(lambda: "watching cluster" in watch_log.read_text(), 20, what="watch to start")
        code, out, err = cli(cl, "drain", "h2", "--reason", "kernel update")
        assert code == 0 and not err, err
        assert out.strip() == (
            "drained h2: it holds no vip and campaigns for none until haagent undrain h2"
        )
        d = cl.kv(cl.keys.drain("h2"))
        assert d is not None and d["value"]["schema"] == "haagent.drain/v1"
        assert d["value"]["reason"] == "kernel update" and "@" in d["value"]["by"]
        code, out, _ = cli(cl, "drain", "h2")
        assert code == 0 and out.strip().startswith("node h2 is already drained by ")
        assert cl.kv(cl.keys.drain("h2"))["mod"] == d["mod"]  # type: ignore[index]
        # members: draining from the key (the record says so once the agent acts on it).
        code, out, _ = cli(cl, "members", "--json", user=RO_USER)
        h2 = next(m for m in json.loads(out)["members"] if m["node"] == "h2")
        assert h2["draining"] and not h2["record_draining"]
        assert h2["drain"]["reason"] == "kernel update" and h2["ready"] and h2["priority"] == 100
        code, out, _ = cli(cl, "members", user=RO_USER)
        assert "asked (agent not yet draining) by " in out
        # h2 and h3 drained: draining h1 would leave web with nobody.
        assert cli(cl, "drain", "h3")[0] == 0
        code, data = cli_json(cl, "drain", "h1")
        assert code == 1 and data["result"] == "refused"
        assert data["reason"].startswith("draining h1 would leave vip web with no other")
        assert cl.kv(cl.keys.drain("h1")) is None
        code, out, err = cli(cl, "drain", "h1", "--force")
        assert code == 0 and out.startswith("drained h1: it hands over web")
        assert one_line(err) == "warning: vip web will have no eligible host while h1 drains"
        # --wait: until h1 holds nothing (here: its holder key goes, as its resign does).
        assert cli(cl, "undrain", "h1")[0] == 0
        out_log = cl.lab.workdir / f"drain-wait-{cl.name}.log"
        proc = cl.lab.popen(
            cl.lab.client,
            argv(cl, "drain", "h1", "--force", "--wait", "--timeout", "30"),
            log=out_log,
        )
        try:
            wait_until(lambda: "waiting" in out_log.read_text(), 20, what="drain --wait to write")
            cl.etcdctl("del", cl.keys.holder("web"))
            assert proc.wait(timeout=20) == 0, out_log.read_text()
        finally:
            Lab.stop(proc)
        assert out_log.read_text().strip().splitlines()[-1].startswith("h1 holds no vip any more")
        # Undrain, twice: the second says there is nothing to undo.
        for node in ("h1", "h2", "h3"):
            code, out, _ = cli(cl, "undrain", node)
            assert code == 0 and out.strip() == f"undrained {node}: it campaigns again"
            assert cl.kv(cl.keys.drain(node)) is None
        code, out, _ = cli(cl, "undrain", "h2")
        assert code == 0 and out.strip() == "node h2 is not drained: nothing to undo"

        def reported() -> list[dict[str, Any]] | None:
            events = [
                json.loads(line)
                for line in watch_log.read_text().splitlines()
                if line.startswith("{")
            ]
            kinds = [(e["event"], e.get("node")) for e in events]
            ok = ("drain", "h2") in kinds and kinds.count(("undrain", "h2")) == 1
            return events if ok and ("undrain", "h3") in kinds else None

        events = wait_until(reported, 15, what="watch to report the drains and undrains")
        drain = next(e for e in events if e["event"] == "drain" and e["node"] == "h2")
        assert drain["reason"].endswith(": kernel update") and not drain["reread"]
    finally:
        Lab.stop(watch)
    assert "Traceback" not in watch_log.read_text()


def test_a_node_that_is_down_is_drained_only_with_force(cl: Cluster) -> None:
    code, out, err = cli(cl, "drain", "h9")
    assert code == 2 and not out
    assert one_line(err) == (
        "error: no live member named 'h9' (members: h1, h2, h3); --force drains a node that is down"
    )
    code, out, err = cli(cl, "drain", "h9", "--force")
    assert code == 0 and out.startswith("drained h9")
    assert one_line(err).startswith("warning: h9 is no live member")
    code, out, _ = cli(cl, "members", user=RO_USER)
    assert "h9 is drained by " in out and "but not running" in out
    code, out, _ = cli(cl, "members", "--json", user=RO_USER)
    assert [(d["node"], d["live"]) for d in json.loads(out)["drains"]] == [("h9", False)]
    code, out, _ = cli(cl, "undrain", "h9")
    assert (
        code == 0 and out.strip() == "undrained h9: it campaigns again (it is no live member now)"
    )


def test_a_role_without_write_permission_is_told_which_key_and_where_to_read(
    cl: Cluster,
) -> None:
    prefix = cl.keys.prefix
    code, out, err = cli(cl, "move", "web", "--to", "h2", user=RO_USER)
    assert code == 2 and not out
    line = one_line(err)
    assert line.startswith(
        f"error: etcd: auth refused: this etcd user may not write {prefix}vips/web/request; "
        'grant its role readwrite on that key (docs/security.md, "An operator role")'
    ), line
    code, _, err = cli(cl, "drain", "h2", user=RO_USER)
    assert code == 2 and f"may not write {prefix}drain/h2" in one_line(err)
    code, _, err = cli(cl, "undrain", "h2", user=RO_USER)
    assert code == 2 and f"may not write {prefix}drain/h2" in one_line(err)
    # The operator role is granted request keys one VIP at a time (etcd has no wildcards): a
    # VIP it was not granted is refused the same way, and nothing is written.
    cl.member("h1", {"web": HEALTHY, "db": BAD, "api": HEALTHY})
    cl.member("h2", {"web": HEALTHY, "db": BAD, "api": HEALTHY})
    cl.hold("api", "h1")
    code, _, err = cli(cl, "move", "api", "--to", "h2")
    assert code == 2 and f"may not write {prefix}vips/api/request" in one_line(err)
    assert cl.kv(cl.keys.request("api")) is None
    # A certificate whose CN is no etcd user cannot even read.
    code, _, err = cli(cl, "move", "web", "--to", "h2", user="nobody")
    assert code == 2 and "auth refused" in one_line(err)


def test_watch_reports_a_move_request_and_its_removal(cl: Cluster) -> None:
    log = cl.lab.workdir / f"watch-req-{cl.name}.log"
    watch = cl.lab.popen(cl.lab.client, argv(cl, "watch", "--timeout", "60", user=RO_USER), log=log)
    try:
        wait_until(lambda: "watching cluster" in log.read_text(), 20, what="watch to start")
        assert cli(cl, "move", "web", "--to", "h3")[0] == 0
        assert cli(cl, "move", "web", "--clear")[0] == 0
        wait_until(
            lambda: "request   web: removed: no pin to h3 any more" in log.read_text(),
            15,
            what="watch to report the request and its removal",
        )
        assert "request   web: move to h3 by " in log.read_text()
    finally:
        Lab.stop(watch)


def test_with_agents_a_move_and_a_drain_as_the_operator_role(lab: Lab) -> None:
    agents = Agents(lab, f"{lab.lab_id}-s{next(_COUNT)}", vips=[("web4", str(lab.vip4(3)))])
    c = Cluster(lab, agents.cluster)
    c.grant_operator("web4")
    try:
        agents.start_all()
        old = agents.wait_single_holder(lab.vip4(3))
        wait_until(
            lambda: (
                len(json.loads(cli(c, "status", "web4", "--json")[1])["vips"][0]["standby"]) == 2
            ),
            15,
            what="every agent healthy for web4",
        )
        to = next(h.role for h in lab.hosts if h.role != old)
        code, out, err = cli(c, "move", "web4", "--to", to, "--wait")
        assert code == 0, (out, err)
        assert out.strip().splitlines()[-1].startswith(f"moved vip web4 from {old} to {to} in ")
        assert agents.wait_single_holder(lab.vip4(3)) == to == etcd_holder(lab, c.name, "web4")
        # Drain the new holder: the VIP leaves it although it is pinned there (a drain
        # outranks a pin: draining nodes are no candidates).
        code, out, err = cli(c, "drain", to, "--wait")
        assert code == 0 and out.strip().splitlines()[-1].startswith(f"{to} holds no vip"), err
        assert agents.wait_single_holder(lab.vip4(3)) != to
        wait_until(
            lambda: (agents.member(to) or {}).get("draining") is True,
            5,
            what=f"{to}'s member record to say draining",
        )
        code, out, _ = cli(c, "members", "--json")
        row = next(m for m in json.loads(out)["members"] if m["node"] == to)
        assert row["draining"] and row["record_draining"] and row["drain"]["by"]
        assert cli(c, "undrain", to)[0] == 0
        assert cli(c, "move", "web4", "--clear")[0] == 0
    finally:
        agents.stop_all()
        remove_addresses(lab, [lab.vip4(3)])
        c.close()

"""The read-only CLI's pure parts: the picture, the watch's diff, options and env vars."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from haagent.cli import changes, picture
from haagent.cli.connect import CliError, add_connection_options, resolve
from haagent.cli.main import build_parser
from haagent.cli.render import status_table
from haagent.cli.watch import Watcher
from haagent.cluster.schema import (
    HEALTHY,
    UNKNOWN,
    Health,
    HealthState,
    Holder,
    MemberRecord,
    Released,
    Request,
    VipSpec,
)
from haagent.cluster.view import ClusterView, HolderChange, MemberChange, ReleasedChange

NOW = 1_000_000.0
SPEC = VipSpec("198.51.100.200", 32, "eth0")
BAD = Health(HealthState.UNHEALTHY, "check pg failed: connection refused (3/3)")


def member(node: str, lease: int, health: dict[str, Health], **kw: object) -> MemberRecord:
    return MemberRecord(
        node=node,
        address=f"198.51.100.{10 + lease}",
        version="0.1.0",
        started=NOW - 192,
        config_digest="abc",
        lease=lease,
        vips=tuple(sorted(health)),
        health=health,
        vip_specs=kw.pop("specs", {v: SPEC for v in health}),  # type: ignore[arg-type]
        **kw,  # type: ignore[arg-type]
    )


def holder(node: str, lease: int, rev: int = 10) -> Holder:
    return Holder(node, lease, create_revision=rev, since=NOW - 72, epoch=rev - 1, reason="won")


def three() -> ClusterView:
    return ClusterView.of(
        20,
        members={
            "h1": member("h1", 1, {"web": HEALTHY, "db": BAD}),
            "h2": member("h2", 2, {"web": HEALTHY, "db": BAD}),
            "h3": member("h3", 3, {"web": HEALTHY, "db": UNKNOWN}, draining=True),
        },
        holders={"web": holder("h1", 1)},
    )


def test_picture_rows_holder_standby_in_rank_order_and_unheld():
    p = picture.build(three(), "c")
    web, db = p.vip("web"), p.vip("db")
    assert web is not None and db is not None
    assert web.held and web.holder == "h1" and web.epoch == 9 and web.spec == SPEC
    assert web.standby == ("h2",)  # h3 drains: not a candidate (decide/rank.py)
    assert not db.held and db.reason == "no holder key" and not db.healthy_somewhere
    assert not p.all_held and [v.name for v in p.vips] == ["db", "web"]
    assert picture.ago(web.since, NOW) == "1m12s"


@pytest.mark.parametrize(
    "seconds,text", [(0, "0s"), (59, "59s"), (192, "3m12s"), (3700, "1h01m"), (90000, "1d01h")]
)
def test_ago(seconds, text):
    assert picture.ago(NOW - seconds, NOW) == text


def test_reason_names_the_previous_holder_and_why_it_left():
    view = three().apply(
        [
            HolderChange("web", holder("h2", 2, rev=30), 30),
            ReleasedChange("web", Released("h1", 10, NOW, reason="unhealthy: x"), 29),
        ]
    )
    row = picture.build(view, "c").vip("web")
    assert row is not None and row.reason == "won (after h1 released it: unhealthy: x)"


def test_disagreements_between_hosts_are_found():
    view = ClusterView.of(
        1,
        members={
            "h1": member("h1", 1, {"web": HEALTHY}),
            "h2": member(
                "h2", 2, {"web": HEALTHY}, specs={"web": VipSpec("198.51.100.201", 32, "eth1")}
            ),
        },
    )
    found = {d.field: d for d in picture.build(view, "c").disagreements}
    assert set(found) == {"address", "interface"}
    assert found["address"].text() == (
        "hosts disagree about vip web's address: 198.51.100.200/32 on h1; 198.51.100.201/32 on h2"
    )


def test_a_vip_with_several_addresses_shows_them_all_and_disagrees_on_any():
    pair = VipSpec("198.51.100.200", 32, "eth0", extra=("2001:db8::200/128",))
    view = ClusterView.of(
        1,
        members={
            "h1": member("h1", 1, {"web": HEALTHY}, specs={"web": pair}),
            "h2": member("h2", 2, {"web": HEALTHY}),  # its config has the IPv4 address only
        },
        holders={"web": holder("h1", 1)},
    )
    p = picture.build(view, "c")
    assert [d.text() for d in p.disagreements] == [
        "hosts disagree about vip web's address: 198.51.100.200/32 on h2; "
        "198.51.100.200/32, 2001:db8::200/128 on h1"
    ]
    from rich.console import Console

    out = Console(width=200, record=True)
    out.print(status_table(p, list(p.vips), NOW))
    text = out.export_text()
    assert "198.51.100.200/32" in text and "2001:db8::200/128" in text
    spec = picture.status_json(p, NOW)["vips"][0]["spec"]
    assert spec["addresses"] == ["198.51.100.200/32", "2001:db8::200/128"]


def test_status_json_has_the_table_content():
    p = picture.build(three(), "c")
    data = json.loads(json.dumps(picture.status_json(p, NOW)))
    web = next(v for v in data["vips"] if v["name"] == "web")
    assert web["holder"] == "h1" and web["held_for"] == "1m12s" and web["standby"] == ["h2"]
    assert web["spec"]["address"] == "198.51.100.200" and data["all_held"] is False
    m = picture.member_json(p.members[0], NOW)
    assert m["health"]["db"]["failing"] == [{"check": "pg", "detail": "connection refused (3/3)"}]
    assert m["uptime"] == "3m12s"


def test_status_table_never_reads_etcd_text_as_markup():
    from rich.console import Console

    view = three().apply(
        [HolderChange("web", Holder("h1", 1, 10, NOW, 9, "[bold]x[/bold]\nforged"), 21)]
    )
    p = picture.build(view, "c")
    out = Console(width=200, record=True)
    out.print(status_table(p, list(p.vips), NOW))
    text = out.export_text()
    assert "[bold]x[/bold]\\nforged" in text


# --------------------------------------------------------------------------- watch diff


def kinds(events: list[changes.WatchEvent]) -> list[tuple[str, str | None, str | None]]:
    return [(e.kind, e.vip, e.node) for e in events]


def test_resign_is_reported_with_the_release_record_of_the_same_revision():
    old = three()
    new = old.apply(
        [
            HolderChange("web", None, 21),
            ReleasedChange("web", Released("h1", 10, NOW, reason="drain"), 21),
        ]
    )
    (ev,) = changes.diff(old, new)
    assert (ev.kind, ev.node, ev.reason) == ("released", "h1", "resigned: drain")


def test_resign_without_a_reason_names_the_holders_own_health():
    old = three().apply([HolderChange("db", holder("h1", 1, rev=15), 21)])
    new = old.apply([HolderChange("db", None, 22), ReleasedChange("db", Released("h1", 15), 22)])
    (ev,) = changes.diff(old, new)
    assert ev.reason == "resigned: unhealthy: check pg failed: connection refused (3/3)"


def test_lease_end_takes_holder_and_member_at_one_revision_then_another_acquires():
    old = three()
    gone = old.apply([HolderChange("web", None, 21), MemberChange("h1", None, 21)])
    events = changes.diff(old, gone)
    assert kinds(events) == [("released", "web", "h1"), ("member_left", None, "h1")]
    assert events[0].reason == changes.LEASE_ENDED
    won = gone.apply([HolderChange("web", holder("h2", 2, rev=22), 22)])
    (ev,) = changes.diff(gone, won)
    assert (ev.kind, ev.node, ev.epoch, ev.reason) == ("acquired", "h2", 21, "won")


def test_health_flips_joins_restarts_and_requests():
    old = three()
    new = old.apply(
        [
            MemberChange("h2", member("h2", 2, {"web": BAD, "db": BAD}), 21),
            MemberChange("h3", member("h3", 9, {"web": HEALTHY, "db": UNKNOWN}), 21),
            MemberChange("h4", member("h4", 4, {"web": HEALTHY}), 21),
        ]
    )
    events = changes.diff(old, new)
    assert kinds(events) == [
        ("member_left", None, "h3"),  # the old session of h3 first
        ("member_joined", None, "h3"),
        ("member_joined", None, "h4"),
        ("health", "web", "h2"),
    ]
    assert (events[-1].old, events[-1].new) == ("healthy", "unhealthy")
    from haagent.cluster.view import RequestChange

    asked = new.apply([RequestChange("web", Request("move", to="h2", by="ops"), 22)])
    (ev,) = changes.diff(new, asked)
    assert ev.kind == "request" and ev.reason == "move to h2 by ops"
    assert json.loads(json.dumps(ev.to_json(NOW)))["event"] == "request"


def test_reread_reports_a_missed_handover_and_marks_it():
    old = three()
    fresh = three().apply([HolderChange("web", holder("h2", 2, rev=40), 40)])
    events = changes.diff(old, fresh, reread=True)
    assert kinds(events) == [("released", "web", "h1"), ("acquired", "web", "h2")]
    assert all(e.reread for e in events)


class Collect:
    def __init__(self) -> None:
        self.events: list[changes.WatchEvent] = []
        self.notices: list[str] = []

    def event(self, ev: changes.WatchEvent) -> None:
        self.events.append(ev)

    def notice(self, kind: str, text: str, **_: object) -> None:
        self.notices.append(text)


def test_watcher_skips_what_a_reread_covered_and_steps_one_revision_at_a_time():
    out = Collect()
    w = Watcher(three(), out, limit=None)  # type: ignore[arg-type]
    # Two revisions in one batch: a release then an acquisition, each reported.
    w.apply([HolderChange("web", None, 21), HolderChange("web", holder("h2", 2, rev=22), 22)])
    assert kinds(out.events) == [("released", "web", "h1"), ("acquired", "web", "h2")]
    fresh = w.view.apply([HolderChange("web", None, 30)])
    w.reload(fresh, "reconnect")
    assert out.notices == ["re-read after reconnect at revision 30: 1 change(s) found"]
    # The resumed watch delivers revision 30 again: already reported by the re-read.
    w.apply([HolderChange("web", None, 30)])
    assert len(out.events) == 3 and w.view.revision == 30


def test_watcher_count_limit():
    out = Collect()
    w = Watcher(three(), out, limit=1)  # type: ignore[arg-type]
    w.apply([HolderChange("web", None, 21), MemberChange("h1", None, 21)])
    assert len(out.events) == 1 and w.done


# --------------------------------------------------------------------------- options


def parse(*argv: str) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    add_connection_options(p)
    return p.parse_args(argv)


def test_options_win_over_env_which_wins_over_the_default():
    env = {"HAAGENT_ENDPOINTS": "http://198.51.100.2:2379", "HAAGENT_CLUSTER": "db"}
    t = resolve(parse(), env)
    assert t.etcd.endpoints == ("http://198.51.100.2:2379",) and t.cluster == "db"
    t = resolve(parse("--endpoints", "http://198.51.100.3:2379", "--cluster", "x"), env)
    assert t.etcd.endpoints == ("http://198.51.100.3:2379",) and t.cluster == "x"
    assert resolve(parse(), {}).cluster == "default"


def test_config_file_gives_endpoints_and_cluster(tmp_path: Path):
    cfg = tmp_path / "a.yaml"
    cfg.write_text(
        "cluster: db\netcd: {endpoints: ['http://198.51.100.2:2379']}\n"
        "vips: [{name: v, address: 198.51.100.200, interface: lo}]\n"
    )
    t = resolve(parse("-c", str(cfg)), {})
    assert t.cluster == "db" and t.etcd.endpoints == ("http://198.51.100.2:2379",)
    t = resolve(parse(), {"HAAGENT_CONFIG": str(cfg), "HAAGENT_CLUSTER": "other"})
    assert t.cluster == "other"


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--endpoints", "https://198.51.100.2:2379"], "--cacert: required because"),
        (["--endpoints", "ftp://x"], "--endpoints"),
        (["--user", "ro"], "--user: set without a password"),
        (["--cluster", "Bad/Name"], "is not a cluster name"),
        (["-c", "/nonexistent.yaml"], "--config: /nonexistent.yaml"),
    ],
)
def test_option_errors_are_one_line_naming_the_option(argv, message):
    with pytest.raises(CliError) as info:
        resolve(parse(*argv), {})
    text = str(info.value)
    assert message in text and "\n" not in text


def test_every_read_only_command_has_help_with_examples():
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name in ("status", "members", "watch", "version"):
        assert "examples:" in (sub.choices[name].epilog or ""), name


def test_version_json(capsys):
    from haagent.cli.main import main

    assert main(["version", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["haagent"] and data["python"] and "haagent.member/v1" in data["schemas"]


def test_unreachable_etcd_is_one_line_and_exit_2(capsys):
    from haagent.cli.main import main

    code = main(["status", "--endpoints", "http://127.0.0.1:9", "--etcd-timeout", "0.5"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("error: etcd not reachable: http://127.0.0.1:9")

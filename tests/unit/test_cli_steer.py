"""The operator commands' decisions (haagent/cli/steer.py) as pure functions of a ClusterView,
and how status, members and watch show moves and drains. No etcd here: the lab test
(tests/lab/test_cli_steer.py) runs the same commands against a real one."""

from __future__ import annotations

import argparse
import json

import pytest
from rich.console import Console

from haagent.cli import changes, connect, operate, picture, steer
from haagent.cli.main import build_parser, main
from haagent.cli.render import members_table, status_table
from haagent.cli.watch import CHANGES, Watcher
from haagent.cluster.schema import (
    HEALTHY,
    UNKNOWN,
    Drain,
    Health,
    HealthState,
    Holder,
    MemberRecord,
    Request,
)
from haagent.cluster.view import ClusterView, DrainChange, MemberChange, RequestChange
from haagent.decide.rank import candidates

NOW = 1_000_000.0
BAD = Health(HealthState.UNHEALTHY, "check pg failed: connection refused (3/3)")


def member(node: str, lease: int, health: dict[str, Health], **kw: object) -> MemberRecord:
    return MemberRecord(
        node=node,
        address=None,
        version="0.1.0",
        started=NOW - 60,
        config_digest="abc",
        lease=lease,
        vips=tuple(sorted(health)),
        health=health,
        **kw,  # type: ignore[arg-type]
    )


def holder(node: str, lease: int, rev: int = 10) -> Holder:
    return Holder(node, lease, create_revision=rev, since=NOW - 30, epoch=rev - 1, reason="won")


def cluster(**changes_: object) -> ClusterView:
    """h1 holds web (created at revision 10); h2 and h3 are healthy for it; db is unhealthy
    on h1 and h2, unknown on h3 (nobody can hold it)."""
    members = {
        "h1": member("h1", 1, {"web": HEALTHY, "db": BAD}),
        "h2": member("h2", 2, {"web": HEALTHY, "db": BAD}),
        "h3": member("h3", 3, {"web": HEALTHY, "db": UNKNOWN}),
    }
    members.update(changes_.pop("members", {}))  # type: ignore[call-overload]
    return ClusterView.of(
        20,
        members=members,
        holders=changes_.pop("holders", {"web": holder("h1", 1)}),  # type: ignore[arg-type]
        requests=changes_.pop("requests", {}),  # type: ignore[arg-type]
        drains=changes_.pop("drains", {}),  # type: ignore[arg-type]
    )


def move_to(to: str, rev: int = 15, by: str = "ops@bastion") -> Request:
    return Request("move", to=to, by=by, at=NOW - 5, revision=rev)


def test_exit_codes_agree_with_the_read_only_commands():
    assert steer.EXIT_CODES["write"] == steer.EXIT_CODES["nothing"] == connect.EXIT_OK
    assert steer.EXIT_CODES["not_now"] == connect.EXIT_PROBLEM
    assert steer.EXIT_CODES["bad"] == connect.EXIT_ERROR


# --------------------------------------------------------------------------- move


def test_move_to_a_healthy_ready_member_is_written():
    v = steer.plan_move(cluster(), "web", "h2")
    assert (v.kind, v.code, v.target, v.holder) == ("write", 0, "h2", "h1")
    assert v.reason == "move vip web from h1 to h2"


@pytest.mark.parametrize(
    "vip,to,kind,words",
    [
        ("nosuch", "h2", "bad", "unknown vip 'nosuch' (vips: db, web)"),
        ("Web", "h2", "bad", "unknown vip 'Web'"),
        ("db", "h2", "not_now", "vip db is not held by anyone: nothing to move"),
        ("web", "h9", "bad", "no live member named 'h9' (members: h1, h2, h3)"),
        ("web", "H2", "bad", "--to: 'H2' is not a node name"),
    ],
)
def test_move_refusals_of_names_and_unheld_vips(vip: str, to: str, kind: str, words: str):
    v = steer.plan_move(cluster(), vip, to)
    assert v.kind == kind and v.refused and words in v.reason, v.reason
    assert "\n" not in v.reason


def test_move_refuses_a_target_not_configured_unhealthy_draining_or_starting():
    h4 = member("h4", 4, {"db": HEALTHY})  # not configured for web
    view = cluster(members={"h4": h4})
    v = steer.plan_move(view, "web", "h4")
    assert v.kind == "bad" and v.code == 2
    assert v.reason == "h4 is not configured for vip web (configured on: h1, h2, h3)"
    sick = cluster(members={"h2": member("h2", 2, {"web": BAD})})
    v = steer.plan_move(sick, "web", "h2")
    assert v.kind == "not_now" and v.code == 1
    assert v.reason == (
        "h2 is not healthy for web (unhealthy: check pg failed: connection refused (3/3))"
    )
    drained = cluster(drains={"h2": Drain("ops", NOW)})
    v = steer.plan_move(drained, "web", "h2")
    assert v.kind == "not_now" and v.reason == "h2 is draining (haagent undrain h2 first)"
    says = cluster(members={"h2": member("h2", 2, {"web": HEALTHY}, draining=True)})
    assert steer.plan_move(says, "web", "h2").kind == "not_now"
    starting = cluster(members={"h2": member("h2", 2, {"web": HEALTHY}, ready=False)})
    v = steer.plan_move(starting, "web", "h2")
    assert v.kind == "not_now" and "start-up wait" in v.reason


def test_move_refuses_unreadable_holder_and_one_that_is_no_live_member():
    bad = Holder("(unreadable)", 1, 10, problem="not JSON")
    v = steer.plan_move(cluster(holders={"web": bad}), "web", "h2")
    assert v.kind == "not_now" and "unreadable (not JSON)" in v.reason
    gone = cluster(holders={"web": holder("h9", 9)})
    v = steer.plan_move(gone, "web", "h2")
    assert v.kind == "not_now" and "h9, which is no live member" in v.reason


def test_move_to_the_holder_says_it_is_there_and_pins_it():
    v = steer.plan_move(cluster(), "web", "h1")
    assert v.kind == "write" and v.code == 0 and v.target == v.holder == "h1"
    assert v.reason == "vip web is already on h1; pinned it there"
    pinned = cluster(requests={"web": move_to("h1", rev=5)})
    v = steer.plan_move(pinned, "web", "h1")
    assert v.kind == "nothing" and v.reason == "vip web is already on h1 (pinned there)"
    # A pending move elsewhere is replaced by a pin to where it is.
    elsewhere = cluster(requests={"web": move_to("h3", rev=15)})
    v = steer.plan_move(elsewhere, "web", "h1")
    assert v.kind == "write" and "(replacing the request for h3)" in v.reason
    # A holder about to give it up is not pinned: it would not stay.
    leaving = cluster(drains={"h1": Drain("ops", NOW)})
    v = steer.plan_move(leaving, "web", "h1")
    assert v.kind == "nothing" and "already on h1, but h1 is draining" in v.reason


def test_move_without_target_takes_the_next_ranked_ready_host():
    view = cluster()
    expect = candidates(view, "web", exclude={"h1"})[0]
    v = steer.plan_move(view, "web")
    assert v.kind == "write" and v.target == expect and v.holder == "h1"
    # The first choice still starting up is skipped, not waited for.
    starting = cluster(members={expect: member(expect, 7, {"web": HEALTHY}, ready=False)})
    v = steer.plan_move(starting, "web")
    assert v.kind == "write" and v.target not in (expect, "h1")


def test_move_without_target_refuses_when_nobody_else_can_take_it_and_says_why():
    view = cluster(members={"h2": member("h2", 2, {"web": BAD})}, drains={"h3": Drain("ops", NOW)})
    v = steer.plan_move(view, "web")
    assert v.kind == "not_now" and v.holder == "h1"
    assert v.reason.startswith("no other host can take vip web now: h2 is not healthy")
    assert "h3 is draining" in v.reason
    alone = ClusterView.of(
        3, members={"h1": member("h1", 1, {"web": HEALTHY})}, holders={"web": holder("h1", 1)}
    )
    v = steer.plan_move(alone, "web")
    assert v.reason.endswith("no other live member is configured for it")


def test_the_same_pending_move_is_not_written_again():
    # The request (revision 15) is newer than the holder's key (10): pending.
    view = cluster(requests={"web": move_to("h2", rev=15)})
    v = steer.plan_move(view, "web", "h2")
    assert v.kind == "nothing" and v.request is not None and v.request.revision == 15
    assert v.reason == "a move of vip web from h1 to h2 is already pending (asked by ops@bastion)"
    # A standing pin to h2 while h1 holds a newer key is asked again: written.
    old = cluster(requests={"web": move_to("h2", rev=5)})
    assert steer.plan_move(old, "web", "h2").kind == "write"


def test_move_state_pending_pinned_and_elsewhere():
    assert steer.move_state(cluster(), "web") is None
    pending = steer.move_state(cluster(requests={"web": move_to("h2", rev=15)}), "web")
    assert pending is not None and pending.pending and pending.text() == "move to h2 pending"
    done = cluster(
        holders={"web": holder("h2", 2, rev=16)}, requests={"web": move_to("h2", rev=15)}
    )
    state = steer.move_state(done, "web")
    assert state is not None and not state.pending and state.text() == "pinned to h2"
    back = cluster(holders={"web": holder("h1", 1, rev=30)}, requests={"web": move_to("h2")})
    state = steer.move_state(back, "web")
    assert state is not None and state.text() == "pinned to h2 (held elsewhere)"
    unheld = steer.move_state(cluster(holders={}, requests={"web": move_to("h2")}), "web")
    assert unheld is not None and unheld.pending


def test_move_done_needs_the_target_on_a_key_newer_than_the_request():
    view = cluster(holders={"web": holder("h2", 2, rev=16)})
    assert steer.move_done(view, "web", "h2", 15)
    assert not steer.move_done(view, "web", "h2", 16)  # the key is not newer
    assert not steer.move_done(view, "web", "h3", 15)
    assert not steer.move_done(cluster(holders={}), "web", "h2", 15)


def test_waiting_stops_when_the_request_is_removed_or_replaced():
    view = cluster(requests={"web": move_to("h2", rev=15)})
    assert steer.move_overtaken(view, "web", 15) is None
    why = steer.move_overtaken(cluster(), "web", 15)
    assert why is not None and "was removed" in why
    other = cluster(requests={"web": move_to("h3", rev=17, by="bob@x")})
    assert steer.move_overtaken(other, "web", 15) == (
        "the move request of vip web was replaced by bob@x (now to h3)"
    )
    sick = cluster(members={"h2": member("h2", 2, {"web": BAD})})
    assert steer.move_progress(sick, "web", "h2").startswith(
        "vip web is held by h1; h2 is not healthy for web"
    )


def test_clear_is_idempotent_and_refuses_only_an_unknown_vip():
    pinned = cluster(requests={"web": move_to("h2")})
    v = steer.clear_outcome(pinned, "web", deleted=True)
    assert v.kind == "write" and v.reason == (
        "removed the move request of vip web (pinned to h2): no pin any more"
    )
    v = steer.clear_outcome(cluster(), "web", deleted=False)
    assert v.kind == "nothing" and v.code == 0 and "nothing to clear" in v.reason
    assert steer.plan_clear(cluster(), "web").kind == "write"
    v = steer.plan_clear(cluster(), "nosuch")
    assert v.kind == "bad" and v.code == 2
    # A request for a VIP nobody lists any more can still be cleared.
    assert steer.plan_clear(cluster(requests={"old": move_to("h2")}), "old").kind == "write"


# --------------------------------------------------------------------------- drain


def test_drain_a_live_member_whose_vips_have_other_hosts():
    v = steer.plan_drain(cluster(), "h1")
    assert v.kind == "write" and v.code == 0 and not v.warnings
    assert (
        v.reason == "drained h1: it hands over web and campaigns for none until haagent undrain h1"
    )
    v = steer.plan_drain(cluster(), "h2")
    assert v.reason.startswith("drained h2: it holds no vip and")


def test_drain_is_idempotent():
    view = cluster(drains={"h1": Drain("ops@bastion", NOW, "kernel")})
    v = steer.plan_drain(view, "h1")
    assert v.kind == "nothing" and v.code == 0
    assert v.reason == "node h1 is already drained by ops@bastion: kernel"
    v = steer.undrain_outcome(view, "h1", deleted=True)
    assert v.kind == "write" and v.reason == "undrained h1: it campaigns again"
    v = steer.undrain_outcome(cluster(), "h1", deleted=False)
    assert (
        v.kind == "nothing"
        and v.code == 0
        and v.reason == "node h1 is not drained: nothing to undo"
    )


def test_drain_refuses_a_node_that_is_not_a_live_member_unless_forced():
    v = steer.plan_drain(cluster(), "h9")
    assert v.kind == "bad" and v.code == 2
    assert v.reason == (
        "no live member named 'h9' (members: h1, h2, h3); --force drains a node that is down"
    )
    v = steer.plan_drain(cluster(), "h9", force=True)
    assert v.kind == "write" and len(v.warnings) == 1 and "no live member" in v.warnings[0]
    assert steer.plan_drain(cluster(), "H9").kind == "bad"


def test_drain_refuses_to_strand_a_vip_and_lists_them_unless_forced():
    # h2 and h3 drained: h1 is web's last eligible host. db is unhealthy on h1 itself, so
    # draining h1 takes nothing from it: not listed.
    view = cluster(drains={"h2": Drain(), "h3": Drain()})
    v = steer.plan_drain(view, "h1")
    assert v.kind == "not_now" and v.code == 1
    assert v.reason == (
        "draining h1 would leave vip web with no other eligible host (live, healthy for it, "
        "not draining); --force drains it anyway"
    )
    v = steer.plan_drain(view, "h1", force=True)
    assert v.kind == "write" and v.warnings == (
        "vip web will have no eligible host while h1 drains",
    )
    # h3's health for db is not known yet (its checks have not risen): it may serve db, and
    # nobody else is healthy for it.
    v = steer.plan_drain(cluster(), "h3")
    assert v.kind == "not_now" and "vip db with no other eligible host" in v.reason
    # A holder key counts too, even for a VIP its record does not list.
    held = cluster(holders={"web": holder("h1", 1), "x": holder("h1", 1)})
    assert "vip x with" in steer.plan_drain(held, "h1").reason
    assert steer.drain_left(held, "h1") == ["web", "x"]


def test_long_lists_are_cut_to_one_line():
    names = [f"v{i:03d}" for i in range(50)]
    text = steer.listing(names)
    assert text.endswith(" and 30 more") and text.count(",") == steer.SHOWN_NAMES - 1


# --------------------------------------------------------------------------- showing it


def test_status_shows_a_pending_move_and_a_pin():
    view = cluster(requests={"web": move_to("h2", rev=15)})
    p = picture.build(view, "c")
    web = p.vip("web")
    assert web is not None and web.move is not None and web.move.text() == "move to h2 pending"
    data = json.loads(json.dumps(picture.status_json(p, NOW)))
    move = next(v for v in data["vips"] if v["name"] == "web")["move"]
    assert move == {
        "to": "h2",
        "state": "pending",
        "at_target": False,
        "by": "ops@bastion",
        "at": NOW - 5,
        "revision": 15,
        "text": "move to h2 pending",
    }
    assert next(v for v in data["vips"] if v["name"] == "db")["move"] is None
    out = Console(width=250, record=True)
    out.print(status_table(p, list(p.vips), NOW))
    row = next(line for line in out.export_text().splitlines() if " web " in line)
    assert "move to h2 pending" in row


def test_members_show_priority_ready_and_both_halves_of_a_drain():
    view = cluster(
        members={
            "h2": member("h2", 2, {"web": HEALTHY}, priority=150, priorities={"web": 300}),
            "h3": member("h3", 3, {"web": HEALTHY}, ready=False, draining=True),
        },
        drains={"h1": Drain("ops@bastion", NOW, "kernel"), "h9": Drain("ops", NOW)},
    )
    p = picture.build(view, "c")
    rows = {m.node: m for m in p.members}
    assert rows["h1"].draining and rows["h1"].drain_text == "asked (agent not yet draining)"
    assert rows["h3"].draining and rows["h3"].drain_text.startswith("ending")
    assert not rows["h2"].draining and rows["h2"].drain_text == "no"
    assert [n for n, _ in p.drained_absent] == ["h9"]
    j = picture.member_json(rows["h2"], NOW)
    assert (j["priority"], j["priorities"], j["ready"]) == (150, {"web": 300}, True)
    j = picture.member_json(rows["h1"], NOW)
    assert j["draining"] and not j["record_draining"]
    assert j["drain"] == {"by": "ops@bastion", "at": NOW, "reason": "kernel", "revision": 0}
    out = Console(width=250, record=True)
    out.print(members_table(p, NOW))
    text = out.export_text()
    assert "150 (web: 300)" in text and "starting" in text
    assert "asked (agent not yet draining) by ops@bastion: kernel" in text
    # The holder of a VIP whose drain key exists is shown draining in status, too.
    web = p.vip("web")
    assert web is not None and web.draining


def test_watch_reports_drain_keys_and_requests_being_removed():
    old = cluster()
    drained = old.apply([DrainChange("h1", Drain("ops@bastion", NOW, "kernel"), 21)])
    (ev,) = changes.diff(old, drained)
    assert (ev.kind, ev.node, ev.reason) == ("drain", "h1", "asked by ops@bastion: kernel")
    assert ev.text() == "drain     h1: asked by ops@bastion: kernel"
    undrained = drained.apply([DrainChange("h1", None, 23)])
    (ev,) = changes.diff(drained, undrained)
    assert ev.kind == "undrain" and ev.text().startswith("undrain   h1: drain key deleted")
    # A pre-drained node that is down says so.
    down = old.apply([DrainChange("h9", Drain(), 24)])
    (ev,) = changes.diff(old, down)
    assert "not a live member" in ev.reason
    # The member record's own flag: the agent acting on its drain key.
    record = member("h2", 2, {"web": HEALTHY, "db": BAD}, draining=True)
    flipped = old.apply([MemberChange("h2", record, 25)])
    (ev,) = changes.diff(old, flipped)
    assert ev.kind == "draining" and ev.new == "true"
    assert ev.text() == "draining  h2: now draining: handing every vip over"
    asked = old.apply([RequestChange("web", move_to("h2"), 26)])
    gone = asked.apply([RequestChange("web", None, 27)])
    (ev,) = changes.diff(asked, gone)
    assert ev.kind == "request_removed"
    assert ev.text() == "request   web: removed: no pin to h2 any more"


def test_the_watch_command_takes_drain_changes_from_the_store():
    assert DrainChange in CHANGES

    class Collect:
        events: list[changes.WatchEvent] = []

        def event(self, ev: changes.WatchEvent) -> None:
            self.events.append(ev)

    out = Collect()
    w = Watcher(cluster(), out, limit=None)  # type: ignore[arg-type]
    w.apply([DrainChange("h1", Drain("ops", NOW), 21)])
    assert [e.kind for e in out.events] == ["drain"]


# --------------------------------------------------------------------------- options


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    got = capsys.readouterr()
    return code, got.out, got.err


@pytest.mark.parametrize(
    "argv,words",
    [
        (["move", "web", "--clear", "--to", "h2"], "--clear: takes no --to and no --wait"),
        (["move", "web", "--timeout", "5"], "--timeout: only with --wait"),
        (["move", "web", "--wait", "--timeout", "0"], "--timeout: must be more than 0"),
        (["move", "web", "--wait", "--timeout", "nan"], "--timeout: must be more than 0"),
        (["move", "web", "--wait", "--timeout", "1e9"], "at most 3600 seconds"),
        (["move", "Web/x"], "'Web/x' is not a vip name"),
        (["drain", "h1/x"], "'h1/x' is not a node name"),
        (["drain", "h1", "--reason", "x" * 300], "--reason: at most 255 characters"),
        (["undrain", "-"], "'-' is not a node name"),
    ],
)
def test_bad_options_are_one_line_and_exit_2_before_any_connection(
    capsys: pytest.CaptureFixture[str], argv: list[str], words: str
):
    # No etcd listens on this port: the options are refused before anything connects.
    code, out, err = run(capsys, *argv, "--endpoints", "http://127.0.0.1:9")
    assert code == 2 and not out and err.count("\n") == 1 and words in err, err


def test_unreachable_etcd_is_one_line_and_exit_2(capsys: pytest.CaptureFixture[str]):
    for argv in (["move", "web", "--to", "h2"], ["drain", "h1"], ["undrain", "h1"]):
        code, _, err = run(
            capsys, *argv, "--endpoints", "http://127.0.0.1:9", "--etcd-timeout", "0.3"
        )
        assert code == 2 and err.startswith("error: etcd not reachable") and err.count("\n") == 1


def test_the_commands_and_their_permissions_are_in_the_help():
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, key in (
        ("move", "vips/<vip>/request"),
        ("drain", "drain/<node>"),
        ("undrain", "drain/<node>"),
    ):
        text = sub.choices[name].format_help()
        assert key in text and "An operator role" in text and "exit codes" in text


def test_who_is_user_at_host_and_bounded():
    by = operate.who()
    assert "@" in by and len(by) <= operate.MAX_TEXT

"""``haagent move VIP [--to NODE]``: ask a VIP's holder to hand it to another host, and pin it
there; ``--clear`` removes the pin.

It writes ``vips/<vip>/request`` (docs/keys.md): the holder unbinds and resigns with a release
record, the target campaigns first and binds at once (the same graceful path as a health
failure), and the request stays as a pin that ranks the target first until it is cleared.
The decision is made from one range read (haagent/cli/steer.py, pure) and written in a
transaction that fails if anything it was decided on has changed since that read.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from haagent.cli import connect as conn
from haagent.cli import operate, steer
from haagent.cli.render import print_json
from haagent.cluster.schema import Request, valid_name
from haagent.cluster.view import ClusterView
from haagent.logs import printable

EXAMPLES = """
haagent move web4 --to h2 --wait -c /etc/haagent/haagent.yaml   # move, and say when it is there
haagent move web4 --wait          # to the next-ranked healthy host that is not the holder
haagent move web4 --clear         # remove the pin: placement by priority and hashing again
haagent move web4 --to h2 --json | jq -r .result
"""

EXIT_HELP = (
    "exit codes: 0 the move was requested (with --wait: done), or the VIP is already there, "
    "or --clear had nothing to clear; 1 not now: the VIP is not held, the target is "
    "unhealthy, draining or starting up, no other host can take it, the cluster changed "
    "while deciding (nothing written; run it again), or --wait timed out; 2 unknown VIP or "
    "node, a target not configured for the VIP, bad options, or etcd cannot be read or "
    "written (a missing permission is named)."
)


def add_parser(sub: Any) -> None:
    p = conn.subcommand(
        sub,
        "move",
        help="hand a VIP to another host gracefully, and pin it there",
        description=(
            "Ask the holder of VIP to hand it over to NODE (default: the next-ranked healthy "
            "host that is not the holder): it unbinds, resigns, and NODE binds at once. "
            "Refused, with the reason, unless NODE is a live member configured for the VIP, "
            "healthy for it, not draining and past its start-up wait. The request stays as a "
            "pin: NODE ranks first for the VIP (no preemption moves it away) until "
            "haagent move VIP --clear. Written only if nothing the decision read has changed "
            "since (holder, target, request).\n\n" + EXIT_HELP
        ),
        examples=EXAMPLES,
        writes="/haagent/v1/<cluster>/vips/<vip>/request",
    )
    p.add_argument("vip", help="the VIP to move")
    p.add_argument("--to", metavar="NODE", help="the node to move it to (default: next-ranked)")
    p.add_argument("--clear", action="store_true", help="delete the VIP's move request (the pin)")
    operate.add_wait_options(p, "the target holds the VIP")
    conn.add_connection_options(p)
    p.set_defaults(func=conn.run_guarded(cmd_move))


class Report:
    """The outcome: one line (stdout, or stderr for a refusal), or one JSON object."""

    def __init__(self, args: argparse.Namespace, cluster: str) -> None:
        self.as_json = bool(args.json)
        self.data: dict[str, Any] = {"cluster": cluster, "vip": args.vip}

    def say(self, result: str, text: str, code: int, **fields: Any) -> int:
        self.data.update(fields)
        self.data.update({"result": result, "code": code, "reason": text})
        if self.as_json:
            print_json(self.data)
        elif code == conn.EXIT_OK:
            print(printable(text, 400))
        else:
            word = "error" if code == conn.EXIT_ERROR else "refused"
            print(f"{word}: {printable(text, 400)}", file=sys.stderr)
        return code

    def progress(self, text: str) -> None:
        """A line before the final one (the request is written; now waiting)."""
        if not self.as_json:
            print(printable(text, 400), flush=True)


def cmd_move(args: argparse.Namespace) -> int:
    if not valid_name(args.vip):
        raise conn.CliError(f"{args.vip[:80]!r} is not a vip name")
    if args.clear and (args.to is not None or args.wait):
        raise conn.CliError("--clear: takes no --to and no --wait")
    timeout = operate.wait_timeout(args)
    # Read-only until a write is decided on: a refusal needs no write permission, and a
    # missing one is named by the write itself (conn.writing).
    target, store = conn.connect(args)
    try:
        view = conn.snapshot(store, target)
        report = Report(args, target.cluster)
        if args.clear:
            return _clear(store, target, view, args.vip, report)
        return _move(store, target, view, args, timeout, report)
    finally:
        store.close()


def _clear(store: Any, target: conn.Target, view: ClusterView, vip: str, report: Report) -> int:
    v = steer.plan_clear(view, vip)
    if v.refused:
        return report.say("refused", v.reason, v.code)
    key = target.keys.request(vip)
    with conn.writing(target, key):
        # Deleted whether or not it decoded: an unreadable request is cleared too.
        deleted = bool(store.client.delete(key))
    v = steer.clear_outcome(view, vip, deleted)
    return report.say("cleared" if deleted else "nothing", v.reason, v.code)


def _move(
    store: Any,
    target: conn.Target,
    view: ClusterView,
    args: argparse.Namespace,
    timeout: float,
    report: Report,
) -> int:
    vip = args.vip
    v = steer.plan_move(view, vip, args.to)
    fields: dict[str, Any] = {"holder": v.holder, "target": v.target}
    if v.refused:
        return report.say("refused", v.reason, v.code, **fields)
    started = time.monotonic()
    if v.kind == "nothing":
        if v.request is None or not args.wait:  # already there, or pending and not waiting
            result = "pending" if v.request is not None else "already"
            return report.say(result, v.reason, v.code, **fields)
        revision = v.request.revision  # the same move is pending: wait for that one
        report.progress(v.reason)
    else:
        assert v.target is not None and v.holder is not None
        request = Request("move", to=v.target, by=operate.who(), at=time.time())
        written = _write(store, target, view, vip, v.target, request)
        if written is None:
            changed = _what_changed(store, view, vip, v.target)
            return report.say(
                "stale",
                f"the cluster changed while deciding ({changed}); nothing written: run the "
                "command again",
                conn.EXIT_PROBLEM,
                **fields,
            )
        revision = written
        fields["request_revision"] = revision
        if not args.wait or v.target == v.holder:
            return report.say(
                "requested", f"{v.reason} (request at revision {revision})", 0, **fields
            )
        report.progress(f"{v.reason}: requested at revision {revision}; waiting")
    to = v.target
    assert to is not None
    got = operate.follow(
        store,
        view,
        lambda now: steer.move_done(now, vip, to, revision),
        started + timeout,
        lambda now: steer.move_overtaken(now, vip, revision),
        stop_from=revision,
    )
    took = round(time.monotonic() - started, 3)
    fields["took"] = took
    if got.done:
        return report.say(
            "moved", f"moved vip {vip} from {v.holder} to {to} in {took:.2f} s", 0, **fields
        )
    if got.stopped is not None:
        return report.say("overtaken", got.stopped, conn.EXIT_PROBLEM, **fields)
    state = steer.move_progress(got.view, vip, to)
    return report.say(
        "timeout",
        f"timed out after {timeout:g} s: {state}; the request stays (pending until {to} "
        f"can take it; haagent move {vip} --clear to drop it)",
        conn.EXIT_PROBLEM,
        **fields,
    )


def _write(
    store: Any, target: conn.Target, view: ClusterView, vip: str, to: str, request: Request
) -> int | None:
    """Put the request if nothing the decision read changed after ``view.revision``: the
    holder key (the same key, not rewritten), the request key, the target's member record
    (still there, not rewritten) and its drain key. The request's revision, or None."""
    keys = target.keys
    client = store.client
    tx = client.transactions
    holder, req = keys.holder(vip), keys.request(vip)
    member, drain = keys.member(to), keys.drain(to)
    after = view.revision + 1  # "mod_revision < after": not written since the read
    h = view.holders[vip]
    compare = [
        tx.create(holder) == h.create_revision,
        tx.mod(holder) < after,
        tx.mod(req) < after,
        tx.version(member) > 0,
        tx.mod(member) < after,
        tx.mod(drain) < after,
    ]
    with conn.writing(target, req):
        ok, responses = client.transaction(
            compare=compare, success=[tx.put(req, request.to_json()), tx.get(req)], failure=[]
        )
    if not ok:
        return None
    ((_, meta),) = responses[1]
    return int(meta.mod_revision)


def _what_changed(store: Any, view: ClusterView, vip: str, to: str) -> str:
    """What a failed transaction found changed, read again now (for the message only)."""
    from haagent.store.errors import ETCD_ERRORS

    try:
        now = store.snapshot()
    except ETCD_ERRORS:
        return "and etcd could not be read again to say what"
    before, after = view.holders.get(vip), now.holders.get(vip)
    if after is None or before is None or after.create_revision != before.create_revision:
        return f"vip {vip} is now held by {after.node if after is not None else 'nobody'}"
    if now.requests.get(vip) != view.requests.get(vip):
        r = now.requests.get(vip)
        return f"its move request was {'replaced (to ' + str(r.to) + ')' if r else 'removed'}"
    if to not in now.members:
        return f"{to} left"
    if now.draining(to):
        return f"{to} was drained"
    if now.members.get(to) != view.members.get(to):
        return f"{to}'s member record changed"
    return f"vip {vip}'s holder key was rewritten"

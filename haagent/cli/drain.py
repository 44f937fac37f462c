"""``haagent drain NODE`` and ``haagent undrain NODE``: take a host out of service for
maintenance, gracefully, and put it back.

``drain`` writes ``drain/<node>`` (docs/keys.md), on no lease so that it survives restarts of
that node's agent: the agent hands every VIP over (unbind, then resign with a release record:
the next host binds at once) and campaigns for none; its member record then says
``"draining": true`` and its peers rank it out. ``undrain`` deletes the key. Both are
idempotent. The refusal rules are pure (haagent/cli/steer.py); the write is a transaction
that fails if another drain or any member record changed since the read it was decided on.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from haagent.cli import connect as conn
from haagent.cli import operate, steer
from haagent.cli.render import print_json
from haagent.cluster.schema import Drain, valid_name
from haagent.cluster.view import ClusterView
from haagent.decide.rank import candidates
from haagent.logs import printable

EXAMPLES = """
haagent drain h2 --reason "kernel update" --wait -c /etc/haagent/haagent.yaml
haagent drain h3 --force          # h3 is down: keep it out when it comes back
haagent undrain h2
"""

UNDRAIN_EXAMPLES = """
haagent undrain h2 -c /etc/haagent/haagent.yaml
"""

EXIT_HELP = (
    "exit codes: 0 drained (with --wait: it holds no VIP any more), or drained already; 1 not "
    "now: draining it would leave a VIP it serves with no other eligible host (live, healthy "
    "for it, not draining; --force drains anyway), the cluster changed while deciding "
    "(nothing written; run it again), or --wait timed out; 2 NODE is no live member (--force "
    "drains a node that is down), bad options, or etcd cannot be read or written (a missing "
    "permission is named)."
)

# Alternatives whose member key the drain transaction checks one by one (each is one compare;
# etcd allows --max-txn-ops, default 128, per transaction). Beyond it, only the range checks.
MAX_CHECKED = 100


def add_parser(sub: Any) -> None:
    p = conn.subcommand(
        sub,
        "drain",
        help="take a host out of service: it hands every VIP over and campaigns for none",
        description=(
            "Drain NODE: its agent hands every VIP over gracefully (unbind, then resign, so "
            "the next host binds at once) and campaigns for none until haagent undrain NODE; "
            "the drain survives restarts of its agent. Refused when NODE is no live member, "
            "or when some VIP it serves would be left with no other eligible host; --force "
            "does it anyway (a warning says what it costs).\n\n" + EXIT_HELP
        ),
        examples=EXAMPLES,
        writes="/haagent/v1/<cluster>/drain/<node>",
    )
    p.add_argument("node", help="the node to drain")
    p.add_argument(
        "--force",
        action="store_true",
        help="drain a node that is down, or one whose VIPs would have no other eligible host",
    )
    p.add_argument(
        "--reason",
        default="",
        metavar="TEXT",
        help=f"why, for logs and status (<= {operate.MAX_TEXT})",
    )
    operate.add_wait_options(p, "NODE holds no VIP")
    conn.add_connection_options(p)
    p.set_defaults(func=conn.run_guarded(cmd_drain))

    u = conn.subcommand(
        sub,
        "undrain",
        help="end a drain: the host campaigns for VIPs again",
        description=(
            "Delete NODE's drain key: its agent campaigns again, by rank (it may take VIPs "
            "back by preemption, where the VIP allows it). Idempotent.\n\n"
            "exit codes: 0 undrained, or not drained; 2 bad options, or etcd cannot be read "
            "or written (a missing permission is named)."
        ),
        examples=UNDRAIN_EXAMPLES,
        writes="/haagent/v1/<cluster>/drain/<node>",
    )
    u.add_argument("node", help="the node to undrain")
    u.add_argument("--json", action="store_true", help="the outcome as one JSON object")
    conn.add_connection_options(u)
    u.set_defaults(func=conn.run_guarded(cmd_undrain))


def _say(args: argparse.Namespace, data: dict[str, Any], result: str, v: steer.Verdict) -> int:
    return _out(args, data, result, v.reason, v.code, list(v.warnings))


def _out(
    args: argparse.Namespace,
    data: dict[str, Any],
    result: str,
    text: str,
    code: int,
    warnings: list[str] | None = None,
) -> int:
    data.update({"result": result, "code": code, "reason": text, "warnings": warnings or []})
    if args.json:
        print_json(data)
        return code
    for w in warnings or []:
        print(f"warning: {printable(w, 400)}", file=sys.stderr)
    if code == conn.EXIT_OK:
        print(printable(text, 400), flush=True)
    else:
        word = "error" if code == conn.EXIT_ERROR else "refused"
        print(f"{word}: {printable(text, 400)}", file=sys.stderr)
    return code


def _node(args: argparse.Namespace) -> str:
    node = str(args.node)
    if not valid_name(node):
        raise conn.CliError(f"{node[:80]!r} is not a node name")
    return node


def cmd_drain(args: argparse.Namespace) -> int:
    node = _node(args)
    if len(args.reason) > operate.MAX_TEXT:
        raise conn.CliError(f"--reason: at most {operate.MAX_TEXT} characters")
    timeout = operate.wait_timeout(args)
    # Read-only until a write is decided on: a refusal needs no write permission, and a
    # missing one is named by the write itself (conn.writing).
    target, store = conn.connect(args)
    try:
        view = conn.snapshot(store, target)
        data: dict[str, Any] = {"cluster": target.cluster, "node": node, "action": "drain"}
        v = steer.plan_drain(view, node, force=args.force)
        if v.refused:
            return _say(args, data, "refused", v)
        started = time.monotonic()
        if v.kind == "write":
            drain = Drain(by=operate.who(), at=time.time(), reason=args.reason)
            written = _write(store, target, view, node, drain, checked=not args.force)
            if written is None:
                text = (
                    "the cluster changed while deciding (another drain, or a member's record); "
                    "nothing written: run the command again"
                )
                return _out(args, data, "stale", text, conn.EXIT_PROBLEM)
            if not written:
                return _out(args, data, "already", f"node {node} was drained meanwhile", 0)
            data["held"] = sorted(steer.held_by(view, node))
            if not args.wait:
                return _say(args, data, "drained", v)
            if not args.json:
                for w in v.warnings:
                    print(f"warning: {printable(w, 400)}", file=sys.stderr)
                print(printable(v.reason, 400) + "; waiting", flush=True)
        elif not args.wait:
            return _say(args, data, "already", v)
        got = operate.follow(
            store, view, lambda now: not steer.drain_left(now, node), started + timeout
        )
        took = round(time.monotonic() - started, 3)
        data["took"] = took
        # The warnings were printed with the first line; JSON gets them with the only one.
        said = list(v.warnings) if args.json else []
        if got.done:
            text = f"{node} holds no vip any more (after {took:.2f} s)"
            return _out(args, data, "drained", text, conn.EXIT_OK, said)
        left = steer.drain_left(got.view, node)
        text = f"timed out after {timeout:g} s: {node} still holds {steer.listing(left)}"
        return _out(args, data, "timeout", text, conn.EXIT_PROBLEM, said)
    finally:
        store.close()


def _write(
    store: Any, target: conn.Target, view: ClusterView, node: str, drain: Drain, *, checked: bool
) -> bool | None:
    """Put the drain key if it is still absent (False: someone drained it meanwhile) and, when
    ``checked``, if no other drain key and no member record was written after the read and the
    hosts the decision counted on are still members (None: the cluster changed)."""
    import pyetcd.utils  # here, not at import: every haagent command builds this parser

    keys = target.keys
    client = store.client
    tx = client.transactions
    key = keys.drain(node)
    after = view.revision + 1
    compare = [tx.version(key) == 0]
    if checked:
        # Range compares hold for every key in the range (an empty range compares as 0).
        for prefix in (f"{keys.prefix}drain/", f"{keys.prefix}members/"):
            end = pyetcd.utils.prefix_range_end(prefix.encode())
            compare.append(tx.mod(prefix, range_end=end) < after)
        # Deletions leave no revision to compare: check the alternatives' records exist.
        alternatives = sorted(
            {n for v in steer.vips_of(view, node) for n in candidates(view, v, exclude={node})}
        )
        compare += [tx.version(keys.member(n)) > 0 for n in alternatives[:MAX_CHECKED]]
    with conn.writing(target, key):
        ok, responses = client.transaction(
            compare=compare, success=[tx.put(key, drain.to_json())], failure=[tx.get(key)]
        )
    if ok:
        return True
    return False if responses and responses[0] else None


def cmd_undrain(args: argparse.Namespace) -> int:
    node = _node(args)
    target, store = conn.connect(args)
    try:
        view = conn.snapshot(store, target)
        key = target.keys.drain(node)
        with conn.writing(target, key):
            deleted = bool(store.client.delete(key))
        v = steer.undrain_outcome(view, node, deleted)
        data: dict[str, Any] = {"cluster": target.cluster, "node": node, "action": "undrain"}
        return _say(args, data, "undrained" if deleted else "nothing", v)
    finally:
        store.close()

"""``haagent members``: every live agent of a cluster, from its member record in etcd."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from haagent.cli import connect as conn
from haagent.cli.picture import disagreement_json, drain_json, member_json
from haagent.cli.render import console, drain_note, members_table, print_json
from haagent.logs import printable

EXAMPLES = """
haagent members -c /etc/haagent/haagent.yaml
haagent members --cluster db --json | jq '.members[] | select(.draining)'
"""


def add_parser(sub: Any) -> None:
    p = conn.subcommand(
        sub,
        "members",
        help="the live agents: address, version, uptime, config digest, health per VIP",
        description=(
            "One row per live agent (its member record exists exactly as long as its etcd "
            "lease): node, address, haagent version, uptime, config digest, placement priority "
            "(with per-VIP overrides), ready (past its start-up wait), draining (drained by "
            "haagent drain, or saying so in its record), and its health for each VIP with the "
            "failing check's detail. Lists drained nodes that are not running. Warns when "
            "hosts disagree about a VIP's addresses, interface, mode or checks.\n\n"
            "exit codes: 0 read, 2 etcd cannot be read or the cluster is unknown."
        ),
        examples=EXAMPLES,
    )
    p.add_argument("--json", action="store_true", help="the same content as one JSON object")
    conn.add_connection_options(p)
    p.set_defaults(func=conn.run_guarded(cmd_members))


def cmd_members(args: argparse.Namespace) -> int:
    _target, picture = conn.read_picture(args)
    now = time.time()
    live = {m.node for m in picture.members}
    if args.json:
        print_json(
            {
                "cluster": picture.cluster,
                "revision": picture.revision,
                "time": now,
                "members": [member_json(m, now) for m in picture.members],
                "drains": [
                    {"node": node, "live": node in live, **(drain_json(d) or {})}
                    for node, d in picture.drains
                ],
                "disagreements": [disagreement_json(d) for d in picture.disagreements],
            }
        )
        return conn.EXIT_OK
    out = console()
    out.print(members_table(picture, now))
    for node, drain in picture.drained_absent:
        note = printable(drain_note(node, drain), 400)
        out.print(note, style="yellow", markup=False, highlight=False)
    for d in picture.disagreements:
        print(f"warning: {d.text()}", file=sys.stderr)
    return conn.EXIT_OK

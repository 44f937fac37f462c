"""``haagent members``: every live agent of a cluster, from its member record in etcd."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from haagent.cli import connect as conn
from haagent.cli.picture import disagreement_json, member_json
from haagent.cli.render import console, members_table, print_json

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
            "lease): node, address, haagent version, uptime, config digest, draining, and its "
            "health for each VIP with the failing check's detail. Warns when hosts disagree "
            "about a VIP's addresses, interface, mode or checks.\n\n"
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
    if args.json:
        print_json(
            {
                "cluster": picture.cluster,
                "revision": picture.revision,
                "time": now,
                "members": [member_json(m, now) for m in picture.members],
                "disagreements": [disagreement_json(d) for d in picture.disagreements],
            }
        )
        return conn.EXIT_OK
    console().print(members_table(picture, now))
    for d in picture.disagreements:
        print(f"warning: {d.text()}", file=sys.stderr)
    return conn.EXIT_OK

"""``haagent status``: one row per VIP, from one range read of the cluster's prefix.

Exit code 0 when every VIP (or the one asked for) is held, 1 when one is not, 2 when etcd
cannot be read or the cluster or VIP is unknown: monitoring scripts can use it as it is.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from haagent.cli import connect as conn
from haagent.cli.picture import status_json
from haagent.cli.render import console, print_json, status_table

EXAMPLES = """
haagent status -c /etc/haagent/haagent.yaml          # the cluster of this host's agent
haagent status --endpoints https://10.0.0.5:2379 --cacert ca.crt --cert ro.crt --key ro.key \\
    --cluster db
haagent status primary --json | jq .vips[0].holder    # one VIP, for a script
HAAGENT_ENDPOINTS=http://10.0.0.5:2379 HAAGENT_CLUSTER=db haagent status || page-someone
"""


def add_parser(sub: Any) -> None:
    p = conn.subcommand(
        sub,
        "status",
        help="who holds each VIP (exit 0: all held, 1: one is not, 2: etcd unreadable)",
        description=(
            "One row per VIP: its addresses and interface, the holder and for how long, the "
            "epoch, the healthy standby hosts in the order they would take over, a move "
            'request ("move to NODE pending" until NODE holds it, then "pinned to NODE" '
            "until haagent move --clear), and why it last changed. Red: not held; magenta: no "
            "host is healthy for it; yellow: its holder is draining. Reads etcd only (no "
            "agent needed); read permission on the cluster's prefix is enough.\n\n"
            "exit codes: 0 every VIP shown is held, 1 one is not, 2 etcd cannot be read, or "
            "the cluster or VIP is unknown."
        ),
        examples=EXAMPLES,
    )
    p.add_argument("vip", nargs="?", help="show only this VIP (exit code about it alone)")
    p.add_argument("--json", action="store_true", help="the same content as one JSON object")
    conn.add_connection_options(p)
    p.set_defaults(func=conn.run_guarded(cmd_status))


def cmd_status(args: argparse.Namespace) -> int:
    target, picture = conn.read_picture(args)
    rows = list(picture.vips)
    if args.vip is not None:
        row = picture.vip(args.vip)
        if row is None:
            known = ", ".join(v.name for v in picture.vips) or "none"
            raise conn.CliError(
                f"unknown vip {args.vip[:80]!r} in cluster {target.cluster!r} (vips: {known})"
            )
        rows = [row]
    now = time.time()
    if args.json:
        print_json(status_json(picture, now, rows))
    else:
        out = console()
        out.print(status_table(picture, rows, now))
        unheld = [v.name for v in rows if not v.held]
        if unheld:
            out.print(f"not held: {', '.join(unheld)}", style="bold red", markup=False)
    return conn.EXIT_OK if all(v.held for v in rows) else conn.EXIT_PROBLEM

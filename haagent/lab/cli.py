"""``haagent lab up|down|status``: a haagent cluster on one machine, in network namespaces."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from haagent.lab.topology import (
    LAB_ID_RE,
    Lab,
    LabError,
    cleanup_leftovers,
    find_leftovers,
    lab_ids,
    list_netns,
    netns_pids,
    pid_alive,
)

EXIT_OK = 0
EXIT_FAIL = 1
EXIT_USAGE = 2

console = Console()
err_console = Console(stderr=True)


def _lab_id(value: str) -> str:
    if not LAB_ID_RE.match(value):
        raise argparse.ArgumentTypeError(f"lab id must look like hx3f9a1, not {value!r}")
    return value


def add_lab_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    lab = subparsers.add_parser(
        "lab",
        help="build, inspect and remove a local test cluster in network namespaces (root)",
        description=(
            "A haagent cluster on one machine: a switch, hosts, a client and etcd, each in its "
            "own network namespace. Needs root, iproute2, nftables and etcd-server."
        ),
    )
    sub = lab.add_subparsers(dest="lab_command", metavar="{up,down,status}")
    lab.set_defaults(func=lambda _args: _usage(lab))

    up = sub.add_parser("up", help="build a lab and start etcd; it keeps running until `down`")
    up.add_argument("--hosts", type=int, default=3, help="number of hosts (default: 3)")
    up.add_argument("--etcd-members", type=int, choices=[1, 3], default=1, help="etcd cluster size")
    up.add_argument("--id", type=_lab_id, help="lab id (default: random hx + 5 hex digits)")
    up.add_argument(
        "--responders", action="store_true", help="start the UDP/TCP responder on every host"
    )
    up.add_argument("--json", action="store_true", help="print the lab state as JSON")
    up.set_defaults(func=cmd_up)

    down = sub.add_parser("down", help="kill a lab's processes and delete its namespaces")
    which = down.add_mutually_exclusive_group()
    which.add_argument("--id", type=_lab_id, help="the lab to remove")
    which.add_argument("--all", action="store_true", help="remove every lab on this machine")
    down.set_defaults(func=cmd_down)

    status = sub.add_parser("status", help="namespaces, addresses and processes of labs")
    status.add_argument("--id", type=_lab_id, help="one lab (default: all)")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.set_defaults(func=cmd_status)


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return EXIT_USAGE


def _need_root() -> str | None:
    return None if os.geteuid() == 0 else "haagent lab needs root (network namespaces)"


# --------------------------------------------------------------------------- up


def cmd_up(args: argparse.Namespace) -> int:
    if why := _need_root():
        err_console.print(f"[red]{why}[/]")
        return EXIT_FAIL
    try:
        lab = Lab(args.hosts, etcd_members=args.etcd_members, lab_id=args.id)
    except ValueError as exc:
        err_console.print(f"[red]{exc}[/]")
        return EXIT_USAGE
    started = time.monotonic()
    try:
        lab.up()
        if args.responders:
            for h in lab.hosts:
                lab.start_responder(h)
    except Exception as exc:
        lab.down()
        err_console.print(f"[red]lab up failed:[/] {exc}")
        return EXIT_FAIL
    took = time.monotonic() - started
    if args.json:
        print(json.dumps(lab.state(), indent=2))
        return EXIT_OK
    console.print(f"lab [bold]{lab.lab_id}[/] is up ({took:.1f} s); files in {lab.workdir}")
    table = Table("role", "namespace", "IPv4", "IPv6", "switch port")
    for n in lab.nodes:
        table.add_row(n.role, n.netns, str(n.ipv4), str(n.ipv6), n.role)
    console.print(table)
    cl = lab.client.netns
    eps = ",".join(lab.etcd_endpoints)
    h1 = lab.hosts[0]
    console.print(
        f"switch: bridge br0 in {lab.switch_ns}\n"
        f"VIPs: yours to use from {Lab.vip4(0)}-{Lab.vip4(49)} and {Lab.vip6(0)}-{Lab.vip6(49)}\n"
        f"etcd: {eps}\n\npoke at it:",
        soft_wrap=True,
    )
    # Neither iputils' ping nor a `haagent` on PATH can be assumed (the agent usually lives in a
    # virtualenv): every command names this very interpreter, which has the lab's probe.
    py = shlex.quote(sys.executable)
    probe = f"ip netns exec {cl} {py} -m haagent.lab.probe"
    hints = [
        f"{probe} --ping --target {h1.ipv4}",
        f"{probe} --ping --target {h1.ipv6}",
        f"ip netns exec {cl} env ETCDCTL_API=3 etcdctl --endpoints={eps} get --prefix /haagent",
        f"ip netns exec {h1.netns} bash    # a shell on {h1.role}",
    ]
    if args.responders:
        hints.append(f"{probe} --once --target {h1.ipv4}")
    hints += [
        f"{py} -m haagent lab status --id {lab.lab_id}",
        f"{py} -m haagent lab down --id {lab.lab_id}",
    ]
    # Plain print: commands must stay on one line to be copy-pasted.
    print("\n".join(f"  {h}" for h in hints))
    return EXIT_OK


# --------------------------------------------------------------------------- down


def cmd_down(args: argparse.Namespace) -> int:
    if why := _need_root():
        err_console.print(f"[red]{why}[/]")
        return EXIT_FAIL
    if args.all:
        removed = cleanup_leftovers()
        for item in removed:
            console.print(f"removed {item}")
        if not removed:
            console.print("no lab found")
        return EXIT_OK
    target = args.id
    if target is None:
        ids = lab_ids()
        if len(ids) != 1:
            err_console.print(
                "no lab found"
                if not ids
                else f"several labs ({', '.join(ids)}): pass --id or --all"
            )
            return EXIT_USAGE if ids else EXIT_OK
        target = ids[0]
    try:
        lab = Lab.load(target)
    except LabError:
        # No state (its owner died early): remove whatever carries its name.
        removed = cleanup_leftovers(target)
        if not removed:
            err_console.print(f"no lab {target}")
            return EXIT_FAIL
        for item in removed:
            console.print(f"removed {item}")
        return EXIT_OK
    started = time.monotonic()
    try:
        lab.down()
    except LabError as exc:
        err_console.print(f"[red]lab down {target}:[/] {exc}")
        return EXIT_FAIL
    console.print(f"lab {target} removed ({time.monotonic() - started:.1f} s)")
    return EXIT_OK


# --------------------------------------------------------------------------- status


def _comm(pid: int) -> str:
    """The process name; for `python -m pkg.mod`, the module's last part (responder, haagent)."""
    try:
        comm = Path(f"/proc/{pid}/comm").read_text().strip()
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return "?"
    if comm.startswith("python") and b"-m" in argv[:-1]:
        return argv[argv.index(b"-m") + 1].decode(errors="replace").rsplit(".", 1)[-1]
    return comm


def lab_status(lab_id: str) -> dict[str, Any]:
    """What is really there for one lab: namespaces, addresses, processes (state + kernel)."""
    present = set(list_netns())
    try:
        lab: Lab | None = Lab.load(lab_id)
    except LabError:
        lab = None
    if lab is None:
        namespaces = find_leftovers(lab_id)
        return {
            "lab_id": lab_id,
            "status": "orphaned (no state file)",
            "namespaces": [
                {
                    "netns": ns,
                    "exists": True,
                    "processes": [{"pid": p, "comm": _comm(p)} for p in netns_pids(ns)],
                }
                for ns in namespaces
            ],
            "processes": [],
        }
    state = lab.state()
    rows: list[dict[str, Any]] = []
    for ns, node in [(lab.switch_ns, None), *((n.netns, n) for n in lab.nodes)]:
        exists = ns in present
        rows.append(
            {
                "netns": ns,
                "role": node.role if node else "sw",
                "ipv4": str(node.ipv4) if node else None,
                "ipv6": str(node.ipv6) if node else None,
                "exists": exists,
                "bound": sorted(str(a) for a in lab.bound(node)) if node and exists else [],
                "processes": [{"pid": p, "comm": _comm(p)} for p in netns_pids(ns)]
                if exists
                else [],
            }
        )
    return {
        "lab_id": lab_id,
        "status": state["status"],
        "workdir": state["workdir"],
        "etcd_endpoints": state["etcd_endpoints"],
        "namespaces": rows,
        "processes": [{**p, "alive": pid_alive(int(p["pid"]))} for p in state.get("processes", [])],
    }


def cmd_status(args: argparse.Namespace) -> int:
    if why := _need_root():
        err_console.print(f"[red]{why}[/]")
        return EXIT_FAIL
    ids = [args.id] if args.id else lab_ids()
    labs = [lab_status(i) for i in ids]
    if args.json:
        print(json.dumps(labs if args.id is None else labs[0], indent=2))
        return EXIT_OK if all(_exists(lab) for lab in labs) else EXIT_FAIL
    if not labs:
        console.print("no lab on this machine")
        return EXIT_OK
    for info in labs:
        if not _exists(info):
            console.print(f"lab {info['lab_id']}: not found")
            continue
        console.print(f"lab [bold]{info['lab_id']}[/]: {info['status']}")
        table = Table("namespace", "role", "addresses", "extra addresses", "processes")
        table.columns[0].no_wrap = True
        for row in info["namespaces"]:
            own = [a for a in (row.get("ipv4"), row.get("ipv6")) if a]
            extra = [a for a in row.get("bound", []) if a not in own]
            procs = "\n".join(f"{p['comm']}[{p['pid']}]" for p in row["processes"]) or "-"
            table.add_row(
                row["netns"] if row["exists"] else f"[red]{row['netns']} (missing)[/]",
                row.get("role") or "?",
                "\n".join(own),
                "\n".join(extra) or "-",
                procs,
            )
        console.print(table)
        dead = [p for p in info["processes"] if not p["alive"]]
        if dead:
            console.print(
                "exited: "
                + ", ".join(f"{Path(p['argv'][0]).name}[{p['pid']}] in {p['netns']}" for p in dead)
            )
    return EXIT_OK


def _exists(info: dict[str, Any]) -> bool:
    return any(row["exists"] for row in info["namespaces"])

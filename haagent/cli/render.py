"""Rich tables for the read-only commands: one place for columns and colours."""

from __future__ import annotations

import json
import sys
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from haagent.cli.picture import MemberRow, Picture, VipRow, ago, health_text
from haagent.cluster.schema import Drain
from haagent.logs import printable


def cell(text: str) -> Text:
    """A table cell from etcd's text: never read as rich markup, control characters escaped."""
    return Text(printable(text, 400))


def console() -> Console:
    """stdout; wide when it is not a terminal, so that piped output is not wrapped at 80."""
    if sys.stdout.isatty():
        return Console(highlight=False)
    return Console(width=200, highlight=False, no_color=False)


def print_json(data: Any) -> None:
    print(json.dumps(data, sort_keys=False))


def vip_style(v: VipRow) -> str:
    """Unheld: red; nobody healthy: magenta; draining holder: yellow."""
    if not v.held:
        return "bold red"
    if not v.healthy_somewhere:
        return "magenta"
    if v.draining:
        return "yellow"
    return ""


def status_table(p: Picture, rows: list[VipRow], now: float) -> Table:
    table = Table(title=f"cluster {p.cluster} at revision {p.revision}", title_justify="left")
    columns = ("VIP", "address", "interface", "holder", "since", "epoch", "standby", "move")
    for name in (*columns, "reason"):
        table.add_column(name, overflow="fold")
    for v in rows:
        spec = v.spec
        holder = v.holder or "-"
        if v.draining:
            holder += " (draining)"
        notes = []
        if not v.healthy_somewhere:
            notes.append("no healthy member")
        reason = v.reason + (f" [{', '.join(notes)}]" if notes else "")
        table.add_row(
            cell(v.name),
            cell("\n".join(spec.cidrs) if spec else "?"),  # a v4/v6 pair: a line each
            cell(spec.interface if spec else "?"),
            cell(holder),
            cell(ago(v.since, now) if v.since is not None else "-"),
            cell(str(v.epoch) if v.epoch is not None else "-"),
            cell(", ".join(v.standby) or "-"),
            cell(v.move.text() if v.move is not None else "-"),
            cell(reason),
            style=vip_style(v),
        )
    return table


def members_table(p: Picture, now: float) -> Table:
    table = Table(title=f"cluster {p.cluster} at revision {p.revision}", title_justify="left")
    columns = ("node", "address", "version", "uptime", "config", "priority", "ready", "draining")
    for name in (*columns, "health"):
        table.add_column(name, overflow="fold")
    for m in p.members:
        table.add_row(
            cell(m.node),
            cell(m.address or "-"),
            cell(m.version),
            cell(ago(m.started, now)),
            cell(m.config_digest),
            cell(priority_text(m)),
            cell("yes" if m.ready else "starting"),
            cell(_drain_cell(m)),
            _health_cell(m),
            style="yellow" if m.draining else "",
        )
    return table


def priority_text(m: MemberRow) -> str:
    """``100``, or ``100 (db: 200, web: 50)`` with the VIPs its config gives another one."""
    if not m.priorities:
        return str(m.priority)
    return f"{m.priority} ({', '.join(f'{v}: {p}' for v, p in m.priorities)})"


def _who_why(d: Drain) -> str:
    return (f" by {d.by}" if d.by else "") + (f": {d.reason}" if d.reason else "")


def drain_note(node: str, d: Drain) -> str:
    """A drain key of a node that is no live member: the table has no row for it."""
    return f"{node} is drained{_who_why(d)} but not running (no live member)"


def _drain_cell(m: MemberRow) -> str:
    return m.drain_text + (_who_why(m.drain) if m.drain is not None else "")


def _health_cell(m: MemberRow) -> Text:
    out = Text()
    for i, vh in enumerate(m.health):
        if i:
            out.append("\n")
        colour = {"healthy": "green", "unhealthy": "red"}.get(vh.health.state.value, "yellow")
        out.append(f"{vh.vip}: ", style="bold")
        out.append(printable(health_text(vh.health), 400), style=colour)
    return out

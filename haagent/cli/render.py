"""Rich tables for the read-only commands: one place for columns and colours."""

from __future__ import annotations

import json
import sys
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from haagent.cli.picture import MemberRow, Picture, VipRow, ago, health_text
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
    for name in ("VIP", "address", "interface", "holder", "since", "epoch", "standby", "reason"):
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
            cell(reason),
            style=vip_style(v),
        )
    return table


def members_table(p: Picture, now: float) -> Table:
    table = Table(title=f"cluster {p.cluster} at revision {p.revision}", title_justify="left")
    for name in ("node", "address", "version", "uptime", "config", "draining", "health"):
        table.add_column(name, overflow="fold")
    for m in p.members:
        table.add_row(
            cell(m.node),
            cell(m.address or "-"),
            cell(m.version),
            cell(ago(m.started, now)),
            cell(m.config_digest),
            cell("yes" if m.draining else "no"),
            _health_cell(m),
            style="yellow" if m.draining else "",
        )
    return table


def _health_cell(m: MemberRow) -> Text:
    out = Text()
    for i, vh in enumerate(m.health):
        if i:
            out.append("\n")
        colour = {"healthy": "green", "unhealthy": "red"}.get(vh.health.state.value, "yellow")
        out.append(f"{vh.vip}: ", style="bold")
        out.append(printable(health_text(vh.health), 400), style=colour)
    return out

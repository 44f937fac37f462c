"""Fast failover's targets (issue 16), judged from the summary rows: reported, never asserted.

Each target is judged per system configuration (its ``name``) over the rows of its modes,
both families. A client-gap target is met when the p95 (nearest rank) of every family is
within the limit *and* every trial went the way the mode expects (a trial with no failover
has no gap worth the name). "Stays" is met when the VIP stayed in every trial of every
"stay" mode, or moved break-before-make — no two holders, no two answering — with a gap p95
no larger than the same configuration's graceful handover (SIGTERM). "Double holders" counts
the trials with two hosts holding the VIP at once over every mode.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from rich.table import Table


@dataclass(frozen=True)
class Target:
    text: str
    modes: tuple[str, ...]  # () = every mode
    kind: str  # "gap": gap p95 <= limit; "stays"; "double_holders"
    limit: float = 0.0


STAY_MODES = ("peers-cut", "peers-cut-out", "standby-deaf")
TARGETS = (
    Target("host death (sigkill+cut): client gap p95 ≤ 200 ms", ("sigkill+cut",), "gap", 200),
    Target("link cut (cut): client gap p95 ≤ 200 ms", ("cut",), "gap", 200),
    Target(
        "holder cut from etcd only (etcd-partition): gap p95 ≤ 500 ms",
        ("etcd-partition",),
        "gap",
        500,
    ),
    Target("agent frozen (sigstop): client gap p95 ≤ 300 ms", ("sigstop",), "gap", 300),
    Target("graceful stop (sigterm): client gap p95 ≤ 20 ms", ("sigterm",), "gap", 20),
    Target("agent killed (sigkill): client gap p95 ≤ 20 ms", ("sigkill",), "gap", 20),
    Target("VIP stays (peers-cut, peers-cut-out, standby-deaf)", STAY_MODES, "stays"),
    Target("zero double holders, every mode", (), "double_holders"),
)


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.0f}"


def _gap(t: Target, rows: Sequence[dict[str, Any]]) -> tuple[bool, str]:
    p95s = [r["gap_p95_ms"] for r in rows]
    censored = any(r["gap_censored"] for r in rows)
    short = sum(r["trials"] - r["as_expected"] for r in rows)
    worst = max((p for p in p95s if p is not None), default=None)
    met = worst is not None and None not in p95s and worst <= t.limit and not short
    text = " / ".join(
        f"{r['family']} {'>' if r['gap_censored'] else ''}{_ms(r['gap_p95_ms'])}" for r in rows
    )
    if short:
        text += f"; {short} trial(s) without failover"
    elif censored:
        text += " (outage still open)"
    doubled = sum(r["double_holder_trials"] for r in rows)
    if doubled:  # a small gap, because the old holder kept answering: said here too
        text += f"; {doubled} trial(s) with two holders"
    return met, text


def _stays(rows: Sequence[dict[str, Any]], graceful_p95: float | None) -> tuple[bool, str]:
    total = sum(r["trials"] for r in rows)
    moved_rows = [r for r in rows if r["stayed"] < r["trials"]]
    if not moved_rows:
        return True, f"stayed in all {total} trials"
    moved = sum(r["trials"] - r["stayed"] for r in moved_rows)
    dirty = sum(r["double_holder_trials"] for r in moved_rows)
    answering = sum(r["double_answer_trials"] for r in moved_rows)
    worst = [r["gap_p95_ms"] for r in moved_rows]
    clean = (
        not dirty
        and not answering
        and graceful_p95 is not None
        and None not in worst
        and max(worst) <= graceful_p95
    )
    modes = ", ".join(dict.fromkeys(r["mode"] for r in moved_rows))
    text = f"moved in {moved}/{total} trials ({modes})"
    if clean:
        text += ", break-before-make within the graceful gap"
    else:
        text += f": {dirty} with two holders, {answering} with two answering"
    return clean, text


def _double_holders(rows: Sequence[dict[str, Any]]) -> tuple[bool, str]:
    bad = [r for r in rows if r["double_holder_trials"]]
    if not bad:
        return True, f"0 in {len({r['mode'] for r in rows})} modes"
    modes = sorted({r["mode"] for r in bad})
    trials = sum(r["double_holder_trials"] for r in bad)
    return False, f"{trials} trial(s): {', '.join(modes)}"


def evaluate_targets(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One entry per target and system configuration: ``met`` (True, False, or None when
    none of its modes ran) and ``measured`` (what decided it)."""
    names = list(dict.fromkeys(r.get("name", r["system"]) for r in rows))
    out = []
    for t in TARGETS:
        for name in names:
            mine = [r for r in rows if r.get("name", r["system"]) == name]
            sel = [r for r in mine if not t.modes or r["mode"] in t.modes]
            met: bool | None
            if not sel:
                met, text = None, "not run"
            elif t.kind == "gap":
                met, text = _gap(t, sel)
            elif t.kind == "stays":
                graceful = [r["gap_p95_ms"] for r in mine if r["mode"] == "sigterm"]
                limit = max((g for g in graceful if g is not None), default=None)
                met, text = _stays(sel, limit)
            else:
                met, text = _double_holders(sel)
            out.append({"target": t.text, "name": name, "met": met, "measured": text})
    return out


def _verdict(met: bool | None) -> str:
    return {True: "yes", False: "no", None: "-"}[met]


def _grid(results: Sequence[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    names = list(dict.fromkeys(r["name"] for r in results))
    by = {(r["target"], r["name"]): r for r in results}
    lines = []
    for t in dict.fromkeys(r["target"] for r in results):
        cells = [t]
        for n in names:
            r = by.get((t, n))
            cells.append("-" if r is None else f"{_verdict(r['met'])}: {r['measured']}")
        lines.append(cells)
    return names, lines


def targets_table(results: Sequence[dict[str, Any]]) -> Table:
    names, lines = _grid(results)
    table = Table(title="targets (reported, not asserted; p95 = nearest rank, both families)")
    table.add_column("target")
    for n in names:
        table.add_column(n)
    for cells in lines:
        table.add_row(*cells)
    return table


def targets_markdown(results: Sequence[dict[str, Any]]) -> str:
    if not results:
        return ""
    names, lines = _grid(results)
    head = "| target | " + " | ".join(names) + " |\n|---|" + "---|" * len(names) + "\n"
    bold = [
        [c if i == 0 or not c.startswith("no") else f"**{c}**" for i, c in enumerate(ln)]
        for ln in lines
    ]
    return head + "\n".join("| " + " | ".join(ln) + " |" for ln in bold) + "\n"

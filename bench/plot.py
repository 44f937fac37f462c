"""One failover per system, as the client saw it: which host answered each probe; and the
host-death timeline of haagent against keepalived.

``python -m bench.plot bench-results/bench-<stamp>.json out.png`` redraws a picture from a
saved run. matplotlib is optional (``pip install -e '.[bench]'``); without it :func:`plot`
says so and returns False.

The grid: a row per system configuration (by name: "haagent fast", "keepalived 0.1s", …), a
column per mode, the median trial (by client gap) of each, IPv4. Below it, the host-death
timeline (mode ``sigkill+cut``, IPv4, median trial): from the kill, the last answer the client
got from the old holder, when another host said it noticed (its log; keepalived logs nothing
finer than seconds, so for it detection is the bind: VRRP binds as it enters MASTER), the new
holder's bind (kernel address events) and the client's first answer from it; the other
trials' marks are drawn faintly around it.
"""

from __future__ import annotations

import importlib
import json
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

# Rows (by name) and columns (mode) of the grid, IPv4; absent ones are left out.
ROWS = (
    "haagent fast",
    "haagent lease",
    "haagent",
    "keepalived 1s",
    "keepalived 0.1s",
)
COLUMNS = ("sigterm", "sigkill", "sigkill+cut", "peers-cut-out")
FAMILY = 4
LOST = "no answer"
# The host-death timeline: the first of each present, haagent above keepalived.
TIMELINE_MODE = "sigkill+cut"
TIMELINE_SYSTEMS = (
    ("haagent fast", "haagent lease", "haagent"),
    ("keepalived 0.1s", "keepalived 1s"),
)
# Runs from before names existed: (system, config) -> name.
LEGACY = {
    ("haagent", "ttl 3s margin 1s"): "haagent",
    ("keepalived", "advert_int 1s"): "keepalived 1s",
    ("keepalived", "advert_int 0.1s"): "keepalived 0.1s",
}
MARKS = (  # key, label, marker, colour
    ("last_old", "last answer from old holder", "o", "#7f8c8d"),
    ("detected", "detection", "D", "#8e44ad"),
    ("bound", "new holder binds", "s", "#d35400"),
    ("first_new", "first answer from new holder", "^", "#27ae60"),
)


def trial_name(t: dict[str, Any]) -> str:
    name = t.get("name")
    if name:
        return str(name)
    return LEGACY.get((t["system"], t["config"]), f"{t['system']} {t['config']}")


def representative(trials: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """The trial whose client gap is the median one (the lower median for an even count)."""
    scored = [t for t in trials if t["result"]["gap_ms"] is not None]
    if not scored:
        return trials[0] if trials else None
    gaps = sorted(t["result"]["gap_ms"] for t in scored)
    median = statistics.median_low(gaps)
    return next(t for t in scored if t["result"]["gap_ms"] == median)


def timeline_marks(t: dict[str, Any]) -> dict[str, float | None]:
    """ms since the failure of each mark of the host-death timeline (None: not seen)."""
    first_new = t["result"]["to_new_ms"]
    old = t["target"]
    answers = [
        ms + (rtt or 0.0)
        for ms, rtt, by in t["probes"]
        if by == old and (first_new is None or ms + (rtt or 0.0) <= first_new)
    ]
    bound = t.get("bound_ms")
    detected = t.get("detected_ms")
    return {
        "last_old": max(answers, default=None),
        "detected": detected if detected is not None else bound,
        "bound": bound,
        "first_new": first_new,
    }


def _select(trials: Sequence[dict[str, Any]], name: str, mode: str) -> list[dict[str, Any]]:
    return [
        t for t in trials if trial_name(t) == name and t["mode"] == mode and t["family"] == FAMILY
    ]


def timeline_rows(trials: Sequence[dict[str, Any]]) -> list[tuple[str, list[dict[str, Any]]]]:
    """(name, trials) of the systems on the host-death timeline that ran it."""
    out = []
    for prefs in TIMELINE_SYSTEMS:
        for name in prefs:
            chosen = _select(trials, name, TIMELINE_MODE)
            if chosen:
                out.append((name, chosen))
                break
    return out


def draw_timeline(ax: Any, trials: Sequence[dict[str, Any]]) -> bool:
    rows = timeline_rows(trials)
    if not rows:
        ax.set_axis_off()
        return False
    right = 0.0
    # The marks of one row sit a little apart vertically: detection and bind coincide for
    # keepalived, bind and first answer nearly so for everybody.
    offsets = {key: 0.18 * (i - 1.5) for i, (key, *_rest) in enumerate(MARKS)}
    for y, (_name, same) in enumerate(reversed(rows)):
        median = representative(same)
        assert median is not None
        for t in same:  # every trial, faintly
            m = timeline_marks(t)
            for key, _label, marker, colour in MARKS:
                if m[key] is not None:
                    ax.scatter(
                        [m[key]], [y + offsets[key]], marker=marker, s=14, color=colour, alpha=0.25
                    )
        m = timeline_marks(median)
        if m["last_old"] is not None and m["first_new"] is not None:
            ax.plot(
                [m["last_old"], m["first_new"]], [y, y], color="#c0392b", linewidth=7, alpha=0.3
            )
        texts = []
        for key, label, marker, colour in MARKS:
            v = m[key]
            short = label
            if key == "detected" and median.get("detected_ms") is None:
                short += " (= bind)"
            texts.append(f"{short} {'-' if v is None else f'{v:.0f}'}")
            if v is None:
                continue
            ax.scatter([v], [y + offsets[key]], marker=marker, s=55, color=colour, zorder=3)
            right = max(right, v)
        ax.text(
            0.01,
            y + 0.45,
            " · ".join(texts) + " ms",
            transform=ax.get_yaxis_transform(),  # x: axes fraction, y: data
            ha="left",
            va="center",
            fontsize=7.5,
        )
    for _key, label, marker, colour in MARKS:
        ax.scatter([], [], marker=marker, color=colour, label=label)
    ax.legend(loc="lower right", fontsize=7, ncol=4, frameon=False)
    ax.axvline(0, color="black", linewidth=0.8, linestyle="--")
    ax.set_yticks(range(len(rows)), [n for n, _ in reversed(rows)], fontsize=9)
    ax.set_ylim(-0.9, len(rows) - 0.05)
    span = max(right, 100.0)
    ax.set_xlim(-0.05 * span, 1.08 * span)
    ax.grid(axis="x", alpha=0.3)
    ax.set_xlabel(
        "ms since the kill (SIGKILL of the holder's daemon, then its link cut)", fontsize=9
    )
    ax.set_title(
        "Host death (sigkill+cut), IPv4: the median trial by client gap (faint: the others)\n"
        "red bar: the client's outage; keepalived logs whole seconds only: its detection is "
        "its bind",
        fontsize=9,
    )
    return True


def _grid_axis(ax: Any, same: Sequence[dict[str, Any]], label: str) -> dict[str, Any] | None:
    hosts = ["h1", "h2", "h3", LOST]
    t = representative(same)
    ax.set_yticks(range(len(hosts)), hosts, fontsize=8)
    ax.set_ylim(-0.6, len(hosts) - 0.4)
    ax.grid(axis="x", alpha=0.3)
    ax.tick_params(axis="x", labelsize=8)
    if t is None:
        ax.set_title(f"{label}: not run", fontsize=9)
        return None
    xs = [p[0] for p in t["probes"]]
    ys = [hosts.index(p[2]) if p[2] in hosts else len(hosts) - 1 for p in t["probes"]]
    colours = ["#c0392b" if p[2] is None else "#2471a3" for p in t["probes"]]
    ax.scatter(xs, ys, s=4, c=colours, marker="|", linewidths=0.8)
    ax.axvline(0, color="black", linewidth=0.8, linestyle="--")
    r = t["result"]
    for t0, t1, _hosts in r["double_holder"]:
        # Two hosts had the address bound: shaded (clipped to the trial's window).
        lo, hi = (t0 - t["t_fail"]) * 1000.0, (t1 - t["t_fail"]) * 1000.0
        ax.axvspan(lo, hi, color="#f5b041", alpha=0.35, linewidth=0)
    gap = "-" if r["gap_ms"] is None else f"{r['gap_ms']:.0f} ms"
    if r.get("expect") == "stay":
        new = "stayed" if r["to_new_ms"] is None and r.get("moved_ms") is None else "moved"
    else:
        new = "new holder " + ("none" if r["to_new_ms"] is None else f"{r['to_new_ms']:.0f} ms")
    flags = ", 2 holders" if r["double_holder"] else ""
    flags += ", 2 answering" if r["double_answer"] else ""
    ax.set_title(f"{label}\ngap {gap}, {new}{flags}", fontsize=8.5)
    return t


def plot(report: dict[str, Any], out: Path) -> bool:
    try:
        matplotlib = importlib.import_module("matplotlib")
        matplotlib.use("Agg")
        plt = importlib.import_module("matplotlib.pyplot")
    except ImportError:
        print("matplotlib is not installed: no picture (pip install -e '.[bench]')")
        return False
    trials: list[dict[str, Any]] = report["trials"]
    rows = [r for r in ROWS if any(trial_name(t) == r for t in trials)]
    columns = [c for c in COLUMNS if any(t["mode"] == c for t in trials)]
    if not rows or not columns:
        print("no trials of the pictured systems and modes: no picture")
        return False
    timeline = bool(timeline_rows(trials))
    extra = 1 if timeline else 0
    fig = plt.figure(figsize=(4.6 * len(columns) + 1, 1.9 * len(rows) + 2.6 * extra + 0.9))
    grid = fig.add_gridspec(
        len(rows) + extra, len(columns), height_ratios=[1.0] * len(rows) + [1.35] * extra
    )
    for j, mode in enumerate(columns):
        picked = []
        axes = []
        for i, name in enumerate(rows):
            ax = fig.add_subplot(grid[i, j])
            axes.append(ax)
            picked.append(_grid_axis(ax, _select(trials, name, mode), f"{name} - {mode}"))
        ends = [max(p[0] for p in t["probes"]) for t in picked if t is not None and t["probes"]]
        for ax in axes:
            ax.set_xlim(-300, max(ends, default=1000) + 50)
        axes[-1].set_xlabel("ms since the failure (dashed line)", fontsize=9)
    if timeline:
        draw_timeline(fig.add_subplot(grid[len(rows), :]), trials)
    fig.suptitle(
        "Which host answered the client's probes (IPv4, one probe every 5 ms; red: no answer;"
        " orange: two hosts had the VIP bound)\nthe median trial of each",
        fontsize=10,
    )
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=80)
    plt.close(fig)
    return True


def plot_timeline(report: dict[str, Any], out: Path) -> bool:
    """The host-death timeline alone (``bench-<stamp>-host-death.png``)."""
    try:
        matplotlib = importlib.import_module("matplotlib")
        matplotlib.use("Agg")
        plt = importlib.import_module("matplotlib.pyplot")
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(12, 3.2))
    if not draw_timeline(ax, report["trials"]):
        plt.close(fig)
        return False
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=80)
    plt.close(fig)
    return True


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 2:
        print("usage: python -m bench.plot RESULTS.json OUT.png", file=sys.stderr)
        return 2
    report = json.loads(Path(args[0]).read_text())
    return 0 if plot(report, Path(args[1])) else 1


if __name__ == "__main__":
    raise SystemExit(main())

"""One failover per system, as the client saw it: which host answered each probe.

``python -m bench.plot bench-results/bench-<stamp>.json out.png`` redraws a picture from a
saved run. matplotlib is optional (``pip install -e '.[bench]'``); without it :func:`plot`
says so and returns False.
"""

from __future__ import annotations

import importlib
import json
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

# Rows (system, config) and columns (mode) of the picture, IPv4.
ROWS = (
    ("haagent", "ttl 3s margin 1s"),
    ("keepalived", "advert_int 1s"),
    ("keepalived", "advert_int 0.1s"),
)
COLUMNS = ("sigterm", "sigkill", "sigkill+cut")
FAMILY = 4
LOST = "no answer"


def representative(trials: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """The trial whose client gap is the median one (the lower median for an even count)."""
    scored = [t for t in trials if t["result"]["gap_ms"] is not None]
    if not scored:
        return trials[0] if trials else None
    gaps = sorted(t["result"]["gap_ms"] for t in scored)
    median = statistics.median_low(gaps)
    return next(t for t in scored if t["result"]["gap_ms"] == median)


def plot(report: dict[str, Any], out: Path) -> bool:
    try:
        matplotlib = importlib.import_module("matplotlib")
        matplotlib.use("Agg")
        plt = importlib.import_module("matplotlib.pyplot")
    except ImportError:
        print("matplotlib is not installed: no picture (pip install -e '.[bench]')")
        return False
    trials: list[dict[str, Any]] = report["trials"]
    rows = [r for r in ROWS if any((t["system"], t["config"]) == r for t in trials)]
    if not rows:
        print("no trials of the pictured systems: no picture")
        return False
    fig, axes = plt.subplots(
        len(rows), len(COLUMNS), figsize=(15, 1.9 * len(rows) + 0.9), squeeze=False
    )
    hosts = ["h1", "h2", "h3", LOST]
    for j, mode in enumerate(COLUMNS):
        picked = []
        for i, (system, config) in enumerate(rows):
            ax = axes[i][j]
            same = [
                t
                for t in trials
                if (t["system"], t["config"], t["mode"], t["family"])
                == (system, config, mode, FAMILY)
            ]
            t = representative(same)
            picked.append(t)
            ax.set_yticks(range(len(hosts)), hosts, fontsize=8)
            ax.set_ylim(-0.6, len(hosts) - 0.4)
            ax.grid(axis="x", alpha=0.3)
            ax.tick_params(axis="x", labelsize=8)
            label = f"{system} {config} - {mode}"
            if t is None:
                ax.set_title(f"{label}: not run", fontsize=9)
                continue
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
            new = "none" if r["to_new_ms"] is None else f"{r['to_new_ms']:.0f} ms"
            flags = ", 2 holders" if r["double_holder"] else ""
            flags += ", 2 answering" if r["double_answer"] else ""
            ax.set_title(f"{label}\ngap {gap}, new holder {new}{flags}", fontsize=8.5)
        ends = [max(p[0] for p in t["probes"]) for t in picked if t is not None and t["probes"]]
        for i in range(len(rows)):
            axes[i][j].set_xlim(-300, max(ends, default=1000) + 50)
        axes[len(rows) - 1][j].set_xlabel("ms since the failure (dashed line)", fontsize=9)
    fig.suptitle(
        "Which host answered the client's probes (IPv4, one probe every 5 ms; red: no answer;"
        " orange: two hosts had the VIP bound) - the median trial of each",
        fontsize=10,
    )
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

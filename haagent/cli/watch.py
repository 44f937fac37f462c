"""``haagent watch``: every change to a cluster as it happens, for people or (``--json``) tools.

One range read, then a watch from its revision + 1 (the store's watch thread, as the agent
uses it). Changes are applied one revision at a time and each revision is reported as the
difference between the views before and after it (:func:`haagent.cli.changes.diff`).

Nothing is missed silently: when the watch breaks (etcd restarted, connection lost) the store
resumes it from the last revision + 1, and this command re-reads the whole prefix as well and
reports whatever differs as ``re-read after reconnect``; when that revision was compacted the
store re-reads and this reports ``re-read after compaction``. Changes the re-read already
covers (revision <= the read's) are skipped when the resumed watch delivers them again.
"""

from __future__ import annotations

import argparse
import contextlib
import queue
import sys
import time
from typing import Any

from haagent.cli import connect as conn
from haagent.cli.changes import WatchEvent, diff
from haagent.cli.picture import build
from haagent.cli.render import console, print_json
from haagent.cluster.view import (
    Change,
    ClusterView,
    DrainChange,
    HolderChange,
    MemberChange,
    ReleasedChange,
    RequestChange,
)
from haagent.logs import printable

EXAMPLES = """
haagent watch -c /etc/haagent/haagent.yaml
haagent watch --cluster db --json | jq -c 'select(.event == "acquired")'
haagent watch --cluster db --count 2 --timeout 60   # the next two changes, within a minute
"""

# Every change the store's watch reports; anything else in the inbox is a notice.
CHANGES = (HolderChange, MemberChange, RequestChange, ReleasedChange, DrainChange)


def add_parser(sub: Any) -> None:
    p = conn.subcommand(
        sub,
        "watch",
        help="a live stream of changes: acquired, released, health, members, drains, requests",
        description=(
            "Print every change to the cluster as it happens: VIPs acquired (with the "
            "reason) and released (with the reason, where etcd tells it), health flips, "
            "members joining and leaving, nodes drained and undrained (the operator's key, "
            "then the agent's own record), move requests set and removed. Survives etcd "
            "restarts and compactions: it resumes from the last revision, and re-reads "
            "everything and reports the differences when it cannot be sure it saw every "
            "change. --json "
            "prints one JSON object per line (event, revision, time, vip, node, reason, "
            "reread, ...). Ctrl-C stops it (exit 0).\n\n"
            "exit codes: 0 stopped (Ctrl-C, --count or --timeout reached), 2 etcd cannot be "
            "read at start or the cluster is unknown."
        ),
        examples=EXAMPLES,
    )
    p.add_argument("--json", action="store_true", help="JSON lines instead of text")
    p.add_argument("--count", type=int, metavar="N", help="exit 0 after N changes")
    p.add_argument(
        "--timeout", dest="duration", type=float, metavar="S", help="exit 0 after S seconds"
    )
    conn.add_connection_options(p)
    p.set_defaults(func=conn.run_guarded(cmd_watch))


class Printer:
    """Events and notices, as text lines (with colour on a terminal) or JSON lines."""

    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json
        self.console = console()

    def _stamp(self, t: float) -> str:
        ms = int(t * 1000) % 1000
        return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{ms:03d}Z"

    def event(self, ev: WatchEvent) -> None:
        now = time.time()
        if self.as_json:
            print_json(ev.to_json(now))
        else:
            colours = {"acquired": "green", "released": "red", "health": "yellow"}
            style = colours.get(ev.kind, "yellow" if ev.kind in ("drain", "draining") else "")
            mark = " (re-read)" if ev.reread else ""
            line = f"{self._stamp(now)} {printable(ev.text(), 400)}{mark} [rev {ev.revision}]"
            self.console.print(line, style=style, markup=False, highlight=False)
        sys.stdout.flush()

    def notice(self, kind: str, text: str, **fields: Any) -> None:
        now = time.time()
        if self.as_json:
            print_json({"event": kind, "time": now, "text": text, **fields})
        else:
            self.console.print(
                f"{self._stamp(now)} -- {text}", style="bold", markup=False, highlight=False
            )
        sys.stdout.flush()

    def start(self, view: ClusterView, cluster: str) -> None:
        picture = build(view, cluster)
        holders = {v.name: v.holder for v in picture.vips}
        if self.as_json:
            self.notice(
                "start",
                f"watching cluster {cluster} from revision {view.revision + 1}",
                cluster=cluster,
                revision=view.revision,
                holders=holders,
                members=[m.node for m in picture.members],
            )
            return
        held = ", ".join(f"{v} held by {h}" if h else f"{v} unheld" for v, h in holders.items())
        self.notice(
            "start",
            f"watching cluster {cluster} from revision {view.revision + 1}: "
            f"{held or 'no vips'}; members: {', '.join(m.node for m in picture.members) or '-'}",
        )


class Watcher:
    """The view, moved forward one revision at a time; every difference reported once."""

    def __init__(self, view: ClusterView, printer: Printer, limit: int | None = None) -> None:
        self.view = view
        self.printer = printer
        self.limit = limit  # --count: print no more than this many changes
        self.reported = 0  # change events printed

    @property
    def done(self) -> bool:
        return self.limit is not None and self.reported >= self.limit

    def _report(self, events: list[WatchEvent]) -> None:
        for ev in events:
            if self.done:
                return
            self.printer.event(ev)
            self.reported += 1

    def apply(self, changes: list[Change]) -> None:
        """Changes in watch order: grouped by revision, each group one diff."""
        group: list[Change] = []
        for ch in changes:
            if ch.revision <= self.view.revision:
                continue  # already in the view (a re-read covered it)
            if group and group[0].revision != ch.revision:
                self._step(group)
                group = []
            group.append(ch)
        if group:
            self._step(group)

    def _step(self, group: list[Change]) -> None:
        new = self.view.apply(group)
        events = diff(self.view, new)
        self.view = new
        self._report(events)

    def reload(self, fresh: ClusterView, cause: str) -> None:
        events = diff(self.view, fresh, reread=True)
        what = f"{len(events)} change(s) found" if events else "nothing missed"
        self.printer.notice(
            "reread",
            f"re-read after {cause} at revision {fresh.revision}: {what}",
            cause=cause,
            revision=fresh.revision,
            changes=len(events),
        )
        self.view = fresh if fresh.revision >= self.view.revision else self.view
        self._report(events)


def cmd_watch(args: argparse.Namespace) -> int:
    from haagent.store.errors import ETCD_ERRORS
    from haagent.store.events import ViewLoaded, WatchBroken, WatchResumed

    if args.count is not None and args.count < 1:
        raise conn.CliError("--count: must be at least 1")
    target, store = conn.connect(args)
    try:
        view = store.snapshot()
        if build(view, target.cluster).empty:
            raise conn.unknown_cluster(store, target.cluster)
        printer = Printer(args.json)
        printer.start(view, target.cluster)
        watcher = Watcher(view, printer, args.count)
        inbox: queue.Queue[Any] = queue.Queue()
        store.start_watch(view.revision + 1, inbox.put)
        end = None if args.duration is None else time.monotonic() + args.duration
        with contextlib.suppress(KeyboardInterrupt):
            while not watcher.done:
                wait = 0.5 if end is None else min(0.5, end - time.monotonic())
                if wait <= 0:
                    break
                try:
                    batch = [inbox.get(timeout=wait)]
                except queue.Empty:
                    continue
                with contextlib.suppress(queue.Empty):
                    while len(batch) < 10_000:
                        batch.append(inbox.get_nowait())
                pending: list[Change] = []
                for item in batch:
                    if isinstance(item, CHANGES):
                        pending.append(item)
                        continue
                    watcher.apply(pending)
                    pending = []
                    if isinstance(item, ViewLoaded):
                        watcher.reload(item.view, "compaction (the watch's revision is gone)")
                    elif isinstance(item, WatchBroken):
                        printer.notice(
                            "watch_lost",
                            f"etcd watch lost ({item.error}); resuming from the last revision",
                            error=item.error,
                        )
                    elif isinstance(item, WatchResumed):
                        printer.notice(
                            "watch_resumed",
                            f"watch resumed from revision {item.revision}",
                            revision=item.revision,
                        )
                        try:
                            fresh = store.snapshot()
                        except ETCD_ERRORS as exc:
                            why = conn.explain(exc, target)
                            printer.notice("reread_failed", f"re-read failed ({why})", error=why)
                        else:
                            watcher.reload(fresh, "reconnect")
                watcher.apply(pending)
    finally:
        with contextlib.suppress(Exception):
            store.close()
    return conn.EXIT_OK

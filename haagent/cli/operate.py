"""What the operator commands (move, drain, undrain) share: who asks, the options every one
of them takes, and ``--wait``: following the cluster until it is where the command wanted.
"""

from __future__ import annotations

import argparse
import contextlib
import getpass
import os
import queue
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from haagent.cli import connect as conn
from haagent.cluster.view import (
    ClusterView,
    DrainChange,
    HolderChange,
    MemberChange,
    ReleasedChange,
    RequestChange,
)

DEFAULT_WAIT = 10.0  # s: --wait without --timeout
MAX_WAIT = 3600.0  # s: --timeout above this is a typo, not a wish
MAX_TEXT = 255  # characters of "by" and --reason (the records keep no more: schema.Drain)

_CHANGES = (HolderChange, MemberChange, RequestChange, ReleasedChange, DrainChange)


def who() -> str:
    """``user@host`` for the ``by`` field of a request or drain: for the agents' logs and for
    ``status``; informational, not an identity (etcd's user is the identity)."""
    try:
        user = getpass.getuser()
    except (OSError, KeyError):  # no USER/LOGNAME and no passwd entry (a bare container)
        user = f"uid{os.getuid()}"
    return f"{user}@{socket.gethostname()}"[:MAX_TEXT]


def add_wait_options(p: argparse.ArgumentParser, until: str) -> None:
    p.add_argument("--wait", action="store_true", help=f"wait until {until}")
    p.add_argument(
        "--timeout",
        type=float,
        metavar="S",
        help=f"give up waiting after S seconds (default {DEFAULT_WAIT:g}; at most {MAX_WAIT:g})",
    )
    p.add_argument("--json", action="store_true", help="the outcome as one JSON object")


def wait_timeout(args: argparse.Namespace) -> float:
    t = DEFAULT_WAIT if args.timeout is None else float(args.timeout)
    if args.timeout is not None and not args.wait:
        raise conn.CliError("--timeout: only with --wait")
    if not 0 < t <= MAX_WAIT:  # NaN fails this too
        raise conn.CliError(f"--timeout: must be more than 0 and at most {MAX_WAIT:g} seconds")
    return t


@dataclass(frozen=True)
class Followed:
    view: ClusterView  # the last picture seen
    done: bool  # ``until`` held before the deadline
    stopped: str | None = None  # ``stop`` said why waiting is pointless


def follow(
    store: Any,
    view: ClusterView,
    until: Callable[[ClusterView], bool],
    deadline: float,
    stop: Callable[[ClusterView], str | None] | None = None,
    stop_from: int = 0,
) -> Followed:
    """Watch the prefix from ``view``'s revision + 1 until ``until(view)`` holds, ``stop``
    gives a reason (asked only once the view has reached revision ``stop_from``: the
    command's own write, made after ``view`` was read), or the monotonic ``deadline``
    passes. The store's watch thread resumes a broken watch from the last revision + 1;
    after a resume or a compaction the prefix is read again (docs/keys.md, "Rebuilding the
    picture"), so no change goes unseen."""
    from haagent.store.errors import ETCD_ERRORS
    from haagent.store.events import ViewLoaded, WatchResumed

    def verdict(v: ClusterView) -> Followed | None:
        if until(v):
            return Followed(v, True)
        why = stop(v) if stop is not None and v.revision >= stop_from else None
        return Followed(v, False, why) if why is not None else None

    if (first := verdict(view)) is not None:
        return first
    inbox: queue.Queue[Any] = queue.Queue()
    store.start_watch(view.revision + 1, inbox.put)
    try:
        while (left := deadline - time.monotonic()) > 0:
            try:
                batch = [inbox.get(timeout=min(left, 0.5))]
            except queue.Empty:
                continue
            with contextlib.suppress(queue.Empty):
                while len(batch) < 10_000:
                    batch.append(inbox.get_nowait())
            pending = []
            for item in batch:
                if isinstance(item, _CHANGES):
                    # A re-read may already cover what a resumed watch delivers again.
                    if item.revision > view.revision:
                        pending.append(item)
                    continue
                view = view.apply(pending)
                pending = []
                if isinstance(item, ViewLoaded):
                    view = item.view
                elif isinstance(item, WatchResumed):
                    with contextlib.suppress(*ETCD_ERRORS):  # the next resume tries again
                        view = store.snapshot()
            view = view.apply(pending)
            if (out := verdict(view)) is not None:
                return out
        return Followed(view, False)
    finally:
        store.stop_watch()

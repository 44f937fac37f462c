"""Logging set-up shared by every haagent process (agent, fence, CLI)."""

from __future__ import annotations

import logging
import sys
import time


class _UTCFormatter(logging.Formatter):
    """ISO-8601 UTC timestamps with milliseconds: log lines from several hosts sort together."""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        t = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        return f"{t}.{int(record.msecs):03d}Z"


def setup_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_UTCFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # gRPC and pyroute2 are chatty at INFO; their warnings still show.
    for noisy in ("pyroute2", "grpc"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))


def printable(text: str, limit: int = 200) -> str:
    """``text`` safe for one log line: control characters escaped, at most ``limit`` chars.

    For anything read from outside (key names and values from etcd): a newline in a key name
    must not forge a line in every agent's log.
    """
    out = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text[:limit])
    return out + ("…" if len(text) > limit else "")

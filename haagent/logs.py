"""Logging set-up shared by every haagent process (agent, fence, CLI)."""

from __future__ import annotations

import json
import logging
import sys
import time


class _UTCFormatter(logging.Formatter):
    """ISO-8601 UTC timestamps with milliseconds: log lines from several hosts sort together."""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        t = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        return f"{t}.{int(record.msecs):03d}Z"


# Fields a decision's log call passes in ``extra`` (see :func:`fields`); JSON lines carry them.
DECISION_FIELDS = ("event", "vip", "reason")
LOG_FORMATS = ("text", "json")


def fields(event: str, vip: str | None = None, reason: str | None = None) -> dict[str, str]:
    """``extra=`` for a decision's log line: what happened, to which VIP, and why."""
    out = {"event": event}
    if vip is not None:
        out["vip"] = vip
    if reason is not None:
        out["reason"] = reason
    return out


class _JSONFormatter(_UTCFormatter):
    """One JSON object per line: ts, level, logger, node, event, vip, reason, msg.

    ``event`` is the decision's name ("acquired", "released", …) or "log" for any other line;
    ``vip`` and ``reason`` are null where a line has none. json.dumps escapes every control
    character, so no value (a key name from etcd, say) can forge a line.
    """

    def __init__(self, node: str | None) -> None:
        super().__init__()
        self.node = node

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, object] = {
            "ts": self.formatTime(record),
            "level": record.levelname,
            "logger": record.name,
            "node": self.node,
            "event": getattr(record, "event", "log"),
            "vip": getattr(record, "vip", None),
            "reason": getattr(record, "reason", None),
            "msg": record.getMessage(),
        }
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


def setup_logging(level: str, log_format: str = "text", *, node: str | None = None) -> None:
    """Log to stderr: plain lines, or JSON lines (``log_format`` "json") naming ``node``."""
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(_JSONFormatter(node))
    else:
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

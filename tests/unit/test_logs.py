"""Log lines: JSON lines carry the decision's fields, and nothing from outside forges a line."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import pytest

from haagent.logs import fields, setup_logging


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    yield
    logging.getLogger().handlers.clear()


def test_json_lines_name_event_vip_node_and_reason(capsys: pytest.CaptureFixture[str]) -> None:
    setup_logging("info", "json", node="h1")
    log = logging.getLogger("haagent.agent")
    log.info("acquired vip %s: %s", "db", "key absent", extra=fields("acquired", "db", "why"))
    log.debug("keepalive")  # below the level
    log.warning("plain line with a\nnewline from a key name")
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2, lines
    first, second = (json.loads(line) for line in lines)
    assert first["event"] == "acquired" and first["vip"] == "db" and first["reason"] == "why"
    assert first["node"] == "h1" and first["level"] == "INFO" and first["ts"].endswith("Z")
    assert first["msg"] == "acquired vip db: key absent"
    assert second["event"] == "log" and second["vip"] is None
    assert second["msg"] == "plain line with a\nnewline from a key name"  # escaped in JSON


def test_text_lines_stay_plain(capsys: pytest.CaptureFixture[str]) -> None:
    setup_logging("info")
    logging.getLogger("haagent.agent").info("x", extra=fields("acquired", "db"))
    (line,) = capsys.readouterr().err.splitlines()
    assert line.endswith(" INFO haagent.agent: x")

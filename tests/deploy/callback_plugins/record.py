"""Ansible callback: every task result and the recap, as JSON, to $HAAGENT_PLAY_RECORD.

ansible-core 2.19 ships no JSON callback (that one is in ansible.posix); the tests read this
file instead of parsing the human output. Runs next to the default stdout callback.
"""

from __future__ import annotations

import json
import os
from typing import Any

from ansible.plugins.callback import CallbackBase  # type: ignore[import-untyped]

DOCUMENTATION = """
    name: record
    type: aggregate
    short_description: write task results and stats as JSON (tests only)
    description:
        - Writes the results and the stats as JSON to the file named by HAAGENT_PLAY_RECORD.
    requirements:
        - enable in configuration
"""


class CallbackModule(CallbackBase):  # type: ignore[misc]
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "record"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.results: list[dict[str, Any]] = []

    def _add(self, result: Any, status: str) -> None:
        raw = dict(getattr(result, "_result", {}) or {})
        self.results.append(
            {
                "host": result._host.get_name(),
                "task": result._task.get_name(),
                "status": status,
                "changed": bool(raw.get("changed", False)),
                "result": json.loads(json.dumps(raw, default=str)),
            }
        )

    def v2_runner_on_ok(self, result: Any) -> None:
        self._add(result, "ok")

    def v2_runner_on_failed(self, result: Any, ignore_errors: bool = False) -> None:
        self._add(result, "failed")

    def v2_runner_on_skipped(self, result: Any) -> None:
        self._add(result, "skipped")

    def v2_runner_on_unreachable(self, result: Any) -> None:
        self._add(result, "unreachable")

    def v2_playbook_on_stats(self, stats: Any) -> None:
        summary = {host: stats.summarize(host) for host in sorted(stats.processed)}
        path = os.environ.get("HAAGENT_PLAY_RECORD")
        if path:
            with open(path, "w") as f:
                json.dump({"results": self.results, "stats": summary}, f, indent=1)

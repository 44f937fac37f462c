"""The shipped Prometheus alert rules are valid, pass their own unit tests, and name only
metrics the agent exports (promtool from Debian's prometheus package, which make installs)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from haagent.metrics import Metrics

RULES = Path(__file__).resolve().parents[2] / "packaging" / "prometheus"


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    tool = shutil.which("promtool")
    if tool is None:
        pytest.fail("promtool not found: install Debian's prometheus package (make deps does)")
    return subprocess.run(
        [tool, *args], cwd=RULES, capture_output=True, text=True, timeout=60, check=False
    )


def test_rules_check_and_their_unit_tests_pass() -> None:
    for args in (
        ("check", "rules", "haagent-alerts.yml"),
        ("test", "rules", "haagent-alerts.test.yml"),
    ):
        done = promtool(*args)
        assert done.returncode == 0, done.stdout + done.stderr


def test_rules_name_only_exported_metrics() -> None:
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}
    exported = {
        family.name + suffix
        for family in Metrics().registry.collect()
        for suffix in suffixes[family.type]
    }
    used = set(re.findall(r"\bhaagent_[a-z_]+", (RULES / "haagent-alerts.yml").read_text()))
    assert used and used <= exported, used - exported

"""The CLI as an operator meets it: real processes, real files, exit codes and messages."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

GOOD = """\
cluster: db
node: pg1
etcd: {endpoints: ["http://198.51.100.2:2379"]}
vips:
  - {name: db, address: 198.51.100.200, interface: lo}
"""

BAD = {
    "yaml syntax": ("cluster: [db\n", "line 2, column 1: YAML error"),
    "unknown key": (GOOD.replace("cluster:", "clustr:"), "did you mean 'cluster'"),
    "bad address": (GOOD.replace("198.51.100.200", "198.51.100.300"), "vips[0].address"),
    "duplicate vip": (
        GOOD + "  - {name: db, address: 198.51.100.201, interface: lo}\n",
        "vips[1].name",
    ),
    "missing interface": (GOOD.replace("interface: lo", "interface: hxnope0"), "hxnope0"),
    "timeout vs margin": (GOOD + "lease: {ttl: 5, margin: 0.5}\n", "etcd.timeout"),
}


def haagent(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "haagent", *args], capture_output=True, text=True, timeout=60
    )


@pytest.mark.parametrize("case", sorted(BAD))
@pytest.mark.parametrize("command", ["check-config", "run"])
def test_bad_config_exits_1_with_the_reason_and_no_traceback(
    tmp_path: Path, case: str, command: str
):
    text, expected = BAD[case]
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(text)
    argv = ["check-config", str(cfg)] if command == "check-config" else ["run", "-c", str(cfg)]
    r = haagent(*argv)
    assert r.returncode == 1, r
    assert "Traceback" not in r.stderr + r.stdout
    assert expected in r.stderr, r.stderr
    if case != "missing interface":  # that one is about the host, not the file's text
        assert str(cfg) in r.stderr


def test_check_config_ok(tmp_path: Path):
    cfg = tmp_path / "good.yaml"
    cfg.write_text(GOOD)
    r = haagent("check-config", str(cfg))
    assert r.returncode == 0, r.stderr
    assert "OK" in r.stdout


def test_check_config_json(tmp_path: Path):
    cfg = tmp_path / "good.yaml"
    cfg.write_text(GOOD.replace("interface: lo", "interface: hxnope0"))
    r = haagent("check-config", "--json", str(cfg))
    assert r.returncode == 1
    assert '"ok": false' in r.stdout and "hxnope0" in r.stdout


def test_missing_file(tmp_path: Path):
    r = haagent("check-config", str(tmp_path / "absent.yaml"))
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert "absent.yaml" in r.stderr


def test_no_command_prints_help_and_exits_2():
    r = haagent()
    assert r.returncode == 2 and "usage: haagent" in r.stdout


def test_help_lists_commands():
    r = haagent("--help")
    assert r.returncode == 0
    for word in ("run", "check-config", "lab"):
        assert word in r.stdout

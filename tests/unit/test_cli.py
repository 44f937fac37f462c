"""The CLI as an operator meets it: real processes, real files, exit codes and messages."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

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


# --------------------------------------------------------------------------- hostile inputs


def check_json(capsys: pytest.CaptureFixture[str], path: Path) -> tuple[int, dict[str, Any]]:
    """Exit code and the one JSON object of check-config --json, run in this process."""
    from haagent.cli.main import main

    code = main(["check-config", "--json", str(path)])
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1, out
    data = json.loads(out[0])
    assert isinstance(data, dict) and set(data) == {"file", "ok", "errors", "digest"}
    return code, data


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("cluster: [db\n", "line 2, column 1: YAML error"),
        ("vips: " + "[" * 5000 + "\n", "nested more than 32 levels deep"),
        ("lease: {ttl: 1" + "0" * 1000 + "}\n" + GOOD.split("\n", 1)[1], "lease.ttl"),
        ("", "the file is empty"),
    ],
)
def test_check_config_json_is_one_object_even_when_the_file_does_not_parse(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, needle: str
):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(text)
    code, data = check_json(capsys, cfg)
    assert code == 1 and data["ok"] is False and data["digest"] is None and data["file"] == str(cfg)
    errors = data["errors"]
    assert isinstance(errors, list) and errors
    assert all(set(e) == {"file", "key", "reason"} and e["file"] == str(cfg) for e in errors)
    assert any(needle in f"{e['key']}: {e['reason']}" for e in errors), errors


def test_check_config_json_for_a_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    code, data = check_json(capsys, tmp_path / "absent.yaml")
    assert code == 1
    assert data["errors"] == [
        {
            "file": str(tmp_path / "absent.yaml"),
            "key": "",
            "reason": "cannot read: No such file or directory",
        }
    ]


@pytest.mark.parametrize("command", ["check-config", "run"])
def test_files_that_never_end_are_refused_at_once(tmp_path: Path, command: str):
    fifo = tmp_path / "cfg.fifo"
    os.mkfifo(fifo)  # nobody ever writes to it: a blocking open would wait forever
    for path, needle in (
        (fifo, "not a regular file but a FIFO (named pipe)"),
        (Path("/dev/zero"), "not a regular file but a character device"),
    ):
        argv = (
            ["check-config", str(path)] if command == "check-config" else ["run", "-c", str(path)]
        )
        r = haagent(*argv)
        assert r.returncode == 1 and r.stderr == f"error: {path}: {needle}\n", r


HOSTILE = {
    "lease: {ttl: 10000000000}\n": "lease.ttl: must be from 2 to 3600 seconds",
    "etcd: {username: u, password: p}\n": (
        "etcd.username: username and password need https:// endpoints and etcd.tls"
    ),
    "announce: {count: 1000000000, interval: 1.0e-9}\n": "announce.count: must be from 1 to 100",
    "checks: {c: {type: tcp, port: 1, interval: 1.0e+308}}\n": (
        "checks.c.interval: must be from 0.1 to 3600 seconds"
    ),
    "vips:\n  - {name: db, address: 198.51.100.200, interface: lo, hold_down: 1.0e+400}\n": (
        "vips[0].hold_down: expected a finite number, found inf"
    ),
}


@pytest.mark.parametrize("command", ["check-config", "run"])
def test_check_config_and_run_refuse_the_same_numbers(tmp_path: Path, command: str):
    """What the tester found: check-config said OK and run failed later, or both crashed."""
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("node: pg1\n" + "".join(HOSTILE))
    argv = ["check-config", str(cfg)] if command == "check-config" else ["run", "-c", str(cfg)]
    r = haagent(*argv)
    assert r.returncode == 1 and "Traceback" not in r.stderr + r.stdout
    for needle in HOSTILE.values():
        assert f"error: {cfg}: {needle}" in r.stderr, r.stderr


def test_the_example_passes_its_own_check_on_a_fresh_host(capsys: pytest.CaptureFixture[str]):
    """Only the interface (eth0) may be missing on some hosts; every program it runs exists."""
    example = Path(__file__).resolve().parents[2] / "config" / "haagent.example.yaml"
    code, data = check_json(capsys, example)
    errors = data["errors"]
    assert all(e["key"].endswith(".interface") for e in errors), errors
    assert code == (1 if errors else 0)


def test_lab_up_suggests_only_commands_that_exist(monkeypatch, capsys):
    """Every hint of `haagent lab up` starts a program that is there (no ping, no bare haagent)."""
    import argparse
    import shlex
    import shutil
    from types import SimpleNamespace

    import haagent.lab.cli as lab_cli
    from haagent.lab.topology import Lab

    def node(role: str, i: int) -> SimpleNamespace:
        return SimpleNamespace(
            role=role, netns=f"hxtest0-{role}", ipv4=f"198.51.100.{i}", ipv6=f"2001:db8::{i}"
        )

    class FakeLab:
        vip4 = staticmethod(Lab.vip4)
        vip6 = staticmethod(Lab.vip6)

        def __init__(self, *args: object, **kw: object) -> None:
            self.lab_id, self.workdir, self.switch_ns = "hxtest0", "/tmp/x", "hxtest0-sw"
            self.hosts = [node("h1", 11)]
            self.client = node("cl", 100)
            self.nodes = [*self.hosts, self.client]
            self.etcd_endpoints = ["http://198.51.100.2:2379"]

        def up(self) -> None:
            pass

        def start_responder(self, host: object) -> None:
            pass

    monkeypatch.setattr(lab_cli, "Lab", FakeLab)
    monkeypatch.setattr(lab_cli, "_need_root", lambda: None)
    args = argparse.Namespace(hosts=1, etcd_members=1, id=None, responders=True, json=False)
    assert lab_cli.cmd_up(args) == 0
    out = capsys.readouterr().out
    hints = [line.strip() for line in out.split("poke at it:", 1)[1].splitlines() if line.strip()]
    assert len(hints) == 7, hints
    for hint in hints:
        argv = shlex.split(hint, comments=True)
        if argv[:3] == ["ip", "netns", "exec"]:
            argv = argv[4:]
        if argv[0] == "env":
            argv = [a for a in argv[1:] if "=" not in a]
        assert argv[0] == sys.executable or shutil.which(argv[0]) in (
            f"/usr/bin/{argv[0]}",
            f"/bin/{argv[0]}",
        ), hint
        if argv[0] == sys.executable:
            assert argv[1:3] in (["-m", "haagent"], ["-m", "haagent.lab.probe"]), hint

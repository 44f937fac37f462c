"""docs/examples/watch_holders.py keeps a live VIP -> holder map through a real failover."""

from __future__ import annotations

import json
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from haagent.lab.topology import Lab
from haagent.lab.wait import wait_until
from tests.lab.conftest import Agents, remove_addresses, require

pytestmark = pytest.mark.lab

EXAMPLE = Path(__file__).resolve().parents[2] / "docs" / "examples" / "watch_holders.py"


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    require("ip", "etcd", "etcdctl", "nft")
    with Lab(hosts=2) as lab:
        yield lab


@pytest.fixture
def agents(lab: Lab) -> Iterator[Agents]:
    a = Agents(lab, f"{lab.lab_id}-x1", vips=[("web4", str(lab.vip4(3)))])
    try:
        yield a
    finally:
        a.stop_all()
        remove_addresses(lab, [lab.vip4(3)])


def maps(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.startswith("{")]


def test_example_watcher_follows_a_failover(lab: Lab, agents: Agents) -> None:
    agents.start_all()
    old = agents.wait_single_holder(lab.vip4(3))
    out = lab.workdir / "example-watcher.log"
    endpoint = lab.etcd_endpoints[0].removeprefix("http://")
    argv = [sys.executable, str(EXAMPLE), "--endpoint", endpoint, "--cluster", agents.cluster]
    proc = lab.popen(lab.client, argv, log=out)
    try:
        first = wait_until(lambda: maps(out), 15, what="the example's first read")[0]
        assert first["why"] == "read" and first["holders"] == {"web4": old}, first
        agents.signal(lab.host(old), signal.SIGTERM)  # hands the VIP over
        new = agents.wait_other_holder(lab.vip4(3), old, 5)
        last = wait_until(
            lambda: m[-1] if (m := maps(out)) and m[-1]["holders"].get("web4") == new else None,
            10,
            what="the example's map to name the new holder",
        )
        seen = [m["holders"].get("web4") for m in maps(out)]
        # old, then absent (the DELETE), then new: every step, in order.
        assert seen == [old, None, new], seen
        assert last["why"] == "watch" and last["revision"] > first["revision"]
    finally:
        Lab.stop(proc)
    assert "Traceback" not in out.read_text()

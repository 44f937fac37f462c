"""The metrics endpoint in the lab: scraped from the client namespace before and after a
failover, the holder's and the new holder's gauges and counters move as they should."""

from __future__ import annotations

import re
import signal
import subprocess
import sys

import pytest

from haagent.lab.topology import Lab, Node
from haagent.lab.wait import wait_until
from tests.lab.conftest import Agents

pytestmark = pytest.mark.lab

PORT = 9187
_SAMPLE = re.compile(r"^(?P<name>[a-z_]+)(?:\{(?P<labels>[^}]*)\})? (?P<value>\S+)$")


def scrape(lab: Lab, host: Node) -> dict[str, float]:
    """``name{labels}`` -> value, fetched over the lab network as Prometheus would."""
    url = f"http://{host.ipv4}:{PORT}/metrics"
    code = (
        f"import urllib.request; print(urllib.request.urlopen({url!r}, timeout=5).read().decode())"
    )
    out = lab.run(lab.client, [sys.executable, "-c", code], timeout=15).stdout
    samples: dict[str, float] = {}
    for line in out.splitlines():
        if (m := _SAMPLE.match(line)) is not None:
            key = m["name"] + (f"{{{m['labels']}}}" if m["labels"] else "")
            samples[key] = float(m["value"])
    return samples


def scrape_or_empty(lab: Lab, host: Node) -> dict[str, float]:
    try:
        return scrape(lab, host)
    except subprocess.CalledProcessError:
        return {}


def acquired(samples: dict[str, float], vip: str) -> float:
    """Acquisitions of ``vip``, whatever their cause."""
    return sum(
        v
        for k, v in samples.items()
        if k.startswith("haagent_vip_transitions_total{")
        and 'event="acquired"' in k
        and f'vip="{vip}"' in k
    )


def test_a_failover_moves_held_transitions_and_takeover_metrics(lab: Lab, agents: Agents) -> None:
    agents.extra = {"metrics": {"listen": f"0.0.0.0:{PORT}"}}
    h1, h2 = lab.hosts[0], lab.hosts[1]
    agents.start(h1)
    assert agents.wait_single_holder(lab.vip4(0)) == "h1"
    assert agents.wait_single_holder(lab.vip6(0)) == "h1"
    # Bound is not yet counted: wait for the gauges and the first acknowledged keepalive.
    wait_until(
        lambda: (
            scrape(lab, h1).get("haagent_lease_keepalive_seconds_count", 0) >= 1
            and scrape(lab, h1).get('haagent_vip_held{vip="web6"}') == 1
        ),
        10,
        what="h1's metrics to show both VIPs held and a keepalive",
    )
    agents.start(h2)
    wait_until(
        lambda: scrape(lab, h2).get('haagent_vip_eligible{vip="web4"}') == 1, 10, what="h2 eligible"
    )
    one, two = scrape(lab, h1), scrape(lab, h2)
    assert one['haagent_vip_held{vip="web4"}'] == 1
    assert two.get('haagent_vip_held{vip="web4"}', 0) == 0
    assert acquired(one, "web4") == 1 and acquired(two, "web4") == 0
    assert one["haagent_takeover_seconds_count"] >= 2  # web4 and web6
    assert one["haagent_lease_keepalive_seconds_count"] >= 1
    assert 0 < one["haagent_lease_deadline_seconds"] <= 3
    assert one["haagent_fence_running"] == 1 and one["haagent_fence_guarded_addresses"] == 2
    assert one['haagent_announcements_total{vip="web4"}'] >= 1
    info = [k for k in one if k.startswith("haagent_agent_info{")]
    assert len(info) == 1 and 'node="h1"' in info[0], info

    agents.signal(h1, signal.SIGTERM)
    assert agents.wait_other_holder(lab.vip4(0), "h1", timeout=10) == "h2"
    wait_until(lambda: scrape(lab, h2).get('haagent_vip_held{vip="web4"}') == 1, 10, what="h2 held")
    after = scrape(lab, h2)
    assert acquired(after, "web4") == 1
    assert agents.wait_exit(h1, 10) == 0
    assert scrape_or_empty(lab, h1) == {}, "h1 exited: its endpoint must be gone with it"
    assert after["haagent_takeover_seconds_count"] >= 1
    assert after["haagent_takeover_seconds_sum"] < 2.0  # a graceful handover, not a lease expiry
    assert after["haagent_fence_guarded_addresses"] == 2
    for h in (h1, h2):
        assert "Traceback" not in agents.log(h)

"""The metrics module and its config: bounded labels, the endpoint, listen addresses."""

from __future__ import annotations

import urllib.request

import pytest

from haagent.config import ConfigErrors, parse_config, parse_listen
from haagent.metrics import Metrics, cause


@pytest.mark.parametrize(
    ("reason", "label"),
    [
        ("shutdown", "shutdown"),
        ("check pg failed: connection refused (3/3)", "health"),
        ("eth0 lost its carrier", "link"),
        ("lease lost: etcd unreachable", "lease"),
        ("key now held by h2", "taken"),
        ("key absent; campaign won", "election"),
        ("removed from the config by a reload", "reload"),
        ("something new", "other"),
    ],
)
def test_reasons_become_a_bounded_cause(reason: str, label: str) -> None:
    assert cause(reason) == label


def test_the_endpoint_serves_every_metric_in_prometheus_text() -> None:
    m = Metrics()
    m.set_info("h1", "c", "0.1.0", "abc")
    m.transition("db", "acquired", "key absent; campaign won")
    m.held.labels("db").set(1)
    m.check_result("pg", True, True, 0.004)
    m.set_deadline(None)
    m.serve("127.0.0.1", 0)
    try:
        port = m._server.server_port
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()
    finally:
        m.close()
    text = body.decode()
    assert 'haagent_vip_transitions_total{cause="election",event="acquired",vip="db"} 1.0' in text
    assert 'haagent_vip_held{vip="db"} 1.0' in text
    assert (
        'haagent_agent_info{cluster="c",config_digest="abc",node="h1",version="0.1.0"} 1.0' in text
    )
    assert "haagent_lease_deadline_seconds 0.0" in text
    assert 'haagent_check_duration_seconds_count{check="pg"} 1.0' in text
    m.forget_vip("db")
    m.forget_vip("db")  # twice: no error


def test_listen_addresses_are_ip_and_port() -> None:
    assert parse_listen("127.0.0.1:9187") == ("127.0.0.1", 9187)
    assert parse_listen("[::1]:9187") == ("::1", 9187)
    for bad, why in (
        ("localhost:9187", "not an IP address"),
        ("127.0.0.1", "expected IP:port"),
        ("127.0.0.1:0", "1-65535"),
        ("127.0.0.1:99999", "1-65535"),
        ("::1:9187", "IPv6 in brackets"),
    ):
        with pytest.raises(ValueError, match=why):
            parse_listen(bad)


def test_metrics_are_off_unless_configured() -> None:
    base = {
        "node": "h1",
        "etcd": {"endpoints": ["http://198.51.100.2:2379"]},
        "vips": [{"name": "db", "address": "198.51.100.10", "interface": "eth0"}],
    }
    assert parse_config(base, "t.yaml").metrics.listen is None
    cfg = parse_config({**base, "metrics": {"listen": "[2001:db8::1]:9187"}}, "t.yaml")
    assert cfg.metrics.url == "http://[2001:db8::1]:9187/metrics"
    with pytest.raises(ConfigErrors, match=r"metrics\.listen: port must be 1-65535"):
        parse_config({**base, "metrics": {"listen": "127.0.0.1:70000"}}, "t.yaml")

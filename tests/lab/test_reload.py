"""SIGHUP reload in the lab, with real etcd and real addresses: unchanged VIPs keep their
holder and their address without a gap, removed ones are released, new ones join, a moved
one is released before it is held at its new address, and a bad file changes nothing."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest
import yaml

from haagent.lab.history import check_history, start_address_recorder
from haagent.lab.topology import Lab, Node
from haagent.lab.wait import wait_until
from tests.lab.conftest import Agents, holder_record

pytestmark = pytest.mark.lab


def rewrite(path: Path, vips: list[tuple[str, str]], **top: object) -> None:
    """The same agent config with other VIPs (and top-level keys)."""
    data = yaml.safe_load(path.read_text())
    iface = data["vips"][0]["interface"]
    data["vips"] = [{"name": n, "address": a, "interface": iface} for n, a in vips]
    data.update(top)
    path.write_text(yaml.safe_dump(data, sort_keys=False))


def digest(agents: Agents, node: str) -> str:
    record = agents.member(node)
    assert record is not None, node
    return str(record["config_digest"])


def test_reload_applies_a_new_config_without_a_gap_and_refuses_a_bad_one(
    lab: Lab, agents: Agents
) -> None:
    keep, gone, mover, moved_to = lab.vip4(0), lab.vip4(1), lab.vip4(2), lab.vip4(3)
    new = lab.vip6(0)
    agents.vips = [("keep", str(keep)), ("gone", str(gone)), ("mover", str(mover))]
    h1, h2 = lab.hosts[0], lab.hosts[1]
    agents.start(h1)
    for ip in (keep, gone, mover):
        assert agents.wait_single_holder(ip) == "h1"
    agents.start(h2)
    before = {h.role: digest(agents, h.role) for h in (h1, h2)}
    keep_record = holder_record(lab, agents.cluster, "keep")
    with start_address_recorder(lab, lab.hosts, tag="reload") as recorder:
        t0 = time.time()
        for h in (h2, h1):
            rewrite(
                agents.configs[h.role],
                [("keep", str(keep)), ("mover", str(moved_to)), ("new", str(new))],
            )
            agents.signal(h, signal.SIGHUP)
        for h in (h1, h2):

            def reloaded(h: Node = h) -> bool:
                return "reloaded config" in agents.log(h)

            wait_until(reloaded, 10, what=f"{h.role} to reload")
        agents.wait_single_holder(moved_to, timeout=15)
        agents.wait_single_holder(new, timeout=15)
        wait_until(
            lambda: not agents.holders(gone) and not agents.holders(mover),
            10,
            what="old addresses gone",
        )
        wait_until(
            lambda: holder_record(lab, agents.cluster, "gone") is None, 10, what="gone resigned"
        )

        def recorded() -> bool:
            # What the waits above saw in the kernel, also in the monitors' output.
            seen = recorder.poll()
            return any(e.ip == mover and not e.added for e in seen) and any(
                e.ip == moved_to and e.added for e in seen
            )

        wait_until(recorded, 5, what="the recorder to see the move")
        events = recorder.stop()
    # Unchanged: the same key (epoch, since) and never off h1, not even for a moment.
    assert holder_record(lab, agents.cluster, "keep") == keep_record
    # (Each lifetime refresh shows as an "add" in ip monitor; a removal would be a gap.)
    keep_removed = [e for e in events if e.ip == keep and not e.added]
    assert keep_removed == [], keep_removed
    assert {e.host for e in events if e.ip == keep} == {"h1"}
    for addr in (keep, moved_to, new, gone, mover):
        report = check_history(events, [], addr, until=time.time(), since=t0)
        assert not report.double_holder, (addr, report.double_holder)
    # The move: the old address went before the new one appeared anywhere.
    removed = min(e.at for e in events if e.ip == mover and not e.added)
    added = min(e.at for e in events if e.ip == moved_to and e.added)
    assert removed <= added, (removed, added)
    # The member records name the new config.
    for h in (h1, h2):
        assert digest(agents, h.role) != before[h.role]
        record = agents.member(h.role)
        assert record is not None and sorted(record["vips"]) == ["keep", "mover", "new"]

    # A file with an error is refused whole: nothing changes, the agent runs on.
    good = agents.configs["h1"].read_text()
    in_force = digest(agents, "h1")
    rewrite(agents.configs["h1"], [("keep", str(keep)), ("bad", "198.51.100.300")])
    agents.signal(h1, signal.SIGHUP)
    wait_until(lambda: "reload refused" in agents.log(h1), 10, what="the bad file refused")
    assert f"the configuration in force stays (digest {in_force})" in agents.log(h1)
    # A change only a restart can apply is refused the same way.
    agents.configs["h1"].write_text(good)
    rewrite(agents.configs["h1"], [("keep", str(keep))], lease={"ttl": 9, "margin": 1.0})
    agents.signal(h1, signal.SIGHUP)
    wait_until(
        lambda: "lease changed, which only a restart applies" in agents.log(h1), 10, what="refusal"
    )
    assert agents.procs["h1"].poll() is None
    assert digest(agents, "h1") == in_force
    assert agents.holders(keep) == ["h1"]
    for h in (h1, h2):
        assert "Traceback" not in agents.log(h)

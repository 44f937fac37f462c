"""The history checker (haagent/lab/history.py) and the benchmark's trial evaluation.

These prove that the checker catches what it must (two holders, interleaved answers), accepts
a clean handover, and that the benchmark reports a broken system as broken.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from ipaddress import ip_address

import pytest

from bench.evaluate import evaluate_trial, percentile, summarize_trials
from haagent.lab.history import (
    AddressEvent,
    check_history,
    holding_intervals,
    interleavings,
    overlaps,
    parse_monitor_line,
    parse_monitor_output,
    split_windows,
    splits,
)
from haagent.lab.probe import ProbeRecord

VIP = ip_address("198.51.100.200")
VIP6 = ip_address("2001:db8:100::200")
OTHER = ip_address("198.51.100.201")


def add(host: str, at: float, ip: object = VIP, dev: str = "eth0") -> AddressEvent:
    return AddressEvent(host, at, ip_address(str(ip)), True, dev)


def rm(host: str, at: float, ip: object = VIP, dev: str = "eth0") -> AddressEvent:
    return AddressEvent(host, at, ip_address(str(ip)), False, dev)


def probes(*spans: tuple[float, float, str | None], step: float = 0.005) -> list[ProbeRecord]:
    """Probes every `step` s over each [start, end) span, answered by the given host."""
    out: list[ProbeRecord] = []
    for start, end, by in spans:
        n = round((end - start) / step)
        for i in range(n):
            out.append(ProbeRecord(len(out), start + i * step, 0.0002 if by else None, by))
    return out


# --------------------------------------------------------------------------- parsing


def test_parse_add_and_delete_lines() -> None:
    text = (
        "[2026-11-23T08:22:20.319419] 3: eth0    inet 198.51.100.200/32 scope global eth0\\"
        "       valid_lft forever preferred_lft forever\n"
        "[2026-11-23T08:22:20.325836] Deleted 4: vrrp.52    inet6 2001:db8:100::200/128 scope "
        "global nodad deprecated \\       valid_lft forever preferred_lft 0sec\n"
        "garbage line\n"
    )
    events = parse_monitor_output("h1", text)
    assert len(events) == 2
    a, d = events
    assert (a.host, a.ip, a.added, a.dev) == ("h1", VIP, True, "eth0")
    assert a.at == pytest.approx(datetime(2026, 11, 23, 8, 22, 20, 319419, UTC).timestamp())
    assert (d.ip, d.added, d.dev) == (VIP6, False, "vrrp.52")
    assert d.at - a.at == pytest.approx(0.006417, abs=1e-6)


def test_parse_uses_the_given_time_zone_and_ignores_other_lines() -> None:
    line = "[2026-11-23T09:00:00.000001] 2: eth0    inet 198.51.100.200/32 scope global eth0"
    utc = parse_monitor_line("h1", line)
    plus1 = parse_monitor_line("h1", line, tz=timezone(timedelta(hours=1)))
    assert utc is not None and plus1 is not None
    assert utc.at - plus1.at == pytest.approx(3600.0)
    assert parse_monitor_line("h1", "[2026-11-23T09:00:00.000001] 2: eth0    link/ether") is None
    assert parse_monitor_line("h1", "") is None


# --------------------------------------------------------------------------- intervals


def test_intervals_add_remove_and_still_bound_at_until() -> None:
    events = [add("h1", 1.0), rm("h1", 2.0), add("h2", 2.5), add("h1", 5.0, OTHER)]
    assert holding_intervals(events, VIP, until=10.0) == {"h1": [(1.0, 2.0)], "h2": [(2.5, 10.0)]}
    assert holding_intervals(events, str(VIP), until=10.0)["h2"] == [(2.5, 10.0)]


def test_address_present_at_start_without_add_event() -> None:
    # The first thing we hear from h1 is the removal: it held the address since the start.
    events = [rm("h1", 3.0), add("h2", 3.1)]
    assert holding_intervals(events, VIP, until=5.0, since=0.5) == {
        "h1": [(0.5, 3.0)],
        "h2": [(3.1, 5.0)],
    }
    # Without `since`, from the earliest event we have (here the removal itself: nothing
    # is known about h1 before it, so no interval) ...
    assert "h1" not in holding_intervals(events, VIP, until=5.0)
    # ... or from an earlier event of any address.
    got = holding_intervals([add("h3", 1.0, OTHER), *events], VIP, until=5.0)
    assert got["h1"] == [(1.0, 3.0)]


def test_never_removed_and_repeated_adds() -> None:
    # Lifetime refreshes show up as repeated RTM_NEWADDR: still one interval.
    events = [add("h1", 1.0), add("h1", 2.0), add("h1", 3.0)]
    assert holding_intervals(events, VIP, until=4.0) == {"h1": [(1.0, 4.0)]}


def test_duplicate_removal_is_ignored_and_events_after_until_too() -> None:
    events = [add("h1", 1.0), rm("h1", 2.0), rm("h1", 2.1), add("h1", 9.0)]
    assert holding_intervals(events, VIP, until=5.0) == {"h1": [(1.0, 2.0)]}


def test_address_on_two_interfaces_of_one_host() -> None:
    # Held until it is gone from the last interface (e.g. eth0 and a vmac).
    events = [add("h1", 1.0, dev="eth0"), add("h1", 1.5, dev="vrrp.51"), rm("h1", 2.0)]
    events.append(rm("h1", 3.0, dev="vrrp.51"))
    assert holding_intervals(events, VIP, until=5.0) == {"h1": [(1.0, 3.0)]}


def test_events_in_any_order_are_sorted_by_time() -> None:
    events = [rm("h1", 2.0), add("h2", 2.5), add("h1", 1.0)]
    assert holding_intervals(events, VIP, until=3.0) == {"h1": [(1.0, 2.0)], "h2": [(2.5, 3.0)]}


# --------------------------------------------------------------------------- double holder


def test_catches_an_overlap() -> None:
    events = [add("h1", 1.0), add("h2", 3.0), rm("h1", 3.2)]
    report = check_history(events, [], VIP, until=5.0)
    [(t0, t1, hosts)] = report.double_holder
    assert (t0, hosts) == (3.0, ("h1", "h2")) and t1 == pytest.approx(3.2)
    assert report.double_holder_s == pytest.approx(0.2)
    assert not report.ok


def test_clean_handover_is_accepted() -> None:
    events = [add("h1", 1.0), rm("h1", 3.0), add("h2", 3.004)]
    answers = probes((2.0, 3.0, "h1"), (3.0, 3.01, None), (3.01, 4.0, "h2"))
    report = check_history(events, answers, VIP, until=5.0)
    assert report.double_holder == [] and not report.double_answer and report.ok


def test_touching_intervals_are_not_an_overlap() -> None:
    events = [add("h1", 1.0), rm("h1", 3.0), add("h2", 3.0)]
    assert check_history(events, [], VIP, until=5.0).double_holder == []
    # Same timestamp, listed add-first: still half-open intervals, no overlap.
    events = [add("h1", 1.0), add("h2", 3.0), rm("h1", 3.0)]
    assert check_history(events, [], VIP, until=5.0).double_holder == []


def test_present_at_start_and_never_removed_overlaps_new_holder() -> None:
    # The SIGKILL case of keepalived: h1 had it before we looked and never let go.
    events = [AddressEvent("h1", 0.0, VIP, True, "eth0", initial=True), add("h2", 3.5)]
    report = check_history(events, [], VIP, until=6.0, since=2.0)
    assert report.double_holder == [(3.5, 6.0, ("h1", "h2"))]


def test_removal_only_history_counts_from_the_recording_start() -> None:
    events = [add("h2", 1.0), rm("h1", 2.0)]
    report = check_history(events, [], VIP, until=3.0)
    assert report.intervals["h1"] == [(1.0, 2.0)]
    assert report.double_holder == [(1.0, 2.0, ("h1", "h2"))]


def test_overlap_window_is_clipped_and_merges_three_holders() -> None:
    intervals = {"h1": [(0.0, 10.0)], "h2": [(2.0, 4.0)], "h3": [(3.0, 6.0)]}
    assert overlaps(intervals) == [(2.0, 6.0, ("h1", "h2", "h3"))]
    assert overlaps(intervals, since=5.0, until=5.5) == [(5.0, 5.5, ("h1", "h3"))]
    assert overlaps(intervals, since=7.0) == []


def test_other_addresses_do_not_count() -> None:
    events = [add("h1", 1.0), add("h2", 2.0, OTHER)]
    assert check_history(events, [], VIP, until=5.0).double_holder == []


# --------------------------------------------------------------------------- double answer


def test_interleaved_answers_from_the_old_holder_are_caught() -> None:
    answers = probes((0.0, 1.0, "h1"), (1.0, 1.1, "h2"), (1.1, 1.2, "h1"), (1.2, 2.0, "h2"))
    found = interleavings(answers)
    assert [(i.host, i.after) for i in found] == [("h1", "h2"), ("h2", "h1")]
    assert found[0].at == pytest.approx(1.1) and found[0].superseded_at == pytest.approx(1.0)
    report = check_history([add("h1", -1.0), add("h2", 0.9)], answers, VIP, until=2.0)
    assert report.double_answer and not report.ok


def test_one_switch_is_not_a_double_answer() -> None:
    answers = probes((0.0, 1.0, "h1"), (1.0, 3.0, None), (3.0, 4.0, "h2"))
    assert interleavings(answers) == []


def test_late_reply_to_an_earlier_probe_is_not_interleaving() -> None:
    # Ordered by send time: h1 answered seq 1 slowly, after h2 answered seq 2 fast.
    answers = [
        ProbeRecord(0, 1.000, 0.001, "h1"),
        ProbeRecord(1, 1.005, 0.300, "h1"),
        ProbeRecord(2, 1.010, 0.001, "h2"),
        ProbeRecord(3, 1.015, 0.001, "h2"),
    ]
    assert interleavings(answers) == []


# h1 holds the VIP, lets go at 1.0; h2 binds it at 1.05, lets go at 2.0; h1 binds it anew
# at 2.05: the address history of the three hand-back tests below.
HAND_BACK = [add("h1", -1.0), rm("h1", 1.0), add("h2", 1.05), rm("h2", 2.0), add("h1", 2.05)]


def test_hand_back_after_a_new_bind_is_not_a_double_answer() -> None:
    # h1 -> h2 -> h1, but h1 lost the address and bound it anew after h2 took over.
    answers = probes((0.0, 1.0, "h1"), (1.1, 2.0, "h2"), (2.1, 3.0, "h1"))
    report = check_history(HAND_BACK, answers, VIP, until=3.0)
    assert report.ok, report
    # Without the history it counts: nothing shows that h1 let go.
    assert len(interleavings(answers)) == 1


def test_probe_that_waited_for_the_rebind_is_a_hand_back() -> None:
    # h1 -> h2 -> h1 again; the first answer of h1's second run was sent 4 ms before h1's
    # new bind shows in `ip monitor` (it waited in the client's neighbour queue) and came
    # back after it.
    answers = [
        *probes((0.0, 1.0, "h1"), (1.1, 2.0, "h2")),
        ProbeRecord(900, 2.046, 0.006, "h1"),
        ProbeRecord(901, 2.051, 0.0002, "h1"),
    ]
    assert check_history(HAND_BACK, answers, VIP, until=3.0).ok


def test_answer_long_before_the_rebind_still_counts() -> None:
    # The same, but h1's answer arrived 40 ms before it bound the address again: that answer
    # came from a host that had no business answering.
    answers = [
        *probes((0.0, 1.0, "h1"), (1.1, 2.0, "h2")),
        ProbeRecord(900, 2.009, 0.001, "h1"),
        ProbeRecord(901, 2.051, 0.0002, "h1"),
    ]
    report = check_history(HAND_BACK, answers, VIP, until=3.0)
    assert report.double_answer and not report.ok


def test_answers_outside_the_window_are_ignored() -> None:
    answers = probes((0.0, 1.0, "h1"), (1.0, 2.0, "h2"), (2.0, 3.0, "h1"))
    assert interleavings(answers, since=1.5) == []
    assert interleavings(answers, until=2.0) == []


# --------------------------------------------------------------------------- the benchmark


def test_bench_reports_a_clean_failover() -> None:
    answers = probes((9.5, 10.0, "h1"), (10.0, 13.0, None), (13.0, 13.5, "h2"))
    events = [add("h1", 0.0), rm("h1", 10.01), add("h2", 12.99)]
    r = evaluate_trial(answers, events, VIP, "h1", t_fail=10.0, since=9.5, until=13.5)
    assert r.failed_over and r.new_holder == "h2"
    assert r.gap_ms == pytest.approx(3005.0, abs=1.0) and not r.gap_censored
    assert r.to_new_ms == pytest.approx(3000.2, abs=1.0)
    assert not r.double_holder and not r.double_answer and r.stable_start


def test_bench_reports_no_failover_when_the_vip_never_moves() -> None:
    # A broken system: the old holder is gone and nobody takes over.
    answers = probes((9.5, 10.0, "h1"), (10.0, 15.0, None))
    r = evaluate_trial(answers, [add("h1", 0.0), rm("h1", 10.0)], VIP, "h1", 10.0, 9.5, 15.0)
    assert not r.failed_over and r.new_holder is None and r.to_new_ms is None
    assert r.gap_censored and r.gap_ms == pytest.approx(5005.0, abs=1.0)
    # ... or the old holder keeps answering (frozen daemon, address still bound).
    answers = probes((9.5, 15.0, "h1"))
    r = evaluate_trial(answers, [add("h1", 0.0)], VIP, "h1", 10.0, 9.5, 15.0)
    assert not r.failed_over and r.gap_ms == pytest.approx(5.0)


def test_bench_reports_two_holders_and_two_responders() -> None:
    # keepalived after SIGKILL: h1 keeps the address, h2 binds it too, answers interleave.
    answers = probes((9.5, 13.0, "h1"), (13.0, 13.2, "h2"), (13.2, 13.3, "h1"), (13.3, 14, "h2"))
    events = [AddressEvent("h1", 0.0, VIP, True, "eth0", initial=True), add("h2", 12.99)]
    r = evaluate_trial(answers, events, VIP, "h1", 10.0, 9.5, 14.0)
    assert r.failed_over and r.new_holder == "h2"
    assert r.double_holder and r.double_holder[0][2] == ("h1", "h2")
    assert r.double_holder_ms == pytest.approx(1010.0, abs=1.0)
    assert r.double_answer


def test_bench_flags_an_unstable_start() -> None:
    answers = probes((9.5, 10.0, "h3"), (10.0, 11.0, "h2"))
    r = evaluate_trial(answers, [], VIP, "h1", 10.0, 9.5, 11.0)
    assert not r.stable_start


def test_summary_statistics() -> None:
    assert percentile([], 95) is None
    assert percentile([5.0], 95) == 5.0
    values = [float(v) for v in range(1, 11)]  # nearest rank: p95 of 10 values is the max
    assert percentile(values, 95) == 10.0 and percentile(values, 50) == 5.0
    good = probes((9.5, 10.0, "h1"), (10.0, 10.1, None), (10.1, 10.5, "h2"))
    bad = probes((9.5, 10.0, "h1"), (10.0, 10.5, None))
    results = [
        evaluate_trial(good, [], VIP, "h1", 10.0, 9.5, 10.5),
        evaluate_trial(bad, [], VIP, "h1", 10.0, 9.5, 10.5),
    ]
    s = summarize_trials(results)
    assert s.trials == 2 and s.failed_over == 1 and s.gap_censored == 1
    assert s.to_new_max_ms is not None and s.to_new_max_ms == pytest.approx(100.2, abs=1)
    assert s.double_holder_trials == 0 and s.double_answer_trials == 0


# --------------------------------------------------------------------------- splits


def test_a_clean_handover_of_both_addresses_is_no_split() -> None:
    # h1 answers both until 1.0, nobody for 20 ms, then h2 answers both.
    got = {
        VIP: probes((0.0, 1.0, "h1"), (1.0, 1.02, None), (1.02, 2.0, "h2")),
        VIP6: probes((0.0025, 1.0025, "h1"), (1.0025, 1.0225, None), (1.0225, 2.0, "h2")),
    }
    assert splits(got) == []


def test_addresses_answered_by_two_hosts_at_once_are_a_split() -> None:
    # h2 answers the IPv6 address from 1.0 on, while h1 keeps answering IPv4 until 1.05.
    got = {
        VIP: probes((0.0, 1.05, "h1"), (1.05, 2.0, "h2")),
        VIP6: probes((0.0025, 1.0025, "h1"), (1.0025, 2.0, "h2")),
    }
    found = splits(got)
    # Seen from both addresses: h2's IPv6 answers inside h1's IPv4 run, and h1's IPv4 answers
    # inside h2's IPv6 run; all of them within the 50 ms it lasted.
    assert {(s.ip, s.host, s.other_ip, s.other_host) for s in found} == {
        (VIP6, "h2", VIP, "h1"),
        (VIP, "h1", VIP6, "h2"),
    }
    assert all(1.0 <= s.at < 1.05 for s in found), found
    assert all(s.between[0] <= s.at <= s.between[1] for s in found), found
    # Split for good: each address stays on its own host.
    stuck = {VIP: probes((0.0, 1.0, "h1")), VIP6: probes((0.0025, 1.0, "h2"))}
    assert {s.host for s in splits(stuck)} == {"h1", "h2"}


def test_a_late_reply_through_the_client_queue_is_no_split() -> None:
    # A probe to IPv6 sent at 0.999 waited 30 ms in the client's neighbour queue and reached
    # h2 after the handover: sent inside h1's IPv4 run, but its reply came after h1's last
    # IPv4 probe was sent.
    v4 = probes((0.0, 1.0, "h1"), (1.0, 1.02, None), (1.02, 2.0, "h2"))
    v6 = [ProbeRecord(0, 0.999, 0.03, "h2"), *probes((1.03, 2.0, "h2"))]
    assert splits({VIP: v4, VIP6: v6}) == []
    # The same answer arriving while h1 still answered IPv4 is a split.
    v4_late = probes((0.0, 1.1, "h1"), (1.1, 2.0, "h2"))
    assert [s.at for s in splits({VIP: v4_late, VIP6: v6})][:1] == [0.999]


def test_split_windows_from_the_kernels() -> None:
    clean = {
        VIP: {"h1": [(0.0, 1.0)], "h2": [(1.01, 2.0)]},
        VIP6: {"h1": [(0.0, 1.0003)], "h2": [(1.0102, 2.0)]},
    }
    assert split_windows(clean) == []
    # Touching is no overlap; h2 binding IPv6 before h1 dropped IPv4 is.
    touching = {VIP: {"h1": [(0.0, 1.0)]}, VIP6: {"h2": [(1.0, 2.0)]}}
    assert split_windows(touching) == []
    bad = {VIP: {"h1": [(0.0, 1.0)], "h2": [(1.2, 2.0)]}, VIP6: {"h2": [(0.9, 2.0)]}}
    assert split_windows(bad) == [(0.9, 1.0, (("h1", VIP), ("h2", VIP6)))]

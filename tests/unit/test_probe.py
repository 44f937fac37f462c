"""The pure parts of the lab's probe and responder: summarize, reply parsing, pktinfo."""

from __future__ import annotations

import dataclasses
import json
import socket
import struct

import pytest

from haagent.lab.probe import ProbeRecord, _parse_reply, summarize
from haagent.lab.responder import IP_PKTINFO, IPV6_PKTINFO, udp_reply_cmsg


def rec(seq: int, sent: float, by: str | None) -> ProbeRecord:
    return ProbeRecord(seq, sent, 0.001 if by else None, by)


def test_empty_run() -> None:
    s = summarize([])
    assert (s.sent, s.answered, s.lost) == (0, 0, 0)
    assert s.longest_gap_ms is None and s.gap_start is None
    assert s.responders == [] and s.transitions == []
    assert s.first_answered is None and s.last_answered is None


def test_single_answer_has_no_gap() -> None:
    s = summarize([rec(0, 10.0, "h1"), rec(1, 10.01, None)])
    assert (s.sent, s.answered, s.lost) == (2, 1, 1)
    assert s.longest_gap_ms is None
    assert s.responders == ["h1"]


def test_steady_run() -> None:
    records = [rec(i, 100.0 + i * 0.01, "h1") for i in range(50)]
    s = summarize(records)
    assert s.answered == 50 and s.lost == 0
    assert s.longest_gap_ms == pytest.approx(10.0)
    assert s.responders == ["h1"] and s.transitions == []
    assert s.first_answered == 100.0 and s.last_answered == pytest.approx(100.49)


def test_failover_gap_and_transition() -> None:
    records = (
        [rec(i, 100.0 + i * 0.01, "h1") for i in range(10)]
        + [rec(i, 100.0 + i * 0.01, None) for i in range(10, 40)]
        + [rec(i, 100.0 + i * 0.01, "h2") for i in range(40, 50)]
    )
    s = summarize(records)
    assert (s.answered, s.lost) == (20, 30)
    # last h1 answer was sent at seq 9, first h2 answer at seq 40: 31 intervals of 10 ms
    assert s.longest_gap_ms == pytest.approx(310.0)
    assert s.gap_start == pytest.approx(100.09)
    assert s.responders == ["h1", "h2"]
    [(at, old, new)] = s.transitions
    assert (old, new) == ("h1", "h2") and at == pytest.approx(100.40)


def test_flapping_between_two_responders_shows_every_transition() -> None:
    names = ["h1", "h2", "h1", "h1", "h2"]
    s = summarize([rec(i, float(i), n) for i, n in enumerate(names)])
    assert s.responders == ["h1", "h2"]
    assert [(f, t) for _at, f, t in s.transitions] == [
        ("h1", "h2"),
        ("h2", "h1"),
        ("h1", "h2"),
    ]


def test_records_are_ordered_by_seq_not_by_arrival() -> None:
    records = [rec(2, 2.0, "h2"), rec(0, 0.0, "h1"), rec(1, 1.0, "h1")]
    s = summarize(records)
    assert s.responders == ["h1", "h2"]
    assert s.transitions == [(2.0, "h1", "h2")]
    assert s.longest_gap_ms == pytest.approx(1000.0)


def test_unanswered_edges_do_not_count_as_gap() -> None:
    records = [rec(0, 0.0, None), rec(1, 1.0, "h1"), rec(2, 1.5, "h1"), rec(3, 9.0, None)]
    s = summarize(records)
    assert s.longest_gap_ms == pytest.approx(500.0)
    assert s.first_answered == 1.0 and s.last_answered == 1.5


def test_record_round_trips_through_json_fields() -> None:
    r = ProbeRecord(seq=3, sent=1.5, rtt=0.002, by="h1")
    line = json.dumps(dataclasses.asdict(r))
    assert ProbeRecord(**json.loads(line)) == r
    assert r.answered and not ProbeRecord(4, 2.0).answered


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"h1 17", ("h1", "17")),
        (b"h2 once-5\n", ("h2", "once-5")),
        (b"h1 a b", ("h1", "a b")),
        (b"garbage", None),
        (b"\xff\xfe x", None),
    ],
)
def test_parse_reply(data: bytes, expected: tuple[str, str] | None) -> None:
    assert _parse_reply(data) == expected


def test_ipv4_reply_leaves_from_the_request_destination() -> None:
    vip = socket.inet_aton("198.51.100.200")
    local = socket.inet_aton("198.51.100.11")
    received = [(socket.IPPROTO_IP, IP_PKTINFO, struct.pack("=i4s4s", 2, local, vip))]
    [(level, ctype, data)] = udp_reply_cmsg(socket.AF_INET, received)
    assert (level, ctype) == (socket.IPPROTO_IP, IP_PKTINFO)
    ifindex, spec_dst, _addr = struct.unpack("=i4s4s", data)
    assert ifindex == 0 and spec_dst == vip


def test_ipv6_reply_leaves_from_the_request_destination() -> None:
    vip = socket.inet_pton(socket.AF_INET6, "2001:db8:100::200")
    received = [(socket.IPPROTO_IPV6, IPV6_PKTINFO, struct.pack("=16si", vip, 2))]
    [(level, ctype, data)] = udp_reply_cmsg(socket.AF_INET6, received)
    assert (level, ctype) == (socket.IPPROTO_IPV6, IPV6_PKTINFO)
    assert struct.unpack("=16si", data) == (vip, 2)


def test_no_pktinfo_means_default_source() -> None:
    assert udp_reply_cmsg(socket.AF_INET, []) == []

"""Link events: parsing what the kernel sends, and what a carrier loss does to a VIP."""

from __future__ import annotations

import struct

from haagent.net.addresses import IFF_UP, RTM_NEWLINK
from haagent.net.linkwatch import IFF_LOWER_UP, IFLA_IFNAME, RTM_DELLINK, parse_link_messages


def link_message(kind: int, name: str, flags: int) -> bytes:
    raw = name.encode() + b"\0"
    rta = struct.pack("=HH", 4 + len(raw), IFLA_IFNAME) + raw
    rta += b"\0" * (-len(rta) % 4)
    body = struct.pack("=BxHiII", 0, 1, 2, flags, 0xFFFFFFFF) + rta
    return struct.pack("=IHHII", 16 + len(body), kind, 0, 0, 0) + body


def test_up_needs_both_admin_up_and_carrier():
    data = (
        link_message(RTM_NEWLINK, "eth0", IFF_UP | IFF_LOWER_UP)
        + link_message(RTM_NEWLINK, "eth1", IFF_UP)
        + link_message(RTM_DELLINK, "eth2", IFF_UP | IFF_LOWER_UP)
    )
    assert parse_link_messages(data) == [("eth0", True), ("eth1", False), ("eth2", False)]


def test_garbage_and_truncation_never_raise():
    good = link_message(RTM_NEWLINK, "eth0", IFF_UP | IFF_LOWER_UP)
    for cut in range(len(good)):
        # A truncated message is dropped whole, never reported under a cut-off name.
        assert parse_link_messages(good[:cut]) == [], cut
    assert parse_link_messages(b"\xff" * 64) == []

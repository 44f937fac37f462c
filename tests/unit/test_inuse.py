"""haagent.net.inuse without sockets: which frames mean "in use", and the kernel filter.

The filter is run by a small classic-BPF interpreter below (the instructions it uses: loads
of a word, half-word or byte at an absolute offset, the packet-type ancillary load, JEQ and
RET), so that what it passes and drops is checked frame by frame without a kernel.
tests/lab/test_inuse.py shows the same against real hosts.
"""

from __future__ import annotations

import random
from ipaddress import IPv4Address, IPv6Address

import pytest

from haagent.net import frames as f
from haagent.net import inuse
from haagent.net.responder import _JEQ, _LD_B, _LD_H, _LD_W, _RET, _SKF_AD_PKTTYPE

US = bytes.fromhex("02000000000a")  # the prober's interface
HOLDER = bytes.fromhex("02000000000b")  # the old holder
VMAC = bytes.fromhex("00005e000112")
V4 = IPv4Address("198.51.100.200")
V4_OTHER = IPv4Address("198.51.100.201")
V6 = IPv6Address("2001:db8:100::200")
V6_OTHER = IPv6Address("2001:db8:100::201")
WANTED: frozenset[IPv4Address | IPv6Address] = frozenset({V4, V6})
IGNORE = frozenset({US})

PACKET_HOST, PACKET_BROADCAST, PACKET_MULTICAST, PACKET_OUTGOING = 0, 1, 2, 4


def arp_reply_to_probe(mac: bytes, ip: IPv4Address) -> bytes:
    """What Linux answers to our RFC 5227 probe: a reply unicast to us, target IP 0.0.0.0."""
    probe = f.parse_arp(f.arp_probe(US, ip))
    assert probe is not None
    return f.arp_answer(probe, mac)


def na_defending(mac: bytes, target: IPv6Address) -> bytes:
    """What Linux answers to our DAD probe: an NA to all-nodes from the target, S=0, O=1."""
    ns = f.parse_nd(f.dad_probe(US, target))
    assert ns is not None
    return f.na_answer(ns, mac, target)


# -- match_answer ----------------------------------------------------------------------------


def test_an_arp_reply_to_the_probe_is_an_answer() -> None:
    assert inuse.match_answer(arp_reply_to_probe(HOLDER, V4), WANTED, IGNORE) == (V4, HOLDER)


def test_an_arp_request_or_announcement_from_the_address_is_an_answer() -> None:
    # The holder's kernel resolving a neighbour with the VIP as sender, or announcing it.
    request = f.arp_frame(f.ARP_REQUEST, f.BROADCAST, HOLDER, V4, f.ZERO_MAC, V4_OTHER)
    assert inuse.match_answer(request, WANTED, IGNORE) == (V4, HOLDER)
    assert inuse.match_answer(f.garp_request(VMAC, V4), WANTED, IGNORE) == (V4, VMAC)
    assert inuse.match_answer(f.garp_reply(HOLDER, V4), WANTED, IGNORE) == (V4, HOLDER)


def test_arp_that_is_not_from_the_address_is_no_answer() -> None:
    # Another host probing for it (sender 0.0.0.0), asking for it, answering for another.
    assert inuse.match_answer(f.arp_probe(HOLDER, V4), WANTED, IGNORE) is None
    ask = f.arp_frame(f.ARP_REQUEST, f.BROADCAST, HOLDER, V4_OTHER, f.ZERO_MAC, V4)
    assert inuse.match_answer(ask, WANTED, IGNORE) is None
    assert inuse.match_answer(arp_reply_to_probe(HOLDER, V4_OTHER), WANTED, IGNORE) is None
    odd_op = f.arp_frame(3, f.BROADCAST, HOLDER, V4, f.ZERO_MAC, V4)  # RARP request
    assert inuse.match_answer(odd_op, WANTED, IGNORE) is None


def test_an_na_defending_the_address_is_an_answer() -> None:
    assert inuse.match_answer(na_defending(HOLDER, V6), WANTED, IGNORE) == (V6, HOLDER)
    # A solicited NA (to us) and an unsolicited one (an announcement) count the same.
    solicited = f.na_frame(US, HOLDER, V6, IPv6Address("fe80::a"), V6, solicited=True)
    assert inuse.match_answer(solicited, WANTED, IGNORE) == (V6, HOLDER)
    assert inuse.match_answer(f.unsolicited_na(VMAC, V6, V6), WANTED, IGNORE) == (V6, VMAC)


def test_the_mac_of_an_na_is_its_target_link_layer_address() -> None:
    # A proxy answering for another MAC: the address is at the option's MAC.
    frame = bytearray(na_defending(VMAC, V6))
    frame[6:12] = HOLDER  # Ethernet source only: not covered by the checksum
    assert inuse.match_answer(bytes(frame), WANTED, IGNORE) == (V6, VMAC)


def test_an_na_without_a_tlla_option_is_at_its_ethernet_source() -> None:
    full = na_defending(HOLDER, V6)
    icmp = bytearray(full[f.ETH_HLEN + 40 : f.ETH_HLEN + 40 + 24])  # without the option
    icmp[2:4] = b"\x00\x00"
    src, dst = IPv6Address(full[22:38]), IPv6Address(full[38:54])
    icmp[2:4] = f.icmpv6_checksum(src, dst, bytes(icmp)).to_bytes(2, "big")
    ip6 = bytearray(full[f.ETH_HLEN : f.ETH_HLEN + 40])
    ip6[4:6] = (24).to_bytes(2, "big")
    frame = full[:14] + bytes(ip6) + bytes(icmp)
    assert inuse.match_answer(frame, WANTED, IGNORE) == (V6, HOLDER)


def test_nd_that_is_not_an_answer_for_the_address() -> None:
    assert inuse.match_answer(f.dad_probe(HOLDER, V6), WANTED, IGNORE) is None  # probing
    assert inuse.match_answer(na_defending(HOLDER, V6_OTHER), WANTED, IGNORE) is None
    good = na_defending(HOLDER, V6)
    bad_sum = bytearray(good)
    bad_sum[f.ETH_HLEN + 40 + 2] ^= 0xFF
    assert inuse.match_answer(bytes(bad_sum), WANTED, IGNORE) is None
    forwarded = bytearray(good)
    forwarded[f.ETH_HLEN + 7] = 254  # hop limit: it crossed a router
    assert inuse.match_answer(bytes(forwarded), WANTED, IGNORE) is None


def test_our_own_macs_never_count() -> None:
    assert inuse.match_answer(arp_reply_to_probe(US, V4), WANTED, IGNORE) is None
    assert inuse.match_answer(na_defending(US, V6), WANTED, IGNORE) is None
    assert inuse.match_answer(f.garp_request(VMAC, V4), WANTED, IGNORE | {VMAC}) is None
    # Our interface's Ethernet source with another sender MAC is still our own frame.
    frame = bytearray(f.garp_request(VMAC, V4))
    frame[6:12] = US
    assert inuse.match_answer(bytes(frame), WANTED, IGNORE) is None


def test_zero_or_multicast_sender_macs_never_count() -> None:
    for mac in (f.ZERO_MAC, f.BROADCAST, b"\x01\x00\x5e\x00\x00\x01"):
        frame = f.arp_frame(f.ARP_REPLY, US, mac, V4, US, IPv4Address(0))
        assert inuse.match_answer(frame, WANTED, IGNORE) is None


def test_garbage_is_no_answer_and_never_raises() -> None:
    rng = random.Random(5227)
    samples = [arp_reply_to_probe(HOLDER, V4), na_defending(HOLDER, V6)]
    assert inuse.match_answer(b"", WANTED, IGNORE) is None
    for sample in samples:
        for cut in range(len(sample)):
            found = inuse.match_answer(sample[:cut], WANTED, IGNORE)
            assert found is None or cut >= 42  # an ARP frame without its padding is whole
    for _ in range(2000):
        base = bytearray(rng.choice(samples))
        for _ in range(rng.randint(1, 4)):
            base[rng.randrange(len(base))] = rng.randrange(256)
        inuse.match_answer(bytes(base), WANTED, IGNORE)
        inuse.match_answer(rng.randbytes(rng.randint(0, 100)), WANTED, IGNORE)


# -- addresses and probes --------------------------------------------------------------------


def test_check_addresses() -> None:
    assert inuse.check_addresses([V4, V6, V4]) == {V4, V6}
    assert inuse.check_addresses([]) == frozenset()
    bad: list[object] = [
        IPv4Address(0),
        IPv6Address("::"),
        IPv4Address("224.0.0.1"),
        IPv4Address("255.255.255.255"),
        IPv6Address("ff02::1"),
        "198.51.100.200",
    ]
    for address in bad:
        with pytest.raises(ValueError):
            inuse.check_addresses([address])  # type: ignore[list-item]


def test_probe_frames_teach_nobody() -> None:
    arp, ns = inuse.probe_frames(US, [V4, V6])
    a = f.parse_arp(arp)
    assert a is not None and (a.op, a.spa, a.tpa, a.sha, a.eth_dst) == (
        f.ARP_REQUEST,
        IPv4Address(0),
        V4,
        US,
        f.BROADCAST,
    )
    n = f.parse_nd(ns)
    assert n is not None and (n.type, n.src, n.dst, n.target, n.lladdr) == (
        f.ND_NS,
        f.UNSPECIFIED6,
        f.solicited_node(V6),
        V6,
        None,
    )


def test_probe_error_is_one_line() -> None:
    exc = inuse.ProbeError(19, "cannot probe on eth9: no such interface")
    assert isinstance(exc, OSError) and exc.errno == 19
    assert str(exc) == "cannot probe on eth9: no such interface"


def test_a_missing_interface_is_a_one_line_oserror() -> None:
    # As root: no such interface; as anybody else: not permitted. Either way one line.
    with pytest.raises(OSError) as info:
        inuse.Prober("hxnosuch0")
    assert str(info.value).startswith("cannot probe on hxnosuch0: ")
    assert "\n" not in str(info.value) and "Errno" not in str(info.value)


# -- the kernel filter ---------------------------------------------------------------------


def run_bpf(prog: list[inuse.Insn], frame: bytes, pkttype: int) -> int:
    """Classic BPF as the kernel runs it: bytes to keep (0: drop). Out-of-frame loads drop."""
    assert len(prog) <= 4096
    a, pc = 0, 0
    for _ in range(len(prog)):  # jumps only go forward
        code, jt, jf, k = prog[pc]
        if code in (_LD_W, _LD_H, _LD_B):
            size = {_LD_W: 4, _LD_H: 2, _LD_B: 1}[code]
            if k == _SKF_AD_PKTTYPE and code == _LD_W:
                a = pkttype
            elif k + size > len(frame):
                return 0
            else:
                a = int.from_bytes(frame[k : k + size], "big")
            pc += 1
        elif code == _JEQ:
            assert 0 <= jt <= 255 and 0 <= jf <= 255
            pc += 1 + (jt if a == k else jf)
        elif code == _RET:
            return k
        else:
            raise AssertionError(f"unexpected instruction {code:#x}")
        assert pc < len(prog), "jumped past the end"
    raise AssertionError("ran off the program")


def passes(prog: list[inuse.Insn], frame: bytes, pkttype: int = PACKET_HOST) -> bool:
    return run_bpf(prog, frame, pkttype) >= len(frame)


def test_the_filter_passes_answers_and_drops_the_rest() -> None:
    prog = inuse.answer_filter([V4, V6])
    assert passes(prog, arp_reply_to_probe(HOLDER, V4))
    assert passes(prog, f.garp_request(HOLDER, V4), PACKET_BROADCAST)
    assert passes(prog, na_defending(HOLDER, V6), PACKET_MULTICAST)
    # Our own transmissions, whatever they are.
    assert not passes(prog, f.garp_request(US, V4), PACKET_OUTGOING)
    assert not passes(prog, na_defending(US, V6), PACKET_OUTGOING)
    # Other addresses, probes, solicitations, other protocols.
    assert not passes(prog, arp_reply_to_probe(HOLDER, V4_OTHER))
    assert not passes(prog, f.arp_probe(HOLDER, V4), PACKET_BROADCAST)
    assert not passes(prog, na_defending(HOLDER, V6_OTHER), PACKET_MULTICAST)
    assert not passes(prog, f.dad_probe(HOLDER, V6), PACKET_MULTICAST)
    ipv4 = US + HOLDER + b"\x08\x00" + bytes(46)
    assert not passes(prog, ipv4)
    assert not passes(prog, b"\x00" * 12)  # too short for an ethertype


def test_the_filter_compares_the_low_32_bits_of_an_ipv6_target() -> None:
    # Coarse on purpose (the parser checks the whole target): the same low bits pass.
    prog = inuse.answer_filter([V6])
    assert passes(prog, na_defending(HOLDER, IPv6Address("2001:db8:ffff::200")))
    assert (
        inuse.match_answer(na_defending(HOLDER, IPv6Address("2001:db8:ffff::200")), {V6}, IGNORE)
        is None
    )


def test_a_family_not_asked_for_is_dropped() -> None:
    only4, only6 = inuse.answer_filter([V4]), inuse.answer_filter([V6])
    assert passes(only4, arp_reply_to_probe(HOLDER, V4))
    assert not passes(only4, na_defending(HOLDER, V6))
    assert passes(only6, na_defending(HOLDER, V6))
    assert not passes(only6, arp_reply_to_probe(HOLDER, V4))


@pytest.mark.parametrize("count", [1, 2, inuse.FILTER_MAX, inuse.FILTER_MAX + 1, 1000])
def test_the_filter_scales(count: int) -> None:
    """Up to FILTER_MAX addresses per family one by one, beyond that all of the family."""
    v4 = [IPv4Address("203.0.113.0") + i for i in range(min(count, 254))]
    v6 = [IPv6Address("2001:db8:100::1:0") + i for i in range(1, count + 1)]
    prog = inuse.answer_filter([*v4, *v6])  # assembles: every jump within 255
    for address in (v4[0], v4[-1]):
        assert passes(prog, arp_reply_to_probe(HOLDER, address))
    for address6 in (v6[0], v6[-1]):
        assert passes(prog, na_defending(HOLDER, address6))
    everything = len(v6) > inuse.FILTER_MAX
    assert passes(prog, na_defending(HOLDER, V6_OTHER)) == everything
    assert passes(prog, arp_reply_to_probe(HOLDER, V4)) == (len(v4) > inuse.FILTER_MAX)
    assert not passes(prog, f.dad_probe(HOLDER, v6[0]))

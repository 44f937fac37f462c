"""Probe a VIP the way a client would, and summarise what it saw.

``python -m haagent.lab.probe --target VIP --port 7000 --interval 0.005 --duration 5 --out F``
sends sequence-numbered probes to the lab responder and writes one JSON line per probe:
``{"seq", "sent", "rtt", "by"}`` (``sent`` is ``time.time()``; ``rtt`` in seconds and ``by``,
the responder's name, are null when no answer came within the timeout).

UDP probes go out on one connected socket at a fixed pace and the replies are matched by
sequence number, so a dead VIP does not slow the pace down. A connected socket only accepts
replies from the target address, as real clients do. TCP probes open one connection each
(``--tcp``), which is what a client reconnecting after a failover does.

``--once`` sends a single probe and prints ``{"by": ..., "source": ...}``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import select
import signal
import socket
import struct
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from ipaddress import ip_address
from pathlib import Path
from types import FrameType

DEFAULT_TIMEOUT = 0.5
MAX_DURATION = 3600.0
MIN_INTERVAL = 0.0005


@dataclass(frozen=True)
class ProbeRecord:
    seq: int
    sent: float
    rtt: float | None = None
    by: str | None = None

    @property
    def answered(self) -> bool:
        return self.by is not None


@dataclass(frozen=True)
class ProbeSummary:
    sent: int
    answered: int
    # Longest time between the send times of two consecutive answered probes, in ms; None
    # with fewer than two answers. An outage at the very start or end is not a "gap": look
    # at `answered` and at the first/last answered times for those.
    longest_gap_ms: float | None
    gap_start: float | None  # send time of the last answered probe before the longest gap
    first_answered: float | None
    last_answered: float | None
    responders: list[str] = field(default_factory=list)  # in order of first answer
    transitions: list[tuple[float, str, str]] = field(default_factory=list)  # (sent, from, to)

    @property
    def lost(self) -> int:
        return self.sent - self.answered


def summarize(records: Iterable[ProbeRecord]) -> ProbeSummary:
    """Pure summary of a probe run (records in any order; sorted by seq here)."""
    ordered = sorted(records, key=lambda r: r.seq)
    answered = [r for r in ordered if r.by is not None]
    responders: list[str] = []
    transitions: list[tuple[float, str, str]] = []
    longest: float | None = None
    gap_start: float | None = None
    prev: ProbeRecord | None = None
    for rec in answered:
        assert rec.by is not None
        if rec.by not in responders:
            responders.append(rec.by)
        if prev is not None:
            assert prev.by is not None
            gap = (rec.sent - prev.sent) * 1000.0
            if longest is None or gap > longest:
                longest, gap_start = gap, prev.sent
            if rec.by != prev.by:
                transitions.append((rec.sent, prev.by, rec.by))
        prev = rec
    return ProbeSummary(
        sent=len(ordered),
        answered=len(answered),
        longest_gap_ms=longest,
        gap_start=gap_start,
        first_answered=answered[0].sent if answered else None,
        last_answered=answered[-1].sent if answered else None,
        responders=responders,
        transitions=transitions,
    )


def _family(target: str) -> int:
    return socket.AF_INET6 if ip_address(target).version == 6 else socket.AF_INET


def _parse_reply(data: bytes) -> tuple[str, str] | None:
    """'<name> <payload>' -> (name, payload)."""
    try:
        name, payload = data.decode().rstrip("\n").split(" ", 1)
    except (UnicodeDecodeError, ValueError):
        return None
    return name, payload


def probe_reply(
    target: str,
    port: int,
    *,
    tcp: bool = False,
    timeout: float = DEFAULT_TIMEOUT,
    connected: bool = True,
) -> tuple[str, str] | None:
    """One probe; (responder name, source address of the reply) or None.

    With `connected` False a UDP reply from any address is accepted, so the caller can see
    which source address the responder used.
    """
    nonce = f"once-{time.monotonic_ns()}"
    deadline = time.monotonic() + timeout
    family = _family(target)
    try:
        if tcp:
            with socket.create_connection((target, port), timeout=timeout) as sock:
                sock.sendall(nonce.encode() + b"\n")
                buf = b""
                while not buf.endswith(b"\n"):
                    sock.settimeout(max(deadline - time.monotonic(), 0.001))
                    chunk = sock.recv(4096)
                    if not chunk:
                        return None
                    buf += chunk
                parsed = _parse_reply(buf)
                if parsed is None or parsed[1] != nonce:
                    return None
                return parsed[0], str(sock.getpeername()[0])
        with socket.socket(family, socket.SOCK_DGRAM) as sock:
            if connected:
                sock.connect((target, port))
                sock.send(nonce.encode())
            else:
                sock.sendto(nonce.encode(), (target, port))
            while (left := deadline - time.monotonic()) > 0:
                sock.settimeout(left)
                data, peer = sock.recvfrom(4096)
                parsed = _parse_reply(data)
                if parsed is not None and parsed[1] == nonce:
                    return parsed[0], str(peer[0])
    except (TimeoutError, OSError):
        return None
    return None


def probe_once(
    target: str, port: int, *, tcp: bool = False, timeout: float = DEFAULT_TIMEOUT
) -> str | None:
    """One probe as a real client sends it; the name of the responder, or None."""
    reply = probe_reply(str(target), port, tcp=tcp, timeout=timeout)
    return reply[0] if reply else None


def _icmp_checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return int(~total & 0xFFFF)


def ping(target: str, *, timeout: float = 1.0) -> float | None:
    """One ICMP / ICMPv6 echo (raw socket, needs root); the round trip in seconds or None.

    The lab does not rely on iputils' ping being installed.
    """
    addr = ip_address(str(target))
    v6 = addr.version == 6
    ident = os.getpid() & 0xFFFF
    seq = time.monotonic_ns() & 0xFFFF
    payload = b"haagent-lab"
    family = socket.AF_INET6 if v6 else socket.AF_INET
    proto = socket.IPPROTO_ICMPV6 if v6 else socket.IPPROTO_ICMP
    request, reply = (128, 129) if v6 else (8, 0)
    header = struct.pack("!BBHHH", request, 0, 0, ident, seq)
    if not v6:  # the kernel fills in the ICMPv6 checksum (it covers a pseudo-header)
        csum = _icmp_checksum(header + payload)
        header = struct.pack("!BBHHH", request, 0, csum, ident, seq)
    deadline = time.monotonic() + timeout
    try:
        with socket.socket(family, socket.SOCK_RAW, proto) as sock:
            sent = time.monotonic()
            sock.sendto(header + payload, (str(addr), 0))
            while (left := deadline - time.monotonic()) > 0:
                sock.settimeout(left)
                data, peer = sock.recvfrom(65535)
                if ip_address(peer[0].split("%")[0]) != addr:
                    continue
                if not v6:
                    data = data[(data[0] & 0x0F) * 4 :]  # raw IPv4 sockets include the header
                if len(data) < 8:
                    continue
                rtype, _code, _csum, rid, rseq = struct.unpack("!BBHHH", data[:8])
                if rtype == reply and rid == ident and rseq == seq:
                    return time.monotonic() - sent
    except (TimeoutError, OSError):
        return None
    return None


class _Stop:
    def __init__(self) -> None:
        self.requested = False

    def __call__(self, _signum: int, _frame: FrameType | None) -> None:
        self.requested = True


def run_probe(
    target: str,
    port: int = 7000,
    *,
    interval: float = 0.005,
    duration: float = 5.0,
    tcp: bool = False,
    timeout: float = DEFAULT_TIMEOUT,
    stop: _Stop | None = None,
) -> list[ProbeRecord]:
    """Probe for `duration` seconds, one probe every `interval`; one record per probe."""
    interval = max(interval, MIN_INTERVAL)
    duration = min(max(duration, 0.0), MAX_DURATION)
    stop = stop or _Stop()
    if tcp:
        return _run_tcp(str(target), port, interval, duration, timeout, stop)
    return _run_udp(str(target), port, interval, duration, timeout, stop)


def _run_tcp(
    target: str, port: int, interval: float, duration: float, timeout: float, stop: _Stop
) -> list[ProbeRecord]:
    records: list[ProbeRecord] = []
    start = time.monotonic()
    next_at = start
    seq = 0
    while not stop.requested and time.monotonic() - start < duration:
        now = time.monotonic()
        if now < next_at:
            time.sleep(next_at - now)
        sent_wall, sent = time.time(), time.monotonic()
        reply = probe_reply(target, port, tcp=True, timeout=timeout)
        rtt = time.monotonic() - sent if reply else None
        records.append(ProbeRecord(seq, sent_wall, rtt, reply[0] if reply else None))
        seq += 1
        # Keep the pace, but never try to catch up after a slow (timed out) probe.
        next_at = max(next_at + interval, time.monotonic())
    return records


def _run_udp(
    target: str, port: int, interval: float, duration: float, timeout: float, stop: _Stop
) -> list[ProbeRecord]:
    sent_at: dict[int, tuple[float, float]] = {}  # seq -> (wall, monotonic)
    answers: dict[int, tuple[float, str]] = {}  # seq -> (rtt, by)
    with socket.socket(_family(target), socket.SOCK_DGRAM) as sock:
        sock.connect((target, port))
        sock.setblocking(False)
        start = time.monotonic()
        end = start + duration
        next_at = start
        seq = 0
        while not stop.requested:
            now = time.monotonic()
            if now >= end and (not sent_at or now >= end + timeout or len(answers) == seq):
                break
            if now >= next_at and now < end:
                sent_at[seq] = (time.time(), time.monotonic())
                with contextlib.suppress(OSError):  # EHOSTUNREACH, ECONNREFUSED, ...
                    sock.send(f"{seq}".encode())
                seq += 1
                next_at += interval
                if next_at < now:  # we fell behind (scheduler): do not burst
                    next_at = now + interval
                continue
            wait = (next_at if now < end else end + timeout) - now
            ready, _, _ = select.select([sock], [], [], max(wait, 0.0))
            if not ready:
                continue
            for _ in range(256):
                try:
                    data = sock.recv(4096)
                except (BlockingIOError, InterruptedError):
                    break
                except OSError:
                    continue  # ICMP error reported on the connected socket
                received = time.monotonic()
                parsed = _parse_reply(data)
                if parsed is None or not parsed[1].isdigit():
                    continue
                rseq = int(parsed[1])
                if rseq in sent_at and rseq not in answers:
                    rtt = received - sent_at[rseq][1]
                    if rtt <= timeout:
                        answers[rseq] = (rtt, parsed[0])
    records = []
    for s, (wall, _mono) in sorted(sent_at.items()):
        answer = answers.get(s)
        records.append(
            ProbeRecord(s, wall, answer[0] if answer else None, answer[1] if answer else None)
        )
    return records


def write_records(records: Iterable[ProbeRecord], out: Path | None) -> None:
    lines = "".join(json.dumps(asdict(r)) + "\n" for r in records)
    if out is None:
        sys.stdout.write(lines)
    else:
        tmp = out.with_name(out.name + ".tmp")
        tmp.write_text(lines)
        tmp.replace(out)


def started_marker(out: Path) -> Path:
    """The file a probe run creates when it starts sending (its records come at the end)."""
    return out.with_name(out.name + ".started")


def read_records(path: Path) -> list[ProbeRecord]:
    records = []
    for line in path.read_text().splitlines():
        if line.strip():
            d = json.loads(line)
            records.append(ProbeRecord(int(d["seq"]), float(d["sent"]), d["rtt"], d["by"]))
    return records


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m haagent.lab.probe", description=__doc__)
    parser.add_argument("--target", required=True, help="address to probe (a VIP)")
    parser.add_argument("--port", type=int, default=7000)
    parser.add_argument("--interval", type=float, default=0.005, help="seconds between probes")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds to probe for")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, help="per probe")
    parser.add_argument("--tcp", action="store_true", help="TCP, one connection per probe")
    parser.add_argument("--out", type=Path, help="JSON lines file (default: stdout)")
    parser.add_argument("--ping", action="store_true", help="one ICMP echo; print rtt JSON")
    parser.add_argument("--once", action="store_true", help="one probe; print by/source JSON")
    parser.add_argument(
        "--unconnected",
        action="store_true",
        help="with --once over UDP: accept a reply from any source and report it",
    )
    args = parser.parse_args(argv)
    if args.ping:
        rtt = ping(args.target, timeout=args.timeout)
        print(json.dumps({"rtt": rtt}))
        return 0 if rtt is not None else 1
    if args.once:
        reply = probe_reply(
            args.target,
            args.port,
            tcp=args.tcp,
            timeout=args.timeout,
            connected=not args.unconnected,
        )
        print(
            json.dumps({"by": reply[0] if reply else None, "source": reply[1] if reply else None})
        )
        return 0 if reply else 1
    stop = _Stop()
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    if args.out is not None:
        # Records are written at the end; this marker lets a test act once probing has begun.
        started_marker(args.out).touch()
    records = run_probe(
        args.target,
        args.port,
        interval=args.interval,
        duration=args.duration,
        tcp=args.tcp,
        timeout=args.timeout,
        stop=stop,
    )
    write_records(records, args.out)
    s = summarize(records)
    gap = "-" if s.longest_gap_ms is None else f"{s.longest_gap_ms:.1f} ms"
    print(
        f"sent {s.sent} answered {s.answered} longest gap {gap} "
        f"responders {','.join(s.responders) or '-'} transitions {len(s.transitions)}",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

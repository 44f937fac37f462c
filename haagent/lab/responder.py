"""A tiny UDP+TCP echo service for the lab: ``python -m haagent.lab.responder --name h1``.

It answers ``<name> <payload>`` to every datagram and to every line of a TCP connection, on
all addresses of the host, IPv4 and IPv6. A UDP reply leaves from the address the datagram
was sent to (a VIP, typically), chosen with IP_PKTINFO / IPV6_PKTINFO, so that clients with a
connected socket accept it. Prints ``ready`` once listening; exits 0 on SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import socket
import struct
import sys
from collections.abc import Sequence

# Missing from Python 3.11's socket module; Linux values (<linux/in.h>, <linux/in6.h>).
IP_PKTINFO: int = getattr(socket, "IP_PKTINFO", 8)
IPV6_RECVPKTINFO: int = getattr(socket, "IPV6_RECVPKTINFO", 49)
IPV6_PKTINFO: int = getattr(socket, "IPV6_PKTINFO", 50)

_IN_PKTINFO = struct.Struct("=i4s4s")  # ifindex, spec_dst, addr
_IN6_PKTINFO = struct.Struct("=16si")  # addr, ifindex
_CMSG_SPACE = socket.CMSG_SPACE(max(_IN_PKTINFO.size, _IN6_PKTINFO.size))
MAX_DATAGRAM = 65535


def udp_reply_cmsg(
    family: int, ancdata: list[tuple[int, int, bytes]]
) -> list[tuple[int, int, bytes]]:
    """The ancillary data that makes a reply leave from the request's destination address."""
    for level, ctype, data in ancdata:
        if family == socket.AF_INET and level == socket.IPPROTO_IP and ctype == IP_PKTINFO:
            _ifindex, _spec, dst = _IN_PKTINFO.unpack(data[: _IN_PKTINFO.size])
            # ifindex 0: let routing pick the interface; spec_dst: the source to use.
            return [(socket.IPPROTO_IP, IP_PKTINFO, _IN_PKTINFO.pack(0, dst, bytes(4)))]
        if family == socket.AF_INET6 and level == socket.IPPROTO_IPV6 and ctype == IPV6_PKTINFO:
            dst6, ifindex = _IN6_PKTINFO.unpack(data[: _IN6_PKTINFO.size])
            return [(socket.IPPROTO_IPV6, IPV6_PKTINFO, _IN6_PKTINFO.pack(dst6, ifindex))]
    return []


def _udp_socket(family: int, port: int) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVPKTINFO, 1)
        sock.bind(("::", port))
    else:
        sock.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
        sock.bind(("0.0.0.0", port))
    sock.setblocking(False)
    return sock


def _tcp_socket(family: int, port: int) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(("::", port))
    else:
        sock.bind(("0.0.0.0", port))
    sock.listen(128)
    sock.setblocking(False)
    return sock


class Responder:
    def __init__(self, name: str, port: int) -> None:
        self.name = name.encode()
        self.port = port
        self.udp: list[socket.socket] = []
        self.tcp: list[socket.socket] = []
        self.families: list[int] = [socket.AF_INET]
        if socket.has_ipv6:
            self.families.append(socket.AF_INET6)

    def _on_datagram(self, sock: socket.socket) -> None:
        # Drain everything that is queued; the socket is non-blocking.
        for _ in range(256):
            try:
                data, ancdata, _flags, peer = sock.recvmsg(MAX_DATAGRAM, _CMSG_SPACE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                continue  # e.g. a queued ICMP error; nothing to answer
            reply = self.name + b" " + data
            cmsg = udp_reply_cmsg(sock.family, ancdata)
            try:
                sock.sendmsg([reply], cmsg, 0, peer)
            except OSError as exc:
                print(f"reply to {peer} failed: {exc}", file=sys.stderr, flush=True)

    async def _on_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        try:
            while line := await reader.readline():
                writer.write(self.name + b" " + line)
                await writer.drain()
        except (ConnectionError, asyncio.LimitOverrunError, ValueError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def serve(self) -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        servers: list[asyncio.Server] = []
        for family in self.families:
            try:
                udp = _udp_socket(family, self.port)
                tcp = _tcp_socket(family, self.port)
            except OSError as exc:
                if family == socket.AF_INET6:  # no IPv6 in this namespace: serve IPv4 only
                    print(f"IPv6 unavailable: {exc}", file=sys.stderr, flush=True)
                    continue
                raise
            self.udp.append(udp)
            self.tcp.append(tcp)
            loop.add_reader(udp.fileno(), self._on_datagram, udp)
            servers.append(await asyncio.start_server(self._on_connection, sock=tcp))
        print(f"ready {self.name.decode()} port {self.port}", flush=True)
        await stop.wait()
        for udp in self.udp:
            loop.remove_reader(udp.fileno())
            udp.close()
        for server in servers:
            server.close()
        for server in servers:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(server.wait_closed(), 1.0)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m haagent.lab.responder", description=__doc__)
    parser.add_argument("--name", required=True, help="name put in front of every reply")
    parser.add_argument("--port", type=int, default=7000, help="UDP and TCP port (7000)")
    args = parser.parse_args(argv)
    asyncio.run(Responder(args.name, args.port).serve())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

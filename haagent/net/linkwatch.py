"""Carrier of the VIPs' interfaces, from rtnetlink link events: a holder whose link is gone
cannot serve, so it should release at once instead of waiting for its lease deadline.

One thread reads RTM_NEWLINK / RTM_DELLINK from the kernel's link multicast group and reports
a change of "up" (administratively up *and* carrier: IFF_UP and IFF_LOWER_UP) for the watched
interfaces only. It decides nothing; the agent's core turns the report into eligibility.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from haagent.net.addresses import _IFINFOMSG, IFF_UP, RTM_NEWLINK, _attrs, _messages

log = logging.getLogger("haagent.net")

RTMGRP_LINK = 1
RTM_DELLINK = 17
IFLA_IFNAME = 3
IFF_LOWER_UP = 0x10000


@dataclass(frozen=True)
class LinkChanged:
    ifname: str
    up: bool  # administratively up and with carrier
    reason: str  # "eth0 lost its carrier", for the log and the member record


def link_up(ifname: str, sys_class_net: Path = Path("/sys/class/net")) -> bool | None:
    """Is ``ifname`` up with carrier now (None: no such interface)? Read from sysfs, which
    shows the calling process's network namespace."""
    base = sys_class_net / ifname
    try:
        flags = int((base / "flags").read_text().strip(), 16)
        carrier = (base / "carrier").read_text().strip() == "1" if flags & IFF_UP else False
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return False  # "carrier" is unreadable (EINVAL) while the interface is down
    return bool(flags & IFF_UP) and carrier


def parse_link_messages(data: bytes) -> list[tuple[str, bool]]:
    """(interface name, up) of every RTM_NEWLINK / RTM_DELLINK in one netlink datagram."""
    out: list[tuple[str, bool]] = []
    for kind, _, _, body in _messages(data):
        if kind not in (RTM_NEWLINK, RTM_DELLINK) or len(body) < _IFINFOMSG.size:
            continue
        flags = _IFINFOMSG.unpack_from(body)[3]
        name = _attrs(body, _IFINFOMSG.size).get(IFLA_IFNAME)
        if name is not None:
            up = kind == RTM_NEWLINK and bool(flags & IFF_UP) and bool(flags & IFF_LOWER_UP)
            out.append((name.split(b"\0", 1)[0].decode("utf-8", "replace"), up))
    return out


class LinkWatcher:
    """Reports :class:`LinkChanged` through ``sink`` when a watched interface goes up or down."""

    def __init__(self, ifnames: Iterable[str], sink: Callable[[LinkChanged], None]) -> None:
        self._sink = sink
        self._state: dict[str, bool | None] = {n: link_up(n) for n in sorted(set(ifnames))}
        self._stop = threading.Event()
        self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
        self._sock.bind((0, RTMGRP_LINK))
        self._sock.settimeout(0.25)  # stop() is seen within this
        self._thread = threading.Thread(target=self._run, name="haagent-links", daemon=True)

    def initial(self) -> dict[str, bool | None]:
        return dict(self._state)

    def watch(self, ifnames: Iterable[str]) -> dict[str, bool | None]:
        """Watch these interfaces too (a reload); the state of the ones new to the watch."""
        added = {n: link_up(n) for n in sorted(set(ifnames) - self._state.keys())}
        self._state.update(added)  # one dict update: the thread sees all or none of it
        return added

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=1.0)
        self._sock.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data = self._sock.recv(65536)
            except TimeoutError:
                continue
            except OSError as exc:
                if self._stop.is_set():
                    return
                # ENOBUFS: events were dropped; read the truth again instead of guessing.
                log.warning("link events: %s; re-reading the interfaces", exc.strerror or exc)
                for name in list(self._state):  # watch() may add to it meanwhile
                    self._report(name, link_up(name))
                continue
            for name, up in parse_link_messages(data):
                if name in self._state:
                    self._report(name, up)

    def _report(self, name: str, up: bool | None) -> None:
        now = bool(up)
        if self._state.get(name) == now:
            return
        self._state[name] = now
        reason = f"{name} has its carrier back" if now else f"{name} lost its carrier"
        self._sink(LinkChanged(name, now, reason))

"""The lab's one shared type: a namespace with its interface into the switch.

Its own module so that ``topology`` (which builds the lab) and ``etcd`` (whose members are
nodes of it) can both name it without importing each other.
"""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address

IFNAME = "eth0"  # every node's one interface into the switch


@dataclass(frozen=True)
class Node:
    """One namespace of the lab with its single interface into the switch."""

    role: str
    netns: str
    ipv4: IPv4Address
    ipv6: IPv6Address
    ifname: str = IFNAME

    @property
    def kind(self) -> str:
        if self.role == "cl":
            return "client"
        if self.role.startswith("etcd"):
            return "etcd"
        return "host"

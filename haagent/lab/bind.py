"""Bind addresses from a shell as the agent does: marked as haagent's (haagent/addrmark.py).

``python -m haagent.lab.bind IFNAME ADDRESS/PREFIX...`` (or the addresses one per line on
standard input), run inside a lab namespace. Lab tests use it for "an address an earlier run
left bound": ``ip address add`` cannot set the mark with Debian 12's iproute2 (6.1), and an
unmarked address is the host's own, which haagent refuses to touch.
"""

from __future__ import annotations

import sys
from ipaddress import ip_interface

from haagent.net.addresses import AddressManager, NetError


def main(argv: list[str]) -> int:
    if not argv:
        print("usage: python -m haagent.lab.bind IFNAME [ADDRESS/PREFIX ...]", file=sys.stderr)
        return 2
    ifname, addresses = argv[0], argv[1:] or sys.stdin.read().split()
    try:
        with AddressManager() as net:
            for address in addresses:
                iface = ip_interface(address)
                net.bind(ifname, iface)
    except (NetError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

"""Which Linux capabilities this process has: the agent refuses to start without its two."""

from __future__ import annotations

from pathlib import Path

# linux/capability.h
CAP_NET_ADMIN = 12
CAP_NET_RAW = 13

NEEDED = {
    CAP_NET_ADMIN: ("CAP_NET_ADMIN", "bind and remove addresses, create vmac links"),
    CAP_NET_RAW: ("CAP_NET_RAW", "send gratuitous ARP and neighbour advertisements"),
}


def effective(status: str) -> int | None:
    """The CapEff mask from the text of /proc/<pid>/status; None if it is not there."""
    for line in status.splitlines():
        if line.startswith("CapEff:"):
            try:
                return int(line.split(":", 1)[1].strip(), 16)
            except ValueError:
                return None
    return None


def missing(mask: int) -> list[str]:
    """One line per needed capability absent from ``mask``, naming what it is for."""
    return [f"{name} ({why})" for bit, (name, why) in NEEDED.items() if not mask >> bit & 1]


def check(status_file: Path = Path("/proc/self/status")) -> str | None:
    """None when every needed capability is effective, else the one-line error to show."""
    try:
        mask = effective(status_file.read_text())
    except OSError:
        return None  # no procfs: nothing to tell; the first bind says it precisely
    if mask is None:
        return None
    lacking = missing(mask)
    if not lacking:
        return None
    return (
        f"missing capability {', '.join(lacking)}: run haagent as root, or grant it with "
        "AmbientCapabilities=CAP_NET_ADMIN CAP_NET_RAW in its systemd unit"
    )

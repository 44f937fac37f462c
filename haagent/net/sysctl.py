"""Per-interface network sysctls (``/proc/sys/net/{ipv4,ipv6}/conf/<ifname>/<key>``).

Paths are built from parts, never from a dotted name: interface names may contain dots
(``vmac4.12``), which ``sysctl(8)`` would read as separators. ``/proc/sys/net`` shows the
network namespace of the calling thread, so these functions act on the namespace the
caller is in, like the rest of ``haagent.net``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from haagent.net.addresses import NetError

Proto = Literal["ipv4", "ipv6"]
PROC_SYS_NET = Path("/proc/sys/net")


def conf_path(proto: Proto, ifname: str, key: str) -> Path:
    """``/proc/sys/net/<proto>/conf/<ifname>/<key>``; refuses names that escape that dir."""
    for part in (ifname, key):
        if not part or "/" in part or part in (".", ".."):
            raise NetError(f"bad sysctl path component {part!r}")
    return PROC_SYS_NET / proto / "conf" / ifname / key


def get_conf(proto: Proto, ifname: str, key: str) -> int:
    """The integer value of a per-interface sysctl; NetError if it cannot be read."""
    path = conf_path(proto, ifname, key)
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError) as exc:
        raise NetError(f"cannot read net.{proto}.conf.{ifname}.{key}: {exc}") from exc


def set_conf(proto: Proto, ifname: str, key: str, value: int) -> int:
    """Set a per-interface sysctl; returns the previous value. Writes only on change."""
    old = get_conf(proto, ifname, key)
    if old != value:
        path = conf_path(proto, ifname, key)
        try:
            path.write_text(f"{value}\n")
        except OSError as exc:
            raise NetError(
                f"cannot set net.{proto}.conf.{ifname}.{key}={value}: {exc.strerror or exc}"
            ) from exc
    return old

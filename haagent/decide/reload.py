"""A new configuration as a difference: which VIPs are added, removed, changed or untouched.

The seam for reload (SIGHUP): the agent releases removed and changed VIPs like any VIP that
becomes ineligible, and adds runtimes for new and changed ones; unchanged VIPs keep their
election, their health state and their address.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from haagent.config import VipConfig


@dataclass(frozen=True)
class VipDiff:
    added: tuple[str, ...]
    removed: tuple[str, ...]
    changed: tuple[str, ...]  # same name, other address, interface, mode, checks, …
    unchanged: tuple[str, ...]

    @property
    def empty(self) -> bool:
        return not (self.added or self.removed or self.changed)


def diff_vips(old: Iterable[VipConfig], new: Iterable[VipConfig]) -> VipDiff:
    before = {v.name: v for v in old}
    after = {v.name: v for v in new}
    return VipDiff(
        added=tuple(sorted(after.keys() - before.keys())),
        removed=tuple(sorted(before.keys() - after.keys())),
        changed=tuple(sorted(n for n in before.keys() & after.keys() if before[n] != after[n])),
        unchanged=tuple(sorted(n for n in before.keys() & after.keys() if before[n] == after[n])),
    )

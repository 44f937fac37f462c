"""A new configuration as a difference: what a reload (SIGHUP) does to each VIP.

- **unchanged**: not touched at all: its election, health state and address stay.
- **updated**: the same address in the same place, other settings (checks, hooks,
  announcement, hold-down, …): the new settings take effect in place, with no release.
- **moved**: another address, interface or layer-2 mode: released like a VIP that became
  ineligible (unbind, then resign), then elected anew with the new settings.
- **added** join, **removed** are released and then forgotten.

Settings the running agent cannot change without a new lease or a new etcd connection make
the whole reload refused (:func:`needs_restart`), so that what is in force is always exactly
one file's content (the member record's ``config_digest`` says which).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from haagent.config import Config, VipConfig

# What makes a VIP another VIP: where and how its addresses are answered for. A changed
# address list is a move too: released whole under the old list, then elected anew, so that no
# address of the old list is left behind or taken over without its election.
PLACE_FIELDS = ("address", "extra_addresses", "interface", "vmac", "vrid", "bind")
# Config sections a reload cannot apply: the etcd connection, the lease, the identity and the
# metrics listener.
RESTART_FIELDS = ("cluster", "node", "etcd", "lease", "metrics", "liveness")


@dataclass(frozen=True)
class VipDiff:
    added: tuple[str, ...]
    removed: tuple[str, ...]
    moved: tuple[str, ...]  # same name, another address, interface or mode
    updated: tuple[str, ...]  # same name and place, other settings
    unchanged: tuple[str, ...]

    @property
    def empty(self) -> bool:
        return not (self.added or self.removed or self.moved or self.updated)

    @property
    def changed(self) -> tuple[str, ...]:
        return tuple(sorted(self.moved + self.updated))

    def summary(self) -> str:
        parts = [
            f"{len(names)} {what}" + (f" ({', '.join(names)})" if 0 < len(names) <= 5 else "")
            for what, names in (
                ("added", self.added),
                ("removed", self.removed),
                ("moved", self.moved),
                ("updated", self.updated),
            )
        ]
        return ", ".join(parts) + f", {len(self.unchanged)} unchanged"


def _moves(old: VipConfig, new: VipConfig) -> bool:
    return any(getattr(old, f) != getattr(new, f) for f in PLACE_FIELDS)


def diff_vips(old: Iterable[VipConfig], new: Iterable[VipConfig]) -> VipDiff:
    before = {v.name: v for v in old}
    after = {v.name: v for v in new}
    common = sorted(before.keys() & after.keys())
    return VipDiff(
        added=tuple(sorted(after.keys() - before.keys())),
        removed=tuple(sorted(before.keys() - after.keys())),
        moved=tuple(n for n in common if _moves(before[n], after[n])),
        updated=tuple(
            n for n in common if before[n] != after[n] and not _moves(before[n], after[n])
        ),
        unchanged=tuple(n for n in common if before[n] == after[n]),
    )


def needs_restart(old: Config, new: Config) -> list[str]:
    """The sections of ``new`` that differ from ``old`` and only a restart can apply."""
    return [f for f in RESTART_FIELDS if getattr(old, f) != getattr(new, f)]

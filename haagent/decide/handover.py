"""Break before make: may a node that just won a VIP's key bind its address yet?

In every handover haagent makes itself, the old holder removes the address before the key
goes: it resigns (and says so in a release record written in the same transaction), its
lease is revoked after its addresses are removed (graceful stop, the fence), or its lease
expires after its own deadline made it unbind. A key can also go because someone else wrote
to it (``etcdctl del``, garbage over a live key, a record naming another node): then an old
holder may still have the address for as long as it takes its watch to tell it. The winner
binds only once every node it saw holding the key since is known not to have the address any
more (docs/safety.md, "Handover").
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping

from haagent.cluster.schema import Holder, MemberRecord, Released
from haagent.decide.decision import Decision, no, yes


def gone(
    holder: Holder,
    vip: str,
    *,
    released: Released | None,
    gone_leases: Collection[int],
    members: Mapping[str, MemberRecord],
) -> str | None:
    """Why ``holder`` can no longer have ``vip``'s address, or None if it may still.

    - its release record vouches for exactly that key;
    - etcd said its lease is gone (an agent unbinds before its lease can expire);
    - its live member record does not list the VIP: an agent binds only VIPs of its own
      config, and publishes that list on the lease the key names.
    """
    if released is not None and released.vouches_for(holder):
        return f"{holder.node} confirmed it removed the address"
    if holder.lease in gone_leases:
        return f"the lease of {holder.node} ({holder.lease:x}) is gone"
    m = members.get(holder.node)
    if m is not None and m.lease == holder.lease and vip not in m.vips:
        return f"{holder.node} is not configured for {vip}: it never had the address"
    return None


def may_bind(waiting_for: Iterable[Holder]) -> Decision:
    """``waiting_for``: the earlier holders not yet known to be gone (see :func:`gone`)."""
    left = sorted(waiting_for, key=lambda h: h.node)
    if not left:
        return yes("every earlier holder is known to have let go")
    who = ", ".join(f"{h.node} (lease {h.lease:x})" for h in left)
    return no(f"{who} may still have the address: waiting for a release record or the lease's end")

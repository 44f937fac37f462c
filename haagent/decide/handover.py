"""Break before make: may a node that just won a VIP's key bind its address yet?

In every handover haagent makes itself, the old holder removes the address before the key
goes: it resigns (and says so in a release record written in the same transaction), its
lease is revoked after its addresses are removed (graceful stop, the fence), or its lease
expires after its own deadline made it unbind. A key can also go because someone else wrote
to it (``etcdctl del``, garbage over a live key): then the old holder may still have the
address for as long as it takes its watch to tell it. The winner binds only once the
previous holder confirmed its release or its lease is gone (docs/safety.md, "Handover").
"""

from __future__ import annotations

from haagent.cluster.schema import Holder, Released
from haagent.decide.decision import Decision, no, yes


def may_bind(
    predecessor: Holder | None, released: Released | None, lease_gone: bool | None
) -> Decision:
    """``predecessor``: the last other node this one saw holding the key, not yet known to be
    gone; ``released``: the VIP's release record; ``lease_gone``: what etcd last said of the
    predecessor's lease (None: not asked yet)."""
    if predecessor is None:
        return yes("no other holder seen before")
    who = f"{predecessor.node} (lease {predecessor.lease:x})"
    if released is not None and released.vouches_for(predecessor):
        return yes(f"{predecessor.node} confirmed it removed the address")
    if lease_gone is True:
        return yes(f"the lease of {who} is gone")
    if lease_gone is None:
        return no(f"asking etcd whether the lease of {who} still lives")
    return no(f"{who} may still have the address: its lease lives and it has not confirmed")

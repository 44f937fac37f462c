"""Start-up: adopt the previous run's lease? Keep an address found bound?"""

from __future__ import annotations

from haagent.cluster.schema import Holder, MemberRecord
from haagent.decide.decision import Decision, no, yes


def adopt_lease(previous: int | None, member: MemberRecord | None) -> Decision:
    """Try to renew the lease this host wrote down in its last run (yes), or grant a new one.

    Adoption lets a restarted agent keep its VIPs without a failover. Only a lease this host
    wrote down itself is adopted, and only if etcd still has our member key on it, so a second
    host misconfigured with the same node name never shares our lease. Whether the lease is
    still alive is the keepalive's answer, not this decision's.
    """
    if previous is None:
        return no("no lease written down by a previous run")
    if member is None:
        return no(f"previous lease {previous:x}: no member record of this node in etcd")
    if member.lease != previous:
        return no(f"previous lease {previous:x}: the member record is on lease {member.lease:x}")
    return yes(f"previous lease {previous:x} still carries this node's member record")


def keep_bound_address(holder: Holder | None, node: str, lease_id: int) -> Decision:
    """A configured VIP address is bound on this host at start: keep it only if etcd says
    this node holds the VIP on the lease it now uses (an adopted one)."""
    if holder is not None and holder.node == node and holder.lease == lease_id:
        return yes("etcd says this node holds it")
    who = "nobody" if holder is None else f"{holder.node} (lease {holder.lease:x})"
    return no(f"etcd says it is held by {who}")

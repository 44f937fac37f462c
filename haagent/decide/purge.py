"""Delete a holder key that no haagent wrote?"""

from __future__ import annotations

from haagent.cluster.schema import Holder
from haagent.decide.decision import Decision, no, yes


def purge_holder(holder: Holder | None, purged_revision: int | None) -> Decision:
    """Should this agent delete ``holder``'s key (compared on its create_revision)?

    A key that cannot be decoded, or that hangs on no lease (written by hand), would block the
    VIP forever: nobody can create the key while it exists, and no lease expiry will ever
    delete it. No haagent writes such a key, so any agent that sees one deletes exactly that
    key and the election proceeds. A well-formed key on a live lease naming an unknown node
    is respected: it disappears with its lease like any other, and so is a record of a newer
    schema version on a live lease — a newer haagent holds the VIP during a rolling upgrade,
    and deleting its key would make two versions fight over it (docs/keys.md).
    ``purged_revision`` is the key this agent already deleted, so one bad key costs one
    delete per agent.
    """
    if holder is None:
        return no("key absent")
    if holder.readable and holder.lease != 0:
        return no(f"held by {holder.node} on lease {holder.lease:x}")
    if holder.newer and holder.lease != 0:
        return no(f"written by a newer haagent on live lease {holder.lease:x}: respected")
    why = "unreadable value" if not holder.readable else "attached to no lease"
    if purged_revision == holder.create_revision:
        return no(f"{why}; deleted already")
    return yes(why)

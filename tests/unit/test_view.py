"""ClusterView: immutable, moved forward by batches of watch changes."""

from __future__ import annotations

import pytest

from haagent.cluster.schema import HEALTHY, Holder, MemberRecord, Request
from haagent.cluster.view import ClusterView, HolderChange, MemberChange, RequestChange


def m(node: str) -> MemberRecord:
    return MemberRecord(node, None, "0", 0.0, "d", 1, ("v",), health={"v": HEALTHY})


def test_apply_returns_a_new_view_and_leaves_the_old_one_alone():
    v1 = ClusterView.of(5, holders={"v": Holder("h1", 1, 3)})
    v2 = v1.apply(
        [
            HolderChange("v", None, 6),
            MemberChange("h2", m("h2"), 7),
            RequestChange("v", Request("move", "h2"), 8),
        ]
    )
    assert v1.holders == {"v": Holder("h1", 1, 3)} and v1.revision == 5
    assert v2.holders == {} and v2.members == {"h2": m("h2")} and v2.revision == 8
    assert v2.requests == {"v": Request("move", "h2")}
    with pytest.raises(TypeError):
        v2.holders["x"] = Holder("h1", 1, 3)  # type: ignore[index]


def test_untouched_mappings_are_shared_not_copied():
    v1 = ClusterView.of(5, members={"h1": m("h1")})
    v2 = v1.apply([HolderChange("v", Holder("h1", 1, 6), 6)])
    assert v2.members is v1.members
    assert v1.apply([]) is v1


def test_healthy_members_in_stable_order():
    v = ClusterView.of(1, members={"h2": m("h2"), "h1": m("h1")})
    assert v.healthy_members("v") == ["h1", "h2"]
    assert v.health_of("h1", "v") == HEALTHY and v.health_of("h9", "v") is None

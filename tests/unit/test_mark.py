"""Which addresses are haagent's (haagent/addrmark.py): pure rules, no netlink."""

from __future__ import annotations

import pytest

from haagent.addrmark import PROTO, kernel_marks, owned


@pytest.mark.parametrize(
    ("release", "marks"),
    [
        ("6.1.0-28-amd64", True),
        ("6.18.44-fc-v1045", True),
        ("7.0.1", True),
        ("6.0.19", False),
        ("5.15.0-91-generic", False),
        ("4.18.0-553.el8_10.x86_64", False),
        ("garbage", False),
    ],
)
def test_kernel_marks_from_release(release: str, marks: bool) -> None:
    assert kernel_marks(release) is marks


def test_owned_needs_the_exact_prefix_and_the_mark() -> None:
    assert owned(32, PROTO, 32, marks=True)
    assert not owned(24, PROTO, 32, marks=True)  # another prefix: not what haagent binds
    assert not owned(32, 0, 32, marks=True)  # unmarked: the host's own, or another tool's
    assert not owned(32, 3, 32, marks=True)  # the kernel's (link-local)


def test_without_marks_the_exact_prefix_is_all_there_is() -> None:
    assert owned(32, 0, 32, marks=False)
    assert not owned(24, 0, 32, marks=False)

"""The answer every pure decision gives: yes or no, and why."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Decision:
    yes: bool
    reason: str

    def __bool__(self) -> bool:
        # Deliberately not truthy: ``if decide(...)`` would read as "if there is a decision".
        raise TypeError("use Decision.yes, not the Decision itself, in a condition")


def yes(reason: str) -> Decision:
    return Decision(True, reason)


def no(reason: str) -> Decision:
    return Decision(False, reason)

"""Bounded polling: the one wait helper of the lab and its tests.

:func:`wait_until` is for waits whose running out is a failure: it raises
:class:`WaitTimeout` naming what was awaited, for how long, and the last value seen.
:func:`poll_until` is for waits whose running out is an outcome (say, "no failover"): it
returns the last value, truthy or not. Both always call ``pred`` at least once, once more at
the deadline, and never sleep past it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class WaitTimeout(TimeoutError):
    """A bounded wait ran out before what it waited for happened."""


def poll_until(pred: Callable[[], T], timeout: float, interval: float = 0.05) -> T:
    """Call ``pred`` every ``interval`` s until it returns something truthy or ``timeout`` s
    have passed; its last value either way."""
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        left = deadline - time.monotonic()
        if value or left <= 0:
            return value
        time.sleep(min(interval, left))


def wait_until(
    pred: Callable[[], T | None],
    timeout: float,
    interval: float = 0.05,
    *,
    what: str,
    detail: Callable[[], object] | None = None,
) -> T:
    """Like :func:`poll_until`, but running out raises :class:`WaitTimeout`: the value
    returned is always truthy (never None).

    ``what`` names the awaited event in the message ("h2 to hold 198.51.100.200");
    ``detail``, called only on a timeout, adds context to it (agent logs, say).
    """
    value = poll_until(pred, timeout, interval)
    if value:
        return value
    message = f"timed out after {timeout:g}s waiting for {what}"
    if value is not None and not isinstance(value, bool):
        message += f" (last value: {value!r})"
    if detail is not None:
        try:
            message += f"\n{detail()}"
        except Exception as exc:  # the context must not hide the timeout
            message += f"\n(no detail: {type(exc).__name__}: {exc})"
    raise WaitTimeout(message)

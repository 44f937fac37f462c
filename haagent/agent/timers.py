"""Keyed one-shot timers on a monotonic clock passed in by the caller (no thread, no sleep).

Setting a key again replaces its timer, and cancelling is O(1): a dict maps each key to its
live entry and the heap drops replaced entries lazily when they surface.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(order=True)
class _Entry:
    when: float
    seq: int
    key: str = field(compare=False)
    fn: Callable[[], None] = field(compare=False)


class Timers:
    def __init__(self) -> None:
        self._heap: list[_Entry] = []
        self._live: dict[str, _Entry] = {}
        self._seq = itertools.count()

    def set(self, key: str, when: float, fn: Callable[[], None]) -> None:
        entry = _Entry(when, next(self._seq), key, fn)
        self._live[key] = entry
        heapq.heappush(self._heap, entry)

    def cancel(self, key: str) -> None:
        self._live.pop(key, None)

    def pending(self, key: str) -> bool:
        return key in self._live

    def next_at(self) -> float | None:
        self._drop_dead()
        return self._heap[0].when if self._heap else None

    def pop_due(self, now: float) -> list[Callable[[], None]]:
        """Remove and return the callbacks of every timer due at ``now``, earliest first."""
        due: list[Callable[[], None]] = []
        while True:
            self._drop_dead()
            if not self._heap or self._heap[0].when > now:
                return due
            entry = heapq.heappop(self._heap)
            del self._live[entry.key]
            due.append(entry.fn)

    def _drop_dead(self) -> None:
        while self._heap and self._live.get(self._heap[0].key) is not self._heap[0]:
            heapq.heappop(self._heap)

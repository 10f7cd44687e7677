"""A bounded, thread-safe memo: the hardware cost caches a search shares between its worker threads."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

V = TypeVar("V")


class LockedLRU(Generic[V]):
    """Least-recently-used memo of at most ``size`` entries; every read and write holds one lock (a value is
    computed outside it, so two threads may compute the same entry once each; the memo keeps one)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._d: OrderedDict[Hashable, V] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    def get(self, key: Hashable) -> V | None:
        with self._lock:
            v = self._d.get(key)
            if v is None:
                self.misses += 1
            else:
                self.hits += 1
                self._d.move_to_end(key)
            return v

    def put(self, key: Hashable, value: V) -> V:
        with self._lock:
            self._d[key] = value
            self._d.move_to_end(key)
            while len(self._d) > self.size:
                self._d.popitem(last=False)
        return value

    def get_or(self, key: Hashable, compute: Callable[[], V]) -> V:
        """The memo's value for ``key``, else ``compute()`` stored."""
        v = self.get(key)
        return self.put(key, compute()) if v is None else v

    def __len__(self) -> int:
        with self._lock:
            return len(self._d)

    def clear(self) -> None:
        with self._lock:
            self._d.clear()

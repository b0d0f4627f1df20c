"""A least-recently-used cache: the one the server keeps its pinned models, normalized splits and evaluated
outputs in."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class LruCache(Generic[K, V]):
    """At most `size` entries (0 keeps none), the least recently used dropped first; thread-safe.

    `on_evict(key, value)` hears of every entry dropped to make room, after the cache's lock is released, so it
    may log or call back into the cache.
    """

    def __init__(self, size: int, on_evict: Callable[[K, V], None] | None = None) -> None:
        self.size = max(size, 0)
        self.on_evict = on_evict
        self._entries: OrderedDict[K, V] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: K) -> V | None:
        """The entry for `key` (now the most recently used), or None."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
            return entry

    def put(self, key: K, value: V) -> None:
        with self._lock:
            self._entries[key] = value
            self._entries.move_to_end(key)
            evicted = [self._entries.popitem(last=False) for _ in range(len(self._entries) - self.size)]
        if self.on_evict is not None:
            for old_key, old_value in evicted:
                self.on_evict(old_key, old_value)

    def discard(self, key: K, value: V) -> None:
        """Drop `key` if it still holds `value` (another thread may have put a newer one meanwhile)."""
        with self._lock:
            if self._entries.get(key) is value:
                del self._entries[key]

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def keys(self) -> list[K]:
        """The keys, least recently used first."""
        with self._lock:
            return list(self._entries)

"""The server's least-recently-used cache (inference/lru.py): pinned models, normalized splits, evaluated outputs."""

from __future__ import annotations

import threading

from inference.lru import LruCache


def test_the_least_recently_used_entry_goes_first_and_a_get_makes_an_entry_recent():
    evicted: list[tuple[str, int]] = []
    cache: LruCache[str, int] = LruCache(2, on_evict=lambda k, v: evicted.append((k, v)))
    cache.put("a", 1)
    cache.put("b", 2)
    assert cache.get("a") == 1  # "a" is now the most recent: "b" goes next
    cache.put("c", 3)
    assert evicted == [("b", 2)]
    assert cache.get("b") is None and cache.keys() == ["a", "c"]
    cache.put("a", 10)  # replacing an entry evicts nothing
    assert evicted == [("b", 2)] and cache.get("a") == 10 and len(cache) == 2


def test_a_cache_of_size_zero_keeps_nothing_and_says_so():
    evicted: list[str] = []
    cache: LruCache[str, int] = LruCache(0, on_evict=lambda k, v: evicted.append(k))
    cache.put("a", 1)
    assert cache.get("a") is None and evicted == ["a"]


def test_the_eviction_callback_may_use_the_cache_itself():
    """It runs after the lock is released: a callback that reads the cache does not deadlock."""
    seen: list[int] = []
    cache: LruCache[str, int] = LruCache(1)
    cache.on_evict = lambda k, v: seen.append(len(cache))
    done = threading.Event()

    def fill():
        cache.put("a", 1)
        cache.put("b", 2)
        done.set()

    threading.Thread(target=fill, daemon=True).start()
    assert done.wait(5), "put deadlocked in its eviction callback"
    assert seen == [1]

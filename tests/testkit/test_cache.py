"""testkit.cache: the tests' own cache of slow-to-make things."""

from __future__ import annotations

import pickle

import pytest

from testkit.cache import cache_root, cached_pickle


@pytest.fixture(autouse=True)
def empty_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MNIST_TEST_CACHE", str(tmp_path / "cache"))


def test_a_value_is_built_once_and_then_read():
    built = []
    assert cached_pickle("things", "k", lambda: built.append(1) or {"a": 1}) == {"a": 1}
    assert cached_pickle("things", "k", lambda: built.append(1) or {"a": 2}) == {"a": 1}
    assert built == [1]


def test_an_entry_cut_short_is_built_again_not_a_failure_of_every_test_using_it():
    cached_pickle("things", "k", lambda: list(range(1000)))
    entry = cache_root() / "things" / "k.pickle"
    entry.write_bytes(entry.read_bytes()[: entry.stat().st_size // 2])
    assert cached_pickle("things", "k", lambda: ["again"]) == ["again"]
    assert cached_pickle("things", "k", lambda: ["not used"]) == ["again"]


def test_a_value_that_cannot_be_kept_leaves_no_temporary_file():
    with pytest.raises((pickle.PicklingError, AttributeError)):
        cached_pickle("things", "k", lambda: lambda: None)  # a lambda cannot be pickled
    assert list((cache_root() / "things").iterdir()) == []

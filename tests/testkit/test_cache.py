"""testkit.cache: the tests' own cache of slow-to-make things."""

from __future__ import annotations

import pickle

import pytest

from testkit.cache import cache_root, cached_pickle, code_hash


@pytest.fixture(autouse=True)
def empty_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MNIST_TEST_CACHE", str(tmp_path / "cache"))


def test_a_value_is_built_once_and_then_read():
    built = []
    assert cached_pickle("things", "k", lambda: built.append(1) or {"a": 1}) == {"a": 1}
    assert cached_pickle("things", "k", lambda: built.append(1) or {"a": 2}) == {"a": 1}
    assert built == [1]


def test_a_kept_none_is_read_back_not_built_again():
    built = []
    assert cached_pickle("things", "none", lambda: built.append(1)) is None
    assert cached_pickle("things", "none", lambda: built.append(1)) is None
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


def test_the_key_changes_with_the_code_the_library_pins_and_the_extra_key(tmp_path, monkeypatch):
    """What keeps a stale entry (a model trained by older code or libraries) from being used: every input of the
    key changes it. Nothing tested this: a key that left out constraints.txt or the extra key passed the suite."""
    import testkit.cache

    monkeypatch.setattr(testkit.cache, "REPO_ROOT", tmp_path)
    (tmp_path / "pkg").mkdir()
    code, pins = tmp_path / "pkg" / "a.py", tmp_path / "constraints.txt"
    code.write_text("x = 1\n")
    pins.write_text("torch==2.0.0\n")
    key = code_hash(("pkg/*.py",), extra="10")
    assert len(key) == 16 and key == code_hash(("pkg/*.py",), extra="10")
    changed = []
    for change in (
        lambda: code.write_text("x = 2\n"),  # the code
        lambda: (tmp_path / "pkg" / "b.py").write_text(""),  # a new module
        lambda: pins.write_text("torch==2.0.1\n"),  # a library's version
    ):
        change()
        changed.append(code_hash(("pkg/*.py",), extra="10"))
    changed.append(code_hash(("pkg/*.py",), extra="11"))  # the extra key (the test model's epochs)
    assert len({key, *changed}) == 5, changed


def test_two_processes_asking_at_once_build_an_entry_once(tmp_path):
    """`make test` runs two workers, which ask for the same pictures at once on a fresh machine: the second waits
    for the first's entry rather than drawing them all again beside it."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    builds = tmp_path / "builds"
    # Both children ask only once both have imported (a second or more: torch): else the later one could find the
    # entry made and pass without the lock.
    code = f"""
import sys, time
from pathlib import Path
from testkit.cache import cached_pickle
ready = Path({str(tmp_path)!r})
(ready / f"ready-{{sys.argv[1]}}").touch()
deadline = time.monotonic() + 60
while len(list(ready.glob("ready-*"))) < 2 and time.monotonic() < deadline:
    time.sleep(0.01)
def build():
    with open({str(builds)!r}, "a") as f:
        f.write("built\\n")
    time.sleep(1.5)
    return [1, 2, 3]
print(cached_pickle("things", "k", build))
"""
    env = os.environ | {"PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    procs = [
        subprocess.Popen([sys.executable, "-c", code, str(i)], env=env, stdout=subprocess.PIPE, text=True)
        for i in range(2)
    ]
    outs = [p.communicate(timeout=60)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    assert outs == ["[1, 2, 3]\n"] * 2
    assert builds.read_text() == "built\n"

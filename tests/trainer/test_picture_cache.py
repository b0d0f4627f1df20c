"""trainer/picture_cache.py: a run reads the pictures an earlier run drew, only when they are the very same."""

from __future__ import annotations

import os
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from shared.data import load_mnist

from trainer import picture_cache, train
from trainer.config import TrainConfig
from trainer.picture_cache import KEEP, Expected, cached_pictures, entry_name

SPLIT_NAMES = ("neg_x", "neg_kind", "neg_val_x", "neg_val_kind", "typed_x", "typed_y")


def small_config() -> TrainConfig:
    return replace(TrainConfig(), negative_pool=60, typed_pool=20, train_subset=300)


def test_a_second_run_reads_the_pictures_the_first_drew_and_gets_the_same_splits(
    mnist_dir, tmp_path, monkeypatch, capsys
):
    cpu, mnist = torch.device("cpu"), load_mnist(mnist_dir, download=False)
    first = train.load_splits(small_config(), mnist, cpu, eval_subset=200, cache_dir=tmp_path)
    assert "drew 60 training and 140 validation pictures" in capsys.readouterr().out
    assert len(list(tmp_path.glob("pictures-*.npz"))) == 1

    def no_drawing(*args, **kwargs):
        raise AssertionError("drew pictures the cache holds")

    monkeypatch.setattr(train, "make_negatives", no_drawing)
    monkeypatch.setattr(train, "make_typed_digits", no_drawing)
    second = train.load_splits(small_config(), mnist, cpu, eval_subset=200, cache_dir=tmp_path)
    out = capsys.readouterr().out
    assert "read 60 training and 140 validation pictures" in out and "kept by an earlier run" in out
    for name in SPLIT_NAMES:
        assert torch.equal(getattr(first, name), getattr(second, name)), name
        assert getattr(first, name).dtype == getattr(second, name).dtype, name


def test_without_a_cache_folder_every_run_draws_and_nothing_is_kept(mnist_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cpu = torch.device("cpu")
    for _ in range(2):
        train.load_splits(small_config(), load_mnist(mnist_dir, download=False), cpu, eval_subset=200, cache_dir=None)
        assert "drew 60 training" in capsys.readouterr().out
    assert list(tmp_path.rglob("*.npz")) == []


def arrays(seed: int, count: int = 5) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "images": rng.integers(0, 256, (count, 28, 28), dtype=np.uint8),
        "kinds": rng.integers(0, 7, count).astype(np.int64),
    }


EXPECTED = {"images": Expected((5, 28, 28), np.dtype(np.uint8)), "kinds": Expected((5,), np.dtype(np.int64), 7)}


class Drawer:
    """A `draw` for cached_pictures that counts its calls."""

    def __init__(self, seed: int = 0):
        self.seed, self.calls = seed, 0

    def __call__(self) -> dict[str, np.ndarray]:
        self.calls += 1
        return arrays(self.seed)


def test_the_entry_is_named_by_everything_that_decides_the_pictures(monkeypatch):
    digits = np.zeros((4, 28, 28), np.uint8)
    inputs = {"train": digits, "val": digits[:2]}
    name = entry_name({"seed": 0, "negatives": 60}, inputs)
    same = {"val": digits[:2].copy(), "train": digits.copy()}
    assert name == entry_name({"negatives": 60, "seed": 0}, same)  # the same request, another dict order
    assert name == entry_name({"seed": 0, "negatives": 60}, {"train": digits, "val": np.asfortranarray(digits[:2])})
    assert name != entry_name({"seed": 1, "negatives": 60}, inputs)  # another seed
    assert name != entry_name({"seed": 0, "negatives": 61}, inputs)  # another count
    other_digits = digits.copy()
    other_digits[0, 5, 5] = 1
    assert name != entry_name({"seed": 0, "negatives": 60}, {**inputs, "train": other_digits})  # other digits
    # The same pixels split otherwise between the arrays, or under other names, are other inputs.
    assert name != entry_name({"seed": 0, "negatives": 60}, {"train": digits[:3], "val": digits[:3]})
    assert name != entry_name({"seed": 0, "negatives": 60}, {"training": digits, "val": digits[:2]})
    assert name != entry_name({"seed": 0, "negatives": 60}, {})
    monkeypatch.setattr(picture_cache, "source_digest", lambda: "the drawing code or the pipeline changed")
    assert name != entry_name({"seed": 0, "negatives": 60}, inputs)


def test_the_code_digest_covers_the_drawing_code_the_pipeline_and_the_libraries(monkeypatch):
    import cv2

    import shared

    from trainer import negatives

    before = picture_cache.source_digest()
    assert before == picture_cache.source_digest()
    monkeypatch.setattr(cv2, "__version__", "0.0.0")
    assert picture_cache.source_digest() != before
    monkeypatch.undo()
    # Both the drawing code and every module of the image pipeline are read.
    read: list[str] = []
    real_read_bytes = Path.read_bytes
    monkeypatch.setattr(Path, "read_bytes", lambda self: read.append(self.name) or real_read_bytes(self))
    picture_cache.source_digest()
    assert Path(negatives.__file__).name in read
    assert {"image_pipeline.py", "normalize.py", "decode.py"} <= set(read)
    assert len(read) == 1 + len(list(Path(shared.__file__).parent.glob("*.py")))


def test_a_stored_entry_is_read_instead_of_drawn(tmp_path):
    drawer = Drawer()
    drawn, kept = cached_pictures(tmp_path, {"seed": 0}, {}, EXPECTED, drawer)
    again, kept_again = cached_pictures(tmp_path, {"seed": 0}, {}, EXPECTED, drawer)
    assert kept is None and kept_again == tmp_path / entry_name({"seed": 0}, {})
    assert drawer.calls == 1
    for name in EXPECTED:
        assert np.array_equal(drawn[name], again[name]) and again[name].dtype == drawn[name].dtype


def write_npz(path: Path, **stored) -> None:
    assert path.suffix == ".npz"  # else np.savez would add one
    np.savez(path, **stored)


@pytest.mark.parametrize(
    "damage",
    [
        "truncated",
        "a byte flipped",
        "not an npz",
        "empty",
        "another shape",
        "another dtype",
        "a kind out of range",
        "an extra array",
        "an object array",
    ],
)
def test_an_entry_that_is_not_what_the_run_asks_for_is_drawn_again_and_replaced(tmp_path, damage):
    path = tmp_path / entry_name({"seed": 0}, {})
    good = arrays(0)
    cached_pictures(tmp_path, {"seed": 0}, {}, EXPECTED, lambda: good)
    if damage == "truncated":
        path.write_bytes(path.read_bytes()[:200])
    elif damage == "a byte flipped":  # the compressed pictures' CRC no longer holds
        data = bytearray(path.read_bytes())
        data[len(data) // 3] ^= 0xFF
        path.write_bytes(bytes(data))
    elif damage == "not an npz":
        path.write_bytes(b"these are not the pictures")
    elif damage == "empty":
        path.write_bytes(b"")
    elif damage == "another shape":
        write_npz(path, images=good["images"][:4], kinds=good["kinds"][:4])
    elif damage == "another dtype":
        write_npz(path, images=good["images"].astype(np.float32), kinds=good["kinds"])
    elif damage == "a kind out of range":
        write_npz(path, images=good["images"], kinds=good["kinds"] + 7)
    elif damage == "an extra array":
        write_npz(path, images=good["images"], kinds=good["kinds"], labels=good["kinds"])
    elif damage == "an object array":
        write_npz(path, images=np.array([object()] * 5, dtype=object), kinds=good["kinds"])
    drawer = Drawer()
    drawn, kept = cached_pictures(tmp_path, {"seed": 0}, {}, EXPECTED, drawer)
    assert drawer.calls == 1 and kept is None
    assert np.array_equal(drawn["images"], good["images"])
    # Replaced by a whole entry: the next run reads it.
    again, kept = cached_pictures(tmp_path, {"seed": 0}, {}, EXPECTED, drawer)
    assert drawer.calls == 1 and kept == path and np.array_equal(again["kinds"], good["kinds"])


def test_at_most_KEEP_entries_stay_and_the_least_recently_used_go_first(tmp_path):
    names = []
    for seed in range(KEEP):
        cached_pictures(tmp_path, {"seed": seed}, {}, EXPECTED, Drawer(seed))
        names.append(entry_name({"seed": seed}, {}))
        old = (tmp_path / names[-1]).stat().st_mtime
        os.utime(tmp_path / names[-1], (old - 100 + seed, old - 100 + seed))  # in order, a second apart
    # Reading seed 0's entry makes it the most recently used: seed 1's goes when one more is stored.
    _, kept = cached_pictures(tmp_path, {"seed": 0}, {}, EXPECTED, Drawer(0))
    assert kept is not None
    cached_pictures(tmp_path, {"seed": KEEP}, {}, EXPECTED, Drawer(KEEP))
    left = {p.name for p in tmp_path.glob("pictures-*.npz")}
    assert len(left) == KEEP
    assert names[1] not in left and names[0] in left and entry_name({"seed": KEEP}, {}) in left


def test_a_cache_that_cannot_be_written_only_costs_the_drawing(tmp_path, capsys):
    not_a_folder = tmp_path / "cache"
    not_a_folder.write_text("a file where the cache folder would be")
    drawer = Drawer()
    for _ in range(2):
        drawn, kept = cached_pictures(not_a_folder, {"seed": 0}, {}, EXPECTED, drawer)
        assert kept is None and np.array_equal(drawn["kinds"], arrays(0)["kinds"])
    assert drawer.calls == 2
    assert "could not keep the drawn pictures" in capsys.readouterr().out
    assert not_a_folder.read_text() == "a file where the cache folder would be"


def test_an_entry_whose_time_cannot_be_touched_is_still_read(tmp_path, monkeypatch):
    """Another user's entry (written by a container's user, say): reading it cannot mark it as recently used."""
    drawer = Drawer()
    cached_pictures(tmp_path, {"seed": 0}, {}, EXPECTED, drawer)

    def not_yours(*args, **kwargs):
        raise PermissionError("Operation not permitted")

    monkeypatch.setattr(os, "utime", not_yours)
    drawn, kept = cached_pictures(tmp_path, {"seed": 0}, {}, EXPECTED, drawer)
    assert kept is not None and drawer.calls == 1 and np.array_equal(drawn["kinds"], arrays(0)["kinds"])


def test_pruning_passes_over_an_entry_another_process_removed(tmp_path, monkeypatch, capsys):
    assert picture_cache.last_used(tmp_path / "pictures-gone.npz") == 0.0
    for seed in range(KEEP):
        cached_pictures(tmp_path, {"seed": seed}, {}, EXPECTED, Drawer(seed))
    oldest = min(tmp_path.glob("pictures-*.npz"), key=lambda p: p.stat().st_mtime)
    measured = picture_cache.last_used

    def removed_by_another_run_once_listed(path):
        # Between this run's listing of the entries and its pruning, another run prunes the oldest itself.
        used = measured(path)
        if path == oldest:
            path.unlink()
        return used

    monkeypatch.setattr(picture_cache, "last_used", removed_by_another_run_once_listed)
    cached_pictures(tmp_path, {"seed": KEEP}, {}, EXPECTED, Drawer(KEEP))  # stores, then prunes the oldest
    assert not oldest.exists() and len(list(tmp_path.glob("pictures-*.npz"))) == KEEP
    assert "could not keep" not in capsys.readouterr().out  # no failure to report: the entry was stored and pruned
    monkeypatch.setattr(picture_cache, "last_used", measured)
    hits = Drawer(KEEP)
    cached_pictures(tmp_path, {"seed": KEEP}, {}, EXPECTED, hits)
    assert hits.calls == 0, "the new entry was stored"


def test_storing_an_entry_removes_the_part_a_killed_run_left(tmp_path):
    abandoned, live = tmp_path / ".pictures-x.npz.k1ll3d.tmp", tmp_path / ".pictures-y.npz.wr1t1n.tmp"
    for path in (abandoned, live):
        path.write_bytes(b"part of an entry")
    two_hours_ago = time.time() - 7200
    os.utime(abandoned, (two_hours_ago, two_hours_ago))
    cached_pictures(tmp_path, {"seed": 0}, {}, EXPECTED, Drawer(0))
    assert not abandoned.exists() and live.exists()  # the young one may be another run's write in progress

"""trainer/negatives.py: the pictures that are not digits, and the typed digits, as the trainer draws them."""

from __future__ import annotations

import time

import cv2
import numpy as np
import psutil
import pytest

from shared.data import load_mnist
from shared.image_pipeline import ImageRejected, to_mnist_array

from trainer import negatives
from trainer.negatives import KINDS, draw_until, make_negatives, make_typed_digits, on_paper, pipeline_pool


def test_negatives_are_every_kind_as_the_pipeline_makes_them_and_the_same_for_a_seed():
    first, again = make_negatives(60, seed=3), make_negatives(60, seed=3)
    assert first.images.shape == (60, 28, 28)
    assert first.images.dtype.name == "uint8" and (first.images == again.images).all()
    assert sorted(set(first.kinds.tolist())) == list(range(len(KINDS)))
    assert (first.images.reshape(60, -1).max(1) > 100).all()  # ink in every one, as the pipeline leaves it
    assert not (make_negatives(60, seed=4).images == first.images).all()


def test_typed_digits_are_every_digit_in_turn_as_the_pipeline_makes_them_and_the_same_for_a_seed():
    """The positives beside the negatives: digits typed in the negatives' fonts, labelled as the digits they are."""
    first, again = make_typed_digits(40, seed=3), make_typed_digits(40, seed=3)
    assert first.images.shape == (40, 28, 28) and first.images.dtype.name == "uint8"
    assert first.labels.tolist() == [i % 10 for i in range(40)]
    assert (first.images == again.images).all()
    assert (first.images.reshape(40, -1).max(1) > 100).all()
    assert not (make_typed_digits(40, seed=4).images == first.images).all()


def stroke_or_blank(rng: np.random.Generator):
    """A picture for each turn: every third one blank paper (the pipeline rejects it), else a random stroke. Each
    turn takes a draw from `rng`, so a turn drawn that a one-process loop would not draw changes what follows."""

    def picture(turn: int) -> np.ndarray:
        ink = np.zeros((64, 64))
        y0, x0, y1, x1 = rng.integers(8, 56, size=4)
        if turn % 3:
            ink[min(y0, y1) : max(y0, y1) + 10, min(x0, x1) : max(x0, x1) + 4] = 1.0
        return on_paper(ink, rng)

    return picture


def test_the_pipeline_processes_change_nothing_that_is_drawn(monkeypatch):
    """The pipeline's processes get the pictures in small chunks, several in flight, with rejections among them:
    the same pictures, turns and random draws as one process."""
    monkeypatch.setattr(negatives, "CHUNK", 5)
    monkeypatch.setattr(negatives, "IN_FLIGHT", 12)
    alone_rng, pooled_rng = np.random.default_rng(1), np.random.default_rng(1)
    alone = draw_until(40, stroke_or_blank(alone_rng))
    with pipeline_pool(2, negatives.PARALLEL_MIN) as pool:
        assert pool is not None
        pooled = draw_until(40, stroke_or_blank(pooled_rng), pool)
    with pytest.raises(ImageRejected):
        to_mnist_array(stroke_or_blank(np.random.default_rng(0))(0))  # turn 0 is blank: rejected
    assert alone[1].tolist() == [t for t in range(60) if t % 3][:40]  # every third turn skipped
    assert (alone[0] == pooled[0]).all() and (alone[1] == pooled[1]).all()
    assert alone_rng.integers(1 << 30) == pooled_rng.integers(1 << 30)  # no turn drawn beyond the 40th kept one


def test_an_interrupt_ends_the_pipeline_processes_at_once_without_waiting_for_their_work():
    """Ctrl-C while the pictures are drawn: the pool's workers (which ignore SIGINT) are ended, not waited for. A
    shutdown that waited for them was cut short by a second Ctrl-C, and they lived on with the trainer hung joining
    them at exit (a review)."""
    with pytest.raises(KeyboardInterrupt), pipeline_pool(2, negatives.PARALLEL_MIN) as pool:
        assert pool is not None
        running = [pool.submit(time.sleep, 60) for _ in range(2)]
        while not all(f.running() for f in running):
            time.sleep(0.05)
        workers = list(pool._processes.values())  # type: ignore[attr-defined]
        started = time.monotonic()
        raise KeyboardInterrupt
    assert time.monotonic() - started < 10  # not the minute of work in flight
    # Gone, or dead and waiting to be reaped. Not worker.is_alive(): the executor's own thread may reap the process
    # first, and then is_alive() reads a process it can no longer wait for as alive (a CI run).
    for worker in workers:
        deadline = time.monotonic() + 10
        while psutil.pid_exists(worker.pid) and time.monotonic() < deadline:
            try:
                if psutil.Process(worker.pid).status() == psutil.STATUS_ZOMBIE:
                    break
            except psutil.NoSuchProcess:
                break
            time.sleep(0.05)
        else:
            assert not psutil.pid_exists(worker.pid), f"worker {worker.pid} still runs"


def test_a_few_pictures_start_no_processes():
    with pipeline_pool(2, negatives.PARALLEL_MIN - 1) as pool:
        assert pool is None
    with pipeline_pool(1, 10**6) as pool:
        assert pool is None
    assert len(make_negatives(10, seed=0)) == len(make_typed_digits(10, seed=0)) == 10


def test_pipeline_processes_that_fail_cost_the_pool_not_the_run(monkeypatch, mnist_dir, capsys):
    """Processes that cannot start (no shared memory in a container, a calling script without a __main__ guard)
    or die: the trainer draws the same pictures again, from the start, in its own process."""
    from concurrent.futures import Executor
    from concurrent.futures.process import BrokenProcessPool
    from contextlib import nullcontext
    from dataclasses import replace

    import torch

    from trainer import train
    from trainer.config import TrainConfig

    class Broken(Executor):
        def submit(self, fn, /, *args, **kwargs):
            raise BrokenProcessPool("a process terminated abruptly")

    config = replace(TrainConfig(), negative_pool=60, typed_pool=20, train_subset=300)
    cpu = torch.device("cpu")
    monkeypatch.setattr(train, "pipeline_pool", lambda workers, pictures: nullcontext(Broken()))
    redrawn = train.load_splits(config, load_mnist(mnist_dir, download=False), cpu, eval_subset=200, pipeline_workers=2)
    out = capsys.readouterr().out
    assert "a process terminated abruptly" in out and "drawing the pictures again in this process" in out
    monkeypatch.undo()
    alone = train.load_splits(config, load_mnist(mnist_dir, download=False), cpu, eval_subset=200, pipeline_workers=1)
    for name in ("neg_x", "neg_val_x", "neg_val_kind", "typed_x", "typed_y"):
        assert torch.equal(getattr(redrawn, name), getattr(alone, name)), name
    assert len(alone.neg_val_x) == 20 * len(KINDS)  # --eval-subset 200: validation negatives in proportion


def plain_ring(image: np.ndarray) -> bool:
    """Whether a (28, 28) uint8 picture, as the pipeline makes it, is an empty round ring: a zero. One piece of
    ink around one hole, both convex, the hole at least a quarter of the outline's area, no corners."""
    ink = (image > 100).astype(np.uint8)
    pieces, _ = cv2.connectedComponents(ink, connectivity=8)
    contours, hierarchy = cv2.findContours(ink, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_NONE)
    if pieces != 2 or hierarchy is None:
        return False
    outer = [c for c, h in zip(contours, hierarchy[0]) if h[3] < 0]
    holes = [c for c, h in zip(contours, hierarchy[0]) if h[3] >= 0]
    if len(outer) != 1 or len(holes) != 1 or cv2.contourArea(holes[0]) < 0.25 * cv2.contourArea(outer[0]):
        return False

    def convex(contour) -> bool:
        return cv2.contourArea(contour) >= 0.93 * cv2.contourArea(cv2.convexHull(contour))

    corners = len(cv2.approxPolyDP(outer[0], 0.04 * cv2.arcLength(outer[0], True), True))
    return convex(outer[0]) and convex(holes[0]) and corners >= 7


def test_the_negatives_are_never_an_empty_ring_which_is_a_zero():
    """A heptagon or octagon in outline, or a face whose marks the pipeline dropped as specks, is a ring at 28x28:
    users' round zeros were flagged as not digits (docs/not-a-digit.md, stop 28). The shapes and sketches the
    trainer draws are not rings, as the pipeline makes them."""

    def ring_picture(outline) -> np.ndarray:
        ink = np.zeros((96, 96), np.float32)
        negatives._polyline(ink, outline, 5, closed=True)  # drawn as the trainer draws its outlines
        return to_mnist_array(on_paper(ink, np.random.default_rng(0)))

    eighths, sixtieths = np.linspace(0, 2 * np.pi, 8, endpoint=False), np.linspace(0, 2 * np.pi, 60, endpoint=False)
    octagon = 48 + 34 * np.stack([np.cos(eighths), np.sin(eighths)], 1)
    ellipse = 48 + np.stack([28 * np.cos(sixtieths), 38 * np.sin(sixtieths)], 1)
    square = np.array([[14, 14], [82, 14], [82, 82], [14, 82]], np.float64)
    assert plain_ring(ring_picture(octagon)) and plain_ring(ring_picture(ellipse))  # what the test looks for...
    assert not plain_ring(ring_picture(square))  # ...and what it does not
    rng = np.random.default_rng(5)
    for kind in ("shapes", "sketches"):
        rings = 0
        for _ in range(200):
            try:
                rings += plain_ring(to_mnist_array(negatives.draw(kind, rng)))
            except ImageRejected:
                continue
        assert rings <= 1, f"{rings} of 200 {kind} are empty rings"


def test_letters_and_words_stay_upright_while_the_other_negatives_are_turned_at_random():
    import torch

    from trainer.train import UPRIGHT_KINDS, turned_at_random

    assert {KINDS[k] for k in UPRIGHT_KINDS} == {"glyphs", "words"}
    n = 700
    x = torch.rand(n, 1, 28, 28)  # no symmetry: every turn changes a picture
    kinds = torch.arange(n) % len(KINDS)
    out = turned_at_random(x, kinds, torch.Generator().manual_seed(0))
    upright = torch.isin(kinds, torch.tensor(UPRIGHT_KINDS))
    assert torch.equal(out[upright], x[upright])
    # The others: each one of the eight turns and mirror images of its picture, and 7 of 8 not the picture itself.
    for i in torch.nonzero(~upright).flatten().tolist():
        a = x[i, 0]
        turns = [a, a.flip(1), a.flip(0), a.flip(0).flip(1)]
        assert any(torch.equal(out[i, 0], t) or torch.equal(out[i, 0], t.T) for t in turns)
    changed = (out != x).flatten(1).any(1)[~upright].float().mean()
    assert 0.8 < changed < 0.95

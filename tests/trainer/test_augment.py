"""trainer/augment.py: the random changes the network trains on."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from trainer.augment import AugmentConfig, max_3x3, slash_zeros


def test_max_3x3_is_max_pooling_exactly():
    images = torch.rand(5, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    assert torch.equal(max_3x3(images), F.max_pool2d(images, 3, stride=1, padding=1))


def test_a_slash_is_drawn_across_the_zeros_and_nothing_else(mnist):
    """Slashed 0s (Ø) were flagged as no digit 67 times in 80: the trainer writes some of its 0s slashed. Every 0
    chosen keeps its ring and gains a line through its hole, from its top right to its bottom left; no other digit
    changes."""
    x = mnist.train_images[:200].float().div(255).unsqueeze(1)
    y = mnist.train_labels[:200]
    out = slash_zeros(x, y, AugmentConfig(slash_zero_prob=1.0), torch.Generator().manual_seed(0))
    changed = (out != x).flatten(1).any(1)
    assert torch.equal(changed, y == 0) and int((y == 0).sum()) >= 10
    assert bool((out >= x).all())  # drawn over the digit: nothing of it is taken away
    for i in torch.nonzero(y == 0).flatten():
        added = (out[i, 0] - x[i, 0]) > 0.5  # (28, 28)
        ys, xs = torch.nonzero(added, as_tuple=True)
        assert len(ys) >= 8, f"picture {i}: a slash of {len(ys)} pixels"
        upper = ys < ys.float().mean()
        # a "/" : its upper half lies to the right of its lower half
        assert xs[upper].float().mean() > xs[~upper].float().mean(), f"picture {i}"
        assert ys.max() - ys.min() >= 8, f"picture {i}: the slash spans rows {ys.min()}..{ys.max()}"


def test_no_zero_is_slashed_at_a_chance_of_nought_and_about_the_chance_given_otherwise(mnist):
    x = mnist.train_images[:2000].float().div(255).unsqueeze(1)
    y = mnist.train_labels[:2000]
    generator = torch.Generator().manual_seed(1)
    assert torch.equal(slash_zeros(x, y, AugmentConfig(slash_zero_prob=0.0), generator), x)
    changed = (slash_zeros(x, y, AugmentConfig(), generator) != x).flatten(1).any(1)
    share = float(changed.sum()) / float((y == 0).sum())
    assert 0.15 < share < 0.35, share  # the default chance, 0.25, of about 200 zeros


def test_a_blank_zero_gets_no_slash_and_the_dtype_is_kept():
    """A 0 with no ink (no box to draw across) is left blank; a bf16 batch comes back bf16."""
    x = torch.zeros(4, 1, 28, 28)
    y = torch.zeros(4, dtype=torch.long)
    out = slash_zeros(x, y, AugmentConfig(slash_zero_prob=1.0), torch.Generator().manual_seed(0))
    assert torch.equal(out, x)
    half = slash_zeros(x.bfloat16(), y, AugmentConfig(slash_zero_prob=1.0), torch.Generator().manual_seed(0))
    assert half.dtype == torch.bfloat16

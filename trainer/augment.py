"""Batched data augmentation on whole tensors, on whatever device the batch lives on.

Users' drawings pass through shared/image_pipeline.py, which crops, scales to a 20x20 box and centres by mass,
as MNIST was built. What that cannot undo (a slanted or slightly rotated digit, a box that is not quite filled,
a stroke thicker or thinner than MNIST's) the network learns to ignore from these random changes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class AugmentConfig:
    max_rotation_deg: float = 10.0
    max_scale: float = 0.10  # zoom in/out by up to 10 %
    max_shear: float = 0.2  # slant, as x += shear * y
    max_shift_px: float = 2.0
    stroke_prob: float = 0.5  # fraction of images whose strokes get thicker or thinner
    slash_zero_prob: float = 0.25  # fraction of the 0s written slashed (Ø), as programmers and many Europeans do


def random_affine(images: torch.Tensor, cfg: AugmentConfig, generator: torch.Generator) -> torch.Tensor:
    """Rotate, scale, shear and shift each image of a batch (N, 1, H, W) in [0, 1] by its own random amount.

    One affine_grid + grid_sample call for the whole batch: no per-image Python loop.
    """
    n, _, h, w = images.shape
    dev = images.device

    def uniform(limit: float) -> torch.Tensor:  # (N,) in [-limit, limit]
        return (torch.rand(n, generator=generator, device=generator.device) * 2 - 1).mul_(limit).to(dev)

    angle = uniform(math.radians(cfg.max_rotation_deg))
    scale = 1 + uniform(cfg.max_scale)
    shear = uniform(cfg.max_shear)
    shift_x = uniform(cfg.max_shift_px * 2 / w)  # affine_grid works in [-1, 1] coordinates
    shift_y = uniform(cfg.max_shift_px * 2 / h)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    # theta maps output coordinates to input coordinates: (N, 2, 3)
    theta = torch.stack(
        [
            torch.stack([cos, -sin + shear * cos, shift_x], dim=1),
            torch.stack([sin, cos + shear * sin, shift_y], dim=1),
        ],
        dim=1,
    )
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def random_stroke_width(images: torch.Tensor, cfg: AugmentConfig, generator: torch.Generator) -> torch.Tensor:
    """Make the strokes of some images thicker (grey-level dilation) and of others thinner (erosion).

    Half-strength: a full 3x3 dilation at 28x28 would double a typical MNIST stroke, which users do not draw.
    """
    n = images.shape[0]
    choice = torch.rand(n, generator=generator, device=generator.device).to(images.device)
    thicker = (choice < cfg.stroke_prob / 2).view(n, 1, 1, 1)
    thinner = ((choice >= cfg.stroke_prob / 2) & (choice < cfg.stroke_prob)).view(n, 1, 1, 1)
    dilated = max_3x3(images)
    eroded = -max_3x3(-images)
    images = torch.where(thicker, (images + dilated) / 2, images)
    return torch.where(thinner, (images + eroded) / 2, images)


def max_3x3(images: torch.Tensor) -> torch.Tensor:
    """F.max_pool2d(images, 3, stride=1, padding=1), exactly, as two passes of three shifted maxima.

    The same values (a maximum is exact, and the -inf border is what max_pool2d pads with), at a fraction of the
    cost: PyTorch's CPU max-pooling of one-channel 28x28 images took 7 ms per batch of 128, more than the rest
    of the augmentation together; these six elementwise maxima take well under one.
    """
    padded = F.pad(images, (1, 1, 1, 1), value=float("-inf"))  # (N, 1, H + 2, W + 2)
    rows = torch.maximum(torch.maximum(padded[..., :-2], padded[..., 1:-1]), padded[..., 2:])  # (N, 1, H + 2, W)
    return torch.maximum(torch.maximum(rows[..., :-2, :], rows[..., 1:-1, :]), rows[..., 2:, :])  # (N, 1, H, W)


def slash_zeros(
    images: torch.Tensor, labels: torch.Tensor, cfg: AugmentConfig, generator: torch.Generator
) -> torch.Tensor:
    """Draw a slash across some of the 0s of a batch (N, 1, H, W) in [0, 1] with labels (N,): a 0 written as many
    people write it, to tell it from an O. MNIST has almost none, and the not-a-digit class learnt from the
    trainer's crossed-out digits and its theta that a ring with a line through it is no digit: three seeds'
    models flagged 148-182 of 200 slashed 0s. The slash runs from near the ink's top right to near its bottom
    left (past the ring by up to 2.5 px or short of it by 1), a pen of MNIST's width, at a slant of its own; one
    distance-to-segment field for the whole batch, no per-image loop. A 0 with no ink is left as it is.
    """
    n, _, h, w = images.shape
    dev = images.device

    def uniform(lo: float, hi: float) -> torch.Tensor:  # (N, 1, 1) in [lo, hi)
        return (torch.rand(n, generator=generator, device=generator.device) * (hi - lo) + lo).to(dev).view(n, 1, 1)

    chosen = (uniform(0, 1) < cfg.slash_zero_prob) & (labels == 0).view(n, 1, 1)
    ink = images[:, 0] > 0.3  # (N, H, W)
    chosen &= ink.flatten(1).any(1).view(n, 1, 1)
    ys = torch.arange(h, device=dev, dtype=images.dtype).view(1, h, 1)
    xs = torch.arange(w, device=dev, dtype=images.dtype).view(1, 1, w)
    rows, cols = ink.any(2, keepdim=True), ink.any(1, keepdim=True)  # (N, H, 1), (N, 1, W)
    top = torch.where(rows, ys, float(h)).amin(1, keepdim=True)  # (N, 1, 1)
    bottom = torch.where(rows, ys, -1.0).amax(1, keepdim=True)
    left = torch.where(cols, xs, float(w)).amin(2, keepdim=True)
    right = torch.where(cols, xs, -1.0).amax(2, keepdim=True)
    centre = (left + right) / 2
    overshoot = uniform(-1.0, 2.5)  # pixels past the ring, or short of it
    ax, ay = centre + uniform(0.4, 1.0) * (right - centre + overshoot), top - overshoot  # the top end
    bx, by = centre - uniform(0.4, 1.0) * (centre - left + overshoot), bottom + overshoot  # the bottom end
    dx, dy = bx - ax, by - ay
    t = (((xs - ax) * dx + (ys - ay) * dy) / (dx * dx + dy * dy).clamp_min(1e-6)).clamp(0, 1)  # (N, H, W)
    distance = torch.hypot(xs - (ax + t * dx), ys - (ay + t * dy))
    line = (uniform(1.0, 1.8) + 0.5 - distance).clamp(0, 1).to(images.dtype)  # anti-aliased, 2-3.6 px wide
    return torch.where(chosen.unsqueeze(1), torch.maximum(images, line.unsqueeze(1)), images)


def augment(images: torch.Tensor, cfg: AugmentConfig, generator: torch.Generator) -> torch.Tensor:
    """(N, 1, 28, 28) images in [0, 1], ink bright on black -> the same shape, randomly changed."""
    return random_affine(random_stroke_width(images, cfg, generator), cfg, generator)

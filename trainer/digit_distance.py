"""Fit a trained not-digit network's digit distance (shared.model.DigitDistance) on its own training digits.

The eleventh class learns the non-digits the trainer draws; pictures of other kinds (a tangle, an @) can still
land on a digit's side of it. A second sign, independent of what the class learned, is how far the picture's
embedding lies from every digit's: class means and one shared covariance of the embeddings of training digits
(a Mahalanobis distance, as in Lee et al. 2018, "A simple unified framework for detecting out-of-distribution
samples"). The served digit log-odds become z - weight * (log m - offset), with log m standardised on the
validation digits and given the same spread as z there: the two signs count alike (DISTANCE_WEIGHT = 1), the
plain choice rather than the best of a first sweep on one model (docs/not-a-digit.md has it).

Runs once, on the best checkpoint, before the threshold is chosen on the validation split, so the threshold and
the published figures are those of the served score.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
from torch import nn

from shared.metrics import batched_forward
from shared.model import DIGITS, DigitDistance, embed, output_from_embedding

DISTANCE_WEIGHT = 1.0  # the distance's share against the class's own log-odds, both standardised on validation
FIT_DIGITS = 20_000  # training digits the ten means and the covariance come from (about 2,000 per digit)
RIDGE = 1e-4  # added to the covariance's diagonal, relative to its mean variance: keeps it invertible


def embeddings(model: nn.Module, images: torch.Tensor, device: torch.device) -> torch.Tensor:
    """uint8 images (N, 28, 28) -> float64 embeddings (N, D) on the CPU. The model must be in eval mode."""
    return torch.cat(batched_forward(functools.partial(embed, model), images, device=device)).double()


@torch.no_grad()
def fit_digit_distance(
    model: nn.Module,
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    val_x: torch.Tensor,
    device: torch.device,
    generator: torch.Generator | None = None,
) -> dict[str, Any]:
    """Set `model.distance` from the digits: train_x (N, 28, 28) uint8 with labels (N,), val_x for the scale.

    Returns the figures the trainer prints: the digits fitted on, the validation digits' median squared distance m
    and the weight; or
    a `skipped` reason, the distance left unfitted (weight 0: the class's own score is served), where the digits
    cannot give one (a --dry-run's single batch may lack a digit).
    """
    distance = model.distance
    assert isinstance(distance, DigitDistance), "fit_digit_distance needs a network built with digit_distance=True"
    model.eval()
    distance.weight.zero_()
    pick = torch.randperm(len(train_x), generator=generator)[:FIT_DIGITS]
    h = embeddings(model, train_x[pick.to(train_x.device)], device)  # (n, D)
    labels = train_y[pick.to(train_y.device)].cpu().long()
    missing = sorted(set(range(DIGITS)) - set(labels.tolist()))
    if missing:
        return {"skipped": f"no training digit {', '.join(map(str, missing))} to fit it on"}
    if not torch.isfinite(h).all():  # weights blown up (a run that diverged): no covariance to invert
        return {"skipped": "the network's embeddings of the training digits are not all finite"}
    means = torch.stack([h[labels == d].mean(dim=0) for d in range(DIGITS)])  # (10, D)
    centred = h - means[labels]
    covariance = centred.T @ centred / len(centred)
    covariance += RIDGE * covariance.diagonal().mean() * torch.eye(len(covariance), dtype=covariance.dtype)
    # precision = whiten @ whiten^T, with whiten the Cholesky factor of the precision (lower triangular).
    whiten = torch.linalg.cholesky(torch.linalg.inv(covariance))
    distance.whiten.copy_(whiten.float())
    distance.centres.copy_((means @ whiten).float())

    val_h = embeddings(model, val_x, device).float().to(distance.whiten.device)  # one forward pass for both below
    log_m = torch.log(distance.squared_distance(val_h).double() + 1e-6).cpu()
    val_z = output_from_embedding(model, val_h)[:, DIGITS].double().cpu()  # (N,) the class's log-odds
    if len(log_m) < 2 or not float(log_m.std()) > 0 or not torch.isfinite(log_m).all():
        return {"skipped": f"the distances of {len(log_m)} validation digits have no spread to scale it by"}
    weight = DISTANCE_WEIGHT * val_z.std() / log_m.std()
    distance.offset.fill_(float(log_m.mean()))
    distance.weight.fill_(float(weight))
    return {"digits": len(h), "squared_distance_median": float(log_m.exp().median()), "weight": float(weight)}

"""The training loop: data on the device, one-cycle schedule, per-epoch report, checkpoints, resume, publish.

One code path for CPU, one GPU and several processes under torchrun: the dataset is a uint8 tensor on the
device (47 MB for all of MNIST), batches are index gathers, so there is no DataLoader and no worker processes.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import math
import os
import shutil
import sys
import tempfile
import time
from concurrent.futures import Executor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from shared.checkpoint import (
    CHECKPOINT_FORMAT,
    CheckpointError,
    atomic_write_bytes,
    load_checkpoint,
    model_from_checkpoint,
    models_lock,
    publish_model,
    remove_stale_temp_files,
    save_checkpoint,
    utc_now,
)
from shared.cli import write_problem
from shared.data import (
    FILES,
    MNIST_MEAN,
    MNIST_STD,
    Mnist,
    load_mnist,
    normalize,
    standardize,
    train_val_split,
)
from shared.metrics import Evaluation, evaluation_from_log_probs, predict_log_probs
from shared.model import (
    NOT_DIGIT,
    build_model,
    count_parameters,
    digit_scores,
    eleven_class_log_probs,
    networks,
)
from shared.onnx_model import export_onnx, verify_onnx
from shared.resources import usable_cpus
from shared.settings import Paths

from trainer.augment import AugmentConfig, augment, slash_zeros
from trainer.config import (
    DEFAULT_PUBLISH,
    TRAINER_ARCH_KWARGS,
    VALIDATION_PICTURE_SEEDS,
    TrainConfig,
    chosen_preset,
    config_from_args,
    ignored_on_resume,
    publish_mode,
)
from trainer.digit_distance import fit_digit_distance
from trainer.distributed import (
    DistInfo,
    all_reduce_sum,
    barrier,
    broadcast_name,
    init_distributed,
    resolve_device,
    shutdown,
)
from trainer.ema import WeightAverage, weight_average
from trainer.negatives import KINDS as NEGATIVE_KINDS
from trainer.negatives import make_negatives, make_typed_digits, pipeline_pool
from trainer.picture_cache import Expected, cached_pictures
from trainer.precision import autocast, resolve_precision
from trainer.publish import decide
from trainer.run_folder import (
    BEST,
    CHECKPOINT_DIR,
    FINISHED,
    LAST,
    check_claimable,
    check_resumable,
    claim_run,
    default_run_name,
    last_checkpoint,
    newest_resumable_run,
    resume_flags,
)
from trainer.tensorboard_log import TENSORBOARD_EVENTS, RunLogger


@dataclass
class Splits:
    """uint8 images (N, 28, 28) and int64 labels (N,), already on the training device."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    # Pictures that are not digits (trainer/negatives.py): uint8 (M, 28, 28) and their kinds (M,); empty when the
    # run trains without the not-digit class. The validation ones are drawn with another seed.
    neg_x: torch.Tensor | None = None
    neg_kind: torch.Tensor | None = None
    neg_val_x: torch.Tensor | None = None
    neg_val_kind: torch.Tensor | None = None
    # Digits typed in the negatives' fonts, uint8 (K, 28, 28) and their labels (K,); None without negatives.
    typed_x: torch.Tensor | None = None
    typed_y: torch.Tensor | None = None


@dataclass
class RunState:
    """What changes from epoch to epoch and goes into the checkpoint besides the weights."""

    epoch: int = 0  # epochs completed
    history: list[dict[str, Any]] = field(default_factory=list)  # numbers, and the precision's name
    best_val_accuracy: float = -1.0
    best_epoch: int = 0
    train_seconds: float = 0.0  # wall time spent in completed epochs, across resumes
    target_reached: dict[str, float] | None = None


def load_splits(
    config: TrainConfig,
    mnist: Mnist,
    device: torch.device,
    eval_subset: int = 0,
    pipeline_workers: int = 1,
    cache_dir: Path | None = None,
    say: bool = True,
) -> Splits:
    """The splits of `mnist` (shared.data.load_mnist) on `device`. `eval_subset` > 0 (smoke runs, tests):
    validation negatives cut in the same proportion as the validation digits (at least 20 of each kind), not
    NEGATIVE_VAL_PER_KIND of each kind.
    `pipeline_workers`: processes that bring the drawn negatives through the image pipeline (the same pictures
    whatever their number). `cache_dir`: where drawn pictures are kept for the next run that draws the same ones
    (trainer/picture_cache.py); None draws them every time. `say`: print what was drawn (the main process's)."""
    train_idx, val_idx = train_val_split(
        len(mnist.train_images), val_fraction=config.val_fraction, seed=config.split_seed
    )
    if config.train_subset:
        train_idx = train_idx[: config.train_subset]
    move = lambda t: t.to(device, non_blocking=True)  # noqa: E731
    splits = Splits(
        train_x=move(mnist.train_images[train_idx]),
        train_y=move(mnist.train_labels[train_idx].long()),
        val_x=move(mnist.train_images[val_idx]),
        val_y=move(mnist.train_labels[val_idx].long()),
        test_x=move(mnist.test_images),
        test_y=move(mnist.test_labels.long()),
    )
    if config.negatives > 0:
        started = time.perf_counter()
        per_kind = NEGATIVE_VAL_PER_KIND
        if 0 < eval_subset < len(val_idx):
            per_kind = max(20, round(per_kind * eval_subset / len(val_idx)))
        typed_count = config.typed_pool if config.typed_digits > 0 else 0
        val_count = per_kind * len(NEGATIVE_KINDS)
        drawn, kept, processes = draw_pictures(
            config,
            # The crossed-out kind scratches out training digits (training) and validation digits (validation).
            mnist.train_images[train_idx[:5000]].numpy(),
            mnist.train_images[val_idx[:2000]].numpy(),
            val_count,
            typed_count,
            pipeline_workers,
            cache_dir,
        )
        splits.neg_x = move(torch.from_numpy(drawn["train_images"]))
        splits.neg_kind = move(torch.from_numpy(drawn["train_kinds"]))
        splits.neg_val_x = move(torch.from_numpy(drawn["val_images"]))
        splits.neg_val_kind = torch.from_numpy(drawn["val_kinds"])
        typed_note = ""
        if typed_count:
            splits.typed_x = move(torch.from_numpy(drawn["typed_images"]))
            splits.typed_y = move(torch.from_numpy(drawn["typed_labels"]))
            typed_note = f", and {typed_count:,} typed digits,"
        if say:
            print(
                f"{'read' if kept else 'drew'} {config.negative_pool:,} training and {val_count:,} validation pictures"
                f" that are not digits{typed_note} in {time.perf_counter() - started:.1f} s"
                + (
                    f", kept by an earlier run in {kept}"
                    if kept
                    else f" ({processes} processes)"
                    if processes > 1
                    else ""
                ),
                flush=True,
            )
    return splits


def draw_pictures(
    config: TrainConfig,
    train_digits: np.ndarray,
    val_digits: np.ndarray,
    val_count: int,
    typed_count: int,
    pipeline_workers: int,
    cache_dir: Path | None,
) -> tuple[dict[str, np.ndarray], Path | None, int]:
    """The run's pictures that are not digits (training: config.negative_pool, validation: val_count) and typed
    digits (typed_count), as arrays named train_images/kinds, val_images/kinds and typed_images/labels; read from
    `cache_dir` when an earlier run drew the same ones. Returns (arrays, the cache entry read or None, the processes
    that drew them)."""
    processes = 1

    def draw(pool: Executor | None) -> dict[str, np.ndarray]:
        train_neg = make_negatives(config.negative_pool, seed=config.seed, digits=train_digits, pool=pool)
        val_neg = make_negatives(
            val_count, seed=VALIDATION_PICTURE_SEEDS + config.split_seed, digits=val_digits, pool=pool
        )
        typed = make_typed_digits(typed_count, seed=config.seed, pool=pool)
        return {
            "train_images": train_neg.images,
            "train_kinds": train_neg.kinds,
            "val_images": val_neg.images,
            "val_kinds": val_neg.kinds,
            "typed_images": typed.images,
            "typed_labels": typed.labels,
        }

    def draw_here_or_in_processes() -> dict[str, np.ndarray]:
        nonlocal processes
        try:
            with pipeline_pool(pipeline_workers, config.negative_pool + val_count + typed_count) as pool:
                drawn = draw(pool)
                processes = pipeline_workers if pool is not None else 1
                return drawn
        except (BrokenProcessPool, OSError) as e:
            # A process that could not start (no shared memory in a container, a calling script without a
            # __main__ guard) or died: the same pictures, drawn again from the start in this process.
            print(f"the pipeline's processes failed ({e!r}); drawing the pictures again in this process", flush=True)
            return draw(None)

    images = lambda n: Expected((n, 28, 28), np.dtype(np.uint8))  # noqa: E731
    labels = lambda n, below: Expected((n,), np.dtype(np.int64), below)  # noqa: E731
    expected = {
        "train_images": images(config.negative_pool),
        "train_kinds": labels(config.negative_pool, len(NEGATIVE_KINDS)),
        "val_images": images(val_count),
        "val_kinds": labels(val_count, len(NEGATIVE_KINDS)),
        "typed_images": images(typed_count),
        "typed_labels": labels(typed_count, 10),
    }
    request = {
        "negatives": config.negative_pool,
        "seed": config.seed,
        "validation": val_count,
        "split_seed": config.split_seed,
        "typed": typed_count,
    }
    inputs = {"train_digits": train_digits, "val_digits": val_digits}
    drawn, kept = cached_pictures(cache_dir, request, inputs, expected, draw_here_or_in_processes)
    return drawn, kept, processes


NEGATIVE_VAL_PER_KIND = 300


def model_kwargs(config: TrainConfig) -> dict[str, Any]:
    """The network's keyword arguments (build_model's, as published): the config's, with the not-digit class (and
    its digit distance, fitted in `finish`) when the run trains one, and the ensemble's members when more than one."""
    return {
        **config.arch_kwargs,
        **(dict.fromkeys(TRAINER_ARCH_KWARGS, True) if config.negatives > 0 else {}),
        **({"members": config.members} if config.members > 1 else {}),
    }


def is_distance_key(key: str) -> bool:
    """Whether a weight's name is a digit distance's buffer: a network's "distance.whiten", an ensemble member's
    "members.0.distance.whiten"."""
    return key.startswith("distance.") or ".distance." in key


def load_weights(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load a checkpoint's weights; one written before the digit distance existed lacks only its buffers, which
    `finish` fits anyway."""
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or any(not is_distance_key(key) for key in missing):
        model.load_state_dict(state)  # raises with PyTorch's own message


def pool_batch(pool: torch.Tensor, count: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """`count` pictures drawn at random from a uint8 pool (K, 28, 28): ((count, 1, 28, 28) in [0, 1], their indices)."""
    idx = torch.randint(len(pool), (count,), generator=generator, device=generator.device).to(pool.device)
    return pool[idx].float().div_(255.0).unsqueeze(1), idx


def synchronized_batch_norm(model: nn.Module, device: torch.device) -> nn.Module:
    """`model` with its BatchNorm layers normalizing over the whole step's batch, across the processes, on CUDA:
    alone, each process normalized over its own slice (16 images a process at 8 GPUs), and the running statistics
    DDP copies from rank 0 came from that slice only. The layers are swapped in place and keep their parameters and
    buffers (the optimizer's, the checkpoint's names); in eval mode they are plain BatchNorm. Not on the CPU, whose
    gloo backend SyncBatchNorm does not run on: there each process keeps its own statistics."""
    if device.type != "cuda":
        return model
    return nn.SyncBatchNorm.convert_sync_batchnorm(model)


def per_process_steps(train_count: int, batch_size: int, dist_info: DistInfo) -> tuple[int, int]:
    """(images per step on each process, steps per epoch): each process takes every world_size-th image of the
    epoch's order, padded to the same count on all of them, in steps of its share of the batch."""
    per_process_batch = max(1, batch_size // dist_info.world_size)
    return per_process_batch, math.ceil(math.ceil(train_count / dist_info.world_size) / per_process_batch)


def share_of(count: int, dist_info: DistInfo) -> int:
    """This process's part of `count` items shared out among the processes, as evenly as whole items allow."""
    return count // dist_info.world_size + (dist_info.rank < count % dist_info.world_size)


def negative_batch(
    splits: Splits, count: int, cfg: AugmentConfig, generator: torch.Generator, augment_it: bool
) -> torch.Tensor:
    """`count` negatives from the pool, (count, 1, 28, 28) in [0, 1], turned (`turned_at_random`) and augmented
    at random, so the pool looks new every epoch."""
    assert splits.neg_x is not None and splits.neg_kind is not None, "a run without negatives draws none"
    x, idx = pool_batch(splits.neg_x, count, generator)
    if augment_it:
        x = augment(turned_at_random(x, splits.neg_kind[idx], generator), cfg, generator)
    return x


# Kinds of negatives that have an up: glyphs and words are drawn as typed (trainer/negatives.py).
UPRIGHT_KINDS = (NEGATIVE_KINDS.index("glyphs"), NEGATIVE_KINDS.index("words"))


def turned_at_random(x: torch.Tensor, kinds: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Negatives (N, 1, H, W) each mirrored, turned upside down and transposed, each with probability 1/2, except
    those of UPRIGHT_KINDS (`kinds` (N,)), which stay as written: a stroke or a shape has no up, but the letters
    and symbols people draw are upright, and flipping showed them upright only one time in eight (and made
    digits of some: a mirrored E is a 3). Keeping them upright (stop 32, 10 epochs, seeds 0 / 1 / 2): non-digits
    flagged 97.3 % against 95.3 %, letters 96.2 % against 92.3 %, symbols 97.7 % against 91.5 %, and the typed
    "?" of issue 17's own examples 13 % missed against 100 %; users' digits flagged 0.92 % against 0.67 %."""
    n = len(x)
    flips = torch.rand(n, 3, generator=generator, device=generator.device).to(x.device) < 0.5
    flips &= ~torch.isin(kinds, torch.tensor(UPRIGHT_KINDS, device=kinds.device)).view(-1, 1)
    x = torch.where(flips[:, 0].view(-1, 1, 1, 1), x.flip(3), x)
    x = torch.where(flips[:, 1].view(-1, 1, 1, 1), x.flip(2), x)
    return torch.where(flips[:, 2].view(-1, 1, 1, 1), x.transpose(2, 3), x)


def typed_batch(
    splits: Splits, count: int, cfg: AugmentConfig, generator: torch.Generator, augment_it: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """`count` typed digits from the pool, augmented like MNIST's (no flips: a mirrored 2 is no 2), and their
    labels: ((count, 1, 28, 28) in [0, 1], (count,))."""
    assert splits.typed_x is not None and splits.typed_y is not None, "a run without typed digits draws none"
    x, idx = pool_batch(splits.typed_x, count, generator)
    return (augment(x, cfg, generator) if augment_it else x), splits.typed_y[idx]


def make_optimizer(config: TrainConfig, model: nn.Module, steps_per_epoch: int):
    # No weight decay on BatchNorm parameters and biases: decaying them only fights the normalization.
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    if config.optimizer == "sgd":
        optimizer = torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, nesterov=config.nesterov)
    elif config.optimizer == "adamw":
        optimizer = torch.optim.AdamW(groups, lr=config.lr)
    else:
        raise ValueError(f"unknown optimizer {config.optimizer!r}")
    total_steps = config.epochs * steps_per_epoch
    # Too few steps to warm up and anneal (OneCycleLR divides by the warm-up's steps less one): stay constant.
    if config.schedule == "onecycle" and total_steps >= 10 and config.warmup_fraction * total_steps >= 2:
        scheduler = torch.optim.lr_scheduler.OneCycleLR(
            optimizer,
            max_lr=config.lr,
            total_steps=total_steps,
            pct_start=config.warmup_fraction,
            anneal_strategy="linear",
            div_factor=10.0,
            final_div_factor=100.0,
            cycle_momentum=config.optimizer == "sgd",
        )
    elif config.schedule in ("constant", "onecycle"):
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    else:
        raise ValueError(f"unknown schedule {config.schedule!r}")
    return optimizer, scheduler


def epoch_generator(config: TrainConfig, epoch: int, rank: int, device: torch.device) -> torch.Generator:
    """Every epoch draws its randomness from its own seed, so a resumed run repeats an uninterrupted one exactly."""
    seed = (config.seed * 1_000_003 + epoch) * 64 + rank
    torch.manual_seed(seed)  # dropout
    gen_device = device if device.type == "cuda" else "cpu"
    return torch.Generator(device=gen_device).manual_seed(seed)


def members_loss(
    output: torch.Tensor, y: torch.Tensor, negatives: bool, label_smoothing: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A training batch's output, (N, C), or an ensemble's members' own, (M, N, C) (shared/model.py Ensemble), and
    its labels, (N,) for every member or (M * N,) each member's in turn -> (the loss to learn from, the members'
    mean loss to report, the members' outputs (M, N, C)).

    With `negatives` the loss is over eleven classes, the ten digits and "not a digit". The loss learnt from is the
    members' sum, so each member's gradient is its own loss's, as if it were trained alone (their mean would scale
    each one's learning rate down by M)."""
    outputs = output if output.dim() == 3 else output.unsqueeze(0)
    log_probs = outputs.flatten(0, 1)  # (M * N, C), member by member
    if negatives:
        log_probs = eleven_class_log_probs(log_probs.float())
    # log_softmax of log-probabilities is the identity, so cross_entropy applies label smoothing to them.
    labels = y if len(y) == len(log_probs) else y.repeat(len(outputs))  # each member's own, or one set for all
    mean = F.cross_entropy(log_probs, labels, label_smoothing=label_smoothing)
    return mean * len(outputs), mean, outputs


def train_one_epoch(
    model: nn.Module,
    splits: Splits,
    config: TrainConfig,
    optimizer,
    scheduler,
    epoch: int,
    device: torch.device,
    dist_info: DistInfo,
    channels_last: bool,
    precision: str,
    average: WeightAverage | None = None,
) -> tuple[float, float, int, float]:
    """One pass over this process's share of the training split, in `precision` ('bf16' autocast or 'fp32'),
    taking every step's weights into `average` (trainer/ema.py) when the run keeps one.

    Returns (mean loss, accuracy, images seen, learning rate of the epoch's last step).
    """
    model.train()
    generator = epoch_generator(config, epoch, dist_info.rank, device)
    # The same permutation on every process (seeded without the rank), each taking every world_size-th index.
    # Padded by wrapping around to a multiple of world_size, as DistributedSampler does: every process must run
    # the same number of steps, or one waits forever in DDP's gradient all-reduce.
    order_gen = torch.Generator().manual_seed(config.seed * 1_000_003 + epoch)
    permutation = torch.randperm(len(splits.train_x), generator=order_gen)
    padded = math.ceil(len(permutation) / dist_info.world_size) * dist_info.world_size
    permutation = permutation.repeat(math.ceil(padded / len(permutation)))[:padded]
    order = permutation[dist_info.rank :: dist_info.world_size]
    order = order.to(device)
    # The wrapped-around positions are the last of this process's order: seen again, not counted in the metrics.
    counted = len(range(dist_info.rank, len(splits.train_x), dist_info.world_size))
    per_process_batch, steps = per_process_steps(len(splits.train_x), config.batch_size, dist_info)
    augment_config = AugmentConfig()
    mixed = autocast(device, precision)  # re-entered every step
    negatives = config.negatives > 0 and splits.neg_x is not None and len(splits.neg_x) > 0
    typed = negatives and splits.typed_x is not None and len(splits.typed_x) > 0
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    # disable=None: a bar on a terminal, nothing in a log file or a container's output.
    for step in tqdm(
        range(steps),
        desc=f"epoch {epoch}",
        leave=False,
        disable=None if dist_info.is_main else True,
        unit="batch",
        file=sys.stderr,
    ):
        idx = order[step * per_process_batch : (step + 1) * per_process_batch]
        digits = splits.train_x[idx].float().div_(255.0).unsqueeze(1)  # (B, 1, 28, 28) in [0, 1]
        digits_y = splits.train_y[idx]
        n_digits = len(digits_y)
        # The negatives and typed digits of the whole step (every process takes n_digits digits), shared out among
        # the processes: each rounding its own share made 16 processes train on 2.5 times the typed digits asked.
        step_digits = n_digits * dist_info.world_size
        n_negatives = share_of(max(1, round(step_digits * config.negatives)), dist_info)
        n_typed = share_of(max(1, round(step_digits * config.typed_digits)), dist_info)
        # An ensemble's members each get the step's digits augmented their own way, and negatives and typed digits
        # of their own: with one batch for all, the three together flagged 0.3 points more non-digits than their
        # best alone; with a batch each, 1.4 points (scribbles 94.0 % against at most 90.0 %; docs/not-a-digit.md).
        batches = []
        for _ in range(config.members):
            x, y = digits, digits_y
            if config.augment:
                x = augment(slash_zeros(x, y, augment_config, generator), augment_config, generator)
            if negatives and n_negatives:
                neg = negative_batch(splits, n_negatives, augment_config, generator, config.augment)
                x = torch.cat([x, neg])
                y = torch.cat([y, torch.full((len(neg),), NOT_DIGIT, dtype=y.dtype, device=y.device)])
            if typed and n_typed:
                typed_x, typed_y = typed_batch(splits, n_typed, augment_config, generator, config.augment)
                x = torch.cat([x, typed_x])
                y = torch.cat([y, typed_y])
            x = standardize(x, MNIST_MEAN, MNIST_STD)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            batches.append((x, y))
        # One network: its batch; an ensemble: a batch per member, their labels one after the other (M * N,).
        inputs: torch.Tensor | list[torch.Tensor] = batches[0][0] if len(batches) == 1 else [b[0] for b in batches]
        y = batches[0][1] if len(batches) == 1 else torch.cat([b[1] for b in batches])
        with mixed:
            loss, member_loss, outputs = members_loss(model(inputs), y, negatives, config.label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        lr = optimizer.param_groups[0]["lr"]
        optimizer.step()
        scheduler.step()
        if average is not None:
            average.update(getattr(model, "module", model))  # the network itself, not DDP's wrapper
        n_counted = min(n_digits, max(0, counted - step * per_process_batch))
        loss_sum += member_loss.detach() * n_counted
        # Read as served: an ensemble's digit is that of its members' summed ten-digit probabilities (not the eleven
        # classes', which would weigh each member by how sure it is that the picture is a digit).
        correct += (outputs.detach()[:, :n_counted, :10].float().exp().sum(0).argmax(1) == digits_y[:n_counted]).sum()
    # One device-to-host sync per epoch, not per step: .item() in the loop would stall the GPU every batch.
    totals = all_reduce_sum([float(loss_sum), float(correct), float(counted)], device, dist_info)
    return totals[0] / totals[2], totals[1] / totals[2], int(totals[2]), lr


def build(config: TrainConfig, device: torch.device, channels_last: bool) -> nn.Module:
    model = build_model(config.arch, **model_kwargs(config)).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


# What --resume reads of a checkpoint besides its settings and weights (a moving average's run: ema_steps too).
RESUMED_FIELDS = ("optimizer", "scheduler", "epoch", "history", "best_val_accuracy", "best_epoch", "train_seconds")


def read_resumable(path: Path) -> tuple[dict[str, Any], TrainConfig]:
    """A run's last checkpoint and its own settings, checked as --resume uses them: CheckpointError for one it could
    not continue from (a published model, which holds no optimizer state; settings or weights damaged, or of
    another network). --check-only passed such a file, and --resume then failed on it with a traceback."""
    checkpoint = load_checkpoint(path, map_location="cpu")
    if checkpoint.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: a published model, not a training checkpoint: no optimizer state to resume")
    try:
        config = TrainConfig.from_dict(checkpoint["config"])
        load_weights(build(config, torch.device("cpu"), channels_last=False), checkpoint["model"])
        if missing := [name for name in RESUMED_FIELDS if name not in checkpoint]:
            raise KeyError(", ".join(missing))
        if config.ema_decay > 0 and "ema_steps" not in checkpoint:
            raise KeyError("ema_steps")
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        said = f"it lacks {e}" if isinstance(e, KeyError) else f"{type(e).__name__}: {e}"
        raise CheckpointError(f"{path}: not a checkpoint --resume can continue from ({said})") from e
    return checkpoint, config


def weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """A network's state_dict, detached and on the CPU, for a checkpoint."""
    return {k: v.detach().cpu() for k, v in model.state_dict().items()}


def checkpoint_payload(
    model: nn.Module,
    config: TrainConfig,
    state: RunState,
    run_name: str,
    optimizer,
    scheduler,
    average: WeightAverage | None = None,
) -> dict[str, Any]:
    """Everything needed to rebuild the model and continue training. weights_only-safe values only.

    "model" holds the weights the run evaluated, and publishes from its best checkpoint: the moving average where
    the run keeps one, with the optimizer's own weights beside it as "training_model" and the steps averaged.
    No RNG state: every epoch seeds its own randomness from (seed, epoch) (see epoch_generator), so a resumed run
    needs nothing but the epoch number to draw what the uninterrupted run drew.
    """
    averaged = {} if average is None else {"training_model": weights(model), "ema_steps": average.steps}
    return {
        "arch": config.arch,
        "arch_kwargs": model_kwargs(config),
        "model": weights(model if average is None else average.network),
        **averaged,
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "config": config.to_dict(),
        "epoch": state.epoch,
        "history": state.history,
        "best_val_accuracy": state.best_val_accuracy,
        "best_epoch": state.best_epoch,
        "train_seconds": state.train_seconds,
        "target_reached": state.target_reached,
        "normalization": {"mean": MNIST_MEAN, "std": MNIST_STD},
        "run_name": run_name,
        "saved_at": utc_now(),
    }


def check_schedule_fits(saved: dict[str, Any], epochs: int, steps_per_epoch: int, world_size: int) -> None:
    """SystemExit unless a resumed run's one-cycle schedule is as long as the steps it has to run. Its steps per
    epoch depend on how many processes share each batch: resumed with another count, the schedule ran out in the
    last epoch (an error in scheduler.step, the run never finished) or never finished annealing."""
    saved_total = saved.get("total_steps")  # OneCycleLR's; a constant schedule has no length
    if saved_total is not None and saved_total != epochs * steps_per_epoch:
        raise SystemExit(
            f"--resume: this run's learning-rate schedule is {saved_total:,} steps ({saved_total / epochs:g} an "
            f"epoch), but {world_size} process(es) take {steps_per_epoch:,} steps an epoch: the run was started "
            "with another number of processes. Resume it with the number it started with"
        )


def digit_threshold(scores: torch.Tensor, flag_rate: float) -> float:
    """The digit-score threshold that flags at most `flag_rate` of these digits' scores (flagged: score < it)."""
    ordered = scores.double().sort().values
    return float(ordered[min(len(ordered) - 1, int(flag_rate * len(ordered)))]) if len(ordered) else 0.5


def _scores(output: torch.Tensor) -> torch.Tensor:
    scores = digit_scores(output.float())
    assert scores is not None, "not_digit_metrics needs a network with the not-digit class"
    return scores


def not_digit_metrics(
    val_out: torch.Tensor, test_out: torch.Tensor, neg_out: torch.Tensor, neg_kind: torch.Tensor, flag_rate: float
) -> dict[str, float]:
    """The threshold chosen on the validation digits, and at it the rate of each kind of error: digits flagged
    (validation, test) and validation negatives missed, per kind and overall."""
    val_scores, test_scores, neg_scores = (_scores(o) for o in (val_out, test_out, neg_out))
    threshold = digit_threshold(val_scores, flag_rate)
    missed = (neg_scores >= threshold).float()
    metrics = {
        "digit_threshold": threshold,
        "val_digits_flagged": float((val_scores < threshold).float().mean()),
        "test_digits_flagged": float((test_scores < threshold).float().mean()),
        "val_negatives_missed": float(missed.mean()),
    }
    for k, kind in enumerate(NEGATIVE_KINDS):
        chosen = neg_kind == k
        if chosen.any():
            metrics[f"val_negatives_missed_{kind}"] = float(missed[chosen].mean())
    return metrics


def better_than_best(metrics: dict[str, Any], state: RunState, val_images: int) -> bool:
    """Whether this epoch's model replaces the best so far. Validation accuracy decides, but only as finely as
    `val_images` can: an epoch within one standard error, sqrt(p (1 - p) / n), of the highest validation accuracy
    p seen so far (about 8 of 12,000 images at 99.4 %) counts as no worse, and the later epoch wins, being further
    down the learning-rate schedule and the moving average. So a run publishes the latest epoch the validation
    set cannot tell from its best. Picking the single highest instead chose noise: with the moving average,
    validation accuracy is flat from about epoch 5, and a test model published epoch 6 (2 images above epochs
    9-10) that read 92.9 % of the apart numbers where epoch 10 read 94.6 %. Validation loss breaks nothing: with
    label smoothing and the average it rises over the last epochs while accuracy holds. The test set chooses
    nothing."""
    top = max([metrics["val_accuracy"]] + [m["val_accuracy"] for m in state.history])
    return metrics["val_accuracy"] >= top - math.sqrt(top * (1.0 - top) / val_images)


def format_epoch_line(m: dict[str, Any], epochs: int) -> str:
    width = len(str(epochs))
    return (
        f"epoch {int(m['epoch']):>{width}}/{epochs}  train loss {m['train_loss']:.4f}  "
        f"train acc {m['train_accuracy']:.2%}  val acc {m['val_accuracy']:.2%}  "
        f"test acc {m['test_accuracy']:.2%}  lr {m['lr']:.5f}  {m['seconds']:5.1f} s  "
        f"{m['images_per_second']:,.0f} img/s  {m.get('precision', 'fp32')}"
        + (
            f"  not-digit: {m['val_negatives_missed']:.2%} missed, {m['val_digits_flagged']:.2%} of digits flagged"
            if "val_negatives_missed" in m
            else ""
        )
    )


def describe(precision: str, config: TrainConfig, typed: str | None = None, *, resumed: bool = False) -> str:
    """How the run computes, for its first line: 'bf16 autocast (auto: ...)' or 'fp32 (...)'. `typed`: the
    --precision given, if any (the seed preset's fp32 was said as "--precision fp32", typed by nobody)."""
    arithmetic = "bf16 autocast" if precision == "bf16" else "fp32"
    if config.precision != "auto":
        source = f"--precision {typed}" if typed is not None else "the run's own" if resumed else "the preset's"
        return f"{arithmetic} ({source})"
    why = "bf16 is native here" if precision == "bf16" else "bf16 is not native here"
    return f"{arithmetic} (auto: {why})"


class Interrupted(KeyboardInterrupt):
    """Ctrl-C (SIGINT) during a run; its message says whether and how to continue it."""


class DiskFull(Exception):
    """The disk filled during a run; its message says whether the run can be continued with --resume."""


# What a run with no checkpoint yet is told when its folder cannot be written: before MNIST is read, or later.
START_AGAIN_WRITABLE = "make it writable, or choose another --artifacts-dir, and start again"


class CannotWrite(Exception):
    """A folder of the run could not be made or written (permissions, a read-only volume, a file where a folder
    should be); the message says which, and whether the run can be continued with --resume."""


# What a folder that cannot be written raises, besides a plain OSError with one of these numbers.
UNWRITABLE = (PermissionError, NotADirectoryError, IsADirectoryError, FileExistsError)
UNWRITABLE_ERRNOS = (errno.EACCES, errno.EPERM, errno.EROFS)
# A path in the artifacts folder (or a folder above it, which mkdir names when it cannot make that) that cannot be
# made at all is one too: a name too long, a folder missing where none can be made (under /proc), a loop of links
# (these ended in a traceback). Elsewhere (a file of the project gone) they are no folder of the run's, and not
# said to be.
UNMAKEABLE_ERRNOS = (errno.ENAMETOOLONG, errno.ENOENT, errno.ELOOP)


def cannot_write(e: OSError, artifacts_dir: Path) -> bool:
    """Whether `e` says a folder of the run cannot be made or written (CannotWrite), not some other failure."""
    if isinstance(e, UNWRITABLE) or e.errno in UNWRITABLE_ERRNOS:
        return True
    if e.errno not in UNMAKEABLE_ERRNOS or not isinstance(e.filename, (str, Path)):
        return False
    path, root = os.path.abspath(e.filename), os.path.abspath(artifacts_dir)
    return os.path.commonpath([path, root]) in (root, path)  # in the artifacts folder, or above it


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Train as the parsed command line says. Returns a summary (the main process's; others return {})."""
    where: dict[str, Any] = {}  # the run's name and its last checkpoint's path, once known

    def resumable() -> bool:  # a dry run's folder is gone when it ends
        last = where.get("last")
        return not args.dry_run and last is not None and last.exists()

    with contextlib.ExitStack() as held:  # the run folder's lock, held to the end
        try:
            return _run(args, held, where)
        except KeyboardInterrupt:
            if args.dry_run:
                raise Interrupted("dry run interrupted") from None
            if resumable():
                flags = resume_flags(args.artifacts_dir, where["run_name"])
                raise Interrupted(f"interrupted; continue with {flags}") from None
            gone = ""
            if where.get("claimed") and args.run_name is None and not args.resume:
                # Its name was made for this start (a date and time), so starting again makes another: the folder
                # stayed, a run of a graph and pictures without one epoch in TensorBoard for good. A name the user
                # gave stays: the next start of that name removes its events. Only by the process that claimed it
                # (torchrun's rank 0), which alone writes there.
                run_dir = Paths(Path(args.artifacts_dir)).run_dir(where["run_name"])
                shutil.rmtree(run_dir, ignore_errors=True)
                gone = "" if run_dir.exists() else f" (its folder runs/{where['run_name']} is removed)"
            raise Interrupted(
                f"interrupted before the run's first checkpoint: nothing to resume{gone}; start it again"
            ) from None
        except OSError as e:
            if cannot_write(e, Path(args.artifacts_dir)):
                cause = f"{e.strerror or e}: {e.filename}" if e.filename else str(e)
                if resumable():
                    advice = (
                        "the last complete checkpoint is intact. Make the folder writable (or free the path), then "
                        f"continue with {resume_flags(args.artifacts_dir, where['run_name'])}"
                    )
                else:
                    advice = START_AGAIN_WRITABLE
                raise CannotWrite(f"cannot write the run's files ({cause}); {advice}") from e
            if e.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            # Checkpoints and models are written to a temporary file and renamed: the failed write left nothing.
            if resumable():
                advice = (
                    "the last complete checkpoint and the published model are intact. Free some space, then continue "
                    f"with {resume_flags(args.artifacts_dir, where['run_name'])}"
                )
            else:
                advice = "the run had no checkpoint yet; the published model is intact. Free space, then start again"
            raise DiskFull(f"the disk is full ({e}); {advice}") from e


def _run(args: argparse.Namespace, held: contextlib.ExitStack, where: dict[str, Any]) -> dict[str, Any]:
    wall_start = time.perf_counter()
    paths = Paths(Path(args.artifacts_dir))
    if args.dry_run and args.resume:
        raise SystemExit("--dry-run starts a throwaway run of its own: it cannot --resume one")
    throwaway = tempfile.TemporaryDirectory(prefix="mnist-dry-run-") if args.dry_run else None
    if throwaway is not None:
        held.callback(throwaway.cleanup)  # however the run ends; after the run folder's lock is let go
        paths = Paths(Path(throwaway.name))
    else:
        # Before MNIST is read and the pictures drawn: a run into a read-only folder failed only then, and
        # --check-only (which `make stack` asks before it starts anything) passed it.
        # models/ only where this run will publish: --publish never writes nothing there, and a resumed run's own
        # mode is known only from its checkpoint (a failed publish says what to do then).
        publishes = not args.resume and publish_mode(args, None) != "never"
        for folder in (paths.runs, paths.models) if publishes else (paths.runs,):
            if (problem := write_problem(folder)) is not None:
                raise CannotWrite(f"cannot write the run's files ({problem}); {START_AGAIN_WRITABLE}")
    device = resolve_device(args.device, int(os.environ.get("LOCAL_RANK", "0")))
    dist_info = init_distributed(device)
    channels_last = True  # faster convolutions on both oneDNN (CPU) and cuDNN for this network family

    def fetch_data() -> Mnist:
        """MNIST, read and verified before a run folder is made or claimed for a run that cannot start: without the
        MNIST files, with a damaged one, or without a way to fetch them (each failed start left an empty folder
        behind; --check-only passed a damaged file, which the run then refused)."""
        return load_mnist(args.data_dir, download=args.download)

    # Settle the config: a resumed run continues with its own stored settings.
    resume_ckpt = None
    if args.resume:
        run_name = args.run_name or newest_resumable_run(paths)
        check_resumable(paths, run_name)  # before the claim, which would make the folder of a mistyped name
        mnist = fetch_data()
        if args.check_only:
            # Read as the resume reads it (and refused as it would be: CheckpointError), not only looked for.
            read_resumable(last_checkpoint(paths.run_dir(run_name)))
            print(f"settings OK: run {run_name} can be resumed on {device}; MNIST is in {args.data_dir}", flush=True)
            return {"checked": run_name}
        # Known now, so that Ctrl-C from here on says to resume (the run has a checkpoint), not to start again.
        where.update(run_name=run_name, last=last_checkpoint(paths.run_dir(run_name)))
        if dist_info.is_main:  # held before its checkpoint is read: another trainer may be writing it
            claim_run(held, paths, run_name, resuming=True, named=True)
        resume_ckpt, config = read_resumable(last_checkpoint(paths.run_dir(run_name)))
        if ignored := ignored_on_resume(args, config, resume_ckpt.get("preset")):
            print(
                f"--resume keeps the run's own settings (its {config.epochs} epochs' schedule and checkpoints depend "
                f"on them); ignoring {', '.join(ignored)}",
                flush=True,
            )
        if args.precision is not None:  # like --device, a property of the machine rather than of the run
            config = replace(config, precision=args.precision)
    else:
        config = config_from_args(args)
        if args.dry_run:
            config = replace(config, epochs=1)
        if args.dry_run or config.train_subset:  # smoke runs and tests: a pool in proportion
            config = replace(
                config,
                negative_pool=min(config.negative_pool, max(600, config.train_subset // 4)),
                typed_pool=min(config.typed_pool, max(100, config.train_subset // 20)),
            )
        run_name = args.run_name or default_run_name(
            config.arch, config.seed, "dry-run" if args.dry_run else chosen_preset(args)
        )
        mnist = fetch_data()
        if args.check_only:
            if args.run_name is not None:  # a default name that is taken becomes <name>-2
                check_claimable(paths, run_name)
            print(
                f"settings OK: {config.epochs} epochs of {config.arch} on {device}; MNIST is in {args.data_dir}",
                flush=True,
            )
            return {"checked": run_name}
        if dist_info.is_main:
            run_name = claim_run(held, paths, run_name, resuming=False, named=args.run_name is not None)
        run_name = broadcast_name(run_name, dist_info)  # the name rank 0 claimed (a default may have become -2)
    run_dir = paths.run_dir(run_name)
    where.update(run_name=run_name, last=last_checkpoint(run_dir), claimed=dist_info.is_main)
    ckpt_dir = run_dir / CHECKPOINT_DIR
    precision = resolve_precision(config.precision, device)
    if resume_ckpt is not None and dist_info.is_main:
        # A process killed while writing a checkpoint leaves its temporary file behind (the checkpoint itself is
        # intact: see shared.checkpoint.atomic_write_bytes). This run is the only writer of its folder.
        for path in remove_stale_temp_files(ckpt_dir, (LAST, BEST)):
            print(f"removed {path.name}, left by an interrupted checkpoint write", flush=True)

    publish = publish_mode(args, resume_ckpt)
    # The preset the run was started with, kept in its checkpoints so a resume can say it ignores another.
    preset = resume_ckpt.get("preset") if resume_ckpt is not None else chosen_preset(args)
    if resume_ckpt is not None and args.publish is None and publish != DEFAULT_PUBLISH:
        print(f"--resume keeps the run's own --publish {publish}", flush=True)
    eval_subset = 500 if args.dry_run else args.eval_subset
    if resume_ckpt is not None and resume_ckpt.get("eval_subset", eval_subset) != eval_subset:
        # The validation images choose the best epoch and fit what is published: the run's own, to its end.
        ignoring = f"; ignoring --eval-subset {eval_subset}" if eval_subset else ""
        print(f"--resume keeps the run's own --eval-subset {resume_ckpt['eval_subset']}{ignoring}", flush=True)
        eval_subset = resume_ckpt["eval_subset"]
    # The negatives' pipeline work is spread over this machine's cores, shared with the other processes of a
    # distributed run on it (torchrun sets LOCAL_WORLD_SIZE).
    workers = max(1, usable_cpus() // int(os.environ.get("LOCAL_WORLD_SIZE", dist_info.world_size)))
    cache_dir = paths.cache if args.picture_cache else None
    splits = load_splits(config, mnist, device, eval_subset, workers, cache_dir, say=dist_info.is_main)
    del mnist  # the splits hold what they use (the training images as copies): 47 MB less for the rest of the run
    if eval_subset:
        splits = replace(
            splits,
            val_x=splits.val_x[:eval_subset],
            val_y=splits.val_y[:eval_subset],
            test_x=splits.test_x[:eval_subset],
            test_y=splits.test_y[:eval_subset],
        )
    if args.dry_run:
        splits = replace(
            splits, train_x=splits.train_x[: config.batch_size], train_y=splits.train_y[: config.batch_size]
        )
    torch.manual_seed(config.seed)
    model = build(config, device, channels_last)
    average = weight_average(model, config.ema_decay)
    evaluated = model if average is None else average.network  # what each epoch scores and saves
    _, steps_per_epoch = per_process_steps(len(splits.train_x), config.batch_size, dist_info)
    optimizer, scheduler = make_optimizer(config, model, steps_per_epoch)
    state = RunState()
    if resume_ckpt is not None:
        load_weights(model, resume_ckpt.get("training_model", resume_ckpt["model"]))
        if average is not None:
            load_weights(evaluated, resume_ckpt["model"])
            average.steps = resume_ckpt["ema_steps"]
        optimizer.load_state_dict(resume_ckpt["optimizer"])
        check_schedule_fits(resume_ckpt["scheduler"], config.epochs, steps_per_epoch, dist_info.world_size)
        scheduler.load_state_dict(resume_ckpt["scheduler"])
        state = RunState(
            epoch=resume_ckpt["epoch"],
            history=list(resume_ckpt["history"]),
            best_val_accuracy=resume_ckpt["best_val_accuracy"],
            best_epoch=resume_ckpt["best_epoch"],
            train_seconds=resume_ckpt["train_seconds"],
            target_reached=resume_ckpt["target_reached"],
        )
    ddp_model = model
    if dist_info.enabled:
        ddp_model = nn.parallel.DistributedDataParallel(
            synchronized_batch_norm(model, device), device_ids=[device.index] if device.type == "cuda" else None
        )

    logger: RunLogger | None = None  # rank 0 only
    if dist_info.is_main:
        arithmetic = describe(precision, config, args.precision, resumed=args.resume)
        print(
            f"run {run_name}: {f'{config.members} x ' if config.members > 1 else ''}{config.arch} "
            f"({count_parameters(model):,} parameters) on {device}"
            f"{f' x {dist_info.world_size} processes' if dist_info.enabled else ''}, {arithmetic}"
            f"{f', scoring the moving average of the weights (EMA {config.ema_decay:g} a step)' if average else ''}; "
            f"{len(splits.train_x):,} training, {len(splits.val_x):,} validation, {len(splits.test_x):,} test "
            f"images; logs in {run_dir}",
            flush=True,
        )
        if resume_ckpt is not None:
            print(f"resuming after epoch {state.epoch} of {config.epochs}", flush=True)
        else:
            # A start of this run stopped before its first checkpoint left its events here: they go, or TensorBoard
            # would show its epochs, graph and pictures beside this start's.
            for stale in sorted(run_dir.glob(TENSORBOARD_EVENTS)):
                stale.unlink()
                print(f"removed {stale.name}, TensorBoard events of a start that had no checkpoint", flush=True)
        # Resumed with no epoch left (stopped while finishing): finish logs again at the last epoch's step, so the
        # purge starts there, and that epoch's own entries are logged again.
        finishing = resume_ckpt is not None and state.epoch >= config.epochs
        purge_step = None if resume_ckpt is None else state.epoch if finishing else state.epoch + 1
        logger = RunLogger(run_dir, purge_step=purge_step)
        if finishing:
            logger.log_epoch(state.epoch, state.history[-1])
        if resume_ckpt is None:
            logger.log_graph(model, standardize(splits.test_x[:2].float().div(255).unsqueeze(1)))
            if splits.neg_x is not None:
                sample = negative_batch(
                    splits,
                    96,
                    AugmentConfig(),
                    torch.Generator(device=device.type if device.type == "cuda" else "cpu").manual_seed(config.seed),
                    config.augment,
                )
                assert splits.neg_val_x is not None and splits.neg_val_kind is not None
                logger.log_negatives(sample, splits.neg_val_x, splits.neg_val_kind, NEGATIVE_KINDS)

    stop_after = args.stop_after
    epochs_this_process = 0
    start_epoch = state.epoch + 1
    for epoch in range(start_epoch, config.epochs + 1):
        t0 = time.perf_counter()
        train_loss, train_acc, seen, lr = train_one_epoch(
            ddp_model, splits, config, optimizer, scheduler, epoch, device, dist_info, channels_last, precision, average
        )
        train_seconds = time.perf_counter() - t0
        # Every process holds the same weights and all-reduced loss, so all of them decide alike and stop together.
        if (problem := blown_up(train_loss, model, evaluated, splits.val_x[:PROBE_IMAGES], device)) is not None:
            end_diverged(run_dir, epoch, problem, config, logger, dist_info)
        if dist_info.is_main:
            evaluated.eval()
            # In the run's precision: bf16 halves the cost of these 22,000 images, a fifth of an epoch in fp32.
            # The final figures and the published model's are fp32 (finish), as the inference service computes.
            with autocast(device, precision):
                val_out = predict_log_probs(evaluated, splits.val_x, device=device)
                test_out = predict_log_probs(evaluated, splits.test_x, device=device)
                neg_out = (
                    predict_log_probs(evaluated, splits.neg_val_x, device=device)
                    if splits.neg_val_x is not None
                    else None
                )
            val = evaluation_from_log_probs(val_out, splits.val_y)
            test = evaluation_from_log_probs(test_out, splits.test_y)
            seconds = time.perf_counter() - t0
            state.epoch = epoch
            state.train_seconds += seconds
            metrics = {
                "epoch": epoch,
                "train_loss": train_loss,
                "train_accuracy": train_acc,
                "val_loss": val.loss,
                "val_accuracy": val.accuracy,
                "test_loss": test.loss,
                "test_accuracy": test.accuracy,
                "lr": lr,
                "precision": precision,
                "seconds": seconds,
                "images_per_second": seen / train_seconds,
                "elapsed_seconds": time.perf_counter() - wall_start,
            }
            if neg_out is not None:
                assert splits.neg_val_kind is not None
                metrics.update(
                    not_digit_metrics(val_out, test_out, neg_out, splits.neg_val_kind, config.digit_flag_rate)
                )
            state.history.append(metrics)
            print(format_epoch_line(metrics, config.epochs), flush=True)
            assert logger is not None  # the main rank's
            logger.log_epoch(epoch, metrics)
            target = args.target_accuracy
            if target and state.target_reached is None and test.accuracy >= target:
                state.target_reached = {"target": target, "epoch": epoch, "seconds": state.train_seconds}
            payload = checkpoint_payload(model, config, state, run_name, optimizer, scheduler, average)
            payload["eval_subset"] = eval_subset
            payload["publish"] = publish
            payload["preset"] = preset
            if better_than_best(metrics, state, len(splits.val_y)):
                state.best_val_accuracy, state.best_epoch = val.accuracy, epoch
                payload.update(best_val_accuracy=val.accuracy, best_epoch=epoch)
                save_checkpoint(ckpt_dir / BEST, payload)
            save_checkpoint(ckpt_dir / LAST, payload)
        barrier(dist_info)
        epochs_this_process += 1
        if stop_after and epochs_this_process >= stop_after and epoch < config.epochs:
            if dist_info.is_main:
                print(
                    f"stopping after {epochs_this_process} epoch(s) as asked (--stop-after); "
                    f"continue with {resume_flags(args.artifacts_dir, run_name)}",
                    flush=True,
                )
            if logger:
                logger.close()
            shutdown(dist_info)
            return {"run_name": run_name, "run_dir": str(run_dir), "stopped_at_epoch": epoch}

    summary: dict[str, Any] = {}
    if dist_info.is_main:
        assert logger is not None
        summary = finish(
            args, config, model, splits, state, run_name, run_dir, paths, logger, device, wall_start, publish
        )
    # The others wait for the main process's publish, then all leave the process group together: destroyed while
    # the main one was still busy publishing, a process once aborted on its way out ("terminate called without an
    # active exception", CI), and torchrun stopped the run before its publish.
    barrier(dist_info)
    shutdown(dist_info)
    return summary


PROBE_IMAGES = 256  # validation digits the evaluated network must give finite outputs for, after each epoch


def blown_up(
    train_loss: float, model: nn.Module, evaluated: nn.Module, probe: torch.Tensor, device: torch.device
) -> str | None:
    """What shows that training diverged (weights blown up by a learning rate too high for the network), or None:
    a training loss that is not a number, weights or statistics (BatchNorm's running variance) that are not, or
    outputs of the evaluated network that are not, on a few validation digits. A loss can stay finite (1e16)
    while the statistics are already infinite."""
    if not math.isfinite(train_loss):
        return f"training loss {train_loss}"
    tensors = [*model.parameters(), *model.buffers(), *evaluated.parameters(), *evaluated.buffers()]
    if not all(bool(torch.isfinite(t).all()) for t in tensors if t.is_floating_point()):
        return "weights or statistics that are not finite"
    was_training = evaluated.training
    evaluated.eval()
    outputs = predict_log_probs(evaluated, probe, device=device)
    evaluated.train(was_training)
    if not bool(torch.isfinite(outputs).all()):
        return "outputs that are not finite"
    return None


def end_diverged(
    run_dir: Path, epoch: int, problem: str, config: TrainConfig, logger: RunLogger | None, dist_info: DistInfo
) -> NoReturn:
    """Training diverged (blown_up): every later epoch, the fit after the last and the ONNX check would fail on its
    weights. The run ends here, marked finished (FINISHED.json says why) if it has a checkpoint, so a plain
    --resume does not pick it up again and fail the same way. Without one (it diverged in its first epoch) there is
    nothing to resume, and the folder stays free for a new run of the same name, as the message below invites: a
    FINISHED.json there outlived that run and refused its --resume."""
    reason = f"training diverged at epoch {epoch} ({problem})"
    if dist_info.is_main:
        if last_checkpoint(run_dir).exists():
            ended = {"version": None, "served": False, "reason": reason, "finished_at": utc_now()}
            atomic_write_bytes(run_dir / FINISHED, (json.dumps(ended, indent=1) + "\n").encode())
        if logger is not None:
            logger.close()
    shutdown(dist_info)
    # Both named: a weight decay far too high blows the weights up as a learning rate does (--weight-decay 1e30 was
    # blamed on the learning rate).
    raise SystemExit(
        f"{reason}: its weights have blown up, and nothing was published. Start a new run with a lower "
        f"learning rate or weight decay than this run's (--lr {config.lr:g}, --weight-decay {config.weight_decay:g})"
    )


def verified_onnx(payload: dict[str, Any], test_images: torch.Tensor) -> bytes:
    """The published model's ONNX export, checked with onnxruntime against the torch model on the test images
    (shared.onnx_model: log-probabilities within 1e-4, the same digit for every image). A failed check stops the
    publish: the inference service would serve the export."""
    model = model_from_checkpoint(payload)  # fp32, contiguous, on the CPU: what the export and the server see
    onnx = export_onnx(model)
    norm = payload["normalization"]
    check = verify_onnx(onnx, model, normalize(test_images.cpu(), norm["mean"], norm["std"]))
    print(f"ONNX export: {check.describe()}", flush=True)
    if not check.ok:
        raise SystemExit(
            "the ONNX export does not compute what the model does; nothing was published. "
            "The best checkpoint is intact: publish it with --resume once this is fixed"
        )
    return onnx


def finish(
    args,
    config: TrainConfig,
    model: nn.Module,
    splits: Splits,
    state: RunState,
    run_name: str,
    run_dir: Path,
    paths: Paths,
    logger: RunLogger,
    device: torch.device,
    wall_start: float,
    publish: str,
) -> dict[str, Any]:
    """After the last epoch: final pictures and hparams from the best checkpoint, publish it (`publish`: the
    --publish mode, config.publish_mode), print the summary."""
    try:
        best = load_checkpoint(run_dir / CHECKPOINT_DIR / BEST, map_location="cpu")
    except FileNotFoundError:
        # Said as missing: as an OSError in the artifacts folder it was called a folder that cannot be written, and
        # the --resume it advised failed the same way. Not replaced by last.pt: that holds the last epoch's weights,
        # not the best epoch's, which the version's name, the publish gate and the figures stand for.
        raise SystemExit(
            f"the run's best checkpoint {run_dir / CHECKPOINT_DIR / BEST} is missing (deleted or moved?), so there is "
            f"nothing to publish; put it back and continue with {resume_flags(args.artifacts_dir, run_name)}, or "
            "start a new run"
        ) from None
    load_weights(model, best["model"])
    model.eval()
    members = networks(model)
    for i, network in enumerate(members):
        if getattr(network, "distance", None) is None:
            continue
        t0 = time.perf_counter()
        fitted = fit_digit_distance(
            network, splits.train_x, splits.train_y, splits.val_x, device, torch.Generator().manual_seed(config.seed)
        )
        whose = f"member {i + 1}'s " if len(members) > 1 else ""
        if "skipped" in fitted:
            print(
                f"{whose}digit distance: not fitted, {fitted['skipped']}; the class's own score is served", flush=True
            )
        else:
            print(
                f"{whose}digit distance: fitted on {fitted['digits']:,} training digits in "
                f"{time.perf_counter() - t0:.1f} s (validation digits' median squared distance "
                f"{fitted['squared_distance_median']:.1f}, weight {fitted['weight']:.3g})",
                flush=True,
            )
    # The published weights are the best checkpoint's with the fitted buffers.
    best["model"] = {
        **best["model"],
        **{k: v.cpu() for k, v in model.state_dict().items() if is_distance_key(k)},
    }
    best_metrics = next(m for m in best["history"] if m["epoch"] == best["best_epoch"])
    test_out = predict_log_probs(model, splits.test_x, device=device)
    test_eval: Evaluation = evaluation_from_log_probs(test_out, splits.test_y)
    logger.log_evaluation(
        state.epoch, test_eval, splits.test_x, splits.test_y, split="test", weights_of=int(best["best_epoch"])
    )
    # Validation again in fp32, as the publish gate measures the served model: the epoch's own figure may be
    # bf16's, and identical weights once "beat" the published model by 0.01 point that way.
    val_out = predict_log_probs(model, splits.val_x, device=device)
    val_accuracy = evaluation_from_log_probs(val_out, splits.val_y).accuracy
    final = {
        "val_accuracy": val_accuracy,
        "test_accuracy": test_eval.accuracy,
        "test_loss": test_eval.loss,
        "train_loss": best_metrics["train_loss"],
        "best_epoch": float(best["best_epoch"]),
        # How many images the two accuracies are of: with --eval-subset, not MNIST's 10,000 and 12,000, and a
        # model's "test_accuracy=0.792" disagreed with Evaluate's 81.82 % on the whole test set without a word.
        "test_images": float(len(splits.test_y)),
        "val_images": float(len(splits.val_y)),
    }
    not_digit = None
    if splits.neg_val_x is not None and splits.neg_val_kind is not None:  # calibrated again in fp32, as served
        not_digit = not_digit_metrics(
            val_out,
            test_out,
            predict_log_probs(model, splits.neg_val_x, device=device),
            splits.neg_val_kind,
            config.digit_flag_rate,
        )
        final.update(not_digit)
        print(
            f"not a digit: threshold {not_digit['digit_threshold']:.4g} on the digit score flags "
            f"{not_digit['val_digits_flagged']:.2%} of validation and {not_digit['test_digits_flagged']:.2%} of "
            f"test digits, misses {not_digit['val_negatives_missed']:.2%} of validation negatives ("
            + ", ".join(
                f"{k} {not_digit[f'val_negatives_missed_{k}']:.1%}"
                for k in NEGATIVE_KINDS
                if f"val_negatives_missed_{k}" in not_digit
            )
            + ")",
            flush=True,
        )
    hparams = {k: v for k, v in config.to_dict().items() if k not in ("train_subset",)}
    logger.log_hparams(hparams, final, step=state.epoch)
    logger.close()

    manifest = None
    version = f"{run_name}-e{best['best_epoch']:03d}"
    # The gate compares with the served model and the publish changes it: both under the models folder's lock, so
    # a promote (or another trainer) in between is not overwritten by a model the gate never compared with it. The
    # folder is made first, as the lock is the folder's own: two trainers finishing together in a new artifacts
    # folder both found "no model was published before" and both served, the last one whatever it scored.
    if publish != "never":
        paths.models.mkdir(parents=True, exist_ok=True)
    with models_lock(paths.models):
        decision = decide(
            publish,
            version=version,
            val_accuracy=val_accuracy,
            models_dir=paths.models,
            split_seed=config.split_seed,
            val_fraction=config.val_fraction,
            val_x=splits.val_x,
            val_y=splits.val_y,
            device=device,
        )
        if decision.store:
            payload = {
                "arch": config.arch,
                "arch_kwargs": model_kwargs(config),
                "model": best["model"],
                "normalization": best["normalization"],
                "metrics": final,
                "run_name": run_name,
                "epoch": best["best_epoch"],
                "split_seed": config.split_seed,
                "val_fraction": config.val_fraction,
                "config": config.to_dict(),
            }
            if not_digit is not None:  # the server's default threshold (inference --digit-threshold overrides it)
                payload["digit_threshold"] = not_digit["digit_threshold"]
            onnx = verified_onnx(payload, splits.test_x)
            manifest = publish_model(
                paths.models, version=version, serve=decision.serve, model_payload=payload, onnx=onnx
            )

    total = time.perf_counter() - wall_start
    last = state.history[-1]
    print(
        f"done: {state.epoch} epoch{'' if state.epoch == 1 else 's'}, training time {state.train_seconds:.1f} s "
        f"(wall {total:.1f} s in this process)",
        flush=True,
    )
    whole = len(splits.test_y) == FILES["test_labels"][2][0]  # MNIST's 10,000
    subset = "" if whole else f" (on {len(splits.val_y):,} validation and {len(splits.test_y):,} test images: a subset)"
    # The model's figures as published are fp32's; the epochs' lines are the run's precision (bf16 may differ in
    # the last digit, and the best epoch's line once read "val 14.00%, test 14.00%; last epoch test 16.00%" of itself).
    print(
        f"best epoch {best['best_epoch']} by validation accuracy (the latest within one standard error of the "
        f"highest, {max(m['val_accuracy'] for m in state.history):.2%}): as published (fp32) val {val_accuracy:.2%}, "
        f"test {test_eval.accuracy:.2%}{subset}; in the epochs' lines, its val {best_metrics['val_accuracy']:.2%}, "
        f"the last epoch's test {last['test_accuracy']:.2%}, "
        f"the best test {max(m['test_accuracy'] for m in state.history):.2%}",
        flush=True,
    )
    if state.target_reached:
        t = state.target_reached
        print(
            f"reached {t['target']:.2%} test accuracy at epoch {t['epoch']} after {t['seconds']:.1f} s of training",
            flush=True,
        )
    # `manifest` is set exactly when the decision was to store the model (publish_model ran).
    if manifest is not None and decision.serve:
        print(
            f"published model {manifest.version} to {paths.models} (sha256 {manifest.sha256[:12]}): {decision.reason}",
            flush=True,
        )
    elif manifest is not None:
        print(
            f"not published: {decision.reason}. Kept as version {manifest.version}, not served: try it with "
            f"`mnist-client predict --model-version {manifest.version} ...`, serve it with "
            f"`python -m inference.models promote {manifest.version}`",
            flush=True,
        )
    else:
        # A dry run publishes nothing, whatever --publish says: its throwaway folder is gone when it ends.
        print("dry run: nothing is published" if args.dry_run else f"not published ({decision.reason})", flush=True)
    ended = {
        "version": manifest.version if manifest is not None else None,
        "served": bool(manifest is not None and decision.serve),
        "reason": decision.reason,
        "finished_at": utc_now(),
    }
    atomic_write_bytes(run_dir / FINISHED, (json.dumps(ended, indent=1) + "\n").encode())
    return {
        "run_name": run_name,
        "run_dir": str(run_dir),
        "history": state.history,
        "final": final,
        "target_reached": state.target_reached,
        "train_seconds": state.train_seconds,
        "version": manifest.version if manifest is not None and decision.serve else None,
        "kept_version": manifest.version if manifest is not None and not decision.serve else None,
        "publish_reason": decision.reason,
    }

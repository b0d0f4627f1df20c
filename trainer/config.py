"""Training settings: the presets, and the command line that chooses among them and overrides them."""

from __future__ import annotations

import argparse
import json
import os
import warnings
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

import torch

from shared import settings
from shared.checkpoint import MAX_VERSION_BYTES, is_version_name
from shared.cli import ArgumentParser, HelpFormatter, float_between, folder, non_negative_int, number, positive_int
from shared.model import ARCHITECTURES, build_model

from trainer.distributed import runs_on
from trainer.precision import PRECISIONS
from trainer.publish import PUBLISH_MODES


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides what a training run computes. Stored in every checkpoint, so `--resume` continues
    with exactly the run's own settings."""

    arch: str = "compact"
    arch_kwargs: dict[str, Any] = field(default_factory=dict)
    # Networks trained side by side from different initial weights and served as one, their probabilities averaged
    # (shared/model.py Ensemble). 1: a single network.
    members: int = 1
    # 10, not 15: with the weights' moving average scored, 10 epochs matched 15's accuracy (mean 99.62 % over
    # 3 seeds against 99.63 %, stops 33 and 35) in two thirds of the time (docs/benchmarks.md, stop 35).
    epochs: int = 10
    batch_size: int = 128
    optimizer: str = "sgd"  # "sgd" (momentum, Nesterov) or "adamw"
    lr: float = 0.1  # peak learning rate with the one-cycle schedule, the constant one without
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    schedule: str = "onecycle"  # "onecycle" or "constant"
    # One-cycle: share of the steps spent warming up. 0.1, not 0.2: with the moving average scored, the early
    # high learning rate is no longer a risk, and 99.5 % came an epoch sooner on each of three seeds (stop 32).
    warmup_fraction: float = 0.1
    label_smoothing: float = 0.1
    augment: bool = True
    val_fraction: float = 0.2
    seed: int = 0
    split_seed: int = 0  # fixed apart from `seed`, so runs with different seeds validate on the same images
    train_subset: int = 0  # > 0: train on only this many images of the training split (tests, smoke runs)
    # "auto": bf16 autocast where bf16 is native (AMX or AVX512-BF16 CPUs, Ampere+ GPUs), else fp32 (precision.py)
    precision: str = "auto"
    # Outlier exposure (docs/not-a-digit.md): this many pictures that are not digits (trainer/negatives.py) join
    # every batch per digit, as an eleventh class; 0 trains the ten digits alone, with no not-digit class.
    negatives: float = 0.25
    negative_pool: int = 12000  # negatives drawn at the start of a run, augmented anew every time they are used
    # With negatives: this many digits typed in the negatives' fonts (trainer/negatives.py) join every batch per
    # MNIST digit, labelled as the digits they are, so that a font's look does not mean "not a digit".
    typed_digits: float = 0.05
    typed_pool: int = 3000
    # The served threshold on the digit score: the one that flags this fraction of the validation digits. 0.4 %,
    # not 0.5 %, since letters stay upright among the negatives (stop 32): users' drawn digits score lower than
    # MNIST's, and at 0.5 % 0.79-1.04 % of them were flagged (the limit is 1 %), at 0.4 % 0.67-0.84 %.
    digit_flag_rate: float = 0.004
    # Evaluate, checkpoint and publish an exponential moving average of the weights that keeps this fraction of
    # itself at every step (trainer/ema.py): 0.99 remembers about the last 100 steps. 0: the optimizer's weights.
    ema_decay: float = 0.99

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        if "negatives" not in values:  # a run from before the not-digit class: its network has none
            values = {**values, "negatives": 0.0}
        if "typed_digits" not in values:  # a run from before typed digits joined the batches
            values = {**values, "typed_digits": 0.0}
        if "ema_decay" not in values:  # a run from before the moving average: its checkpoints hold plain weights
            values = {**values, "ema_decay": 0.0}
        kept = {k: v for k, v in values.items() if k in known}
        # Each of the type its default has (an int is a float too; a bool is no int): a checkpoint's epochs of "ten"
        # passed, and --resume failed on it later, with a traceback.
        defaults = cls()
        for name, value in kept.items():
            kind = type(getattr(defaults, name))
            fits = isinstance(value, kind) or (kind is float and isinstance(value, int))
            if not fits or (isinstance(value, bool) and kind is not bool):
                raise ValueError(f"setting {name} is {value!r}, not {'an' if kind is int else 'a'} {kind.__name__}")
        return cls(**kept)


PRESETS: dict[str, TrainConfig] = {
    # Fast and accurate on two CPU cores: see docs/training.md and docs/benchmarks.md.
    "default": TrainConfig(),
    # The original notebook, reproduced: MyNet, plain SGD at a constant 0.001, batch 2048, no augmentation.
    "seed": TrainConfig(
        arch="mynet",
        epochs=100,
        batch_size=2048,
        optimizer="sgd",
        lr=0.001,
        momentum=0.9,
        nesterov=False,
        weight_decay=0.0,
        schedule="constant",
        label_smoothing=0.0,
        augment=False,
        precision="fp32",  # the notebook's arithmetic; --precision bf16 opts in
        negatives=0.0,  # the notebook's ten classes
        ema_decay=0.0,  # the notebook's own weights
    ),
}

# The network's keyword arguments the trainer sets itself, never --arch-kwargs: the not-digit class and its digit
# distance, on when a run trains with negatives (train.model_kwargs). Given with --negatives 0, the class's column
# was trained as an eleventh digit and published untrained, with no threshold.
TRAINER_ARCH_KWARGS = frozenset({"not_digit", "digit_distance"})

# Flags that override a preset's field when given. None means "keep the preset's value".
_OVERRIDES = (
    "arch",
    "arch_kwargs",
    "members",
    "epochs",
    "batch_size",
    "lr",
    "seed",
    "train_subset",
    "optimizer",
    "weight_decay",
    "label_smoothing",
    "precision",
    "negatives",
    "ema_decay",
)


def decay(text: str) -> float:
    """argparse type: a moving average's decay, 0 (none) or more and below 1."""
    value = number(text, "of at least 0 and below 1")
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 0 and below 1 (0 turns the average off), got {text!r}")
    return value


def run_name(text: str) -> str:
    """argparse type: a run's folder name, which also begins its published versions' names (<run>-e010)."""
    if text.startswith("-"):
        raise argparse.ArgumentTypeError(
            f"{text!r} cannot name a run: starting with '-', it is read as a flag in the commands that continue the "
            f"run (--resume --run-name {text}) and serve its models (promote {text}-e010); start it with a letter or "
            "digit"
        )
    # The shortest suffix a version has (up to epoch 999); config_from_args checks the longest the run's epochs give.
    if not text or not is_version_name(f"{text}-e999"):
        raise argparse.ArgumentTypeError(
            f"{text!r} cannot name a run: its published models are files named <run>-e010.pt, so it must be a plain "
            "file name (no '/', not starting with '.', UTF-8, not too long)"
        )
    return text


def device_name(text: str) -> str:
    """argparse type: a device the trainer runs on, checked as the command line (or MNIST_DEVICE) is read; whether
    this machine has it is resolve_device's to say, when the run starts."""
    if not runs_on(text):
        raise argparse.ArgumentTypeError(f"must be auto, cpu, cuda or cuda:N, got {text!r}")
    return text


# The largest learning rate and weight decay taken: far above any that trains (the presets' are 0.1 and 0.001, and
# 5e-4 and 0), so that a larger one is a slip; yet high enough that a run can still be seen to diverge. Beyond
# float32's range (3.4e38) the optimizer's first step failed with a traceback.
MAX_LR = 1000.0
MAX_WEIGHT_DECAY = 1000.0
# The most pictures that are not digits per digit in a batch: 40 times the default's 0.25 (0.5 is the most tried,
# docs/not-a-digit.md), ten batches of them beside one of digits. A ratio like 1e300 overflowed a C++ size.
MAX_NEGATIVES = 10.0

DEFAULT_PUBLISH = "if-better"  # --publish when neither given nor kept by a resumed run


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="python -m trainer",
        description="Train an MNIST digit classifier; log to TensorBoard; publish the best model for inference.",
        formatter_class=HelpFormatter,
        add_help=add_help,
    )
    preset_env = settings.env_str(settings.ENV_PRESET, "default")
    # The default is None, and chosen_preset reads the environment's ('default' if unset): None tells a resume that
    # nothing was typed. argparse checks `choices` against typed values only, so an unusable MNIST_PRESET is the
    # default here instead, for the parser to refuse unless --preset is typed.
    preset_default = None
    if preset_env not in PRESETS:
        preset_default = settings.InvalidEnv(
            f"environment variable {settings.ENV_PRESET}={preset_env!r} must be one of: {', '.join(sorted(PRESETS))}"
        )
    parser.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        default=preset_default,
        help="what to train: 'default' (fast, accurate) or 'seed' (the original notebook)"
        + ("" if preset_default else f" (default: {preset_env})")
        + f" [env {settings.ENV_PRESET}]",
    )
    # Unset or blank: the preset's. Set: at least 1 (0 used to mean the preset's too, silently).
    epochs_env = settings.env_value(settings.ENV_EPOCHS, None, positive_int)
    preset_epochs = f"{PRESETS['default'].epochs} or {PRESETS['seed'].epochs}"
    seed_env = settings.env_value(settings.ENV_SEED, None, seed_number)
    preset_seeds = " or ".join(sorted({str(preset.seed) for preset in PRESETS.values()}))
    parser.add_argument(
        "--epochs",
        type=positive_int,
        default=epochs_env,
        # Set in the environment, its value is the default, which the help formatter shows (it once showed both).
        help="epochs to train"
        + ("" if epochs_env is not None else f" (default: the preset's, {preset_epochs})")
        + f" [env {settings.ENV_EPOCHS}]",
    )
    parser.add_argument(
        "--arch",
        choices=sorted(ARCHITECTURES),
        default=None,
        help="network (default: the preset's: 'compact', or 'mynet' for the seed preset)",
    )
    parser.add_argument(
        "--arch-kwargs",
        type=json_object,
        default=None,
        metavar="JSON",
        help="the network's keyword arguments, e.g. '{\"width\": 24}' (default: the preset's)",
    )
    parser.add_argument(
        "--members",
        type=positive_int,
        default=None,
        help="networks trained side by side from different initial weights and served as one, their probabilities "
        "averaged; each costs a network's training and inference time (default: the preset's)",
    )
    parser.add_argument("--batch-size", type=positive_int, default=None, help="images per step (default: the preset's)")
    parser.add_argument(
        "--lr",
        type=float_between(0, MAX_LR, low_open=True),
        default=None,
        help="peak learning rate (default: the preset's)",
    )
    parser.add_argument("--optimizer", choices=("sgd", "adamw"), default=None, help="default: the preset's")
    parser.add_argument(
        "--weight-decay", type=float_between(0, MAX_WEIGHT_DECAY), default=None, help="default: the preset's"
    )
    parser.add_argument(
        "--label-smoothing", type=float_between(0, 1, high_open=True), default=None, help="default: the preset's"
    )
    parser.add_argument(
        "--precision",
        choices=PRECISIONS,
        default=None,
        help="arithmetic of training: 'auto' is bf16 autocast where bf16 is native (CPUs with AMX or "
        "AVX512-BF16, GPUs from Ampere on) and fp32 elsewhere; 'bf16' or 'fp32' forces one "
        "(default: the preset's, 'auto', or 'fp32' for the seed preset)",
    )
    parser.add_argument(
        "--negatives",
        type=float_between(0, MAX_NEGATIVES),
        default=None,
        metavar="RATIO",
        help="pictures that are not digits added to each batch per digit, as an eleventh class "
        "(outlier exposure; docs/not-a-digit.md); 0 trains without the not-digit class "
        "(default: the preset's, 0.25, or 0 for the seed preset)",
    )
    parser.add_argument(
        "--ema-decay",
        type=decay,
        default=None,
        metavar="DECAY",
        help="evaluate, checkpoint and publish a moving average of the weights that keeps this much of itself "
        "at every step (trainer/ema.py); 0 uses the optimizer's own weights "
        "(default: the preset's, 0.99, or 0 for the seed preset)",
    )
    parser.add_argument(
        "--no-augment",
        dest="augment",
        action="store_false",
        default=None,
        help="train without random rotations, shifts and stroke changes",
    )
    parser.add_argument(
        "--seed",
        type=seed_number,
        # None where neither is given (the preset's, 0): a typed --seed 0 is then told from none (a resumed run
        # names the flags it ignores, and said nothing of a typed 0). Set in the environment, as for --epochs.
        default=seed_env,
        help=f"random seed for initialisation, order and augmentation, 0 to {VALIDATION_PICTURE_SEEDS - 1:,}"
        + ("" if seed_env is not None else f" (default: the preset's, {preset_seeds})")
        + f" [env {settings.ENV_SEED}]",
    )
    parser.add_argument(
        "--train-subset",
        type=non_negative_int,
        default=None,
        help="train on only the first N images of the training split, with pools of pictures that are not digits "
        "and of typed digits in proportion (N/4 and N/20, at least 600 and 100): for smoke runs and tests",
    )
    parser.add_argument(
        "--eval-subset",
        type=non_negative_int,
        default=0,
        help="evaluate on only the first N validation and N test images, and validation pictures that are not "
        "digits in the same proportion (at least 20 of each kind): each epoch's figures, the final ones, the publish "
        "gate's comparison and the ONNX check (smoke runs and tests; --dry-run: 500; 0 = all)",
    )
    parser.add_argument(
        "--data-dir",
        type=folder,
        default=settings.data_dir(),
        help=f"folder with the four MNIST files; downloaded there if missing [env {settings.ENV_DATA_DIR}]",
    )
    parser.add_argument(
        "--no-download",
        dest="download",
        action="store_false",
        help="fail instead of downloading MNIST when it is missing",
    )
    parser.add_argument(
        "--artifacts-dir",
        type=folder,
        default=settings.artifacts_dir(),
        help=f"where runs (TensorBoard logs, checkpoints) and published models go [env {settings.ENV_ARTIFACTS_DIR}]",
    )
    parser.add_argument(
        "--run-name",
        type=run_name,
        default=None,
        help="name of the run's folder under runs/ (default: time, preset, network and seed)",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue the run --run-name (default: the newest unfinished run) from its last checkpoint",
    )
    parser.add_argument(
        "--stop-after",
        type=positive_int,
        default=None,
        metavar="N",
        help="stop after N epochs of this process and leave a checkpoint for --resume (time-boxed machines, tests)",
    )
    parser.add_argument(
        "--device",
        type=device_name,
        # Checked here, as MNIST_DEVICE too: refused when the run started, it was said as "--device gpu" though no
        # flag had been typed.
        default=settings.env_value(settings.ENV_DEVICE, "auto", device_name),
        help=f"'auto' (CUDA when present), 'cpu', 'cuda' or 'cuda:N' [env {settings.ENV_DEVICE}]",
    )
    parser.add_argument(
        "--publish",
        choices=PUBLISH_MODES,
        default=None,
        help=f"when to serve the run's best model: '{DEFAULT_PUBLISH}' (the default) only if its validation "
        "accuracy beats the published model's on the same validation images (else it is kept as a version "
        "that is not served, to promote by hand); 'always'; 'never' (not written at all). "
        "--resume keeps the run's own unless given again",
    )
    parser.add_argument(
        "--no-publish", dest="publish", action="store_const", const="never", help="the same as --publish never"
    )
    parser.add_argument(
        "--no-picture-cache",
        dest="picture_cache",
        action="store_false",
        help="draw the pictures that are not digits anew rather than read the ones an earlier run with the same seed "
        "kept in ARTIFACTS/cache/ (the same pictures, to the bit; for timing a first run)",
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="one training batch and a small evaluation, to check that everything runs; "
        "writes to a throwaway run and publishes nothing",
    )
    parser.add_argument(
        "--check-only",
        action="store_true",
        help="check the settings (flags, environment variables, device, the run's name, the MNIST files: "
        "downloaded if missing unless --no-download, and verified) and exit without training: what `make stack` "
        "asks before it starts anything",
    )
    parser.add_argument(
        "--target-accuracy",
        type=float_between(0, 1, low_open=True),
        default=None,
        help="also report when test accuracy first reaches this (e.g. 0.995); never used to stop or select",
    )
    return parser


def publish_mode(args: argparse.Namespace, resumed: dict[str, Any] | None) -> str:
    """--publish as given, else the resumed run's own (a run started with --no-publish is not served by the
    --resume its messages suggest), else DEFAULT_PUBLISH. A dry run publishes nothing."""
    if args.dry_run:
        return "never"
    if args.publish is not None:
        return args.publish
    if resumed is not None and resumed.get("publish") in PUBLISH_MODES:
        return resumed["publish"]
    return DEFAULT_PUBLISH


# The validation split's pictures that are not digits are drawn with seed VALIDATION_PICTURE_SEEDS + split seed, the
# training ones with the run's seed: a run seed from here on could draw the validation pictures and train on them.
VALIDATION_PICTURE_SEEDS = 1_000_000


def seed_number(text: str) -> int:
    """argparse type: a run's seed, 0 to VALIDATION_PICTURE_SEEDS - 1. Checked as the command line is read, so that
    MNIST_SEED is refused under its own name (it was refused once the run started, as "--seed ...")."""
    value = non_negative_int(text)
    if value >= VALIDATION_PICTURE_SEEDS:
        raise argparse.ArgumentTypeError(
            f"must be at most {VALIDATION_PICTURE_SEEDS - 1:,}, got {value}: seeds from {VALIDATION_PICTURE_SEEDS:,} "
            "on draw the validation split's pictures; choose a smaller one"
        )
    return value


def chosen_preset(args: argparse.Namespace) -> str:
    """--preset as typed, else MNIST_PRESET, else 'default' (the parser has checked the variable)."""
    return args.preset or settings.env_str(settings.ENV_PRESET, "default")


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The preset's config with the flags the user gave applied on top (the parser has checked each: the seed's
    range is seed_number's). SystemExit, before any data is read, if its network cannot be built (an --arch-kwargs
    name the network does not take)."""
    config = replace(PRESETS[chosen_preset(args)], **overrides_given(args))
    # The best epoch names the published version, <run>-e{epoch:03d}: from epoch 1,000 on a byte longer than the
    # -e999 the parser checked the name with, so a long name failed at the publish, after the whole run.
    suffix = f"-e{config.epochs:03d}"
    if args.run_name is not None and not is_version_name(args.run_name + suffix):
        raise SystemExit(
            f"--run-name: a name of {len(args.run_name.encode())} bytes is too long for {config.epochs:,} epochs: the "
            f"run's versions (<run>{suffix}) are file names of at most {MAX_VERSION_BYTES} bytes, so the name may have "
            f"{MAX_VERSION_BYTES - len(suffix)}; choose a shorter one"
        )
    if "members" in config.arch_kwargs:
        raise SystemExit(
            f"--arch-kwargs {json.dumps(config.arch_kwargs)}: members is not the network's own setting; "
            "give it as --members"
        )
    reserved = sorted(TRAINER_ARCH_KWARGS & config.arch_kwargs.keys())
    if reserved:
        raise SystemExit(
            f"--arch-kwargs {json.dumps(config.arch_kwargs)}: {' and '.join(reserved)} "
            f"{'are' if len(reserved) > 1 else 'is'} the trainer's to set (on "
            "when --negatives is above 0, which trains them); leave them out"
        )
    try:
        # Built and run once on one blank image: a width of 0 builds (with a warning) and fails only in its first
        # forward pass, which was the training's first step, a traceback.
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # torch's about zero-element weights, before the one line that says why
            build_model(config.arch, **config.arch_kwargs).eval()(torch.zeros(1, 1, 28, 28))
    except (TypeError, ValueError, RuntimeError) as e:  # RuntimeError: torch's, for a width of -3 or 0
        raise SystemExit(
            f"--arch-kwargs {json.dumps(config.arch_kwargs)}: the {config.arch} network cannot be built with them ({e})"
        ) from None
    return config


def json_object(text: str) -> dict[str, Any]:
    """argparse type: a JSON object, e.g. '{"width": 24}'."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"not JSON ({e})") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("a JSON object is needed, e.g. '{\"width\": 24}'")
    return value


def overrides_given(args: argparse.Namespace) -> dict[str, Any]:
    """The settings the command line gives, by TrainConfig field name."""
    overrides = {name: getattr(args, name) for name in _OVERRIDES if getattr(args, name, None) is not None}
    if args.augment is not None:
        overrides["augment"] = args.augment
    return overrides


def ignored_on_resume(args: argparse.Namespace, config: TrainConfig, run_preset: str | None = None) -> list[str]:
    """The settings a resumed run does not apply, as given ('--lr 5'): those that differ from the run's own.
    --precision applies (like --device, it is the machine's). A value that equals its environment variable's is
    named as that variable ('MNIST_EPOCHS=10'): no flag may have been typed. `run_preset`: the preset the run was
    started with (checkpoints keep it), compared with --preset or MNIST_PRESET."""
    ignored = []
    preset_env = os.environ.get(settings.ENV_PRESET, "").strip()
    if run_preset is not None and args.preset is not None and args.preset != run_preset:
        ignored.append(f"--preset {args.preset}")
    elif run_preset is not None and args.preset is None and preset_env and preset_env != run_preset:
        ignored.append(f"{settings.ENV_PRESET}={preset_env}")
    for name, value in overrides_given(args).items():
        if name == "precision" or value == getattr(config, name):
            continue
        env = _ENV_DEFAULTS.get(name)
        if env is not None and os.environ.get(env, "").strip() and value == settings.env_int(env, 0):
            ignored.append(f"{env}={value}")
            continue
        flag = "--no-augment" if name == "augment" else f"--{name.replace('_', '-')} {value}"
        ignored.append(flag)
    return ignored


_ENV_DEFAULTS = {"seed": settings.ENV_SEED, "epochs": settings.ENV_EPOCHS}  # flags whose default an env variable sets

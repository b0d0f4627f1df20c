"""Telling pictures that are not digits: the not-digit class against scores of a plain digit model, and what
the class costs the digits.

    python -m bench.bench_not_digit --train --seeds 0 1 2          # train both variants per seed, then measure
    python -m bench.bench_not_digit --models /tmp/bench            # measure models trained before

For each seed, two models trained by the trainer's default preset, the same in everything but `--negatives`:
"baseline" (0: ten classes, as before) and "notdigit" (the default, 0.25: outlier exposure with an eleventh
class). Their published models live in <models>/<variant>-s<seed>/models.

Measured on each model, directly in torch on the 28x28 pictures the server's pipeline makes (the pictures are
decoded once, by shared.image_pipeline, exactly as the server decodes them):

  - MNIST test accuracy (fp32, as served);
  - for each way of scoring "digit-like" -- the served digit score and the not-digit class's own (notdigit
    models; they differ where the model has its digit distance, docs/not-a-digit.md), and for both
    models the maximum softmax probability, the energy (logsumexp of the digit logits) and the maximum logit --
    the threshold that flags the trainer's share of the validation digits (`TrainConfig.digit_flag_rate`), and at
    it the share of the tests' negatives (testkit/not_digits.py: other fonts and other kinds than the trainer's)
    flagged, per kind, and the share of users' real digits flagged (tests/user_images.py: every style and the
    printed digits);
  - users' drawing accuracy per style.

Prints one table per figure; means over the seeds. Through gRPC, the same figures are tested in
tests/inference/test_not_digit.py.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from shared import settings  # noqa: E402 - after the path above
from shared.cli import non_negative_int, positive_int  # noqa: E402

from trainer.config import TrainConfig  # noqa: E402

VARIANTS = {"baseline": 0.0, "notdigit": 0.25}
FLAG_RATE = TrainConfig().digit_flag_rate  # every score is compared where the served one stands


def train(models: Path, data_dir: Path, seeds: list[int], epochs: int | None) -> None:
    from trainer.__main__ import main as trainer_main
    from trainer.run_folder import last_checkpoint

    for seed in seeds:
        for variant, negatives in VARIANTS.items():
            root = models / f"{variant}-s{seed}"
            if (root / "models" / "LATEST.json").exists():
                continue
            # A training cut short left its checkpoints: continue it (a new run refuses the folder).
            resume = (
                ["--resume"] if last_checkpoint(settings.Paths(root).run_dir(f"{variant}-s{seed}")).exists() else []
            )
            argv = [
                *resume,
                "--data-dir",
                str(data_dir),
                "--no-download",
                "--device",
                "cpu",
                "--artifacts-dir",
                str(root),
                "--seed",
                str(seed),
                "--negatives",
                str(negatives),
                "--run-name",
                f"{variant}-s{seed}",
            ]
            if epochs is not None:
                argv += ["--epochs", str(epochs)]
            if trainer_main(argv) != 0:
                raise SystemExit(f"training {variant} seed {seed} failed")


def decoded_pictures(mnist) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{group: (28x28 uint8 images, labels or -1)} of the tests' negatives by kind and users' digits by style,
    through the server's pipeline; made once and cached (testkit/cache.py)."""
    from shared.image_pipeline import ImageRejected, to_mnist

    from testkit.cache import cached_pickle, code_hash
    from testkit.not_digits import make_not_digits
    from testkit.user_images import PAPER_KINDS, cached_user_images, make_printed_digits

    def make():
        groups: dict[str, list] = {}
        for picture in make_not_digits(per_kind=200, seed=0):
            groups.setdefault(f"neg:{picture.kind}", []).append((picture.data, -1))
        # The tests' pictures of users' digits (300 per style, cached by the tests too), and the printed digits.
        users = (
            cached_user_images(mnist, "drawn", None)
            + cached_user_images(mnist, "paper", list(PAPER_KINDS))
            + make_printed_digits(per_font=10, seed=0)
        )
        for picture in users:
            groups.setdefault(f"user:{picture.style}", []).append((picture.data, picture.label))
        out = {}
        for name, items in groups.items():
            images, labels = [], []
            for data, label in items:
                try:
                    images.append(to_mnist(data))
                except ImageRejected:
                    continue  # the server rejects it: neither flagged nor read
                labels.append(label)
            out[name] = (np.stack(images), np.array(labels))
        return out

    key = code_hash(
        (
            "testkit/not_digits.py",
            "testkit/user_images.py",
            "shared/normalize.py",
            "shared/image_pipeline.py",
            "shared/decode.py",
        ),
        extra="bench-not-digit",
    )
    return cached_pickle("not-digit-pictures", key, make)


def scores(model, images: np.ndarray, mean: float, std: float) -> dict[str, np.ndarray]:
    """Every digit-likeness score of `model` on uint8 images (N, 28, 28), higher = more digit-like."""
    from shared.data import normalize
    from shared.model import DIGITS, digit_scores, embed, output_from_embedding, segment_scores

    with torch.no_grad():
        embedding = embed(model, normalize(torch.from_numpy(images), mean, std))
        logits = model.head[-1](embedding).double()
        output = output_from_embedding(model, embedding)
    digits = logits[:, :DIGITS]
    out = {
        "max_softmax": torch.softmax(digits, 1).max(1).values.numpy(),
        "energy": torch.logsumexp(digits, 1).numpy(),
        "max_logit": digits.max(1).values.numpy(),
    }
    if logits.shape[1] > DIGITS:
        out["digit_score"] = digit_scores(output).double().numpy()  # as served: with the digit distance, if any
        out["class_score"] = segment_scores(output)  # the class alone
    return out


def measure(root: Path, pictures: dict, mnist, val_images: np.ndarray) -> dict:
    from shared.checkpoint import read_manifest, read_published_model
    from shared.data import normalize

    models = root / "models"
    payload, model = read_published_model(models, read_manifest(models))
    mean, std = payload["normalization"]["mean"], payload["normalization"]["std"]
    with torch.no_grad():
        out = model(normalize(mnist.test_images, mean, std))[:, :10]
    result = {
        "test_accuracy": float((out.argmax(1) == mnist.test_labels).float().mean()),
        "served_threshold": payload.get("digit_threshold"),
        "flagged": {},
        "user_accuracy": {},
    }
    val = scores(model, val_images, mean, std)
    for name, (images, labels) in pictures.items():
        s = scores(model, images, mean, std)
        for method, values in s.items():
            threshold = np.sort(val[method])[int(FLAG_RATE * len(val[method]))]
            result["flagged"].setdefault(method, {})[name] = float((values < threshold).mean())
        if name.startswith("user:"):
            with torch.no_grad():
                read = model(normalize(torch.from_numpy(images), mean, std))[:, :10].argmax(1).numpy()
            result["user_accuracy"][name] = float((read == labels).mean())
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_not_digit", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--models",
        type=Path,
        default=Path("/tmp/mnist-bench-not-digit"),
        help="folder of the trained variants, <variant>-s<seed>/models",
    )
    parser.add_argument("--data-dir", type=Path, default=settings.data_dir())
    parser.add_argument("--train", action="store_true", help="train the variants that are missing first")
    parser.add_argument("--seeds", type=non_negative_int, nargs="+", default=[0, 1, 2])
    # --epochs 0 was taken for "not given" and trained the preset's count: refused here instead.
    parser.add_argument(
        "--epochs", type=positive_int, default=None, help=f"default: the preset's ({TrainConfig().epochs})"
    )
    args = parser.parse_args(argv)

    from shared.data import load_mnist, train_val_split

    torch.set_num_threads(2)
    if args.train:
        train(args.models, args.data_dir, args.seeds, args.epochs)
    found = {
        v: [s for s in args.seeds if (args.models / f"{v}-s{s}" / "models" / "LATEST.json").exists()] for v in VARIANTS
    }
    missing = [f"{v}-s{s}" for v in VARIANTS for s in args.seeds if s not in found[v]]
    if missing:  # a mean over fewer seeds, or a comparison without its baseline, would read as the whole
        raise SystemExit(
            f"no trained model in {args.models} for {', '.join(missing)}: train them first (--train), or ask for "
            "the seeds there are (--seeds)"
        )
    mnist = load_mnist(args.data_dir, download=False)
    _, val_idx = train_val_split(len(mnist.train_images), val_fraction=0.2, seed=0)
    val_images = mnist.train_images[val_idx].numpy()
    pictures = decoded_pictures(mnist)
    results: dict[str, list[dict]] = {}
    for variant in VARIANTS:
        for seed in args.seeds:
            results.setdefault(variant, []).append(
                measure(args.models / f"{variant}-s{seed}", pictures, mnist, val_images)
            )
    print(f"MNIST test accuracy, mean over seeds {args.seeds} (each seed listed):")
    for variant, runs in results.items():
        accs = [r["test_accuracy"] for r in runs]
        print(f"  {variant:<9} {np.mean(accs):.4%}  ({', '.join(f'{a:.2%}' for a in accs)})")
    print(
        f"\nShare flagged as not a digit, threshold at {FLAG_RATE:.1%} of validation digits flagged (mean over seeds):"
    )
    names = sorted(next(iter(results.values()))[0]["flagged"]["max_softmax"])
    columns = [(variant, method) for variant, runs in results.items() for method in runs[0]["flagged"]]
    print(f"  {'pictures':<24}" + "".join(f"{v[:5] + ':' + m:>22}" for v, m in columns))
    for name in names:
        cells = [np.mean([r["flagged"][m][name] for r in results[v]]) for v, m in columns]
        print(f"  {name:<24}" + "".join(f"{c:>22.2%}" for c in cells))
    print("\nUsers' digits read correctly (mean over seeds):")
    print(f"  {'style':<24}" + "".join(f"{v:>12}" for v in results))
    for name in names:
        if name.startswith("user:"):
            print(
                f"  {name:<24}"
                + "".join(f"{np.mean([r['user_accuracy'][name] for r in runs]):>12.2%}" for runs in results.values())
            )
    for variant, runs in results.items():
        thresholds = [r["served_threshold"] for r in runs if r["served_threshold"] is not None]
        if thresholds:
            print(
                f"\n{variant}: served thresholds (trainer, {FLAG_RATE:.1%} of validation digits): "
                + ", ".join(f"{t:.4f}" for t in thresholds)
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())

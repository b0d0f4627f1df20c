"""An ensemble (`python -m trainer --members N`) against each of its members alone, in the same run.

    python -m trainer --members 3 --artifacts-dir /tmp/ens --run-name m3      # about 10 minutes on 2 cores
    python -m bench.bench_ensemble --artifacts /tmp/ens                       # about 10 minutes more
    python -m bench.bench_ensemble --artifacts /tmp/ens --number-sets 7 0 1   # more numbers, more time

The published model's members are read one at a time and together (shared/model.py Ensemble: their probabilities
averaged), each in torch on the same pictures:

  - MNIST test accuracy;
  - users' digits read right and flagged as no digit (the tests' pictures of every style, through the server's
    pipeline), and the tests' non-digits flagged, by kind (testkit/not_digits.py), the threshold of each reader
    chosen as the trainer chooses the served one (TrainConfig.digit_flag_rate of the validation digits);
  - whole numbers of 4-8 digits read right, apart and touching (testkit/numbers.py, `--per-style` per drawn style
    and layout for each number set), and digits right, as bench.bench_read_number scores them.

A member's figures are what a run of `--members 1` of the same recipe gives (each member learns from its own loss,
as if alone), so the rows compare an ensemble with single networks trained alongside it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from shared import settings
from shared.cli import HelpFormatter, non_negative_int, positive_int

from bench.bench_not_digit import FLAG_RATE, decoded_pictures
from bench.bench_read_number import network_reader
from bench.machine import describe_machine


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.bench_ensemble",
        description=__doc__.split("\n\n")[0],
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--artifacts", type=Path, default=Path("artifacts"), help="holds the ensemble's models/")
    parser.add_argument("--data-dir", type=Path, default=settings.data_dir(), help="the MNIST files")
    parser.add_argument("--per-style", type=positive_int, default=80, help="numbers per drawn style and layout")
    parser.add_argument(
        "--number-sets", type=non_negative_int, nargs="+", default=[7], help="seeds of the number sets to read"
    )
    return parser


def readers(model: torch.nn.Module) -> dict[str, torch.nn.Module]:
    """{name: network}: each member alone, then the ensemble."""
    from shared.model import DIGITS, Ensemble, networks, output_columns

    if not isinstance(model, Ensemble):
        raise SystemExit("the published model is a single network: train one with --members 2 or more")
    if output_columns(model) == DIGITS:
        raise SystemExit("the published model has no not-digit class (trained with --negatives 0): train it with some")
    return {**{f"member {i + 1}": m for i, m in enumerate(networks(model))}, f"all {len(model.members)}": model}


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    from shared.checkpoint import read_manifest, read_published_model
    from shared.data import load_mnist, normalize, train_val_split
    from shared.model import digit_scores

    from testkit.number_scores import score_by_style
    from testkit.numbers import make_numbers

    torch.set_num_threads(1)
    models = settings.Paths(args.artifacts).models
    manifest = read_manifest(models)
    if manifest is None:
        raise SystemExit(f"no published model in {models}: train one with --members 3 first")
    payload, model = read_published_model(models, manifest)
    model.eval()
    compared = readers(model)  # before the pictures: a single network is refused at once
    mean, std = payload["normalization"]["mean"], payload["normalization"]["std"]
    mnist = load_mnist(args.data_dir, download=False, verify=False)
    _, val_idx = train_val_split(
        len(mnist.train_images), val_fraction=payload.get("val_fraction", 0.2), seed=payload.get("split_seed", 0)
    )
    groups = {"val": mnist.train_images[val_idx].numpy(), "test": mnist.test_images.numpy()}
    pictures = decoded_pictures(mnist)
    groups.update({name: images for name, (images, _) in pictures.items()})
    numbers = {
        (layout, seed): make_numbers(
            mnist.test_images.numpy(), mnist.test_labels.numpy(), per_style=args.per_style, seed=seed, layout=layout
        )
        for seed in args.number_sets
        for layout in ("apart", "touching")
    }
    print(describe_machine())
    print(f"model {manifest.version}; numbers: sets {args.number_sets}, {args.per_style} per style and layout\n")
    for name, network in compared.items():
        with torch.no_grad():
            out = {k: network(normalize(torch.from_numpy(v), mean, std)) for k, v in groups.items()}
        scores = {k: digit_scores(o).double().numpy() for k, o in out.items()}
        threshold = np.sort(scores["val"])[int(FLAG_RATE * len(scores["val"]))]
        mnist_accuracy = float((out["test"][:, :10].argmax(1) == mnist.test_labels).float().mean())
        users = [k for k in pictures if k.startswith("user:")]
        read = np.mean([(out[k][:, :10].argmax(1).numpy() == pictures[k][1]).mean() for k in users])
        users_flagged = [(scores[k] < threshold).mean() for k in users]
        kinds = {k[4:]: (scores[k] < threshold).mean() for k in pictures if k.startswith("neg:")}

        read_text, _ = network_reader(network, mean, std)

        totals: dict[str, np.ndarray] = {}  # layout -> (numbers, read whole, digits, digit errors)
        for (layout, _), made in numbers.items():
            (whole,) = [
                s for s in score_by_style(layout, made, [read_text(p.data) for p in made]) if s.name.endswith(" all")
            ]
            counts = np.array([whole.numbers, whole.whole, whole.digits, whole.digit_errors])
            totals[layout] = totals.get(layout, np.zeros(4, dtype=int)) + counts
        number_line = "; ".join(
            f"{layout} {n_whole / n:.2%} whole, {1 - errors / n_digits:.2%} digits"
            for layout, (n, n_whole, n_digits, errors) in totals.items()
        )
        flagged = f"flagged {np.mean(users_flagged):.2%} (most {np.max(users_flagged):.2%})"
        print(
            f"{name:>9}: MNIST {mnist_accuracy:.2%}; users' digits read {read:.2%}, {flagged}; non-digits flagged "
            f"{np.mean(list(kinds.values())):.2%} ("
            + ", ".join(f"{k} {v:.1%}" for k, v in sorted(kinds.items()))
            + f"); numbers {number_line}",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Accuracy on users' pictures, per style: drawn styles made from MNIST test digits, and printed digits.

    python -m bench.bench_user_images --checkpoint artifacts/models/<version>.pt     # local model, in-process
    python -m bench.bench_user_images --target localhost:50051 [--token T]           # a running server (gRPC)
    ... [--per-style 100] [--per-font 20] [--mnist 2000] [--check]

Every picture goes through exactly what the server runs (shared.image_pipeline.to_mnist, then the model), so
the local and gRPC figures agree for the same model. `--mnist N` also classifies N genuine MNIST test digits
twice, directly and as PNG files through the pipeline: the pipeline should cost them (almost) no accuracy.
`--check` exits 1 when a target is missed: 98% on every drawn style, 97% on each paper kind (95% on low-resolution
scans), 90% on printed digits; and when a group asked for scored no picture.

The scoring (`evaluate_styles(predict, pictures, targets=...)`, which tests/inference/test_user_drawings.py uses
with its own targets) lives in testkit/style_scores.py; the benchmark's targets are style_target's.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from shared.cli import non_negative_int, positive_int

from testkit.style_scores import Predict, StyleScore, evaluate_styles, format_report, missed_targets
from testkit.user_images import (
    ALL_STYLES,
    DRAWN_STYLES,
    PAPER_KINDS,
    PRINTED_STYLE,
    SCENE_KINDS,
    UserImage,
    encode,
    make_printed_digits,
    make_user_images,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA_DIR = REPO_ROOT.parent / "shared" / "data" / "mnist"  # as tests/conftest.py; or MNIST_DATA_DIR
DRAWN_TARGET = 0.98
PRINTED_TARGET = 0.90
PAPER_TARGET = 0.97  # each paper kind; low-resolution scans 95 %
LOW_RESOLUTION_TARGET = 0.95


def style_target(style: str) -> float | None:
    """The accuracy a style should reach (`--check`), or None for none (mnist_png: compared with the direct
    accuracy instead)."""
    if style in DRAWN_STYLES:
        return DRAWN_TARGET
    if style in PAPER_KINDS:
        return LOW_RESOLUTION_TARGET if style == "low_resolution" else PAPER_TARGET
    return PRINTED_TARGET if style == PRINTED_STYLE else None


# ---------------------------------------------------------------------------------------------------------------
# Predictors


def local_predictor(checkpoint_path: str | Path, *, device: str = "cpu") -> Predict:
    """A model file or training checkpoint, run in-process behind the same pipeline as the server."""
    import torch

    from shared.checkpoint import load_checkpoint, model_from_checkpoint
    from shared.image_pipeline import ImageRejected, to_mnist
    from shared.metrics import predict_log_probs

    checkpoint = load_checkpoint(Path(checkpoint_path), map_location=device)
    model = model_from_checkpoint(checkpoint).to(device)
    mean, std = checkpoint_normalization(checkpoint)

    def predict(encoded: Sequence[bytes]) -> list:
        images: list = []
        for data in encoded:
            try:
                images.append(to_mnist(data))
            except ImageRejected:
                images.append(None)
        accepted = [image for image in images if image is not None]
        digits = iter([])
        if accepted:
            batch = torch.from_numpy(np.stack(accepted))  # (N, 28, 28) uint8
            log_probs = predict_log_probs(model, batch, mean=mean, std=std, device=device)
            digits = iter(log_probs[:, :10].argmax(dim=1).tolist())
        return [None if image is None else next(digits) for image in images]

    return predict


def checkpoint_normalization(checkpoint: dict) -> tuple[float, float]:
    """(mean, std) the model was trained with: every checkpoint and published model stores them."""
    stored = checkpoint["normalization"]
    return float(stored["mean"]), float(stored["std"])


def grpc_predictor(target: str, *, token: str | None = None, timeout: float = 60.0) -> Predict:
    """A running inference server: one PredictBatch call per batch (an error result counts as rejected).

    This is the hook tests/test_user_drawings.py uses against a live server: the same pictures, the same scores.
    """
    from shared.api.mnist.v1 import inference_pb2 as pb
    from shared.api.mnist.v1 import inference_pb2_grpc as pb_grpc

    from inference.channel import make_channel
    from inference.security import bearer_metadata

    stub = pb_grpc.InferenceStub(make_channel(target))
    metadata = bearer_metadata(token)

    def predict(encoded: Sequence[bytes]) -> list:
        response = stub.PredictBatch(pb.PredictBatchRequest(images=list(encoded)), timeout=timeout, metadata=metadata)
        return [r.prediction.digit if r.HasField("prediction") else None for r in response.results]

    return predict


def mnist_through_pipeline(predict: Predict, images: np.ndarray, labels: np.ndarray) -> dict[str, StyleScore]:
    """Genuine MNIST test digits as PNG files: what the pipeline does to real MNIST ("mnist_png")."""
    pictures = [UserImage(encode(image, "PNG"), int(label), "mnist_png") for image, label in zip(images, labels)]
    return evaluate_styles(predict, pictures)


def mnist_direct_accuracy(checkpoint_path: str | Path, images: np.ndarray, labels: np.ndarray) -> float:
    """The same digits straight into the model, no pipeline: the baseline for mnist_through_pipeline."""
    import torch

    from shared.checkpoint import load_checkpoint, model_from_checkpoint
    from shared.metrics import predict_log_probs

    checkpoint = load_checkpoint(Path(checkpoint_path))
    mean, std = checkpoint_normalization(checkpoint)
    log_probs = predict_log_probs(model_from_checkpoint(checkpoint), torch.from_numpy(images), mean=mean, std=std)
    return float((log_probs[:, :10].argmax(dim=1).numpy() == labels).mean())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.bench_user_images",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", type=Path, help="a published model (models/<version>.pt) or checkpoint")
    source.add_argument("--target", help="host:port of a running inference server")
    parser.add_argument(
        "--token",
        default=os.environ.get("MNIST_AUTH_TOKEN") or None,
        help="bearer token for --target (env MNIST_AUTH_TOKEN)",
    )
    parser.add_argument("--data-dir", default=os.environ.get("MNIST_DATA_DIR") or str(DEFAULT_DATA_DIR))
    parser.add_argument("--per-style", type=positive_int, default=100, help="pictures per drawn style and paper kind")
    parser.add_argument(
        "--styles",
        default="drawn,paper,printed",
        help="which groups: drawn (testkit/user_images.py's drawn styles), paper (ruled, squared, "
        "shadows, pencil, specks, low resolution), scenes (a box or ring round the digit, a note or page lying on "
        "a desk; not asked for by default), printed; or style names, comma-separated",
    )
    parser.add_argument("--per-font", type=positive_int, default=20, help="printed digits per font (cycling 0..9)")
    parser.add_argument(
        "--mnist",
        type=non_negative_int,
        default=0,
        help="also run this many MNIST test digits as PNG files (at most the 10,000 there are)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--check", action="store_true", help="exit 1 if any style misses its target")
    args = parser.parse_args(argv)

    from shared.data import load_mnist

    mnist = load_mnist(args.data_dir, download=False, verify=False)
    images, labels = mnist.test_images.numpy(), mnist.test_labels.numpy()
    predict = local_predictor(args.checkpoint) if args.checkpoint else grpc_predictor(args.target, token=args.token)
    wanted = args.styles.split(",")
    styles = [
        name
        for group in wanted
        for name in {"drawn": DRAWN_STYLES, "paper": PAPER_KINDS, "scenes": SCENE_KINDS}.get(group, [group])
        if name != "printed"
    ]
    unknown = sorted(set(styles) - set(ALL_STYLES))
    if unknown:
        parser.error(
            f"--styles: unknown {', '.join(unknown)}; the groups are drawn, paper, scenes and printed, the styles "
            f"{', '.join(ALL_STYLES)}"
        )
    pictures = (
        make_user_images(images, labels, per_style=args.per_style, seed=args.seed, styles=styles) if styles else []
    )
    if "printed" in wanted:
        pictures += make_printed_digits(per_font=args.per_font, seed=args.seed)
    scores = evaluate_styles(predict, pictures, targets=style_target)
    mnist_count = min(args.mnist, len(images))  # the test set has 10,000: more is all of them
    if mnist_count:
        scores.update(mnist_through_pipeline(predict, images[:mnist_count], labels[:mnist_count]))
    print(format_report(scores))
    if mnist_count and args.checkpoint:
        direct = mnist_direct_accuracy(args.checkpoint, images[:mnist_count], labels[:mnist_count])
        print(
            f"\nMNIST test digits 0..{mnist_count - 1}"
            + (f" (all there are, not {args.mnist:,})" if mnist_count < args.mnist else "")
            + f": {direct:.2%} straight into the model, {scores['mnist_png'].accuracy:.2%} as PNG through the pipeline"
        )
    # A style asked for that scored no picture has no accuracy to miss its target with: not a pass.
    asked = [*styles, *([PRINTED_STYLE] if "printed" in wanted else []), *(["mnist_png"] if mnist_count else [])]
    unscored = [style for style in asked if style not in scores or scores[style].total == 0]
    missed = missed_targets(scores)
    if args.check and (missed or unscored):
        if unscored:
            print(f"\nnothing scored: {', '.join(unscored)}", file=sys.stderr)
        if missed:
            print(f"\nbelow target: {', '.join(missed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

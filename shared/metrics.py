"""Evaluation shared by the trainer (TensorBoard) and the inference service (Evaluate): accuracy, loss,
per-class precision/recall/F1, the confusion matrix, and pictures of it."""

from __future__ import annotations

import functools
import io
import textwrap
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from shared.data import MNIST_MEAN, MNIST_STD, NUM_CLASSES, normalize


@dataclass(frozen=True)
class Evaluation:
    accuracy: float
    loss: float  # mean negative log-likelihood
    confusion: np.ndarray  # (10, 10) int64; rows are true digits, columns predicted digits
    precision: np.ndarray  # (10,)
    recall: np.ndarray  # (10,)
    f1: np.ndarray  # (10,)
    support: np.ndarray  # (10,) test images of each digit
    predictions: np.ndarray  # (N,) predicted digit of every image

    @property
    def count(self) -> int:
        return int(self.confusion.sum())


@torch.no_grad()
def batched_forward(
    forward: Callable[[torch.Tensor], torch.Tensor],
    images: torch.Tensor,
    *,
    mean: float = MNIST_MEAN,
    std: float = MNIST_STD,
    batch_size: int = 2000,
    device: torch.device | str = "cpu",
) -> list[torch.Tensor]:
    """`forward` of uint8 images (N, 28, 28), normalized, in batches on `device`: one float32 CPU output per batch."""
    return [
        forward(normalize(images[start : start + batch_size].to(device, non_blocking=True), mean, std)).float().cpu()
        for start in range(0, len(images), batch_size)
    ]


def predict_log_probs(
    model: nn.Module,
    images: torch.Tensor,
    *,
    mean: float = MNIST_MEAN,
    std: float = MNIST_STD,
    batch_size: int = 2000,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """The network's output (log-probabilities (N, 10); (N, 11) or (N, 12) with the not-digit class) for uint8 images
    (N, 28, 28), in batches, on `device`. Model must be in eval mode."""
    outputs = batched_forward(model, images, mean=mean, std=std, batch_size=batch_size, device=device)
    return torch.cat(outputs) if outputs else torch.empty(0, NUM_CLASSES)


def evaluation_from_log_probs(log_probs: torch.Tensor, labels: torch.Tensor) -> Evaluation:
    # Imported here, not at the top: scikit-learn takes about a second to import, which every trainer and server
    # start would pay before its first evaluation needs it.
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    labels = labels.cpu().long()
    if not len(labels):  # scikit-learn refuses empty arrays; nothing scored is all zeros
        zeros = np.zeros(NUM_CLASSES)
        return Evaluation(
            accuracy=0.0,
            loss=0.0,
            confusion=np.zeros((NUM_CLASSES, NUM_CLASSES), np.int64),
            precision=zeros,
            recall=zeros.copy(),
            f1=zeros.copy(),
            support=np.zeros(NUM_CLASSES, np.int64),
            predictions=np.zeros(0, np.int64),
        )
    log_probs = log_probs[:, :NUM_CLASSES]  # a not-digit network's further columns are no digit's (shared/model.py)
    predictions = log_probs.argmax(dim=1)
    y_true, y_pred = labels.numpy(), predictions.numpy()
    classes = list(range(NUM_CLASSES))
    precision, recall, f1, support = precision_recall_fscore_support(y_true, y_pred, labels=classes, zero_division=0)
    return Evaluation(
        accuracy=int((predictions == labels).sum()) / len(labels),  # exact, not float32
        loss=float(nn.functional.nll_loss(log_probs, labels)),
        confusion=confusion_matrix(y_true, y_pred, labels=classes).astype(np.int64),
        precision=precision,
        recall=recall,
        f1=f1,
        support=support.astype(np.int64),
        predictions=y_pred,
    )


def evaluate(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, **kwargs) -> Evaluation:
    """Run `model` over uint8 `images` and score it against `labels`. kwargs go to predict_log_probs."""
    return evaluation_from_log_probs(predict_log_probs(model, images, **kwargs), labels)


def new_figure(width: float, height: float):
    """A matplotlib Figure on its own Agg canvas. The object API, not pyplot: no global figure registry, so
    figures drawn in several threads at once (the server's Evaluate calls) need no lock, and no display."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def confusion_figure(confusion: np.ndarray, *, title: str = "Confusion matrix"):
    """A seaborn heatmap of the confusion matrix, counts in the cells. Returns a matplotlib Figure."""
    import seaborn as sns

    fig = new_figure(7, 6)
    ax = fig.add_subplot()
    sns.heatmap(confusion, annot=True, fmt="d", cmap="Blues", cbar=True, square=True, ax=ax, annot_kws={"fontsize": 8})
    ax.set_xlabel("predicted digit")
    ax.set_ylabel("true digit")
    accuracy = np.trace(confusion) / max(int(confusion.sum()), 1)
    # Wrapped to the figure's width: a long model version in one line would be clipped at both sides.
    heading = textwrap.fill(title, width=60, break_long_words=True, break_on_hyphens=True)
    # Drawn as written: matplotlib reads text between two $ as maths, and a model version may hold them
    # ("exp$^$1-e001" failed Evaluate as INTERNAL, "run$5$x" was drawn as "run5x").
    ax.set_title(f"{heading}\naccuracy {accuracy:.2%}, {int(confusion.sum())} images", fontsize=10, parse_math=False)
    # The margins tight_layout() finds for this figure, set directly: it draws the whole figure once more to
    # measure it, about 60 of the 300 ms a heatmap took (Evaluate draws one for every new model and split). The
    # top gives each line the heading wraps onto 0.03 of the height; the right leaves room for six-digit
    # colour-bar labels.
    fig.subplots_adjust(left=0.085, right=0.97, bottom=0.075, top=0.935 - 0.03 * heading.count("\n"))
    return fig


def figure_png(fig) -> bytes:
    buffer = io.BytesIO()
    # zlib's fastest level: about 50 ms less for a heatmap than the default level, for a file about 10 % larger.
    fig.savefig(buffer, format="png", pil_kwargs={"compress_level": 1})
    return buffer.getvalue()


def confusion_heatmap_png(confusion: np.ndarray, *, title: str = "Confusion matrix") -> bytes:
    """The heatmap of a confusion matrix as PNG bytes. The same matrix and title give the same picture, so the
    last few are kept: drawing one takes matplotlib a few hundred milliseconds, longer than the forward pass of an
    Evaluate over 10,000 images, and a served model asked again gives the same matrix."""
    confusion = np.ascontiguousarray(confusion, dtype=np.int64)
    return _heatmap_png(confusion.tobytes(), confusion.shape, title)


@functools.lru_cache(maxsize=16)
def _heatmap_png(confusion: bytes, shape: tuple[int, ...], title: str) -> bytes:
    return figure_png(confusion_figure(np.frombuffer(confusion, np.int64).reshape(shape), title=title))


def misclassified_figure(images: torch.Tensor, labels: torch.Tensor, predictions: np.ndarray, *, limit: int = 64):
    """A grid of misclassified digits, each titled 'predicted/true'. Returns a matplotlib Figure.

    One picture of all the digits side by side, on white, with a label over each, on a single axes: a subplot
    per digit took matplotlib about two seconds to lay out and draw, at the end of every training run.
    """
    wrong = np.flatnonzero(predictions != labels.cpu().numpy())[:limit]
    cols = 8
    rows = max(1, int(np.ceil(len(wrong) / cols)))
    side, gap, band = 28, 6, 12  # pixels: a digit, the space beside it, the band above it for its label
    cell_w, cell_h = side + gap, side + band
    mosaic = np.full((rows * cell_h, cols * cell_w), 255, np.uint8)  # (rows * 40, cols * 34)
    inch, heading = 0.035, 0.4  # inches per mosaic pixel; inches above the grid for the title
    width, height = mosaic.shape[1] * inch, mosaic.shape[0] * inch
    fig = new_figure(width, height + heading)
    ax = fig.add_axes((0, 0, 1, height / (height + heading)))  # the grid fills the figure below the title
    ax.axis("off")
    for k, index in enumerate(wrong):
        r, c = divmod(k, cols)
        top, left = r * cell_h + band, c * cell_w + gap // 2
        mosaic[top : top + side, left : left + side] = images[index].cpu().numpy()
        ax.text(
            left + side / 2,
            top - 1,
            f"{predictions[index]}/{int(labels[index])}",
            color="crimson",
            fontsize=9,
            ha="center",
            va="bottom",
        )
    ax.imshow(mosaic, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
    fig.suptitle(f"{len(wrong)} misclassified test digits shown (predicted/true)", fontsize=10)
    return fig

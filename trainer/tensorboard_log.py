"""What a run shows in TensorBoard: per-epoch curves, the confusion matrix, misclassified digits, the graph and
the hyperparameters with the final metrics."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.tensorboard import SummaryWriter

from shared.metrics import Evaluation, confusion_figure, misclassified_figure

# Scalar tags, by the metric names the trainer uses. Tests check these tags in the event files.
SCALAR_TAGS = {
    "train_loss": "loss/train",
    "val_loss": "loss/val",
    "test_loss": "loss/test",
    "train_accuracy": "accuracy/train",
    "val_accuracy": "accuracy/val",
    "test_accuracy": "accuracy/test",
    "lr": "lr",
    "images_per_second": "speed/images_per_second",
}


class RunLogger:
    """Writes one run's TensorBoard event files into its folder."""

    def __init__(self, run_dir: Path, *, purge_step: int | None = None) -> None:
        # purge_step: on --resume, TensorBoard drops the events a killed process wrote after its last checkpoint.
        self.writer = SummaryWriter(log_dir=str(run_dir), purge_step=purge_step)

    def log_graph(self, model: nn.Module, example: torch.Tensor) -> None:
        was_training = model.training
        model.eval()  # tracing in train mode would update BatchNorm statistics
        try:
            with warnings.catch_warnings():  # add_graph traces with torch.jit, which warns that it is deprecated
                warnings.simplefilter("ignore", FutureWarning)
                self.writer.add_graph(model, example)
        finally:
            model.train(was_training)

    def log_epoch(self, epoch: int, metrics: dict[str, float]) -> None:
        for name, tag in SCALAR_TAGS.items():
            if name in metrics:
                self.writer.add_scalar(tag, metrics[name], epoch)
        self.writer.flush()

    def log_evaluation(self, epoch: int, evaluation: Evaluation, images: torch.Tensor, labels: torch.Tensor,
                       *, split: str = "test") -> None:
        self.writer.add_figure(f"confusion_matrix/{split}", confusion_figure(evaluation.confusion,
                               title=f"{split} confusion matrix"), epoch)
        self.writer.add_figure(f"misclassified/{split}",
                               misclassified_figure(images, labels, evaluation.predictions), epoch)
        self.writer.flush()

    def log_hparams(self, hparams: dict[str, Any], metrics: dict[str, float]) -> None:
        # TensorBoard's hparams take scalars only: nested values become strings.
        flat = {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in hparams.items()}
        self.writer.add_hparams(flat, {f"hparam/{k}": v for k, v in metrics.items()}, run_name=".")
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()

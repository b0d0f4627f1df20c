"""What a run shows in TensorBoard: per-epoch curves, the confusion matrix, misclassified digits, the graph and
the hyperparameters with the final metrics."""

from __future__ import annotations

import threading
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import hparams as hparams_summaries

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
    # The not-digit class (docs/not-a-digit.md), at the threshold chosen on the validation digits that epoch.
    "digit_threshold": "not_digit/threshold",
    "val_digits_flagged": "not_digit/val_digits_flagged",
    "test_digits_flagged": "not_digit/test_digits_flagged",
    "val_negatives_missed": "not_digit/val_negatives_missed",
}
NEGATIVES_MISSED_PREFIX = "val_negatives_missed_"  # + a kind of negative: not_digit/val_missed/<kind>


# The files a SummaryWriter writes into a run's folder.
TENSORBOARD_EVENTS = "events.out.tfevents.*"


class RunLogger:
    """Writes one run's TensorBoard event files into its folder."""

    def __init__(self, run_dir: Path, *, purge_step: int | None = None) -> None:
        quiet_writer_thread_errors()
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

    def log_epoch(self, epoch: int, metrics: dict[str, Any]) -> None:
        for name, tag in SCALAR_TAGS.items():
            if name in metrics:
                self.writer.add_scalar(tag, metrics[name], epoch)
        for name, value in metrics.items():
            if name.startswith(NEGATIVES_MISSED_PREFIX):
                self.writer.add_scalar(f"not_digit/val_missed/{name[len(NEGATIVES_MISSED_PREFIX) :]}", value, epoch)
        self.writer.flush()

    def log_negatives(
        self, trained: torch.Tensor, validation: torch.Tensor, kinds: torch.Tensor, kind_names: tuple[str, ...]
    ) -> None:
        """Grids of the pictures that are not digits: a sample as trained on (augmented, (N, 1, 28, 28) in
        [0, 1]) and validation ones by kind (uint8 (M, 28, 28), one row per kind)."""
        self.writer.add_image("not_digit/trained_on", _grid(trained.float().cpu(), columns=16), 0)
        rows = [validation[kinds.to(validation.device) == k][:16] for k in range(len(kind_names))]
        rows = [r for r in rows if len(r)]
        if rows:
            picked = torch.cat(rows).float().div(255).unsqueeze(1).cpu()
            self.writer.add_image("not_digit/validation_by_kind_" + "_".join(kind_names), _grid(picked, 16), 0)
        self.writer.flush()

    def log_evaluation(
        self,
        epoch: int,
        evaluation: Evaluation,
        images: torch.Tensor,
        labels: torch.Tensor,
        *,
        split: str = "test",
        weights_of: int | None = None,
    ) -> None:
        """The confusion matrix and the misclassified digits at step `epoch`; `weights_of`: the epoch whose weights
        were scored, said in the title where it is another (the run's end logs the best epoch's at the last step)."""
        of = f", the weights of epoch {weights_of}" if weights_of is not None and weights_of != epoch else ""
        self.writer.add_figure(
            f"confusion_matrix/{split}",
            confusion_figure(evaluation.confusion, title=f"{split} confusion matrix{of}"),
            epoch,
        )
        self.writer.add_figure(
            f"misclassified/{split}", misclassified_figure(images, labels, evaluation.predictions), epoch
        )
        self.writer.flush()

    def log_hparams(self, hparams: dict[str, Any], metrics: dict[str, float], step: int) -> None:
        """The run's settings and final metrics for TensorBoard's HParams tab, at `step` (the last epoch), in this
        writer's file: add_hparams would write them at step 0 through a writer of its own, out of reach of a
        resumed run's purge, so a run resumed while finishing showed them twice."""
        # TensorBoard's hparams take scalars only: nested values become strings.
        flat = {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in hparams.items()}
        tagged = {f"hparam/{k}": v for k, v in metrics.items()}
        for summary in hparams_summaries(flat, tagged):  # the experiment, session start and session end
            self.writer._get_file_writer().add_summary(summary, step)  # as SummaryWriter's own add_* do
        for tag, value in tagged.items():
            self.writer.add_scalar(tag, value, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def quiet_writer_thread_errors() -> None:
    """Keep TensorBoard's writer thread from printing the error it fails with (a full disk): the thread keeps it
    for the trainer's next write, which raises it where the trainer says it in one line, and the thread's own
    traceback came out beside that line. Other threads' errors are printed as before. Once per process: the hook
    installed is marked, and wraps whatever hook was there."""
    previous = threading.excepthook
    if getattr(previous, "quiets_tensorboard_writer", False):
        return

    def hook(args: threading.ExceptHookArgs) -> None:
        thread = args.thread
        kept = getattr(thread, "exception", None) is args.exc_value  # tensorboard's _AsyncWriterThread keeps it
        if not (type(thread).__name__ == "_AsyncWriterThread" and kept):
            previous(args)

    hook.quiets_tensorboard_writer = True  # type: ignore[attr-defined]
    threading.excepthook = hook


def _grid(images: torch.Tensor, columns: int) -> torch.Tensor:
    """(N, 1, H, W) in [0, 1] -> one (1, rows * (H + 2), columns * (W + 2)) picture, two pixels between."""
    n, _, h, w = images.shape
    rows = -(-n // columns)
    grid = torch.full((1, rows * (h + 2), columns * (w + 2)), 0.5)
    for i, image in enumerate(images):
        r, c = divmod(i, columns)
        grid[:, r * (h + 2) + 1 : r * (h + 2) + 1 + h, c * (w + 2) + 1 : c * (w + 2) + 1 + w] = image.clamp(0, 1)
    return grid

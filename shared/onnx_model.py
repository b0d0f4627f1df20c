"""The networks as ONNX, run by onnxruntime: export, a runner with the torch model's interface, and the check that
the two agree.

Every published model has `models/<version>.onnx` beside its `.pt` (shared/checkpoint.py), with its SHA-256 in
the manifest. The inference service runs it with onnxruntime by default (`--backend onnxruntime`): on the 2-core
development machines the compact network's forward pass over a batch of 64 took 5 ms there against 9-18 ms in
torch, and a single image 0.09 ms against 0.5 ms (docs/benchmarks.md, "Inference"). The .pt stays the source of
truth: the ONNX file is derived from it, checked against it, and the `torch` backend needs nothing else.

Input "images" (N, 1, 28, 28) float32, normalized as the model's checkpoint says; output "log_probs" (N, 10), or
(N, 11) for a network with the not-digit class (its eleventh column is the digit log-odds), (N, 12) with its
digit distance (the twelfth, its penalty): shared/model.py.
"""

from __future__ import annotations

import copy
import io
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

ONNX_OPSET = 17
INPUT_NAME = "images"
OUTPUT_NAME = "log_probs"
# What "the same network" means: log-probabilities within this of torch's (relative to the value beyond 1 in size:
# float32 keeps seven digits, so a badly trained model's log-probabilities of -84 or -276 differed by 4e-4 in their
# rounding alone, and its run could never publish), and the same digit for every image.
MAX_DIFFERENCE = 1e-4


def export_onnx(model: nn.Module) -> bytes:
    """The network, in eval mode and fp32 on the CPU, as ONNX bytes with a dynamic batch dimension.

    The TorchScript-based exporter (deprecated in favour of the torch.export-based one, which needs the
    onnxscript package): these plain convolutional networks export in a fraction of a second. torch is pinned,
    and the exported file is checked with onnxruntime wherever it is used (verify_onnx, and the server's load).
    """
    was_training = model.training
    model.eval()
    example = torch.zeros(2, 1, 28, 28)
    buffer = io.BytesIO()
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice, tracer warnings
            torch.onnx.export(
                model,
                (example,),
                buffer,  # type: ignore[arg-type]  # a file object is accepted; the stubs name paths only
                dynamo=False,
                opset_version=ONNX_OPSET,
                do_constant_folding=True,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
            )
    finally:
        model.train(was_training)
    return buffer.getvalue()


class OnnxRunner:
    """An onnxruntime session behind the interface the server uses for a torch model: normalized (N, 1, 28, 28)
    float -> log-probabilities (N, 10). Thread-safe; onnxruntime releases the GIL while it computes."""

    backend = "onnxruntime"

    def __init__(self, onnx_bytes: bytes, *, threads: int = 1) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        # Calls already run side by side on the server's threads (one forward each), as with torch's one
        # intra-op thread (inference/server.py configure_torch); a pool per call would oversubscribe the cores.
        options.intra_op_num_threads = max(1, threads)
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")  # no busy-waiting threads
        options.log_severity_level = 3  # errors only
        self.session = ort.InferenceSession(onnx_bytes, options, providers=["CPUExecutionProvider"])

    def __call__(self, inputs: torch.Tensor) -> torch.Tensor:
        array = np.ascontiguousarray(inputs.detach().cpu().numpy(), dtype=np.float32)
        (log_probs,) = self.session.run([OUTPUT_NAME], {INPUT_NAME: array})
        return torch.from_numpy(log_probs)


class TorchRunner:
    """A torch model (eval mode) behind the same interface as OnnxRunner.

    The convolutions run channels-last: oneDNN's layout, twice as fast as the default on the development machine.
    The runner holds its own copy, so the model it was given is left as it was.
    """

    backend = "torch"

    def __init__(self, model: nn.Module) -> None:
        self.model = copy.deepcopy(model).to(memory_format=torch.channels_last)

    def __call__(self, inputs: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return self.model(inputs.contiguous(memory_format=torch.channels_last))


@dataclass(frozen=True)
class OnnxCheck:
    """How an ONNX export compares with its torch model on a set of images."""

    images: int
    max_difference: float  # of the log-probabilities: |torch - onnx| / max(1, |torch|)
    argmax_differences: int  # images whose digit differs

    @property
    def ok(self) -> bool:
        return self.max_difference <= MAX_DIFFERENCE and self.argmax_differences == 0

    def describe(self) -> str:
        digits = (
            "the same digit for every image"
            if self.argmax_differences == 0
            else f"a different digit for {self.argmax_differences:,} image(s)"
        )
        return (
            f"onnxruntime vs torch on {self.images:,} images: max difference of log-probabilities "
            f"{self.max_difference:.1e} (limit {MAX_DIFFERENCE:.0e}, relative beyond 1), {digits}"
        )


def compare(onnx_runner: OnnxRunner, model: nn.Module, inputs: torch.Tensor, *, batch_size: int = 1000) -> OnnxCheck:
    """Run both on normalized `inputs` (N, 1, 28, 28) in batches; the model must be in eval mode."""
    worst, differing = 0.0, 0
    torch_runner = TorchRunner(model)
    for start in range(0, len(inputs), batch_size):
        batch = inputs[start : start + batch_size].float().contiguous()
        expected, got = torch_runner(batch).float(), onnx_runner(batch)
        difference = ((expected - got).abs() / expected.abs().clamp(min=1.0)).max().item() if len(batch) else 0.0
        worst = max(worst, difference if np.isfinite(difference) else float("inf"))
        differing += int((expected[:, :10].argmax(1) != got[:, :10].argmax(1)).sum())
    return OnnxCheck(images=len(inputs), max_difference=worst, argmax_differences=differing)


def verify_onnx(onnx_bytes: bytes, model: nn.Module, inputs: torch.Tensor) -> OnnxCheck:
    """Load `onnx_bytes` in onnxruntime and compare it with `model` on normalized `inputs` (N, 1, 28, 28)."""
    return compare(OnnxRunner(onnx_bytes), model, inputs)

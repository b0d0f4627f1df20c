"""Running under torchrun: one process per GPU (NCCL) or per CPU share (gloo), DistributedDataParallel.

Without torchrun nothing here does anything, so the single-process path is the same code with world_size 1.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from shared.settings import ENV_DEVICE


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def runs_on(name: str) -> bool:
    """Whether `name` is a device the trainer runs on: 'auto', 'cpu', 'cuda' or 'cuda:N' (present or not)."""
    if name == "auto":
        return True
    try:
        device = torch.device(name)
    except RuntimeError:
        return False
    # Only these two: torch knows more device types (meta, mps, xpu, ...), which the trainer does not run on, and
    # which failed later with a traceback.
    return device.type in ("cpu", "cuda") and not (device.type == "cpu" and device.index)


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """'auto' -> the local GPU when CUDA is present, else the CPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if not runs_on(name):
        raise SystemExit(f"--device {name}: not a device the trainer runs on; use auto, cpu, cuda or cuda:N")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit(
                f"--device {name} (or {ENV_DEVICE}={name}) asks for CUDA, but CUDA is not available on this machine; "
                "use --device auto or cpu"
            )
        if device.index is None:
            device = torch.device("cuda", local_rank)
        if device.index >= torch.cuda.device_count():
            raise SystemExit(
                f"--device {device}: this machine has {torch.cuda.device_count()} GPU(s), cuda:0 to "
                f"cuda:{torch.cuda.device_count() - 1}"
                + (" (one torchrun process per GPU at most)" if name == "cuda" or name == "auto" else "")
            )
    return device


def init_distributed(device: torch.device) -> DistInfo:
    """Join the process group torchrun set up (environment variables RANK, WORLD_SIZE, LOCAL_RANK), if any."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistInfo()
    info = DistInfo(int(os.environ["RANK"]), world_size, int(os.environ.get("LOCAL_RANK", "0")))
    if device.type == "cuda":
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", device_id=device)
    else:
        dist.init_process_group("gloo")
    return info


def all_reduce_sum(values: list[float], device: torch.device, info: DistInfo) -> list[float]:
    """Sum the numbers across processes (loss sums, correct counts); a no-op for one process."""
    if not info.enabled:
        return values
    backend_device = device if device.type == "cuda" else torch.device("cpu")
    tensor = torch.tensor(values, dtype=torch.float64, device=backend_device)
    dist.all_reduce(tensor)
    return tensor.tolist()


def broadcast_name(name: str, info: DistInfo) -> str:
    """Rank 0's `name` on every rank (the run folder rank 0 claimed); itself for one process."""
    if not info.enabled:
        return name
    names = [name]
    dist.broadcast_object_list(names, src=0)
    return names[0]


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def shutdown(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()

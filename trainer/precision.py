"""Which arithmetic a training run uses: bf16 autocast where the hardware multiplies bf16 natively, fp32 elsewhere.

bf16 autocast runs the convolutions and the linear layer in bfloat16 (fp32 accumulation, fp32 weights and
optimizer state); BatchNorm statistics, the loss and the update stay in fp32. It pays only where bf16 arithmetic is
native. On the 2-core development machines one training step of the default network took half the time of fp32 on
an Intel Xeon with AMX tiles (Sapphire Rapids and later), and 0.7-0.8 of it on an AMD EPYC with AVX512-BF16 dot
products (Zen 4; stop 30: 47-48 ms against 59-70 ms for a batch of 166, alternating; whole epochs about 0.8).
Without either, bf16 is converted in software, so `auto` keeps fp32. On CUDA, GPUs from Ampere on have bf16
tensor cores.

One code path: `autocast(device, precision)` is a `torch.autocast` for the device's type, enabled or not.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from pathlib import Path

import torch

PRECISIONS = ("auto", "bf16", "fp32")


def cpu_flags() -> set[str]:
    """The CPU feature flags Linux reports (/proc/cpuinfo); empty where there is no such file."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_has_amx_bf16() -> bool:
    """True on CPUs with AMX-BF16 tiles the OS has enabled (Intel Xeon from Sapphire Rapids on).

    torch's own probe asks the CPU (CPUID), and the kernel's flags say whether the OS enabled the tiles.
    """
    probe = getattr(torch.cpu, "_is_amx_tile_supported", None)
    try:
        tiles = bool(probe()) if probe is not None else True
    except Exception:  # a private probe that changed: fall back to the kernel's flags alone
        tiles = True
    return tiles and "amx_bf16" in cpu_flags()


def cpu_has_native_bf16() -> bool:
    """True where oneDNN runs bf16 convolutions in hardware: AMX-BF16 tiles, or AVX512-BF16 dot products in vector
    registers (AMD from Zen 4 on, Intel Cooper Lake), which the kernel reports as `avx512_bf16`."""
    return cpu_has_amx_bf16() or "avx512_bf16" in cpu_flags()


def native_bf16(device: torch.device) -> bool:
    """Whether bf16 matrix multiplication is native (not converted in software) on `device`."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    if device.type == "cpu":
        return cpu_has_native_bf16()
    return False


def resolve_precision(requested: str, device: torch.device) -> str:
    """'auto' -> 'bf16' where it is native on `device`, else 'fp32'; 'bf16' and 'fp32' are kept as asked."""
    if requested not in PRECISIONS:
        raise ValueError(f"precision {requested!r} must be one of {', '.join(PRECISIONS)}")
    if requested == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    return requested


def autocast(device: torch.device, precision: str) -> AbstractContextManager:
    """The autocast context of a resolved precision: bf16 autocast for 'bf16', a disabled one for 'fp32'."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")

"""What this process may use of the machine: CPU cores and memory, as a container's limits cap them."""

from __future__ import annotations

import math
import os
from pathlib import Path


def usable_cpus() -> int:
    """CPU cores this process may use: its affinity mask, capped by a cgroup CPU quota (docker --cpus)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            cpus = min(cpus, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return cpus


def memory_limit_bytes(cgroup_root: Path = Path("/sys/fs/cgroup")) -> int | None:
    """The memory this process's cgroup may use (a container's limit), or None when unlimited or unknown."""
    for path in (cgroup_root / "memory.max", cgroup_root / "memory" / "memory.limit_in_bytes"):  # v2, then v1
        try:
            value = path.read_text().strip()
        except OSError:
            continue
        if value.isdigit() and int(value) < 2**60:  # "max", or cgroup v1's "no limit" near 2^63
            return int(value)
        return None
    return None


def usable_memory_bytes() -> int | None:
    """Memory this process can count on: the kernel's MemAvailable, capped by a cgroup memory limit (a container's);
    None where neither can be read."""
    figures = []
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                figures.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError, IndexError):
        pass
    limit = memory_limit_bytes()
    if limit is not None:
        figures.append(limit)
    return min(figures) if figures else None

"""What this process may use of the machine: CPU cores and memory, as a container's limits cap them."""

from __future__ import annotations

import math
import os
from pathlib import Path, PurePosixPath

CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC_SELF_CGROUP = Path("/proc/self/cgroup")


def _own_cgroups(proc_cgroup: Path) -> dict[str, PurePosixPath]:
    """This process's cgroup in each hierarchy, from /proc/self/cgroup: under "" cgroup v2's ("0::/path"), under
    each v1 controller's name its own ("4:memory:/path", "3:cpu,cpuacct:/path"). Empty where it cannot be read."""
    found: dict[str, PurePosixPath] = {}
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        return found
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) == 3 and parts[2].startswith("/"):
            for controller in parts[1].split(",") if parts[1] else [""]:
                found[controller] = PurePosixPath(parts[2])
    return found


def _up_from(tree: Path, own: PurePosixPath | None) -> list[Path]:
    """The folders of `tree` that may hold a limit on this process: its own cgroup's, then each ancestor's up to
    `tree` itself. A limit anywhere on the way caps it: a systemd slice, a Kubernetes pod's cgroup above the
    container's. Seen without a cgroup namespace, the root's files say nothing of the process; with one (or in a
    container that mounts only its own cgroup there), folders that are not there are skipped up to `tree`."""
    relative = own.relative_to("/") if own is not None else PurePosixPath()
    return [tree / folder for folder in (relative, *relative.parents)]


def cpu_quota(cgroup_root: Path = CGROUP_ROOT, proc_cgroup: Path = PROC_SELF_CGROUP) -> float | None:
    """The CPU cores this process's cgroup may use (docker --cpus), or None when no quota is set: the least quota on
    its cgroup and its ancestors, v2's cpu.max ("max" or "QUOTA PERIOD") and v1's cpu.cfs_quota_us over
    cpu.cfs_period_us (-1: none), which older Docker and some CI hosts still give."""
    own = _own_cgroups(proc_cgroup)
    quotas = []
    for folder in _up_from(cgroup_root, own.get("")):
        try:
            quota, period = (folder / "cpu.max").read_text().split()[:2]
            if quota != "max":
                quotas.append(int(quota) / int(period))
        except (OSError, ValueError, ZeroDivisionError):
            pass
    for folder in _up_from(cgroup_root / "cpu", own.get("cpu")):
        try:
            v1_quota = int((folder / "cpu.cfs_quota_us").read_text())
            if v1_quota > 0:
                quotas.append(v1_quota / int((folder / "cpu.cfs_period_us").read_text()))
        except (OSError, ValueError, ZeroDivisionError):
            pass
    return min(quotas, default=None)


def usable_cpus(cgroup_root: Path = CGROUP_ROOT, proc_cgroup: Path = PROC_SELF_CGROUP) -> int:
    """CPU cores this process may use: its affinity mask, capped by a cgroup CPU quota (docker --cpus)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    quota = cpu_quota(cgroup_root, proc_cgroup)
    if quota is not None:
        cpus = min(cpus, max(1, math.ceil(quota)))
    return cpus


def memory_limit_bytes(cgroup_root: Path = CGROUP_ROOT, proc_cgroup: Path = PROC_SELF_CGROUP) -> int | None:
    """The memory this process's cgroup may use (a container's limit), or None when unlimited or unknown: the least
    of the limits on its cgroup and its ancestors, v2's memory.max and v1's memory.limit_in_bytes."""
    own = _own_cgroups(proc_cgroup)
    files = [folder / "memory.max" for folder in _up_from(cgroup_root, own.get(""))]
    files += [folder / "memory.limit_in_bytes" for folder in _up_from(cgroup_root / "memory", own.get("memory"))]
    limits = []
    for path in files:
        try:
            value = path.read_text().strip()
        except OSError:
            continue
        if value.isdigit() and int(value) < 2**60:  # not "max", nor cgroup v1's "no limit" near 2^63
            limits.append(int(value))
    return min(limits, default=None)


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

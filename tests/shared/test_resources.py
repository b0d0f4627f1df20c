"""shared.resources: the cores and memory a container's cgroup limits leave this process, on cgroup v2 and v1, and
for a process in a nested cgroup (a systemd slice, a Kubernetes pod's container) seen without a cgroup namespace.

Each test builds a fake cgroup tree and a fake /proc/self/cgroup in tmp_path."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from shared.resources import cpu_quota, memory_limit_bytes, usable_cpus

V1_NO_LIMIT = "9223372036854771712"  # what cgroup v1's memory.limit_in_bytes says when no limit is set
GIB = 2**30


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + "\n")


@pytest.fixture
def cgroup(tmp_path) -> tuple[Path, Path]:
    """(the cgroup mount, /proc/self/cgroup) of a fake host."""
    return tmp_path / "sys/fs/cgroup", tmp_path / "proc/self/cgroup"


@pytest.fixture
def sixty_four_cores(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(64)))


def test_docker_cpus_on_a_cgroup_v1_host_caps_the_cores(cgroup, sixty_four_cores):
    root, proc = cgroup
    write(proc, "4:memory:/\n3:cpu,cpuacct:/\n0::/")
    write(root / "cpu/cpu.cfs_period_us", "100000")
    write(root / "cpu/cpu.cfs_quota_us", "-1")  # no quota: every core of the affinity mask
    assert cpu_quota(root, proc) is None
    assert usable_cpus(root, proc) == 64
    write(root / "cpu/cpu.cfs_quota_us", "100000")  # docker --cpus 1
    assert usable_cpus(root, proc) == 1
    write(root / "cpu/cpu.cfs_quota_us", "150000")  # --cpus 1.5: a partly used core is still a thread's worth
    assert cpu_quota(root, proc) == 1.5
    assert usable_cpus(root, proc) == 2


def test_a_cgroup_v2_cpu_quota_caps_the_cores(cgroup, sixty_four_cores):
    root, proc = cgroup
    write(proc, "0::/")
    write(root / "cpu.max", "max 100000")
    assert usable_cpus(root, proc) == 64
    write(root / "cpu.max", "200000 100000")
    assert usable_cpus(root, proc) == 2


def test_a_cpu_quota_on_an_ancestor_of_the_processs_cgroup_counts(cgroup, sixty_four_cores):
    root, proc = cgroup
    write(proc, "0::/kubepods.slice/pod-a/container-b")
    write(root / "kubepods.slice/pod-a/container-b/cpu.max", "max 100000")
    write(root / "kubepods.slice/pod-a/cpu.max", "300000 100000")
    assert usable_cpus(root, proc) == 3


def test_a_memory_limit_on_the_processs_own_nested_cgroup_v2_is_found(cgroup):
    root, proc = cgroup
    write(proc, "0::/system.slice/mnist.service")
    assert memory_limit_bytes(root, proc) is None  # no limit anywhere
    write(root / "system.slice/mnist.service/memory.max", str(2 * GIB))
    assert memory_limit_bytes(root, proc) == 2 * GIB


def test_the_smallest_memory_limit_from_the_processs_cgroup_up_to_the_root_holds(cgroup):
    """A Kubernetes pod's cgroup caps its containers together: a container's own limit may be larger, or none."""
    root, proc = cgroup
    write(proc, "0::/kubepods/burstable/pod-a/container-b")
    write(root / "kubepods/burstable/pod-a/container-b/memory.max", "max")
    write(root / "kubepods/burstable/pod-a/memory.max", str(3 * GIB))
    write(root / "kubepods/memory.max", str(64 * GIB))
    assert memory_limit_bytes(root, proc) == 3 * GIB
    write(root / "kubepods/burstable/pod-a/container-b/memory.max", str(GIB))
    assert memory_limit_bytes(root, proc) == GIB


def test_a_memory_limit_on_the_processs_nested_cgroup_v1_is_found(cgroup):
    root, proc = cgroup
    write(proc, "9:name=systemd:/docker/abc\n4:memory:/docker/abc\n3:cpu,cpuacct:/docker/abc\n0::/")
    write(root / "memory/memory.limit_in_bytes", V1_NO_LIMIT)
    write(root / "memory/docker/memory.limit_in_bytes", V1_NO_LIMIT)
    assert memory_limit_bytes(root, proc) is None
    write(root / "memory/docker/abc/memory.limit_in_bytes", str(GIB // 2))
    assert memory_limit_bytes(root, proc) == GIB // 2


def test_a_container_that_sees_only_its_own_cgroup_at_the_mount_reads_the_limit_there(cgroup):
    """Without a cgroup namespace the path names the host's tree, which a container's mount may not hold: the
    folders that are not there are passed over up to the mount, the container's own cgroup."""
    root, proc = cgroup
    write(proc, "4:memory:/docker/abc")
    write(root / "memory/memory.limit_in_bytes", str(GIB))
    assert memory_limit_bytes(root, proc) == GIB
    write(proc, "0::/system.slice/docker-abc.scope")
    write(root / "memory.max", str(2 * GIB))
    assert memory_limit_bytes(root, proc) == GIB  # v1's and v2's both counted (a hybrid host)


def test_an_unreadable_proc_self_cgroup_reads_the_mounts_own_limits(cgroup, sixty_four_cores):
    root, proc = cgroup
    write(root / "memory.max", str(GIB))
    write(root / "cpu.max", "100000 100000")
    assert memory_limit_bytes(root, proc) == GIB
    assert usable_cpus(root, proc) == 1

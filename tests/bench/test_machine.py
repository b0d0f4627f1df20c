"""bench/machine.py: the header every benchmark prints."""

from __future__ import annotations

import shared.resources

from bench.machine import describe_machine


def test_the_header_counts_the_cores_the_benchmarks_use(monkeypatch):
    """The cores shared.resources.usable_cpus() gives (a container's CPU quota applied), which the benchmarks size
    their threads and workers by: the header counted the affinity mask alone."""
    monkeypatch.setattr(shared.resources, "usable_cpus", lambda: 97)
    assert describe_machine().startswith("97 cores usable, ")

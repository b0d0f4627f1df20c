""".ci/run holds a machine-wide lock so that two runs do not share the virtual environment, the Docker engine and
the e2e test's ports at once. The lock goes with the file descriptor, and every child inherits it: the Docker
engine, which .ci/run starts and which stays up after the run, held it, and the next run waited for ever.

The test runs .ci/run's own lock and engine lines (read from the script) with a stand-in engine that leaves a
daemon behind, then asks for the lock while that daemon still runs."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
ENGINE = "../shared/tools/docker-engine.sh"


def lock_and_engine_lines() -> str:
    """.ci/run from its lock to the line that starts the Docker engine, both included."""
    lines = (REPO_ROOT / ".ci" / "run").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("if command -v flock"))
    end = next(i for i, line in enumerate(lines) if line.lstrip().startswith(ENGINE))
    return "\n".join(lines[start : end + 1])


@pytest.mark.skipif(shutil.which("flock") is None, reason="flock(1) is not installed")
def test_the_docker_engine_ci_starts_does_not_hold_the_ci_lock_after_the_run(tmp_path):
    daemon = tmp_path / "engine.sh"
    daemon.write_text('#!/usr/bin/env bash\nsleep 30 &\necho $! > "$(dirname "$0")/daemon.pid"\n')
    daemon.chmod(0o755)
    script = "set -euo pipefail\n" + lock_and_engine_lines().replace(ENGINE, str(daemon))
    subprocess.run(
        ["bash", "-c", script], env={"TMPDIR": str(tmp_path), "PATH": "/usr/bin:/bin"}, check=True, timeout=30
    )
    pid = int((tmp_path / "daemon.pid").read_text())
    try:
        free = subprocess.run(["flock", "-n", str(tmp_path / "mnist-stack-ci.lock"), "true"], timeout=10)
        assert free.returncode == 0, "the daemon .ci/run started holds its lock: the next run would wait for ever"
    finally:
        subprocess.run(["kill", str(pid)], check=False)


def test_the_lines_the_test_runs_take_the_lock_and_start_the_engine():
    text = lock_and_engine_lines()
    assert "exec 9>" in text and text.count("flock") >= 3 and ENGINE in text.splitlines()[-1]

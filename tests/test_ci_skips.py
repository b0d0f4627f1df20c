"""In CI a skip fails the run, whether a test skips while it runs or a whole file skips while it is collected
(testkit/ci_skips.py); outside CI both stay skips, and an expected failure stays expected. pytest runs the
plugin on small files of this test's own, in a child process."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]

FILES = {
    "test_runs.py": """
        import pytest

        def test_passes():
            pass

        def test_skips_while_running():
            pytest.skip("no tool here")

        @pytest.mark.skipif(True, reason="marked to skip")
        def test_marked_to_skip():
            pass

        @pytest.mark.xfail(reason="known to fail", strict=True)
        def test_expected_failure():
            assert False
    """,
    "test_whole_file.py": """
        import pytest

        pytest.importorskip("a_module_nobody_has_installed")

        def test_never_collected():
            pass
    """,
}


def run_pytest(folder: Path, ci: str | None, *files: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "CI"} | {"PYTHONPATH": str(REPO_ROOT)}
    if ci is not None:
        env["CI"] = ci
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "testkit.ci_skips", "-p", "no:cacheprovider", "-rA", *files],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    for name, text in FILES.items():
        (tmp_path / name).write_text(textwrap.dedent(text))
    return tmp_path


def test_in_ci_a_skip_while_running_fails_the_test(folder):
    done = run_pytest(folder, "true", "test_runs.py")
    out = done.stdout
    assert done.returncode != 0, out
    assert "FAILED test_runs.py::test_skips_while_running - skipped in CI, where every test must run" in out, out
    # A skip marker acts at set-up, so pytest calls the failure an error.
    assert "ERROR test_runs.py::test_marked_to_skip - skipped in CI, where every test must run" in out, out
    assert "PASSED test_runs.py::test_passes" in out, out
    assert "XFAIL test_runs.py::test_expected_failure" in out, out
    assert "1 failed, 1 passed, 1 xfailed, 1 error" in out.splitlines()[-1], out


def test_in_ci_a_file_skipped_while_collected_stops_the_run(folder):
    # Without the collection hook this file's test would vanish into "1 skipped" and the run would pass.
    done = run_pytest(folder, "true", "test_whole_file.py", "test_runs.py")
    out = done.stdout
    assert done.returncode != 0, out
    assert "ERROR test_whole_file.py - skipped in CI, where every test must run" in out, out
    assert "a_module_nobody_has_installed" in out, out


def test_outside_ci_skips_stay_skips(folder):
    done = run_pytest(folder, None, "test_whole_file.py", "test_runs.py")
    out = done.stdout
    assert done.returncode == 0, out
    assert "1 passed, 3 skipped, 1 xfailed" in out.splitlines()[-1], out
    assert "skipped in CI" not in out, out


def test_in_ci_a_skip_fails_the_run_in_the_worker_processes_make_test_starts_too(folder):
    # `make test` runs the suite in two pytest-xdist workers: the plugin acts in each, and the failures reach the run.
    done = run_pytest(folder, "true", "-n", "2", "--dist", "loadfile", "test_whole_file.py", "test_runs.py")
    out = done.stdout
    assert done.returncode != 0, out
    assert "ERROR test_whole_file.py - skipped in CI, where every test must run" in out, out
    assert "FAILED test_runs.py::test_skips_while_running - skipped in CI, where every test must run" in out, out
    assert "1 failed, 1 passed, 1 xfailed, 2 errors" in out.splitlines()[-1], out

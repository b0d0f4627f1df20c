"""A pytest plugin: in CI (CI=true, as `.ci/run` sets) a skip is a failure.

A test that skips for lack of a tool proves nothing, so CI installs every tool the suite needs. Tests CI must not
run (a GPU's) are deselected with a marker, not skipped. Both kinds of skip are caught: one while a test runs
(`pytest.skip`, a `skipif` marker) and one while a module is collected (`pytest.importorskip` at the top of a file,
`pytest.skip(..., allow_module_level=True)`), which skips every test in the file without running any of them.
tests/conftest.py loads it; tests/test_ci_skips.py runs pytest with it on small files of its own.
"""

from __future__ import annotations

import os

import pytest


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _fail_in_ci(report: pytest.TestReport | pytest.CollectReport) -> None:
    if in_ci() and report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"skipped in CI, where every test must run: {reason}"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    _fail_in_ci(outcome.get_result())


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    outcome = yield
    _fail_in_ci(outcome.get_result())

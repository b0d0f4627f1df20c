"""Waiting for a condition, for the tests and the benchmarks."""

from __future__ import annotations

import time


def wait_until(condition, timeout: float = 10.0) -> bool:
    """Poll `condition` until it is true (True) or `timeout` s have passed (its last value)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()

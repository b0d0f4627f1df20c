"""Timing helpers the benchmarks share."""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np


def time_calls(function, inputs: Sequence, repeat: int) -> np.ndarray:
    """Seconds per call: every input `repeat` times, after one warm-up pass. (len(inputs) * repeat,) float."""
    for item in inputs:
        function(item)
    times = []
    for _ in range(repeat):
        for item in inputs:
            start = time.perf_counter()
            function(item)
            times.append(time.perf_counter() - start)
    return np.asarray(times)

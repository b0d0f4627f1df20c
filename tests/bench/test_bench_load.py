"""bench/bench_load.py's arguments and its slowest-second figure, without running the benchmark."""

from __future__ import annotations

import pytest

from bench.bench_load import get_args_parser, slowest_second


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--clients", "0", "must be at least 1, got 0"),  # it reported PASS having sent nothing
        ("--publish-every", "0", "must be a number of seconds above 0, got '0'"),
        ("--publish-every", "-1", "must be a number of seconds above 0, got '-1'"),
    ],
)
def test_a_load_nothing_can_pass_is_refused(flag, value, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        get_args_parser().parse_args([flag, value])
    assert exit_info.value.code == 2
    assert f"argument {flag}: {message}" in capsys.readouterr().err


def test_the_slowest_second_counts_a_stall_and_is_none_without_a_whole_second():
    began = 100.0
    assert slowest_second([100.1, 100.2, 101.5, 103.2], began, 3.6) == 0  # nothing ended in second 2: a stall
    assert slowest_second([100.1, 100.2, 101.5, 102.9], began, 3.6) == 1
    assert slowest_second([100.1, 100.2], began, 0.5) is None  # was "0 calls", a stall that never happened

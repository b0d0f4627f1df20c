"""The training benchmarks' epoch counts: 0 was taken for "not given" and trained the preset's count."""

from __future__ import annotations

import pytest

import bench.bench_not_digit as bench_not_digit
import bench.bench_train as bench_train


@pytest.mark.parametrize("flag", ["--full-epochs", "--seed-epochs", "--quick-epochs"])
@pytest.mark.parametrize("value", ["0", "-2"])
def test_the_training_benchmark_refuses_epoch_counts_below_one(flag, value, capsys):
    with pytest.raises(SystemExit) as exit_info:
        bench_train.get_args_parser().parse_args([flag, value])
    assert exit_info.value.code == 2
    assert f"argument {flag}: must be at least 1, got {value}" in capsys.readouterr().err


def test_the_not_digit_benchmark_refuses_zero_epochs(capsys):
    with pytest.raises(SystemExit) as exit_info:
        bench_not_digit.main(["--epochs", "0"])
    assert exit_info.value.code == 2
    assert "argument --epochs: must be at least 1, got 0" in capsys.readouterr().err

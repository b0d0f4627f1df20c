"""bench/bench_memory.py's arguments, without running the benchmark."""

from __future__ import annotations

import pytest

from bench.bench_memory import get_args_parser


@pytest.mark.parametrize("value", ["0", "-1"])  # 0 sent nothing and passed; -1 sent 9,999 pictures
def test_a_flood_of_no_clients_is_refused(value, capsys):
    with pytest.raises(SystemExit) as exit_info:
        get_args_parser().parse_args(["--clients", value])
    assert exit_info.value.code == 2
    assert f"argument --clients: must be at least 1, got {value}" in capsys.readouterr().err

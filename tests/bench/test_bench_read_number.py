"""bench/bench_read_number.py: which phases run for which flags, with the phases themselves stood in for."""

from __future__ import annotations

import pytest

import bench.bench_read_number as bench_read_number


@pytest.fixture
def phases(monkeypatch, tmp_path, mnist_dir):
    """The phases that ran, in order, instead of running them."""
    ran: list[str] = []
    monkeypatch.setattr(bench_read_number, "accuracy", lambda *args: ran.append("accuracy"))
    monkeypatch.setattr(bench_read_number, "speed", lambda *args: ran.append("speed"))
    return ran, ["--artifacts", str(tmp_path), "--data-dir", str(mnist_dir)]


def test_a_running_server_is_measured_for_accuracy_alone(phases):
    """The speed phase times a server process of its own: with --target it quoted another server's speed."""
    ran, flags = phases
    assert bench_read_number.main([*flags, "--target", "localhost:50051"]) == 0
    assert ran == ["accuracy"]


def test_without_a_target_both_phases_run(phases):
    ran, flags = phases
    assert bench_read_number.main(flags) == 0
    assert ran == ["accuracy", "speed"]


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--target", "localhost:50051", "--speed-only"], "--target measures accuracy through a running server"),
        (["--speed-only", "--accuracy-only"], "not allowed with argument"),
    ],
)
def test_flags_that_would_measure_nothing_are_refused(flags, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        bench_read_number.main(flags)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_pens_add_a_table_of_broken_and_dotted_numbers(monkeypatch, tmp_path, mnist_dir, capsys):
    monkeypatch.setattr(bench_read_number, "local_reader", lambda artifacts: (lambda data: None, None, "v1"))
    flags = ["--artifacts", str(tmp_path), "--data-dir", str(mnist_dir), "--per-style", "1", "--accuracy-only"]
    assert bench_read_number.main([*flags, "--pens"]) == 0
    out = capsys.readouterr().out
    assert "broken pen all" in out and "dotted pen all" in out
    assert bench_read_number.main(flags) == 0
    assert "dotted pen" not in capsys.readouterr().out

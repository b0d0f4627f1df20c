"""bench/bench_read_number.py: which phases run for which flags, with the phases themselves stood in for."""

from __future__ import annotations

import numpy as np
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


@pytest.fixture
def refusing_reader(monkeypatch, mnist_dir):
    """The in-process reader stood in for: it refuses every picture, and its model reads every MNIST test image right
    and surely on its own."""
    from shared.data import load_mnist

    labels = load_mnist(mnist_dir, download=False, verify=False).test_labels.numpy()
    monkeypatch.setattr(bench_read_number, "local_reader", lambda artifacts: (lambda data: None, None, "v1"))
    monkeypatch.setattr(bench_read_number, "own_image_probabilities", lambda artifacts, images: np.eye(10)[labels])


def test_pens_add_a_table_of_broken_and_dotted_numbers(refusing_reader, tmp_path, mnist_dir, capsys):
    flags = ["--artifacts", str(tmp_path), "--data-dir", str(mnist_dir), "--per-style", "1", "--accuracy-only"]
    assert bench_read_number.main([*flags, "--pens"]) == 0
    out = capsys.readouterr().out
    assert "broken pen all" in out and "dotted pen all" in out
    assert bench_read_number.main(flags) == 0
    assert "dotted pen" not in capsys.readouterr().out


def test_in_process_the_classifiers_ceiling_is_printed_beside_what_was_read(
    refusing_reader, tmp_path, mnist_dir, capsys
):
    """Without --target the bench reads MNIST's own images with the same model and says how many numbers were within
    its reach: here all of them, and none read."""
    flags = ["--artifacts", str(tmp_path), "--data-dir", str(mnist_dir), "--per-style", "1", "--accuracy-only"]
    assert bench_read_number.main(flags) == 0
    out = capsys.readouterr().out
    assert "apart: read 0.00%; within the classifier's reach 100.00%" in out
    assert "touching: read 0.00%; within the classifier's reach 100.00%" in out
    assert "numbers with the wrong digit count or refused 7" in out  # one number per drawn style, all refused

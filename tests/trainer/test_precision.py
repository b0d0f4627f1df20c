"""Which arithmetic training uses: bf16 autocast where bf16 matrices are native, fp32 elsewhere, --precision to
choose; every epoch line says which ran."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from shared.checkpoint import load_checkpoint

from trainer import precision
from trainer.__main__ import main as trainer_main
from trainer.augment import max_3x3
from trainer.config import PRESETS, config_from_args, get_args_parser
from trainer.precision import autocast, cpu_has_native_bf16, resolve_precision

CPU = torch.device("cpu")


@pytest.mark.parametrize(
    "native, requested, expected",
    [
        (True, "auto", "bf16"),
        (False, "auto", "fp32"),
        (True, "fp32", "fp32"),
        (False, "bf16", "bf16"),  # an explicit choice is kept, native or not
    ],
)
def test_auto_is_bf16_only_where_it_is_native(monkeypatch, native, requested, expected):
    monkeypatch.setattr(precision, "native_bf16", lambda device: native)
    assert resolve_precision(requested, CPU) == expected


def test_an_unknown_precision_is_an_error():
    with pytest.raises(ValueError, match="must be one of auto, bf16, fp32"):
        resolve_precision("fp16", CPU)


@pytest.mark.parametrize(
    "flags, tiles, native",
    [
        ({"avx512f", "amx_bf16", "amx_tile"}, True, True),  # Intel Xeon from Sapphire Rapids on
        ({"avx512f", "amx_bf16", "amx_tile"}, False, False),  # tiles the CPU has but the OS did not enable
        ({"avx512f", "avx512_bf16"}, False, True),  # AMD EPYC from Zen 4 on: bf16 dot products, no tiles
        ({"avx512f", "avx512_vnni"}, False, False),  # AVX-512 without bf16: converted in software
        (set(), False, False),  # no /proc/cpuinfo
    ],
)
def test_native_bf16_on_the_cpu_is_amx_tiles_or_avx512_bf16(monkeypatch, flags, tiles, native):
    monkeypatch.setattr(precision, "cpu_flags", lambda: flags)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: tiles, raising=False)
    assert cpu_has_native_bf16() is native
    assert resolve_precision("auto", CPU) == ("bf16" if native else "fp32")


def test_the_autocast_of_each_precision():
    conv = torch.nn.Conv2d(1, 4, 3)
    x = torch.randn(2, 1, 8, 8)
    with autocast(CPU, "bf16"):
        assert conv(x).dtype == torch.bfloat16
    with autocast(CPU, "fp32"):
        assert conv(x).dtype == torch.float32


def test_presets_and_the_flag():
    assert PRESETS["default"].precision == "auto"
    assert PRESETS["seed"].precision == "fp32", "the original notebook computed in fp32"
    parser = get_args_parser()
    assert config_from_args(parser.parse_args([])).precision == "auto"
    assert config_from_args(parser.parse_args(["--preset", "seed"])).precision == "fp32"
    assert config_from_args(parser.parse_args(["--preset", "seed", "--precision", "bf16"])).precision == "bf16"
    with pytest.raises(SystemExit):
        parser.parse_args(["--precision", "fp16"])


def run_trainer(tmp_path: Path, mnist_dir: Path, capsys, *flags: str) -> str:
    """Two short epochs in this process (the command line's own entry point); returns what it printed."""
    capsys.readouterr()  # only this run's lines
    code = trainer_main(
        [
            "--data-dir",
            str(mnist_dir),
            "--artifacts-dir",
            str(tmp_path),
            "--train-subset",
            "600",
            "--eval-subset",
            "300",
            "--batch-size",
            "100",
            "--device",
            "cpu",
            "--no-download",
            "--no-publish",
            "--epochs",
            "2",
            *flags,
        ]
    )
    out = capsys.readouterr().out
    assert code == 0, out
    return out


@pytest.mark.parametrize("flag", [None, "fp32", "bf16"])
def test_every_epoch_line_says_which_precision_ran(tmp_path, mnist_dir, capsys, flag):
    expected = flag or resolve_precision("auto", CPU)
    out = run_trainer(tmp_path, mnist_dir, capsys, "--run-name", "p", *(["--precision", flag] if flag else []))
    epoch_lines = [line for line in out.splitlines() if line.startswith("epoch ")]
    assert len(epoch_lines) == 2
    # The precision follows the speed; the not-digit rates (issue 17) may follow it.
    assert all(f"img/s  {expected}" in line for line in epoch_lines), epoch_lines
    first = next(line for line in out.splitlines() if line.startswith("run "))  # after the negatives line
    assert ("bf16 autocast" if expected == "bf16" else "fp32") in first
    history = load_checkpoint(tmp_path / "runs/p/checkpoints/last.pt")["history"]
    assert [m["precision"] for m in history] == [expected, expected]


def test_the_exact_3x3_maximum_is_max_pooling():
    for images in (torch.rand(7, 1, 28, 28), torch.rand(3, 1, 5, 9), -torch.rand(2, 1, 1, 1)):
        assert torch.equal(max_3x3(images), F.max_pool2d(images, 3, stride=1, padding=1))
        assert torch.equal(-max_3x3(-images), -F.max_pool2d(-images, 3, stride=1, padding=1))


def test_the_best_epoch_is_the_latest_the_validation_set_cannot_tell_from_the_highest():
    from trainer.train import RunState, better_than_best

    # 12,000 images at 99.40 %: one standard error is sqrt(0.994 * 0.006 / 12000) = 0.0705 %, 8.5 images.
    history = [{"epoch": 1, "val_accuracy": 11928 / 12000, "val_loss": 0.10}]
    state = RunState(epoch=1, history=history, best_val_accuracy=11928 / 12000, best_epoch=1)
    assert better_than_best({"val_accuracy": 11940 / 12000, "val_loss": 0.2}, state, 12000)  # higher
    assert better_than_best({"val_accuracy": 11928 / 12000, "val_loss": 0.2}, state, 12000)  # a tie: the later
    assert better_than_best({"val_accuracy": 11920 / 12000, "val_loss": 0.2}, state, 12000)  # 8 below: noise
    assert not better_than_best({"val_accuracy": 11919 / 12000, "val_loss": 0.01}, state, 12000)  # 9 below
    # The bar is the highest so far, not the epoch last chosen: epochs cannot creep down a step at a time.
    history.append({"epoch": 2, "val_accuracy": 11922 / 12000, "val_loss": 0.10})
    state.best_epoch = 2
    assert not better_than_best({"val_accuracy": 11918 / 12000, "val_loss": 0.01}, state, 12000)
    # Fewer validation images resolve less: 0.2 % below 99.4 % is noise among 1,200 (one standard error 0.22 %),
    # not among 12,000.
    below = {"val_accuracy": 0.992, "val_loss": 0.3}
    assert better_than_best(below, RunState(history=history[:1]), 1200)
    assert not better_than_best(below, RunState(history=history[:1]), 12000)
    assert better_than_best({"val_accuracy": 0.5, "val_loss": 9.0}, RunState(), 12000)  # the first epoch


def test_a_run_of_any_length_gets_a_learning_rate_schedule_that_steps():
    # A one-cycle schedule needs two warm-up steps (OneCycleLR divides by their number less one); a run too short
    # for that (a smoke run, a test's 1,000 images) trains at a constant rate instead of failing to start.
    from trainer.config import TrainConfig
    from trainer.train import make_optimizer

    model = torch.nn.Linear(4, 2)
    for warmup in (0.1, 0.2, 0.5):
        for steps in range(1, 41):
            config = TrainConfig(epochs=1, warmup_fraction=warmup)
            optimizer, scheduler = make_optimizer(config, model, steps)
            for _ in range(steps):
                optimizer.step()
                scheduler.step()
            one_cycle = isinstance(scheduler, torch.optim.lr_scheduler.OneCycleLR)
            assert one_cycle == (steps >= 10 and warmup * steps >= 2), (warmup, steps)

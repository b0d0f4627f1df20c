"""Training benchmark: the original notebook ('seed' preset) against the default, in the same run.

Prints, for this machine:
  - the seed preset's seconds per epoch (a couple of epochs are enough: every epoch costs the same);
  - the default's time to 99.5 % test accuracy, from a `--epochs 10` run (the quick result);
  - the default's final test accuracy over several seeds at its default epoch count, and the mean;
  - the ratios between them.

Each training runs as its own `python -m trainer` process, the way a user runs it, and the figures are read from
the run's last checkpoint (its per-epoch history). Time to target counts from process start (imports and data
loading included) to the end of the epoch whose test accuracy first reaches the target; the test accuracy is
only watched, never used to stop or choose.

    python bench/bench_train.py                      # everything, about 15 minutes on 2 CPU cores
    python bench/bench_train.py --seeds 1 --seed-epochs 1 --quick-epochs 2   # a smoke run
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from shared.checkpoint import load_checkpoint  # noqa: E402
from shared.settings import data_dir  # noqa: E402
from bench.machine import describe_machine  # noqa: E402


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=str(data_dir()), help="MNIST folder (env MNIST_DATA_DIR)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    parser.add_argument("--seed-epochs", type=int, default=2, help="epochs of the seed preset to time")
    parser.add_argument("--quick-epochs", type=int, default=10, help="epochs of the default's quick run")
    parser.add_argument("--target", type=float, default=0.995, help="test accuracy to time")
    parser.add_argument("--seeds", type=int, default=3, help="seeds of the default at its full epoch count")
    parser.add_argument("--full-epochs", type=int, default=None, help="epochs of the full runs (default: preset's)")
    parser.add_argument("--keep", default=None, help="keep the artifacts in this folder (default: a temp folder)")
    return parser


def train(artifacts: Path, run_name: str, *flags: str, data: str, device: str) -> dict:
    """Run the trainer as a user would; return its history and wall time."""
    cmd = [sys.executable, "-m", "trainer", "--data-dir", data, "--artifacts-dir", str(artifacts),
           "--device", device, "--no-download", "--no-publish", "--run-name", run_name, *flags]
    print("$", " ".join(cmd[1:]), flush=True)
    start = time.perf_counter()
    result = subprocess.run(cmd, cwd=REPO_ROOT, text=True, capture_output=True)
    wall = time.perf_counter() - start
    for line in result.stdout.splitlines():
        print("   ", line, flush=True)
    if result.returncode != 0:
        raise SystemExit(f"trainer failed:\n{result.stderr}")
    checkpoint = load_checkpoint(artifacts / "runs" / run_name / "checkpoints" / "last.pt")
    return {"history": checkpoint["history"], "wall": wall, "best_epoch": checkpoint["best_epoch"]}


def time_to(history: list[dict], target: float) -> tuple[int, float] | None:
    for m in history:
        if m["test_accuracy"] >= target:
            return int(m["epoch"]), float(m["elapsed_seconds"])
    return None




def main() -> None:
    args = get_args_parser().parse_args()
    holder = None if args.keep else tempfile.TemporaryDirectory(prefix="bench-train-")
    root = Path(args.keep or holder.name)
    common = {"data": args.data_dir, "device": args.device}
    print(f"machine: {describe_machine()}\n", flush=True)

    seed = train(root, "seed", "--preset", "seed", "--epochs", str(args.seed_epochs), **common)
    # The first epoch carries one-off warm-up (allocator, oneDNN kernel choice); the rest are the steady state.
    steady = seed["history"][1:] or seed["history"]
    seed_epoch_s = statistics.median(m["seconds"] for m in steady)

    quick = train(root, "quick", "--epochs", str(args.quick_epochs), **common)
    reached = time_to(quick["history"], args.target)
    quick_epoch_s = statistics.median(m["seconds"] for m in quick["history"][1:] or quick["history"])

    full_flags = ["--epochs", str(args.full_epochs)] if args.full_epochs else []
    finals = []
    for s in range(args.seeds):
        run = train(root, f"full-s{s}", "--seed", str(s), *full_flags, **common)
        best = next(m for m in run["history"] if m["epoch"] == run["best_epoch"])
        finals.append((s, best["test_accuracy"], best["val_accuracy"], run["wall"], len(run["history"])))

    print("\n=== training benchmark ===")
    print(f"machine: {describe_machine()}")
    print(f"seed preset (original MyNet): {seed_epoch_s:.1f} s/epoch (median of epochs 2..{args.seed_epochs}), "
          f"test accuracy after {len(seed['history'])} epochs {seed['history'][-1]['test_accuracy']:.2%}")
    print(f"default, --epochs {args.quick_epochs}: {quick_epoch_s:.1f} s/epoch, final test accuracy "
          f"{quick['history'][-1]['test_accuracy']:.2%}, wall {quick['wall']:.0f} s")
    if reached:
        epoch, seconds = reached
        print(f"default reaches {args.target:.2%} test accuracy at epoch {epoch}, {seconds:.1f} s after start")
        print(f"ratio: that is the time of {seconds / seed_epoch_s:.1f} seed-preset epochs; the original needed "
              f"400 epochs for 99.36 % (~{400 * seed_epoch_s / 60:.0f} min at this machine's pace), "
              f"{400 * seed_epoch_s / seconds:.0f}x longer")
    else:
        print(f"default did NOT reach {args.target:.2%} in {args.quick_epochs} epochs")
    print(f"per-epoch speed ratio seed/default: {seed_epoch_s / quick_epoch_s:.1f}x")
    for s, test, val, wall, epochs in finals:
        print(f"default full run, seed {s}: {epochs} epochs, best-by-validation epoch test {test:.2%} "
              f"(val {val:.2%}), wall {wall:.0f} s")
    if finals:
        print(f"default full runs: mean test accuracy {statistics.mean(f[1] for f in finals):.2%} "
              f"over {len(finals)} seed(s)")
    if holder:
        holder.cleanup()


if __name__ == "__main__":
    main()

"""`python -m trainer`: train, log to TensorBoard, publish the best model. `--help` lists the flags."""

from __future__ import annotations

import logging
import signal
import sys

from shared.checkpoint import CheckpointError
from shared.data import MnistDownloadFailed, MnistFormatError, MnistNotFound, MnistUnreadable

from trainer.config import get_args_parser
from trainer.train import CannotWrite, DiskFull, run


def stop_as_ctrl_c(signum, frame) -> None:
    """SIGTERM (docker stop, a Kubernetes pod deleted, torchrun stopping its workers) ends the run as Ctrl-C does:
    it says how to --resume. Unhandled, it ended the process without a word, and as a container's PID 1 (the
    Kubernetes Job runs python itself) it was ignored until the grace period ran out and SIGKILL came."""
    raise KeyboardInterrupt(signal.Signals(signum).name)


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    # The project's own INFO lines (e.g. "downloading <url>" on a first run); libraries stay at WARNING.
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logging.getLogger("shared").setLevel(logging.INFO)
    previous = signal.signal(signal.SIGTERM, stop_as_ctrl_c)
    try:
        run(args)
    except KeyboardInterrupt as e:  # train.Interrupted says whether and how to continue
        print(str(e) or "interrupted", file=sys.stderr)
        return 130
    except (DiskFull, CannotWrite, CheckpointError, MnistDownloadFailed, MnistUnreadable) as e:  # say what to do
        print(f"error: {e}", file=sys.stderr)
        return 1
    except MnistNotFound as e:
        print(
            f"error: {e}; point --data-dir (or MNIST_DATA_DIR) at the four MNIST files, or let the trainer download "
            "them (leave out --no-download)",
            file=sys.stderr,
        )
        return 1
    except MnistFormatError as e:
        mend = "Delete it and run again to download it afresh" if args.download else "Replace it with a good copy"
        print(f"error: a damaged MNIST file: {e}. {mend}", file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGTERM, previous)  # main() called from other code (the tests) leaves it as it was
    return 0


if __name__ == "__main__":
    sys.exit(main())

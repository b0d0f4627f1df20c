"""`python -m trainer`: train, log to TensorBoard, publish the best model. `--help` lists the flags."""

from __future__ import annotations

import errno
import logging
import sys

from trainer.config import get_args_parser
from trainer.train import run


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    # The project's own INFO lines (e.g. "downloading <url>" on a first run); libraries stay at WARNING.
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logging.getLogger("shared").setLevel(logging.INFO)
    try:
        run(args)
    except KeyboardInterrupt as e:  # train.Interrupted says whether and how to continue
        print(str(e) or "interrupted", file=sys.stderr)
        return 130
    except OSError as e:
        if e.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        # Checkpoints and models are written to a temporary file and renamed: the failed write left nothing.
        print(
            f"error: the disk is full ({e}); the last complete checkpoint and the published model are intact. "
            "Free some space, then continue with --resume",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Deterministic faults for the trainer, for tests only: kill it mid-epoch or mid-write, or fill the disk mid-write.

    python -m tests.reliability.crashpoints SPEC [trainer arguments ...]

runs `python -m trainer` with one fault installed, chosen by SPEC:

    kill-in-epoch:E:S      SIGKILL just before step S (0-based) of epoch E, i.e. after S optimizer steps of it
    kill-writing:NAME:N    SIGKILL halfway through the N-th write (1-based) of a file called NAME
    enospc-writing:NAME:N  OSError(ENOSPC) halfway through the N-th write of NAME, as a full disk gives

A write is shared.checkpoint.atomic_write_bytes, which save_checkpoint and publish_model use; the fault goes
into the real function: the temporary file it created gets half the bytes, flushed to disk, then the process
dies (or the write fails). Nothing here is imported by production code.
"""

from __future__ import annotations

import errno
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path

import shared.checkpoint as checkpoint


def die() -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def disk_full() -> None:
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


class HalfWriter:
    """The file object atomic_write_bytes writes to: the first write stores half its data on disk, then fails."""

    def __init__(self, file, fail: Callable[[], None]) -> None:
        self._file = file
        self._fail = fail

    def write(self, data) -> int:
        self._file.write(data[: len(data) // 2])
        self._file.flush()
        os.fsync(self._file.fileno())
        self._fail()
        raise AssertionError("the fault did not fire")

    def __getattr__(self, name):
        return getattr(self._file, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        return self._file.__exit__(*exc_info)


def fail_during_write(name: str, nth: int, fail: Callable[[], None]) -> Callable[[], None]:
    """Make the nth atomic_write_bytes of a file called `name` fail halfway. Returns a function undoing it."""
    real_write = checkpoint.atomic_write_bytes
    real_fdopen = os.fdopen
    count = 0

    def atomic_write_bytes(path, data):
        nonlocal count
        if Path(path).name == name:
            count += 1
            if count == nth:
                os.fdopen = lambda fd, *args, **kwargs: HalfWriter(real_fdopen(fd, *args, **kwargs), fail)
                try:
                    return real_write(path, data)
                finally:
                    os.fdopen = real_fdopen
        return real_write(path, data)

    checkpoint.atomic_write_bytes = atomic_write_bytes

    def undo() -> None:
        checkpoint.atomic_write_bytes = real_write

    return undo


def kill_in_epoch(epoch: int, step: int) -> None:
    """SIGKILL before `step` of `epoch`: the training loop iterates tqdm(range(steps), desc="epoch E")."""
    import trainer.train as train

    real_tqdm = train.tqdm

    def tqdm(iterable, *args, desc: str = "", **kwargs):
        current = int(desc.split()[-1]) if desc.startswith("epoch ") else None
        for index, item in enumerate(real_tqdm(iterable, *args, desc=desc, **kwargs)):
            if current == epoch and index == step:
                print(f"crashpoints: SIGKILL in epoch {epoch} before step {step}", flush=True)
                die()
            yield item

    train.tqdm = tqdm


def install(spec: str) -> None:
    kind, *args = spec.split(":")
    if kind == "kill-in-epoch":
        kill_in_epoch(int(args[0]), int(args[1]))
    elif kind in ("kill-writing", "enospc-writing"):
        fail_during_write(args[0], int(args[1]), die if kind == "kill-writing" else disk_full)
    else:
        raise SystemExit(f"unknown fault {spec!r}")


def main(argv: list[str]) -> int:
    install(argv[0])
    from trainer.__main__ import main as trainer_main

    return trainer_main(argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""A run's folder, runs/<run-name>/: its name, its checkpoints, and one trainer at a time in it.

Two trainers in one folder overwrite each other's checkpoints, mix their TensorBoard events, and the second to
finish publishes the other's best weights under its own settings (or dies at publish: "already published with
other weights"). Two runs started in the same second with default names, a sweep run with `&`, used to do just
that. So each trainer holds an exclusive lock on its folder (flock on runs/<name>/.trainer.lock, released by the
kernel when the process ends, however it ends), and a new run refuses a folder that holds checkpoints.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import shlex
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

from shared.settings import DEFAULT_ARTIFACTS_DIR, ENV_ARTIFACTS_DIR, Paths, env_str

log = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoints"
LAST = "last.pt"
BEST = "best.pt"
LOCK_FILE = ".trainer.lock"
# Written when a run has ended (its model published, kept or refused): --resume continues only runs without it.
FINISHED = "FINISHED.json"
# A default name taken (a run started in the same second) is tried again with "-2", "-3", ...
MAX_NAME_SUFFIX = 20


class RunFolderTaken(Exception):
    """The folder belongs to another run: `busy` when a trainer is running in it, else it holds checkpoints."""

    def __init__(self, run_dir: Path, busy: bool) -> None:
        super().__init__(run_dir)
        self.run_dir, self.busy = run_dir, busy


def last_checkpoint(run_dir: Path) -> Path:
    """The checkpoint --resume continues from: runs/<run>/checkpoints/last.pt."""
    return run_dir / CHECKPOINT_DIR / LAST


def default_run_name(arch: str, seed: int, preset: str) -> str:
    return f"{datetime.now().strftime('%Y%m%d-%H%M%S')}-{preset}-{arch}-s{seed}"


def newest_resumable_run(paths: Paths) -> str:
    """The unfinished run whose last checkpoint is newest. A finished run is never picked: resuming it would publish
    its model again, over a rollback made since."""
    candidates = sorted(
        (p for p in paths.runs.glob(f"*/{CHECKPOINT_DIR}/{LAST}") if not (p.parent.parent / FINISHED).exists()),
        key=lambda p: p.stat().st_mtime,
    )
    if not candidates:
        raise SystemExit(f"--resume: no unfinished run with a checkpoint under {paths.runs}")
    return candidates[-1].parent.parent.name


def check_resumable(paths: Paths, run_name: str) -> None:
    """SystemExit, saying what to do, unless runs/<run_name> has a last checkpoint and has not finished."""
    run_dir = paths.run_dir(run_name)
    if (run_dir / FINISHED).exists():
        raise SystemExit(
            f"--resume: run {run_name} has finished ({run_dir / FINISHED} says how it ended); nothing to resume. "
            "Start a new run, or serve one of its versions with `python -m inference.models promote VERSION`"
        )
    if not run_dir.is_dir():
        raise SystemExit(
            f"--resume: no run named {run_name} in {paths.runs.resolve()}; was it started with another "
            f"--artifacts-dir (or {ENV_ARTIFACTS_DIR})? Give that one, as the interrupted run's last line says"
        )
    if not last_checkpoint(run_dir).exists():
        raise SystemExit(
            f"--resume: run {run_name} has no checkpoint ({last_checkpoint(run_dir)} is missing); start it again "
            "without --resume"
        )


def resume_flags(artifacts_dir: Path, run_name: str) -> str:
    """The flags that continue run `run_name` of `artifacts_dir`, as the trainer's messages say them: with the
    folder unless it is the default one (a run in another folder was told `--resume --run-name X` alone, which
    then found no run) and no MNIST_ARTIFACTS_DIR chooses another. Named whenever the variable is set, even to
    this folder: it may have been set for the one command (`MNIST_ARTIFACTS_DIR=... python -m trainer`), and be
    gone when the user types the next."""
    flags = f"--resume --run-name {shlex.quote(run_name)}"
    if Path(artifacts_dir) != Path(DEFAULT_ARTIFACTS_DIR) or env_str(ENV_ARTIFACTS_DIR, ""):
        flags += f" --artifacts-dir {shlex.quote(str(artifacts_dir))}"
    return flags


def published_versions(paths: Paths, run_name: str) -> list[str]:
    """Model versions published from a run of this name (models/<run_name>-eNNN.pt)."""
    prefix = f"{run_name}-e"
    return sorted(
        p.stem for p in paths.models.glob("*.pt") if p.stem.startswith(prefix) and p.stem[len(prefix) :].isdigit()
    )


@contextlib.contextmanager
def claimed(run_dir: Path, *, resuming: bool) -> Iterator[None]:
    """Hold `run_dir` for this process: RunFolderTaken if another trainer holds it, or if a new run finds
    checkpoints there."""
    import fcntl  # POSIX only: imported here, so that the rest of the trainer imports anywhere

    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / LOCK_FILE, "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunFolderTaken(run_dir, busy=True) from None
        except OSError as e:
            if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                raise
            # Some network and FUSE volumes have no locks: train there as before, unguarded.
            log.warning("cannot lock %s (%s); another trainer in this folder would not be noticed", run_dir, e)
        # last.pt, not best.pt: an epoch 1 cut short between its two writes left best.pt alone, and nothing to
        # resume, so the run may start again there.
        if not resuming and last_checkpoint(run_dir).exists():
            raise RunFolderTaken(run_dir, busy=False)
        if not resuming:
            # A run without a checkpoint has nothing to finish: a FINISHED.json there is a run's that diverged in
            # its first epoch (written so before stop 53), which refused this run's own --resume.
            (run_dir / FINISHED).unlink(missing_ok=True)
        yield


def claim_run(held: contextlib.ExitStack, paths: Paths, run_name: str, *, resuming: bool, named: bool) -> str:
    """Claim runs/<run_name> for the rest of `held`; returns the name claimed. A default name (not `named`) that
    is taken becomes <name>-2, -3, ...; a name the user chose that is taken is an error that says what to do."""
    candidates = (
        [run_name] if named or resuming else [run_name] + [f"{run_name}-{i}" for i in range(2, MAX_NAME_SUFFIX)]
    )
    for name in candidates:
        versions = [] if resuming else published_versions(paths, name)
        if versions:  # its versions would clash with theirs at publish, after the whole run
            if len(candidates) > 1:
                continue
            raise SystemExit(used_before(name, versions))
        try:
            held.enter_context(claimed(paths.run_dir(name), resuming=resuming))
            return name
        except RunFolderTaken as taken:
            if len(candidates) > 1:
                continue
            raise SystemExit(taken_folder(paths, name, busy=taken.busy, resuming=resuming)) from None
    raise SystemExit(f"runs {candidates[0]} to {candidates[-1]} are all taken under {paths.runs}; give a --run-name")


def check_claimable(paths: Paths, run_name: str) -> None:
    """SystemExit, as claim_run would say it, if a new run named `run_name` (typed by the user) could not claim
    its folder: for --check-only, which makes no folder and holds no lock (so a trainer running there now is
    found by the run itself)."""
    if versions := published_versions(paths, run_name):
        raise SystemExit(used_before(run_name, versions))
    if last_checkpoint(paths.run_dir(run_name)).exists():
        raise SystemExit(taken_folder(paths, run_name, busy=False))


def used_before(name: str, versions: list[str]) -> str:
    """Why a new run may not take the name `name`: model `versions` were published from a run of that name."""
    return (
        f"run name {name} was used before: model version {versions[-1]} was published from it; give this run "
        "another --run-name"
    )


def taken_folder(paths: Paths, name: str, *, busy: bool, resuming: bool = False) -> str:
    """What to do where the folder of run `name` is held by another trainer (`busy`) or holds a run's checkpoints.
    `resuming`: this trainer was to continue that very run, so another --run-name would continue some other run."""
    run_dir = paths.run_dir(name)
    if busy and resuming:
        return f"another trainer is running run {name} in {run_dir}; wait for it to end (it continues the run itself)"
    if busy:
        return f"another trainer is running in {run_dir}; wait for it to end, or give this run another --run-name"
    if (run_dir / FINISHED).exists():  # nothing to continue: --resume would refuse it
        return f"{run_dir} holds run {name}, which has finished; give this run another --run-name"
    return (
        f"{run_dir} already holds the checkpoints of run {name}; give this run another --run-name, or continue "
        f"that one with {resume_flags(paths.root, name)}"
    )

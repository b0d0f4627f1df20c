"""Trainer faults: SIGKILL mid-epoch, mid-checkpoint-write and mid-publish, each followed by `--resume`; a full
disk mid-write; and a reader polling models/LATEST.json that must never see a manifest whose file fails its
checksum. Faults are injected deterministically by tests/reliability/crashpoints.py.

tests/trainer/test_train.py shows that `--resume` from a checkpoint repeats an uninterrupted run exactly; here the
checkpoint a SIGKILL leaves behind is shown to be that intact checkpoint, so the same holds after a crash.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from shared.checkpoint import (
    MANIFEST_NAME,
    Manifest,
    VersionTaken,
    atomic_write_bytes,
    load_checkpoint,
    publish_model,
    read_manifest,
    read_published_model,
    save_checkpoint,
)
from shared.settings import Paths

from inference.model_store import load_served_model
from tests.inference.helpers import model_payload
from tests.reliability import crashpoints

REPO_ROOT = Path(__file__).resolve().parents[2]
KILLED = -9
# A few seconds a run on two busy cores: 200 images, 2 steps an epoch, evaluation on 200 images.
TINY = ["--train-subset", "200", "--eval-subset", "200", "--batch-size", "100", "--device", "cpu", "--no-download"]


def temp_files(folder: Path) -> list[Path]:
    return sorted(folder.rglob(".*.tmp"))


class ManifestReader(threading.Thread):
    """Polls LATEST.json like the inference server does; records every manifest whose file fails its checksum."""

    def __init__(self, models: Path, interval: float = 0.005) -> None:
        super().__init__(daemon=True)
        self.models = models
        self.interval = interval
        self.reads = 0
        self.versions: set[str] = set()
        self.bad: list[str] = []
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            self.check_once()
            time.sleep(self.interval)

    def check_once(self) -> None:
        try:
            manifest = read_manifest(self.models)
        except Exception as e:  # a torn manifest is as bad as a torn model
            self.bad.append(f"manifest: {e}")
            return
        if manifest is None:
            return
        try:
            data = (self.models / manifest.file).read_bytes()
        except OSError as e:
            self.bad.append(f"{manifest.version}: {e}")
            return
        self.reads += 1
        if len(data) != manifest.size or hashlib.sha256(data).hexdigest() != manifest.sha256:
            self.bad.append(f"{manifest.version}: {len(data)} bytes, checksum mismatch")
        else:
            self.versions.add(manifest.version)

    def stop(self) -> None:
        self._halt.set()
        self.join(10)


def run_trainer(fault: str | None, artifacts: Path, mnist_dir: Path, *args: str) -> subprocess.CompletedProcess:
    common = ["--data-dir", str(mnist_dir), "--artifacts-dir", str(artifacts), "--run-name", "r", *TINY, *args]
    command = (
        [sys.executable, "-m", "tests.reliability.crashpoints", fault] if fault else [sys.executable, "-m", "trainer"]
    ) + common
    return subprocess.run(
        command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONUNBUFFERED": "1"}
    )


def test_killed_mid_epoch_mid_checkpoint_and_mid_publish_then_resumed(tmp_path, mnist_dir):
    artifacts = tmp_path / "artifacts"
    paths = Paths(artifacts)
    checkpoints = paths.run_dir("r") / "checkpoints"
    reader = ManifestReader(paths.models)
    reader.start()
    try:
        # 1. SIGKILL in epoch 2, after one of its two optimizer steps.
        result = run_trainer("kill-in-epoch:2:1", artifacts, mnist_dir, "--epochs", "3")
        assert result.returncode == KILLED, result.stderr
        assert "SIGKILL in epoch 2" in result.stdout
        assert load_checkpoint(checkpoints / "last.pt")["epoch"] == 1  # epoch 1's checkpoint, whole
        assert read_manifest(paths.models) is None

        # 2. --resume; SIGKILL halfway through writing epoch 2's last.pt.
        before = (checkpoints / "last.pt").read_bytes()
        result = run_trainer("kill-writing:last.pt:1", artifacts, mnist_dir, "--resume")
        assert result.returncode == KILLED, result.stderr
        assert "resuming after epoch 1 of 3" in result.stdout
        assert (checkpoints / "last.pt").read_bytes() == before  # the old checkpoint is untouched...
        (half_written,) = temp_files(checkpoints)  # ...and the half-written new one never took its name
        assert half_written.name.startswith(".last.pt.") and 0 < half_written.stat().st_size < 2 * len(before)

        # 3. --resume again; SIGKILL halfway through writing LATEST.json, after the model file was renamed in.
        result = run_trainer("kill-writing:LATEST.json:1", artifacts, mnist_dir, "--resume")
        assert result.returncode == KILLED, result.stderr
        assert "resuming after epoch 1 of 3" in result.stdout
        assert f"removed {half_written.name}" in result.stdout and not half_written.exists()
        assert load_checkpoint(checkpoints / "last.pt")["epoch"] == 3
        assert read_manifest(paths.models) is None  # nothing half-published is visible
        (model_file,) = paths.models.glob("r-e*.pt")
        assert [p.name.startswith(f".{MANIFEST_NAME}.") for p in temp_files(paths.models)] == [True]

        # 4. --resume finishes the job: the model file already in place is published, not rewritten.
        model_bytes = model_file.read_bytes()
        result = run_trainer(None, artifacts, mnist_dir, "--resume")
        assert result.returncode == 0, result.stderr
        assert "resuming after epoch 3 of 3" in result.stdout
        manifest = read_manifest(paths.models)
        assert manifest is not None and manifest.file == model_file.name
        assert model_file.read_bytes() == model_bytes
        payload, _model = read_published_model(paths.models, manifest)  # size, checksum, strict weights
        assert load_served_model(paths.models, manifest).version == manifest.version  # what the server would serve
        best = load_checkpoint(checkpoints / "best.pt")
        assert payload["epoch"] == best["best_epoch"]
        # The best checkpoint's weights; the digit distance's buffers are fitted after training.
        assert payload["model"].keys() == best["model"].keys()
        assert all(
            torch.equal(payload["model"][k], v) for k, v in best["model"].items() if not k.startswith("distance.")
        )
        last = load_checkpoint(checkpoints / "last.pt")
        assert [m["epoch"] for m in last["history"]] == [1, 2, 3]
        assert temp_files(checkpoints) == []
        # TensorBoard shows each epoch and the final entries once: the resume that finished the run logged them
        # again at epoch 3, over what the killed one had logged there.
        events = EventAccumulator(str(paths.run_dir("r")), size_guidance={"images": 0, "scalars": 0})
        events.Reload()
        assert [e.step for e in events.Scalars("loss/train")] == [1, 2, 3]
        assert [e.step for e in events.Images("confusion_matrix/test")] == [3]
        assert [e.step for e in events.Scalars("hparam/val_accuracy")] == [3]
    finally:
        reader.stop()
    assert reader.bad == []
    assert reader.versions == {manifest.version}


def test_a_reader_never_sees_a_half_published_model(tmp_path):
    """30 models published back to back while a reader polls: every manifest it reads matches its file."""
    models = tmp_path / "models"
    payloads = [model_payload(seed) for seed in range(3)]
    reader = ManifestReader(models, interval=0)
    reader.start()
    try:
        for i in range(30):
            publish_model(models, version=f"v{i:02d}", model_payload=payloads[i % 3])
    finally:
        reader.stop()
    assert reader.bad == []
    assert reader.reads > 30 and len(reader.versions) >= 5


def test_the_reader_does_catch_a_non_atomic_publisher(tmp_path):
    """The control for the test above: a publisher that writes the manifest first and the file in place."""
    models = tmp_path / "models"
    models.mkdir()
    reader = ManifestReader(models, interval=0.001)
    reader.start()
    try:
        for i in range(3):
            data = b"x" * 100_000
            manifest = Manifest(
                version=f"v{i}",
                file=f"v{i}.pt",
                sha256=hashlib.sha256(data).hexdigest(),
                size=len(data),
                arch="compact",
                created_at="",
                run_name="",
                metrics={},
            )
            (models / MANIFEST_NAME).write_text(manifest.to_json())
            with open(models / manifest.file, "wb") as f:
                f.write(data[:50_000])
                f.flush()
                time.sleep(0.05)
                f.write(data[50_000:])
            time.sleep(0.05)
    finally:
        reader.stop()
    assert reader.bad


# ---------------------------------------------------------------------------------------------------------------
# A full disk.


@pytest.fixture
def disk_full_on(monkeypatch):
    """disk_full_on(name, nth): the nth write of `name` stores half its bytes, then fails with ENOSPC."""
    undo = []

    def install(name: str, nth: int = 1) -> None:
        undo.append(crashpoints.fail_during_write(name, nth, crashpoints.disk_full))

    yield install
    for u in undo:
        u()


def test_checkpoint_write_on_a_full_disk(tmp_path, disk_full_on):
    path = tmp_path / "run" / "last.pt"
    save_checkpoint(path, {"model": {"w": torch.zeros(1000)}, "epoch": 1})
    before = path.read_bytes()
    disk_full_on("last.pt")
    with pytest.raises(OSError) as e:
        save_checkpoint(path, {"model": {"w": torch.ones(100_000)}, "epoch": 2})
    assert e.value.errno == errno.ENOSPC
    assert path.read_bytes() == before and load_checkpoint(path)["epoch"] == 1
    assert temp_files(tmp_path) == []


@pytest.mark.parametrize("full_at", ["model file", "manifest"])
def test_publish_on_a_full_disk_then_again_with_space(tmp_path, disk_full_on, full_at):
    models = tmp_path / "models"
    old = publish_model(models, version="old", model_payload=model_payload(1))
    payload = model_payload(2)
    disk_full_on("new.pt" if full_at == "model file" else MANIFEST_NAME)
    with pytest.raises(OSError) as e:
        publish_model(models, version="new", model_payload=payload)
    assert e.value.errno == errno.ENOSPC
    assert read_manifest(models) == old  # still names the old model, which still passes its checksum
    read_published_model(models, old)
    assert temp_files(tmp_path) == []
    assert (models / "new.pt").exists() == (full_at == "manifest")  # renamed in whole, or not there at all

    # Space is freed and the trainer (--resume) publishes the same model again: it completes.
    new = publish_model(models, version="new", model_payload=payload)
    assert read_manifest(models) == new
    read_published_model(models, new)
    # A *different* model under a published version is still refused.
    with pytest.raises(VersionTaken, match="other weights"):
        publish_model(models, version="new", model_payload=model_payload(3))


def test_trainer_on_a_full_disk_stops_cleanly(tmp_path, mnist_dir, disk_full_on, capsys):
    from trainer.__main__ import main as trainer_main

    artifacts = tmp_path / "artifacts"
    checkpoints = Paths(artifacts).run_dir("full") / "checkpoints"
    disk_full_on("last.pt", 2)  # epoch 2's checkpoint
    code = trainer_main(
        ["--data-dir", str(mnist_dir), "--artifacts-dir", str(artifacts), "--run-name", "full", *TINY, "--epochs", "2"]
    )
    err = capsys.readouterr().err
    assert code == 1
    assert "the disk is full" in err and "--resume" in err and "Traceback" not in err
    assert load_checkpoint(checkpoints / "last.pt")["epoch"] == 1
    assert temp_files(artifacts) == []
    assert read_manifest(Paths(artifacts).models) is None


def test_a_full_disk_under_tensorboard_is_said_in_one_line_without_the_writer_threads_traceback(
    tmp_path, mnist_dir, capsys, monkeypatch
):
    """TensorBoard's own thread writes the event files: the disk filling there printed that thread's traceback
    beside the trainer's one line (a review's, on a 100 KiB tmpfs). The trainer still says it; the thread not."""
    from tensorboard.summary.writer import record_writer

    from trainer.__main__ import main as trainer_main

    printed = []
    monkeypatch.setattr(threading, "excepthook", printed.append)  # what Python would print for a thread
    writes = {"n": 0}
    real_write = record_writer.RecordWriter.write

    def write(self, data):
        writes["n"] += 1
        if writes["n"] > 3:  # the file's header and the first events, then the disk is full
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(self, data)

    monkeypatch.setattr(record_writer.RecordWriter, "write", write)
    artifacts = tmp_path / "artifacts"
    code = trainer_main(
        ["--data-dir", str(mnist_dir), "--artifacts-dir", str(artifacts), "--run-name", "tb", *TINY, "--epochs", "1"]
    )
    err = capsys.readouterr().err
    assert code == 1 and "the disk is full" in err and "Traceback" not in err, err
    assert writes["n"] > 3 and printed == [], printed


def test_a_full_disk_at_the_first_checkpoint_leaves_a_run_that_starts_again(tmp_path, mnist_dir, disk_full_on, capsys):
    """Epoch 1 writes best.pt, then last.pt: the disk filling between the two left a folder that a new run refused
    and --resume could not continue."""
    from trainer.__main__ import main as trainer_main

    artifacts = tmp_path / "artifacts"
    command = ["--data-dir", str(mnist_dir), "--artifacts-dir", str(artifacts), "--run-name", "r", *TINY]
    disk_full_on("last.pt", 1)
    assert trainer_main([*command, "--epochs", "1"]) == 1
    err = capsys.readouterr().err
    assert "the run had no checkpoint yet" in err and "start again" in err and "--resume" not in err
    checkpoints = Paths(artifacts).run_dir("r") / "checkpoints"
    assert (checkpoints / "best.pt").exists() and not (checkpoints / "last.pt").exists()
    assert trainer_main([*command, "--epochs", "1"]) == 0  # started again, as the message says
    assert load_checkpoint(checkpoints / "last.pt")["epoch"] == 1


@pytest.fixture
def tiny_disk(tmp_path):
    """A real 1 MiB tmpfs (needs root and permission to mount; skipped otherwise)."""
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    if shutil.which("mount") is None or os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount_point)], capture_output=True, text=True
    )
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", str(mount_point)], check=True)


def test_checkpoint_write_on_a_really_full_disk(tiny_disk):
    path = tiny_disk / "last.pt"
    save_checkpoint(path, {"model": {"w": torch.zeros(50_000)}, "epoch": 1})  # 200 kB of 1 MiB
    before = path.read_bytes()
    with pytest.raises(OSError) as e:
        save_checkpoint(path, {"model": {"w": torch.ones(250_000)}, "epoch": 2})  # 1 MB: cannot fit beside it
    assert e.value.errno == errno.ENOSPC
    assert path.read_bytes() == before and load_checkpoint(path)["epoch"] == 1
    assert temp_files(tiny_disk) == []
    atomic_write_bytes(tiny_disk / "small", b"still writable")  # nothing was leaked: the space is back

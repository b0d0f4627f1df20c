"""The publish gate (`--publish if-better|always|never`): a run replaces the served model only when it beats it
on the same validation images, and its last line says what was decided and why."""

from __future__ import annotations

import shutil

import pytest
import torch

import shared.checkpoint
from shared.checkpoint import publish_model, read_manifest, read_version_manifest
from shared.settings import Paths

from inference.models import main as models_main
from inference.versions import remove_version
from tests.inference.helpers import model_payload
from trainer.__main__ import main as trainer_main
from trainer.publish import decide

TINY = ["--eval-subset", "1000", "--batch-size", "100", "--device", "cpu", "--no-download"]


def train(artifacts, mnist_dir, *extra: str) -> int:
    return trainer_main(["--data-dir", str(mnist_dir), "--artifacts-dir", str(artifacts), *TINY, *extra])


@pytest.fixture(scope="module")
def good_model(tmp_path_factory, mnist_dir):
    """An artifacts folder serving a decently trained model (2 epochs on 3,000 images)."""
    root = tmp_path_factory.mktemp("good")
    assert train(root, mnist_dir, "--train-subset", "3000", "--epochs", "2", "--run-name", "good") == 0
    assert read_manifest(Paths(root).models).version == "good-e002"
    return root


@pytest.fixture
def served_good(good_model, tmp_path):
    root = tmp_path / "artifacts"
    shutil.copytree(Paths(good_model).models, Paths(root).models)
    return root


def last_line(capsys) -> str:
    return capsys.readouterr().out.strip().splitlines()[-1]


def models_state(root) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(Paths(root).models.iterdir())}


def test_a_worse_run_is_kept_but_not_served(served_good, mnist_dir, capsys):
    before = read_manifest(Paths(served_good).models)
    assert train(served_good, mnist_dir, "--train-subset", "200", "--epochs", "1", "--run-name", "careless") == 0
    line = last_line(capsys)
    assert line.startswith("not published: validation accuracy ")
    assert "does not beat" in line and "of the published model good-e002" in line
    assert "on the same 1,000 validation images (split seed 0)" in line
    assert "Kept as version careless-e001" in line and "inference.models promote careless-e001" in line
    models = Paths(served_good).models
    assert read_manifest(models) == before  # still serving the good model
    assert read_version_manifest(models, "careless-e001") is not None  # there to try, or promote by hand


def locked(folder) -> bool:
    """Whether someone holds `folder`'s models lock (shared.checkpoint.models_lock): another open of it cannot."""
    import fcntl
    import os

    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


@pytest.mark.parametrize("folder", ["serving", "new"])
def test_the_gate_and_the_publish_hold_the_models_lock(served_good, tmp_path, mnist_dir, monkeypatch, folder):
    """A promote between the gate's comparison and the publish was overwritten by a model the gate never compared
    with it: both run under the lock that promote, rollback and prune take too. In a new artifacts folder too (the
    lock is the models folder's own: two first runs finishing together both served)."""
    import trainer.train as train_module

    if folder == "new":
        served_good = tmp_path / "new"
    seen = []
    for name in ("decide", "publish_model"):
        original = getattr(train_module, name)

        def checking(*args, _original=original, _name=name, **kwargs):
            seen.append((_name, locked(Paths(served_good).models)))
            return _original(*args, **kwargs)

        monkeypatch.setattr(train_module, name, checking)
    assert train(served_good, mnist_dir, "--train-subset", "200", "--epochs", "1", "--publish", "always") == 0
    assert seen == [("decide", True), ("publish_model", True)]


def test_a_better_run_is_published(tmp_path, mnist_dir, capsys):
    root = tmp_path / "artifacts"
    publish_model(Paths(root).models, version="random", model_payload=model_payload(1))  # untrained: ~10 %
    assert train(root, mnist_dir, "--train-subset", "1000", "--epochs", "1", "--run-name", "better") == 0
    line = last_line(capsys)
    assert line.startswith("published model better-e001 to ")
    assert "beats" in line and "of the published model random on the same 1,000 validation images" in line
    assert read_manifest(Paths(root).models).version == "better-e001"


def test_the_first_model_is_published(tmp_path, mnist_dir, capsys):
    assert train(tmp_path, mnist_dir, "--train-subset", "200", "--epochs", "1", "--run-name", "first") == 0
    assert last_line(capsys).endswith("no model was published before")
    assert read_manifest(Paths(tmp_path).models).version == "first-e001"


def test_a_model_validated_on_another_split_is_not_compared(tmp_path, mnist_dir, capsys):
    root = tmp_path / "artifacts"
    publish_model(Paths(root).models, version="other-split", model_payload={**model_payload(1), "split_seed": 7})
    assert train(root, mnist_dir, "--train-subset", "200", "--epochs", "1", "--run-name", "r") == 0
    line = last_line(capsys)
    assert line.startswith("not published: the published model other-split was validated on another split")
    assert "split seed 7" in line
    assert read_manifest(Paths(root).models).version == "other-split"


def test_publish_always_replaces_even_a_better_model(served_good, mnist_dir, capsys):
    assert (
        train(
            served_good,
            mnist_dir,
            "--train-subset",
            "200",
            "--epochs",
            "1",
            "--run-name",
            "forced",
            "--publish",
            "always",
        )
        == 0
    )
    assert last_line(capsys).endswith(
        "(sha256 " + read_manifest(Paths(served_good).models).sha256[:12] + "): --publish always"
    )
    assert read_manifest(Paths(served_good).models).version == "forced-e001"


@pytest.mark.parametrize("flag", [["--publish", "never"], ["--no-publish"]])
def test_publish_never_writes_nothing(served_good, mnist_dir, capsys, flag):
    before = models_state(served_good)
    assert train(served_good, mnist_dir, "--train-subset", "200", "--epochs", "1", "--run-name", "n", *flag) == 0
    assert last_line(capsys) == "not published (--publish never)"
    assert models_state(served_good) == before


def test_the_same_weights_never_beat_themselves(tmp_path, mnist_dir, capsys):
    """Two runs with the same seed and flags train the same weights. The gate measures the published model in
    fp32, so the run's own figure is fp32 too: with bf16 training, the epoch's bf16 figure once 'beat' the same
    weights by 0.01 point and replaced them."""
    same = ["--train-subset", "1500", "--epochs", "2", "--precision", "bf16"]
    assert train(tmp_path, mnist_dir, *same, "--run-name", "a") == 0
    assert train(tmp_path, mnist_dir, *same, "--run-name", "b") == 0
    line = last_line(capsys)
    assert line.startswith("not published: validation accuracy ") and "does not beat" in line, line
    assert read_manifest(Paths(tmp_path).models).version == "a-e002"


@pytest.mark.parametrize("publish", ["if-better", "always"])
def test_a_resumed_publish_does_not_undo_a_rollback_made_after_it(served_good, mnist_dir, capsys, publish):
    """A run killed after its publish and before FINISHED.json, then rolled back by an operator: --resume finishes
    the run and keeps the rollback (it republished over it)."""
    run = ["--train-subset", "1000", "--epochs", "1", "--run-name", "r", "--publish", publish]
    assert train(served_good, mnist_dir, *run) == 0
    models = Paths(served_good).models
    if read_manifest(models).version != "r-e001":  # if-better: the short run must beat the good model to be served
        assert models_main(["--artifacts-dir", str(served_good), "promote", "r-e001"]) == 0
    (Paths(served_good).run_dir("r") / "FINISHED.json").unlink()  # as if killed just after the publish
    assert models_main(["--artifacts-dir", str(served_good), "rollback"]) == 0
    assert read_manifest(models).version == "good-e002"
    capsys.readouterr()

    assert train(served_good, mnist_dir, "--resume", *run) == 0
    line = last_line(capsys)
    assert line.startswith("not published: this run's model r-e001 was served before the run was interrupted")
    assert "good-e002 is served now" in line
    assert read_manifest(models).version == "good-e002"
    assert (Paths(served_good).run_dir("r") / "FINISHED.json").exists()


def test_a_resumed_run_whose_version_holds_another_model_is_told_so_not_to_make_the_folder_writable(
    tmp_path, mnist_dir, capsys
):
    """Its version published with other weights (a resume on another machine): the trainer said it could not write
    the run's files and to make the folder writable, then --resume, which failed the same way every time."""
    run = ["--train-subset", "200", "--epochs", "1", "--run-name", "r", "--publish", "never"]
    assert train(tmp_path, mnist_dir, *run) == 0
    (Paths(tmp_path).run_dir("r") / "FINISHED.json").unlink()  # as if killed just after a publish
    publish_model(Paths(tmp_path).models, version="r-e001", model_payload=model_payload(3))
    capsys.readouterr()
    assert train(tmp_path, mnist_dir, "--resume", *run[:-2], "--publish", "always") == 1
    said = capsys.readouterr().err
    assert "model version r-e001 is already published" in said and "another run (--run-name)" in said, said
    assert "cannot write" not in said and "writable" not in said, said


def test_a_served_model_whose_export_is_damaged_is_replaced(served_good, mnist_dir, capsys):
    """Servers refuse the served version when its ONNX export fails its checksum; the gate compared with it all the
    same and kept a loadable model from being served."""
    models = Paths(served_good).models
    export = models / "good-e002.onnx"
    data = bytearray(export.read_bytes())
    data[len(data) // 2] ^= 0xFF
    export.write_bytes(bytes(data))
    assert train(served_good, mnist_dir, "--train-subset", "200", "--epochs", "1", "--run-name", "next") == 0
    line = last_line(capsys)
    assert line.startswith("published model next-e001 to ") and "the published model good-e002 cannot be served" in line
    assert read_manifest(models).version == "next-e001"


def gate(models, version: str, publish: str):
    """The gate's decision for a run whose model `version` scored better than any model can on the validation
    images (a blank picture's label 0 for all eight): what is left to decide is whether it was served before."""
    return decide(
        publish,
        version=version,
        val_accuracy=1.01,
        models_dir=models,
        split_seed=0,
        val_fraction=0.2,
        val_x=torch.zeros(8, 28, 28, dtype=torch.uint8),
        val_y=torch.zeros(8, dtype=torch.long),
        device=torch.device("cpu"),
    )


@pytest.mark.parametrize(
    "field, value, said",
    [
        ("split_seed", None, "split_seed is None, not a whole number"),
        ("split_seed", "x", "split_seed is 'x', not a whole number"),
        ("split_seed", 1.5e300, "not a whole number from 0 to"),
        ("val_fraction", 1.5, "val_fraction is 1.5: the validation share"),
        ("normalization", {"mean": 0.1307}, "payload lacks normalization"),
        ("normalization", {"mean": 0.1, "std": 0}, "normalization.std is 0.0, must be positive"),
    ],
)
def test_a_published_model_the_server_refuses_for_its_fields_is_replaced_not_a_traceback(tmp_path, field, value, said):
    """A split seed of None was a TypeError at the end of the whole run, and one of 1.5e300 "another split", which
    kept serving a model the server refuses: the gate reads the fields as the server does."""
    models = Paths(tmp_path).models
    publish_model(models, version="damaged", model_payload={**model_payload(1), field: value})
    decision = gate(models, "next-e001", "if-better")
    assert (decision.serve, decision.store) == (True, True), decision
    assert decision.reason.startswith("the published model damaged cannot be served") and said in decision.reason


@pytest.mark.parametrize("publish", ["if-better", "always"])
def test_a_resumed_publish_whose_history_line_was_lost_does_not_undo_a_rollback_made_after_it(
    tmp_path, monkeypatch, publish
):
    """A publish killed between LATEST.json's rename and its history line left no record that r-e001 was served:
    the operator's rollback recorded only 'rollback good', and the resumed run's gate served r-e001 again."""
    models = Paths(tmp_path).models
    publish_model(models, version="good", model_payload=model_payload(1))
    payload = model_payload(2)

    def killed_before_the_line(*args, **kwargs):
        raise OSError(28, "No space left on device")  # the line is lost, as the kill loses it

    with monkeypatch.context() as patch:
        patch.setattr(shared.checkpoint, "append_history", killed_before_the_line)
        publish_model(models, version="r-e001", model_payload=payload)
    assert read_manifest(models).version == "r-e001"
    assert models_main(["--artifacts-dir", str(tmp_path), "rollback"]) == 0
    assert read_manifest(models).version == "good"

    decision = gate(models, "r-e001", publish)
    assert (decision.serve, decision.store) == (False, True), decision
    assert "was served before the run was interrupted, and good is served now" in decision.reason


@pytest.mark.parametrize("publish", ["if-better", "always"])
def test_a_new_run_that_reuses_a_pruned_runs_name_is_served_as_any_run_is(tmp_path, publish):
    """Run 'nightly' served nightly-e001, which was pruned since; a new run under the name (allowed: none of the name's
    versions is left) was refused to be served even with --publish always, "served before the run was interrupted".
    Served before means this very file: the history line's SHA-256 is the model file's."""
    models = Paths(tmp_path).models
    publish_model(models, version="nightly-e001", model_payload=model_payload(1))
    publish_model(models, version="v2", model_payload=model_payload(2))
    remove_version(models, "nightly-e001")
    assert gate(models, "nightly-e001", publish).serve
    # Stored by the new run and not served (its gate said no, or it was killed before serving): a resume decides anew.
    publish_model(models, version="nightly-e001", model_payload=model_payload(3), serve=False)
    decision = gate(models, "nightly-e001", publish)
    assert decision.serve, decision

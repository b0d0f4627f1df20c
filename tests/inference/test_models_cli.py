"""`python -m inference.models`: list, promote, rollback, prune, on a real models folder and with a real server
that swaps in what they choose."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from shared.checkpoint import HISTORY_NAME, MANIFEST_NAME, publish_model, read_history, read_manifest
from shared.settings import Paths

from inference.models import main as models_main
from tests.inference.helpers import model_payload, publish

REPO_ROOT = __import__("pathlib").Path(__file__).resolve().parents[2]


@pytest.fixture
def artifacts(tmp_path):
    """v1 and v2 published in turn (v2 served), v3 stored but not served."""
    root = tmp_path / "artifacts"
    publish(root, "v1", seed=1)
    publish(root, "v2", seed=2)
    publish_model(Paths(root).models, version="v3", model_payload=model_payload(3), serve=False)
    return root


def run(artifacts, *argv: str) -> int:
    return models_main(["--artifacts-dir", str(artifacts), *argv])


def served(artifacts) -> str:
    return read_manifest(Paths(artifacts).models).version


def folder_state(artifacts) -> dict[str, bytes]:
    models = Paths(artifacts).models
    return {p.name: p.read_bytes() for p in sorted(models.iterdir())}


def test_list_shows_every_version_newest_first_and_marks_the_served_one(artifacts, capsys):
    assert run(artifacts, "list") == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:2] == ["version", "created"]
    rows = [line.split() for line in lines[1:]]
    assert [row[1] if row[0] == "*" else row[0] for row in rows] == ["v3", "v2", "v1"]
    assert [row[0] == "*" for row in rows] == [False, True, False]
    assert "10.20%" in lines[2]  # v2's recorded val_accuracy
    assert run(artifacts, "list", "--json") == 0
    listed = json.loads(capsys.readouterr().out)
    assert [(v["version"], v["served"]) for v in listed] == [("v3", False), ("v2", True), ("v1", False)]
    assert all(len(v["sha256"]) == 64 and v["size"] > 0 and v["checksum_recorded"] for v in listed)


def test_promote_serves_a_version_and_records_it(artifacts, capsys):
    assert run(artifacts, "promote", "v3") == 0
    assert "now serving v3" in capsys.readouterr().out
    assert served(artifacts) == "v3"
    assert [(e["event"], e["version"]) for e in read_history(Paths(artifacts).models)] == [
        ("publish", "v1"),
        ("publish", "v2"),
        ("promote", "v3"),
    ]
    assert run(artifacts, "promote", "v3") == 0  # again: nothing to do, and said so
    assert "models/LATEST.json already names" in capsys.readouterr().out
    assert len(read_history(Paths(artifacts).models)) == 3


@pytest.mark.parametrize(
    "damage",
    ["flipped byte", "truncated", "NaN weights", "export of another network", "manifest garbage", "odd field"],
)
def test_promote_to_a_damaged_model_is_refused_and_nothing_changes(artifacts, capsys, damage):
    import torch

    models = Paths(artifacts).models
    if damage == "flipped byte":
        data = bytearray((models / "v3.pt").read_bytes())
        data[len(data) // 2] ^= 0xFF
        (models / "v3.pt").write_bytes(bytes(data))
    elif damage == "truncated":
        (models / "v3.pt").write_bytes((models / "v3.pt").read_bytes()[:1000])
    elif damage == "NaN weights":  # a model whose checksum is right but whose output is not finite
        (models / "v3.pt").unlink()
        (models / "v3.json").unlink()
        payload = model_payload(3)
        payload["model"] = {
            k: torch.full_like(v, float("nan")) if v.is_floating_point() else v for k, v in payload["model"].items()
        }
        publish_model(models, version="v3", model_payload=payload, serve=False)
    elif damage == "export of another network":  # its checksum is right, its output has eleven columns
        from shared.checkpoint import model_from_checkpoint
        from shared.onnx_model import export_onnx

        other = model_payload(3, arch_kwargs={"width": 8, "not_digit": True})
        for name in ("v3.pt", "v3.onnx", "v3.json"):
            (models / name).unlink()
        onnx = export_onnx(model_from_checkpoint(other).eval())
        publish_model(models, version="v3", model_payload=model_payload(3), onnx=onnx, serve=False)
    elif damage == "odd field":  # a payload the trainer never writes: a server skips it, promote said a traceback
        (models / "v3.pt").unlink()
        (models / "v3.json").unlink()
        publish_model(models, version="v3", model_payload={**model_payload(3), "split_seed": "zero"}, serve=False)
    else:
        (models / "v3.json").write_bytes(b"\x00garbage")
    before = folder_state(artifacts)
    assert run(artifacts, "promote", "v3") == 1
    err = capsys.readouterr().err
    assert "v3" in err and "Nothing was changed" in err
    assert folder_state(artifacts) == before
    assert served(artifacts) == "v2"


def test_promote_of_an_unknown_version_says_how_to_list_them(artifacts, capsys):
    before = folder_state(artifacts)
    assert run(artifacts, "promote", "v9") == 1
    assert "no model version 'v9'" in capsys.readouterr().err
    assert run(artifacts, "promote", "../models/v1") == 1
    assert folder_state(artifacts) == before


def test_rollback_walks_back_through_what_was_served(artifacts, capsys):
    assert run(artifacts, "promote", "v3") == 0
    assert run(artifacts, "rollback") == 0
    assert served(artifacts) == "v2"
    assert "rolled back to v2" in capsys.readouterr().out
    assert run(artifacts, "rollback") == 0
    assert served(artifacts) == "v1"
    before = folder_state(artifacts)
    assert run(artifacts, "rollback") == 1  # v1 was the first: nothing before it
    assert "nothing to roll back to" in capsys.readouterr().err
    assert folder_state(artifacts) == before
    assert run(artifacts, "promote", "v3") == 0
    assert run(artifacts, "rollback") == 0
    assert served(artifacts) == "v1"  # undoes the promote, back to where it was


def test_rollback_never_goes_back_to_a_name_reused_after_a_prune_for_a_model_never_served(tmp_path, capsys):
    """v1..v4 served in turn, v1 and v2 pruned, then a new run published v2 again without serving it (the gate
    refused it): rollback from v4 went to v3, then to that new v2, by name, serving a model no one had served."""
    artifacts = tmp_path / "artifacts"
    for seed, version in enumerate(("v1", "v2", "v3", "v4"), start=1):
        publish(artifacts, version, seed=seed)
    assert run(artifacts, "prune", "--keep", "1") == 0
    publish_model(Paths(artifacts).models, version="v2", model_payload=model_payload(9), serve=False)
    assert run(artifacts, "rollback") == 0 and served(artifacts) == "v3"
    before = folder_state(artifacts)
    capsys.readouterr()
    assert run(artifacts, "rollback") == 1
    assert "nothing to roll back to" in capsys.readouterr().err
    assert folder_state(artifacts) == before and served(artifacts) == "v3"
    # Served on purpose, it is a rollback's target like any other.
    assert run(artifacts, "promote", "v2") == 0 and run(artifacts, "rollback") == 0 and served(artifacts) == "v3"


def test_a_history_line_cut_short_by_a_crash_does_not_swallow_the_next_change(artifacts, capsys):
    """A partial write (a full disk, a crash) leaves a line without its end: the next entry was appended to it,
    the two read as one bad line, and rollback skipped that version (from v3 back to v1, not v2)."""
    with open(Paths(artifacts).models / HISTORY_NAME, "a", encoding="utf-8") as f:
        f.write('{"at": "2026-12-03T00:00:00Z", "event": "prom')
    assert run(artifacts, "promote", "v3") == 0
    assert [e["version"] for e in read_history(Paths(artifacts).models)] == ["v1", "v2", "v3"]
    assert run(artifacts, "rollback") == 0
    assert served(artifacts) == "v2"


def test_a_served_version_whose_history_line_was_lost_is_recorded_before_the_next_change(
    artifacts, monkeypatch, capsys
):
    """Killed between LATEST.json's rename and its history line, a promote (or publish) of v3 left v3 served but not
    recorded: the rollback recorded only 'rollback v2', and the trainer's publish gate, which reads the history,
    took v3 for never served. The missing line comes first now, and rollbacks still walk back as they did."""
    import shared.checkpoint

    models = Paths(artifacts).models

    def killed_before_the_line(*args, **kwargs):
        raise OSError(28, "No space left on device")  # the line is lost, as the kill loses it

    with monkeypatch.context() as patch:
        patch.setattr(shared.checkpoint, "append_history", killed_before_the_line)
        assert run(artifacts, "promote", "v3") == 0
    assert [e["version"] for e in read_history(models)] == ["v1", "v2"] and served(artifacts) == "v3"

    assert run(artifacts, "rollback") == 0 and served(artifacts) == "v2"
    history = read_history(models)
    assert [(e["event"], e["version"]) for e in history] == [
        ("publish", "v1"),
        ("publish", "v2"),
        ("recovered", "v3"),
        ("rollback", "v2"),
    ]
    assert history[2]["sha256"] == json.loads((models / "v3.json").read_text())["sha256"]
    assert run(artifacts, "rollback") == 0 and served(artifacts) == "v1"
    assert run(artifacts, "promote", "v3") == 0
    assert run(artifacts, "rollback") == 0 and served(artifacts) == "v1"  # undoes the promote, back to where it was


def test_a_history_line_nested_thousands_deep_or_with_a_lone_surrogate_is_skipped_as_damaged(artifacts, capsys):
    """json.loads raised RecursionError on the first (list, promote and rollback ended in a traceback), and the
    second's version could not be printed or sent."""
    with open(Paths(artifacts).models / HISTORY_NAME, "a", encoding="utf-8") as f:
        f.write("[" * 100_000 + "]" * 100_000 + "\n")
        f.write('{"at": "2026-12-03T00:00:00Z", "event": "promote", "version": "v\\ud800"}\n')
    assert [e["version"] for e in read_history(Paths(artifacts).models)] == ["v1", "v2"]
    assert run(artifacts, "list") == 0
    assert run(artifacts, "promote", "v3") == 0
    assert run(artifacts, "rollback") == 0
    assert served(artifacts) == "v2"


@pytest.mark.parametrize("argv", [("promote", "v3"), ("rollback",), ("prune", "--keep", "1")])
def test_changes_wait_for_the_models_lock(artifacts, argv, capsys):
    """A trainer holds the lock from its publish gate's comparison to its publish: a promote (rollback, prune)
    waits for it instead of being overwritten a second later."""
    import threading

    from shared.checkpoint import models_lock

    before = folder_state(artifacts)
    done = threading.Event()
    with models_lock(Paths(artifacts).models):
        worker = threading.Thread(target=lambda: (run(artifacts, *argv), done.set()))
        worker.start()
        assert not done.wait(1.0), f"{argv[0]} did not wait for the lock"
        assert folder_state(artifacts) == before
    assert done.wait(30)
    worker.join()
    if argv[0] != "prune":  # here prune keeps all three: the newest, the served one and the one before it
        assert folder_state(artifacts) != before


def test_rollback_to_a_damaged_model_is_refused_and_nothing_changes(artifacts, capsys):
    models = Paths(artifacts).models
    (models / "v1.pt").write_bytes(b"garbage")
    before = folder_state(artifacts)
    assert run(artifacts, "rollback") == 1
    err = capsys.readouterr().err
    assert "v1" in err and "promote VERSION" in err  # a rollback again picks v1 again: the way past it
    assert folder_state(artifacts) == before


def test_a_rollback_whose_history_line_cannot_be_written_changes_nothing(artifacts, capsys, monkeypatch):
    """Made and its line lost (a full disk), a rollback from v3 to v2 read as v1, v2, v3, v2: the next rollback
    served v3 again, the model just rolled away from. Now the line comes first, and without it nothing changes."""
    import shared.checkpoint

    assert run(artifacts, "promote", "v3") == 0
    before = folder_state(artifacts)
    real = shared.checkpoint.append_history

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(shared.checkpoint, "append_history", disk_full)
    capsys.readouterr()
    assert run(artifacts, "rollback") == 1
    assert "No space left on device" in capsys.readouterr().err
    assert folder_state(artifacts) == before and served(artifacts) == "v3"
    monkeypatch.setattr(shared.checkpoint, "append_history", real)
    assert run(artifacts, "rollback") == 0 and served(artifacts) == "v2"
    assert run(artifacts, "rollback") == 0 and served(artifacts) == "v1"


def test_a_rollback_recorded_whose_latest_could_not_be_written_goes_back_to_the_same_version_next(
    artifacts, monkeypatch, capsys
):
    import shared.checkpoint

    assert run(artifacts, "promote", "v3") == 0
    real = shared.checkpoint.atomic_write_bytes

    def latest_unwritable(path, data):
        if path.name == MANIFEST_NAME:
            raise OSError(28, "No space left on device")
        return real(path, data)

    monkeypatch.setattr(shared.checkpoint, "atomic_write_bytes", latest_unwritable)
    assert run(artifacts, "rollback") == 1 and served(artifacts) == "v3"
    monkeypatch.setattr(shared.checkpoint, "atomic_write_bytes", real)
    assert run(artifacts, "rollback") == 0 and served(artifacts) == "v2"


def test_promote_of_the_served_version_repairs_a_latest_json_damaged_in_its_onnx_fields(artifacts, capsys):
    """It said "models/LATEST.json already names v2, which passes the checks" and left it: every server with the
    onnxruntime backend went on refusing v2."""
    models = Paths(artifacts).models
    latest = json.loads((models / MANIFEST_NAME).read_text())
    latest["onnx_sha256"] = "0" * 64
    (models / MANIFEST_NAME).write_text(json.dumps(latest))
    assert run(artifacts, "promote", "v2") == 0
    assert "no server could load: rewritten" in capsys.readouterr().out
    assert read_manifest(models).onnx_sha256 == json.loads((models / "v2.json").read_text())["onnx_sha256"]


def test_promote_of_the_served_version_whose_latest_json_differs_only_in_its_record_says_it_was_rewritten(
    artifacts, capsys
):
    """A LATEST.json whose creation time differs loads as well: it is not said to be one no server could load."""
    models = Paths(artifacts).models
    latest = json.loads((models / MANIFEST_NAME).read_text())
    latest["created_at"] = "2000-01-01T00:00:00Z"
    (models / MANIFEST_NAME).write_text(json.dumps(latest))
    assert run(artifacts, "promote", "v2") == 0
    out = capsys.readouterr().out
    assert "rewritten to match models/v2.json" in out and "no server could load" not in out, out


def test_metrics_that_are_not_finite_are_left_out_of_manifests_and_list_json_is_strict_json(tmp_path, capsys):
    """NaN and Infinity went into LATEST.json and `list --json` (which jq refuses), and showed as nan% in the table."""
    payload = model_payload(1)
    payload["metrics"] = {"val_accuracy": float("nan"), "test_accuracy": float("inf"), "val_loss": 0.25}
    publish_model(Paths(tmp_path).models, version="v1", model_payload=payload)
    assert read_manifest(Paths(tmp_path).models).metrics == {"val_loss": 0.25}
    assert models_main(["--artifacts-dir", str(tmp_path), "list", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out, parse_constant=lambda name: pytest.fail(f"{name} in list --json"))
    assert listed[0]["metrics"] == {"val_loss": 0.25}


def test_list_shows_the_versions_when_latest_json_cannot_be_read(artifacts, capsys):
    """A folder (or, for another user, a file without read permission) where LATEST.json should be: `list` failed
    outright with '[Errno 21] Is a directory'."""
    models = Paths(artifacts).models
    (models / MANIFEST_NAME).unlink()
    (models / MANIFEST_NAME).mkdir()
    assert run(artifacts, "list") == 0
    out = capsys.readouterr().out
    assert "v1" in out and "v3" in out and "no version is served" in out


def test_listing_a_folder_that_does_not_exist_says_so_rather_than_looking_like_an_empty_store(tmp_path, capsys):
    assert run(tmp_path / "mistyped", "list") == 0
    assert "no such folder: is --artifacts-dir right?" in capsys.readouterr().out
    Paths(tmp_path / "empty").models.mkdir(parents=True)
    assert run(tmp_path / "empty", "list") == 0
    out = capsys.readouterr().out
    assert out.startswith("no published models in") and "no such folder" not in out


@pytest.mark.parametrize("argv", [("prune", "--keep", "1"), ("rollback",), ("promote", "v1")])
def test_a_change_to_a_models_folder_that_does_not_exist_is_refused_with_the_hint_list_gives(tmp_path, capsys, argv):
    """prune said '0 version(s) kept; 0 removed' (exit status 0) and rollback 'nothing to roll back to', as if a
    mistyped --artifacts-dir were an empty store."""
    assert run(tmp_path / "mistyped", *argv) == 1
    captured = capsys.readouterr()
    assert "no such folder: is --artifacts-dir right?" in captured.err and captured.out == "", captured
    assert not (tmp_path / "mistyped").exists()


@pytest.mark.parametrize("command", [["promote", "v1"], ["rollback"], ["prune", "--keep", "1"]])
@pytest.mark.parametrize("which", ["the artifacts folder", "its models folder"])
def test_an_artifacts_folder_that_is_a_file_is_one_line_saying_what_to_check(tmp_path, capsys, command, which):
    """With models/ a file, promote said the version "cannot be read" and to promote another one."""
    artifacts = tmp_path / "a-file" if which == "the artifacts folder" else tmp_path / "artifacts"
    blocker = artifacts if which == "the artifacts folder" else Paths(artifacts).models
    blocker.parent.mkdir(parents=True, exist_ok=True)
    blocker.write_text("")
    assert models_main(["--artifacts-dir", str(artifacts), *command]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "check --artifacts-dir (or MNIST_ARTIFACTS_DIR)" in err, err
    assert "another version" not in err and blocker.read_text() == "", err


def test_listing_an_artifacts_folder_that_is_a_file_says_to_check_it_not_that_nothing_is_published(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    models_main(["--artifacts-dir", str(blocker), "list"])
    assert "is --artifacts-dir right?" in capsys.readouterr().out


def test_prune_keeps_the_newest_and_never_the_served_one_or_the_one_before_it(artifacts, capsys):
    publish_model(Paths(artifacts).models, version="v4", model_payload=model_payload(4), serve=False)
    assert run(artifacts, "prune", "--keep", "1", "--dry-run") == 0
    assert "would remove" in capsys.readouterr().out
    assert {p.name for p in Paths(artifacts).models.glob("*.pt")} == {"v1.pt", "v2.pt", "v3.pt", "v4.pt"}
    assert run(artifacts, "prune", "--keep", "1") == 0
    models = Paths(artifacts).models
    # v4 is the newest, v2 is served (though older than v3) and v1 was served before it (what rollback returns to,
    # and what a server serves if v2 fails its checks there): all three stay, with their manifests.
    kept = {f"{v}.{ext}" for v in ("v4", "v2", "v1") for ext in ("pt", "onnx", "json")} | {MANIFEST_NAME, HISTORY_NAME}
    assert {p.name for p in models.iterdir()} == kept  # a pruned version's ONNX export goes with it
    assert served(artifacts) == "v2"


def test_prune_keeps_what_servers_serve_while_the_served_file_is_damaged(artifacts, capsys):
    """LATEST.json names v2, but v2.pt is damaged: servers skipped it and serve v1, published before it. Pruning
    to the newest must keep v1 too, or a restarted server has nothing to serve and there is nothing to roll back
    to."""
    models = Paths(artifacts).models
    damaged = bytearray((models / "v2.pt").read_bytes())
    damaged[-10] ^= 0xFF
    (models / "v2.pt").write_bytes(bytes(damaged))
    assert run(artifacts, "prune", "--keep", "1") == 0
    assert {p.name for p in models.glob("*.pt")} == {"v1.pt", "v2.pt", "v3.pt"}
    assert run(artifacts, "rollback") == 0  # v1 is still there to serve
    assert served(artifacts) == "v1"
    assert run(artifacts, "prune", "--keep", "1") == 0  # v1 passes its checksum: v2 goes now
    assert {p.name for p in models.glob("*.pt")} == {"v1.pt", "v3.pt"}


@pytest.mark.parametrize("damaged_file", ["pt", "onnx"])
def test_prune_keeps_the_version_servers_fall_back_to_past_every_damaged_file(artifacts, damaged_file):
    """Served in turn: v1, v2, v3. Both v3's and v2's model files (the .pt, or the ONNX export the onnxruntime
    backend loads) fail their checksums, so servers skip both and serve v1: pruning must keep it."""
    models = Paths(artifacts).models
    assert run(artifacts, "promote", "v3") == 0
    for version in ("v3", "v2"):
        path = models / f"{version}.{damaged_file}"
        damaged = bytearray(path.read_bytes())
        damaged[-10] ^= 0xFF
        path.write_bytes(bytes(damaged))
    assert run(artifacts, "prune", "--keep", "1") == 0
    assert {p.name for p in models.glob("*.pt")} == {"v1.pt", "v2.pt", "v3.pt"}


def test_a_running_server_swaps_in_what_promote_chose(artifacts, serve):
    running = serve(artifacts)
    assert running.server.store.current.version == "v2"
    assert run(artifacts, "promote", "v3") == 0
    assert running.server.store.wait_for_version("v3", timeout=10) is not None
    assert run(artifacts, "rollback") == 0
    assert running.server.store.wait_for_version("v2", timeout=10) is not None


def test_the_command_line_runs_as_a_module(artifacts):
    result = subprocess.run(
        [sys.executable, "-m", "inference.models", "--artifacts-dir", str(artifacts), "list"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO_ROOT,
    )
    assert result.returncode == 0, result.stderr
    assert "v2" in result.stdout and "*" in result.stdout

"""The generated gRPC code in shared/api/ is what `python scripts/gen_protos.py` makes from protos/ now."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def load_gen_protos():
    spec = importlib.util.spec_from_file_location("gen_protos", REPO_ROOT / "scripts" / "gen_protos.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_generated_code_is_not_stale():
    result = subprocess.run(
        [sys.executable, "scripts/gen_protos.py", "--check"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr


def test_the_check_notices_a_changed_proto(tmp_path, monkeypatch):
    """The staleness check itself can fail: on a copy, change the .proto and leave the generated code alone."""
    gen = load_gen_protos()
    shutil.copytree(REPO_ROOT / "protos", tmp_path / "protos")
    shutil.copytree(
        REPO_ROOT / "shared" / "api", tmp_path / "shared" / "api", ignore=shutil.ignore_patterns("__pycache__")
    )
    monkeypatch.setattr(gen, "ROOT", tmp_path)
    monkeypatch.setattr(gen, "PROTO_DIR", tmp_path / "protos")
    monkeypatch.setattr(gen, "OUT_DIR", tmp_path / "shared" / "api")
    assert gen.stale_files() == []

    proto = tmp_path / "protos" / "mnist" / "v1" / "inference.proto"
    proto.write_text(
        proto.read_text().replace("message GetModelInfoRequest {}", "message GetModelInfoRequest { bool verbose = 1; }")
    )
    (tmp_path / "shared" / "api" / "mnist" / "v1" / "orphan_pb2.py").write_text("")
    problems = gen.stale_files()
    assert any("inference_pb2.py: differs" in p for p in problems)
    assert any("orphan_pb2.py: not generated" in p for p in problems)
    assert gen.main(["--check"]) == 1


def test_generated_package_is_importable_as_shared_api():
    from shared.api.mnist.v1 import inference_pb2, inference_pb2_grpc

    assert inference_pb2.DESCRIPTOR.package == "mnist.v1"
    assert hasattr(inference_pb2_grpc, "InferenceStub")

"""bench/bench_ensemble.py: each member alone and the ensemble, read on the same pictures (a few here)."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from shared.checkpoint import publish_model, read_manifest, read_published_model
from shared.data import normalize
from shared.settings import Paths

import bench.bench_ensemble as bench_ensemble
from tests.inference.helpers import model_payload


@pytest.fixture
def few_pictures(monkeypatch, mnist):
    """The tests' non-digits and users' digits stood in for by a few MNIST pictures (the real ones take minutes)."""
    images, labels = mnist.test_images[:60].numpy(), mnist.test_labels[:60].numpy()
    groups = {"neg:scribbles": (255 - images[:20], np.full(20, -1)), "user:drawn": (images, labels)}
    monkeypatch.setattr(bench_ensemble, "decoded_pictures", lambda mnist: groups)


def test_each_member_and_the_ensemble_get_a_line_of_figures(tmp_path, mnist_dir, mnist, few_pictures, capsys):
    payload = model_payload(2, arch_kwargs={"width": 4, "not_digit": True, "digit_distance": True, "members": 2})
    publish_model(Paths(tmp_path).models, version="pair", model_payload=payload)
    flags = ["--artifacts", str(tmp_path), "--data-dir", str(mnist_dir), "--per-style", "1", "--number-sets", "7"]
    assert bench_ensemble.main(flags) == 0
    lines = {m[1]: m[2] for m in re.finditer(r"^\s*(member 1|member 2|all 2): (.*)$", capsys.readouterr().out, re.M)}
    assert set(lines) == {"member 1", "member 2", "all 2"}
    _, model = read_published_model(Paths(tmp_path).models, read_manifest(Paths(tmp_path).models))
    with torch.no_grad():
        out = model.eval()(normalize(mnist.test_images))
    accuracy = float((out[:, :10].argmax(1) == mnist.test_labels).float().mean())
    assert lines["all 2"].startswith(f"MNIST {accuracy:.2%};")
    for line in lines.values():
        assert "non-digits flagged" in line and "numbers apart" in line and "touching" in line


@pytest.mark.parametrize(
    ("arch_kwargs", "said"),
    [({"width": 4}, "a single network"), ({"width": 4, "members": 2}, "no not-digit class")],
)
def test_a_model_it_cannot_compare_is_refused_before_any_picture_is_made(arch_kwargs, said, tmp_path, mnist_dir):
    publish_model(Paths(tmp_path).models, version="one", model_payload=model_payload(1, arch_kwargs=arch_kwargs))
    with pytest.raises(SystemExit, match=said):
        bench_ensemble.main(["--artifacts", str(tmp_path), "--data-dir", str(mnist_dir)])

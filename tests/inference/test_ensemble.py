"""A model trained with --members (shared/model.py Ensemble) is served as one model by either backend: Predict
gives its members' averaged probabilities and digit score, ReadNumber reads with them, GetModelInfo counts every
member's parameters."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from shared.api.mnist.v1 import inference_pb2 as pb
from shared.checkpoint import publish_model
from shared.data import normalize
from shared.model import build_model, count_parameters, networks
from shared.settings import Paths

from tests.inference.helpers import model_info, model_payload, png_bytes


@pytest.mark.parametrize("backend", ["onnxruntime", "torch"])
def test_an_ensemble_is_served_as_one_model_its_members_probabilities_averaged(serve, tmp_path, backend, digit_pngs):
    payload = model_payload(5, arch_kwargs={"width": 8, "not_digit": True, "members": 3})
    payload["digit_threshold"] = 0.5
    model = build_model(payload["arch"], **payload["arch_kwargs"])
    model.load_state_dict(payload["model"])
    model.eval()
    publish_model(Paths(tmp_path / "artifacts").models, version="trio", model_payload=payload)
    running = serve(tmp_path / "artifacts", backend=backend)
    assert running.server.store.current.backend == backend

    def members_say(model_input_png: bytes) -> tuple[np.ndarray, float]:
        image = torch.from_numpy(cv2.imdecode(np.frombuffer(model_input_png, np.uint8), cv2.IMREAD_GRAYSCALE))[None]
        with torch.no_grad():
            each = torch.stack([network(normalize(image))[0].double() for network in networks(model)])  # (3, 11)
        return each[:, :10].exp().mean(0).numpy(), float(torch.sigmoid(each[:, 10]).mean())

    for _, png, _ in digit_pngs[:8]:
        got = running.stub.Predict(pb.PredictRequest(image=png, return_model_input=True), timeout=10).prediction
        probabilities, digit_score = members_say(got.model_input_png)
        assert list(got.probabilities) == pytest.approx(probabilities, abs=1e-4)
        assert got.digit == int(np.argmax(probabilities))
        assert got.digit_score == pytest.approx(digit_score, abs=1e-4)
        assert got.is_digit == (got.digit_score >= 0.5)
    info = model_info(running)
    assert info.parameter_count == count_parameters(model) == 3 * count_parameters(networks(model)[0])
    assert '"members": 3' in info.arch_kwargs_json and info.detects_not_digit

    pair = np.concatenate([digit_pngs[0][2], np.zeros((28, 14), np.uint8), digit_pngs[1][2]], axis=1)
    picture = 255 - cv2.resize(np.pad(pair, 14), None, fx=4, fy=4, interpolation=cv2.INTER_CUBIC)
    reading = running.stub.ReadNumber(
        pb.ReadNumberRequest(image=png_bytes(picture), return_model_input=True), timeout=30
    )
    assert reading.per_digit
    for digit in reading.per_digit:
        probabilities, digit_score = members_say(digit.prediction.model_input_png)
        assert list(digit.prediction.probabilities) == pytest.approx(probabilities, abs=1e-4)


@pytest.mark.parametrize(("members", "passes"), [(1, [64]), (3, [16, 16, 16, 16])])  # at most 64 // 3, evenly
def test_a_reading_classifies_an_ensembles_digits_fewer_at_a_time(tmp_path, monkeypatch, members, passes):
    """A reading's reservation counts one network's batch of 64 digits; three members hold three networks'
    activations, so an ensemble is given a third as many at a time, with the same answers."""
    from shared.checkpoint import read_manifest

    from inference.model_store import ServedModel, load_served_model
    from inference.service import JudgingClassifier

    models = Paths(tmp_path / "artifacts").models
    kwargs = {"width": 8, "not_digit": True} | ({"members": members} if members > 1 else {})
    publish_model(models, version="m", model_payload=model_payload(5, arch_kwargs=kwargs))
    served = load_served_model(models, read_manifest(models), "torch")
    batch = np.random.default_rng(0).integers(0, 256, (64, 28, 28), dtype=np.uint8)
    whole = served.log_probs(torch.from_numpy(batch))
    sizes = []
    real_forward = ServedModel.forward
    monkeypatch.setattr(ServedModel, "forward", lambda s, x: sizes.append(len(x)) or real_forward(s, x))
    classified = JudgingClassifier(served, lambda output: [(True, 1.0)] * len(output))(batch)
    assert sizes == passes
    assert np.allclose(classified.probabilities, whole[:, :10].exp().numpy(), atol=1e-5)

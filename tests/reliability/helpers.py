"""Helpers for the reliability tests (the inference tests' helpers are in tests/inference/helpers.py)."""

from __future__ import annotations

import io
import logging

import numpy as np
from PIL import Image

from shared.api.mnist.v1 import inference_pb2 as pb

# Small limits, so every one of them can be exceeded cheaply (the defaults are 10 MiB, 40 MP, 256, 16 MiB).
SMALL_LIMITS = dict(max_batch_size=16, max_image_bytes=200_000, max_image_pixels=4_000_000, max_message_bytes=1_000_000)


def assert_no_logged_errors(caplog) -> None:
    """Bad input is the client's problem: nothing at ERROR level (tracebacks, INTERNAL) in the server's log."""
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []


def assert_still_serving(server, good_png: bytes) -> None:
    response = server.stub.Predict(pb.PredictRequest(image=good_png), timeout=10)
    assert response.model_version == "v1" and len(response.prediction.probabilities) == 10


def assert_valid_prediction(prediction: pb.Prediction) -> None:
    p = np.array(prediction.probabilities)
    assert p.shape == (10,) and np.all(p >= 0) and abs(p.sum() - 1) < 1e-4
    assert prediction.digit == int(p.argmax())


def correlation(a: np.ndarray, b_: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel().astype(float), b_.ravel().astype(float))[0, 1])


def model_saw(prediction: pb.Prediction) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(prediction.model_input_png)))

"""Users' own pictures through the real gRPC Predict call, against the default network really trained.

The pictures come from MNIST *test* digits (never trained on), redrawn the ways people send digits (paint
program, web canvas with ink only in alpha, thin pen, small and off-centre, coloured, phone photo of paper,
dark mode) by tests/user_images.py, plus digits typed in the machine's fonts. Targets: 98 % on every drawn
style, 90 % on printed digits. 300 pictures per style: with fewer, sampling noise alone (about ±1 point at 150)
could fail a model that meets the target.
"""

from __future__ import annotations

import grpc
import numpy as np
import pytest
import torch

from bench.bench_user_images import evaluate_styles, format_report, missed_targets
from shared.api.mnist.v1 import inference_pb2 as pb
from shared.checkpoint import read_manifest, read_published_model
from shared.data import normalize
from shared.settings import Paths
from tests.inference.conftest import png_bytes, start_server
from tests.user_images import make_printed_digits, make_user_images

PER_STYLE = 300


@pytest.fixture(scope="module")
def trained_server(trained_artifacts, mnist_dir):
    running = start_server(trained_artifacts, mnist_dir)
    assert running.server.store.current is not None, "the trained model was not served"
    yield running
    running.channel.close()
    running.server.stop(grace=0)


def predict_one_by_one(stub):
    """A predict callable for evaluate_styles: one Predict call per picture; INVALID_ARGUMENT counts as wrong."""

    def predict(pictures: list[bytes]) -> list:
        digits = []
        for data in pictures:
            try:
                digits.append(stub.Predict(pb.PredictRequest(image=data), timeout=30).prediction.digit)
            except grpc.RpcError as e:
                assert e.code() == grpc.StatusCode.INVALID_ARGUMENT, e.details()
                digits.append(None)
        return digits

    return predict


def test_drawn_styles_reach_98_percent(trained_server, mnist):
    pictures = make_user_images(mnist.test_images.numpy(), mnist.test_labels.numpy(), per_style=PER_STYLE, seed=0)
    scores = evaluate_styles(predict_one_by_one(trained_server.stub), pictures)
    print("\n" + format_report(scores))
    assert len(scores) == 7
    assert not missed_targets(scores), format_report(scores)


def test_printed_digits_reach_90_percent(trained_server):
    pictures = make_printed_digits(per_font=10, seed=0)
    scores = evaluate_styles(predict_one_by_one(trained_server.stub), pictures)
    print("\n" + format_report(scores))
    assert scores["printed"].total >= 50
    assert not missed_targets(scores), format_report(scores)


def test_mnist_digits_keep_their_accuracy_through_the_pipeline(trained_server, trained_artifacts, mnist):
    """Genuine MNIST test digits sent as PNG: the pipeline may cost them at most a few tenths of a point."""
    count = 2000
    images, labels = mnist.test_images[:count], mnist.test_labels[:count]
    models = Paths(trained_artifacts).models
    _, model = read_published_model(models, read_manifest(models))
    with torch.no_grad():
        direct = float((model(normalize(images)).argmax(1) == labels).float().mean())
    served = []
    for start in range(0, count, 200):
        batch = [png_bytes(image.numpy()) for image in images[start : start + 200]]
        response = trained_server.stub.PredictBatch(pb.PredictBatchRequest(images=batch), timeout=60)
        served.extend(r.prediction.digit for r in response.results)
    through_pipeline = float(np.mean(np.array(served) == labels.numpy()))
    assert direct > 0.99, f"the trained test model is weak: {direct:.2%}"
    assert through_pipeline >= direct - 0.004, f"direct {direct:.2%}, through the pipeline {through_pipeline:.2%}"

"""Knowing when a picture is not a digit (issue 17, docs/not-a-digit.md), through the real gRPC service.

Against the default network really trained (the session's test model, 10 epochs, with the trainer's own
negatives), on pictures the tests make (testkit/not_digits.py: other fonts and other kinds than the trainer's
negatives: letters, symbols, words, scribbles, smileys, shapes, arrows) and users' real digits in every style of
tests/user_images.py and the printed digits. The pictures are made once and cached, and sent with PredictBatch.

The issue's targets are 95 % of each kind of non-digit flagged and at most 1 % of users' digits. The first is met
for every kind but scribbles (stop 32, the AMD machine, bf16, the 10-epoch recipe with letters kept upright among
the negatives and the threshold at 0.4 % of validation digits; seeds 0 / 1 / 2 trained by hand, scored by
bench/bench_not_digit.py's pictures, which are these: letters 98.5 / 98 / 97 %, symbols 98.5 / 96.5 / 97 %,
scribbles 89.5 / 91 / 89 %, arrows 95 / 95.5 / 95.5 %, smileys 99.5 / 98.5 / 98 %, shapes 99.5 / 98.5 / 100 %,
words 100 %; users' digits 0.71 / 0.61 / 0.73 %, no style over 1.67 %). The tests hold floors under the lowest of
these, with room for a machine whose bf16 trains another model, and above where letters and symbols stood before
(87-94 %); they print the kinds that miss the targets.

The plumbing (fields in Predict, PredictBatch, GetModelInfo and the REST route, the threshold flag, both backends,
older models without the class, the client's line) is checked with small random-weight models.
"""

from __future__ import annotations

import re
import shutil

import cv2
import numpy as np
import pytest
import torch

from shared.api.mnist.v1 import inference_pb2 as pb
from shared.checkpoint import publish_model
from shared.model import build_model
from shared.settings import Paths

from testkit import user_images as ui
from testkit.cache import cached_pickle, code_hash
from testkit.not_digits import KINDS, make_not_digits
from tests.inference.helpers import model_info, model_payload, predict_batches, start_server

PER_KIND = 200
TARGET_FLAGGED = 0.95  # the target for every kind of non-digit
# Measured floors (see the module docstring): a regression below them fails.
FLAGGED_FLOOR = {
    "letters": 0.93,
    "symbols": 0.92,
    "words": 0.97,
    "scribbles": 0.85,
    "smileys": 0.95,
    "shapes": 0.94,
    "arrows": 0.9,
}
TARGET_USERS_FLAGGED = 0.01  # the issue's target over every style of users' digits
USERS_FLAGGED_CEILING = 0.011  # measured 0.68 % (0.61-0.73 % over three seeds at stop 32; 1.12 % at stop 27)
STYLE_FLAGGED_CEILING = {"printed": 0.02}  # measured 0 % (7.2 % before typed digits trained as digits)
STYLE_FLAGGED_DEFAULT = 0.03  # measured at most 1.67 % (2.33 % for hard shadows at stop 27)


def not_digit_payload(seed: int, threshold: float | None = 0.5) -> dict:
    payload = model_payload(seed, arch_kwargs={"width": 8, "not_digit": True})
    if threshold is not None:
        payload["digit_threshold"] = threshold
    return payload


def publish_payload(artifacts, version: str, payload: dict) -> None:
    publish_model(Paths(artifacts).models, version=version, model_payload=payload)


# ---------------------------------------------------------------------------------------------------------------
# The fields, with small random-weight models


@pytest.mark.parametrize("backend", ["onnxruntime", "torch"])
def test_predict_and_predict_batch_carry_is_digit_and_a_score_with_either_backend(serve, tmp_path, backend, digit_pngs):
    artifacts = tmp_path / "artifacts"
    publish_payload(artifacts, "nd1", not_digit_payload(3, threshold=0.5))
    running = serve(artifacts, backend=backend)
    assert running.server.store.current.backend == backend
    pngs = [png for _, png, _ in digit_pngs[:8]]
    batch = running.stub.PredictBatch(pb.PredictBatchRequest(images=pngs), timeout=30)
    for png, result in zip(pngs, batch.results):
        single = running.stub.Predict(pb.PredictRequest(image=png), timeout=10).prediction
        got = result.prediction
        assert 0 <= got.digit_score <= 1
        assert got.is_digit == (got.digit_score >= 0.5)
        assert (single.is_digit, single.digit) == (got.is_digit, got.digit)
        assert single.digit_score == pytest.approx(got.digit_score, abs=1e-5)
        assert sum(got.probabilities) == pytest.approx(1, abs=1e-5)  # still the ten digits' softmax
    info = model_info(running)
    assert info.detects_not_digit and info.digit_threshold == pytest.approx(0.5)


def distance_payload(seed: int) -> dict:
    """A random-weight not-digit model with a digit distance whose penalty is far from 0 (shared/model.py)."""
    payload = not_digit_payload(seed, threshold=0.5)
    kwargs = {**payload["arch_kwargs"], "digit_distance": True}
    model = build_model(payload["arch"], **kwargs)
    model.load_state_dict({**model.state_dict(), **payload["model"]})
    generator = torch.Generator().manual_seed(seed)
    model.distance.whiten.copy_(torch.eye(len(model.distance.whiten)))
    model.distance.centres.copy_(torch.randn(model.distance.centres.shape, generator=generator))
    model.distance.offset.fill_(-2.0)
    model.distance.weight.fill_(1.5)
    return {**payload, "arch_kwargs": kwargs, "model": model.state_dict()}


@pytest.mark.parametrize("backend", ["onnxruntime", "torch"])
def test_a_model_with_a_digit_distance_serves_the_class_score_less_its_penalty(serve, tmp_path, backend, digit_pngs):
    """digit_score is sigmoid(z - penalty) from the twelfth column, in Predict and in each digit ReadNumber reads;
    the class's own sigmoid(z) is not what is served."""

    from shared.data import normalize

    from tests.inference.helpers import png_bytes

    payload = distance_payload(7)
    model = build_model(payload["arch"], **payload["arch_kwargs"])
    model.load_state_dict(payload["model"])
    model.eval()
    artifacts = tmp_path / "artifacts"
    publish_payload(artifacts, "dist1", payload)
    running = serve(artifacts, backend=backend)

    def expected(model_input_png: bytes) -> tuple[float, float]:
        image = torch.from_numpy(cv2.imdecode(np.frombuffer(model_input_png, np.uint8), cv2.IMREAD_GRAYSCALE))[None]
        with torch.no_grad():
            out = model(normalize(image)).double()
        return float(torch.sigmoid(out[0, 10] - out[0, 11])), float(torch.sigmoid(out[0, 10]))

    gaps = []
    for _, png, _ in digit_pngs[:8]:
        got = running.stub.Predict(pb.PredictRequest(image=png, return_model_input=True), timeout=10).prediction
        served, class_only = expected(got.model_input_png)
        assert got.digit_score == pytest.approx(served, abs=1e-4)
        assert got.is_digit == (got.digit_score >= 0.5)
        gaps.append(abs(served - class_only))
    assert max(gaps) > 0.05, "the penalty should move the score here"

    pair = np.concatenate([digit_pngs[0][2], np.zeros((28, 14), np.uint8), digit_pngs[1][2]], axis=1)
    picture = 255 - cv2.resize(np.pad(pair, 14), None, fx=4, fy=4, interpolation=cv2.INTER_CUBIC)
    request = pb.ReadNumberRequest(image=png_bytes(picture), return_model_input=True)
    reading = running.stub.ReadNumber(request, timeout=30)
    assert reading.per_digit
    for digit in reading.per_digit:
        assert digit.prediction.digit_score == pytest.approx(expected(digit.prediction.model_input_png)[0], abs=1e-4)


def test_the_threshold_comes_from_the_model_and_the_flag_overrides_it(serve, tmp_path, digit_pngs):
    artifacts = tmp_path / "artifacts"
    publish_payload(artifacts, "nd1", not_digit_payload(4, threshold=0.0))
    pngs = [png for _, png, _ in digit_pngs[:8]]
    own = serve(artifacts)
    assert model_info(own).digit_threshold == 0.0
    results = own.stub.PredictBatch(pb.PredictBatchRequest(images=pngs), timeout=30).results
    assert all(r.prediction.is_digit for r in results)  # every score is >= 0
    strict = serve(artifacts, digit_threshold=1.0)
    assert model_info(strict).digit_threshold == 1.0
    results = strict.stub.PredictBatch(pb.PredictBatchRequest(images=pngs), timeout=30).results
    assert not any(r.prediction.is_digit for r in results if r.prediction.digit_score < 1.0)


def test_client_info_says_the_threshold_the_server_judges_by_not_only_the_trained_one(serve, tmp_path, capsys):
    """A server started with --digit-threshold 0.9 judged by it, but `mnist-client info` showed only the metrics'
    digit_threshold (the trained one): a picture scoring 0.994 was "not a digit" beside a printed 0.1533."""
    from inference import client

    artifacts = tmp_path / "artifacts"
    publish_payload(artifacts, "nd1", not_digit_payload(4, threshold=0.25))
    running = serve(artifacts, digit_threshold=0.9)
    assert client.main(["--target", f"localhost:{running.port}", "info"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^not a digit\s+below a digit score of 0\.9, this server's threshold$", out, re.M), out


def test_a_model_without_the_not_digit_class_calls_everything_a_digit(module_server, digit_pngs):
    prediction = module_server.stub.Predict(pb.PredictRequest(image=digit_pngs[0][1]), timeout=10).prediction
    assert prediction.is_digit and prediction.digit_score == 1.0
    info = model_info(module_server)
    assert not info.detects_not_digit and info.digit_threshold == 0.0


def test_the_command_line_and_environment_set_the_threshold(monkeypatch):
    from inference.__main__ import get_args_parser

    assert get_args_parser().parse_args([]).digit_threshold is None
    assert get_args_parser().parse_args(["--digit-threshold", "0.25"]).digit_threshold == 0.25
    monkeypatch.setenv("MNIST_DIGIT_THRESHOLD", "0.125")
    assert get_args_parser().parse_args([]).digit_threshold == 0.125
    with pytest.raises(SystemExit):
        get_args_parser().parse_args(["--digit-threshold", "2"])
    monkeypatch.setenv("MNIST_DIGIT_THRESHOLD", "lots")
    with pytest.raises(SystemExit):
        get_args_parser().parse_args([])
    assert get_args_parser().parse_args(["--digit-threshold", "0.25"]).digit_threshold == 0.25


def test_the_client_says_not_a_digit_plainly():
    from inference.client import answer_line

    digit = pb.Prediction(digit=7, probabilities=[0.0] * 7 + [0.9] + [0.05, 0.05], is_digit=True, digit_score=0.99)
    other = pb.Prediction(digit=7, probabilities=[0.0] * 7 + [0.9] + [0.05, 0.05], is_digit=False, digit_score=0.01)
    assert answer_line(digit, "v1") == "7 (90.0%, model v1)"
    assert answer_line(other, "v1").startswith("not a digit (digit score 0.010, closest digit 7")


def test_the_rest_route_carries_is_digit_and_the_score(tmp_path, mnist_dir, digit_pngs):
    from tests.inference.web.helpers import start_web

    artifacts = tmp_path / "artifacts"
    publish_payload(artifacts, "nd1", not_digit_payload(5, threshold=0.5))
    running = start_server(artifacts, mnist_dir)
    web = start_web(target=running.target)
    try:
        png = digit_pngs[0][1]
        expected = running.stub.Predict(pb.PredictRequest(image=png), timeout=10).prediction
        answer = web.post("/v1/predict", png)
        assert answer.status == 200, answer.body
        body = answer.json()
        assert body["is_digit"] == expected.is_digit
        assert body["digit_score"] == pytest.approx(expected.digit_score, abs=1e-6)
        batch = web.post_files("/v1/predict/batch", [("images", png), ("images", digit_pngs[1][1])]).json()
        assert all("is_digit" in r and "digit_score" in r for r in batch["results"])
        info = web.get("/v1/model").json()
        assert info["detects_not_digit"] and info["digit_threshold"] == pytest.approx(0.5)
    finally:
        web.stop()
        running.channel.close()
        running.server.stop(grace=0)


# ---------------------------------------------------------------------------------------------------------------
# The targets, with the trained default network


@pytest.fixture(scope="module")
def trained_server(trained_artifacts, tmp_path_factory, mnist_dir):
    artifacts = tmp_path_factory.mktemp("not-digit-artifacts")
    shutil.copytree(trained_artifacts / "models", artifacts / "models")
    running = start_server(artifacts, mnist_dir)
    assert running.server.store.current is not None and running.server.store.current.digit_threshold is not None
    yield running
    running.channel.close()
    running.server.stop(grace=0)


@pytest.fixture(scope="module")
def not_digits():
    return cached_pickle(
        "not-digits",
        code_hash(("testkit/not_digits.py",), extra=str(PER_KIND)),
        lambda: make_not_digits(per_kind=PER_KIND, seed=0),
    )


def is_digit_answers(stub, pictures: list[bytes]) -> list[bool | None]:
    """is_digit of each picture, by PredictBatch in chunks; None for a picture the service refused."""
    return [None if r.HasField("error") else r.prediction.is_digit for r in predict_batches(stub, pictures)]


def test_each_kind_of_non_digit_is_flagged(trained_server, not_digits):
    answers = is_digit_answers(trained_server.stub, [p.data for p in not_digits])
    rates = {}
    for kind in KINDS:
        got = [a for a, p in zip(answers, not_digits) if p.kind == kind]
        # A picture the service refuses (no ink it can find) is not called a digit either.
        rates[kind] = float(np.mean([a is not True for a in got]))
    report = ", ".join(f"{kind} {rate:.1%}" for kind, rate in rates.items())
    short = [kind for kind, rate in rates.items() if rate < TARGET_FLAGGED]
    print(f"\nflagged as not a digit: {report}; under the {TARGET_FLAGGED:.0%} target: {', '.join(short) or 'none'}")
    assert all(rate >= FLAGGED_FLOOR[kind] for kind, rate in rates.items()), report


def test_few_of_users_digits_are_flagged_in_any_style(users_results, drawn_pictures, paper_pictures, printed_pictures):
    users = drawn_pictures + paper_pictures + printed_pictures
    answers = [None if r.HasField("error") else r.prediction.is_digit for r in (users_results[p.data] for p in users)]
    flagged: dict[str, list[bool]] = {}
    for answer, picture in zip(answers, users):
        if answer is not None:
            flagged.setdefault(picture.style, []).append(not answer)
    overall = np.mean([f for per_style in flagged.values() for f in per_style])
    report = ", ".join(f"{style} {np.mean(f):.2%}" for style, f in flagged.items())
    print(f"\nreal digits flagged: {report}; all {overall:.2%} (target {TARGET_USERS_FLAGGED:.0%})")
    assert overall <= USERS_FLAGGED_CEILING, report
    assert all(np.mean(f) <= STYLE_FLAGGED_CEILING.get(style, STYLE_FLAGGED_DEFAULT) for style, f in flagged.items()), (
        report
    )


def test_a_slashed_zero_is_read_as_a_zero_and_is_a_digit(trained_server, mnist):
    """A 0 written with a slash through it (Ø), as programmers and many Europeans write it: the trainer's crossed-out
    digits and its theta had taught the model that a ring with a line through it is no digit, and 148-182 of 200
    such pictures were flagged by three seeds' models. The trainer writes a quarter of its 0s slashed
    (trainer/augment.py): 2-6 of 200."""
    zeros = np.flatnonzero(mnist.test_labels.numpy() == 0)[:40]
    pictures = []
    for i in zeros:
        coverage, (x0, y0, x1, y1) = ui.centred(mnist.test_images[i].numpy(), 200)
        slash = np.zeros_like(coverage)
        cv2.line(slash, (x1 + 4, y0 - 4), (x0 - 4, y1 + 4), 1.0, 5)  # from above its top right to below its bottom left
        pictures.append(ui.encode(ui.paint(np.maximum(coverage, slash), (0, 0, 0), (255, 255, 255)), "PNG"))
    answers = [r.prediction for r in predict_batches(trained_server.stub, pictures)]
    read = [p.digit == 0 and p.is_digit for p in answers]
    # 36 with the tests' model trained at stop 50, 6 with the one before: a floor with room for another training.
    assert sum(read) >= 30, f"{sum(read)} of {len(read)} slashed 0s read as a 0 and a digit"


def test_each_digit_read_number_reads_says_whether_it_is_a_digit(serve, tmp_path, mnist):
    """ReadNumber's digits carry is_digit and digit_score as Predict gives them, and ten probabilities each."""
    import cv2

    from tests.inference.helpers import png_bytes

    pair = np.concatenate(
        [mnist.test_images[0].numpy(), np.zeros((28, 14), np.uint8), mnist.test_images[1].numpy()], axis=1
    )
    picture = 255 - cv2.resize(np.pad(pair, 14), None, fx=4, fy=4, interpolation=cv2.INTER_CUBIC)
    artifacts = tmp_path / "artifacts"
    publish_payload(artifacts, "nd1", not_digit_payload(6, threshold=0.5))
    running = serve(artifacts)
    request = pb.ReadNumberRequest(image=png_bytes(picture), return_model_input=True)
    response = running.stub.ReadNumber(request, timeout=30)
    assert response.per_digit
    for digit in response.per_digit:
        prediction = digit.prediction
        assert len(prediction.probabilities) == 10 and sum(prediction.probabilities) == pytest.approx(1, abs=1e-5)
        assert 0 <= prediction.digit_score <= 1 and prediction.is_digit == (prediction.digit_score >= 0.5)
        # The score is the served model's judgement of this digit: Predict on the same 28x28 input gives it too.
        alone = running.stub.Predict(pb.PredictRequest(image=prediction.model_input_png), timeout=30).prediction
        assert prediction.digit_score == pytest.approx(alone.digit_score, abs=1e-4)
        assert prediction.is_digit == alone.is_digit

"""POST /v1/read-number over real sockets, in front of a real gRPC server serving the really trained model: a
picture of a handwritten number (testkit/numbers.py, from MNIST test digits) in, the digits and their boxes out;
the same answer as gRPC ReadNumber for the same bytes, and its refusals as the same JSON errors as /v1/predict's.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from shared.api.mnist.v1 import inference_pb2 as pb

from testkit.numbers import lines_picture, make_numbers
from tests.inference.helpers import start_server
from tests.inference.web.helpers import assert_error, decode_data_url, start_web


@pytest.fixture(scope="module")
def served(trained_artifacts, mnist_dir):
    """The trained model behind a real gRPC server (port 0), and the gateway in front of it (a free port)."""
    backend = start_server(trained_artifacts, mnist_dir)
    web = start_web(target=backend.target, timeout=30)
    yield backend, web
    web.stop()
    backend.channel.close()
    backend.server.stop(grace=0)


@pytest.fixture(scope="module")
def mnist_test(mnist):
    return mnist.test_images.numpy(), mnist.test_labels.numpy()


@pytest.fixture(scope="module")
def numbers(mnist_test):
    """Six numbers of 4 to 8 digits written apart, one in each of six drawn styles."""
    return make_numbers(
        *mnist_test,
        per_style=1,
        seed=3,
        layout="apart",
        styles=["paint_program", "web_canvas_alpha", "thin_pen", "small_off_centre", "coloured", "dark_mode"],
    )


def iou(truth: tuple[int, int, int, int], box: dict) -> float:
    tx, ty, tw, th = truth
    ix = max(0, min(tx + tw, box["x"] + box["width"]) - max(tx, box["x"]))
    iy = max(0, min(ty + th, box["y"] + box["height"]) - max(ty, box["y"]))
    inter = ix * iy
    return inter / (tw * th + box["width"] * box["height"] - inter)


def test_a_number_is_read_digit_by_digit_with_each_box_on_its_ink(served, numbers):
    _, gateway = served
    right = 0
    for number in numbers:
        answer = gateway.post("/v1/read-number", number.data)
        assert answer.status == 200, answer.body
        got = answer.json()
        width, height = Image.open(io.BytesIO(number.data)).size
        assert (got["width"], got["height"]) == (width, height)
        assert len(got["per_digit"]) == len(got["digits"]) and got["separators"] == []
        for char, digit in zip(got["digits"], got["per_digit"]):
            box = digit["box"]
            assert str(digit["digit"]) == char and len(digit["probabilities"]) == 10
            assert box["x"] >= 0 and box["x"] + box["width"] <= width, (box, width)
            assert box["y"] >= 0 and box["y"] + box["height"] <= height, (box, height)
            assert decode_data_url(digit["model_input"])  # asked for by default, as /v1/predict does
        xs = [d["box"]["x"] for d in got["per_digit"]]
        assert xs == sorted(xs), "left to right"
        assert got["confidence"] == pytest.approx(
            np.prod([d["probabilities"][d["digit"]] for d in got["per_digit"]]), rel=1e-5
        )
        if got["digits"] == number.digits:
            right += 1
            assert all(iou(truth, d["box"]) >= 0.5 for truth, d in zip(number.boxes, got["per_digit"])), (
                number.boxes,
                [d["box"] for d in got["per_digit"]],
            )
    # The model reads ~94 % of such numbers whole (tests/inference/test_read_number.py): one miss in six at most.
    assert right >= len(numbers) - 1, right


def test_read_number_answers_what_grpc_read_number_answers_for_the_same_bytes(
    served, numbers, mnist_test, trained_version
):
    backend, gateway = served
    with_mark = make_numbers(*mnist_test, per_style=1, seed=1, separator=True, styles=["web_canvas_alpha"])[0]
    for data in (numbers[0].data, with_mark.data):
        expected = backend.stub.ReadNumber(pb.ReadNumberRequest(image=data, return_model_input=True), timeout=30)
        for answer in (
            gateway.post("/v1/read-number", data, "image/png"),
            gateway.post_files("/v1/read-number", [("file", data)]),
        ):
            assert answer.status == 200, answer.body
            got = answer.json()
            assert got["digits"] == expected.digits and got["confidence"] == expected.confidence
            assert got["model_version"] == expected.model_version == trained_version
            assert (got["width"], got["height"]) == (expected.width, expected.height)
            assert len(got["per_digit"]) == len(expected.per_digit)
            for mine, theirs in zip(got["per_digit"], expected.per_digit):
                assert mine["box"] == {
                    "x": theirs.box.x,
                    "y": theirs.box.y,
                    "width": theirs.box.width,
                    "height": theirs.box.height,
                }
                assert mine["digit"] == theirs.prediction.digit
                assert mine["probabilities"] == list(theirs.prediction.probabilities)  # exactly
                assert decode_data_url(mine["model_input"]) == theirs.prediction.model_input_png
            assert [(s["position"], s["mark"], s["box"]["x"]) for s in got["separators"]] == [
                (s.position, s.mark, s.box.x) for s in expected.separators
            ]
    assert with_mark.separator is not None
    assert len(expected.separators) == 1, "the separator's number must have its mark read"
    # model_input=false leaves the 28x28 images out, as for /v1/predict.
    lean = gateway.post("/v1/read-number?model_input=false", numbers[0].data).json()
    assert lean["digits"] == gateway.post("/v1/read-number", numbers[0].data).json()["digits"]
    assert all(d["model_input"] is None for d in lean["per_digit"])


def test_what_read_number_refuses_is_400_with_the_services_message(served, mnist_test):
    _, gateway = served
    buffer = io.BytesIO()
    Image.new("L", (600, 200), 240).save(buffer, "PNG")  # light grey paper, no ink
    blank = buffer.getvalue()
    assert_error(gateway.post("/v1/read-number", blank), 400, "INVALID_ARGUMENT", "no digit found", "Send a picture")
    assert_error(
        gateway.post("/v1/read-number", lines_picture(*mnist_test, lines=2, seed=0)),
        400,
        "INVALID_ARGUMENT",
        "2 lines of writing",
        "one number",
    )
    too_long = make_numbers(*mnist_test, per_style=1, seed=0, lengths=(14, 14), styles=["web_canvas_alpha"])[0]
    assert_error(gateway.post("/v1/read-number", too_long.data), 400, "INVALID_ARGUMENT", "more than the 12")
    assert_error(gateway.post("/v1/read-number", b"%PDF-1.7 not a picture"), 400, "INVALID_ARGUMENT", "PDF")
    assert_error(
        gateway.post_files("/v1/read-number", [("a", blank), ("b", blank)]),
        400,
        "INVALID_ARGUMENT",
        "exactly one image",
    )


def test_an_unknown_model_version_is_404(served, numbers, trained_version):
    _, gateway = served
    assert_error(
        gateway.post("/v1/read-number?model_version=no-such-model", numbers[0].data),
        404,
        "NOT_FOUND",
        "'no-such-model' is not published",
    )
    named = gateway.post(f"/v1/read-number?model_version={trained_version}", numbers[0].data)
    assert named.status == 200 and named.json()["model_version"] == trained_version


def test_openapi_describes_read_number(served):
    _, gateway = served
    operation = gateway.get("/openapi.json").json()["paths"]["/v1/read-number"]["post"]
    assert "ReadNumber" in operation["summary"]
    assert {"image/*", "application/octet-stream", "multipart/form-data"} <= set(operation["requestBody"]["content"])
    assert {"200", "400", "404", "413", "503"} <= set(operation["responses"])
    assert "422" not in operation["responses"]
    assert {p["name"] for p in operation["parameters"]} == {"model_input", "model_version"}

"""The REST API over real sockets, in front of a real gRPC server: every endpoint, the error mapping, the docs.

The gateway adds nothing of its own to an answer: for the same bytes, what it answers is what the gRPC call
answers, which these tests check against the server called directly over gRPC.
"""

from __future__ import annotations

import base64
import gzip
import http.client
import io
import json
import logging
import re
import select
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace
from urllib.parse import quote, urljoin

import grpc
import numpy as np
import pytest
from PIL import Image

from shared.api.mnist.v1 import inference_pb2 as pb
from shared.image_pipeline import to_mnist

from testkit.ports import free_port, free_ports
from tests.inference.helpers import REPO_ROOT, cycles_left_by, hold_calls, wait_until
from tests.inference.web.helpers import PrefixProxy, assert_error, decode_data_url, fetch, multipart
from tests.reliability import bad_inputs

TOKEN = "web-s3cret"


# --------------------------------------------------------------------------------------------------------------
# Answers: the same as gRPC's


def test_predict_answers_what_grpc_predict_answers_for_the_same_bytes(gateway, backend, digit_pngs):
    for _, png, _ in digit_pngs[:8]:
        expected = backend.stub.Predict(pb.PredictRequest(image=png, return_model_input=True), timeout=10)
        for answer in (
            gateway.post("/v1/predict", png, "image/png"),
            gateway.post_files("/v1/predict", [("file", png)]),
        ):
            assert answer.status == 200, answer.body
            got = answer.json()
            assert got["digit"] == expected.prediction.digit
            assert got["probabilities"] == list(expected.prediction.probabilities)  # exactly: float32 -> double
            assert got["model_version"] == expected.model_version == "v1"
            assert decode_data_url(got["model_input"]) == expected.prediction.model_input_png


def test_predict_shows_the_28x28_image_the_model_saw(gateway, digit_pngs):
    png = digit_pngs[3][1]
    got = gateway.post("/v1/predict", png).json()
    seen = np.asarray(Image.open(io.BytesIO(decode_data_url(got["model_input"]))))
    assert seen.shape == (28, 28) and seen.dtype == np.uint8
    np.testing.assert_array_equal(seen, to_mnist(png))
    assert gateway.post("/v1/predict?model_input=false", png).json()["model_input"] is None


def test_predict_accepts_any_content_type_and_any_file_field(gateway, digit_pngs):
    png = digit_pngs[0][1]
    expected = gateway.post("/v1/predict", png).json()
    assert gateway.post("/v1/predict", png, "application/octet-stream").json() == expected
    assert gateway.post_files("/v1/predict", [("image", png)]).json() == expected


def test_batch_answers_what_predict_batch_answers_and_a_bad_image_fails_alone(gateway, backend, digit_pngs):
    good = [png for _, png, _ in digit_pngs[:4]]
    oversized = bad_inputs.oversized_bytes(digit_pngs[0][2], 200_000)
    images = [good[0], b"not an image at all", good[1], oversized, good[2], good[3]]
    expected = backend.stub.PredictBatch(pb.PredictBatchRequest(images=images, return_model_input=True), timeout=10)
    answer = gateway.post_files("/v1/predict/batch", [("files", data) for data in images])
    assert answer.status == 200, answer.body
    got = answer.json()
    assert got["model_version"] == expected.model_version
    assert len(got["results"]) == len(images)
    for result, want in zip(got["results"], expected.results):
        if want.HasField("error"):
            assert result["error"]["message"] == want.error.message
            assert result["error"]["code"] == "INVALID_ARGUMENT"
        else:
            assert result["digit"] == want.prediction.digit
            assert result["probabilities"] == list(want.prediction.probabilities)
            assert decode_data_url(result["model_input"]) == want.prediction.model_input_png
    # Each failure carries the HTTP status a single Predict of that image gets.
    assert got["results"][1]["error"]["status"] == 400
    assert got["results"][3]["error"]["status"] == 413
    assert gateway.post_files("/v1/predict/batch", []).json() == {"model_version": "v1", "results": []}


def test_model_info_is_get_model_info(gateway, backend):
    info = backend.stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=10)
    got = gateway.get("/v1/model").json()
    assert got["serving"] is True and got["version"] == info.version == "v1"
    assert got["arch"] == info.arch and got["parameter_count"] == info.parameter_count
    assert got["arch_kwargs"] == {"width": 8}
    assert got["sha256"] == info.sha256
    assert got["training_metrics"] == dict(info.training_metrics)
    assert got["loaded_at"] == info.loaded_at and got["trained_at"] == info.trained_at
    assert got["input"]["max_image_bytes"] == 200_000 and got["input"]["max_batch_size"] == 16
    assert got["input"]["accepted_formats"] == list(info.input.accepted_formats)
    assert got["last_load_error"] is None


def test_evaluate_gives_metrics_per_class_scores_confusion_matrix_and_heatmap(gateway, backend):
    expected = backend.stub.Evaluate(pb.EvaluateRequest(split=pb.SPLIT_TEST, omit_heatmap=True), timeout=60)
    answer = gateway.post("/v1/evaluate", b'{"split": "test"}', "application/json")
    assert answer.status == 200, answer.body
    got = answer.json()
    assert got["split"] == "test" and got["count"] == 10_000 and got["model_version"] == "v1"
    assert got["accuracy"] == expected.accuracy and got["loss"] == expected.loss
    assert got["confusion"] == [list(row.counts) for row in expected.confusion]
    assert [c["support"] for c in got["per_class"]] == [c.support for c in expected.per_class]
    assert [c["digit"] for c in got["per_class"]] == list(range(10))
    heatmap = Image.open(io.BytesIO(decode_data_url(got["heatmap"])))
    assert heatmap.format == "PNG" and heatmap.width > 200
    # No body means the test split; heatmap=false leaves the picture out.
    plain = gateway.post("/v1/evaluate", b"", "application/json").json()
    assert plain["split"] == "test" and plain["confusion"] == got["confusion"]
    quick = gateway.post("/v1/evaluate", b'{"split": "validation", "heatmap": false}', "application/json").json()
    assert quick["split"] == "validation" and quick["count"] == 12_000 and quick["heatmap"] is None


def test_request_id_is_passed_through_to_the_service_and_back(gateway, digit_pngs):
    answer = gateway.post("/v1/predict", digit_pngs[0][1], headers={"X-Request-ID": "web-test-42"})
    assert answer.headers["x-request-id"] == "web-test-42"
    fresh = gateway.get("/v1/model").headers["x-request-id"]
    assert len(fresh) == 32  # one made up, by the service's rule for a gRPC caller without one


@pytest.mark.parametrize("supplied", ["slow-1", None])
def test_a_call_past_its_deadline_says_its_request_id_which_the_services_access_line_has(
    web, backend, digit_pngs, monkeypatch, caplog, supplied
):
    """The service says a call's id with its status, which a call past its deadline never gets: the 504 said no
    id, and the one call an operator most wants to find in the service's log could not be. The gateway knows the
    id of every call it makes: the caller's, or one it made."""
    import inference.service

    caplog.set_level(logging.INFO, logger="inference.access")
    entered, release = hold_calls(monkeypatch, inference.service, "digit_log_probs")
    gateway = web(target=backend.target, timeout=0.5)
    try:
        answer = gateway.post("/v1/predict", digit_pngs[0][1], headers={"X-Request-ID": supplied} if supplied else {})
        assert_error(answer, 504, "DEADLINE_EXCEEDED", "did not answer within 0.5 s")
    finally:
        release.set()
    said = answer.headers.get("x-request-id")
    assert said and (said == supplied or supplied is None), answer.headers
    assert entered.is_set()
    logged = lambda: [r for r in caplog.records if r.name == "inference.access" and r.access["method"] == "Predict"]  # noqa: E731
    assert wait_until(lambda: logged(), timeout=10)
    assert [r.access["request_id"] for r in logged()] == [said]


# --------------------------------------------------------------------------------------------------------------
# Errors: gRPC status -> HTTP status, with the service's message


@pytest.mark.parametrize(
    "make, words",
    [
        (bad_inputs.plain_text, ["not a picture"]),
        (bad_inputs.empty, ["empty image"]),
        (bad_inputs.truncated_png, ["PNG"]),
        (bad_inputs.all_white, ["no ink"]),
        (bad_inputs.heic, ["HEIC", "JPEG"]),
    ],
)
def test_a_bad_image_is_400_with_what_to_fix(gateway, digit_pngs, make, words):
    assert_error(gateway.post("/v1/predict", make(digit_pngs[0][2])), 400, "INVALID_ARGUMENT", *words)


def test_bad_requests_are_400(gateway, digit_pngs):
    png = digit_pngs[0][1]
    assert_error(
        gateway.post_files("/v1/predict", [("a", png), ("b", png)]),
        400,
        "INVALID_ARGUMENT",
        "exactly one image",
        "/v1/predict/batch",
    )
    assert_error(
        gateway.post("/v1/evaluate", b'{"split": "train"}', "application/json"), 400, "INVALID_ARGUMENT", "split"
    )
    assert_error(gateway.post("/v1/evaluate", b"{not json", "application/json"), 400, "INVALID_ARGUMENT")
    # A misspelt key is named, not ignored (the test split was evaluated for {"splt": "validation"}).
    assert_error(
        gateway.post("/v1/evaluate", b'{"splt": "validation"}', "application/json"),
        400,
        "INVALID_ARGUMENT",
        "splt",
        "Extra inputs are not permitted",
    )
    # Only as JSON: any web page may POST text/plain here without a CORS preflight.
    assert_error(
        gateway.post("/v1/evaluate", b'{"heatmap": false}', "text/plain"), 415, "INVALID_ARGUMENT", "application/json"
    )
    assert_error(gateway.post("/v1/predict?model_input=perhaps", png), 400, "INVALID_ARGUMENT", "model_input")
    # A misspelt query parameter is named, not ignored (?modelversion=x was answered by the served model).
    assert_error(
        gateway.post("/v1/predict?modelversion=v9", png),
        400,
        "INVALID_ARGUMENT",
        "unknown query parameter 'modelversion': /v1/predict takes model_input, model_version",
    )
    assert_error(gateway.get("/v1/model?verbose=1"), 400, "INVALID_ARGUMENT", "/v1/model takes none")
    # Given twice, the last was taken: a version that does not exist, then none, was answered by the served model.
    assert_error(
        gateway.post("/v1/predict?model_version=nope&model_version=", png),
        400,
        "INVALID_ARGUMENT",
        "query parameter model_version given more than once",
    )


FORGED_LINE = "\n2026-12-05 05:56:00,000 INFO inference.web.app POST /v1/predict -> 200 OK: forged"


def gateway_log_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "inference.web.app"]


def test_unknown_query_parameter_names_are_quoted_and_shortened_in_the_error_and_the_log(gateway, digit_pngs, caplog):
    """They were said raw, and the gateway logs what it says: a name holding a newline and a log line's words forged
    a line of the log, and a 60,000-character one added 120 kB to the log and the answer."""
    caplog.set_level(logging.INFO, logger="inference.web.app")
    names = ["a" + FORGED_LINE, "b" * 10_000, *(f"extra{k}" for k in range(6))]  # said in sorted order
    query = "&".join(f"{quote(name)}=1" for name in names)
    message = assert_error(
        gateway.post(f"/v1/predict?{query}", digit_pngs[0][1]),
        400,
        "INVALID_ARGUMENT",
        repr("a" + FORGED_LINE) + ", " + repr("b" * 100) + ", 'extra0'",
        "and 3 more: /v1/predict takes model_input, model_version",
    )
    assert "\n" not in message and len(message) < 1_000, message[:300]
    (logged,) = [line for line in gateway_log_lines(caplog) if "unknown query parameter" in line]
    assert "\n" not in logged and len(logged) < 1_000, logged[:300]


def test_unknown_evaluate_keys_are_quoted_and_shortened_in_the_error_and_the_log(gateway, caplog):
    """As unknown query parameters: the keys of the JSON body were said raw (pydantic's `loc`)."""
    caplog.set_level(logging.INFO, logger="inference.web.app")
    keys = ["x" + FORGED_LINE, "y" * 60_000, *(f"extra{k}" for k in range(6))]
    body = json.dumps({"split": "validation", **dict.fromkeys(keys, 1)}).encode()
    message = assert_error(
        gateway.post("/v1/evaluate", body, "application/json"),
        400,
        "INVALID_ARGUMENT",
        repr("x" + FORGED_LINE) + ": Extra inputs are not permitted",
        repr("y" * 100) + ": Extra inputs are not permitted",
        "; and 3 more; send JSON such as",
    )
    assert "\n" not in message and len(message) < 1_000, message[:300]
    (logged,) = [line for line in gateway_log_lines(caplog) if "Extra inputs" in line]
    assert "\n" not in logged and len(logged) < 1_000, logged[:300]


@pytest.mark.parametrize(
    "body, key",
    [
        (b'{"model_version": "", "model_version": "nope"}', "'model_version'"),
        (b'{"split": "test", "heatmap": false, "split": "validation"}', "'split'"),
    ],
)
def test_an_evaluate_key_given_twice_is_refused_naming_it(gateway, body, key):
    """The last one was taken, without a word, as for a query parameter given twice (which is refused): a version
    that does not exist, then none, was evaluated with the served model."""
    assert_error(
        gateway.post("/v1/evaluate", body, "application/json"),
        400,
        "INVALID_ARGUMENT",
        f"key {key} given more than once: give each once",
    )


def test_a_body_whose_type_only_begins_like_multipart_is_no_multipart_form(gateway, digit_pngs):
    """'multipart/form-datax' passed a prefix test; Starlette parsed no parts of it, and a batch answered 200 with no
    results: its images were lost without a word."""
    body, content_type = multipart([("file", digit_pngs[0][1])])
    answer = gateway.post("/v1/predict/batch", body, content_type.replace("form-data", "form-datax"))
    (result,) = answer.json()["results"]  # the body is the one picture, and no picture: said
    assert answer.status == 200 and result["error"]["code"] == "INVALID_ARGUMENT", result
    assert len(gateway.post("/v1/predict/batch", body, content_type).json()["results"]) == 1


def test_evaluate_is_refused_unless_sent_as_json_even_with_no_body(gateway):
    # A page of any site may POST text/plain, a form or nothing at all without a CORS preflight: none of them may
    # start an evaluation on a visitor's local service.
    no_type = gateway.request("POST", "/v1/evaluate", body=b"")
    assert_error(no_type, 415, "INVALID_ARGUMENT", "without one", "application/json")
    for content_type in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"):
        assert_error(gateway.post("/v1/evaluate", b"", content_type), 415, "INVALID_ARGUMENT", content_type[:10])


def test_an_image_sent_inside_json_is_415_saying_how_to_send_it(gateway, digit_pngs):
    png = digit_pngs[0][1]
    body = json.dumps({"image": base64.b64encode(png).decode()}).encode()
    for path in ("/v1/predict", "/v1/predict/batch", "/v1/read-number"):
        assert_error(gateway.post(path, body, "application/json"), 415, "INVALID_ARGUMENT", "--data-binary", "-F")
    # The same base64 text as the body itself: the service says what it is.
    assert_error(gateway.post("/v1/predict", base64.b64encode(png), "text/plain"), 400, "INVALID_ARGUMENT", "base64")


def test_a_compressed_body_is_415_and_a_png_curl_d_mangled_is_400_saying_how_to_send_it(gateway, digit_pngs):
    png = digit_pngs[0][1]
    for path in ("/v1/predict", "/v1/predict/batch", "/v1/read-number"):
        # It reached the service as gzip's bytes, and came back "not an image".
        sent = gateway.post(path, gzip.compress(png), headers={"Content-Encoding": "gzip"})
        assert_error(sent, 415, "INVALID_ARGUMENT", "Content-Encoding 'gzip'", "own bytes")
        # curl -d @digit.png drops the file's CR and LF bytes, the PNG signature's among them.
        mangled = png.replace(b"\r", b"").replace(b"\n", b"")
        sent = gateway.post(path, mangled, "application/x-www-form-urlencoded")
        assert_error(sent, 400, "INVALID_ARGUMENT", "curl -d", "--data-binary")
    # Unchanged: identity is no coding, and curl --data-binary sends the same content type with the bytes whole.
    assert gateway.post("/v1/predict", png, headers={"Content-Encoding": "identity"}).status == 200
    assert gateway.post("/v1/predict", png, "application/x-www-form-urlencoded").status == 200


@pytest.mark.parametrize(
    "kind, words",
    [
        ("bytes", ["200,000", "bytes"]),
        ("declared pixels", ["pixels", "4,000,000"]),  # caught by Pillow's ceiling first: 10 gigapixels
        ("decompression bomb", ["pixels", "4,000,000"]),
    ],
)
def test_an_image_over_a_limit_is_413(gateway, digit_pngs, kind, words):
    digit = digit_pngs[0][2]
    data = {
        "bytes": lambda: bad_inputs.oversized_bytes(digit, 200_000),
        "declared pixels": lambda: bad_inputs.huge_dimensions_png(digit),
        "decompression bomb": lambda: bad_inputs.decompression_bomb_png(digit),
    }[kind]()
    assert_error(gateway.post("/v1/predict", data), 413, "INVALID_ARGUMENT", *words)


def test_too_many_images_in_a_batch_is_413(gateway, digit_pngs):
    files = [("files", digit_pngs[0][1])] * 17  # the backend's limit is 16
    assert_error(
        gateway.post_files("/v1/predict/batch", files), 413, "RESOURCE_EXHAUSTED", "17 images", "the limit is 16"
    )


def test_a_batch_over_the_services_message_limit_is_413(gateway, digit_pngs):
    # 12 images of 99 kB each: under the per-image and per-batch limits, over the 1 MB message limit.
    padded = bad_inputs.oversized_bytes(digit_pngs[0][2], 98_000)
    assert 98_000 < len(padded) < 200_000
    assert_error(  # gRPC's own "Received message larger than max (N vs. M)", said for a person
        gateway.post_files("/v1/predict/batch", [("files", padded)] * 12),
        413,
        "RESOURCE_EXHAUSTED",
        "larger than the 1,000,000 the inference service takes in one message",
        "--max-message-bytes. Send a smaller picture",
        "or fewer pictures in one batch",
    )


def test_a_body_over_the_gateways_limit_is_413_before_it_is_read(web, backend, digit_pngs):
    small = web(target=backend.target, max_body_bytes=50_000)
    big = bad_inputs.oversized_bytes(digit_pngs[0][2], 60_000)
    assert_error(small.post("/v1/predict", big), 413, "RESOURCE_EXHAUSTED", "50,000 bytes")
    # Refused on the declared length alone: a caller that sent only the headers is answered, with no byte read.
    with socket.create_connection(("127.0.0.1", small.port)) as headers_only:
        headers_only.sendall(
            b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: 60000\r\n\r\n"
        )
        headers_only.settimeout(5)  # well under BODY_STALL_SECONDS, after which a body never sent is a 408
        try:
            said = headers_only.recv(4096).decode("latin-1")
        except TimeoutError:
            pytest.fail("a body declared over the limit was waited for instead of refused at once")
        assert said.startswith("HTTP/1.1 413"), said[:200]
    # Without a Content-Length (chunked), counted as it arrives.
    chunked = iter([big[:30_000], big[30_000:]])
    assert_error(
        small.request("POST", "/v1/predict", body=chunked, headers={"Content-Type": "image/png"}),
        413,
        "RESOURCE_EXHAUSTED",
        "50,000 bytes",
    )
    assert small.post("/v1/predict", digit_pngs[0][1]).status == 200  # and it keeps serving


def test_a_client_that_sends_the_whole_body_before_reading_reads_the_413_not_a_reset(web, backend):
    """Python's http.client (urllib, requests) sends a body whole, then reads: the gateway answered a body declared
    over the limit at once and closed the connection with it unread, and the kernel's reset destroyed the 413 (10 of
    10 bodies of 10 MB over a 4 MB limit). It reads and drops the body first, up to DRAIN_FACTOR times the limit."""
    from inference.web.app import DRAIN_FACTOR

    limit = 4_000_000
    gateway = web(target=backend.target, max_body_bytes=limit)
    body = b"\x89PNG" + bytes(10_000_000)
    assert len(body) <= DRAIN_FACTOR * limit
    for _ in range(3):
        connection = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=30)
        try:
            connection.request("POST", "/v1/predict", body=body, headers={"Content-Type": "image/png"})
            answer = connection.getresponse()
            assert answer.status == 413 and b"4,000,000 bytes" in answer.read()
        finally:
            connection.close()


def test_an_evaluation_already_running_is_429_with_retry_after(gateway, monkeypatch):
    import inference.service

    started, release = hold_calls(monkeypatch, inference.service, "evaluate_model")
    results = []
    first = threading.Thread(
        target=lambda: results.append(gateway.post("/v1/evaluate", b'{"heatmap": false}', "application/json"))
    )
    first.start()
    try:
        assert started.wait(10)
        answer = gateway.post("/v1/evaluate", b'{"heatmap": false}', "application/json")
        assert_error(answer, 429, "RESOURCE_EXHAUSTED", "already running", "try again")
        assert answer.headers["retry-after"] == "1"
    finally:
        release.set()
        first.join(60)
    assert results[0].status == 200


def test_no_model_yet_is_503_and_not_ready(web, serve, tmp_path, digit_pngs):
    empty = serve(tmp_path / "no-models")
    gateway = web(target=empty.target)
    answer = gateway.post("/v1/predict", digit_pngs[0][1])
    assert_error(answer, 503, "UNAVAILABLE", "no model is published yet")
    assert answer.headers["retry-after"] == "1"
    assert_error(gateway.get("/readyz"), 503, "UNAVAILABLE", "NOT_SERVING")
    assert gateway.get("/healthz").json() == {"status": "ok"}
    info = gateway.get("/v1/model").json()
    assert info["serving"] is False and info["version"] == "" and info["input"]["height"] == 28


def test_ready_when_the_service_serves(gateway):
    answer = gateway.get("/readyz")
    assert answer.status == 200 and answer.json() == {"status": "ready"}


def test_an_unreachable_service_is_503_for_probes_and_504_after_the_deadline(web, digit_pngs):
    gateway = web(target=f"127.0.0.1:{free_port()}", timeout=0.5)
    assert_error(gateway.get("/readyz"), 503, "UNAVAILABLE", "not ready")
    # Calls wait for a replica (waitForReady), as long as --timeout, then say what to check.
    assert_error(
        gateway.post("/v1/predict", digit_pngs[0][1]), 504, "DEADLINE_EXCEEDED", "did not answer within", "/readyz"
    )
    assert gateway.get("/healthz").status == 200  # the gateway itself is alive


def test_a_probe_of_a_service_that_never_answers_says_so_without_sending_the_caller_to_itself(web):
    """A service that takes the connection and says nothing (stopped, as by SIGSTOP): the probe's 503 said to ask
    GET /readyz, the very probe that failed."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        gateway = web(target=f"127.0.0.1:{silent.getsockname()[1]}", timeout=1.0)
        message = assert_error(gateway.get("/readyz"), 503, "UNAVAILABLE", "not ready", "did not answer within 1 s")
    assert "/readyz" not in message


def test_a_service_unreachable_past_the_grace_is_503_at_once_and_served_again_when_back(
    web, tmp_path, mnist_dir, digit_pngs
):
    from inference.options import ServerOptions
    from inference.server import create_server
    from tests.inference.helpers import publish

    png, port = digit_pngs[0][1], free_port()
    gateway = web(target=f"127.0.0.1:{port}", timeout=30, unreachable_grace=0.5)
    time.sleep(1.5)  # the gateway has failed to connect for longer than the grace
    started = time.monotonic()
    answer = gateway.post("/v1/predict", png)
    assert_error(answer, 503, "UNAVAILABLE", "cannot reach", "try again when it is up")
    assert answer.headers["retry-after"] == "1"
    assert time.monotonic() - started < 10, "the call waited for the service instead of saying it is down"
    publish(tmp_path / "artifacts", "v1")
    options = ServerOptions(artifacts_dir=tmp_path / "artifacts", data_dir=mnist_dir, poll_interval=0.05)
    server, _ = create_server(f"127.0.0.1:{port}", options)
    server.start()
    try:
        assert wait_until(lambda: gateway.post("/v1/predict", png).status == 200, timeout=30)
    finally:
        server.stop(grace=0)


def test_a_call_made_as_the_service_goes_down_is_503_after_the_grace_not_its_deadline(web, digit_pngs):
    """A call made before the grace had passed waited for a replica as long as its deadline (two minutes for an
    Evaluate); it is given up once no replica could be reached for the grace."""
    gateway = web(target=f"127.0.0.1:{free_port()}", timeout=30, unreachable_grace=0.5)
    started = time.monotonic()  # at once: the gateway has not yet found the service down
    answer = gateway.post("/v1/predict", digit_pngs[0][1])
    assert_error(answer, 503, "UNAVAILABLE", "cannot reach", "no replica for 0.5 s", "try again when it is up")
    assert answer.headers["retry-after"] == "1"
    assert time.monotonic() - started < 10, "the call waited out its deadline"


@pytest.fixture
def deadlines(monkeypatch) -> list[float]:
    """The deadlines (timeout=) that the gateways started from now on give their gRPC calls, which they still make."""
    import inference.web.app

    stubs = inference.web.app.inference_pb2_grpc
    real, given = stubs.InferenceStub, []

    class DeadlineRecordingStub:
        def __init__(self, channel) -> None:
            self.stub = real(channel)

        def __getattr__(self, method: str):
            made = getattr(self.stub, method)

            def future(request, *, timeout, **kwargs):
                given.append(timeout)
                return made.future(request, timeout=timeout, **kwargs)

            return SimpleNamespace(future=future)

    monkeypatch.setattr(stubs, "InferenceStub", DeadlineRecordingStub)
    return given


def post_slowly(port: int, path: str, body: bytes, seconds: float, parts: int = 5):
    """POST `body` in `parts` pieces spread over `seconds`, as a slow upload sends it, or until the gateway answers
    before the last: (status, JSON answer)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        connection.putrequest("POST", path)
        connection.putheader("Content-Type", "image/png")
        connection.putheader("Content-Length", str(len(body)))
        connection.endheaders()
        size = -(-len(body) // parts)
        for k in range(parts):
            if k:
                time.sleep(seconds / (parts - 1))
            if select.select([connection.sock], [], [], 0)[0]:  # answered (and closed) before the body was all sent
                break
            connection.send(body[k * size : (k + 1) * size])
        answer = connection.getresponse()
        return answer.status, json.loads(answer.read())
    finally:
        connection.close()


def test_a_slow_upload_leaves_its_call_only_what_is_left_of_the_deadline(web, backend, digit_pngs, deadlines):
    """The deadline counts from the request's arrival, not from when its body had been read: a body that took
    1.5 s to arrive leaves its call the rest of --timeout, so the answer comes within what the caller was
    promised."""
    gateway = web(target=backend.target, timeout=10)
    status, answer = post_slowly(gateway.port, "/v1/predict", digit_pngs[0][1], seconds=1.5)
    assert status == 200, answer
    assert len(deadlines) == 1
    assert deadlines[0] < 10 - 1.2, f"the call was given {deadlines[0]:.2f} s of a 10 s deadline after a 1.5 s upload"


def test_an_upload_slower_than_the_deadline_is_408_as_soon_as_it_passes_without_a_call(
    web, backend, digit_pngs, deadlines
):
    """Its answer could not come in time anyway: the upload is ended at the deadline (it went on as long as the
    body kept coming, and got 504 only once all of it had), and the service is not asked."""
    gateway = web(target=backend.target, timeout=1.0)
    started = time.monotonic()
    status, answer = post_slowly(gateway.port, "/v1/predict", digit_pngs[0][1], seconds=4.0)
    assert status == 408, answer
    assert time.monotonic() - started < 3.0
    assert answer["error"]["code"] == "DEADLINE_EXCEEDED"
    assert "did not arrive within 1 s" in answer["error"]["message"], answer
    assert "send the whole body at once" in answer["error"]["message"]
    assert deadlines == []  # the service was not asked


def test_every_answer_carries_a_request_id_the_callers_when_sane_the_gateways_own_errors_included(
    web, backend, digit_pngs
):
    """Only the answers of calls to the service said one: a 415, a 413 or the 408 of a slow body, which the gateway
    answers itself, said no X-Request-ID, although every answer is documented to."""
    gateway = web(target=backend.target, timeout=1.0, max_body_bytes=50_000, allowed_hosts=("127.0.0.1",))
    big = bad_inputs.oversized_bytes(digit_pngs[0][2], 60_000)
    mine = {"X-Request-ID": "mine-1"}

    def slow_upload(headers: dict) -> http.client.HTTPResponse:
        connection = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=60)
        connection.putrequest("POST", "/v1/predict")
        for name, value in {"Content-Type": "image/png", "Content-Length": "100", **headers}.items():
            connection.putheader(name, value)
        connection.endheaders()  # and no body: answered once the 1 s deadline has passed
        answer = connection.getresponse()
        answer.read()
        connection.close()
        return answer

    answers = {
        "415": lambda h: gateway.post("/v1/evaluate", b"{}", "text/plain", headers=h),
        "413 declared": lambda h: gateway.post("/v1/predict", big, headers=h),
        "413 counted": lambda h: gateway.request("POST", "/v1/predict", body=iter([big]), headers=h),
        "400 host": lambda h: gateway.get("/v1/model", headers={"Host": "evil.example", **h}),
        "400 query": lambda h: gateway.get("/v1/model?verbose=1", headers=h),
        "404": lambda h: gateway.get("/v1/nothing", headers=h),
        "probe": lambda h: gateway.get("/healthz", headers=h),
        "page": lambda h: gateway.get("/", headers=h),
        "200": lambda h: gateway.get("/v1/model", headers=h),
    }
    for what, ask in answers.items():
        assert ask(mine).headers.get("x-request-id") == "mine-1", what
        made = ask({}).headers.get("x-request-id", "")
        assert re.fullmatch("[0-9a-f]{32}", made), (what, made)
        # Not a sane token (the service would replace it): one made, by the service's rule.
        assert re.fullmatch("[0-9a-f]{32}", ask({"X-Request-ID": "two words"}).headers.get("x-request-id", "")), what
    slow = slow_upload(mine)
    assert slow.status == 408 and slow.getheader("X-Request-ID") == "mine-1"
    assert re.fullmatch("[0-9a-f]{32}", slow_upload({}).getheader("X-Request-ID") or "")
    # One header, the id the service was given, on an answer of the service too.
    assert gateway.get("/v1/model", headers=mine).headers["x-request-id"] == "mine-1"


def test_a_bug_in_the_gateway_is_a_500_in_the_error_shape_with_the_request_id_and_the_common_headers(
    gateway, digit_pngs, monkeypatch
):
    """Starlette answers an exception nothing handled outside every middleware: a plain-text "Internal Server
    Error" without the id to find its traceback by, nosniff or no-store. The gateway goes on serving."""
    import inference.web.app

    async def broken(request):
        raise RuntimeError("a bug")

    monkeypatch.setattr(inference.web.app, "read_one_image", broken)
    answer = gateway.post("/v1/predict", digit_pngs[0][1], headers={"X-Request-ID": "mine-500"})
    assert_error(answer, 500, "INTERNAL", "internal error in the gateway", "X-Request-ID")
    assert answer.headers["x-request-id"] == "mine-500"
    assert answer.headers["x-content-type-options"] == "nosniff" and answer.headers["cache-control"] == "no-store"
    monkeypatch.undo()
    assert gateway.post("/v1/predict", digit_pngs[0][1]).status == 200


def test_a_call_leaves_no_reference_cycle_to_keep_its_request_and_answer_until_the_collector_runs(gateway, digit_pngs):
    """Each call's watcher, cancelled once the call was over, left a cycle (its CancelledError's traceback held its
    frame, and the frame the request and the gRPC call) until the collector's next full pass, and a call the
    service refused another (the failed gRPC future is its own RpcError, raised from a frame whose closure held
    it): the gateway's memory grew with the bodies of calls long answered. An answer, a refusal and a number read,
    then everything the calls left unreachable."""

    def status(path: str, body: bytes):
        return lambda: str(gateway.post(path, body).status)

    calls = {
        "an answer": (status("/v1/predict", digit_pngs[0][1]), "200"),
        "a refusal": (status("/v1/predict", b"not a picture"), "400"),
        "a number read": (status("/v1/read-number", digit_pngs[0][1]), "200"),
    }
    for call, _ in calls.values():  # warm: whatever the first call of each kind builds once
        call()
    assert cycles_left_by(calls, ours=("/inference/",)) == []


def test_a_caller_is_told_what_to_do_but_not_the_services_address_which_the_gateway_logs(
    web, serve, tmp_path, digit_pngs, caplog
):
    """Every failure to reach the service, or a service not ready: the message named its address (the gRPC target,
    "inference:50051" in compose, and gRPC's own "ipv4:10.0.3.7:50051"), which the page showed its users. The
    address is for the gateway's operator: it is in the log."""
    caplog.set_level(logging.INFO, logger="inference.web.app")
    png, port = digit_pngs[0][1], free_port()
    addresses = [f"localhost:{port}", str(port), "127.0.0.1", "[::1]", "ipv4", "ipv6"]

    def told(answer, status: int, *words: str) -> None:
        message = assert_error(answer, status, "UNAVAILABLE" if status == 503 else "DEADLINE_EXCEEDED", *words)
        assert not [a for a in addresses if a in answer.body.decode()], message

    down = web(target=f"localhost:{port}", timeout=0.5, unreachable_grace=60)
    told(down.get("/readyz"), 503, "not ready", "try again when it is up")
    told(down.post("/v1/predict", png), 504, "did not answer within 0.5 s", "GET /readyz")
    given_up = web(target=f"localhost:{port}", timeout=30, unreachable_grace=0.5)
    told(given_up.post("/v1/predict", png), 503, "no replica for 0.5 s", "try again when it is up")
    time.sleep(1.0)  # past the grace: calls fail at once, with gRPC's own words about the connection
    told(given_up.post("/v1/predict", png), 503, "cannot reach", "try again when it is up")
    empty = serve(tmp_path / "no-models")  # reached, but serving nothing
    addresses.append(str(empty.port))
    told(web(target=f"localhost:{empty.port}").get("/readyz"), 503, "NOT_SERVING", "GET /v1/model says why")
    logged = [r.getMessage() for r in caplog.records if r.name == "inference.web.app" and "->" in r.getMessage()]
    assert len(logged) == 5, logged
    assert all("inference service at localhost:" in line for line in logged), logged


def test_readiness_never_names_the_services_address_which_the_gateway_logs(web, backend, caplog):
    """/readyz needs no token, and a ready service's answer said its address ("target": "inference:50051") to
    anyone who asked. Ready or not, the address is in the gateway's log only: the one /readyz asked, which is
    --health-target's when given."""
    caplog.set_level(logging.INFO, logger="inference.web.app")
    down, health_down = (f"127.0.0.1:{port}" for port in free_ports(2))
    addresses = [a for target in (backend.target, down, health_down) for a in (target, target.rsplit(":", 1)[1])]
    addresses += ["127.0.0.1", "localhost", "ipv4", "ipv6"]

    def unnamed(answer) -> None:
        assert not [a for a in addresses if a in answer.body.decode()], answer.body.decode()

    ready = web(target=backend.target).get("/readyz")
    assert ready.status == 200
    unnamed(ready)
    for gateway in (web(target=down), web(target=backend.target, health_target=health_down)):
        answer = gateway.get("/readyz")
        assert_error(answer, 503, "UNAVAILABLE", "not ready", "the gateway's log names the address")
        unnamed(answer)
    logged = [r.getMessage() for r in caplog.records if r.getMessage().startswith("GET /readyz ->")]
    assert len(logged) == 2, logged
    assert f"inference service at {down}:" in logged[0], logged[0]
    assert f"inference service at {health_down}:" in logged[1], logged[1]


def test_evaluate_without_mnist_is_503_without_retry_after(web, tmp_path):
    from tests.inference.helpers import publish, start_server

    publish(tmp_path / "artifacts", "v1")
    server = start_server(tmp_path / "artifacts", tmp_path / "no-mnist")
    try:
        gateway = web(target=server.target)
        answer = gateway.post("/v1/evaluate", b'{"heatmap": false}', "application/json")
        assert_error(answer, 503, "FAILED_PRECONDITION", "MNIST")
        assert "retry-after" not in answer.headers  # no retry mends it: someone must put the files there
    finally:
        server.channel.close()
        server.server.stop(grace=0)


def test_readiness_asks_the_services_health_only_port_when_given_one(web, tmp_path, mnist_dir):
    """The main port's threads serve every call: under a long burst of slow ones a probe there waits. The
    health-only port has threads of its own; --health-target sends /readyz there."""
    from tests.inference.helpers import publish, start_server

    publish(tmp_path / "artifacts", "v1")
    server = start_server(tmp_path / "artifacts", mnist_dir, health_address="127.0.0.1:0")
    try:
        health = f"127.0.0.1:{server.server.health_port}"
        assert web(target=server.target, health_target=health).get("/readyz").json()["status"] == "ready"
        # The main target unreachable, the health port answering: ready, so it is the health port that was asked.
        elsewhere = web(target=f"127.0.0.1:{free_port()}", health_target=health)
        assert elsewhere.get("/readyz").status == 200
        assert_error(
            web(target=server.target, health_target=f"127.0.0.1:{free_port()}").get("/readyz"), 503, "UNAVAILABLE"
        )
    finally:
        server.channel.close()
        server.server.stop(grace=0)


def test_a_target_that_does_not_serve_the_inference_api_is_502_saying_to_check_the_gateways_target(
    web, tmp_path, mnist_dir, digit_pngs
):
    """--target given the service's health-only port (or another gRPC server, or an older service without a
    method): gRPC answers UNIMPLEMENTED "Method not found!", which was a bare 501, a status the API does not have.
    The gateway is misconfigured, not the caller: 502, saying what to check, without the address (the log's)."""
    from tests.inference.helpers import start_server

    server = start_server(tmp_path / "artifacts", mnist_dir, health_address="127.0.0.1:0")
    try:
        port = server.server.health_port
        gateway = web(target=f"127.0.0.1:{port}")
        for answer in (gateway.get("/v1/model"), gateway.post("/v1/read-number", digit_pngs[0][1])):
            message = assert_error(
                answer, 502, "UNIMPLEMENTED", "does not serve the mnist inference API", "--target", "health-only"
            )
            assert str(port) not in message and "Method not found" not in message, message
    finally:
        server.channel.close()
        server.server.stop(grace=0)


def test_a_gateway_whose_target_does_not_serve_the_inference_api_is_not_ready_saying_to_check_its_target(
    web, tmp_path, mnist_dir
):
    """--target given the service's health-only port: its health service says SERVING, so /readyz said ready (200)
    while every call got 502, and Kubernetes or compose sent traffic to a gateway that could answer none of it.
    Ready or not, the same advice as the calls' 502; with --health-target the right health port, the same."""
    from tests.inference.helpers import publish, start_server

    publish(tmp_path / "artifacts", "v1")
    server = start_server(tmp_path / "artifacts", mnist_dir, health_address="127.0.0.1:0")
    try:
        health = f"127.0.0.1:{server.server.health_port}"
        for gateway in (web(target=health), web(target=health, health_target=health)):
            message = assert_error(
                gateway.get("/readyz"), 503, "UNAVAILABLE", "not ready", "does not serve the mnist inference API"
            )
            assert "--target" in message and "health-only" in message and health not in message, message
        # The right target is ready, asked through the health-only port or its own.
        assert web(target=server.target, health_target=health).get("/readyz").status == 200
        assert web(target=server.target).get("/readyz").status == 200
    finally:
        server.channel.close()
        server.server.stop(grace=0)


@pytest.fixture(scope="module")
def token_backend(tmp_path_factory, mnist_dir):
    from tests.inference.helpers import publish, start_server

    artifacts = tmp_path_factory.mktemp("token-artifacts")
    publish(artifacts, "v1", seed=1)
    r = start_server(artifacts, mnist_dir, auth_token=TOKEN)
    yield r
    r.channel.close()
    r.server.stop(grace=0)


def test_the_services_token_applies_to_rest_callers(web, token_backend, digit_pngs):
    gateway = web(target=token_backend.target)  # no token of its own: the header is passed through
    png = digit_pngs[0][1]
    answer = gateway.post("/v1/predict", png)
    assert_error(answer, 401, "UNAUTHENTICATED", "no authorization metadata", "Authorization: Bearer <token>")
    assert answer.headers["www-authenticate"].startswith("Bearer")
    assert_error(
        gateway.post("/v1/predict", png, headers={"Authorization": "Bearer wrong"}),
        401,
        "UNAUTHENTICATED",
        "wrong token",
    )
    assert gateway.post("/v1/predict", png, headers={"Authorization": f"Bearer {TOKEN}"}).status == 200
    assert gateway.get("/v1/model", headers={"Authorization": f"Bearer {TOKEN}"}).status == 200
    assert gateway.get("/v1/model", headers={"Authorization": f"bearer {TOKEN}"}).status == 200  # RFC 7235: any case
    # Probes and the page need no token, as gRPC health checking needs none; uptime checkers may ask with HEAD.
    assert gateway.get("/readyz").status == 200 and gateway.get("/").status == 200
    assert gateway.request("HEAD", "/").status == 200 and gateway.request("HEAD", "/healthz").status == 200


def test_head_answers_wherever_get_does_with_its_status_and_headers_and_no_body(web, token_backend):
    # RFC 9110, 9.3.2: load balancers and uptime checkers probe with HEAD; /readyz and /v1/model were 405s.
    gateway = web(target=token_backend.target)
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    for path, headers in [("/healthz", {}), ("/readyz", {}), ("/v1/model", bearer), ("/v1/models", bearer), ("/", {})]:
        got, head = gateway.get(path, headers=headers), gateway.request("HEAD", path, headers=headers)
        assert got.status == 200 and got.body and (head.status, head.body) == (200, b""), path
        assert head.headers.get("content-type") == got.headers.get("content-type"), path
    # The token is asked of HEAD as of GET, and POST-only paths stay 405s that do not list HEAD.
    assert gateway.request("HEAD", "/v1/model").status == 401
    refused = gateway.request("HEAD", "/v1/predict")
    assert refused.status == 405 and "HEAD" not in refused.headers["allow"], refused.headers
    # The schema shows GET alone, each operation once.
    assert all("head" not in operations for operations in gateway.get("/openapi.json").json()["paths"].values())


@pytest.mark.parametrize("own_token", [False, True], ids=["passed through", "the gateway's own"])
def test_two_authorization_headers_are_refused_whatever_their_order(web, token_backend, digit_pngs, own_token):
    gateway = web(target=token_backend.target, token=TOKEN if own_token else None)
    png = digit_pngs[0][1]
    for pair in [(f"Bearer {TOKEN}", "Bearer wrong"), ("Bearer wrong", f"Bearer {TOKEN}")]:
        assert_error(
            gateway.post_repeating("/v1/predict", png, [("Authorization", value) for value in pair]),
            401,
            "UNAUTHENTICATED",
            "2 authorization values",
        )
    assert gateway.post("/v1/predict", png, headers={"Authorization": f"Bearer {TOKEN}"}).status == 200


def test_the_gateways_own_token_is_checked_before_the_body_is_read(web, token_backend, digit_pngs):
    gateway = web(target=token_backend.target, token=TOKEN)
    message = assert_error(
        gateway.post("/v1/predict", digit_pngs[0][1]), 401, "UNAUTHENTICATED", "no Authorization header"
    )
    assert "metadata" not in message  # refused here, not by the service
    assert_error(
        gateway.post("/v1/evaluate", b"{}", "application/json", headers={"Authorization": "Bearer x"}),
        401,
        "UNAUTHENTICATED",
        "wrong token",
    )
    # Evaluate's JSON body too is read only after the token check: a caller without it learns nothing of the body.
    assert_error(gateway.post("/v1/evaluate", b"{not json", "application/json"), 401, "UNAUTHENTICATED")
    assert gateway.post("/v1/predict", digit_pngs[0][1], headers={"Authorization": f"Bearer {TOKEN}"}).status == 200
    assert gateway.post("/v1/predict", digit_pngs[0][1], headers={"Authorization": f"BEARER {TOKEN}"}).status == 200


def test_unknown_paths_and_methods_get_the_json_error_shape(gateway):
    assert_error(gateway.get("/v1/nothing"), 404, "NOT_FOUND", "GET /v1/nothing", "described at ../docs")
    wrong_method = gateway.get("/v1/predict")
    assert_error(wrong_method, 405, "UNIMPLEMENTED", "GET /v1/predict")
    assert wrong_method.headers["allow"] == "POST"  # what HTTP asks of a 405: the methods the path takes


def test_a_long_unknown_path_is_said_back_cut_short(gateway):
    path = "/v1/" + "x" * 12_000
    answer = gateway.get(path)
    assert_error(answer, 404, "NOT_FOUND", f"GET /v1/{'x' * 196}... (12,004 characters)", "described at ../docs")
    assert len(answer.body) < 1_000


# --------------------------------------------------------------------------------------------------------------
# Documentation and the page


def test_openapi_describes_every_endpoint_and_its_errors(gateway):
    spec = gateway.get("/openapi.json").json()
    paths = spec["paths"]
    assert {"/v1/predict", "/v1/predict/batch", "/v1/model", "/v1/evaluate", "/healthz", "/readyz"} <= set(paths)
    predict = paths["/v1/predict"]["post"]
    assert {"image/*", "application/octet-stream", "multipart/form-data"} <= set(predict["requestBody"]["content"])
    assert {"200", "400", "401", "413", "429", "503"} <= set(predict["responses"])
    assert "422" not in predict["responses"]  # validation errors are 400 here
    for path in ("/v1/predict", "/v1/predict/batch", "/v1/evaluate", "/v1/read-number"):  # ?model_version=
        assert "404" in paths[path]["post"]["responses"], path
    assert "application/json" in paths["/v1/evaluate"]["post"]["requestBody"]["content"]
    for path in ("/v1/predict", "/v1/predict/batch", "/v1/evaluate", "/v1/read-number"):  # bodies
        assert {"408", "413", "415", "502", "504"} <= set(paths[path]["post"]["responses"]), path
    for path in ("/v1/model", "/v1/models"):  # no body, so nothing too large
        assert "413" not in paths[path]["get"]["responses"] and "502" in paths[path]["get"]["responses"]
    # The bearer scheme is declared, so /docs has an Authorize button for a gateway started with --token.
    assert spec["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    assert predict["security"] == [{"HTTPBearer": []}]
    docs = gateway.get("/docs")
    assert docs.status == 200 and b"swagger" in docs.body.lower() and b"openapi.json" in docs.body


def test_every_answer_carries_the_security_headers_and_api_answers_are_not_cached(gateway):
    for path in ("/", "/docs", "/v1/model", "/v1/nothing", "/healthz", "/static/app.js"):
        headers = gateway.get(path).headers
        assert headers["x-content-type-options"] == "nosniff", path
        assert headers["x-frame-options"] == "DENY" and headers["referrer-policy"] == "no-referrer", path
    assert gateway.get("/v1/model").headers["cache-control"] == "no-store"
    page = gateway.get("/").headers
    assert page["cache-control"] == "no-cache" and "frame-ancestors 'none'" in page["content-security-policy"]


def test_the_probes_and_the_schema_are_not_cached_either(gateway):
    """Cache-Control: no-store was on answers under /v1/ alone: a cache between a prober and the gateway could
    answer "ready" for a gateway that was gone, and an old schema after a release."""
    for path in ("/healthz", "/readyz", "/openapi.json"):
        answer = gateway.get(path)
        assert answer.status == 200 and answer.headers.get("cache-control") == "no-store", (path, answer.headers)
    assert gateway.request("HEAD", "/healthz").headers.get("cache-control") == "no-store"


def test_a_host_the_gateway_does_not_answer_is_400_and_probes_are_exempt(web, backend):
    """DNS rebinding: a page of evil.example resolved to 127.0.0.1 is the gateway's own origin to the browser, but
    its requests say Host: evil.example."""
    gateway = web(target=backend.target, allowed_hosts=("localhost", "127.0.0.1", "[::1]"))
    evil = {"Host": "evil.example"}
    assert_error(gateway.get("/v1/model", headers=evil), 400, "INVALID_ARGUMENT", "evil.example", "--allowed-hosts")
    refused = gateway.post("/v1/evaluate", b"{}", "application/json", headers=evil)
    assert_error(refused, 400, "INVALID_ARGUMENT", "evil.example")
    assert refused.headers["x-frame-options"] == "DENY"
    assert gateway.get("/", headers=evil).status == 400
    # Kubernetes' httpGet probes send the pod's IP as the Host.
    assert gateway.get("/healthz", headers={"Host": "10.1.2.3:8080"}).status == 200
    assert gateway.get("/readyz", headers={"Host": "10.1.2.3:8080"}).status == 200
    for host in (f"localhost:{gateway.port}", f"127.0.0.1:{gateway.port}", "[::1]:8080", "LocalHost"):
        assert gateway.get("/v1/model", headers={"Host": host}).status == 200, host


def test_the_page_is_served_at_the_root_with_its_scripts_and_styles(gateway):
    page = gateway.get("/")
    assert page.status == 200 and page.headers["content-type"].startswith("text/html")
    assert b'<canvas id="pad"' in page.body
    assert "default-src 'self'" in page.headers["content-security-policy"]
    sizes = {"index.html": len(page.body)}
    for name, kind in (("app.js", "javascript"), ("app.css", "text/css")):
        answer = gateway.get(f"/static/{name}")
        assert answer.status == 200 and kind in answer.headers["content-type"], name
        sizes[name] = len(answer.body)
    # The budget: HTML, JS and CSS together at most 60 kB.
    assert sum(sizes.values()) <= 60_000, sizes


def test_the_page_sizes_docs_api_md_states_are_the_files_sizes():
    """The figures table said 4.7 + 25.1 + 7.3 = 37.0 kB, sizes of an older page, beside a bullet that said 45.3.
    Each figure is checked to within half a kB, so an edit of a few lines need not touch the docs at once."""
    static = REPO_ROOT / "inference" / "web" / "static"
    sizes = [(static / name).stat().st_size / 1000 for name in ("index.html", "app.js", "app.css")]
    docs = (REPO_ROOT / "docs" / "api.md").read_text()
    row = re.search(r"^\| HTML \+ JS \+ CSS .*?\| ([\d.]+) \+ ([\d.]+) \+ ([\d.]+) = \*\*([\d.]+) kB\*\*", docs, re.M)
    bullet = re.search(r"no build step, ([\d.]+) kB together", docs)
    assert row and bullet, "docs/api.md no longer states the page's sizes where this test looks"
    *stated, total = (float(figure) for figure in row.groups())
    for name, said, measured in zip(("index.html", "app.js", "app.css"), stated, sizes, strict=True):
        assert abs(said - measured) <= 0.5, f"docs/api.md says {name} is {said} kB; it is {measured:.1f} kB"
    assert abs(total - sum(sizes)) <= 0.5 and float(bullet.group(1)) == total, (total, bullet.group(1), sum(sizes))


def test_the_page_asks_for_its_api_and_files_relative_to_itself(gateway):
    """A reverse proxy may serve the gateway under a prefix (https://host/mnist/), which a path from the host's
    root ("/v1/model") leaves. test_browser.py loads the page through such a proxy; this covers every path the page
    names, the Evaluate tab's too, where there is no browser."""
    script, page = gateway.get("/static/app.js").body.decode(), gateway.get("/").body.decode()
    named = re.findall(r"[\"'`](/?(?:v1|static|docs)\b[^\"'`]*)", script) + re.findall(r'(?:href|src)="([^"]*)"', page)
    assert {"v1/evaluate", "v1/model", "static/app.js", "docs"} <= set(named), named
    assert [path for path in named if path.startswith("/")] == []


def test_the_docs_and_their_calls_stay_under_the_prefix_a_proxy_serves_the_gateway_at(gateway, digit_pngs):
    """Behind a proxy serving the gateway at https://host/mnist/, /docs fetched its schema from /openapi.json and
    "Try it out" called /v1/..., both from the host's root, past the prefix: the docs showed no API. Followed here
    as the browser and Swagger UI follow them (Swagger UI's script comes from a CDN, out of a test's reach): the
    schema's URL against the page's; a call's against the schema's first server (OpenAPI's default, "/", when it
    names none), itself relative to the schema's URL, without its trailing slash, then the operation's path."""
    with PrefixProxy(gateway.port, "/mnist") as proxy:
        for page, names_the_schema in (("docs", r"url: '([^']*)'"), ("redoc", r'spec-url="([^"]*)"')):
            page_url = f"{proxy.url}/mnist/{page}"
            answer = fetch(page_url)
            assert answer.status == 200, page
            named = re.search(names_the_schema, answer.body.decode())
            assert named, answer.body.decode()
            schema_url = urljoin(page_url, named.group(1))
            schema = fetch(schema_url)
            assert schema.status == 200, (page, schema_url)
        servers = schema.json().get("servers") or [{"url": "/"}]
        base = urljoin(schema_url, servers[0]["url"]).rstrip("/")
        model = fetch(base + "/v1/model")
        assert model.status == 200 and model.json()["serving"] is True, (base, model.status)
        assert fetch(base + "/readyz").status == 200
        predicted = fetch(base + "/v1/predict", "POST", digit_pngs[0][1], {"Content-Type": "image/png"})
        assert predicted.status == 200 and "digit" in predicted.json(), predicted.body[:300]
        assert proxy.outside == [], "the docs asked for paths outside the prefix the gateway is served under"


def test_an_unknown_path_or_method_names_the_docs_under_the_prefix_a_proxy_serves_the_gateway_at(gateway):
    """The 404 and 405 messages said "the API is described at /docs", which behind https://host/mnist/ is
    https://host/docs, outside the gateway. Followed here as the message's reader follows it: against the URL asked,
    at every depth, after dot segments (which the client removes as it resolves the reference), and past a %2F,
    which is no directory to the client."""
    with PrefixProxy(gateway.port, "/mnist") as proxy:
        for method, path, status in (
            ("GET", "/nothing", 404),
            ("GET", "/v1/nothing", 404),
            ("GET", "/v1/predict", 405),
            ("POST", "/v1/model/info/more", 404),
            ("GET", "/v1/../nothing", 404),
            ("GET", "/v1%2Fnothing", 404),
        ):
            url = f"{proxy.url}/mnist{path}"
            message = assert_error(fetch(url, method), status, "NOT_FOUND" if status == 404 else "UNIMPLEMENTED")
            named = re.search(r"described at (\S+) from this URL", message)
            assert named, message
            docs_url = urljoin(url, named.group(1))
            assert docs_url == f"{proxy.url}/mnist/docs", (path, message)
            docs = fetch(docs_url)
            assert docs.status == 200 and b"swagger" in docs.body.lower(), path
        assert proxy.outside == []


def test_a_path_with_an_empty_segment_is_told_to_use_single_slashes_and_where_the_docs_are_from_there(gateway):
    """The 404 named the docs from a path with '//' by counting the empty segment as a directory ('../../docs' from
    /mnist/v1//nothing), as browsers resolve it; Python's urljoin drops the segment first and went to the host's
    /docs, outside the prefix: no reference from such a URL leads every client to the docs. The message says to send
    the path with single slashes, and names the docs from that URL, where urljoin and browsers agree (they differ
    only across empty segments)."""
    with PrefixProxy(gateway.port, "/mnist") as proxy:
        for path in ("/v1//model", "//nothing", "/v1//nothing", "/docs//", "/v1/..//nothing", "/v1/nothing//x"):
            url, single = f"{proxy.url}/mnist{path}", f"{proxy.url}/mnist{re.sub('/{2,}', '/', path)}"
            message = assert_error(fetch(url), 404, "NOT_FOUND")
            named = re.search(r"described at (\S+) from (this|that) URL", message)
            assert named, message
            docs_url = urljoin(url if named.group(2) == "this" else single, named.group(1))
            assert docs_url == f"{proxy.url}/mnist/docs", (path, message)
            assert "send it with single slashes" in message and named.group(2) == "that", message
            assert fetch(docs_url).status == 200, path
        assert proxy.outside == []


def test_a_path_with_trailing_slashes_is_redirected_to_the_path_without_them_under_the_prefix(gateway, digit_pngs):
    """Starlette redirected /docs/ to a whole URL from the host's root, the gateway's own address
    (http://127.0.0.1:<its port>/docs here, behind https://host/mnist/ the host's /docs), outside the prefix the proxy
    serves the gateway at. Followed here as a client follows a Location: against the URL asked, with the method and
    body kept (307), every step under the prefix. Not redirected: an encoded slash (%2F), no slash to the client,
    which would resolve '../docs' from /mnist/docs%2F to /docs; and several slashes, which clients resolve apart."""
    png = digit_pngs[0][1]
    with PrefixProxy(gateway.port, "/mnist") as proxy:
        under = f"{proxy.url}/mnist/"

        def follow(path: str, method: str = "GET", body: bytes | None = None, headers: dict | None = None):
            url = under + path
            answer = fetch(url, method, body, headers)
            assert answer.status == 307, (path, answer.status, answer.body[:300])
            url = urljoin(url, answer.headers["location"])
            assert url.startswith(under), (path, answer.headers["location"])
            return url, fetch(url, method, body, headers)

        for path, page in (("docs/", "docs"), ("redoc/", "redoc"), ("docs/?from=a-link", "docs?from=a-link")):
            url, answer = follow(path)
            assert url == under + page and answer.status == 200, (path, url, answer.status)
        url, model = follow("v1/model/")
        assert url == under + "v1/model" and model.status == 200 and model.json()["serving"] is True
        url, predicted = follow("v1/predict/", "POST", png, {"Content-Type": "image/png"})
        assert url == under + "v1/predict" and predicted.status == 200 and "digit" in predicted.json()
        assert_error(fetch(under + "docs%2F"), 404, "NOT_FOUND")
        # Python's urljoin (which requests follows a Location with) resolves '../../docs' from /mnist/docs// to /docs.
        assert_error(fetch(under + "docs//"), 404, "NOT_FOUND")
        assert_error(fetch(under + "v1/nothing/"), 404, "NOT_FOUND")  # no path to send it to
        assert proxy.outside == []


# --------------------------------------------------------------------------------------------------------------
# Model versions: listed, and pinned per call


def test_models_lists_the_published_versions_and_calls_can_pin_one(web, serve, tmp_path, digit_pngs):
    from shared.checkpoint import publish_model
    from shared.settings import Paths

    from tests.inference.helpers import model_payload

    models = Paths(tmp_path / "artifacts").models
    publish_model(models, version="v1", model_payload=model_payload(1))
    publish_model(models, version="v2", model_payload=model_payload(2), serve=False)  # kept, not served
    backend = serve(tmp_path / "artifacts")
    gateway = web(target=backend.target, timeout=10)

    listed = gateway.get("/v1/models").json()
    assert listed["served_version"] == "v1"
    assert {m["version"]: m["served"] for m in listed["models"]} == {"v1": True, "v2": False}
    expected = backend.stub.ListModels(pb.ListModelsRequest(), timeout=10)
    assert [m["sha256"] for m in listed["models"]] == [m.sha256 for m in expected.models]

    png = digit_pngs[0][1]
    for version in ("v1", "v2"):
        grpc_answer = backend.stub.Predict(pb.PredictRequest(image=png, model_version=version), timeout=10)
        got = gateway.post(f"/v1/predict?model_version={version}", png).json()
        assert got["model_version"] == version
        assert got["probabilities"] == list(grpc_answer.prediction.probabilities)
        batch = gateway.post_files(f"/v1/predict/batch?model_version={version}", [("file", png)]).json()
        assert batch["model_version"] == version
    assert gateway.post("/v1/predict", png).json()["model_version"] == "v1"  # no pin: the served one
    evaluation = gateway.post("/v1/evaluate", b'{"model_version": "v2", "heatmap": false}', "application/json")
    assert evaluation.status == 200 and evaluation.json()["model_version"] == "v2"
    assert_error(gateway.post("/v1/predict?model_version=v9", png), 404, "NOT_FOUND", "'v9' is not published")


def test_too_many_file_parts_is_413_before_the_service_is_asked(gateway):
    answer = gateway.post_files("/v1/predict/batch", [("files", b"x")] * 4097)
    assert_error(answer, 413, "RESOURCE_EXHAUSTED", "more than 4,096 files", "several requests")


def test_a_text_field_where_an_image_file_was_meant_is_400(gateway, digit_pngs):
    body, content_type = multipart([("files", digit_pngs[0][1])])
    boundary = content_type.split("boundary=")[1]
    # curl -F 'files=<a.png' sends the file's bytes as a text field: said, not read as an empty batch.
    text = f'--{boundary}\r\nContent-Disposition: form-data; name="files"\r\n\r\nabc\r\n'.encode() + body
    for path in ("/v1/predict/batch", "/v1/predict"):
        assert_error(gateway.post(path, text, content_type), 400, "INVALID_ARGUMENT", "text field 'files'", "file part")


def test_a_multipart_body_cut_before_its_closing_boundary_is_400_not_one_image_fewer(gateway, digit_pngs):
    body, content_type = multipart([("files", png) for _, png, _ in digit_pngs[:3]])
    boundary = content_type.split("boundary=")[1]
    cut = body[: body.rindex(f"--{boundary}--".encode())]  # three whole parts, no closing delimiter
    for path in ("/v1/predict/batch", "/v1/predict"):
        assert_error(gateway.post(path, cut, content_type), 400, "INVALID_ARGUMENT", "closing boundary", "cut short")
    answer = gateway.post("/v1/predict/batch", body, content_type)  # the whole body: three results
    assert answer.status == 200 and len(answer.json()["results"]) == 3


def test_a_closing_boundary_that_is_not_at_a_line_start_is_400_not_one_image_fewer(gateway, digit_pngs):
    """A delimiter counts only at the body's start or right after a CRLF (RFC 2046): '--BOUNDARY--' glued to the
    last image's bytes is part of that image, so the last part never ends and the parser dropped it: 200 with two
    results for three images."""
    body, content_type = multipart([("files", png) for _, png, _ in digit_pngs[:3]])
    close = f"--{content_type.split('boundary=')[1]}--".encode()
    last_part_open = body[: body.rindex(close) - 2]  # without the CRLF that ends the third image
    for sent in (last_part_open + close + b"\r\n", last_part_open[:-100] + close):  # the second cut in the image
        for path in ("/v1/predict/batch", "/v1/predict"):
            assert_error(gateway.post(path, sent, content_type), 400, "INVALID_ARGUMENT", "closing boundary")


def test_a_part_opened_before_the_closing_boundary_and_not_finished_by_the_parser_is_a_lost_image():
    """The second guard against one image fewer: however the parser came to drop a part, more parts opened before
    the closing delimiter than it finished is refused. Counted as the parser reads a delimiter (at the body's
    start, or after a CRLF, with optional blanks before its CRLF); a line that starts with the boundary and goes
    on is data."""
    from inference.web.app import all_parts_finished

    part = b'Content-Disposition: form-data; name="files"; filename="a"\r\n\r\nDATA\r\n--Bx\r\n'
    body = b"--B\r\n" + part + b"--B \t\r\n" + part + b"--B\r\n" + part + b"--B--\r\n--B\r\n"  # epilogue
    close = body.rindex(b"\r\n--B--")
    assert all_parts_finished(body, b"B", close, 3)
    assert not all_parts_finished(body, b"B", close, 2)
    assert not all_parts_finished(body, b"B", close, 0)


def test_headers_grpc_metadata_cannot_carry_are_the_callers_error(gateway, digit_pngs):
    png = digit_pngs[0][1]
    # A short id that is not printable ASCII was told it was too long ("send a shorter id").
    refused = gateway.post("/v1/predict", png, headers={"X-Request-ID": "caf\u00e9"})
    assert "shorter" not in assert_error(refused, 400, "INVALID_ARGUMENT", "X-Request-ID must be printable ASCII")
    assert_error(
        gateway.post("/v1/predict", png, headers={"X-Request-ID": "r" * 10_000}), 400, "INVALID_ARGUMENT", "at most"
    )
    assert_error(
        gateway.post("/v1/predict", png, headers={"Authorization": "Bearer p\u00e4ss"}),
        401,
        "UNAUTHENTICATED",
        "printable ASCII",
    )
    assert gateway.post("/v1/predict", png, headers={"X-Request-ID": "r" * 128}).status == 200


def test_an_authorization_header_longer_than_grpc_metadata_takes_is_431_naming_it_never_429(gateway, digit_pngs):
    """gRPC refuses a call whose metadata is over 16 KiB, and one over 8 KiB at random, with RESOURCE_EXHAUSTED:
    a 20,000-character Authorization came back as 429 with Retry-After: 1, and a client that obeyed it sent the
    same request forever. The gateway bounds what it passes on, before the call, and says which header."""
    from inference.web.app import MAX_AUTHORIZATION_CHARS

    png = digit_pngs[0][1]
    for length in (20_000, MAX_AUTHORIZATION_CHARS - len("Bearer ") + 1):
        answer = gateway.post("/v1/predict", png, headers={"Authorization": "Bearer " + "a" * length})
        assert_error(answer, 431, "RESOURCE_EXHAUSTED", "Authorization header", f"at most {MAX_AUTHORIZATION_CHARS:,}")
        assert "retry-after" not in answer.headers
    # Up to the bound it is passed on (this service wants no token, so any is taken).
    at_most = "Bearer " + "a" * (MAX_AUTHORIZATION_CHARS - len("Bearer "))
    assert gateway.post("/v1/predict", png, headers={"Authorization": at_most}).status == 200


def test_readiness_is_answered_at_once_while_calls_wait_on_a_service_that_is_down(web, digit_pngs):
    """Calls to a service that is down wait out their deadline (waitForReady) on the gateway's threads; the
    readiness probe has threads of its own, and a call that queued for a thread counts the wait in its deadline."""
    # Long enough that a probe stuck behind the calls would show, on a loaded 2-core machine too; and that the
    # margin below (measured: 0.6-2 s past it, under load) stays well short of a second deadline (a queued call
    # that did not count its wait would take two).
    deadline = 6.0
    gateway = web(target=f"127.0.0.1:{free_port()}", timeout=deadline, unreachable_grace=60)
    calls = 45  # more than the threads calls may hold (CALL_THREADS)
    with ThreadPoolExecutor(calls) as pool:
        started = time.monotonic()
        waiting = [pool.submit(gateway.post, "/v1/predict", digit_pngs[0][1]) for _ in range(calls)]
        time.sleep(0.5)  # the calls hold every thread
        probe_started = time.monotonic()
        assert_error(gateway.get("/readyz"), 503, "UNAVAILABLE", "not ready")
        assert time.monotonic() - probe_started < deadline / 2
        answers = [w.result() for w in waiting]
        elapsed = time.monotonic() - started
    assert {a.status for a in answers} == {504}
    assert elapsed < deadline + 4.0, f"calls took {elapsed:.1f} s against a {deadline:g} s deadline"


def test_a_caller_that_leaves_cancels_its_call_on_the_service(gateway, monkeypatch):
    """An Evaluate whose HTTP caller closes the connection is cancelled on the gRPC service, which then stops
    (the service's should_stop turns true), rather than work on for nobody while holding the evaluation slot."""
    import inference.service

    entered, stopped = threading.Event(), threading.Event()

    def held(*args, should_stop, **kwargs):
        entered.set()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if should_stop():
                stopped.set()
                return None
            time.sleep(0.05)
        return None

    monkeypatch.setattr(inference.service, "evaluate_model", held)
    body = b'{"heatmap": false}'
    with socket.create_connection(("127.0.0.1", gateway.port)) as caller:
        caller.sendall(
            b"POST /v1/evaluate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        assert entered.wait(10)
    assert stopped.wait(5), "the service went on evaluating for a caller that had left"


def test_request_bodies_in_flight_together_stay_within_the_gateways_budget(web, backend, digit_pngs):
    """Each body is capped, and so are all of them together: a request whose body would take the gateway past
    --max-inflight-bytes gets 429 with Retry-After before it is read; the budget comes back when a request ends."""
    gateway = web(target=backend.target, max_body_bytes=50_000, max_inflight_bytes=60_000)
    body = bad_inputs.oversized_bytes(digit_pngs[0][2], 40_000)
    answer = None
    for _attempt in range(5):  # a call that arrives before the slow body is counted takes the budget first: again
        with socket.create_connection(("127.0.0.1", gateway.port)) as slow:
            # A chunked body, 40,000 bytes sent and the rest never: the gateway holds what arrived.
            slow.sendall(
                b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nTransfer-Encoding: chunked\r\n\r\n"
                + f"{len(body):x}\r\n".encode()
                + body
                + b"\r\n"
            )
            time.sleep(0.3)
            answer = gateway.post("/v1/predict", body)
            if answer.status == 429:
                break
    assert answer is not None
    assert_error(answer, 429, "RESOURCE_EXHAUSTED", "60,000 bytes of request bodies in flight", "try again")
    assert answer.headers["retry-after"] == "1"
    deadline = time.monotonic() + 10
    while (answer := gateway.post("/v1/predict", body)).status == 429 and time.monotonic() < deadline:
        time.sleep(0.05)  # the slow request ends when its caller leaves, and gives its bytes back
    assert answer.status == 200, answer.body[:300]


def test_connections_that_declare_a_body_and_send_none_do_not_lock_the_gateway_out(
    web, backend, digit_pngs, monkeypatch
):
    """Only bytes that arrived count against --max-inflight-bytes: four connections that declared 32 MiB each and
    sent nothing held the whole budget, and every image route answered 429 while they stayed open. A body that
    stops arriving ends its request with 408."""
    from inference.web import app as web_app

    monkeypatch.setattr(web_app, "BODY_STALL_SECONDS", 1.0)
    gateway = web(target=backend.target, max_body_bytes=50_000, max_inflight_bytes=60_000)
    body = digit_pngs[0][1]
    idle = [socket.create_connection(("127.0.0.1", gateway.port)) for _ in range(4)]
    try:
        for connection in idle:
            connection.sendall(
                b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: 50000\r\n\r\nab"
            )
        time.sleep(0.3)
        answer = gateway.post("/v1/predict", body)
        assert answer.status == 200, answer.body[:300]
        idle[0].settimeout(10)
        stalled = ""
        while not stalled.endswith("}"):  # within a second or so of the last byte
            stalled += idle[0].recv(4096).decode("latin-1")
        assert stalled.startswith("HTTP/1.1 408"), stalled[:200]
        assert "no byte of the request body arrived for 1 s" in stalled
    finally:
        for connection in idle:
            connection.close()


class _Unavailable(grpc.RpcError):
    """An UNAVAILABLE call, as the service answers it (its request id in the trailing metadata) or as a failed
    connection does (no metadata)."""

    def __init__(self, details: str, answered: bool) -> None:
        self._details, self._answered = details, answered

    def code(self):
        return grpc.StatusCode.UNAVAILABLE

    def details(self):
        return self._details

    def trailing_metadata(self):
        return (("x-request-id", "r1"),) if self._answered else ()


def test_the_services_own_unavailable_is_not_reported_as_cannot_reach_it():
    """The service answers UNAVAILABLE when its published model fails the checks, with a message that may say
    "Failed to load": the gateway told users it could not reach the service. Only a call the service never
    answered is about reaching it (inference.channel.reached_server, as the client decides)."""
    from inference.web.app import Backend, WebOptions

    backend = Backend(WebOptions(target="localhost:1"))
    try:
        own = "no model can be served: the published model v2 fails the checks (Failed to load model)"
        assert backend.describe(_Unavailable(own, answered=True), 10) == own
        refused = backend.describe(_Unavailable("failed to connect to all addresses", answered=False), 10)
        assert refused.startswith("cannot reach the inference service")
    finally:
        backend.close()

"""The access log over a real channel: one line per call with its fields, and the request id that ties a call's
lines together, taken from the caller when sane, made up otherwise, and returned in the response metadata."""

from __future__ import annotations

import io
import json
import logging
import re
import time

import grpc
import pytest

from shared.api.mnist.v1 import inference_pb2 as pb

from inference.access_log import (
    DEADLINE_TRANSIT_ALLOWANCE,
    DEADLINE_TRANSIT_SHARE,
    REQUEST_ID_KEY,
    RequestIdFilter,
)
from inference.logs import JsonFormatter, TextFormatter

MADE_UP = re.compile(r"[0-9a-f]{32}")


@pytest.fixture
def access_lines(caplog):
    """The access log's records (logger inference.access) of this test, with their fields."""
    caplog.set_level(logging.INFO)
    caplog.handler.addFilter(RequestIdFilter())
    return lambda: [r for r in caplog.records if r.name == "inference.access"]


def returned_id(call) -> str:
    ids = [value for key, value in call.trailing_metadata() if key == REQUEST_ID_KEY]
    assert len(ids) == 1, call.trailing_metadata()
    return ids[0]


def test_a_sane_request_id_is_returned_and_written_in_the_access_line(module_server, digit_pngs, access_lines):
    png = digit_pngs[0][1]
    _, call = module_server.stub.Predict.with_call(
        pb.PredictRequest(image=png), timeout=10, metadata=((REQUEST_ID_KEY, "req-42.a:b_c"),)
    )
    assert returned_id(call) == "req-42.a:b_c"
    (line,) = [r for r in access_lines() if r.access["request_id"] == "req-42.a:b_c"]
    fields = line.access
    assert fields["method"] == "Predict" and fields["code"] == "OK"
    assert fields["image_bytes"] == len(png) and fields["images"] == 1
    assert fields["model_version"] == "v1"
    assert fields["peer"].startswith(("ipv4:127.0.0.1:", "ipv6:"))
    assert fields["latency_ms"] > 0
    assert "request_id=req-42.a:b_c" in line.getMessage()


@pytest.mark.parametrize(
    "supplied",
    [
        "has space",
        "a" * 129,
        "<script>alert(1)</script>",
        "../../etc/passwd",
        "-leading-dash",
        "semi;colon",
        'quote"d',
        '{"json": 1}',
        "%0d%0aforged=1",
    ],
)
def test_a_malformed_request_id_is_replaced_not_echoed(module_server, digit_pngs, access_lines, caplog, supplied):
    _, call = module_server.stub.Predict.with_call(
        pb.PredictRequest(image=digit_pngs[0][1]), timeout=10, metadata=((REQUEST_ID_KEY, supplied),)
    )
    replaced = returned_id(call)
    assert replaced != supplied and MADE_UP.fullmatch(replaced)
    assert [r.access["request_id"] for r in access_lines()] == [replaced]
    assert supplied not in caplog.text


def test_a_call_without_a_request_id_gets_a_new_one_each_time(module_server, digit_pngs, access_lines):
    ids = []
    for _ in range(2):
        _, call = module_server.stub.Predict.with_call(pb.PredictRequest(image=digit_pngs[0][1]), timeout=10)
        ids.append(returned_id(call))
    assert all(MADE_UP.fullmatch(i) for i in ids) and ids[0] != ids[1]
    assert [r.access["request_id"] for r in access_lines()] == ids


def test_a_refused_call_has_one_access_line_and_its_other_lines_carry_the_same_id(module_server, access_lines, caplog):
    with pytest.raises(grpc.RpcError) as e:
        module_server.stub.Predict.with_call(
            pb.PredictRequest(image=b"not a picture"), timeout=10, metadata=((REQUEST_ID_KEY, "bad-image-1"),)
        )
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert dict(e.value.trailing_metadata())[REQUEST_ID_KEY] == "bad-image-1"
    (line,) = access_lines()
    assert line.access["code"] == "INVALID_ARGUMENT" and line.access["image_bytes"] == len(b"not a picture")
    about_the_call = [r for r in caplog.records if r.name != "inference.access"]
    assert about_the_call and {r.request_id for r in about_the_call} == {"bad-image-1"}


def test_a_call_that_finished_after_its_deadline_is_not_logged_ok(
    serve, tmp_path, digit_pngs, access_lines, monkeypatch
):
    """Predict looks for a departed caller only before decoding: one whose deadline passed during the forward
    pass got DEADLINE_EXCEEDED, and the access line (and the metrics) said OK."""
    from tests.inference.helpers import publish

    publish(tmp_path / "artifacts", "v1", seed=1)
    line = access_line_of_a_call_held_past_its_deadline(
        serve(), monkeypatch, access_lines, "digit_log_probs", "Predict", pb.PredictRequest(image=digit_pngs[0][1])
    )
    assert line.access["code"] == "DEADLINE_EXCEEDED"
    assert 0 <= line.access["deadline_left_ms"] <= DEADLINE_TRANSIT_ALLOWANCE * 1e3


def access_line_of_a_call_held_past_its_deadline(running, monkeypatch, access_lines, held: str, method: str, request):
    """The access line of `method` called with `request` and a 1 s timeout while the service holds it in `held` (a
    name in inference.service): its caller gets DEADLINE_EXCEEDED, and the call is released 0.3 s later. The caller
    has gone when its own deadline passes, but the server learns it a moment later (the cancel's transit): released
    before that, the handler answers first and the line says OK, as gRPC saw it. Held until the server has seen the
    caller leave, the line goes by when the caller left (DEADLINE_TRANSIT_ALLOWANCE); the server's own deadline has
    passed by then too, and the line does not depend on it."""
    import inference.service as service
    from tests.inference.helpers import hold_calls, wait_until

    entered, release = hold_calls(monkeypatch, service, held)
    with pytest.raises(grpc.RpcError) as e:
        getattr(running.stub, method)(request, timeout=1.0)
    assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED and entered.is_set()
    time.sleep(0.3)
    release.set()
    assert wait_until(lambda: any(r.access["method"] == method for r in access_lines()), timeout=10)
    (line,) = [r for r in access_lines() if r.access["method"] == method]
    return line


def test_a_caller_that_cancels_is_logged_cancelled_even_when_the_call_ends_after_its_deadline(
    serve, tmp_path, digit_pngs, access_lines, monkeypatch
):
    """The line's code was taken from the server's deadline as the handler ended: a caller that cancelled 0.7 s
    before its deadline, its call held past it, was logged DEADLINE_EXCEEDED."""
    import inference.service as service
    from tests.inference.helpers import hold_calls, publish, wait_until

    publish(tmp_path / "artifacts", "v1", seed=1)
    running = serve()
    entered, release = hold_calls(monkeypatch, service, "digit_log_probs")
    call = running.stub.Predict.future(pb.PredictRequest(image=digit_pngs[0][1]), timeout=1.0)
    assert entered.wait(10)
    call.cancel()
    time.sleep(1.3)  # past the deadline
    release.set()
    assert wait_until(lambda: any(r.access["method"] == "Predict" for r in access_lines()), timeout=10)
    (line,) = [r for r in access_lines() if r.access["method"] == "Predict"]
    assert line.access["code"] == "CANCELLED"
    assert line.access["deadline_left_ms"] > DEADLINE_TRANSIT_ALLOWANCE * 1e3  # it left well before its deadline


def test_a_caller_with_a_timeout_shorter_than_the_transit_allowance_that_cancels_is_logged_cancelled(
    serve, tmp_path, digit_pngs, access_lines, monkeypatch
):
    """A caller is taken to have left at its deadline when it left within DEADLINE_TRANSIT_ALLOWANCE of the server's
    deadline: with a timeout no longer than that, every cancel did, and a call cancelled at once (0.24 s left of
    its 0.25 s) was logged and counted DEADLINE_EXCEEDED. The allowance is a share of a short timeout."""
    import inference.service as service
    from tests.inference.helpers import hold_calls, publish, wait_until

    publish(tmp_path / "artifacts", "v1", seed=1)
    running = serve()
    running.stub.Predict(pb.PredictRequest(image=digit_pngs[0][1]), timeout=10)  # warm: the held call starts at once
    entered, release = hold_calls(monkeypatch, service, "digit_log_probs")
    timeout = DEADLINE_TRANSIT_ALLOWANCE
    call = running.stub.Predict.future(pb.PredictRequest(image=digit_pngs[0][1]), timeout=timeout)
    assert entered.wait(10)
    call.cancel()
    time.sleep(0.1)  # for the cancel to reach the server: a call answered first was never left
    release.set()
    assert wait_until(lambda: sum(r.access["method"] == "Predict" for r in access_lines()) == 2, timeout=10)
    line = [r for r in access_lines() if r.access["method"] == "Predict"][-1]
    assert line.access["deadline_left_ms"] > DEADLINE_TRANSIT_SHARE * timeout * 1e3, "the call was not held at once"
    assert line.access["code"] == "CANCELLED"


def test_a_call_whose_deadline_passed_is_logged_so_when_the_servicer_stops_it_as_cancelled(
    serve, tmp_path, digit_pngs, access_lines, monkeypatch
):
    """ReadNumber stops a call whose caller has gone after decoding, with CANCELLED ("deadline passed or
    cancelled": gRPC tells the servicer no more), and the line said CANCELLED for a caller whose deadline passed."""
    from tests.inference.helpers import publish

    publish(tmp_path / "artifacts", "v1", seed=1)
    line = access_line_of_a_call_held_past_its_deadline(
        serve(), monkeypatch, access_lines, "decode_image", "ReadNumber", pb.ReadNumberRequest(image=digit_pngs[0][1])
    )
    assert line.access["code"] == "DEADLINE_EXCEEDED"
    assert 0 <= line.access["deadline_left_ms"] <= DEADLINE_TRANSIT_ALLOWANCE * 1e3


def test_the_services_own_refusal_is_answered_once_not_retried_by_a_clients_channel(serve, tmp_path, access_lines):
    """Every answer of the service comes with its status only (no headers first, so that a call cut off by a crash
    is retried), and a client's retryPolicy retries UNAVAILABLE: "no model is published yet" was asked five times
    (1.6 s, five access lines under five ids) before its caller heard it. The service's own answers tell clients
    not to retry (grpc-retry-pushback-ms)."""
    from shared.api.mnist.v1 import inference_pb2_grpc

    from inference.channel import make_channel

    running = serve(tmp_path / "nothing published")
    channel = make_channel(f"127.0.0.1:{running.port}")
    try:
        with pytest.raises(grpc.RpcError) as e:
            inference_pb2_grpc.InferenceStub(channel).Predict(pb.PredictRequest(image=b"x"), timeout=30)
    finally:
        channel.close()
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE and "no model" in e.value.details()
    # Asked once: one access line (a retried call writes one per try, each under its own id).
    assert [r.access["code"] for r in access_lines() if r.access["method"] == "Predict"] == ["UNAVAILABLE"]


def test_the_json_format_has_the_access_fields_as_keys(module_server, digit_pngs):
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.addHandler(handler)
    level = root.level
    root.setLevel(logging.INFO)
    try:
        module_server.stub.PredictBatch(
            pb.PredictBatchRequest(images=[digit_pngs[0][1], b""]), timeout=10, metadata=((REQUEST_ID_KEY, "batch-7"),)
        )
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
    entries = [json.loads(line) for line in stream.getvalue().splitlines()]
    (access,) = [e for e in entries if e["logger"] == "inference.access"]
    assert access["method"] == "PredictBatch" and access["code"] == "OK" and access["images"] == 2
    assert access["request_id"] == "batch-7" and access["model_version"] == "v1"
    assert {"time", "level", "latency_ms", "image_bytes", "peer"} <= access.keys()
    # The bad image's own line (logged by the servicer during the call) carries the call's id too.
    assert any(e["request_id"] == "batch-7" and e["logger"] != "inference.access" for e in entries)


def test_the_text_format_ends_a_line_about_a_call_with_its_id():
    record = logging.LogRecord("inference.service", logging.INFO, __file__, 1, "Predict -> INVALID_ARGUMENT", (), None)
    record.request_id = "abc"
    assert TextFormatter().format(record).endswith("Predict -> INVALID_ARGUMENT request_id=abc")


def test_an_access_line_without_a_deadline_left_says_null_in_json_and_a_dash_in_text():
    """deadline_left_ms is a number when the caller left and was "" otherwise: a JSON collector that types a field by
    its values (most lines) took it for a string, and numeric queries on it failed. It is null now."""
    from inference.access_log import CallRecord, format_text

    fields = CallRecord(request_id="r1", method="Predict", peer="ipv4:127.0.0.1:1").fields(grpc.StatusCode.OK)
    record = logging.LogRecord("inference.access", logging.INFO, __file__, 1, "access", (), None)
    record.access, record.request_id = fields, "r1"
    assert json.loads(JsonFormatter().format(record))["deadline_left_ms"] is None
    assert " deadline_left_ms=- " in f" {format_text(fields)} "

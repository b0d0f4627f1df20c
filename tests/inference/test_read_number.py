"""ReadNumber through the real gRPC service, with the default network really trained (the session's model).

The numbers are made by testkit/numbers.py from MNIST *test* digits in the seven drawn styles of
testkit/user_images.py: 4 to 8 digits with wide, narrow or touching gaps, baseline jitter, sizes and slant. They are
made once per module; every test reads them through the RPC, so the test functions take seconds.
"""

from __future__ import annotations

import argparse
import io
import logging
import time
import types

import cv2
import grpc
import numpy as np
import pytest
from PIL import Image

from shared.api.mnist.v1 import inference_pb2 as pb
from shared.budget import BudgetExhausted
from shared.decode import ImageRejected
from shared.image_pipeline import decode_image, trace_pipeline

from inference import service
from testkit.number_scores import format_scores, grpc_reader, score_by_style, score_numbers
from testkit.numbers import cached_numbers, lines_picture, make_numbers
from testkit.user_images import make_printed_digits, make_user_images
from tests.inference.helpers import in_flight, png_bytes

# Numbers per style: 7 styles x 40 = 280 numbers (about 1,700 digits) per layout, enough that one number is
# 0.36 points and sampling noise stays near 2 points at 85 %.
PER_STYLE = 40
SEED = 0
# Floors, below the targets (bench/bench_read_number.py: 97 % and 99 % apart, 85 % touching), which this
# model does not all reach on these numbers. Measured (stop 25, the tests' model trained on the AMD machine): 94.6 %
# whole and 99.05 % of digits apart, 86.1 % touching (85.7 % with stop 23's model on the Intel machine, before the
# digit score counted in the cuts). Apart, most misses are misread digits: with every digit found exactly (nothing
# cut), 8 of 1,000 drawn MNIST test digits are still misread, and a number of 4-8 digits holds one of them 4-6 % of
# the time. Segmentation's own errors (a wrong digit count) are held to 2 % of numbers apart. See docs/pipeline.md,
# "Reading whole numbers".
APART_WHOLE_FLOOR = 0.93
APART_DIGIT_FLOOR = 0.985
APART_WRONG_COUNT_CEILING = 0.02
TOUCHING_WHOLE_FLOOR = 0.82
# Numbers written in dots (4 styles x 6): 12 of 24 read whole with the tests' model of stop 59, 1 before it (stop 58's
# closing, on dots drawn a brush wide); no more than 3 with a wrong digit count (15 before).
DOTTED_WHOLE = 0.4


@pytest.fixture(scope="module")
def mnist_test(mnist):
    return mnist.test_images.numpy(), mnist.test_labels.numpy()


@pytest.fixture(scope="module")
def apart_numbers(mnist_test):
    return cached_numbers(*mnist_test, per_style=PER_STYLE, seed=SEED, layout="apart")


@pytest.fixture(scope="module")
def touching_numbers(mnist_test):
    return cached_numbers(*mnist_test, per_style=PER_STYLE, seed=SEED, layout="touching")


@pytest.fixture(scope="module")
def apart_responses(trained_server, apart_numbers):
    """Every apart number read once through the RPC: (response or None if refused) per number."""
    return in_flight(lambda data: read_or_none(trained_server.stub, data), [n.data for n in apart_numbers])


def read_or_none(stub, data: bytes):
    try:
        return stub.ReadNumber(pb.ReadNumberRequest(image=data), timeout=30)
    except grpc.RpcError as e:
        assert e.code() == grpc.StatusCode.INVALID_ARGUMENT, e.details()
        return None


def read_error(stub, data: bytes) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        stub.ReadNumber(pb.ReadNumberRequest(image=data), timeout=30)
    return caught.value


# ---------------------------------------------------------------------------------------------------------------
# Accuracy


def test_numbers_written_apart_are_read_digit_by_digit(apart_numbers, apart_responses):
    read = [r.digits if r is not None else None for r in apart_responses]
    scores = score_by_style("apart", apart_numbers, read)
    total = scores[-1]
    print("\n" + format_scores(scores))
    assert total.numbers == 7 * PER_STYLE
    assert total.digit_accuracy >= APART_DIGIT_FLOOR, format_scores(scores)
    assert total.whole_accuracy >= APART_WHOLE_FLOOR, format_scores(scores)
    assert total.wrong_count <= APART_WRONG_COUNT_CEILING * total.numbers, total.mistakes


def test_numbers_whose_neighbours_touch_are_cut_apart(trained_server, touching_numbers):
    read = grpc_reader(trained_server.stub)
    scores = score_by_style("touching", touching_numbers, in_flight(read, [n.data for n in touching_numbers]))
    print("\n" + format_scores(scores))
    assert scores[-1].numbers == 7 * PER_STYLE
    assert scores[-1].whole_accuracy >= TOUCHING_WHOLE_FLOOR, format_scores(scores)


# Numbers on ruled and squared paper (testkit/numbers.py's PAPER_NUMBER_STYLES: the single digits' paper kinds,
# photographed as paper_photo). Measured (the tests' model, this machine): 82.5 % whole (ruled 82.5 %, squared
# 82.5 %), 8.75 % with a wrong digit count; before ReadNumber took the paper's lines out as Predict does, 56 % and
# 35 % (the lines joined the digits, or made "several lines" of one).
PAPER_WHOLE_FLOOR = 0.75
PAPER_WRONG_COUNT_CEILING = 0.12


def test_numbers_on_ruled_and_squared_paper_are_read_without_the_papers_lines(trained_server, mnist_test):
    pictures = cached_numbers(*mnist_test, per_style=PER_STYLE, seed=SEED, layout="apart", styles=("ruled", "squared"))
    read = grpc_reader(trained_server.stub)
    scores = score_by_style("apart", pictures, in_flight(read, [p.data for p in pictures]))
    print("\n" + format_scores(scores))
    total = scores[-1]
    assert total.whole_accuracy >= PAPER_WHOLE_FLOOR, format_scores(scores)
    assert total.wrong_count <= PAPER_WRONG_COUNT_CEILING * total.numbers, format_scores(scores)


def test_each_digits_box_is_where_its_ink_is_in_the_pictures_own_pixels(apart_numbers, apart_responses):
    """Boxes are in the picture as displayed: big canvases are read shrunk, phone photos are stored sideways
    with an EXIF turn; the boxes must still land on the truth's (intersection over union >= 0.5), all but the odd
    digit that lost a piece to its neighbour."""
    checked = missed = 0
    for number, response in zip(apart_numbers, apart_responses):
        if response is None or len(response.per_digit) != len(number.digits):
            continue
        width, height = Image.open(io.BytesIO(number.data)).size
        if number.style == "paper_photo":
            assert {(response.width, response.height)} <= {(width, height), (height, width)}
        else:
            assert (response.width, response.height) == (width, height)
        for truth, digit in zip(number.boxes, response.per_digit):
            missed += box_overlap(truth, digit.box) < 0.5
            checked += 1
    assert checked >= 0.95 * sum(len(n.digits) for n in apart_numbers)
    assert missed <= 0.005 * checked, missed


def box_overlap(truth: tuple[int, int, int, int], box: pb.Box) -> float:
    """Intersection over union of two boxes (x, y, width, height)."""
    tx, ty, tw, th = truth
    ix = max(0, min(tx + tw, box.x + box.width) - max(tx, box.x))
    iy = max(0, min(ty + th, box.y + box.height) - max(ty, box.y))
    inter = ix * iy
    return inter / (tw * th + box.width * box.height - inter)


def test_the_response_holds_each_digits_probabilities_and_the_confidence(
    apart_numbers, apart_responses, trained_version
):
    response = next(r for r in apart_responses if r is not None)
    assert len(response.digits) == len(response.per_digit) >= 4
    for char, d in zip(response.digits, response.per_digit):
        p = d.prediction
        assert str(p.digit) == char and len(p.probabilities) == 10
        assert abs(sum(p.probabilities) - 1) < 1e-4 and p.probabilities[p.digit] == max(p.probabilities)
        assert not p.model_input_png  # only when asked for
    product = np.prod([d.prediction.probabilities[d.prediction.digit] for d in response.per_digit])
    assert response.confidence == pytest.approx(product, rel=1e-5)
    assert response.model_version == trained_version


def test_the_model_input_of_each_digit_comes_back_when_asked(trained_server, apart_numbers):
    number = apart_numbers[0]
    response = trained_server.stub.ReadNumber(
        pb.ReadNumberRequest(image=number.data, return_model_input=True), timeout=30
    )
    for d in response.per_digit:
        image = np.asarray(Image.open(io.BytesIO(d.prediction.model_input_png)))
        assert image.shape == (28, 28) and image.max() == 255


def test_a_single_digit_gets_the_answer_predict_gives(trained_server, mnist_test):
    """Pictures of one digit, in every drawn style and typed in every font: ReadNumber reads one digit, the digit
    Predict reads, with the same probabilities and digit score. A picture of one digit is classified from the 28x28
    image Predict makes of it, large pictures read at half resolution first (the image pipeline's coarse pass)
    included: at full resolution a digit the model is torn about could come out the other way (stop 30)."""
    pictures = make_user_images(*mnist_test, per_style=20, seed=SEED) + make_printed_digits(per_font=2, seed=SEED)
    predictions = trained_server.stub.PredictBatch(
        pb.PredictBatchRequest(images=[p.data for p in pictures]), timeout=60
    ).results
    responses = in_flight(lambda data: read_or_none(trained_server.stub, data), [p.data for p in pictures])
    disagree, coarse = [], 0
    for picture, result, response in zip(pictures, predictions, responses):
        expected = result.prediction
        if response is None or len(response.digits) != 1:
            disagree.append((picture.style, picture.label, expected.digit, response.digits if response else "refused"))
            continue
        read = response.per_digit[0].prediction
        assert response.digits == str(expected.digit), (picture.style, picture.label, response.digits)
        np.testing.assert_allclose(read.probabilities, expected.probabilities, atol=1e-4, err_msg=picture.style)
        assert (read.is_digit, read.digit_score) == (expected.is_digit, pytest.approx(expected.digit_score, abs=1e-4))
        coarse += trace_pipeline(decode_image(picture.data)).scale == 2
    # One picture in a hundred may be cut differently: a digit broken into two pieces side by side, each as
    # tall as a digit, is two digits to ReadNumber (see the limits in docs/pipeline.md).
    assert len(disagree) <= len(pictures) // 100, disagree
    assert 0 < coarse < len(pictures)  # both kinds were compared: read at half and at full resolution


@pytest.mark.parametrize("pen", ["dotted", "broken"])
def test_a_single_digit_written_in_dots_or_with_a_skipping_pen_is_read_as_predict_reads_it(
    trained_server, mnist_test, pen
):
    """One digit in dots, or with a pen that skipped: its pieces were not joined (too few dots to be writing in dots)
    and were taken for several lines (a dotted 7's dots, a 7's stem under its bar) or a number at a slant, and the
    picture was refused while Predict read it: the tests' model, 60 pictures of each, refused 22 dotted and 10
    broken, now 0 and 3 (a review). Read as one digit, it is Predict's digit."""
    pictures = make_numbers(
        *mnist_test,
        per_style=15,
        seed=SEED,
        pen=pen,
        lengths=(1, 1),
        styles=["web_canvas_alpha", "coloured", "dark_mode", "paper_photo"],
    )
    predictions = trained_server.stub.PredictBatch(
        pb.PredictBatchRequest(images=[p.data for p in pictures]), timeout=60
    ).results
    responses = in_flight(lambda data: read_or_none(trained_server.stub, data), [p.data for p in pictures])
    refused = sum(response is None for response in responses)
    one_digit = [(r, p) for r, p in zip(responses, predictions) if r is not None and len(r.digits) == 1]
    assert refused <= len(pictures) // 12, refused
    assert len(one_digit) >= 0.85 * len(pictures), [r.digits if r else None for r in responses]
    assert all(r.digits == str(p.prediction.digit) for r, p in one_digit)


def test_a_single_digit_predict_would_refuse_keeps_read_numbers_own_reading(trained_server, mnist_test, monkeypatch):
    """Where Predict's pipeline refuses the picture of the one digit ReadNumber found, or the server is too busy to
    decode it again or runs out of memory doing so (that was INTERNAL), ReadNumber answers with its own reading, and
    no image counts as rejected: the call succeeded. A PNG's decoded picture is reused (to_mnist_array), a JPEG is
    decoded again as Predict decodes it (to_mnist)."""
    pictures = make_user_images(*mnist_test, per_style=1, seed=SEED, styles=["paint_program", "paper_photo"])
    assert pictures[0].data.startswith(b"\x89PNG") and pictures[1].data.startswith(b"\xff\xd8")
    expected = [read_or_none(trained_server.stub, picture.data) for picture in pictures]
    assert all(reading is not None and len(reading.digits) == 1 for reading in expected)
    servicer = trained_server.server.servicer
    rejections = []
    monkeypatch.setattr(servicer.metrics, "rejected", rejections.append)
    for error in (ImageRejected("no digit found"), BudgetExhausted("the server is busy"), MemoryError()):

        def refuse(*args, error=error, **kwargs):
            raise error

        monkeypatch.setattr(service, "to_mnist", refuse)
        monkeypatch.setattr(service, "to_mnist_array", refuse)
        for picture, reading in zip(pictures, expected):
            response = trained_server.stub.ReadNumber(pb.ReadNumberRequest(image=picture.data), timeout=30)
            assert len(response.digits) == 1 and response.per_digit[0].box == reading.per_digit[0].box
            assert rejections == []


def test_a_decimal_point_or_comma_is_left_out_and_its_position_reported(trained_server, mnist_test):
    numbers = make_numbers(*mnist_test, per_style=6, seed=SEED, separator=True)
    right_digits = right_mark = 0
    for number in numbers:
        response = read_or_none(trained_server.stub, number.data)
        if response is None:
            continue
        right_digits += response.digits == number.digits
        right_mark += [(s.position, s.mark) for s in response.separators] == [number.separator]
    assert right_digits >= 0.8 * len(numbers), right_digits
    assert right_mark >= 0.75 * len(numbers), right_mark


def read_with_pen(stub, mnist_test, pen: str):
    """Numbers written with `pen` in four styles, six each, read through the RPC and scored."""
    numbers = make_numbers(
        *mnist_test,
        per_style=6,
        seed=SEED,
        pen=pen,
        styles=["web_canvas_alpha", "coloured", "dark_mode", "paper_photo"],
    )
    read = grpc_reader(stub)
    score = score_numbers(pen, [n.digits for n in numbers], [read(n.data) for n in numbers])
    print(format_scores([score]))
    return score


def test_the_pieces_of_a_digit_broken_by_a_skipping_pen_are_kept_together(trained_server, mnist_test):
    score = read_with_pen(trained_server.stub, mnist_test, "broken")
    assert score.wrong_count <= 0.25 * score.numbers, score.mistakes


def test_a_number_written_in_dots_is_read_with_its_loops_open(trained_server, mnist_test):
    """Writing in dots: each dot linked to its nearest, so a dotted 6, 8 or 9 keeps its loop (a closing filled
    them into blots)."""
    score = read_with_pen(trained_server.stub, mnist_test, "dotted")
    assert score.whole >= DOTTED_WHOLE * score.numbers, score.mistakes
    assert score.wrong_count <= 0.2 * score.numbers, score.mistakes


# ---------------------------------------------------------------------------------------------------------------
# What ReadNumber refuses, and how


def test_a_blank_picture_gets_invalid_argument_with_advice(trained_server):
    error = read_error(trained_server.stub, png_bytes(np.full((200, 400), 240, np.uint8)))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "no digit found" in error.details() and "Send a picture" in error.details()


def test_only_specks_get_invalid_argument_saying_no_digit(trained_server):
    canvas = np.full((300, 600), 255, np.uint8)
    for x, y in [(50, 40), (300, 200), (520, 90)]:
        canvas[y : y + 3, x : x + 3] = 0  # dust, nothing else
    error = read_error(trained_server.stub, png_bytes(canvas))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "no digit found" in error.details() and "specks" in error.details()


def test_several_lines_of_writing_get_invalid_argument_saying_so(trained_server, mnist_test):
    for seed in range(3):
        error = read_error(trained_server.stub, lines_picture(*mnist_test, lines=2, seed=seed))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "2 lines of writing" in error.details() and "one number" in error.details()


def test_more_than_twelve_digits_get_invalid_argument_saying_so(trained_server, mnist_test):
    numbers = make_numbers(*mnist_test, per_style=1, seed=SEED, lengths=(14, 14), styles=["web_canvas_alpha"])
    error = read_error(trained_server.stub, numbers[0].data)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "more than the 12" in error.details() and "1 to 12 digits" in error.details()


def test_twelve_digits_are_read(trained_server, mnist_test):
    numbers = make_numbers(*mnist_test, per_style=3, seed=SEED, lengths=(12, 12), styles=["web_canvas_alpha"])
    read = [read_or_none(trained_server.stub, n.data) for n in numbers]
    assert sum(r is not None and len(r.digits) == 12 for r in read) >= 2


def two_stroke_four() -> np.ndarray:
    """A 4 written in two strokes that do not meet (28 high, ink 255 on 0): its hook, and its upright."""
    four = np.zeros((28, 22), np.uint8)
    cv2.line(four, (7, 4), (3, 17), 255, 3)
    cv2.line(four, (3, 17), (13, 17), 255, 3)
    cv2.line(four, (19, 4), (19, 26), 255, 3)
    return four


def written(glyphs: list[np.ndarray], gap: int = 10, scale: int = 3) -> bytes:
    """Glyphs (28 high, ink 255 on 0) side by side, `gap` apart, dark on white, `scale` times larger (PNG)."""
    cropped = [g[:, np.flatnonzero(g.max(0))[0] : np.flatnonzero(g.max(0))[-1] + 1] for g in glyphs]
    line = np.pad(np.concatenate([np.pad(g, ((0, 0), (0, gap))) for g in cropped], 1), 10)
    return png_bytes(cv2.resize(255 - line, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA))


def test_twelve_digits_one_in_two_strokes_are_twelve_not_thirteen(trained_server, mnist_test):
    """The limit counts digits once the pieces of each are joined: 12 digits, one of them a 4 in two strokes, are
    13 pieces of ink."""
    images, labels = mnist_test
    eleven = [images[np.flatnonzero(labels == d)[0]] for d in (1, 2, 3, 5, 6, 7, 8, 9, 0, 1, 2)]
    alone = trained_server.stub.ReadNumber(pb.ReadNumberRequest(image=written([two_stroke_four()])), timeout=30)
    assert alone.digits == "4"
    read = trained_server.stub.ReadNumber(pb.ReadNumberRequest(image=written([*eleven, two_stroke_four()])), timeout=30)
    assert len(read.digits) == 12 and read.digits[-1] == "4", read.digits


def test_a_picture_that_is_no_picture_gets_predicts_error(trained_server):
    error = read_error(trained_server.stub, b"%PDF-1.7 not a picture")
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "PDF" in error.details()


def test_before_a_model_is_published_read_number_is_unavailable(serve):
    running = serve()
    with pytest.raises(grpc.RpcError) as caught:
        running.stub.ReadNumber(pb.ReadNumberRequest(image=png_bytes(np.zeros((28, 28), np.uint8))), timeout=10)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


# ---------------------------------------------------------------------------------------------------------------
# The client command


def test_client_read_prints_the_number_and_draws_the_boxes(
    trained_server, apart_numbers, apart_responses, tmp_path, capsys
):
    from inference.client import main as client_main

    number, _response = next(
        (n, r) for n, r in zip(apart_numbers, apart_responses) if r is not None and r.digits == n.digits
    )
    picture = tmp_path / "number.png"
    picture.write_bytes(number.data)
    preview = tmp_path / "boxes.png"
    code = client_main(["--target", trained_server.target, "read", str(picture), "--preview", str(preview)])
    out = capsys.readouterr().out
    assert code == 0
    assert f"{picture}: {number.digits} (confidence" in out
    assert out.count(" at x=") == len(number.digits)
    drawn = np.asarray(Image.open(preview).convert("RGB"))
    red = np.all(drawn == (230, 40, 40), axis=2)  # the boxes' colour
    # Each box's outline: a red column run at least as tall as a digit's box drawn at the preview's scale.
    tallest_red_run = max(np.count_nonzero(red[:, x]) for x in range(red.shape[1]))
    assert red.sum() > 0 and tallest_red_run >= 20


def test_client_read_says_what_is_wrong_with_a_blank_picture(trained_server, tmp_path, capsys):
    from inference.client import main as client_main

    picture = tmp_path / "blank.png"
    picture.write_bytes(png_bytes(np.full((100, 100), 250, np.uint8)))
    assert client_main(["--target", trained_server.target, "read", str(picture)]) == 1
    assert "INVALID_ARGUMENT: no digit found" in capsys.readouterr().err


def test_client_read_says_not_a_number_when_no_mark_looks_like_a_digit(trained_server, tmp_path, capsys):
    from inference.client import main as client_main

    picture = tmp_path / "line.png"
    canvas = np.full((200, 400), 255, np.uint8)
    cv2.line(canvas, (40, 100), (360, 100), 0, 6)  # a rule, not a digit: Predict says so too
    picture.write_bytes(png_bytes(canvas))
    assert client_main(["--target", trained_server.target, "read", str(picture)]) == 0
    captured = capsys.readouterr()
    assert f"{picture}: not a number: nothing in it looks like a digit" in captured.out
    assert "?  not a digit (digit score" in captured.out and captured.err == ""


def test_client_read_shows_a_mark_that_is_no_digit_among_digits_as_a_question_mark_and_warns(tmp_path, capsys):
    from inference.client import cmd_read

    # The answer for a number with a line through it (made here: which marks a model calls no digit is the model's
    # to say), as the client's call would bring it.
    response = pb.ReadNumberResponse(digits="217", model_version="v1", confidence=0.9)
    for digit, is_digit in [(2, True), (1, False), (7, True)]:
        response.per_digit.add(prediction=pb.Prediction(digit=digit, is_digit=is_digit, probabilities=[0.1] * 10))
    limits = pb.InputContract(max_image_bytes=1 << 20, max_message_bytes=4 << 20)
    answers = {"GetModelInfo": pb.ModelInfo(input=limits), "ReadNumber": response}
    stub = types.SimpleNamespace(GetModelInfo="GetModelInfo", ReadNumber="ReadNumber")
    picture = tmp_path / "number.png"
    picture.write_bytes(png_bytes(np.full((100, 300), 250, np.uint8)))
    args = argparse.Namespace(image=picture, model_version="", preview=None)
    assert cmd_read(stub, args, lambda method, request: answers[method]) == 0
    captured = capsys.readouterr()
    assert f"{picture}: 2?7 (confidence 90.0%" in captured.out
    assert "1 of the 3 marks read are not digits" in captured.err


def test_client_read_refuses_an_unwritable_preview_and_a_file_too_large_before_the_call(
    trained_server, tmp_path, capsys
):
    from inference.client import main as client_main

    picture = tmp_path / "number.png"
    picture.write_bytes(png_bytes(np.full((50, 50), 255, np.uint8)))
    (tmp_path / "a-file").write_text("")
    preview = tmp_path / "a-file" / "boxes.png"
    assert client_main(["--target", trained_server.target, "read", str(picture), "--preview", str(preview)]) == 2
    assert "a-file is a file, not a folder" in capsys.readouterr().err
    huge = tmp_path / "huge.png"
    huge.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(17 * 2**20))  # over the 10 MiB a picture may be, and a call
    assert client_main(["--target", trained_server.target, "read", str(huge)]) == 1
    err = capsys.readouterr().err
    assert "more than the service takes in one picture" in err and "larger than max" not in err


def test_a_reading_whose_caller_has_gone_stops_instead_of_running_on(serve, tmp_path, monkeypatch, caplog):
    """A zigzag took 0.65 s to read, all of it after a caller that gave it 50 ms had gone: 16 such calls abandoned
    at once held the server's threads for 10 s, a Predict waiting behind them. The reading stops at its next
    region's cuts once the caller is gone (each made slow here, so that the reading outlasts its deadline)."""
    import shared.segment

    from tests.inference.helpers import publish, wait_until

    publish(tmp_path / "artifacts", "v1", seed=1)
    running = serve()
    picture = np.full((120, 620), 255, np.uint8)
    for k in range(8):  # eight zeros in one stroke, each touching the next: cut after cut to read
        cv2.ellipse(picture, (62 + 70 * k, 60), (32, 44), 0, 0, 360, 0, 9)
    request = pb.ReadNumberRequest(image=png_bytes(picture))
    cuts = []
    real_cut_candidates = shared.segment.cut_candidates

    def slow_cuts(*args, **kwargs):
        cuts.append(1)
        time.sleep(0.2)
        return real_cut_candidates(*args, **kwargs)

    monkeypatch.setattr(shared.segment, "cut_candidates", slow_cuts)
    running.stub.ReadNumber(request, timeout=60)
    whole = len(cuts)
    assert whole >= 6, whole
    cuts.clear()
    caplog.set_level(logging.INFO, logger="inference.access")
    caplog.clear()  # the whole reading's line too, where an earlier test left the access log at INFO
    with pytest.raises(grpc.RpcError) as gone:
        running.stub.ReadNumber(request, timeout=0.5)
    assert gone.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED

    def ended() -> list:
        return [r for r in caplog.records if r.name == "inference.access" and r.access["method"] == "ReadNumber"]

    assert wait_until(lambda: len(ended()) == 1, timeout=30)
    assert len(cuts) <= 4 < whole, (cuts, whole)  # 0.5 s of 0.2 s cuts, and one begun as the deadline passed
    assert ended()[0].access["code"] != "OK"

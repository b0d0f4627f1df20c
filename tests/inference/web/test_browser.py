"""The page in a real browser (headless chromium driven by selenium), in front of the real gRPC server serving a
really trained model: digits drawn on the canvas as pointer strokes taken from MNIST test digits, pictures given
through the file picker, drag and drop and paste, the model panel, the Evaluate tab, and a phone-sized screen.

Needs Debian's chromium and chromium-driver (`.ci/run` installs them) and selenium (the dev extras).
"""

from __future__ import annotations

import base64
import io
import shutil

import numpy as np
import pytest
from PIL import Image

from shared.api.mnist.v1 import inference_pb2 as pb
from shared.checkpoint import publish_model, read_manifest, read_published_model

from tests.inference.helpers import start_server, wait_until
from tests.inference.web.helpers import start_web
from testkit.user_images import paint_program, paper_photo, web_canvas
from testkit.web_browser import (
    browser_missing,
    digit_strokes,
    draw,
    page_file,
    shown_digit,
    start_chromium,
    stop_chromium,
    wait_settled,
)

# Three kinds of pointer, in turn: the page must take all of them.
POINTERS = ("mouse", "pen", "touch")


@pytest.fixture(scope="module")
def served(trained_artifacts, tmp_path_factory, mnist_dir):
    """The trained model behind a real gRPC server (port 0) and the gateway in front of it (a free port).

    The model is copied out of the test cache first, so that publishing a newer one here leaves the cache alone."""
    artifacts = tmp_path_factory.mktemp("web-artifacts")
    shutil.copytree(trained_artifacts / "models", artifacts / "models")
    backend = start_server(artifacts, mnist_dir)
    web = start_web(target=backend.target)
    yield backend, web
    web.stop()
    backend.channel.close()
    backend.server.stop(grace=0)


def _chromium(**kwargs):
    missing = browser_missing()
    if missing:
        pytest.skip(missing)
    return start_chromium(**kwargs)


@pytest.fixture(scope="module")
def browser():
    driver = _chromium()
    yield driver
    stop_chromium(driver)


@pytest.fixture
def page(browser, served):
    """The page, freshly loaded, with the served model shown in its panel."""
    _, web = served
    browser.get(web.url + "/")
    wait_until(lambda: browser.find_element("id", "model-version").text, timeout=15)
    return browser


def first_of_each_digit(mnist) -> list[tuple[int, np.ndarray]]:
    labels = mnist.test_labels.numpy()
    return [(d, mnist.test_images[int(np.flatnonzero(labels == d)[0])].numpy()) for d in range(10)]


@pytest.mark.parametrize("label", range(10))
def test_a_digit_drawn_on_the_canvas_is_read(page, served, mnist, label):
    """The first MNIST test digit of each class, drawn as strokes with a mouse, a pen or a finger in turn."""
    backend, _ = served
    image = first_of_each_digit(mnist)[label][1]
    draw(page, digit_strokes(image), kind=POINTERS[label % len(POINTERS)])
    wait_settled(page)
    assert shown_digit(page) == label
    # What the page shows is what gRPC Predict answers for the very bytes the page sent.
    png = page.execute_script("return window.mnist.drawing()")
    direct = backend.stub.Predict(pb.PredictRequest(image=base64.b64decode(png.split(",", 1)[1])), timeout=10)
    assert direct.prediction.digit == label
    # The answer on screen: the digit, ten bars with the top one marked, the 28x28 input enlarged, and a
    # latency for each finished stroke.
    assert page.find_element("id", "digit").text == str(label)
    assert len(page.find_elements("css selector", "#bars li")) == 10
    assert page.find_element("css selector", "#bars li.top").text.startswith(str(label))
    assert page.execute_script("const i = document.getElementById('seen'); return [i.naturalWidth, i.naturalHeight]"
                               ) == [28, 28]
    assert page.execute_script("return window.mnist.strokeLatencies.length") >= 1


def test_undo_removes_the_last_stroke_and_clear_empties_the_canvas(page, mnist):
    label, image = first_of_each_digit(mnist)[7]
    draw(page, digit_strokes(image))
    wait_settled(page)
    assert shown_digit(page) == 7
    draw(page, [[(0.1, 0.9), (0.5, 0.9), (0.9, 0.9)], [(0.1, 0.1), (0.1, 0.5), (0.1, 0.9)]])  # two scribbles
    wait_settled(page)
    page.find_element("id", "undo").click()
    page.find_element("id", "undo").click()
    wait_settled(page)
    assert shown_digit(page) == 7
    page.find_element("id", "clear").click()
    assert shown_digit(page) is None and page.find_element("id", "digit").text == "?"
    assert not page.find_element("id", "undo").is_enabled()
    blank = page.execute_script(
        "const c = document.getElementById('pad'); const d = c.getContext('2d').getImageData(0, 0, c.width, "
        "c.height).data; return d.every((v) => v === 255);")
    assert blank


def test_a_photo_chosen_with_the_file_picker_is_read(page, mnist, tmp_path):
    index = 1  # a 2
    label = int(mnist.test_labels[index])
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(paper_photo(mnist.test_images[index].numpy(), np.random.default_rng(3)))
    page.find_element("id", "file").send_keys(str(photo))
    wait_until(lambda: "photo.jpg: model" in page.find_element("id", "status").text, timeout=20)
    assert shown_digit(page) == label
    assert page.find_element("id", "picture").is_displayed()


@pytest.mark.parametrize("how, make, mime", [("drop", web_canvas, "image/png"), ("paste", paint_program, "image/png")])
def test_a_picture_dropped_or_pasted_is_read(page, mnist, how, make, mime):
    index = 4  # a 4
    data = make(mnist.test_images[index].numpy(), np.random.default_rng(5))
    page_file(page, data, f"{how}.png", mime, how)
    wait_until(lambda: f"{how}.png: model" in page.find_element("id", "status").text, timeout=20)
    wait_settled(page)
    assert shown_digit(page) == int(mnist.test_labels[index])


def test_a_picture_the_service_refuses_shows_its_message(page):
    page_file(page, b"%PDF-1.4 not a picture", "notes.pdf", "application/pdf", "drop")
    wait_until(lambda: "PDF" in page.find_element("id", "status").text, timeout=20)
    status = page.find_element("id", "status")
    assert "error" in status.get_attribute("class") and "send a" in status.text


def test_the_evaluate_tab_shows_accuracy_per_class_scores_and_the_confusion_heatmap(page, served):
    backend, _ = served
    page.find_element("id", "tab-evaluate").click()
    assert not page.find_element("id", "pad").is_displayed()
    page.find_element("id", "run-evaluate").click()
    wait_until(lambda: page.find_element("id", "eval-result").is_displayed(), timeout=60)
    expected = backend.stub.Evaluate(pb.EvaluateRequest(split=pb.SPLIT_TEST, omit_heatmap=True), timeout=60)
    assert page.find_element("id", "accuracy").text == f"{100 * expected.accuracy:.2f} %"
    assert expected.accuracy > 0.98
    rows = page.find_elements("css selector", "#per-class tbody tr")
    assert [r.find_element("tag name", "th").text for r in rows] == [str(d) for d in range(10)]
    cells = page.find_elements("css selector", "#confusion tbody td")
    assert len(cells) == 100
    diagonal = [int(cells[11 * d].text) for d in range(10)]
    assert diagonal == [row.counts[d] for d, row in enumerate(expected.confusion)]
    assert "37, 84, 216" in cells[0].get_attribute("style")  # coloured as a heatmap: the diagonal blue


def test_the_model_panel_updates_when_a_new_model_is_swapped_in(page, served):
    backend, _ = served
    models = backend.artifacts / "models"
    old = read_manifest(models).version
    assert page.find_element("id", "model-version").text == old
    assert "validation" in page.find_element("id", "model-metrics").text
    assert page.find_element("id", "model-loaded").text not in ("", "unknown")
    payload, _ = read_published_model(models, read_manifest(models))
    payload = {k: v for k, v in payload.items() if k not in ("format", "version", "created_at")}
    publish_model(models, version=f"{old}-next", model_payload=payload)
    # The panel asks every 5 s; nothing is clicked or reloaded.
    assert wait_until(lambda: page.find_element("id", "model-version").text == f"{old}-next", timeout=20)
    assert "new model" in page.find_element("id", "model-status").text.lower()


def test_the_page_fits_a_phone_and_reads_a_digit_drawn_with_a_finger(served, mnist, tmp_path):
    _, web = served
    phone = _chromium(phone=True)
    try:
        phone.get(web.url + "/")
        wait_until(lambda: phone.find_element("id", "model-version").text, timeout=15)
        width, scroll_width, pad, result = phone.execute_script("""
            const box = (id) => document.getElementById(id).getBoundingClientRect();
            return [window.innerWidth, document.documentElement.scrollWidth, box('pad').toJSON(),
                    document.querySelector('.result-card').getBoundingClientRect().toJSON()];""")
        assert width == 390 and scroll_width <= width, "nothing may stick out sideways"
        assert pad["width"] >= 300 and pad["right"] <= width
        assert result["top"] >= pad["bottom"], "on a phone the answer comes below the pad"
        label, image = first_of_each_digit(mnist)[3]
        draw(phone, digit_strokes(image), kind="touch")
        wait_settled(phone)
        assert shown_digit(phone) == label
        shot = tmp_path / "phone.png"
        phone.save_screenshot(str(shot))
        with Image.open(io.BytesIO(shot.read_bytes())) as img:
            assert img.width >= 390
    finally:
        stop_chromium(phone)

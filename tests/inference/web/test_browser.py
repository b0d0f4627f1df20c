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
from tests.inference.helpers import png_bytes, start_server, wait_until
from tests.inference.web.helpers import PrefixProxy, start_web

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


@pytest.fixture(scope="module")
def clear_digits(served, mnist) -> list[tuple[int, np.ndarray]]:
    """(label, 28x28 image) for each digit: the first MNIST test digit of its class that the served model reads
    right, at 0.9 or more, as MNIST has it (a PNG of it through Predict).

    These tests are about the page, so the digit drawn must be one the model reads: the very first 5 of the test
    set, a hard one, was read as an 8 by the model trained on one machine (stop 25) and as a 5 on another. How
    well the model reads users' drawings is measured in tests/inference/test_user_drawings.py."""
    backend, _ = served
    labels = mnist.test_labels.numpy()
    chosen = []
    for digit in range(10):
        for index in np.flatnonzero(labels == digit)[:50]:
            image = mnist.test_images[int(index)].numpy()
            prediction = backend.stub.Predict(pb.PredictRequest(image=png_bytes(image)), timeout=10).prediction
            if prediction.digit == digit and prediction.probabilities[digit] >= 0.9:
                chosen.append((digit, image))
                break
        else:
            raise AssertionError(f"the model reads none of the first 50 MNIST test {digit}s surely: is it trained?")
    return chosen


@pytest.mark.parametrize("label", range(10))
def test_a_digit_drawn_on_the_canvas_is_read(page, served, clear_digits, label):
    """A MNIST test digit of each class (clear_digits), drawn as strokes with a mouse, a pen or a finger in turn."""
    backend, _ = served
    image = clear_digits[label][1]
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
    assert page.execute_script(
        "const i = document.getElementById('seen'); return [i.naturalWidth, i.naturalHeight]"
    ) == [28, 28]
    assert page.execute_script("return window.mnist.strokeLatencies.length") >= 1


def test_undo_removes_the_last_stroke_and_clear_empties_the_canvas(page, clear_digits):
    _label, image = clear_digits[7]
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
        "c.height).data; return d.every((v) => v === 255);"
    )
    assert blank


def smiley_strokes() -> list[list[tuple[float, float]]]:
    """A face as a person draws it on the canvas: a ring, two short eye strokes and a smile."""
    ring = [(0.5 + 0.3 * np.cos(a), 0.5 + 0.3 * np.sin(a)) for a in np.linspace(0, 2 * np.pi, 40)]
    eyes = [[(x, 0.4), (x, 0.45)] for x in (0.4, 0.6)]
    smile = [(0.5 + 0.16 * np.cos(a), 0.52 + 0.12 * np.sin(a)) for a in np.linspace(0.2, np.pi - 0.2, 12)]
    return [ring, *eyes, smile]


def test_a_smiley_is_shown_as_not_a_digit(page, served):
    """Issue 17: the first thing people draw is not a digit; the page says so plainly, and keeps the bars."""
    backend, _ = served
    draw(page, smiley_strokes())
    wait_settled(page)
    png = page.execute_script("return window.mnist.drawing()")
    direct = backend.stub.Predict(pb.PredictRequest(image=base64.b64decode(png.split(",", 1)[1])), timeout=10)
    assert not direct.prediction.is_digit, direct.prediction
    assert page.find_element("id", "digit").text == "Not a digit"
    assert "does not look like a digit" in page.find_element("id", "confidence").text
    assert page.execute_script("return document.body.dataset.isDigit") == "false"
    assert len(page.find_elements("css selector", "#bars li")) == 10
    page.find_element("id", "clear").click()
    assert page.find_element("id", "digit").text == "?"


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


def answers_come_late_for(page, picture: bytes, seconds: float) -> None:
    """The page's answers to `picture` (known by its size: the page sends a picture's bytes) arrive `seconds` late:
    fetch wrapped in the page, as a slow upload or a busy service would make them."""
    page.execute_script(
        """
        const [size, ms] = arguments;
        const fetchNow = window.fetch;
        window.fetch = (url, options) => {
          const answer = fetchNow(url, options);
          const late = options && options.body instanceof ArrayBuffer && options.body.byteLength === size;
          return late ? answer.then((r) => new Promise((done) => setTimeout(() => done(r), ms))) : answer;
        };
        """,
        len(picture),
        seconds * 1000,
    )


def drawings_fail_late(page, seconds: float) -> None:
    """While window.failDrawings is true, every drawing the page sends fails `seconds` later, as when the page's
    server stops answering (fetch rejects)."""
    page.execute_script(
        """
        const ms = arguments[0];
        const fetchNow = window.fetch;
        window.failDrawings = false;
        window.fetch = (url, options) => {
          if (!window.failDrawings || !(options && options.body instanceof Blob)) return fetchNow(url, options);
          return new Promise((_, fail) => setTimeout(() => fail(new TypeError("Failed to fetch")), ms));
        };
        """,
        seconds * 1000,
    )


def test_the_latest_input_wins_when_an_earlier_pictures_answer_comes_late(page, clear_digits):
    """A picture's answer replaced whatever came after it: a later picture's, a drawing's, or a Clear."""
    (late_label, late), (label, on_time) = clear_digits[7], clear_digits[3]
    assert len(png_bytes(late)) != len(png_bytes(on_time))  # told apart by their size
    answers_come_late_for(page, png_bytes(late), 2)
    page_file(page, png_bytes(late), "late.png", "image/png", "drop")
    page_file(page, png_bytes(on_time), "on-time.png", "image/png", "drop")
    wait_until(lambda: "on-time.png: model" in page.find_element("id", "status").text, timeout=20)
    wait_settled(page)  # the late answer has come too
    assert shown_digit(page) == label != late_label
    assert "on-time.png: model" in page.find_element("id", "status").text
    page_file(page, png_bytes(late), "late.png", "image/png", "drop")
    page.find_element("id", "clear").click()  # before its answer
    wait_settled(page)
    assert shown_digit(page) is None and page.find_element("id", "digit").text == "?"
    assert not page.find_element("id", "picture").is_displayed()


def test_a_failure_that_comes_after_a_newer_answer_or_a_clear_is_not_shown(page, clear_digits):
    """An error is an answer too: one that arrives late gave the page a red message beside the newer drawing's
    answer, or on a pad already cleared."""
    drawings_fail_late(page, 1.5)
    strokes = digit_strokes(clear_digits[7][1])
    page.execute_script("window.failDrawings = true")
    draw(page, strokes)
    page.execute_script("window.failDrawings = false")
    draw(page, [[(0.85, 0.85), (0.87, 0.87)]])  # a newer drawing, answered at once
    wait_settled(page)  # the failures have come too
    status = page.find_element("id", "status")
    assert "error" not in status.get_attribute("class") and "does not answer" not in status.text, status.text
    assert shown_digit(page) is not None
    page.find_element("id", "clear").click()
    page.execute_script("window.failDrawings = true")
    draw(page, strokes)
    page.find_element("id", "clear").click()  # before the failures come
    wait_settled(page)
    status = page.find_element("id", "status")
    assert "error" not in status.get_attribute("class") and "does not answer" not in status.text, status.text
    assert shown_digit(page) is None


def test_the_keyboard_focus_stays_on_the_pad_when_clear_or_undo_disables_itself(page):
    from selenium.webdriver.common.keys import Keys

    for button in ("clear", "undo"):
        draw(page, [[(0.2, 0.2), (0.5, 0.5)]])
        wait_settled(page)
        page.execute_script("document.getElementById(arguments[0]).focus()", button)
        page.switch_to.active_element.send_keys(Keys.ENTER)
        assert not page.find_element("id", button).is_enabled()
        # Without a place to go, the focus fell to <body>: the next Tab started from the page's top.
        assert page.execute_script("return document.activeElement.id") == "pad", button


def test_a_screen_reader_hears_the_answer_once_a_stroke_is_done_not_at_every_move(page, clear_digits):
    """The answer region is a live region, and the answer is asked for while drawing: it was rewritten (and
    announced) a dozen times a stroke. It is busy from the pointer going down until the stroke's answer is shown."""
    page.execute_script(
        """
        const answer = document.querySelector(".answer");
        window.answerChanges = [];
        new MutationObserver(() => window.answerChanges.push(answer.getAttribute("aria-busy")))
          .observe(answer, { subtree: true, childList: true, characterData: true });
        """
    )
    draw(page, digit_strokes(clear_digits[3][1]))
    wait_settled(page)
    changes = page.execute_script("return window.answerChanges")
    assert changes, "the answer never changed"
    assert changes[:-1] == ["true"] * (len(changes) - 1), changes  # all but what the last answer wrote: busy
    assert page.execute_script("return document.querySelector('.answer').getAttribute('aria-busy')") is None
    assert shown_digit(page) == clear_digits[3][0]


def test_the_answer_is_not_left_busy_by_a_stroke_a_mode_switch_dropped(page):
    """A stroke begun, the mode switched (the arrow keys on the mode radios) and the button released: the stroke was
    dropped and never ended, and the answer stayed aria-busy, so a screen reader announced no later answer."""
    from selenium.webdriver.common.action_chains import ActionChains

    pad = page.find_element("id", "pad")
    ActionChains(page).move_to_element(pad).click_and_hold().perform()
    assert page.execute_script("return document.querySelector('.answer').getAttribute('aria-busy')") == "true"
    page.execute_script("setMode('number')")
    ActionChains(page).release().perform()
    assert page.execute_script("return document.querySelector('.answer').getAttribute('aria-busy')") is None


def test_a_picture_dropped_on_the_evaluate_tab_is_answered_on_the_draw_tab(page, mnist):
    page.find_element("id", "tab-evaluate").click()
    page_file(page, png_bytes(mnist.test_images[0].numpy()), "seven.png", "image/png", "drop")
    wait_until(lambda: "seven.png: model" in page.find_element("id", "status").text, timeout=20)
    assert page.find_element("id", "tab-draw").get_attribute("aria-selected") == "true"
    assert page.find_element("id", "picture").is_displayed()
    assert shown_digit(page) == int(mnist.test_labels[0])


def test_clear_takes_a_picture_away_even_after_the_window_is_resized(page, clear_digits):
    """A resize redraws the pad, and disabled Clear while a picture (and no stroke) was on screen."""
    page_file(page, png_bytes(clear_digits[2][1]), "two.png", "image/png", "drop")
    wait_until(lambda: "two.png: model" in page.find_element("id", "status").text, timeout=20)
    size = page.get_window_size()
    page.set_window_size(size["width"] - 150, size["height"])
    try:
        wait_until(lambda: page.execute_script("return document.getElementById('pad').width") > 0, timeout=5)
        page.execute_script("return new Promise((done) => requestAnimationFrame(() => requestAnimationFrame(done)))")
        assert page.find_element("id", "clear").is_enabled()
        page.find_element("id", "clear").click()
        assert not page.find_element("id", "picture").is_displayed() and shown_digit(page) is None
    finally:
        page.set_window_size(size["width"], size["height"])


def test_the_tabs_take_the_arrow_keys_and_are_one_tab_stop(page):
    from selenium.webdriver.common.keys import Keys

    draw, evaluate = page.find_element("id", "tab-draw"), page.find_element("id", "tab-evaluate")
    assert (draw.get_attribute("tabindex"), evaluate.get_attribute("tabindex")) == ("0", "-1")
    draw.send_keys(Keys.ARROW_RIGHT)
    assert evaluate.get_attribute("aria-selected") == "true" and page.switch_to.active_element == evaluate
    assert page.find_element("id", "view-evaluate").is_displayed()
    evaluate.send_keys(Keys.ARROW_RIGHT)  # wraps around
    assert draw.get_attribute("aria-selected") == "true" and page.switch_to.active_element == draw
    assert (draw.get_attribute("tabindex"), evaluate.get_attribute("tabindex")) == ("0", "-1")


def _pad_aspect(page) -> float:
    return page.execute_script(
        "const r = document.getElementById('pad').getBoundingClientRect(); return r.width / r.height;"
    )


def _reloaded(page) -> None:
    page.refresh()
    wait_until(lambda: page.find_element("id", "model-version").text, timeout=15)


def test_a_reload_keeps_the_tab_and_the_mode_even_from_the_evaluate_tab(page):
    page.find_element("css selector", "label:has(#mode-number)").click()
    page.find_element("id", "tab-evaluate").click()
    assert page.execute_script("return location.hash") == "#evaluate"
    _reloaded(page)
    assert page.find_element("id", "view-evaluate").is_displayed()
    page.find_element("id", "tab-draw").click()
    assert page.find_element("id", "mode-number").is_selected() and abs(_pad_aspect(page) - 3) < 0.05
    assert page.execute_script("return location.hash") == "#number"
    _reloaded(page)  # from the Draw tab in number mode: the address alone says it
    assert page.find_element("id", "mode-number").is_selected() and abs(_pad_aspect(page) - 3) < 0.05
    # Back to one digit, then a reload from the Evaluate tab: the digit it was left in, not the number before.
    page.find_element("css selector", "label:has(#mode-digit)").click()
    page.find_element("id", "tab-evaluate").click()
    _reloaded(page)
    page.find_element("id", "tab-draw").click()
    assert page.find_element("id", "mode-digit").is_selected() and abs(_pad_aspect(page) - 1) < 0.01
    # A page opened afresh is in digit mode whatever this tab's last page was in: at its plain address, and at
    # #evaluate (a bookmark, an address typed), which only a reload reads the kept mode for.
    address = page.current_url.split("#")[0]
    for opened in (address, address + "#evaluate"):
        page.find_element("id", "tab-draw").click()
        page.find_element("css selector", "label:has(#mode-number)").click()
        page.find_element("id", "tab-evaluate").click()
        page.get("about:blank")
        page.get(opened)
        wait_until(lambda: page.find_element("id", "model-version").text, timeout=15)
        page.find_element("id", "tab-draw").click()
        assert page.find_element("id", "mode-digit").is_selected(), opened


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


def test_a_gateway_with_a_token_asks_for_it_and_a_token_no_header_can_carry_is_asked_again(
    browser, served, clear_digits
):
    backend, _ = served
    web = start_web(target=backend.target, token="s3cret-token")
    try:
        browser.get(web.url + "/")
        form = browser.find_element("id", "token-form")
        assert wait_until(form.is_displayed, timeout=15)  # the first call got 401
        # A character fetch cannot put in a header is refused by the form, and nothing is stored.
        browser.find_element("id", "token").send_keys("s3cret\u2019token")
        browser.find_element("css selector", "#token-form button").click()
        assert form.is_displayed()
        assert browser.execute_script("return sessionStorage.getItem('mnist-token')") is None
        # One stored before (by an older page) is forgotten at the first call, and the form asks again.
        browser.execute_script("sessionStorage.setItem('mnist-token', 's3cret\u2019token')")
        browser.get(web.url + "/")
        assert wait_until(lambda: "enter the token again" in browser.find_element("id", "model-status").text, 15)
        assert browser.find_element("id", "token-form").is_displayed()
        assert browser.execute_script("return sessionStorage.getItem('mnist-token')") is None
        # A digit drawn before the token is given is refused for want of it, and read once it is given: the
        # refusal stayed on screen and the drawing was never sent again.
        label, image = clear_digits[3]
        draw(browser, digit_strokes(image))
        assert wait_until(lambda: "Authorization" in browser.find_element("id", "status").text, timeout=15)
        field = browser.find_element("id", "token")
        field.clear()
        field.send_keys("s3cret-token")
        browser.find_element("css selector", "#token-form button").click()
        version = read_manifest(backend.artifacts / "models").version
        assert wait_until(lambda: browser.find_element("id", "model-version").text == version, timeout=15)
        assert not browser.find_element("id", "token-form").is_displayed()
        assert wait_until(lambda: shown_digit(browser) == label, timeout=15)
        assert "error" not in browser.find_element("id", "status").get_attribute("class")
        assert browser.execute_script("return document.activeElement.id") == "pad"  # not the page's start
    finally:
        browser.execute_script("sessionStorage.clear()")
        web.stop()


def test_the_page_fits_a_phone_and_reads_a_digit_drawn_with_a_finger(served, clear_digits, tmp_path):
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
        label, image = clear_digits[3]
        draw(phone, digit_strokes(image), kind="touch")
        wait_settled(phone)
        assert shown_digit(phone) == label
        shot = tmp_path / "phone.png"
        phone.save_screenshot(str(shot))
        with Image.open(io.BytesIO(shot.read_bytes())) as img:
            assert img.width >= 390
    finally:
        stop_chromium(phone)


# --------------------------------------------------------------------------------------------------------------
# Number mode (issue 16): a line of digits on a wide strip, read by POST /v1/read-number


def number_strokes(images: list[np.ndarray], aspect: float = 3.0) -> list[list[tuple[float, float]]]:
    """MNIST digits as strokes written side by side on a strip `aspect` times as wide as high, in units of the
    strip's width (as `draw` takes them): each digit 0.62 of the height tall, their centres 0.65 heights apart."""
    strokes = []
    for i, image in enumerate(images):
        centre = 0.5 + 0.65 * i
        strokes += [[((centre + x - 0.5) / aspect, y / aspect) for x, y in stroke] for stroke in digit_strokes(image)]
    return strokes


def shown_boxes(page) -> list[dict]:
    """The boxes drawn over the pad: their labels and rectangles, in the viewBox's units (the picture's pixels)."""
    return page.execute_script("""
        return [...document.querySelectorAll('#boxes rect.digit')].map((r, i) => ({
          label: document.querySelectorAll('#boxes text.digit')[i].textContent,
          x: +r.getAttribute('x'), y: +r.getAttribute('y'), width: +r.getAttribute('width'),
          height: +r.getAttribute('height'), viewBox: document.getElementById('boxes').getAttribute('viewBox')}));""")


def test_number_mode_reads_a_number_written_on_the_strip_and_draws_the_boxes(page, served, clear_digits):
    from selenium.webdriver.common.keys import Keys

    backend, _ = served
    # The switch is a pair of radio buttons: the arrow key moves to "a number", as for any radio group.
    page.find_element("id", "mode-digit").send_keys(Keys.ARROW_RIGHT)
    assert page.find_element("id", "mode-number").is_selected()
    width, height = page.execute_script(
        "const r = document.getElementById('pad').getBoundingClientRect(); return [r.width, r.height];"
    )
    assert abs(width / height - 3) < 0.05 and width > 800, (width, height)
    labels = [3, 1, 4, 5]
    draw(page, number_strokes([clear_digits[d][1] for d in labels]))
    wait_settled(page)
    png = page.execute_script("return window.mnist.drawing()")
    direct = backend.stub.ReadNumber(pb.ReadNumberRequest(image=base64.b64decode(png.split(",", 1)[1])), timeout=30)
    assert direct.digits == "3145", direct.digits
    assert page.execute_script("return document.body.dataset.number") == "3145"
    assert page.find_element("id", "digit").text == "3145"
    assert "% sure of every digit" in page.find_element("id", "confidence").text
    # One box per digit over the drawing, labelled with the digit read, inside the picture sent (a 3:1 PNG).
    boxes = shown_boxes(page)
    assert [b["label"] for b in boxes] == list("3145")
    assert {b["viewBox"] for b in boxes} == {f"0 0 {direct.width} {direct.height}"}
    assert direct.width == 3 * direct.height
    for box, want in zip(boxes, direct.per_digit):
        assert (box["x"], box["y"], box["width"], box["height"]) == (
            want.box.x,
            want.box.y,
            want.box.width,
            want.box.height,
        )
        assert box["x"] >= 0 and box["x"] + box["width"] <= direct.width
    # Each digit's top probability and the 28x28 image the model saw.
    items = page.find_elements("css selector", "#per-digit li")
    assert [i.find_element("tag name", "b").text for i in items] == list("3145")
    assert all(i.text.endswith("%") for i in items)
    assert page.execute_script("return document.querySelector('#per-digit img').naturalWidth") == 28
    # Back to one digit: the square pad, the ten bars, and nothing of the number left.
    page.find_element("css selector", "label:has(#mode-digit)").click()
    width, height = page.execute_script(
        "const r = document.getElementById('pad').getBoundingClientRect(); return [r.width, r.height];"
    )
    assert abs(width - height) < 1 and page.find_element("id", "bars").is_displayed()
    assert shown_boxes(page) == [] and page.execute_script("return document.body.dataset.number ?? null") is None


def test_number_mode_shows_a_mark_the_model_says_is_no_digit_as_a_question_mark_and_no_digit_as_not_a_number(
    page,
):
    """The page drew every digit of a number as read, a line through the number or a box round it as a digit
    ("2126"), where the client prints "2?26" (inference/preview.py format_number). The answer is the gateway's
    read-number shape, given to the page's own showNumber as its fetch would."""
    page.find_element("css selector", "label:has(#mode-number)").click()

    def digit(value: int, x: int, is_digit: bool = True) -> dict:
        probabilities = [0.01] * 10
        probabilities[value] = 0.91
        box = {"x": x, "y": 10, "width": 40, "height": 80}
        return {
            "digit": value,
            "probabilities": probabilities,
            "is_digit": is_digit,
            "digit_score": 0.9 if is_digit else 0.05,
            "box": box,
            "model_input": "",
        }

    answer = {
        "digits": "2126",
        "per_digit": [digit(2, 10), digit(1, 60, is_digit=False), digit(2, 110), digit(6, 160)],
        "separators": [{"position": 3, "mark": ".", "box": {"x": 152, "y": 80, "width": 5, "height": 5}}],
        "confidence": 0.8,
        "width": 300,
        "height": 100,
        "model_version": page.find_element("id", "model-version").text,
    }

    def show(answer: dict) -> list:
        """What the page shows for `answer`: the number, the boxes' labels, the list's items, the confidence."""
        return page.execute_script(
            "showNumber(arguments[0], null, null); return [document.body.dataset.number,"
            " [...document.querySelectorAll('#boxes text')].map((t) => t.textContent + ':' + t.getAttribute('class')),"
            " [...document.querySelectorAll('#per-digit li')].map((li) => li.textContent),"
            " document.getElementById('confidence').textContent];",
            answer,
        )

    number, boxes, items, confidence = show(answer)
    assert number == "2?2.6" and page.find_element("id", "digit").text == "2?2.6"
    assert boxes == ["2:digit", "?:mark", "2:digit", "6:digit", ".:mark"], boxes
    assert items[1] == "?not a digit" and items[0] == "291.0 %", items
    assert "one mark does not look like a digit (?)" in confidence, confidence
    assert page.find_element("id", "status").text.startswith("3 digits, 1 other mark; model ")
    # A picture with no digit at all (a lone letter, a smiley) is no number, said plainly, its marks still boxed;
    # the status counted the mark as "1 digit" under "Not a number".
    lone = {**answer, "digits": "1", "per_digit": [digit(1, 60, is_digit=False)], "separators": []}
    number, boxes, items, confidence = show(lone)
    assert number == "Not a number" and page.find_element("id", "digit").text == "Not a number"
    assert boxes == ["?:mark"] and items == ["?not a digit"] and confidence == "nothing in it looks like a digit"
    assert page.find_element("id", "status").text.startswith("0 digits, 1 other mark; model ")

    # An answer that comes while the Evaluate tab hides the pad: its labels were sized for no pad (a scale of 1,
    # 2 px on a phone), and showing the pad again at its own size did not size them again.
    label_size = "return document.querySelector('#boxes text').getAttribute('font-size')"
    page.execute_script("openTab('evaluate'); showNumber(arguments[0], null, null); openTab('draw')", answer)
    shown = page.execute_script(label_size)
    page.execute_script("drawBoxes()")
    assert shown == page.execute_script(label_size), (shown, page.execute_script(label_size))


def test_number_mode_reads_a_dropped_picture_and_shows_what_the_service_refuses(page, served, mnist):
    from testkit.numbers import make_numbers

    backend, _ = served
    page.find_element("css selector", "label:has(#mode-number)").click()
    candidates = make_numbers(
        mnist.test_images.numpy(),
        mnist.test_labels.numpy(),
        per_style=3,
        seed=7,
        separator=True,
        styles=["paint_program"],
    )
    number = next(
        n
        for n in candidates
        if backend.stub.ReadNumber(pb.ReadNumberRequest(image=n.data), timeout=30).digits == n.digits
    )
    position, mark = number.separator
    written = number.digits[:position] + mark + number.digits[position:]
    page_file(page, number.data, "number.png", "image/png", "drop")
    wait_until(lambda: "number.png:" in page.find_element("id", "status").text, timeout=20)
    assert page.find_element("id", "number-photo").is_displayed()
    shown = page.execute_script("return document.body.dataset.number")
    assert shown.replace(mark, "") == number.digits and shown in (written, number.digits), (shown, written)
    assert [b["label"] for b in shown_boxes(page)] == list(number.digits)
    # A blank picture: no number, no boxes, and the service's message in the status line, as an error.
    blank = Image.new("L", (600, 200), 250)
    data = io.BytesIO()
    blank.save(data, "PNG")
    page_file(page, data.getvalue(), "blank.png", "image/png", "drop")
    wait_until(lambda: "no digit found" in page.find_element("id", "status").text, timeout=20)
    assert "error" in page.find_element("id", "status").get_attribute("class")
    assert shown_boxes(page) == [] and page.find_element("id", "digit").text == "?"
    page.find_element("id", "clear").click()  # takes the picture away
    assert not page.find_element("id", "number-photo").is_displayed()


def test_number_mode_fits_a_phone(served, clear_digits):
    _, web = served
    phone = _chromium(phone=True)
    try:
        phone.get(web.url + "/#number")
        wait_until(lambda: phone.find_element("id", "model-version").text, timeout=15)
        assert phone.find_element("id", "mode-number").is_selected()
        width, scroll_width, pad = phone.execute_script("""
            return [window.innerWidth, document.documentElement.scrollWidth,
                    document.getElementById('pad').getBoundingClientRect().toJSON()];""")
        assert scroll_width <= width and pad["right"] <= width and pad["width"] >= 300
        draw(phone, number_strokes([clear_digits[d][1] for d in (2, 7)]), kind="touch")
        wait_settled(phone)
        assert phone.execute_script("return document.body.dataset.number") == "27"
        assert phone.execute_script("return document.documentElement.scrollWidth") <= width
    finally:
        stop_chromium(phone)


# --------------------------------------------------------------------------------------------------------------
# Where the page is served and the screen it is on: any model will do (tests/inference's "v1", untrained)


def _page_on(browser, url: str) -> None:
    browser.get(url)
    shown = wait_until(lambda: browser.find_element("id", "model-version").text == "v1", timeout=15)
    assert shown, browser.find_element("id", "model-status").text


def test_the_page_works_behind_a_proxy_that_serves_it_under_a_path_prefix(browser, backend, web):
    """A reverse proxy serving the gateway at https://host/mnist/: the page called the API from the host's root
    (/v1/model, /v1/predict), past the proxy's prefix, and had no model panel and no answer."""
    gateway = web(target=backend.target)
    with PrefixProxy(gateway.port, "/mnist") as proxy:
        _page_on(browser, proxy.url + "/mnist/")  # the script ran, and GET v1/model was answered
        assert browser.execute_script("return document.styleSheets[0].cssRules.length") > 0  # the styles
        draw(browser, [[(0.5, 0.2), (0.5, 0.8)]])  # POST v1/predict
        wait_settled(browser)
        assert shown_digit(browser) is not None, browser.find_element("id", "status").text
        browser.find_element("id", "mode-number").click()
        draw(browser, [[(0.5, 0.06), (0.5, 0.27)]])  # POST v1/read-number; a 1 on the strip, a third as high
        wait_settled(browser)
        assert browser.execute_script("return document.body.dataset.number ?? null") is not None
        assert proxy.outside == [], "the page asked for paths outside the prefix it is served under"


def test_the_pad_follows_a_change_of_pixel_ratio_without_a_resize_and_keeps_the_drawing(browser, backend, web):
    """Browser zoom, or the window moved to a screen of another density, change devicePixelRatio and not always
    the pad's size: the canvas stayed at the old scale (blurred strokes on a denser screen) until a resize. The
    ratio is changed three times, so the page must listen again after each change (never back to 1, the
    headless screen's own ratio: chromium's emulation does not report a return to it)."""
    gateway = web(target=backend.target)
    screen = {"width": 1000, "height": 800, "mobile": False}

    def backing_store() -> list[int]:
        return browser.execute_script("const p = document.getElementById('pad'); return [p.width, p.height]")

    def css_width() -> float:
        return browser.execute_script("return document.getElementById('pad').getBoundingClientRect().width")

    browser.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {**screen, "deviceScaleFactor": 1})
    try:
        _page_on(browser, gateway.url + "/")
        draw(browser, [[(0.2, 0.5), (0.8, 0.5)]])
        wait_settled(browser)
        width = css_width()
        for ratio in (2, 1.5, 1.25):
            browser.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {**screen, "deviceScaleFactor": ratio})
            assert browser.execute_script("return devicePixelRatio") == ratio
            # A frame drawn: headless chromium tells the page of the change (the media query's event) when it draws
            # one, as a browser on a screen does at once; a screenshot draws one.
            browser.get_screenshot_as_png()
            assert css_width() == width, "the pad was resized: a ResizeObserver would have seen it"
            expected = browser.execute_script(
                "const side = Math.round(arguments[0] * arguments[1]); return [side, side]", width, ratio
            )
            scaled = wait_until(lambda side=expected: backing_store() == side, timeout=5)
            assert scaled, f"the pad's backing store is {backing_store()}, not {expected}, at a ratio of {ratio}"
            # The stroke across the middle is redrawn at the new scale.
            centre = browser.execute_script(
                "const p = document.getElementById('pad');"
                "return [...p.getContext('2d').getImageData(p.width / 2, p.height / 2, 1, 1).data]"
            )
            assert centre[:3] == [17, 17, 17], centre  # INK, #111
    finally:
        browser.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})

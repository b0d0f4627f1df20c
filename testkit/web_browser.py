"""A real browser for the web page's test and benchmark: Debian's chromium, headless, driven by selenium through
chromium-driver, and MNIST test digits turned into pen strokes to draw on the page's canvas.

    driver = start_chromium()                       # needs `apt-get install chromium chromium-driver`
    strokes = digit_strokes(mnist.test_images[0].numpy())
    draw(driver, strokes, kind="pen")               # pointer events: "mouse", "pen" or "touch"

A stroke is how a person would draw the digit: the MNIST digit is upscaled, thinned to its one-pixel centre line
(testkit.user_images.zhang_suen_thinning) and the centre line is followed from end to end, one pointer-down ...
pointer-up per stroke, so a 7 is one or two strokes and an 8 a closed loop or two.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np

from testkit.user_images import digit_shape, zhang_suen_thinning

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
# A phone: 390 x 844 CSS pixels at 3 device pixels each, with a touch screen.
PHONE = {"width": 390, "height": 844, "pixelRatio": 3.0, "touch": True}


def browser_missing() -> str | None:
    """Why the browser cannot start here, or None."""
    for path, _package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not Path(path).exists() and shutil.which(Path(path).name) is None:
            return f"{path} not found: `apt-get install -y --no-install-recommends chromium chromium-driver`"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed: `pip install -e '.[dev]'`"
    return None


def start_chromium(*, width: int = 1280, height: int = 900, phone: bool = False):
    """Headless chromium with a fresh profile and nothing that reaches the network (the machine has none)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or CHROMIUM
    profile = tempfile.mkdtemp(prefix="mnist-chromium-")
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--disable-quic",
        "--disable-default-apps",
        "--disable-extensions",
        "--hide-scrollbars",
        f"--user-data-dir={profile}",
        f"--window-size={width},{height}",
    ):
        options.add_argument(flag)
    if phone:
        options.add_experimental_option("mobileEmulation", {"deviceMetrics": PHONE})
    # The driver named explicitly: selenium would otherwise try to download one (Selenium Manager).
    service = Service(shutil.which("chromedriver") or CHROMEDRIVER)
    driver = webdriver.Chrome(service=service, options=options)
    driver.mnist_profile = profile
    return driver


def stop_chromium(driver) -> None:
    profile = getattr(driver, "mnist_profile", None)
    driver.quit()
    if profile:
        shutil.rmtree(profile, ignore_errors=True)


# --------------------------------------------------------------------------------------------------------------
# A MNIST digit as pen strokes


_STEPS = [(-1, 0), (0, 1), (1, 0), (0, -1), (-1, 1), (1, 1), (1, -1), (-1, -1)]  # straight steps before diagonals


def _skeleton_graph(skeleton: np.ndarray) -> dict[tuple[int, int], set[tuple[int, int]]]:
    """Pixels of a one-pixel skeleton and their 8-neighbours, without the diagonal shortcut of an L-shaped corner
    (a diagonal step where two straight steps through a skeleton pixel join the same two pixels)."""
    pixels = set(zip(*np.nonzero(skeleton)))
    graph: dict[tuple[int, int], set[tuple[int, int]]] = {p: set() for p in pixels}
    for y, x in pixels:
        for dy, dx in _STEPS:
            q = (y + dy, x + dx)
            if q not in pixels:
                continue
            if dy and dx and ((y + dy, x) in pixels or (y, x + dx) in pixels):
                continue  # a corner: the straight steps already connect these two
            graph[(y, x)].add(q)
    return graph


def skeleton_paths(skeleton: np.ndarray, min_length: int = 4) -> list[list[tuple[int, int]]]:
    """Cover every edge of the skeleton with paths: from its ends first (top to bottom, as people write), then
    round what is left (the loops of a 0 or an 8). Each path is a list of (y, x) pixels; spurs shorter than
    `min_length` pixels (thinning noise) are dropped."""
    graph = _skeleton_graph(skeleton)
    used: set[frozenset] = set()

    def walk(start):
        path, here = [start], start
        while True:
            ahead = [q for q in graph[here] if frozenset((here, q)) not in used]
            if not ahead:
                return path
            # Go on as straight as possible: the neighbour closest to the direction we came from.
            if len(path) > 1:
                dy, dx = here[0] - path[-2][0], here[1] - path[-2][1]
                ahead.sort(key=lambda q: -((q[0] - here[0]) * dy + (q[1] - here[1]) * dx))
            step = ahead[0]
            used.add(frozenset((here, step)))
            path.append(step)
            here = step

    paths = []
    ends = sorted(p for p, n in graph.items() if len(n) == 1)
    for start in ends:
        if any(frozenset((start, q)) not in used for q in graph[start]):
            paths.append(walk(start))
    for start in sorted(graph):
        while any(frozenset((start, q)) not in used for q in graph[start]):
            path = walk(start)
            if len(path) > 2 and max(abs(path[-1][0] - start[0]), abs(path[-1][1] - start[1])) <= 1:
                path.append(start)  # close the loop
            paths.append(path)
    return [p for p in paths if len(p) >= min_length]


def digit_strokes(
    digit: np.ndarray, *, box: float = 0.62, height: int = 112, spacing: int = 3
) -> list[list[tuple[float, float]]]:
    """A (28, 28) uint8 MNIST digit -> strokes: lists of (x, y) points in units of the canvas's side (0..1),
    the digit `box` of the side tall, centred. Points every `spacing` pixels of the centre line."""
    shape = digit_shape(digit, height)  # (h, w) bool, the digit's long side `height` pixels
    paths = skeleton_paths(zhang_suen_thinning(shape))
    h, w = shape.shape
    scale = box / max(h, w)
    left, top = (1 - w * scale) / 2, (1 - h * scale) / 2
    strokes = []
    for path in paths:
        kept = path[::spacing] + ([path[-1]] if (len(path) - 1) % spacing else [])
        strokes.append([(left + x * scale, top + y * scale) for y, x in kept])
    return strokes


def draw(
    driver, strokes: list[list[tuple[float, float]]], *, kind: str = "mouse", element_id: str = "pad", move_ms: int = 8
) -> None:
    """Draw `strokes` on the canvas with W3C pointer actions of `kind` ("mouse", "pen" or "touch"): for each
    stroke, pointer down at its first point, moves through the rest (`move_ms` each), pointer up."""
    from selenium.webdriver.common.actions import interaction
    from selenium.webdriver.common.actions.action_builder import ActionBuilder
    from selenium.webdriver.common.actions.pointer_input import PointerInput

    kinds = {"mouse": interaction.POINTER_MOUSE, "pen": interaction.POINTER_PEN, "touch": interaction.POINTER_TOUCH}
    left, top, size = driver.execute_script(
        "const r = document.getElementById(arguments[0]).getBoundingClientRect(); return [r.left, r.top, r.width];",
        element_id,
    )
    actions = ActionBuilder(driver, mouse=PointerInput(kinds[kind], kind), duration=move_ms)
    pointer = actions.pointer_action
    for stroke in strokes:
        x0, y0 = stroke[0]
        pointer.move_to_location(left + x0 * size, top + y0 * size)
        pointer.pointer_down(pressure=0.5 if kind != "mouse" else None)
        for x, y in stroke[1:]:
            pointer.move_to_location(left + x * size, top + y * size, pressure=0.5 if kind != "mouse" else None)
        pointer.pointer_up()
    actions.perform()


# --------------------------------------------------------------------------------------------------------------
# Reading the page


def wait_settled(driver, timeout: float = 20.0) -> None:
    """Until the page has no prediction pending: nothing being drawn, asked, or on its way."""
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, timeout, poll_frequency=0.02).until(lambda d: d.execute_script("return !window.mnist.busy()"))


def shown_digit(driver) -> int | None:
    value = driver.execute_script("return document.body.dataset.prediction ?? null")
    return None if value is None else int(value)


def page_file(driver, data: bytes, name: str, mime: str, how: str) -> None:
    """Hand the page a picture as a person would by dropping it ("drop") or pasting it ("paste"): the same
    events, with a real File in their DataTransfer, that the browser dispatches."""
    import base64

    driver.execute_script(
        """
        const [b64, name, mime, how] = arguments;
        const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
        const transfer = new DataTransfer();
        transfer.items.add(new File([bytes], name, { type: mime }));
        const event = how === "drop"
          ? new DragEvent("drop", { dataTransfer: transfer, bubbles: true, cancelable: true })
          : new ClipboardEvent("paste", { clipboardData: transfer, bubbles: true, cancelable: true });
        (how === "drop" ? document.getElementById("pad") : document).dispatchEvent(event);
    """,
        base64.b64encode(data).decode("ascii"),
        name,
        mime,
        how,
    )

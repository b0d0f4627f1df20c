"""Draw docs/pipeline.png: users' pictures in several styles beside each stage of shared.image_pipeline.

    python -m bench.make_pipeline_figure [--out docs/pipeline.png] [--data-dir DIR]

Columns: the picture as the user sees it (transparency over a checkerboard, EXIF orientation applied), the ink
(contrast to the estimated paper, with the kept strokes' window outlined), the cropped digit after stroke-width
normalization, and the 28x28 image the model sees. Deterministic: the same pictures every run.
"""

from __future__ import annotations

import argparse
import io
import os
from pathlib import Path

import numpy as np

from shared import image_pipeline as ip

from testkit import user_images as ui

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA_DIR = REPO_ROOT.parent / "shared" / "data" / "mnist"  # as tests/conftest.py; or MNIST_DATA_DIR

# (row title, style function, MNIST test index, seed); the indices give different digits.
EXAMPLES = [
    ("paint program:\nthick brush, off-centre", ui.paint_program, 3, 2),
    ("web canvas: ink only\nin alpha (RGBA)", ui.web_canvas, 2, 0),
    ("thin pen, 1-3 px", ui.thin_pen, 1, 1),
    ("small (the dot), off-\ncentre on a big canvas", ui.small_off_centre, 4, 3),
    ("red on green of the\nsame brightness", None, 8, 0),
    ("photo of paper: light\ngradient, tilt, JPEG", ui.paper_photo, 11, 5),
    ("dark mode", ui.dark_mode, 18, 1),
    ("printed (DejaVu Serif)", "printed", 5, 0),
    # Real paper: the sheet's structure, shadows, faint pencil, dust and low-resolution scans.
    ("ruled paper with a\nred margin", ui.ruled_paper, 21, 3),
    ("squared paper", ui.squared_paper, 30, 2),
    ("hard shadow across\nthe page", ui.hard_shadow, 12, 4),
    ("soft shadow", ui.soft_shadow, 7, 1),
    ("faint pencil", ui.pencil, 9, 2),
    ("specks and dust", ui.specks, 16, 0),
    ("low-resolution scan,\nenlarged", ui.low_resolution, 6, 1),
    ("MNIST digit as PNG", "mnist", 0, 0),
]


def isoluminant_example(digit: np.ndarray, rng: np.random.Generator) -> bytes:
    ink, paper = ui._ISOLUMINANT_PAIRS[0]
    coverage = ui.place((500, 500), ui.draw_digit(digit, 330, 30), rng)
    return ui.encode(ui.paint(coverage, ink, paper), "PNG")


def example_bytes(style, index: int, seed: int, images: np.ndarray) -> bytes:
    rng = np.random.default_rng(seed)
    if style == "printed":
        fonts = [f for f in ui.available_fonts() if f.name == "DejaVuSerif.ttf"] or list(ui.available_fonts())
        return ui.printed_digit(index, fonts[0], rng)
    if style is None:
        return isoluminant_example(images[index], rng)
    if style == "mnist":
        return ui.encode(images[index], "PNG")
    return style(images[index], rng)


def as_user_sees_it(data: bytes) -> np.ndarray:
    """(H, W, 3) uint8: EXIF orientation applied, transparency shown over a grey checkerboard."""
    from PIL import Image, ImageOps

    img = ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGBA")
    rgba = np.asarray(img).astype(np.float32)
    h, w = rgba.shape[:2]
    square = max(8, max(h, w) // 24)
    ys, xs = np.mgrid[0:h, 0:w]
    checker = np.where(((ys // square) + (xs // square)) % 2 == 0, 205.0, 150.0)[:, :, None]
    alpha = rgba[:, :, 3:] / 255
    return (rgba[:, :, :3] * alpha + checker * (1 - alpha)).astype(np.uint8)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.make_pipeline_figure",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "docs" / "pipeline.png")
    parser.add_argument("--data-dir", default=os.environ.get("MNIST_DATA_DIR") or str(DEFAULT_DATA_DIR))
    args = parser.parse_args(argv)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.patches as patches
    import matplotlib.pyplot as plt

    from shared.data import load_mnist

    images = load_mnist(args.data_dir, download=False, verify=False).test_images.numpy()
    titles = [
        "what the user sent",
        "ink: contrast to the paper\n(kept strokes outlined)",
        "cropped, stroke width\nnormalized",
        "what the model sees\n(28x28)",
    ]
    # Two panels side by side: users' drawings on the left, real paper on the right.
    rows = (len(EXAMPLES) + 1) // 2
    fig, grid = plt.subplots(
        rows, 8, figsize=(17.5, 2.3 * rows), dpi=80, gridspec_kw={"width_ratios": [1.5, 1.5, 1, 1] * 2}
    )
    panels = [grid[r, 4 * c : 4 * c + 4] for c in range(2) for r in range(rows)]
    for row, (title, style, index, seed) in zip(panels, EXAMPLES):
        data = example_bytes(style, index, seed, images)
        trace = ip.trace_pipeline(ip.decode_image(data))
        row[0].imshow(as_user_sees_it(data))
        row[0].set_ylabel(title, fontsize=9, rotation=0, ha="right", va="center", labelpad=8)
        row[1].imshow(trace.ink, cmap="gray", vmin=0, vmax=255)
        x, y, w, h = trace.region.window
        row[1].add_patch(patches.Rectangle((x - 0.5, y - 0.5), w, h, fill=False, edgecolor="orange", linewidth=1.2))
        row[2].imshow(trace.crop, cmap="gray", vmin=0, vmax=1)
        row[3].imshow(trace.output, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
        row[3].set_xlabel(f"stroke/size {trace.stroke_ratio:.3f}", fontsize=7)
    for ax in grid.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    for ax, title in zip(grid[0], titles * 2):
        ax.set_title(title, fontsize=9)
    fig.suptitle(
        "shared/image_pipeline.py: users' pictures -> MNIST-style input "
        f"(MNIST's stroke/size: {ip.STROKE_RATIO_TARGET} median)",
        fontsize=10,
    )
    fig.tight_layout(rect=(0, 0, 0.985, 0.985))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out)
    plt.close(fig)
    print(f"wrote {args.out} ({args.out.stat().st_size // 1024} kB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

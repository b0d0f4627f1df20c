"""Draw docs/number.png: pictures of handwritten numbers with the boxes and the string ReadNumber reads.

    python -m bench.make_number_figure --artifacts artifacts [--out docs/number.png] [--seed 0]

Three kinds of picture made by testkit/numbers.py from MNIST test digits: a phone photo of an 8-digit number,
digits that touch (paint program), and an amount with a decimal comma (web canvas). For each kind the first
picture (in the seed's order) that is read right is shown, drawn by the client's own `read --preview`
(inference.client.draw_reading) from the response the service would send (inference.service.number_response).
"""

from __future__ import annotations

import argparse
import io
from pathlib import Path

import numpy as np

from shared import settings
from shared.cli import HelpFormatter

REPO_ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.make_number_figure", description=__doc__, formatter_class=HelpFormatter
    )
    parser.add_argument(
        "--artifacts",
        type=Path,
        default=Path(settings.DEFAULT_ARTIFACTS_DIR),
        help="read with the model published here",
    )
    parser.add_argument("--data-dir", type=Path, default=settings.data_dir(), help="MNIST files")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "docs" / "number.png")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    from PIL import Image

    from shared.data import load_mnist
    from shared.decode import decode_image, displayed_size

    from bench.bench_read_number import local_reader
    from inference.preview import draw_reading
    from inference.service import number_response
    from testkit.numbers import make_numbers

    mnist = load_mnist(args.data_dir, download=False, verify=False)
    images, labels = mnist.test_images.numpy(), mnist.test_labels.numpy()
    _, read_array, version = local_reader(args.artifacts)
    kinds = [
        dict(styles=["paper_photo"], layout="apart", lengths=(8, 8)),
        dict(styles=["paint_program"], layout="touching", lengths=(5, 6)),
        dict(styles=["web_canvas_alpha"], layout="apart", lengths=(5, 6), separator=True),
    ]
    panels = []
    for kind in kinds:
        for number in make_numbers(images, labels, per_style=20, seed=args.seed, **kind):
            reading = read_array(decode_image(number.data))
            separators = [(s.position, s.mark) for s in reading.separators]
            if reading.text == number.digits and separators == ([number.separator] if number.separator else []):
                response = number_response(reading, version, displayed_size(number.data), False)
                panels.append(draw_reading(on_white(number.data), response, max_side=800, crop=True))
                break
    width = max(p.width for p in panels)
    figure = Image.new("RGB", (width, sum(p.height + 10 for p in panels)), "white")
    top = 0
    for panel in panels:
        figure.paste(panel, (0, top))
        top += panel.height + 10
    args.out.parent.mkdir(parents=True, exist_ok=True)
    figure.quantize(colors=64).save(args.out, optimize=True)  # a palette keeps the file small
    print(f"wrote {args.out} ({len(panels)} pictures, model {version})")
    return 0


def on_white(data: bytes) -> bytes:
    """A transparent canvas export flattened onto white for display (the service reads the original)."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as img:
        if img.mode != "RGBA":
            return data
        flat = Image.new("RGB", img.size, "white")
        alpha = np.asarray(img)[:, :, 3]
        ink = Image.fromarray(np.dstack([255 - alpha] * 3).astype(np.uint8))
        flat.paste(ink)
        buffer = io.BytesIO()
        flat.save(buffer, format="PNG")
        return buffer.getvalue()


if __name__ == "__main__":
    raise SystemExit(main())

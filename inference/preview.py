"""Pictures and text the command-line client shows: probability bars, the preview of what the model saw, and a
number read with its boxes drawn on the picture. Pillow is imported only when a picture is drawn."""

from __future__ import annotations

import io
from pathlib import Path


def probability_bars(probabilities, width: int = 30) -> list[str]:
    """One line per digit: '  7 |██████████████▌        | 0.482', the answer marked."""
    best = max(range(len(probabilities)), key=lambda d: probabilities[d])
    lines = []
    for digit, p in enumerate(probabilities):
        eighths = round(max(0.0, min(1.0, p)) * width * 8)
        bar = "█" * (eighths // 8) + (" ▏▎▍▌▋▊▉"[eighths % 8] if eighths % 8 else "")
        lines.append(f"  {digit} |{bar.ljust(width)}| {p:.3f}{'  <-' if digit == best else ''}")
    return lines


def viewable(img):
    """A Pillow frame -> RGB as the service reads it: EXIF orientation applied, 16-bit and float grey brought to
    8 bits, transparency flattened onto the backdrop the service chooses (shared.decode), at full size so boxes
    in the picture's pixels still fit. A plain convert("RGB") clips 16-bit grey and drops the alpha a web canvas
    keeps its strokes in."""
    from PIL import Image, ImageOps

    from shared.decode import alpha_left_unset, flatten_alpha, pil_to_array

    opaque = alpha_left_unset(img)  # before the transpose, which forgets the file's format
    array = pil_to_array(ImageOps.exif_transpose(img), opaque=opaque)  # (H, W), (H, W, 3), or with alpha (H, W, 2/4)
    if array.ndim == 3 and array.shape[2] in (2, 4):
        array = flatten_alpha(array, max(array.shape[:2]))
    return Image.fromarray(array).convert("RGB")


def save_preview(path: Path, rows: list[tuple[str, bytes, bytes, str]], *, size: int = 224) -> None:
    """One row per image: the original beside the 28x28 image the model saw, scaled up, with a caption."""
    from PIL import Image, ImageDraw, ImageOps

    caption_height = 18
    tiles = []
    for name, original, model_input, caption in rows:
        try:
            with Image.open(io.BytesIO(original)) as img:
                img.seek(0)  # first frame of an animation
                left = ImageOps.contain(viewable(img), (2 * size, size))
        except Exception:  # the server read it, Pillow cannot: show a grey box rather than fail the preview
            left = Image.new("RGB", (size, size), (128, 128, 128))
        with Image.open(io.BytesIO(model_input)) as img:
            right = img.convert("RGB").resize(
                (size, size), Image.Resampling.NEAREST
            )  # nearest: each pixel a crisp square
        tiles.append((f"{name}: {caption}", left, right))
    width = max(t[1].width for t in tiles) + size + 30
    canvas = Image.new("RGB", (width, len(tiles) * (size + caption_height + 10)), "white")
    draw = ImageDraw.Draw(canvas)
    y = 0
    for caption, left, right in tiles:
        draw.text((10, y + 2), caption, fill="black")
        top = y + caption_height
        canvas.paste(left, (10, top + (size - left.height) // 2))
        canvas.paste(right, (width - size - 10, top))
        y += size + caption_height + 10
    save_picture(canvas, path)


def picture_format(path: Path) -> str | None:
    """The format `path`'s extension names where Pillow writes it (".jpg" -> "JPEG"), or None: saved as PNG."""
    from PIL import Image

    kind = Image.registered_extensions().get(path.suffix.lower())  # for the formats this Pillow reads
    return kind if kind in Image.SAVE else None


def format_problem(path: Path) -> str | None:
    """Why a picture cannot be saved under `path`'s name, or None. Pillow registers writers for formats that take
    no RGB picture (BLP, XBM, MSP, PALM: "cannot write mode RGB", found only once the call's work was done, or a
    traceback) or that need a plug-in (HDF5, GRIB, BUFR): a small picture saved in memory tells, before the call."""
    from PIL import Image

    kind = picture_format(path)
    if kind is None or kind == "PNG":
        return None
    try:
        Image.new("RGB", (16, 16)).save(io.BytesIO(), format=kind)
    except Exception as e:  # Pillow's writers raise ValueError, OSError, KeyError ... for a mode they cannot write
        return f"cannot save a picture as {kind} ({e}); name a .png, .jpg, .webp, .tif or .bmp file"
    return None


def save_picture(image, path: Path) -> None:
    """Save a Pillow image at `path` (its folder made): in the format the name's extension says where Pillow writes
    one (.jpg, .webp, ...: a preview named .jpg held PNG bytes), else as a PNG (no extension, or one of no image
    format); other formats than PNG get the picture without its alpha, which JPEG cannot hold. format_problem says
    beforehand whether the format takes the picture."""
    kind = picture_format(path) or "PNG"
    if kind != "PNG":
        image = image.convert("RGB")
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format=kind)


NOT_A_DIGIT_MARK = "?"


def format_number(response) -> str:
    """The digits read, with the separators put back where they were: "3.14"; a mark the model says is no digit
    at all (a line through the number, a box round it) as NOT_A_DIGIT_MARK: "2?26"."""
    text = (
        "".join(str(d.prediction.digit) if d.prediction.is_digit else NOT_A_DIGIT_MARK for d in response.per_digit)
        or response.digits
    )
    for s in sorted(response.separators, key=lambda s: -s.position):
        text = text[: s.position] + s.mark + text[s.position :]
    return text


def draw_reading(data: bytes, response, *, max_side: int = 1200, crop: bool = False):
    """The picture with each digit's box and digit drawn on it, and the number read above: a Pillow image.
    With `crop`, only the part of the picture around the number is shown."""
    from PIL import Image, ImageDraw, ImageFont

    with Image.open(io.BytesIO(data)) as img:
        img.seek(0)
        picture = viewable(img)
    boxes = [
        (d.box, str(d.prediction.digit) if d.prediction.is_digit else NOT_A_DIGIT_MARK) for d in response.per_digit
    ] + [(s.box, "") for s in response.separators]
    left = top = 0
    if crop and boxes:
        x0, y0 = min(b.x for b, _ in boxes), min(b.y for b, _ in boxes)
        x1, y1 = max(b.x + b.width for b, _ in boxes), max(b.y + b.height for b, _ in boxes)
        margin = max(x1 - x0, y1 - y0) // 12 + 4
        left, top = max(0, x0 - margin), max(0, y0 - margin)
        picture = picture.crop((left, top, min(picture.width, x1 + margin), min(picture.height, y1 + 2 * margin)))
    scale = min(1.0, max_side / max(picture.size))
    if scale < 1.0:
        picture = picture.resize(
            (round(picture.width * scale), round(picture.height * scale)), Image.Resampling.LANCZOS
        )
    banner = max(24, min(60, picture.height // 8))
    canvas = Image.new("RGB", (max(picture.width, 16 * banner), picture.height + banner), "white")
    canvas.paste(picture, (0, banner))
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default(size=banner * 2 // 3)  # Pillow's scalable default font
    small = ImageFont.load_default(size=max(10, banner // 2))
    line = max(2, round(2 * max(picture.size) / 1000))
    for box, label in boxes:
        x0, y0 = (box.x - left) * scale, (box.y - top) * scale + banner
        x1, y1 = (box.x + box.width - left) * scale, (box.y + box.height - top) * scale + banner
        colour = (230, 40, 40) if label else (40, 110, 230)  # digits red, separators blue
        draw.rectangle([x0, y0, x1, y1], outline=colour, width=line)
        draw.text((x0 + line, y1 + line), label, fill=colour, font=small)
    draw.text(
        (8, banner // 6),
        f"read: {format_number(response)}   confidence {response.confidence:.1%}",
        fill="black",
        font=font,
    )
    return canvas

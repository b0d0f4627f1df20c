"""shared.file_structure: files of far more blocks than a picture needs are refused before Pillow parses them (one
block at a time, in Python: seconds of CPU for a few MB); honest files of every format pass untouched."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from shared import file_structure
from shared.decode import ImageRejected, decode_image


def saved(fmt: str, **options) -> bytes:
    picture = np.full((60, 60), 255, np.uint8)
    picture[10:50, 25:35] = 0
    buffer = io.BytesIO()
    image = Image.fromarray(picture)
    (image.convert("P") if fmt == "GIF" else image).save(buffer, format=fmt, **options)
    return buffer.getvalue()


def png_chunk(kind: bytes, body: bytes = b"") -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def gif_with_comment_blocks(blocks: int) -> bytes:
    gif = saved("GIF")
    flags = gif[10]
    start = 13 + (3 << ((flags & 7) + 1) if flags & 0x80 else 0)  # after the global colour table
    return gif[:start] + b"\x21\xfe" + b"\x01A" * blocks + b"\x00" + gif[start:]


def png_with_chunks(chunks: int) -> bytes:
    png = saved("PNG")
    at = png.find(b"IDAT") - 4
    return png[:at] + png_chunk(b"abCd") * chunks + png[at:]


def jpeg_with_comments(segments: int) -> bytes:
    jpeg = saved("JPEG")
    return jpeg[:2] + b"\xff\xfe\x00\x02" * segments + jpeg[2:]


def jpeg_with_fill_bytes(count: int) -> bytes:
    jpeg = saved("JPEG")
    return jpeg[:2] + b"\xff" * count + jpeg[2:]


def jpeg_with_scans(scans: int) -> bytes:
    """A progressive JPEG whose last scan comes `scans` times over: each one more pass of libjpeg over the picture."""
    jpeg = saved("JPEG", progressive=True)
    last, end = jpeg.rfind(b"\xff\xda"), len(jpeg) - 2  # its last scan, up to EOI
    return jpeg[:end] + jpeg[last:end] * (scans - jpeg.count(b"\xff\xda")) + jpeg[end:]


def png_with_stray_frame_control(chunks: int) -> bytes:
    """An fcTL after the pixels of a PNG that is not animated (no acTL), then `chunks` unknown chunks: Pillow reads
    them all."""
    png = saved("PNG")
    at = png.find(b"IEND") - 4
    return png[:at] + png_chunk(b"fcTL", bytes(26)) + png_chunk(b"abCd") * chunks + png[at:]


def tiff_with_tags(tags: int) -> bytes:
    """A little-endian TIFF whose first directory holds `tags` entries (one private tag over and over)."""
    ifd = struct.pack("<H", tags) + struct.pack("<HHII", 65000, 3, 1, 0) * tags + struct.pack("<I", 0)
    return b"II*\x00" + struct.pack("<I", 8) + ifd


def tiff_with_strips(strips: int) -> bytes:
    """A 100x100 grey TIFF, one row per strip, all `strips` strips pointing at one byte."""
    entries = 9
    ifd_at = 16
    offsets_at = ifd_at + 2 + 12 * entries + 4
    counts_at = offsets_at + 2 * strips

    def entry(tag: int, kind: int, count: int, value: bytes) -> bytes:
        return struct.pack("<HHI", tag, kind, count) + value

    ifd = struct.pack("<H", entries) + b"".join(
        [
            entry(256, 4, 1, struct.pack("<I", 100)),
            entry(257, 4, 1, struct.pack("<I", 100)),
            entry(258, 3, 1, struct.pack("<HH", 8, 0)),
            entry(259, 3, 1, struct.pack("<HH", 1, 0)),
            entry(262, 3, 1, struct.pack("<HH", 1, 0)),
            entry(273, 3, strips, struct.pack("<I", offsets_at)),
            entry(277, 3, 1, struct.pack("<HH", 1, 0)),
            entry(278, 4, 1, struct.pack("<I", 1)),
            entry(279, 3, strips, struct.pack("<I", counts_at)),
        ]
    )
    tail = struct.pack(f"<{strips}H", *([8] * strips)) + struct.pack(f"<{strips}H", *([1] * strips))
    return b"II*\x00" + struct.pack("<I", ifd_at) + b"\x80" * 8 + ifd + struct.pack("<I", 0) + tail


def tiled_tiff(
    width: int, height: int, tile_width: int, tile_length: int, picture: np.ndarray | None = None, *, big: bool = False
) -> bytes:
    """A grey deflate TIFF (BigTIFF if `big`) of `width` x `height` pixels in tiles of `tile_width` x `tile_length`:
    the tiles of `picture`, padded with black to whole tiles as writers pad them; without one, every TileOffsets
    entry points at one tiny compressed tile, as in the review's files (the structure check reads only the tags)."""
    across, down = -(-width // tile_width), -(-height // tile_length)
    if picture is None:
        blobs, refs = [zlib.compress(bytes(16))], [0] * (across * down)
    else:
        padded = np.zeros((down * tile_length, across * tile_width), np.uint8)
        padded[:height, :width] = picture
        blobs = [
            zlib.compress(
                padded[r * tile_length : (r + 1) * tile_length, c * tile_width : (c + 1) * tile_width].tobytes()
            )
            for r in range(down)
            for c in range(across)
        ]
        refs = list(range(len(blobs)))
    word, long_type, value_size, entry_size = ("Q", 16, 8, 20) if big else ("I", 4, 4, 12)
    tags = [(256, width), (257, height), (258, 8), (259, 8), (262, 1), (277, 1), (284, 1), (322, tile_width)]
    tags += [(323, tile_length)]
    ifd_at = 16 if big else 8
    offsets_at = ifd_at + (8 if big else 2) + entry_size * (len(tags) + 2) + value_size
    counts_at = offsets_at + value_size * len(refs)
    starts = [counts_at + value_size * len(refs) + sum(len(b) for b in blobs[:k]) for k in range(len(blobs))]
    offsets, counts = [starts[k] for k in refs], [len(blobs[k]) for k in refs]

    def entry(tag: int, kind: int, values: list[int], at: int = 0) -> bytes:
        packed = struct.pack(f"<{len(values)}{'Q' if kind == 16 else 'I'}", *values)
        field = packed.ljust(value_size, b"\0") if len(packed) <= value_size else struct.pack("<" + word, at)
        return struct.pack("<HHQ" if big else "<HHI", tag, kind, len(values)) + field

    entries = [entry(tag, 4, [value]) for tag, value in tags]
    entries += [entry(324, long_type, offsets, offsets_at), entry(325, long_type, counts, counts_at)]
    head = b"II+\x00" + struct.pack("<HHQ", 8, 0, ifd_at) if big else b"II*\x00" + struct.pack("<I", ifd_at)
    ifd = struct.pack("<Q" if big else "<H", len(entries)) + b"".join(entries) + bytes(value_size)
    arrays = struct.pack(f"<{len(refs)}{word}", *offsets) + struct.pack(f"<{len(refs)}{word}", *counts)
    return head + ifd + arrays + b"".join(blobs)


def rle_bmp(width: int, height: int) -> bytes:
    """An 8-bit run-length encoded BMP whose data is one end-of-line and the end of the bitmap."""
    palette = b"".join(struct.pack("<BBBB", i, i, i, 0) for i in range(256))
    data = b"\x00\x00\x00\x01"
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 8, 1, len(data), 2835, 2835, 256, 0)
    offset = 14 + len(info) + len(palette)
    return b"BM" + struct.pack("<IHHI", offset + len(data), 0, 0, offset) + info + palette + data


@pytest.mark.parametrize(
    "name, data, limit",
    [
        ("GIF comment", gif_with_comment_blocks(file_structure.MAX_GIF_EXTENSION_BLOCKS + 1), "blocks of comments"),
        ("PNG chunks", png_with_chunks(file_structure.MAX_PNG_CHUNKS + 1), "chunks"),
        ("JPEG segments", jpeg_with_comments(file_structure.MAX_JPEG_SEGMENTS + 1), "segments"),
        ("JPEG fill bytes", jpeg_with_fill_bytes(file_structure.MAX_JPEG_FILL_BYTES + 1), "fill bytes"),
        ("TIFF strips", tiff_with_strips(file_structure.MAX_TIFF_STRIPS + 1), "strips or tiles"),
        ("TIFF tags", tiff_with_tags(file_structure.MAX_TIFF_ENTRIES + 1), "tags in its first directory"),
        ("JPEG scans", jpeg_with_scans(file_structure.MAX_JPEG_SCANS + 1), "scans"),
        ("PNG chunks after a stray fcTL", png_with_stray_frame_control(file_structure.MAX_PNG_CHUNKS + 1), "chunks"),
        ("RLE BMP", rle_bmp(file_structure.MAX_RLE_BMP_PIXELS + 1, 1), "run-length encoded BMP"),
    ],
)
def test_a_file_of_more_blocks_than_a_picture_needs_is_refused_before_it_is_parsed(name, data, limit, monkeypatch):
    def never(*args, **kwargs):
        raise AssertionError("Pillow was asked to parse the file")

    monkeypatch.setattr(Image, "open", never)
    with pytest.raises(ImageRejected, match=limit):
        decode_image(data)


@pytest.mark.parametrize(
    "data",
    [
        saved("PNG"),
        saved("JPEG"),
        saved("JPEG", progressive=True),
        saved("GIF", comment=b"x" * 100_000),  # a long comment in few blocks
        saved("TIFF"),
        saved("TIFF", compression="tiff_lzw"),
        saved("BMP"),
        gif_with_comment_blocks(1_000),
        png_with_chunks(100),
        jpeg_with_comments(100),
        jpeg_with_fill_bytes(10),
        tiff_with_strips(100),
        tiff_with_tags(100),
        jpeg_with_scans(file_structure.MAX_JPEG_SCANS),
        png_with_stray_frame_control(100),
        rle_bmp(100, 100),
    ],
)
def test_honest_files_and_modest_padding_pass(data):
    file_structure.check_file_structure(data)  # raises nothing


def test_an_animated_png_of_thousands_of_frames_passes():
    """Two chunks a frame (fcTL, fdAT), but Pillow reads the first frame only: only its chunks count."""
    frames = [Image.fromarray(np.full((8, 8), k % 256, np.uint8)) for k in range(2_100)]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="PNG", save_all=True, append_images=frames[1:])
    assert buffer.getvalue().count(b"fdAT") > file_structure.MAX_PNG_CHUNKS // 2
    assert decode_image(buffer.getvalue()).shape == (8, 8)


@pytest.mark.parametrize(
    "data",
    [
        b"II+\x00\x08\x00\x00\x00" + b"\xff" * 8 + b"\x00" * 32,  # a BigTIFF offset past any size
        b"MM\x00*\xff\xff\xff\xff",
        b"GIF89a\x01\x00\x01\x00\xff",
        b"\x89PNG\r\n\x1a\n\xff\xff\xff\xff",
        b"BM" + b"\xff" * 40,
    ],
)
def test_a_damaged_file_is_left_to_pillow_which_rejects_it(data):
    file_structure.check_file_structure(data)  # no exception of its own
    with pytest.raises(ImageRejected):
        decode_image(data)


def test_the_jpeg_walk_skips_a_thumbnail_in_its_segment_and_a_scans_data_to_the_next_marker():
    thumbnail = saved("JPEG")  # a whole JPEG (SOI ... SOS, data, EOI) inside an APP1 segment
    progressive = saved("JPEG", progressive=True, quality=90)
    app1 = b"\xff\xe1" + struct.pack(">H", len(thumbnail) + 2) + thumbnail
    with_thumbnail = progressive[:2] + app1 + progressive[2:]

    markers = list(file_structure.jpeg_markers(with_thumbnail))

    assert markers == [0xE1, *file_structure.jpeg_markers(progressive)]
    assert markers[-1] == 0xD9 and markers.count(0xD8) == 0  # the thumbnail's own SOI and EOI are not walked
    assert markers.count(0xDA) > 1  # each scan of the progressive picture, its data skipped up to the next marker


@pytest.mark.parametrize(
    "width, height, tile_width, tile_length, big",
    [
        (16, 16, 32_768, 32_768, False),  # the review's file: libtiff inflated 1 GiB a tile (+1 GiB, 1.7 s a call)
        (16, 16, 46_336, 46_336, True),  # 2 GiB a tile, in a BigTIFF
        (16, 16, 8_192, 8_192, False),  # 64 MiB a tile
        (524_288, 16, 32_768, 32_768, False),  # tiles as wide as a row of them needs, but 2,048 times as tall
        (4_000_000, 1, 1_024, 1_024, False),  # tiles of a writer's size, 3,907 of them: 4 G pixels for 4 M
    ],
)
def test_a_tiff_in_tiles_far_larger_than_its_picture_is_refused_before_it_is_parsed(
    width, height, tile_width, tile_length, big, monkeypatch
):
    """libtiff decodes every tile whole, padding included, outside the decode budget: a 16 x 16 picture in one tile
    of 32,768 x 32,768 (1 MB of file, every TileOffsets entry at one compressed tile of zeros) cost 1 GiB and a
    second of CPU a tile, and a client's deadline did not stop it (found in review)."""

    def never(*args, **kwargs):
        raise AssertionError("Pillow was asked to parse the file")

    data = tiled_tiff(width, height, tile_width, tile_length, big=big)
    monkeypatch.setattr(Image, "open", never)
    with pytest.raises(ImageRejected, match=r"tiles of .*save it as PNG or JPEG, or as a TIFF in strips"):
        decode_image(data)


@pytest.mark.parametrize(
    "width, height, tile_width, tile_length, big",
    [
        (60, 60, 16, 16, False),  # the smallest tiles TIFF allows, padded at the right and the foot
        (60, 60, 256, 256, True),  # libtiff's and most writers' tile, larger than a small picture
        (60, 60, 1_024, 1_024, False),  # the largest a writer gives a picture smaller than one tile
        (3_000, 20, 512, 512, False),  # a strip of a picture in GDAL's tiles: 26 times its pixels decoded
        (1_000, 700, 1_008, 704, True),  # one tile for the whole picture, its sides rounded up to 16
    ],
)
def test_tiled_tiffs_as_writers_tile_them_pass_and_decode_as_their_picture(width, height, tile_width, tile_length, big):
    picture = np.full((height, width), 255, np.uint8)
    picture[height // 5 : height - height // 5, width // 3 : width - width // 3] = 0
    data = tiled_tiff(width, height, tile_width, tile_length, picture, big=big)
    png = io.BytesIO()
    Image.fromarray(picture).save(png, format="PNG")

    file_structure.check_file_structure(data)  # raises nothing
    assert np.array_equal(decode_image(data), decode_image(png.getvalue()))


def test_a_tiff_directory_cut_short_is_checked_by_the_tags_it_holds():
    """Pillow reads the entries of a directory whose count runs past the end of the file, and opens the picture
    (with a warning): the walk reads them too, rather than leave the file unchecked as damaged."""
    data = bytearray(tiled_tiff(16, 16, 32_768, 32_768))
    struct.pack_into("<H", data, 8, 1_000)  # the directory's entry count: 1,000 x 12 bytes, far past the end
    with pytest.raises(file_structure.TooManyBlocks, match="tiles far larger than the picture"):
        file_structure.check_file_structure(bytes(data))

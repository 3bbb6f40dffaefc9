"""Images as a receiver treats them (p2pd.core.images, issue 14): told by content, sized from the header without
decoding, previewed in a few KB, checked once, and decompression bombs refused before anything is decoded."""

import struct
import time
import zlib

import pytest
from PIL import Image

from p2pd.core import images


def make(path, fmt, size=(640, 480)):
    im = Image.new("RGB", size)
    for x in range(0, size[0], 7):  # some detail, so that the encoders have work to do
        for y in range(0, size[1], 5):
            im.putpixel((x, y), ((x * 3) % 256, (y * 5) % 256, (x + y) % 256))
    im.save(path, fmt)
    return path


def png_header_only(path, width, height):
    """A PNG of a few hundred bytes that claims *width* x *height* (the shape of a decompression bomb)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    body = zlib.compress(b"\x00" * 1000, 9)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", body) + chunk(b"IEND", b""))
    return path


@pytest.mark.parametrize("fmt", images.FORMATS)
def test_the_four_formats_are_told_by_content_not_by_name(tmp_path, fmt):
    path = make(tmp_path / "photo.txt", fmt)  # the wrong extension on purpose
    assert images.sniff(path.read_bytes()[:images.SNIFF_BYTES]) == fmt
    assert images.describe(path) == {"format": fmt, "width": 640, "height": 480}
    assert images.check(path) is None


def test_other_files_are_not_images(tmp_path):
    text = tmp_path / "notes.png"
    text.write_text("not a picture")
    bmp = make(tmp_path / "old.bmp", "BMP")
    for path in (text, bmp):
        assert images.sniff(path.read_bytes()[:16]) is None
        with pytest.raises(images.ImageProblem, match="not a PNG, JPEG, GIF or WEBP image"):
            images.describe(path)


def test_a_thumbnail_is_small_and_made_cheaply_from_a_large_photo(tmp_path):
    big = make(tmp_path / "big.jpg", "JPEG", size=(4000, 3000))
    started = time.monotonic()
    thumb = images.thumbnail(big)
    elapsed = time.monotonic() - started
    assert len(thumb) <= images.THUMB_BYTES
    small = Image.open(__import__("io").BytesIO(thumb))
    assert small.format == "JPEG" and max(small.size) <= images.THUMB_PX and small.size[0] / small.size[1] == 4 / 3
    assert elapsed < 2.0, "draft mode should make this cheap: %.2f s" % elapsed


def test_a_decompression_bomb_is_refused_from_its_header_in_milliseconds(tmp_path):
    bomb = png_header_only(tmp_path / "bomb.png", 14000, 14000)
    assert bomb.stat().st_size < 400
    started = time.monotonic()
    for call in (images.describe, images.thumbnail):
        with pytest.raises(images.ImageProblem, match="too large to decode safely"):
            call(bomb)
    assert "too large to decode safely" in images.check(bomb)
    assert time.monotonic() - started < 0.5


def test_between_pillows_warning_and_its_error_is_refused_too(tmp_path):
    """Pillow only warns from 89 Mpx; 120 Mpx is over our limit and refused (and never decoded)."""
    assert images.MAX_PIXELS < 120_000_000 < 2 * Image.MAX_IMAGE_PIXELS
    with pytest.raises(images.ImageProblem, match="too large"):
        images.describe(png_header_only(tmp_path / "wide.png", 12000, 10000))


def test_a_file_that_claims_to_be_an_image_and_does_not_decode_is_said_so(tmp_path):
    good = make(tmp_path / "a.png", "PNG").read_bytes()
    cut = tmp_path / "cut.png"
    cut.write_bytes(good[:len(good) // 2])
    assert images.describe(cut)["format"] == "PNG"  # the header is fine
    assert images.check(cut).startswith("not a valid image")


def test_inspect_says_what_a_received_file_is_from_an_open_file(tmp_path):
    """inspect() takes the open file the receiver has (opened without following links) and leaves it at its start."""
    path = make(tmp_path / "a.jpg", "JPEG")
    with open(path, "rb") as f:
        assert images.inspect(f) == {"format": "JPEG", "width": 640, "height": 480, "check": "ok"}
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    assert images.inspect(text) is None  # not an image at all: nothing to say


def test_a_truncated_jpeg_is_not_a_valid_image_though_decoded_at_an_eighth(tmp_path):
    good = make(tmp_path / "a.jpg", "JPEG", size=(1600, 1200)).read_bytes()
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(good[:len(good) * 2 // 3])
    found = images.inspect(cut)
    assert found["check"] == "invalid" and found["problem"].startswith("not a valid image"), found
    assert (found["width"], found["height"]) == (1600, 1200)


def test_a_bomb_is_refused_and_a_costly_png_is_not_decoded(tmp_path):
    """Over MAX_PIXELS: refused from the header; within it but over DECODE_BYTES: neither previewed nor decoded."""
    bomb = images.inspect(png_header_only(tmp_path / "bomb.png", 14000, 14000))
    assert bomb["check"] == "refused" and "too large to decode safely" in bomb["problem"], bomb
    side = 5000  # RGB: 5000 x 5000 x 4 bytes = 95 MiB
    costly = tmp_path / "costly.png"
    Image.new("RGB", (side, side)).save(costly, "PNG")
    found = images.inspect(costly)
    assert found["check"] == "unchecked" and found["width"] == side, found
    with pytest.raises(images.TooCostly):
        images.thumbnail(costly)


def test_check_preview_takes_only_small_jpegs_that_decode(tmp_path):
    thumb = images.thumbnail(make(tmp_path / "a.png", "PNG"))
    assert images.check_preview(thumb) == (256, 192)
    png = make(tmp_path / "small.png", "PNG", size=(50, 50)).read_bytes()
    large = __import__("io").BytesIO()
    Image.new("RGB", (300, 10)).save(large, "JPEG")
    for bad, why in ((png, "not a JPEG"), (thumb[:len(thumb) // 2], "does not decode"),
                     (large.getvalue(), "300 x 10 pixels"), (b"\xff\xd8\xff" + b"\0" * (20 << 10), "bytes")):
        with pytest.raises(images.ImageProblem, match=why):
            images.check_preview(bad)


def test_what_is_said_of_a_file_never_names_its_path(tmp_path):
    """The sender's reasons travel in its offer: they must not tell the peer where its files are."""
    broken = tmp_path / "secret-folder" / "x.png"
    broken.parent.mkdir()
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    zero = png_header_only(tmp_path / "secret-folder" / "zero.png", 0, 200_000_000)  # RELIABILITY row 36
    for path in (broken, zero):
        with pytest.raises(images.ImageProblem) as info:
            images.describe(path)
        assert "secret-folder" not in str(info.value) and str(info.value).startswith("not a valid image")
        with open(path, "rb") as f:
            assert images.inspect(f)["check"] == "invalid" and "BufferedReader" not in images.inspect(f)["problem"]

"""Images, as a receiver must treat them: told by content, sized from the header, previewed small, checked once.

Only four formats count as images: PNG, JPEG, GIF and WEBP, told by their first bytes (:func:`sniff`), never by
the name's extension. :func:`describe` reads the format and dimensions from the header without decoding a pixel;
:func:`thumbnail` makes the small preview an offer carries (at most ``THUMB_PX`` on a side, a few KB; JPEG's draft
mode decodes at 1/2, 1/4 or 1/8 scale, so even a large photo costs little); :func:`check` decodes a received
image once and says whether it is one.

Decompression bombs are refused from the header, before anything is decoded: an image over ``MAX_PIXELS`` raises
:class:`ImageProblem` (Pillow itself only *warns* between 89 and 179 Mpx; here its warning is an error too). These
functions block (they read files and decode): callers run them in a thread, never on the reactor."""

import io
import warnings

from PIL import Image

FORMATS = ("PNG", "JPEG", "GIF", "WEBP")
MAX_PIXELS = 100_000_000  # a 100 Mpx photo is an image; a 14000 x 14000 one from 200 bytes of PNG is a bomb
THUMB_PX = 256  # a thumbnail's longest side
THUMB_BYTES = 16 << 10  # at most this much of preview in an offer
SNIFF_BYTES = 16  # what sniff() needs of a file's head

_MAGIC = ((b"\x89PNG\r\n\x1a\n", "PNG"), (b"\xff\xd8\xff", "JPEG"), (b"GIF87a", "GIF"), (b"GIF89a", "GIF"))


class ImageProblem(ValueError):
    """The file is not an image we take: not one of the formats, unreadable, or too large to decode safely."""


def sniff(head: bytes):
    """The format the first bytes of a file say (``"PNG"``, ``"JPEG"``, ``"GIF"``, ``"WEBP"``), or None."""
    for magic, name in _MAGIC:
        if head.startswith(magic):
            return name
    if len(head) >= 12 and head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    return None


def _open(path):
    """Pillow's lazy open, restricted to our formats, with its bomb warning turned into ImageProblem and our own
    pixel limit applied before any decoding."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(path, formats=FORMATS)
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as e:
        raise ImageProblem("too large to decode safely: %s" % e) from None
    except (OSError, ValueError, SyntaxError) as e:  # UnidentifiedImageError is an OSError
        raise ImageProblem("not a valid image: %s" % e) from None
    width, height = im.size
    if width * height > MAX_PIXELS:
        im.close()
        raise ImageProblem("too large to decode safely: %d x %d pixels (the limit is %d Mpx)"
                           % (width, height, MAX_PIXELS // 1_000_000))
    return im


def describe(path) -> dict:
    """``{"format", "width", "height"}`` of the image at *path*, from its header alone; ImageProblem if it is
    not one of the four formats or is too large to decode safely."""
    with open(path, "rb") as f:
        claimed = sniff(f.read(SNIFF_BYTES))
    if claimed is None:
        raise ImageProblem("not a PNG, JPEG, GIF or WEBP image")
    im = _open(path)
    try:
        return {"format": im.format, "width": im.size[0], "height": im.size[1]}
    finally:
        im.close()


def thumbnail(path, px=THUMB_PX, most=THUMB_BYTES) -> bytes:
    """A JPEG preview of the image at *path*, its longest side at most *px*, at most *most* bytes (the quality is
    lowered until it fits); ImageProblem if the image cannot be read."""
    im = _open(path)
    try:
        if im.format == "JPEG":
            im.draft("RGB", (px, px))  # decode at the smallest scale that is still at least px
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im.thumbnail((px, px))
        small = im.convert("RGB")
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombWarning) as e:
        raise ImageProblem("not a valid image: %s" % e) from None
    finally:
        im.close()
    for quality in (75, 60, 45, 30, 15):
        out = io.BytesIO()
        small.save(out, "JPEG", quality=quality, optimize=True)
        if out.tell() <= most:
            return out.getvalue()
    small.thumbnail((px // 2, px // 2))
    out = io.BytesIO()
    small.save(out, "JPEG", quality=15)
    return out.getvalue()


def check(path):
    """None if the file at *path* decodes as the image its first bytes say it is, else why not (a short text):
    a received "image" that does not decode still lands, marked with this reason."""
    try:
        im = _open(path)
    except ImageProblem as e:
        return str(e)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im.load()
        return None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombWarning, EOFError) as e:
        return "not a valid image: %s" % (e or type(e).__name__)
    finally:
        im.close()

"""Images, as a receiver must treat them: told by content, sized from the header, previewed small, checked once.

Only four formats count as images: PNG, JPEG, GIF and WEBP, told by their first bytes (:func:`sniff`), never by
the name's extension. :func:`describe` reads the format and dimensions from the header without decoding a pixel;
:func:`thumbnail` makes the small preview an offer carries (at most ``THUMB_PX`` on a side, a few KB; JPEG's draft
mode decodes at 1/2, 1/4 or 1/8 scale, so even a large photo costs little); :func:`inspect` (and :func:`check`)
decodes a received image once and says whether it is one; :func:`check_preview` checks a preview a peer sent.

Decompression bombs are refused from the header, before anything is decoded: an image over ``MAX_PIXELS`` raises
:class:`TooLarge` (Pillow itself only *warns* between 89 and 179 Mpx; here its warning is an error too). Memory is
bounded below that too: a JPEG is decoded at 1/8 scale to be checked (draft mode: every byte of it is still read
and entropy-decoded), and a PNG, GIF or WEBP whose pixels would take more than ``DECODE_BYTES`` is neither
previewed nor decoded to be checked (:class:`TooCostly`: it is reported "not checked"). These functions block
(they read files and decode): callers run them in a thread, never on the reactor."""

import io
import warnings

from PIL import Image

FORMATS = ("PNG", "JPEG", "GIF", "WEBP")
MAX_PIXELS = 100_000_000  # a 100 Mpx photo is an image; a 14000 x 14000 one from 200 bytes of PNG is a bomb
THUMB_PX = 256  # a thumbnail's longest side
THUMB_BYTES = 16 << 10  # at most this much of preview in an offer
SNIFF_BYTES = 16  # what sniff() needs of a file's head
DECODE_BYTES = 64 << 20  # the most memory one full decode (a PNG, GIF or WEBP) may take

_MAGIC = ((b"\x89PNG\r\n\x1a\n", "PNG"), (b"\xff\xd8\xff", "JPEG"), (b"GIF87a", "GIF"), (b"GIF89a", "GIF"))


class ImageProblem(ValueError):
    """The file is not an image we take: not one of the formats, unreadable, or too large to decode safely."""


class TooLarge(ImageProblem):
    """Refused from the header: more than MAX_PIXELS (the shape of a decompression bomb)."""


class TooCostly(ImageProblem):
    """A PNG, GIF or WEBP within MAX_PIXELS whose full decode would take more than DECODE_BYTES."""


def sniff(head: bytes):
    """The format the first bytes of a file say (``"PNG"``, ``"JPEG"``, ``"GIF"``, ``"WEBP"``), or None."""
    for magic, name in _MAGIC:
        if head.startswith(magic):
            return name
    if len(head) >= 12 and head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    return None


def _open(source, formats=FORMATS):
    """Pillow's lazy open of *source* (a path or a binary file), restricted to *formats*, with its bomb warning
    turned into TooLarge and our own pixel limit applied before any decoding."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(source, formats=formats)
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as e:
        raise TooLarge("too large to decode safely: %s" % e) from None
    except Image.UnidentifiedImageError:  # its text names the file: a sender's path is not the receiver's business
        raise ImageProblem("not a valid image: its header is broken or of no format we open") from None
    except (OSError, ValueError, SyntaxError) as e:
        raise ImageProblem("not a valid image: %s" % (getattr(e, "strerror", None) or e)) from None
    width, height = im.size
    if width * height > MAX_PIXELS:
        im.close()
        raise TooLarge("too large to decode safely: %d x %d pixels (the limit is %d Mpx)"
                       % (width, height, MAX_PIXELS // 1_000_000))
    return im


def _affordable(im):
    """TooCostly if decoding *im* in full would take more than DECODE_BYTES (a JPEG never does: it is decoded
    scaled down). Pillow keeps a pixel of one band in a byte (two for 16-bit), of several bands in four."""
    width, height = im.size
    per_pixel = 1 if im.mode in ("1", "L", "P") else 2 if im.mode.startswith("I;16") else 4
    need = width * height * per_pixel
    if im.format != "JPEG" and need > DECODE_BYTES:
        raise TooCostly("too costly to decode here: %d x %d pixels would take %d MiB, more than the %d MiB one "
                        "decode may use" % (width, height, need >> 20, DECODE_BYTES >> 20))


def _head(source):
    """The first SNIFF_BYTES of *source* (a path, or a binary file, read from its start and left there)."""
    if hasattr(source, "read"):
        source.seek(0)
        head = source.read(SNIFF_BYTES)
        source.seek(0)
        return head
    with open(source, "rb") as f:
        return f.read(SNIFF_BYTES)


def describe(path) -> dict:
    """``{"format", "width", "height"}`` of the image at *path*, from its header alone; ImageProblem if it is
    not one of the four formats or is too large to decode safely."""
    claimed = sniff(_head(path))
    if claimed is None:
        raise ImageProblem("not a PNG, JPEG, GIF or WEBP image")
    im = _open(path)
    try:
        return {"format": im.format, "width": im.size[0], "height": im.size[1]}
    finally:
        im.close()


def thumbnail(path, px=THUMB_PX, most=THUMB_BYTES) -> bytes:
    """A JPEG preview of the image at *path*, its longest side at most *px*, at most *most* bytes (the quality is
    lowered until it fits); ImageProblem if the image cannot be read (TooCostly: too large to decode here)."""
    im = _open(path)
    try:
        _affordable(im)
    except TooCostly:
        im.close()
        raise
    try:
        if im.format == "JPEG":
            im.draft("RGB", (px, px))  # decode at the smallest scale that is still at least px
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im.thumbnail((px, px))
        small = im.convert("RGB")
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombWarning) as e:
        raise ImageProblem("not a valid image: %s" % (e or type(e).__name__)) from None
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


def inspect(source):
    """What a received file is as an image: None if its first bytes are not one of the four formats, else
    ``{"format", "width", "height", "check"}`` where ``check`` is ``"ok"`` (it decodes), ``"invalid"`` (it does
    not), ``"refused"`` (a decompression bomb, refused from its header) or ``"unchecked"`` (too costly to decode
    here: :class:`TooCostly`); but for ``"ok"``, ``"problem"`` says why. *source* is a path or a binary file.
    The width and height are missing when the header does not give them."""
    claimed = sniff(_head(source))
    if claimed is None:
        return None
    try:
        im = _open(source)
    except ImageProblem as e:
        return {"format": claimed, "check": "refused" if isinstance(e, TooLarge) else "invalid", "problem": str(e)}
    found = {"format": im.format, "width": im.size[0], "height": im.size[1], "check": "ok"}
    try:
        _affordable(im)
        if im.format == "JPEG":
            im.draft(None, (max(1, im.size[0] // 8), max(1, im.size[1] // 8)))  # 1/8 scale, all bytes read
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im.load()
    except TooCostly as e:
        found.update(check="unchecked", problem=str(e))
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombWarning, EOFError) as e:
        found.update(check="invalid", problem="not a valid image: %s" % (e or type(e).__name__))
    finally:
        im.close()
    return found


def check(path):
    """None if the file at *path* decodes as the image its first bytes say it is, else why not (a short text):
    a received "image" that does not decode still lands, marked with this reason."""
    found = inspect(path)
    if found is None:
        return "not a valid image: not a PNG, JPEG, GIF or WEBP image"
    return found.get("problem")


def check_preview(data: bytes):
    """``(width, height)`` of *data* if it is a preview as a peer may send one: a JPEG of at most THUMB_BYTES
    and THUMB_PX on a side that decodes; else ImageProblem."""
    if len(data) > THUMB_BYTES:
        raise ImageProblem("a preview of %d bytes (at most %d)" % (len(data), THUMB_BYTES))
    if sniff(data[:SNIFF_BYTES]) != "JPEG":
        raise ImageProblem("a preview that is not a JPEG")
    im = _open(io.BytesIO(data), formats=("JPEG",))
    if max(im.size) > THUMB_PX or min(im.size) < 1:
        im.close()
        raise ImageProblem("a preview of %d x %d pixels (at most %d a side)" % (im.size + (THUMB_PX,)))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im.load()
        return im.size
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombWarning, EOFError) as e:
        raise ImageProblem("a preview that does not decode: %s" % (e or type(e).__name__)) from None
    finally:
        im.close()

"""Input images: what they are (from their first bytes), and decoding them within bounds.

The API reads only an image's header (type from magic bytes, size), so a bad
or oversized image is refused at submit for the cost of a few hundred bytes.
The worker decodes, one image at a time, each reduced while decoding to what
the output frame needs: the memory one task takes is about one decoded image
(at most `max_pixels` × 4 bytes) instead of all of them at full size.
"""

from __future__ import annotations

import base64
import contextlib
import io
from collections.abc import Sequence
from dataclasses import dataclass

from PIL import Image, ImageOps

__all__ = [
    "ImageHeader",
    "InputImage",
    "as_data_url",
    "check_task_pixels",
    "decode_reduced",
    "probe_image",
    "sniff_image_type",
]

# (mime type, Pillow format name)
_PNG = ("image/png", "PNG")
_JPEG = ("image/jpeg", "JPEG")
_WEBP = ("image/webp", "WEBP")
_GIF = ("image/gif", "GIF")
# Modes `Image.reduce` works on directly; others (palette, 16-bit) are converted first.
_REDUCIBLE_MODES = frozenset({"L", "LA", "RGB", "RGBA", "RGBa", "La"})


@dataclass(frozen=True)
class InputImage:
    """Raw bytes of a PNG, JPEG, WebP or GIF image, with its checked type and size."""

    data: bytes
    mime_type: str
    width: int
    height: int


@dataclass(frozen=True)
class ImageHeader:
    """What an image's header says, before any pixel is decoded."""

    mime_type: str
    format: str  # Pillow's name for it
    width: int
    height: int

    @property
    def pixels(self) -> int:
        return self.width * self.height


def sniff_image_type(data: bytes) -> tuple[str, str] | None:
    """``(mime type, Pillow format)`` from magic bytes, or None if not an accepted image.

    The server's Content-Type, a data: URL's media type and the URL's
    extension are never trusted.
    """
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return _PNG
    if data.startswith(b"\xff\xd8\xff"):
        return _JPEG
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return _WEBP
    if data.startswith((b"GIF87a", b"GIF89a")):
        return _GIF
    return None


def as_data_url(data: bytes, declared_type: str | None) -> str:
    """An uploaded file as a `data:` URL, so it meets exactly the checks of an image
    sent inline. The type is the bytes' own when they are an accepted image;
    otherwise the declared one if it names an image (the check then says what is
    wrong with the bytes), and otherwise none, which is refused as not an image."""
    sniffed = sniff_image_type(data)
    if sniffed is not None:
        kind = sniffed[0]
    elif declared_type and declared_type.startswith("image/"):
        kind = declared_type
    else:
        kind = "application/octet-stream"
    return f"data:{kind};base64,{base64.b64encode(data).decode()}"


def probe_image(data: bytes, max_pixels: int) -> ImageHeader:
    """Type and size from the header alone (`Image.open` decodes nothing);
    ValueError says what is wrong."""
    kind = sniff_image_type(data)
    if kind is None:
        raise ValueError("is not a PNG, JPEG, WebP or GIF image (File type not supported)")
    mime, fmt = kind
    try:
        with Image.open(io.BytesIO(data), formats=[fmt]) as opened:
            width, height = opened.size
    except Exception as exc:  # Pillow raises many types for a corrupt header
        raise ValueError(f"is not a readable {fmt} image: {type(exc).__name__}") from None
    if width <= 0 or height <= 0:
        raise ValueError(f"is a {fmt} image with an empty size {width}x{height}")
    if width * height > max_pixels:
        raise ValueError(
            f"is {width}x{height} pixels, more than the {max_pixels} allowed per image"
        )
    return ImageHeader(mime, fmt, width, height)


def check_task_pixels(headers: Sequence[ImageHeader], budget: int) -> None:
    """One task's images together stay within `budget` pixels (checked before decoding)."""
    total = sum(header.pixels for header in headers)
    if total > budget:
        raise ValueError(f"have {total} pixels together, more than the {budget} allowed per task")


def decode_reduced(data: bytes, header: ImageHeader, short_side: int | None) -> InputImage:
    """Decode the image in full (which proves it is intact) and, when its shorter
    side is well over `short_side`, reduce it while decoding and re-encode it.

    JPEGs decode straight at a reduced scale (`Image.draft`); other formats
    decode once at full size and are box-reduced by a whole factor, so the
    result keeps at least `short_side` pixels on its shorter side whatever the
    frame's orientation. An image that is small enough comes back unchanged,
    bytes included. ValueError if it does not decode.
    """
    try:
        with Image.open(io.BytesIO(data), formats=[header.format]) as opened:
            if short_side is not None and header.format == "JPEG":
                opened.draft("RGB", (short_side, short_side))
            opened.load()
            whole = opened.size == (header.width, header.height)  # not reduced by the draft
            if short_side is None or (whole and min(opened.size) < 2 * short_side):
                return InputImage(data, header.mime_type, header.width, header.height)
            return _reencoded(opened, header, short_side)
    except Exception as exc:  # Pillow raises many types for corrupt data
        raise ValueError(
            f"does not decode as {header.format}: {type(exc).__name__}: {exc}"
        ) from None


def _reencoded(picture: Image.Image, header: ImageHeader, short_side: int) -> InputImage:
    """`picture` upright, reduced to keep `short_side`, as a JPEG (if it was one) or PNG."""
    if picture.mode not in _REDUCIBLE_MODES:
        has_alpha = "A" in picture.mode or "transparency" in picture.info
        picture = picture.convert("RGBA" if has_alpha else "RGB")
    factor = min(picture.size) // short_side
    if factor >= 2:
        picture = picture.reduce(factor)
    # The orientation tag is not written back, so it is applied here; malformed
    # EXIF leaves the image as stored, as the engines do.
    with contextlib.suppress(Exception):
        picture = ImageOps.exif_transpose(picture)
    buffer = io.BytesIO()
    if header.format == "JPEG":
        picture.convert("RGB").save(buffer, format="JPEG", quality=92)
        mime = "image/jpeg"
    else:
        picture.save(buffer, format="PNG", compress_level=1)
        mime = "image/png"
    width, height = picture.size
    return InputImage(buffer.getvalue(), mime, width, height)

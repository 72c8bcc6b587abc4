"""Turning what a caller has (URL, file, bytes, PIL image) into what the API takes (a URL).

The API accepts only `http(s)://` and `data:image/…;base64,` URLs. Anything
else is read here and inlined as a data URL, with its media type taken from
the bytes, because a file name or a caller's guess can be wrong and the
server judges by content too. PIL is never imported: a PIL image is
recognised by its `save` method, so the SDK does not depend on Pillow.
"""

from __future__ import annotations

import base64
import io
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol, TypeAlias, runtime_checkable

from imagine.client._exceptions import UsageError

_URL_SCHEMES = ("http://", "https://", "data:")


@runtime_checkable
class SavableImage(Protocol):
    """Anything that can write itself as a PNG, like `PIL.Image.Image`."""

    def save(self, fp: Any, format: str | None = ..., **params: Any) -> None: ...


ImageInput: TypeAlias = str | os.PathLike[str] | bytes | bytearray | memoryview | SavableImage


def image_urls(images: ImageInput | Sequence[ImageInput]) -> list[str]:
    """Every image as a URL the API accepts; a single image may be passed bare."""
    if isinstance(images, str | bytes | bytearray | memoryview | os.PathLike | SavableImage):
        images = [images]
    return [_to_url(image, index) for index, image in enumerate(images)]


def sniff_media_type(data: bytes) -> str | None:
    """The image media type from the magic bytes, for the formats the server decodes."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "image/gif"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return None


def data_url(data: bytes, where: str = "image") -> str:
    media_type = sniff_media_type(data)
    if media_type is None:
        raise UsageError(f"{where} is not a PNG, JPEG, WebP or GIF image")
    return f"data:{media_type};base64,{base64.b64encode(data).decode('ascii')}"


def _to_url(image: ImageInput, index: int) -> str:
    where = f"images[{index}]"
    if isinstance(image, str) and image[:8].lower().startswith(_URL_SCHEMES):
        return image
    if isinstance(image, str | os.PathLike):
        path = Path(image)
        try:
            return data_url(path.read_bytes(), f"{where} ({path})")
        except OSError as exc:
            raise UsageError(
                f"{where} is neither an http(s)/data URL nor a readable file: {path} "
                f"({exc.strerror or exc})"
            ) from None
    if isinstance(image, bytes | bytearray | memoryview):
        return data_url(bytes(image), where)
    if isinstance(image, SavableImage):
        buffer = io.BytesIO()
        try:
            image.save(buffer, format="PNG")
        except (OSError, ValueError) as exc:
            raise UsageError(f"{where} could not be encoded as PNG: {exc}") from None
        return data_url(buffer.getvalue(), where)
    raise UsageError(
        f"{where} must be a URL, a file path, bytes or a PIL image, not {type(image).__name__}"
    )

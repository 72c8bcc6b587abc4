"""An input image after it was fetched and checked."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class InputImage:
    """Raw bytes of a PNG, JPEG, WebP or GIF image, with its checked type and size."""

    data: bytes
    mime_type: str
    width: int
    height: int

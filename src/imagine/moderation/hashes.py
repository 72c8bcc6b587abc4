"""Known images by perceptual hash: an operator's blocklist, robust to resizing
and re-encoding.

A pHash (64 bits, `imagehash.phash`) keeps the low frequencies of a 32×32
grey thumbnail, so a resized or JPEG re-encoded copy lands within a few bits
of the original while different pictures differ by about half of them; a
list entry matches an image within `hash_distance` bits (8 by default).
Hashes are kept as integers, so matching needs no third-party package; only
hashing an image needs `imagehash` (the `moderation` extra).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from PIL import Image

__all__ = ["HashList", "KnownImage", "image_hash", "read_hash_list"]

HASH_BITS = 64
_LINE = re.compile(r"([0-9a-fA-F]{16})(?:\s+(.*))?")


@dataclass(frozen=True)
class KnownImage:
    hash: int
    label: str

    @property
    def hex(self) -> str:
        return f"{self.hash:016x}"


@dataclass(frozen=True)
class HashMatch:
    image: KnownImage
    distance: int


class HashList:
    """A named list of known images; `nearest` finds the closest within a distance."""

    def __init__(self, name: str, images: Iterable[KnownImage]) -> None:
        self.name = name
        self.images = tuple(images)

    def __len__(self) -> int:
        return len(self.images)

    def nearest(self, value: int, max_distance: int) -> HashMatch | None:
        best: HashMatch | None = None
        for image in self.images:
            distance = (image.hash ^ value).bit_count()
            if distance <= max_distance and (best is None or distance < best.distance):
                best = HashMatch(image, distance)
                if distance == 0:
                    break
        return best


def read_hash_list(name: str, path: Path) -> HashList:
    """One image per line: 16 hex digits (a 64-bit pHash, as `imagine moderation
    hash` prints it), then an optional label; `#` lines and blank lines are
    skipped. ValueError names the file and line."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"hash list {name!r} ({path}): {exc}") from None
    images = []
    for number, line in enumerate(lines, start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        found = _LINE.fullmatch(line)
        if found is None:
            raise ValueError(
                f"hash list {name!r} ({path}) line {number}: expected 16 hex digits "
                f"and an optional label, got {line[:40]!r}"
            )
        images.append(KnownImage(int(found.group(1), 16), (found.group(2) or "").strip()))
    return HashList(name, images)


def image_hash(image: Image.Image) -> int:
    """The 64-bit pHash of `image`, as an integer (imagehash's bit order)."""
    import imagehash  # the moderation extra; imported on first use

    bits = imagehash.phash(image).hash.flatten()
    value = 0
    for bit in bits:
        value = (value << 1) | int(bit)
    return value

"""Text drawn into pictures, in any script the shipped fonts cover.

No single font covers Latin, Greek, Cyrillic, Hangul, kana and hanzi well, so
text is drawn through a chain of fonts: each character goes to the first font
whose character map has it, consecutive characters of one font form a run,
and runs are measured and drawn one after another on a shared baseline.
Characters no font has (emoji, private use, unassigned) are left out rather
than drawn as the fonts' missing-glyph boxes.

The shipped fonts are subsets of Noto Sans and Noto Sans CJK KR (SIL OFL) made
by `scripts/vendor-fonts`. They live among the browser files, so the one copy
in the package also serves pages (`FONT_URLS`).

Line breaking follows the habits of each script: Latin and Cyrillic break at
spaces, while Hangul, kana and CJK ideographs may break between any two
characters (a Korean prompt need not have spaces), except before closing and
after opening punctuation.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from PIL import ImageDraw, ImageFont

__all__ = [
    "FONT_URLS",
    "SHIPPED_FONTS",
    "FontChain",
    "Run",
    "font_coverage",
    "wrap",
]

_NOTO = Path(__file__).resolve().parents[1] / "web" / "static" / "vendor" / "noto"
SHIPPED_FONTS: tuple[Path, ...] = (
    _NOTO / "NotoSans-Regular.subset.ttf",  # Latin, Greek, Cyrillic
    _NOTO / "NotoSansCJKkr-Regular.subset.otf",  # Hangul, kana, CJK ideographs and symbols
)
"""The fonts inside the package, in fallback order."""

FONT_URLS: tuple[str, ...] = tuple(f"/static/vendor/noto/{path.name}" for path in SHIPPED_FONTS)
"""Where a browser gets the same files (the static mount serves web/static/)."""

ELLIPSIS = "\u2026"

# Line-breaking exceptions (a small part of UAX #14 and Japanese kinsoku).
_NO_BREAK_BEFORE = frozenset(
    ",.!?:;%)]}\u2019\u201d\u2026\u2025"  # closing Latin punctuation and quotes
    "\u3001\u3002\uff0c\uff0e\u30fb\uff1a\uff1b\uff01\uff1f\u30fc\uff09\u300d\u300f"
    "\u3011\u3015\u3009\u300b\uff3d\uff5d\u3019\u3017\u301f\u309d\u309e\u30fd\u30fe\u3005"
    "\u3041\u3043\u3045\u3047\u3049\u3063\u3083\u3085\u3087\u308e"  # small hiragana
    "\u30a1\u30a3\u30a5\u30a7\u30a9\u30c3\u30e3\u30e5\u30e7\u30ee\u30f5\u30f6"  # small katakana
)
_NO_BREAK_AFTER = frozenset(
    "([{\u2018\u201c\uff08\u300c\u300e\u3010\u3014\u3008\u300a\uff3b\uff5b\u3018\u3016\u301d"
)
_DROPPED_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn"})
_ZERO_WIDTH_JOINER = "\u200d"  # joins emoji into one (👩‍🚀): drop one part, drop all


@lru_cache(maxsize=16)
def font_coverage(path: Path) -> frozenset[int]:
    """The code points `path` (its first face) maps to a real glyph; read once."""
    from fontTools.ttLib import TTFont  # only where text is drawn

    with TTFont(str(path), fontNumber=0, lazy=True) as font:
        cmap = font.getBestCmap() or {}
    return frozenset(code for code, glyph in cmap.items() if glyph != ".notdef")


@dataclass(frozen=True)
class Run:
    """Characters drawn with one font, `x` pixels from the start of their line."""

    text: str
    font: ImageFont.FreeTypeFont
    x: float


class FontChain:
    """Fonts at one pixel size, tried in order for each character."""

    def __init__(self, fonts: Sequence[tuple[ImageFont.FreeTypeFont, frozenset[int]]]) -> None:
        if not fonts:
            raise ValueError("a font chain needs at least one font")
        self._fonts = list(fonts)
        metrics = [font.getmetrics() for font, _ in self._fonts]
        self.ascent = max(ascent for ascent, _ in metrics)
        self.descent = max(descent for _, descent in metrics)
        self.size = max(int(font.size) for font, _ in self._fonts)

    @classmethod
    def load(cls, size: int, configured: str | Path | None = None) -> FontChain:
        """The configured font (if any) first, then the shipped ones.

        Pillow's basic layout is used: the same pixels whether or not libraqm
        is installed, and a line's width is the sum of its runs' widths.
        """
        paths = [Path(configured)] if configured is not None else []
        paths += SHIPPED_FONTS
        return cls(
            [
                (
                    ImageFont.truetype(str(path), size, layout_engine=ImageFont.Layout.BASIC),
                    font_coverage(path),
                )
                for path in paths
            ]
        )

    @property
    def line_height(self) -> int:
        return self.ascent + self.descent

    def font_for(self, char: str) -> ImageFont.FreeTypeFont | None:
        """The first font with a glyph for `char`, if any has one."""
        code = ord(char)
        for font, coverage in self._fonts:
            if code in coverage:
                return font
        return None

    def visible(self, text: str) -> str:
        """`text` as it will be drawn: composed (NFC, so decomposed Hangul and
        accents become the precomposed characters the fonts have), without
        what no font has or what draws nothing (controls, joiners, emoji with
        everything joined to them), every run of white space one space."""
        kept: list[str] = []
        dropped = glued = False
        for char in unicodedata.normalize("NFC", text):
            if char == _ZERO_WIDTH_JOINER:  # glues the next character to the last one
                glued = dropped
                continue
            dropped = (glued and not char.isspace()) or not self._drawable(char)
            glued = False
            if not dropped:
                kept.append(char)
        return " ".join("".join(kept).split())

    def _drawable(self, char: str) -> bool:
        if char.isspace():
            return True
        return (
            unicodedata.category(char) not in _DROPPED_CATEGORIES
            and self.font_for(char) is not None
        )

    def runs(self, text: str) -> list[Run]:
        """`text` split by font, each run placed after the one before.
        Characters no font has are skipped."""
        runs: list[Run] = []
        x = 0.0
        for font, chars in self._by_font(text):
            run = Run("".join(chars), font, x)
            runs.append(run)
            x += font.getlength(run.text)
        return runs

    def length(self, text: str) -> float:
        """The width `text` takes when drawn with `draw`."""
        return sum(font.getlength("".join(chars)) for font, chars in self._by_font(text))

    def draw(
        self,
        canvas: ImageDraw.ImageDraw,
        left: float,
        baseline: float,
        text: str,
        fill: tuple[int, int, int, int],
    ) -> None:
        """Draw `text` starting at `left` on the `baseline`."""
        for run in self.runs(text):
            canvas.text((left + run.x, baseline), run.text, font=run.font, fill=fill, anchor="ls")

    def _by_font(self, text: str) -> Iterator[tuple[ImageFont.FreeTypeFont, list[str]]]:
        current: ImageFont.FreeTypeFont | None = None
        chars: list[str] = []
        for char in text:
            font = self.font_for(char)
            if font is None:
                continue
            if font is not current and chars:
                assert current is not None
                yield current, chars
                chars = []
            current = font
            chars.append(char)
        if chars:
            assert current is not None
            yield current, chars


def wrap(text: str, chain: FontChain, max_width: float, max_lines: int) -> list[str]:
    """Greedy line breaking of `visible` text by measured width.

    A piece wider than a whole line (a very long word) is cut where it
    overflows; text beyond `max_lines` is cut and the last line ends in '…'.
    """
    text = text[: 160 * max_lines]  # more than fits; bounds the work for huge prompts
    lines: list[str] = []
    current = ""
    for piece in _unbreakable_pieces(text):
        if piece == " ":
            current += " " if current else ""
            continue
        if chain.length(current + piece) <= max_width:
            current += piece
            continue
        if current.strip():
            lines.append(current.rstrip())
        while len(piece) > 1 and chain.length(piece) > max_width and len(lines) <= max_lines:
            cut = _longest_fitting_prefix(piece, chain, max_width)
            lines.append(piece[:cut])
            piece = piece[cut:]
        current = piece
        if len(lines) > max_lines:
            break
    if current.strip():
        lines.append(current.rstrip())
    if len(lines) > max_lines:
        last = lines[max_lines - 1]
        while last and chain.length(last + ELLIPSIS) > max_width:
            last = last[:-1]
        lines = [*lines[: max_lines - 1], last.rstrip() + ELLIPSIS]
    return lines


def _unbreakable_pieces(text: str) -> Iterator[str]:
    """`text` cut at every place a line may break; spaces are pieces of their own."""
    start = 0
    for index in range(1, len(text)):
        if _may_break(text[index - 1], text[index]):
            yield text[start:index]
            start = index
    if text:
        yield text[start:]


def _may_break(before: str, after: str) -> bool:
    if before == " " or after == " ":
        return True
    if after in _NO_BREAK_BEFORE or before in _NO_BREAK_AFTER:
        return False
    return _is_wide(before) or _is_wide(after)


def _is_wide(char: str) -> bool:
    """Hangul, kana, CJK ideographs and full-width forms: East Asian wide."""
    return unicodedata.east_asian_width(char) in ("W", "F")


def _longest_fitting_prefix(piece: str, chain: FontChain, max_width: float) -> int:
    """Length of the longest prefix of `piece` within `max_width` (at least 1)."""
    low, high = 1, len(piece) - 1
    while low < high:
        middle = (low + high + 1) // 2
        if chain.length(piece[:middle]) <= max_width:
            low = middle
        else:
            high = middle - 1
    return low

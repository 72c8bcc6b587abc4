"""Captions in any script: the preview engine draws Korean, Japanese, Russian
and mixed prompts with real glyphs from the fonts shipped in the package,
leaves out what no font has (emoji), and wraps text without spaces.

The glyph check works on the decoded video: every character the caption lays
out is cut from the decoded frame and compared with that character's glyph and
with the font's missing-glyph box (`.notdef`) drawn at the same place. A box in
the video matches the second better; the check is itself tested on a frame
where the boxes were drawn on purpose.
"""

from __future__ import annotations

import math
import unicodedata
from pathlib import Path

import numpy as np
import pytest
from fontTools import subset as fontsubset
from numpy.typing import NDArray
from PIL import Image, ImageDraw, ImageFont

from imagine.engines.base import GenerationJob, JobControl
from imagine.engines.preview import LABEL, PreviewEngine, _Card, _cards
from imagine.engines.registry import create_engine
from imagine.media.fonts import SHIPPED_FONTS, FontChain, font_coverage, wrap
from imagine.media.video import read_frame
from imagine.settings import Settings, SettingsError

SIZE = 480
MISSING = "\ue000"  # private use: in no font, so each font draws its .notdef for it

PROMPTS = {
    "korean": "산과 호수가 있는 아름다운 풍경",
    "mixed": "서울의 밤거리 with neon lights, 비 오는 날",
    "japanese": "猫がサーフィンをする、夕暮れの海で。",
    "russian": "Кошка катается на серфе на закате",
    "emoji": "산과 호수가 있는 아름다운 풍경 🌄",
}
SHOWN = {**PROMPTS, "emoji": "산과 호수가 있는 아름다운 풍경"}  # no emoji, no space left behind
LONG_KOREAN = "아름다운산과호수가있는풍경속에서고양이가파도를타고있습니다" * 3


def make_job(prompt: str) -> GenerationJob:
    return GenerationJob(
        task_id="task-captions",
        prompt=prompt,
        mode="normal",
        ratio="1:1",
        resolution="480p",
        width=SIZE,
        height=SIZE,
        duration=1,
        seed=3,
    )


async def decoded_first_frame(prompt: str, workdir: Path) -> NDArray[np.float64]:
    """The preview engine's video for `prompt`, decoded: frame 0 as luma."""
    (path,) = await PreviewEngine().generate(make_job(prompt), workdir, JobControl())
    rgb = read_frame(path).astype(np.float64)
    luma: NDArray[np.float64] = rgb @ np.array([0.2126, 0.7152, 0.0722])
    return luma


def caption_of(prompt: str) -> _Card:
    """The caption card the engine lays out for `prompt` (the label is the other card)."""
    cards = _cards(prompt, SIZE, SIZE)
    assert cards[0].lines == (LABEL,)
    (caption,) = cards[1:]
    return caption


def drawn_characters(
    card: _Card,
) -> list[tuple[str, ImageFont.FreeTypeFont, float, float]]:
    """Every visible character of `card`: (character, its font, left, baseline) in the frame."""
    placed = []
    for line, left, baseline in card.baselines():
        for run in card.chain.runs(line):
            for index, char in enumerate(run.text):
                if not char.isspace():
                    x = left + run.x + run.font.getlength(run.text[:index])
                    placed.append((char, run.font, x, baseline))
    return placed


def rendering(
    placed: list[tuple[str, ImageFont.FreeTypeFont, float, float]],
    box: tuple[int, int, int, int],
    as_box: int,
) -> NDArray[np.float64]:
    """The characters drawn white on black, the one at `as_box` as its font's
    missing-glyph box, cropped to `box` (left, top, right, bottom)."""
    left, top, right, bottom = box
    canvas = Image.new("L", (right - left, bottom - top), 0)
    draw = ImageDraw.Draw(canvas)
    for index, (char, font, x, baseline) in enumerate(placed):
        shown = MISSING if index == as_box else char
        draw.text((x - left, baseline - top), shown, font=font, fill=255, anchor="ls")
    return np.asarray(canvas, dtype=np.float64)


def similarity(a: NDArray[np.float64], b: NDArray[np.float64]) -> float:
    """Pearson correlation of two equally sized patches (0 when one is flat)."""
    a, b = a - a.mean(), b - b.mean()
    norm = math.sqrt(float((a * a).sum() * (b * b).sum()))
    return float((a * b).sum()) / norm if norm else 0.0


def glyph_scores(luma: NDArray[np.float64], card: _Card) -> list[tuple[str, float, float]]:
    """For each drawn character, how well the frame around it matches the caption
    as laid out, and the same caption with that character drawn as a box."""
    placed = drawn_characters(card)
    scores = []
    for index, (char, font, x, baseline) in enumerate(placed):
        width = max(font.getlength(char), font.getlength(MISSING))
        box = (
            math.floor(x) - 1,
            math.floor(baseline - card.chain.ascent),
            math.ceil(x + width) + 1,
            math.ceil(baseline + card.chain.descent),
        )
        patch = luma[box[1] : box[3], box[0] : box[2]]
        real = similarity(patch, rendering(placed, box, as_box=-1))
        notdef = similarity(patch, rendering(placed, box, as_box=index))
        scores.append((char, real, notdef))
    return scores


def assert_real_glyphs(scores: list[tuple[str, float, float]]) -> None:
    rounded = [(char, round(real, 2), round(notdef, 2)) for char, real, notdef in scores]
    wrong = [s for s in rounded if not (s[1] >= 0.9 and s[1] >= s[2] + 0.1)]
    assert wrong == [], f"characters that do not show their glyph: {wrong}"


def assert_every_character_has_a_glyph(card: _Card) -> None:
    """Through the chain: each drawn character is in its font's character map."""
    for char, font, _x, _baseline in drawn_characters(card):
        assert font.path is not None
        assert ord(char) in font_coverage(Path(str(font.path))), (char, font.path)


@pytest.mark.parametrize("name", list(PROMPTS))
async def test_the_decoded_caption_shows_every_character(name: str, tmp_path: Path) -> None:
    prompt = PROMPTS[name]
    card = caption_of(prompt)
    assert " ".join(card.lines) == SHOWN[name]
    assert_every_character_has_a_glyph(card)
    luma = await decoded_first_frame(prompt, tmp_path)
    assert_real_glyphs(glyph_scores(luma, card))


async def test_the_glyph_check_sees_missing_glyph_boxes(tmp_path: Path) -> None:
    """Draw the Korean caption's characters as boxes over the real video: the check fails."""
    prompt = PROMPTS["korean"]
    card = caption_of(prompt)
    (path,) = await PreviewEngine(caption=False).generate(make_job(prompt), tmp_path, JobControl())
    frame = Image.fromarray(read_frame(path))
    draw = ImageDraw.Draw(frame)
    for _char, font, x, baseline in drawn_characters(card):
        draw.text((x, baseline), MISSING, font=font, fill=(255, 255, 255), anchor="ls")
    luma = np.asarray(frame.convert("L"), dtype=np.float64)
    scores = glyph_scores(luma, card)
    assert all(real < notdef for _char, real, notdef in scores), scores


async def test_a_long_korean_prompt_without_spaces_wraps_inside_the_frame(
    tmp_path: Path,
) -> None:
    card = caption_of(LONG_KOREAN)
    assert 1 < len(card.lines) <= 3
    assert card.lines[-1].endswith("…")
    assert card.left >= 0 and card.left + card.sprite.width <= SIZE
    assert card.top >= 0 and card.top + card.sprite.height <= SIZE
    for line, left, _baseline in card.baselines():
        assert left >= card.left and left + card.chain.length(line) <= card.left + card.sprite.width
    assert "".join(card.lines).rstrip("…") in LONG_KOREAN  # nothing lost or added inside
    luma = await decoded_first_frame(LONG_KOREAN, tmp_path)
    assert_real_glyphs(glyph_scores(luma, card))


def test_latin_wraps_at_spaces_and_cjk_between_characters() -> None:
    chain = FontChain.load(20)
    text = "a lighthouse on a cliff at dusk with waves crashing below"
    lines = wrap(text, chain, 150, max_lines=10)
    assert len(lines) > 2
    assert " ".join(lines) == text  # every break fell between words
    assert all(chain.length(line) <= 150 for line in lines)
    hangul = wrap("가나다라마바사아자차카타파하", chain, 65, max_lines=10)
    assert len(hangul) > 2 and "".join(hangul) == "가나다라마바사아자차카타파하"
    assert all(chain.length(line) <= 65 for line in hangul)


def test_closing_punctuation_stays_with_the_character_before_it() -> None:
    chain = FontChain.load(20)
    text = "猫がサーフィンをする、夕暮れの海で。波が高い。"
    for width in range(60, 240, 7):
        lines = wrap(text, chain, width, max_lines=20)
        assert "".join(lines) == text
        assert not any(line[0] in "、。" for line in lines), (width, lines)


def test_text_is_composed_and_what_no_font_has_is_left_out() -> None:
    chain = FontChain.load(20)
    decomposed = unicodedata.normalize("NFD", "한글 café")
    assert chain.visible(decomposed) == "한글 café"
    assert chain.visible("A cat 🏄\u200d\u2642\ufe0f surfing\u200b 🐱🌊 at dusk\x07") == (
        "A cat surfing at dusk"
    )
    assert chain.visible("👨\u200d👩\u200d👧") == ""
    assert caption_of_or_none("🌄🌊") is None


def caption_of_or_none(prompt: str) -> _Card | None:
    cards = _cards(prompt, SIZE, SIZE)
    return cards[1] if len(cards) > 1 else None


def test_the_shipped_fonts_cover_the_promised_scripts() -> None:
    covered = frozenset[int]().union(*(font_coverage(path) for path in SHIPPED_FONTS))

    def missing(codes: set[int]) -> list[str]:
        return [f"U+{code:04X}" for code in sorted(codes - covered)]

    def assigned(first: int, last: int) -> set[int]:
        return {c for c in range(first, last + 1) if unicodedata.category(chr(c)) != "Cn"}

    assert missing(assigned(0x20, 0x7E) | assigned(0xA0, 0x17F)) == []  # Latin-1, Ext-A
    assert missing(assigned(0x0384, 0x03CE)) == []  # Greek with its accents
    assert missing(assigned(0x0400, 0x045F)) == []  # Cyrillic
    assert missing(assigned(0xAC00, 0xD7A3) | assigned(0x3131, 0x318E)) == []  # Hangul
    assert missing(assigned(0x3041, 0x3096) | assigned(0x30A1, 0x30FA)) == []  # kana
    assert missing(assigned(0x3000, 0x3003) | assigned(0xFF01, 0xFF5E)) == []  # punctuation
    for codec in ("euc_kr", "euc_jp", "gb2312"):  # KS X 1001, JIS X 0208, GB2312
        assert missing(ideographs_of(codec)) == [], codec


def ideographs_of(codec: str) -> set[int]:
    """The CJK ideographs of a national double-byte set."""
    found = set()
    for lead in range(0xB0, 0xFF):
        for trail in range(0xA1, 0xFF):
            try:
                char = bytes([lead, trail]).decode(codec)
            except UnicodeDecodeError:
                continue
            if unicodedata.name(char, "").startswith("CJK UNIFIED IDEOGRAPH"):
                found.add(ord(char))
    return found


def test_the_fonts_stay_small() -> None:
    noto = SHIPPED_FONTS[0].parent
    assert all(path.parent == noto for path in SHIPPED_FONTS)
    total = sum(path.stat().st_size for path in noto.iterdir())
    assert total <= 8 * 1024 * 1024, total


def test_a_configured_font_is_tried_first(tmp_path: Path) -> None:
    """A font with only 'A' and 'B': those come from it, the rest from the shipped ones."""
    options = fontsubset.Options()
    font = fontsubset.load_font(str(SHIPPED_FONTS[0]), options)
    subsetter = fontsubset.Subsetter(options)
    subsetter.populate(text="AB ")
    subsetter.subset(font)
    mine = tmp_path / "mine.ttf"
    fontsubset.save_font(font, str(mine), options)

    chain = FontChain.load(20, mine)
    assert [Path(str(run.font.path)) for run in chain.runs("AB가C")] == [
        mine,
        SHIPPED_FONTS[1],
        SHIPPED_FONTS[0],
    ]
    engine = create_engine(Settings(preview_font=mine))
    assert isinstance(engine, PreviewEngine) and engine.font_path == mine
    card = _cards("AB 가나", SIZE, SIZE, mine)[1]
    assert Path(str(card.chain.runs(card.lines[0])[0].font.path)) == mine


def test_a_configured_font_that_is_not_a_font_stops_the_start(tmp_path: Path) -> None:
    bogus = tmp_path / "font.ttf"
    bogus.write_bytes(b"not a font at all")
    with pytest.raises(SettingsError, match="IMAGINE_PREVIEW_FONT"):
        create_engine(Settings(preview_font=bogus))
    with pytest.raises(ValueError):
        Settings(preview_font=tmp_path / "missing.ttf")

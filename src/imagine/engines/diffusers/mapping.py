"""From the contract's request fields to what a video model is asked for.

Pure functions, no torch: the API process uses them at submit time, so every
request a worker receives is already on the model's grid. Pipelines would
otherwise round sizes and frame counts silently (Wan floors sizes to its grid
and rounds frame counts with only a log warning).
"""

from __future__ import annotations

from collections.abc import Iterable

from imagine.engines.diffusers.families import ModelSpec
from imagine.sizes import FRAME_SIZES, RATIOS

RESOLUTIONS = ("480p", "720p")  # of the contract's sizes, what Wan models serve

# Mode presets: (text appended to the prompt, text appended to the negative prompt).
# `normal` keeps the prompt and uses the model's standard negative prompt;
# `custom` sends the prompt untouched with no negative prompt at all.
MODE_PRESETS: dict[str, tuple[str, str]] = {
    "normal": ("", ""),
    "fun": (
        ", playful and whimsical, vivid saturated colours, bouncy energetic motion, cheerful mood",
        ", dull colours, gloomy mood, sluggish motion",
    ),
    "spicy": (
        ", bold and dramatic, intense cinematic lighting, high contrast, dynamic camera movement",
        ", flat lighting, bland composition, static camera",
    ),
}


def snap_side(value: float, grid: int) -> int:
    """The multiple of `grid` nearest to `value`, ties rounded down, at least `grid`."""
    steps = value / grid
    whole = int(steps)
    if steps - whole > 0.5:
        whole += 1
    return max(grid, whole * grid)


def snap_size(width: int, height: int, grid: int, scale: float = 1.0) -> tuple[int, int]:
    """A DESIGN size on a model's grid: each side (times `scale`) to its nearest
    multiple, ties going down. On a 32 px grid 1280×720 becomes 1280×704 and
    848×480 becomes 832×480 (TI2V-5B's own trained sizes); on a 16 px grid both
    stay as they are."""
    return snap_side(width * scale, grid), snap_side(height * scale, grid)


def size_table(
    spec: ModelSpec,
    ratios: Iterable[str] = RATIOS,
    resolutions: Iterable[str] = RESOLUTIONS,
    scale: float = 1.0,
) -> dict[tuple[str, str], tuple[int, int]]:
    """Every allowed (ratio, resolution) → the size the model renders it at."""
    wanted = {(r, res) for r in ratios for res in resolutions}
    return {
        key: snap_size(*size, spec.grid, scale)
        for key, size in FRAME_SIZES.items()
        if key in wanted
    }


def frame_count(duration: int, fps: int, step: int) -> int:
    """Frames for `duration` seconds: the nearest `step * k + 1` to duration × fps
    (Wan: 4k+1, so 5 s at 24 fps is 121 frames and 1 s at 8 fps is 9)."""
    k = max(1, round(duration * fps / step))
    return k * step + 1


def apply_mode(mode: str, prompt: str, negative: str) -> tuple[str, str]:
    """The (prompt, negative prompt) a mode sends; `negative` is the model's standard one."""
    if mode == "custom":
        return prompt, ""
    suffix, negative_suffix = MODE_PRESETS.get(mode, ("", ""))
    if not negative:
        negative_suffix = negative_suffix.removeprefix(", ")
    return prompt + suffix, negative + negative_suffix

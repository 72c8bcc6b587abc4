"""The diffusers engine's configuration, from `IMAGINE_DIFFUSERS_*` settings."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from imagine.engines.diffusers.mapping import RESOLUTIONS
from imagine.settings import Settings
from imagine.sizes import RATIOS

MEMORY_PRESETS = ("resident", "offload", "group-offload")
STEP_CACHES = ("none", "first-block", "mag")
DEFAULT_THRESHOLDS = {"first-block": 0.05, "mag": 0.06}


@dataclass(frozen=True)
class DiffusersConfig:
    """Everything the engine needs to load and run a model; see docs/engines/diffusers.md."""

    model_dir: Path
    device: str = "auto"
    dtype: str = "auto"
    memory: str = "resident"
    vae_tiling: bool | None = None
    compile: bool = False
    compile_backend: str = "inductor"
    """torch.compile backend; tests use `eager` to exercise the warm-up cheaply."""
    step_cache: str = "none"
    cache_threshold: float | None = None
    mag_ratios: tuple[float, ...] | None = None
    attention: str | None = None
    steps: int | None = None
    guidance_scale: float | None = None
    fps: int | None = None
    size_scale: float = 1.0
    max_duration: int = 6
    resolutions: tuple[str, ...] = RESOLUTIONS
    ratios: tuple[str, ...] = RATIOS

    def __post_init__(self) -> None:
        problems = []
        if self.memory not in MEMORY_PRESETS:
            problems.append(f"memory preset must be one of {', '.join(MEMORY_PRESETS)}")
        if self.step_cache not in STEP_CACHES:
            problems.append(f"step cache must be one of {', '.join(STEP_CACHES)}")
        if self.step_cache == "mag" and not self.mag_ratios:
            problems.append(
                "the mag step cache needs IMAGINE_DIFFUSERS_MAG_RATIOS (a JSON list from a "
                "calibration run: python -m bench.diffusers_engine --calibrate-mag FILE)"
            )
        if self.attention and self.attention.endswith("_hub"):
            problems.append(f"attention backend {self.attention} downloads kernels at run time")
        bad = sorted(set(self.resolutions) - set(RESOLUTIONS))
        if bad or not self.resolutions:
            problems.append(f"resolutions must be a non-empty subset of {','.join(RESOLUTIONS)}")
        bad = sorted(set(self.ratios) - set(RATIOS))
        if bad or not self.ratios:
            problems.append(f"ratios must be a non-empty subset of {','.join(RATIOS)}")
        if not 0 < self.size_scale <= 1:
            problems.append("size scale must be in (0, 1]")
        if problems:
            raise ValueError("diffusers engine: " + "; ".join(problems))

    @property
    def threshold(self) -> float:
        return self.cache_threshold or DEFAULT_THRESHOLDS.get(self.step_cache, 0.0)

    @classmethod
    def from_settings(cls, settings: Settings) -> DiffusersConfig:
        """Raises ValueError with a message naming the variable to fix."""
        if settings.diffusers_model is None:
            raise ValueError(
                "the diffusers engine needs a model directory: --model DIR or "
                "IMAGINE_DIFFUSERS_MODEL (see docs/engines/diffusers.md)"
            )
        ratios = None
        if settings.diffusers_mag_ratios is not None:
            ratios = _read_ratios(settings.diffusers_mag_ratios)
        # A global backend from diffusers' own variable would bypass our offline check.
        global_backend = os.environ.get("DIFFUSERS_ATTN_BACKEND", "")
        if global_backend.endswith("_hub"):
            raise ValueError(
                f"DIFFUSERS_ATTN_BACKEND={global_backend} downloads kernels at run time; unset it"
            )
        return cls(
            model_dir=settings.diffusers_model.expanduser(),
            device=settings.diffusers_device,
            dtype=settings.diffusers_dtype,
            memory=settings.diffusers_memory,
            vae_tiling=settings.diffusers_vae_tiling,
            compile=settings.diffusers_compile,
            step_cache=settings.diffusers_step_cache,
            cache_threshold=settings.diffusers_cache_threshold,
            mag_ratios=ratios,
            attention=settings.diffusers_attention,
            steps=settings.diffusers_steps,
            guidance_scale=settings.diffusers_guidance_scale,
            fps=settings.diffusers_fps,
            size_scale=settings.diffusers_size_scale,
            max_duration=settings.diffusers_max_duration,
            resolutions=settings.diffusers_resolutions,
            ratios=settings.diffusers_ratios,
        )


def _read_ratios(path: Path) -> tuple[float, ...]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ValueError(f"IMAGINE_DIFFUSERS_MAG_RATIOS: cannot read {path}: {exc}") from None
    if not isinstance(data, list) or not data or not all(isinstance(x, int | float) for x in data):
        raise ValueError(f"IMAGINE_DIFFUSERS_MAG_RATIOS: {path} must hold a JSON list of numbers")
    return tuple(float(x) for x in data)

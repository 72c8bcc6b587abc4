"""`python -m bench.diffusers_engine`: the diffusers engine's speed, per clip and per step.

    python -m bench.diffusers_engine                       # tiny Wan model, CPU, CI-size
    python -m bench.diffusers_engine --model DIR --device cuda --ratio 16:9 \\
        --resolution 720p --duration 5 --steps 50 --configs plain,resident,compiled,compiled+cache
    python -m bench.diffusers_engine --model DIR --device cuda --calibrate-mag mag.json

Without `--model` a tiny random Wan2.2-TI2V-5B-layout model is built in a
temporary directory and run at 1/8 size (64-96 px, 9 frames): it measures the
engine's own overhead and the settings' plumbing, not a GPU. With a real model
on a GPU, `plain` is a plain diffusers call of the same model (pipeline on the
device, default attention, no compile, no cache) and every other configuration
is the engine with settings; all use the same prompt and seed, so each row's
PSNR/SSIM against `plain` is the quality cost of its settings (identical
output: inf dB, SSIM 1). Prints a Markdown table.

Configurations: plain, resident, offload, group-offload, compiled, cache
(first-block), mag (needs --mag-ratios), and `+` combinations of the last
three with a memory preset (e.g. compiled+cache).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import io
import itertools
import json
import math
import platform
import re
import statistics
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from imagine.engines.base import GenerationJob
from imagine.engines.diffusers.config import DiffusersConfig
from imagine.engines.diffusers.engine import PHASES, DiffusersEngine
from imagine.engines.diffusers.mapping import apply_mode
from imagine.engines.diffusers.tiny import build_tiny_wan

PROMPT = "a red fox trotting through fresh snow at sunrise, cinematic"
SEED = 42
Frames = NDArray[np.uint8]


@dataclass
class Result:
    name: str
    clip_seconds: list[float]
    """Request to frames (encode, denoise, decode), the same span as a plain call."""
    step_seconds: list[float]
    frames: Frames
    load_seconds: float
    write_seconds: list[float] = field(default_factory=list)
    """H.264 encoding of the frames (the engine's rows only)."""


def engine_config(args: argparse.Namespace, model: Path, name: str) -> DiffusersConfig:
    """A configuration name (`compiled+cache`) → engine settings."""
    config = DiffusersConfig(
        model_dir=model,
        device=args.device,
        steps=args.steps,
        size_scale=args.size_scale,
        fps=args.fps,
        ratios=(args.ratio,),
        resolutions=(args.resolution,),
        max_duration=args.duration,
        attention=args.attention,
    )
    for part in name.split("+"):
        if part in ("resident", "offload", "group-offload"):
            config = replace(config, memory=part)
        elif part == "compiled":
            config = replace(config, compile=True)
        elif part == "cache":
            config = replace(config, step_cache="first-block", cache_threshold=args.threshold)
        elif part == "mag":
            ratios = tuple(json.loads(Path(args.mag_ratios).read_text())) if args.mag_ratios else ()
            config = replace(
                config, step_cache="mag", mag_ratios=ratios, cache_threshold=args.threshold
            )
        else:
            raise SystemExit(f"unknown configuration part {part!r}")
    return config


def job(args: argparse.Namespace) -> GenerationJob:
    return GenerationJob(
        task_id="bench",
        prompt=PROMPT,
        mode="normal",
        ratio=args.ratio,
        resolution=args.resolution,
        width=0,
        height=0,
        duration=args.duration,
        seed=SEED,
    )


def run_engine(args: argparse.Namespace, model: Path, name: str) -> Result:
    started = time.perf_counter()
    engine = DiffusersEngine(engine_config(args, model, name))
    engine.prepare()  # load, compile and warm up: not part of a clip's time
    result = Result(name, [], [], np.zeros((0,), np.uint8), time.perf_counter() - started)
    low, high = PHASES["denoise"]
    for _ in range(args.warmup):  # first calls in a process pay one-off kernel set-up
        engine.render(job(args), lambda _f: None, never)
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.runs):
            marks = Marks()
            begin = time.perf_counter()
            frames = engine.render(job(args), marks.progress, never)
            result.clip_seconds.append(time.perf_counter() - begin)
            steps = [t for t, f in marks.points if low < f <= high]
            result.step_seconds.extend(b - a for a, b in itertools.pairwise(steps))
            begin = time.perf_counter()
            engine.write(job(args), frames, Path(tmp) / "clip.mp4", lambda _f: None, never)
            result.write_seconds.append(time.perf_counter() - begin)
            result.frames = frames
    del engine
    free()
    return result


def run_plain(args: argparse.Namespace, model: Path) -> Result:
    """The same model through diffusers' documented usage, nothing of the engine's."""
    import torch
    from diffusers import WanPipeline

    device = torch.device(
        args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    )
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    engine = DiffusersEngine(engine_config(args, model, "resident"))  # for the mapping only
    width, height, frames = engine.frame_plan(job(args))
    prompt, negative = apply_mode("normal", PROMPT, engine.spec.negative_prompt)
    started = time.perf_counter()
    pipe = WanPipeline.from_pretrained(model, dtype=dtype, local_files_only=True).to(device)
    pipe.set_progress_bar_config(disable=True)
    load = time.perf_counter() - started
    clips, steps = [], []
    output: Any = None
    for run in range(-args.warmup, args.runs):
        marks = Marks()
        begin = time.perf_counter()
        output = pipe(
            prompt=prompt,
            negative_prompt=negative,
            width=width,
            height=height,
            num_frames=frames,
            num_inference_steps=args.steps or engine.spec.default_steps,
            guidance_scale=engine.spec.default_guidance,
            generator=torch.Generator("cpu").manual_seed(SEED),
            callback_on_step_end=marks.step,
        ).frames[0]
        if run >= 0:
            clips.append(time.perf_counter() - begin)
            steps.extend(b - a for (a, _), (b, _) in itertools.pairwise(marks.points))
    pixels = np.clip(np.rint(np.asarray(output) * 255), 0, 255).astype(np.uint8)
    del pipe
    free()
    return Result("plain diffusers", clips, steps, pixels, load)


class Marks:
    """Timestamps of progress reports (engine) or step callbacks (plain diffusers)."""

    def __init__(self) -> None:
        self.points: list[tuple[float, float]] = []

    def progress(self, fraction: float) -> None:
        self.points.append((time.perf_counter(), fraction))

    def step(self, _pipe: Any, step: int, _t: Any, tensors: dict[str, Any]) -> dict[str, Any]:
        self.points.append((time.perf_counter(), float(step)))
        return tensors


def never() -> bool:
    return False


def free() -> None:
    gc.collect()
    with contextlib.suppress(Exception):
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def psnr(a: Frames, b: Frames) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)


def ssim(a: Frames, b: Frames, window: int = 7) -> float:
    """Mean SSIM of the luma planes, uniform window (the classic constants)."""
    weights = np.array([0.299, 0.587, 0.114])
    x = (a.astype(np.float64) @ weights).reshape(-1, *a.shape[1:3])
    y = (b.astype(np.float64) @ weights).reshape(-1, *b.shape[1:3])
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2

    def blur(z: NDArray[np.float64]) -> NDArray[np.float64]:
        k = min(window, z.shape[1], z.shape[2])
        s = np.cumsum(np.cumsum(np.pad(z, ((0, 0), (1, 0), (1, 0))), axis=1), axis=2)
        total = s[:, k:, k:] - s[:, :-k, k:] - s[:, k:, :-k] + s[:, :-k, :-k]
        return np.asarray(total / (k * k), dtype=np.float64)

    mx, my = blur(x), blur(y)
    vx, vy, cov = blur(x * x) - mx * mx, blur(y * y) - my * my, blur(x * y) - mx * my
    value = ((2 * mx * my + c1) * (2 * cov + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return float(value.mean())


def calibrate_mag(args: argparse.Namespace, model: Path, target: Path) -> None:
    """MagCache's one-time calibration: one uncached run that records the ratios."""
    import torch
    from diffusers import MagCacheConfig, WanPipeline

    device = torch.device(
        args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    )
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    engine = DiffusersEngine(engine_config(args, model, "resident"))
    width, height, frames = engine.frame_plan(job(args))
    steps = args.steps or engine.spec.default_steps
    pipe = WanPipeline.from_pretrained(model, dtype=dtype, local_files_only=True).to(device)
    pipe.transformer.enable_cache(MagCacheConfig(calibrate=True, num_inference_steps=steps))
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        pipe(
            prompt=PROMPT,
            width=width,
            height=height,
            num_frames=frames,
            num_inference_steps=steps,
            generator=torch.Generator("cpu").manual_seed(SEED),
            output_type="latent",
        )
    lists = re.findall(r"^\[[^\]]*\]$", printed.getvalue(), flags=re.MULTILINE)
    if not lists:
        raise SystemExit("MagCache printed no calibration ratios")
    target.write_text(json.dumps([float(x) for x in json.loads(lists[0])]))
    print(f"{steps} MagCache ratios written to {target}; set IMAGINE_DIFFUSERS_MAG_RATIOS={target}")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.diffusers_engine")
    parser.add_argument("--model", type=Path, help="model directory (default: a tiny one)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--ratio", default="16:9")
    parser.add_argument("--resolution", default="480p", choices=["480p", "720p"])
    parser.add_argument("--duration", type=int, default=1)
    parser.add_argument("--steps", type=int, help="default: 8 (tiny), the model's own (real)")
    parser.add_argument("--fps", type=int, help="default: 8 (tiny), the model's own (real)")
    parser.add_argument("--size-scale", type=float, help="default: 0.125 (tiny), 1 (real)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs per configuration")
    parser.add_argument("--attention", help="attention backend for the engine's rows")
    parser.add_argument("--threshold", type=float, help="step-cache threshold")
    parser.add_argument("--mag-ratios", help="JSON file from --calibrate-mag")
    parser.add_argument("--calibrate-mag", type=Path, help="write MagCache ratios here and exit")
    parser.add_argument(
        "--configs", default="plain,resident,offload,group-offload,cache", help="comma-separated"
    )
    args = parser.parse_args()
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.disable_progress_bar()

    with tempfile.TemporaryDirectory() as tmp:
        model = args.model
        if model is None:
            model = build_tiny_wan(Path(tmp) / "tiny-wan")
            args.steps = args.steps or 8
            args.fps = args.fps or 8
            args.size_scale = args.size_scale or 0.125
        args.size_scale = args.size_scale or 1.0
        if args.calibrate_mag:
            calibrate_mag(args, model, args.calibrate_mag)
            return
        results = []
        for name in args.configs.split(","):
            name = name.strip()
            results.append(
                run_plain(args, model) if name == "plain" else run_engine(args, model, name)
            )
        print_table(args, model, results)


def print_table(args: argparse.Namespace, model: Path, results: list[Result]) -> None:
    import torch

    reference = results[0]
    device = "cpu"
    if args.device != "cpu" and torch.cuda.is_available():
        device = torch.cuda.get_device_name()
    shape = reference.frames.shape
    fps = args.fps or "model"
    print(
        f"\n{model.name}: {args.ratio} {args.resolution} {args.duration} s → "
        f"{shape[2]}x{shape[1]}, {shape[0]} frames ({fps} fps), "
        f"{args.steps or 'default'} steps, seed {SEED}; {device}, torch {torch.__version__}, "
        f"{platform.machine()}; median of {args.runs}\n"
    )
    print(
        f"| configuration | s / clip | s / step | speed vs {reference.name} | PSNR dB | SSIM "
        "| MP4 write s | load s |"
    )
    print("|---|---|---|---|---|---|---|---|")
    base = statistics.median(reference.clip_seconds)
    for result in results:
        clip = statistics.median(result.clip_seconds)
        step = statistics.median(result.step_seconds) if result.step_seconds else float("nan")
        same_shape = result.frames.shape == reference.frames.shape
        quality = "– | –"
        if same_shape:
            quality = (
                f"{psnr(result.frames, reference.frames):.1f} | "
                f"{ssim(result.frames, reference.frames):.4f}"
            )
        write = f"{statistics.median(result.write_seconds):.3f}" if result.write_seconds else "–"
        print(
            f"| {result.name} | {clip:.3f} | {step:.4f} | {base / clip:.2f}× | {quality} | "
            f"{write} | {result.load_seconds:.1f} |"
        )


if __name__ == "__main__":
    main()

"""`imagine models check DIR`: what a model directory is, before a GPU is spent on it.

Reads JSON files only (no torch, no weights), so it runs anywhere, in
milliseconds, and says exactly which component is missing or broken.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from imagine.engines.diffusers.check import ModelReport, inspect_model_dir, supports
from imagine.engines.diffusers.mapping import frame_count, size_table
from imagine.sizes import RATIOS

models_app = typer.Typer(help="Inspect local model directories.", no_args_is_help=True)
console = Console(highlight=False, markup=False, soft_wrap=True)


def register(app: typer.Typer) -> None:
    app.add_typer(models_app, name="models")


@models_app.command("check")
def check(
    directory: Annotated[Path, typer.Argument(help="A diffusers model directory")],
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object")] = False,
) -> None:
    """Report the model's family, variant, what it supports and what is missing.

    Exits 1 when the directory cannot be served.
    """
    report = inspect_model_dir(directory)
    if as_json:
        print(json.dumps(report.to_json()))
    else:
        _print(report)
    if not report.ok:
        raise typer.Exit(1)


def _print(report: ModelReport) -> None:
    spec = report.spec
    console.print(str(report.path))
    if report.pipeline_class:
        console.print(f"  family      {report.family or '?'} ({report.pipeline_class})")
    if spec is not None:
        console.print(f"  variant     {spec.title} [{spec.variant}]")
        image_note = " (one image)" if spec.image_to_video else ""
        console.print(f"  supports    {', '.join(supports(spec))}{image_note}")
        frames = frame_count(5, spec.fps, spec.frame_step)
        console.print(
            f"  output      {spec.fps} fps, frames {spec.frame_step}k+1 (5 s = {frames}), "
            f"sizes on a {spec.grid} px grid; native {spec.native_size[0]}x"
            f"{spec.native_size[1]}, {spec.native_frames} frames"
        )
        table = size_table(spec)
        for resolution in ("480p", "720p"):
            sizes = ", ".join(
                f"{ratio} {table[(ratio, resolution)][0]}x{table[(ratio, resolution)][1]}"
                for ratio in RATIOS
            )
            console.print(f"  {resolution:<11} {sizes}")
        console.print(f"  licence     {spec.licence}")
        for note in spec.notes:
            console.print(f"  note        {note}")
    if report.components:
        parts = [f"{c.name} {'ok' if c.problem is None else 'MISSING'}" for c in report.components]
        console.print(f"  components  {' · '.join(parts)}")
    for component in report.missing:
        detail = f" ({component.detail})" if component.detail else ""
        console.print(f"  missing     {component.name}: {component.problem}{detail}")
    for problem in report.problems:
        console.print(f"  problem     {problem}")
    console.print(f"  status      {'ready' if report.ok else 'cannot be served'}")

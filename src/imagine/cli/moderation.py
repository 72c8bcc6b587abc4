"""`imagine moderation`: build hash lists and try prompts against the policy.

`hash` prints the lines of an image hash list for the given images;
`check` runs a prompt (and images) through the configured policy's input
stage exactly as a worker would, and says what would refuse it and why.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

moderation_app = typer.Typer(
    help="Content policy: hash lists and trying prompts.", no_args_is_help=True
)
console = Console(highlight=False, markup=False, soft_wrap=True)


def register(app: typer.Typer) -> None:
    app.add_typer(moderation_app, name="moderation")


@moderation_app.command("hash")
def hash_images(
    images: Annotated[list[Path], typer.Argument(help="Image files (PNG, JPEG, WebP, GIF)")],
) -> None:
    """Print a hash-list line (`<pHash> <file name>`) for each image, for
    IMAGINE_MODERATION_IMAGE_HASHES or a policy's hash list."""
    from PIL import Image

    from imagine.moderation.classifiers import MissingExtra, require
    from imagine.moderation.hashes import image_hash

    try:
        require("imagehash", "hashing images")
    except MissingExtra as exc:
        console.print(f"error: {exc}")
        raise typer.Exit(2) from None
    failed = False
    for path in images:
        try:
            with Image.open(path) as opened:
                value = image_hash(opened.convert("RGB"))
        except (OSError, ValueError) as exc:
            console.print(f"# {path}: {exc}")
            failed = True
            continue
        console.print(f"{value:016x}  {path.name}")
    if failed:
        raise typer.Exit(1)


@moderation_app.command("check")
def check_prompt(
    prompt: Annotated[str, typer.Argument(help="The prompt to try")],
    mode: Annotated[str, typer.Option(help="normal | fun | spicy | custom")] = "normal",
    image: Annotated[
        list[Path] | None, typer.Option("--image", help="An input image (repeatable)")
    ] = None,
) -> None:
    """Run the input checks of the configured policy (IMAGINE_MODERATION_*) on a
    prompt and images; exits 1 when they would refuse it."""
    from imagine.cli.main import _settings
    from imagine.media.images import decode_reduced, probe_image
    from imagine.moderation import ContentRefused, build_moderator
    from imagine.settings import SettingsError

    settings = _settings()
    try:
        moderator = build_moderator(settings)
    except SettingsError as exc:
        console.print(f"error: {exc}")
        raise typer.Exit(2) from None
    if moderator is None:
        console.print("moderation is off (IMAGINE_MODERATION=false)")
        return
    inputs = []
    for path in image or []:
        data = path.read_bytes()
        inputs.append(decode_reduced(data, probe_image(data, settings.image_max_pixels), None))

    async def run() -> None:
        try:
            await moderator.check_input(mode, prompt, inputs)
        finally:
            await moderator.aclose()

    try:
        asyncio.run(run())
    except ContentRefused as refused:
        found = refused.refusal
        score = "" if found.score is None else f" (score {found.score:.3f})"
        console.print(f"refused: {found.check} on {found.subject}: {found.rule}{score}")
        raise typer.Exit(1) from None
    console.print(f"allowed in mode {mode}")

"""The playground's form as a `GenerateBody`: the same model, and then the
same validation, as `POST /v1/generate`. Uploaded files become `data:` URLs,
so they meet exactly the API's limits on images."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError
from starlette.datastructures import FormData, UploadFile

from imagine.console.snippets import UPLOAD_PLACEHOLDER
from imagine.engines.base import EngineCapabilities
from imagine.errors import InvalidRequest
from imagine.media.images import as_data_url
from imagine.settings import Settings
from imagine.sizes import RATIOS, RESOLUTIONS
from imagine.tasks.schemas import GenerateBody

FIELDS = ("prompt", "mode", "ratio", "duration", "resolution", "seed", "callback_url")


@dataclass(frozen=True)
class Choices:
    """What the form offers: only what this deployment and the caller's engine accept."""

    modes: list[str]
    ratios: list[str]
    resolutions: list[str]
    min_duration: int
    max_duration: int
    max_images: int


def choices_for(settings: Settings, capabilities: EngineCapabilities) -> Choices:
    if capabilities.sizes is not None:
        ratios = [r for r in RATIOS if any(key[0] == r for key in capabilities.sizes)]
    else:
        ratios = list(RATIOS)
    return Choices(
        modes=[m for m in settings.enabled_modes if m in capabilities.modes],
        ratios=ratios,
        resolutions=[r for r in RESOLUTIONS if r in capabilities.resolutions],
        min_duration=capabilities.min_duration,
        max_duration=capabilities.max_duration,
        max_images=min(settings.max_images, capabilities.max_images),
    )


def _integer(form: FormData, name: str) -> int | None:
    raw = form.get(name)
    if not isinstance(raw, str) or not raw.strip():
        return None
    try:
        return int(raw.strip())
    except ValueError:
        raise InvalidRequest(f"The {name} parameter must be a whole number") from None


def request_fields(form: FormData, *, uploads: int = 0) -> dict[str, Any]:
    """The fields the form set, in the API's JSON shape (empty fields left out,
    so the server's defaults apply); `uploads` files appear as placeholders."""
    fields: dict[str, Any] = {}
    for name in FIELDS:
        if name in ("duration", "seed"):
            number = _integer(form, name)
            if number is not None:
                fields[name] = number
            continue
        value = form.get(name)
        if isinstance(value, str) and value.strip():
            fields[name] = value if name == "prompt" else value.strip()
    raw_urls = form.get("image_urls")
    urls = raw_urls.split() if isinstance(raw_urls, str) else []
    images = urls + [UPLOAD_PLACEHOLDER] * uploads
    if images:
        fields["images"] = images
    return fields


def uploaded_files(form: FormData) -> list[UploadFile]:
    return [
        item
        for item in form.getlist("image_files")
        if isinstance(item, UploadFile) and item.filename
    ]


async def generation_body(form: FormData) -> GenerateBody:
    """The request to submit; files are read (each already bounded by the form
    parser) and sent on as `data:` URLs."""
    files = uploaded_files(form)
    fields = request_fields(form)
    images = list(fields.pop("images", []))
    for upload in files:
        images.append(as_data_url(await upload.read(), upload.content_type))
    if images:
        fields["images"] = images
    fields.setdefault("prompt", "")
    try:
        return GenerateBody.model_validate(fields)
    except ValidationError as exc:
        first = exc.errors()[0]
        name = str(first["loc"][0]) if first["loc"] else "request"
        raise InvalidRequest(f"The {name} parameter is not valid") from None

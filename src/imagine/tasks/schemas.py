"""The request body of `POST /v1/generate`, its validation, and frame sizes.

Pydantic checks the shape (types, unknown fields); `validate_generation`
checks what depends on configuration and the engine (enabled modes, limits),
so every rule produces one clear "Invalid request: …" sentence.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictInt

from imagine.api.text import Text
from imagine.engines.base import EngineCapabilities
from imagine.errors import InvalidRequest
from imagine.media.fetch import decode_data_url
from imagine.media.images import check_task_pixels, probe_image
from imagine.media.netguard import UnsafeURL, check_url_syntax
from imagine.settings import Settings
from imagine.sizes import FRAME_SIZES, RATIOS, RESOLUTIONS

SEED_MAX = 2**32 - 1


class GenerateBody(BaseModel):
    """What a client may send. Strict types: `"6"` is not a duration; strings are `Text`."""

    model_config = ConfigDict(extra="forbid")

    mode: Text = Field(default="normal", description="normal | fun | spicy | custom")
    prompt: Text = Field(description="What the video shows; 1-5000 characters.")
    images: list[Text] | Text | None = Field(
        default=None,
        description="0-7 http(s) or data:image/…;base64 URLs (a single string is one image).",
    )
    ratio: Text = Field(default="16:9", description=" | ".join(RATIOS))
    duration: StrictInt = Field(default=6, description="Seconds, 1-15.")
    resolution: Text = Field(
        default="480p", description="480p | 720p (| 1080p where the engine supports it)"
    )
    seed: StrictInt | None = Field(
        default=None, description=f"0-{SEED_MAX}; same seed, same video."
    )
    callback_url: Text | None = Field(
        default=None,
        description="http(s) URL that receives the task's status, signed, when it ends "
        "(Standard Webhooks; the account needs a signing secret, see docs/webhooks.md).",
    )


@dataclass(frozen=True)
class StoredImage:
    """A `data:` image whose bytes went to storage: the task row keeps only this."""

    key: str
    """Where the bytes are (`inputs/<task id>/…`, never served or listed as an output)."""
    shown: str
    """What its owner sees instead of the data: `data:image/png;base64,…(N characters)`."""


def stored_images_in(request: Mapping[str, Any]) -> list[StoredImage]:
    """The stored images a task row's `request` refers to, without reading the rest
    of it (a row from any version: older ones may lack later fields)."""
    return [
        StoredImage(**image) for image in request.get("images") or () if isinstance(image, dict)
    ]


def summarise_data_url(url: str) -> str:
    """A data: URL as its owner is shown it: the header and the length, not the data."""
    return f"{url.split(',', 1)[0]},…({len(url)} characters)"


@dataclass(frozen=True)
class GenerationRequest:
    """A request that passed every rule: what the task stores and the worker runs.

    `images` are http(s) URLs, `StoredImage`s, or (rows written before inputs
    went to storage) inline `data:` URLs.
    """

    mode: str
    prompt: str
    ratio: str
    images: tuple[str | StoredImage, ...]
    duration: int
    resolution: str
    seed: int | None
    callback_url: str | None = None
    uploads: Mapping[int, bytes] = field(default_factory=dict, compare=False, repr=False)
    """The decoded `data:` images by position, checked at submit, on their way to
    storage; never part of the task row."""

    def to_json(self) -> dict[str, Any]:
        data = dict(vars(self))  # the fields are flat: no need for asdict's deep copy
        del data["uploads"]
        data["images"] = [
            vars(image) if isinstance(image, StoredImage) else image for image in self.images
        ]
        if self.callback_url is None:
            del data["callback_url"]
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> GenerationRequest:
        images = tuple(
            StoredImage(**image) if isinstance(image, dict) else image
            for image in data.get("images") or ()
        )
        return cls(**{**data, "images": images})

    @property
    def stored_images(self) -> list[StoredImage]:
        return [image for image in self.images if isinstance(image, StoredImage)]

    @property
    def size(self) -> tuple[int, int]:
        return FRAME_SIZES[(self.ratio, self.resolution)]

    def size_for(self, capabilities: EngineCapabilities) -> tuple[int, int]:
        """The size an engine renders this at: its own grid if it has one, else the table."""
        sizes = capabilities.sizes
        if sizes is not None and (self.ratio, self.resolution) in sizes:
            return sizes[(self.ratio, self.resolution)]
        return self.size


def validate_generation(
    body: GenerateBody, settings: Settings, capabilities: EngineCapabilities
) -> GenerationRequest:
    prompt = body.prompt.strip()
    if not prompt:
        raise InvalidRequest("The prompt parameter is required")
    if len(prompt) > settings.max_prompt_chars:
        raise InvalidRequest(
            f"The prompt parameter must be at most {settings.max_prompt_chars} characters"
        )
    modes = [m for m in settings.enabled_modes if m in capabilities.modes]
    if body.mode not in modes:
        raise InvalidRequest(f"The mode parameter must be one of: {', '.join(modes)}")
    if body.ratio not in RATIOS:
        raise InvalidRequest(f"The ratio parameter must be one of: {', '.join(RATIOS)}")
    resolutions = [r for r in RESOLUTIONS if r in capabilities.resolutions]
    if body.resolution not in resolutions:
        raise InvalidRequest(f"The resolution parameter must be one of: {', '.join(resolutions)}")
    sizes = capabilities.sizes
    if sizes is not None and (body.ratio, body.resolution) not in sizes:
        served = [r for r in RATIOS if (r, body.resolution) in sizes]
        raise InvalidRequest(
            f"The ratio parameter must be one of: {', '.join(served)} at {body.resolution}"
        )
    low, high = capabilities.min_duration, capabilities.max_duration
    if not low <= body.duration <= high:
        raise InvalidRequest(f"The duration parameter must be an integer from {low} to {high}")
    if body.seed is not None and not 0 <= body.seed <= SEED_MAX:
        raise InvalidRequest(f"The seed parameter must be an integer from 0 to {SEED_MAX}")
    images, uploads = _validate_images(body.images, settings, capabilities)
    multi_cap = capabilities.max_duration_multi_image
    if len(images) > 1 and multi_cap is not None and body.duration > multi_cap:
        raise InvalidRequest(
            f"The duration parameter must be at most {multi_cap} when more than one image is given"
        )
    return GenerationRequest(
        mode=body.mode,
        prompt=prompt,
        ratio=body.ratio,
        images=images,
        duration=body.duration,
        resolution=body.resolution,
        seed=body.seed,
        callback_url=_validate_callback_url(body.callback_url, settings),
        uploads=uploads,
    )


def _validate_callback_url(url: str | None, settings: Settings) -> str | None:
    """Webhook targets follow the image URL rules (SSRF); delivery checks them again."""
    if url is None:
        return None
    if len(url) > 2048:
        raise InvalidRequest("The callback_url parameter must be at most 2048 characters")
    try:
        check_url_syntax(url, allow_private=settings.allow_private_urls)
    except UnsafeURL as exc:
        raise InvalidRequest(f"The callback_url parameter is not an allowed URL: {exc}") from None
    return url


def _validate_images(
    images: list[str] | str | None, settings: Settings, capabilities: EngineCapabilities
) -> tuple[tuple[str, ...], dict[int, bytes]]:
    """The image URLs, and the bytes of the `data:` ones by position. A `data:`
    image is checked here as far as its header (type, size, the task's pixel
    budget), so a bad one is a 400 rather than a failed task; URLs are only
    checked for shape (the worker fetches them)."""
    if images is None:
        return (), {}
    urls = [images] if isinstance(images, str) else images
    limit = min(settings.max_images, capabilities.max_images)
    if len(urls) > limit:
        if limit == 0:
            raise InvalidRequest(
                "The images parameter is not supported: this model generates from text only"
            )
        noun = "image" if limit == 1 else "images"
        raise InvalidRequest(f"The images parameter accepts at most {limit} {noun}")
    uploads: dict[int, bytes] = {}
    headers = []
    for index, url in enumerate(urls):
        where = f"images[{index}]"
        try:
            if url[:5].lower() == "data:":
                data = decode_data_url(url, settings.image_max_bytes)
                headers.append(probe_image(data, settings.image_max_pixels))
                uploads[index] = data
            else:
                check_url_syntax(url, allow_private=settings.allow_private_urls)
        except UnsafeURL as exc:
            raise InvalidRequest(f"{where} is not an allowed image URL: {exc}") from None
        except ValueError as exc:
            raise InvalidRequest(f"{where} {exc}") from None
    try:
        check_task_pixels(headers, settings.task_max_pixels)
    except ValueError as exc:
        raise InvalidRequest(f"The images {exc}") from None
    return tuple(urls), uploads

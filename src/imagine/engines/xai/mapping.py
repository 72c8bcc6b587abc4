"""Our request → xAI's `GenerateVideoRequest` fields.

Kept free of the SDK and of I/O so the mapping can be read and tested alone:

* `prompt`: ours, plus a short style sentence for the `fun` and `spicy` modes
  (xAI has no mode; `normal` and `custom` are sent untouched).
* `ratio` → `aspect_ratio` and `resolution` → `resolution`: the same strings.
* `duration`: always sent, because xAI's default (8 s) differs from ours (6 s).
* one image → `image_url` (image-to-video, the image is the first frame);
  several → `reference_image_urls` (reference-to-video), which xAI caps at 10 s.
* `seed`: not sent; xAI has no seed, so it cannot be honoured.

Images travel inline as `data:` URLs of the bytes the worker fetched and
checked, so xAI sees exactly what we validated and never has to reach a URL
itself. One gRPC message may carry at most 20 MiB; when the images do not fit,
they are re-encoded as smaller JPEGs, and if even that fails the job is
refused before anything is sent (nothing billed).
"""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from PIL import Image, ImageOps

from imagine.engines.base import GenerationJob
from imagine.engines.xai import errors
from imagine.engines.xai.errors import Phase, Upstream
from imagine.media.images import InputImage

__all__ = [
    "MAX_MESSAGE_BYTES",
    "REFERENCE_MAX_DURATION",
    "STYLE_HINTS",
    "VideoRequest",
    "build_request",
    "styled_prompt",
]

MAX_MESSAGE_BYTES = 20 * 1024 * 1024
"""xAI's (and the SDK's) limit on one gRPC message."""
_HEADROOM = 64 * 1024  # protobuf framing, model name, metadata
REFERENCE_MAX_DURATION = 10
"""xAI refuses reference-to-video (several images) longer than this."""

STYLE_HINTS: dict[str, str] = {
    "fun": "Style: playful and fun, bright colours, lively light-hearted motion.",
    "spicy": "Style: bold and dramatic, intense colours, striking high-energy motion.",
}
"""Appended to the prompt per mode; `normal` and `custom` send the prompt as written."""

_PASS_THROUGH_TYPES = frozenset({"image/png", "image/jpeg"})
# Tried in order when the images do not fit: (longest side, JPEG quality).
_SHRINK_STEPS = ((1920, 90), (1280, 82), (854, 72))


@dataclass(frozen=True)
class VideoRequest:
    """What is sent to `client.video.start(...)`."""

    prompt: str
    model: str
    duration: int
    aspect_ratio: str
    resolution: str
    image_url: str | None = None
    reference_image_urls: tuple[str, ...] = ()

    def start_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            "prompt": self.prompt,
            "model": self.model,
            "duration": self.duration,
            "aspect_ratio": self.aspect_ratio,
            "resolution": self.resolution,
        }
        if self.image_url is not None:
            kwargs["image_url"] = self.image_url
        if self.reference_image_urls:
            kwargs["reference_image_urls"] = list(self.reference_image_urls)
        return kwargs

    @property
    def kind(self) -> str:
        if self.image_url is not None:
            return "image-to-video"
        return "reference-to-video" if self.reference_image_urls else "text-to-video"


def styled_prompt(prompt: str, mode: str) -> str:
    """The prompt with the mode's style sentence, if the mode has one."""
    hint = STYLE_HINTS.get(mode)
    return f"{prompt}\n\n{hint}" if hint else prompt


def build_request(
    job: GenerationJob, model: str, *, max_message_bytes: int = MAX_MESSAGE_BYTES
) -> VideoRequest:
    """Map `job` to xAI's fields; raises `TaskFailure` for a job xAI would refuse.

    CPU-bound when images must be re-encoded: call it from a thread.
    """
    if len(job.images) > 1 and job.duration > REFERENCE_MAX_DURATION:
        raise errors.classify(
            Upstream(
                Phase.LOCAL,
                errors.TOO_MANY_SECONDS,
                f"{len(job.images)} reference images allow at most {REFERENCE_MAX_DURATION} s, "
                f"got {job.duration} s",
            )
        )
    prompt = styled_prompt(job.prompt, job.mode)
    budget = max_message_bytes - _HEADROOM - len(prompt.encode("utf-8"))
    urls = fit_images(job.images, budget)
    return VideoRequest(
        prompt=prompt,
        model=model,
        duration=job.duration,
        aspect_ratio=job.ratio,
        resolution=job.resolution,
        image_url=urls[0] if len(urls) == 1 else None,
        reference_image_urls=tuple(urls) if len(urls) > 1 else (),
    )


def fit_images(images: Sequence[InputImage], budget: int) -> list[str]:
    """`data:` URLs for `images` whose total length is within `budget` bytes."""
    if not images:
        return []
    urls = [_data_url(*_as_sent(image)) for image in images]
    total = sum(len(url) for url in urls)
    for long_side, quality in _SHRINK_STEPS:
        if total <= budget:
            return urls
        urls = [
            min(url, _data_url("image/jpeg", _shrink(image, long_side, quality)), key=len)
            for url, image in zip(urls, images, strict=True)
        ]
        total = sum(len(url) for url in urls)
    if total <= budget:
        return urls
    raise errors.classify(
        Upstream(
            Phase.LOCAL,
            errors.IMAGES_TOO_LARGE,
            f"{len(images)} images need {total} bytes inline even re-encoded; "
            f"{max(budget, 0)} fit in one request",
        )
    )


def _as_sent(image: InputImage) -> tuple[str, bytes]:
    """PNG and JPEG go as they came; WebP and GIF (first frame) become PNG,
    the types every image model accepts."""
    if image.mime_type in _PASS_THROUGH_TYPES:
        return image.mime_type, image.data
    with Image.open(io.BytesIO(image.data)) as opened:
        opened.seek(0)
        picture = opened.convert("RGBA" if _has_alpha(opened) else "RGB")
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG", optimize=False)
    return "image/png", buffer.getvalue()


def _shrink(image: InputImage, long_side: int, quality: int) -> bytes:
    """The image upright, at most `long_side` pixels across, as a JPEG."""
    with Image.open(io.BytesIO(image.data)) as opened:
        opened.seek(0)
        if opened.format == "JPEG":
            opened.draft("RGB", (long_side, long_side))  # decode big JPEGs at reduced scale
        picture = ImageOps.exif_transpose(opened).convert("RGB")
    picture.thumbnail((long_side, long_side), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    picture.save(buffer, format="JPEG", quality=quality, optimize=True)
    return buffer.getvalue()


def _has_alpha(picture: Image.Image) -> bool:
    return picture.mode in ("RGBA", "LA", "PA") or "transparency" in picture.info


def _data_url(mime_type: str, data: bytes) -> str:
    return f"data:{mime_type};base64,{base64.b64encode(data).decode('ascii')}"

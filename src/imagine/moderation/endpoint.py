"""An external moderation service speaking OpenAI's `/v1/moderations` protocol.

`POST {url}` with `{"input": …}` (a string, or a list of `text` and
`image_url` parts for models that read images) answers
`{"results": [{"flagged", "categories", "category_scores"}]}`. The operator
configures the URL and key; every call has one time limit, and any failure
to get a verdict (refused connection, time limit, an error status, a body
that is not that shape) is `EndpointUnavailable`, which the policy's
fail-open or fail-closed choice then decides.
"""

from __future__ import annotations

import asyncio
import base64
import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import httpx
from PIL import Image

__all__ = ["EndpointUnavailable", "EndpointVerdict", "ModerationEndpoint", "jpeg_data_url"]

# Images go as JPEG data URLs no larger than this on their longer side:
# enough for a classifier, small enough for a request body.
IMAGE_SIDE = 512


class EndpointUnavailable(Exception):
    """No verdict from the endpoint; the message says why (never the key)."""


@dataclass(frozen=True)
class EndpointVerdict:
    flagged: bool
    categories: Mapping[str, bool]
    scores: Mapping[str, float]


class ModerationEndpoint:
    def __init__(
        self,
        url: str,
        *,
        api_key: str | None,
        model: str | None,
        timeout: float,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.url = url
        self.model = model
        self.timeout = timeout
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.AsyncClient(
            headers=headers, timeout=timeout, transport=transport, follow_redirects=False
        )

    async def aclose(self) -> None:
        await self._client.aclose()

    async def classify(
        self, text: str | None, images: Sequence[Image.Image] = ()
    ) -> list[EndpointVerdict]:
        """The endpoint's verdicts on `text` and `images` (one request)."""
        body: dict[str, Any] = {"input": _input(text, images)}
        if self.model:
            body["model"] = self.model
        try:
            async with asyncio.timeout(self.timeout):
                answer = await self._client.post(self.url, json=body)
        except TimeoutError:
            raise EndpointUnavailable(f"no answer within {self.timeout:g} s") from None
        except httpx.HTTPError as exc:
            raise EndpointUnavailable(f"{type(exc).__name__}: {exc}") from None
        if answer.status_code != 200:
            raise EndpointUnavailable(f"answered HTTP {answer.status_code}")
        try:
            return _verdicts(answer.json())
        except (ValueError, TypeError, KeyError) as exc:
            raise EndpointUnavailable(f"answer is not a moderation result: {exc}") from None


def _input(text: str | None, images: Sequence[Image.Image]) -> str | list[dict[str, Any]]:
    if not images:
        return text or ""
    parts: list[dict[str, Any]] = [{"type": "text", "text": text}] if text else []
    parts.extend(
        {"type": "image_url", "image_url": {"url": jpeg_data_url(image)}} for image in images
    )
    return parts


def jpeg_data_url(image: Image.Image) -> str:
    copy = image.convert("RGB")
    copy.thumbnail((IMAGE_SIDE, IMAGE_SIDE))
    buffer = io.BytesIO()
    copy.save(buffer, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _verdicts(payload: Any) -> list[EndpointVerdict]:
    results = payload["results"]
    if not isinstance(results, list) or not results:
        raise ValueError("no results")
    verdicts = []
    for result in results:
        flagged = result["flagged"]
        if not isinstance(flagged, bool):
            raise TypeError("flagged is not a boolean")
        categories = {str(k): bool(v) for k, v in (result.get("categories") or {}).items()}
        scores = {
            str(k): float(v)
            for k, v in (result.get("category_scores") or {}).items()
            if isinstance(v, int | float) and not isinstance(v, bool)
        }
        verdicts.append(EndpointVerdict(flagged, categories, scores))
    return verdicts

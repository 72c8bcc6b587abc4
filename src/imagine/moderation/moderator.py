"""The moderation stage: a task's inputs before the engine, its videos after.

The worker calls `check_input` once the images are fetched and decoded, and
`check_output` once the engine has written its files and before anything is
stored, whatever the engine. A refusal raises `ContentRefused`, a
`TaskFailure` with the contract's sentence, carrying a `Refusal` (which
check, on what, which rule, what score) that the queue records with the
task's ending; the client only ever sees the sentence.

Checks run cheapest first and the first refusal ends the stage. The local
ones (word lists, classifiers, image hashes, frame decoding) run in one
worker thread per stage; the external endpoint, if the policy asks for it
and one is configured, runs last, on the event loop.
"""

from __future__ import annotations

import asyncio
import io
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from imagine.failures import FailureReason, TaskFailure
from imagine.media.images import InputImage
from imagine.media.video import sample_frames
from imagine.moderation.classifiers import (
    ImageClassifier,
    TextClassifier,
    image_classifier_loader,
    load_text_classifier,
)
from imagine.moderation.endpoint import EndpointUnavailable, EndpointVerdict, ModerationEndpoint
from imagine.moderation.hashes import image_hash
from imagine.moderation.policy import InputChecks, OutputChecks, Policy, check_classes
from imagine.moderation.text import fold

__all__ = ["ContentRefused", "Moderator", "Refusal"]

log = logging.getLogger("imagine.moderation")

# Input images are decoded for the image checks at most this large: a pHash
# reads a 32×32 thumbnail and classifiers a few hundred pixels.
CHECK_SIDE = 640


@dataclass(frozen=True)
class Refusal:
    """Why content was refused, for the operator's record."""

    stage: str
    """input | output | engine (the engine's own upstream verdict)"""
    check: str
    """words | text_classifier | image_hash | image_classifier | endpoint | engine"""
    subject: str
    """What was refused: `prompt`, `image 2`, `video 1 frame 3`."""
    rule: str
    """The list entry, class or category that decided it."""
    score: float | None = None
    """The classifier's score, or a hash's distance in bits."""


class ContentRefused(TaskFailure):
    """The policy refuses this task's content: it fails, refunded, without retry."""

    def __init__(self, refusal: Refusal) -> None:
        super().__init__(
            FailureReason.INAPPROPRIATE,
            f"refused by moderation: {refusal.stage} {refusal.check} on {refusal.subject}",
        )
        self.refusal = refusal


@dataclass(frozen=True)
class _Picture:
    subject: str
    image: Image.Image


class Moderator:
    """One per process, shared by its workers: the policy, and the classifiers
    it needs, each loaded once (`prepare`, or on first use) by the loaders
    given (`build_moderator` checks beforehand that they can be imported)."""

    def __init__(
        self,
        policy: Policy,
        *,
        endpoint: ModerationEndpoint | None = None,
        endpoint_fail_open: bool = False,
        text_classifier: Callable[[], TextClassifier] = load_text_classifier,
        image_classifier: Callable[[], ImageClassifier] | None = None,
    ) -> None:
        self.policy = policy
        self.endpoint = endpoint
        self.endpoint_fail_open = endpoint_fail_open
        self._load_text = text_classifier
        self._load_image = image_classifier
        self._text: TextClassifier | None = None
        self._image: ImageClassifier | None = None

    def prepare(self) -> None:
        """Load the classifiers the policy uses (in worker processes only)."""
        if self.policy.uses_text_classifier:
            self.text_classifier()
        if self.policy.uses_image_classifier:
            self.image_classifier()

    def text_classifier(self) -> TextClassifier:
        if self._text is None:
            self._text = self._load_text()
        return self._text

    def image_classifier(self) -> ImageClassifier:
        if self._image is None:
            load = self._load_image or image_classifier_loader("nudenet")
            classifier = load()
            check_classes(self.policy, classifier.classes)
            self._image = classifier
        return self._image

    async def aclose(self) -> None:
        if self.endpoint is not None:
            await self.endpoint.aclose()

    # --- the two stages ----------------------------------------------------

    async def check_input(self, mode: str, prompt: str, images: Sequence[InputImage]) -> None:
        """Raise `ContentRefused` if the prompt or an input image is refused."""
        checks = self.policy.for_mode(mode).input
        if not checks.active:
            return
        pictures = await asyncio.to_thread(self._local_input, checks, prompt, images)
        if checks.external and self.endpoint is not None:
            sent = pictures if checks.external_images else []
            await self._ask_endpoint("input", checks, prompt, sent)

    async def check_output(self, mode: str, videos: Sequence[Path]) -> None:
        """Raise `ContentRefused` if a sampled frame of a video is refused."""
        checks = self.policy.for_mode(mode).output
        asks_endpoint = checks.external and self.endpoint is not None
        if not (self._hash_lists(checks) or checks.image_classes or asks_endpoint):
            return
        frames = await asyncio.to_thread(self._local_output, checks, videos)
        if asks_endpoint:
            await self._ask_endpoint("output", checks, None, frames)

    # --- local checks, in a worker thread ------------------------------------

    def _local_input(
        self, checks: InputChecks, prompt: str, images: Sequence[InputImage]
    ) -> list[_Picture]:
        folded = fold(prompt)
        for name in checks.word_lists:
            entry = self.policy.word_lists[name].match(folded)
            if entry is not None:
                raise ContentRefused(Refusal("input", "words", "prompt", f"{name}: {entry}"))
        if checks.text_classifier is not None:
            score = self.text_classifier().score([prompt, folded.readable])
            if score >= checks.text_classifier:
                raise ContentRefused(
                    Refusal("input", "text_classifier", "prompt", "offensive language", score)
                )
        needs_pixels = self._hash_lists(checks) or checks.image_classes or checks.external_images
        if not needs_pixels:
            return []
        pictures = [
            _Picture(f"image {number}", _decoded(image))
            for number, image in enumerate(images, start=1)
        ]
        self._check_pictures("input", checks, pictures)
        return pictures

    def _local_output(self, checks: OutputChecks, videos: Sequence[Path]) -> list[_Picture]:
        pictures = [
            _Picture(f"video {video} frame {frame}", Image.fromarray(pixels))
            for video, path in enumerate(videos, start=1)
            for frame, pixels in enumerate(sample_frames(path, checks.frames), start=1)
        ]
        self._check_pictures("output", checks, pictures)
        return pictures

    def _hash_lists(self, checks: InputChecks | OutputChecks) -> list[str]:
        """The stage's hash lists that have entries (empty ones cost nothing)."""
        return [name for name in checks.hash_lists if len(self.policy.hash_lists[name])]

    def _check_pictures(
        self, stage: str, checks: InputChecks | OutputChecks, pictures: list[_Picture]
    ) -> None:
        lists = [self.policy.hash_lists[name] for name in self._hash_lists(checks)]
        for picture in pictures:
            if lists:
                value = image_hash(picture.image)
                for hash_list in lists:
                    match = hash_list.nearest(value, checks.hash_distance)
                    if match is not None:
                        rule = f"{hash_list.name}: {match.image.hex} {match.image.label}".strip()
                        raise ContentRefused(
                            Refusal(stage, "image_hash", picture.subject, rule, match.distance)
                        )
            if checks.image_classes:
                scores = self.image_classifier().scores(picture.image)
                for name, threshold in checks.image_classes.items():
                    score = scores.get(name, 0.0)
                    if score >= threshold:
                        raise ContentRefused(
                            Refusal(stage, "image_classifier", picture.subject, name, score)
                        )

    # --- the external endpoint -----------------------------------------------

    async def _ask_endpoint(
        self,
        stage: str,
        checks: InputChecks | OutputChecks,
        text: str | None,
        pictures: list[_Picture],
    ) -> None:
        assert self.endpoint is not None
        if text is None and not pictures:
            return
        try:
            verdicts = await self.endpoint.classify(text, [p.image for p in pictures])
        except EndpointUnavailable as exc:
            if self.endpoint_fail_open:
                log.warning("moderation endpoint unavailable, %s stage passed: %s", stage, exc)
                return
            raise TaskFailure(
                FailureReason.NETWORK, f"moderation endpoint unavailable: {exc}", retryable=True
            ) from None
        subject = "prompt" if not pictures else "prompt and images" if text else "frames"
        for rule, score in _decisive(verdicts, checks.external_categories):
            raise ContentRefused(Refusal(stage, "endpoint", subject, rule, score))


def _decisive(
    verdicts: list[EndpointVerdict], thresholds: dict[str, float]
) -> Iterator[tuple[str, float | None]]:
    """(rule, score) for each reason the endpoint's answer refuses: with
    thresholds, a category's score at or above its own; without, `flagged`."""
    for verdict in verdicts:
        if thresholds:
            for category, threshold in thresholds.items():
                score = verdict.scores.get(category)
                if score is not None and score >= threshold:
                    yield category, score
        elif verdict.flagged:
            named = sorted(category for category, on in verdict.categories.items() if on)
            top = max(verdict.scores.values(), default=None)
            yield "flagged: " + (", ".join(named) or "unspecified"), top


def _decoded(image: InputImage) -> Image.Image:
    with Image.open(io.BytesIO(image.data)) as opened:
        if opened.format == "JPEG":
            opened.draft("RGB", (CHECK_SIDE, CHECK_SIDE))
        picture = opened.convert("RGB")
    picture.thumbnail((CHECK_SIDE, CHECK_SIDE))
    return picture

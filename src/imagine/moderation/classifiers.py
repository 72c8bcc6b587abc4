"""The classifiers a policy may use, each shipping its model inside its package.

- Text: `alt-profanity-check` (MIT; the `moderation` extra), a linear SVM
  over a bag of English words that gives the probability a text is
  offensive. Other languages pass through it mostly unseen.
- Images: `nudenet` (its wheel's licence files are the AGPL-3.0 text; the
  `moderation-nudenet` extra, never installed by default), a detector of
  exposed and covered body parts, one score per class.

Each loads its model once per process, the first time a worker needs it
(the loaders are cached), and is called from a worker thread, never on the
event loop. Another image classifier with the same small interface plugs in
by name: `IMAGINE_MODERATION_IMAGE_CLASSIFIER=package.module:factory`.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import threading
from collections.abc import Callable
from typing import Protocol, cast

import numpy as np
from PIL import Image

__all__ = [
    "NUDENET_CLASSES",
    "ImageClassifier",
    "MissingExtra",
    "TextClassifier",
    "image_classifier_loader",
    "load_text_classifier",
    "require",
]


class MissingExtra(RuntimeError):
    """A check the policy names needs a package that is not installed."""


class TextClassifier(Protocol):
    name: str

    def score(self, texts: list[str]) -> float:
        """The highest probability, 0-1, that one of `texts` is offensive."""
        ...


class ImageClassifier(Protocol):
    name: str
    classes: frozenset[str]

    def scores(self, image: Image.Image) -> dict[str, float]:
        """The score, 0-1, of each class found in `image` (absent: not found)."""
        ...


_EXTRAS = {
    "profanity_check": "imagine[moderation]",
    "imagehash": "imagine[moderation]",
    "nudenet": "imagine[moderation-nudenet]",
}


def require(module: str, what: str) -> None:
    """MissingExtra, naming the extra to install, unless `module` can be imported."""
    if importlib.util.find_spec(module) is None:
        raise MissingExtra(f"{what} needs the {module} package: pip install '{_EXTRAS[module]}'")


class ProfanityCheck:
    """alt-profanity-check's model, loaded on construction (its import loads it)."""

    name = "alt-profanity-check"

    def __init__(self) -> None:
        require("profanity_check", "the text classifier")
        from profanity_check import predict_prob

        self._predict = predict_prob
        # scikit-learn's sparse transforms are not documented as thread-safe.
        self._lock = threading.Lock()

    def score(self, texts: list[str]) -> float:
        with self._lock:
            return float(max(self._predict(texts)))


NUDENET_CLASSES = frozenset(
    {
        "FEMALE_GENITALIA_COVERED",
        "FACE_FEMALE",
        "BUTTOCKS_EXPOSED",
        "FEMALE_BREAST_EXPOSED",
        "FEMALE_GENITALIA_EXPOSED",
        "MALE_BREAST_EXPOSED",
        "ANUS_EXPOSED",
        "FEET_EXPOSED",
        "BELLY_COVERED",
        "FEET_COVERED",
        "ARMPITS_COVERED",
        "ARMPITS_EXPOSED",
        "FACE_MALE",
        "BELLY_EXPOSED",
        "MALE_GENITALIA_EXPOSED",
        "ANUS_COVERED",
        "FEMALE_BREAST_COVERED",
        "BUTTOCKS_COVERED",
    }
)


class NudeNet:
    """NudeNet's 320n detector through onnxruntime: per class, its best detection."""

    name = "nudenet"
    classes = NUDENET_CLASSES

    def __init__(self) -> None:
        require("nudenet", "the image classifier")
        from nudenet import NudeDetector

        self._detector = NudeDetector()
        self._lock = threading.Lock()

    def scores(self, image: Image.Image) -> dict[str, float]:
        # The channel order NudeNet's own file-path route feeds its model (BGR).
        pixels = np.ascontiguousarray(np.asarray(image.convert("RGB"))[:, :, ::-1])
        with self._lock:
            detections = self._detector.detect(pixels)
        found: dict[str, float] = {}
        for detection in detections:
            label, score = str(detection["class"]), float(detection["score"])
            found[label] = max(score, found.get(label, 0.0))
        return found


_loading = threading.Lock()  # two workers' first tasks must not load a model twice


@functools.cache
def _profanity_check() -> ProfanityCheck:
    return ProfanityCheck()


@functools.cache
def _image_classifier(spec: str) -> ImageClassifier:
    if spec == "nudenet":
        return NudeNet()
    module, _, name = spec.partition(":")
    factory = getattr(importlib.import_module(module), name)
    return cast(ImageClassifier, factory())


def load_text_classifier() -> TextClassifier:
    """The process's text classifier, loaded on the first call."""
    with _loading:
        return _profanity_check()


def image_classifier_loader(spec: str) -> Callable[[], ImageClassifier]:
    """A loader of the image classifier named `spec` (`nudenet`, or
    `package.module:factory` for a callable returning an `ImageClassifier`),
    which loads it once per process on its first call. Only checks here that
    it can be imported: ValueError or MissingExtra otherwise."""
    if spec == "nudenet":
        require("nudenet", "the image classifier")
    else:
        module, _, name = spec.partition(":")
        if not module or not name.isidentifier():
            raise ValueError(
                f"image classifier {spec!r}: expected nudenet or package.module:factory"
            )
        try:
            found = importlib.util.find_spec(module)
        except ModuleNotFoundError:
            found = None
        if found is None:
            raise ValueError(f"image classifier {spec!r}: no module named {module!r}")

    def load() -> ImageClassifier:
        with _loading:
            return _image_classifier(spec)

    return load

"""NudeNet, the opt-in image classifier (the `moderation-nudenet` extra, AGPL-3.0;
docs/moderation.md): its classes are the ones a policy is checked against,
and ordinary generated pictures pass the suggested thresholds, on input
images and on sampled output frames. Skipped where the extra is not
installed, which includes the default test install."""

from __future__ import annotations

import asyncio
import io
import tempfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imagine.engines.base import GenerationJob, JobControl
from imagine.engines.preview import PreviewEngine
from imagine.media.images import InputImage
from imagine.moderation.classifiers import NUDENET_CLASSES, image_classifier_loader
from imagine.moderation.moderator import Moderator
from imagine.moderation.policy import load_policy

nudenet = pytest.importorskip("nudenet")

SUGGESTED = (
    "{ FEMALE_GENITALIA_EXPOSED = 0.4, MALE_GENITALIA_EXPOSED = 0.4, "
    "FEMALE_BREAST_EXPOSED = 0.5, BUTTOCKS_EXPOSED = 0.5, ANUS_EXPOSED = 0.4 }"
)


def test_the_classes_policies_are_checked_against_are_nudenets_own() -> None:
    classifier = image_classifier_loader("nudenet")()
    assert classifier.classes == NUDENET_CLASSES
    labels = vars(nudenet.nudenet)["__labels"]
    assert set(labels) == NUDENET_CLASSES


def test_ordinary_generated_pictures_pass_the_suggested_thresholds(tmp_path: Path) -> None:
    policy_file = tmp_path / "policy.toml"
    policy_file.write_text(
        f"[modes.normal.input]\nimage_classes = {SUGGESTED}\n"
        f"[modes.normal.output]\nframes = 6\nimage_classes = {SUGGESTED}\n"
    )
    moderator = Moderator(
        load_policy(policy_file), image_classifier=image_classifier_loader("nudenet")
    )
    moderator.prepare()
    rng = np.random.default_rng(5)
    cells = (rng.random((9, 12, 3)) * 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(cells).resize((960, 720), Image.Resampling.BICUBIC).save(buffer, "JPEG")
    photo = InputImage(buffer.getvalue(), "image/jpeg", 960, 720)
    engine = PreviewEngine()
    for prompt in ("a crowd at a beach party", "a portrait of a smiling woman", "a lighthouse"):
        job = GenerationJob(
            task_id="task_nudenet",
            prompt=prompt,
            mode="normal",
            ratio="16:9",
            resolution="480p",
            width=848,
            height=480,
            duration=1,
            seed=3,
            images=(photo,),
        )
        with tempfile.TemporaryDirectory() as workdir:
            videos = asyncio.run(engine.generate(job, Path(workdir), JobControl()))
            # Raises ContentRefused on a false positive.
            asyncio.run(moderator.check_input("normal", prompt, [photo]))
            asyncio.run(moderator.check_output("normal", videos))

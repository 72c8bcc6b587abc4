"""An image classifier built for the tests: the share of strongly red pixels.

Real enough to exercise the policy's image-classifier plumbing (per-class
thresholds, input images and output frames, the refusal record) without a
model whose classes would need sensitive pictures to trigger. Plugged in as
`IMAGINE_MODERATION_IMAGE_CLASSIFIER=colour_classifier:red_share`.
"""

from __future__ import annotations

import numpy as np
from PIL import Image


class RedShare:
    name = "red-share"
    classes = frozenset({"RED"})

    def scores(self, image: Image.Image) -> dict[str, float]:
        pixels = np.asarray(image.convert("RGB"), dtype=np.int16)
        red = (pixels[..., 0] > 150) & (pixels[..., 1] < 90) & (pixels[..., 2] < 90)
        share = float(red.mean())
        return {"RED": share} if share > 0 else {}


def red_share() -> RedShare:
    return RedShare()

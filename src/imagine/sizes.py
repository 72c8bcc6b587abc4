"""Frame sizes of the contract (DESIGN §2): ratio × resolution → (width, height).

Shared by request validation and by engines that map them onto their own
grid; each engine declares which resolutions it supports.
"""

from __future__ import annotations

RATIOS = ("1:1", "16:9", "9:16", "2:3", "3:2", "4:3", "3:4")
RESOLUTIONS = ("480p", "720p", "1080p")  # each engine declares which it supports

# DESIGN §2: ratio × resolution → (width, height), even numbers.
FRAME_SIZES: dict[tuple[str, str], tuple[int, int]] = {
    ("1:1", "480p"): (480, 480),
    ("16:9", "480p"): (848, 480),
    ("9:16", "480p"): (480, 848),
    ("3:2", "480p"): (720, 480),
    ("2:3", "480p"): (480, 720),
    ("4:3", "480p"): (640, 480),
    ("3:4", "480p"): (480, 640),
    ("1:1", "720p"): (720, 720),
    ("16:9", "720p"): (1280, 720),
    ("9:16", "720p"): (720, 1280),
    ("3:2", "720p"): (1080, 720),
    ("2:3", "720p"): (720, 1080),
    ("4:3", "720p"): (960, 720),
    ("3:4", "720p"): (720, 960),
    ("1:1", "1080p"): (1080, 1080),
    ("16:9", "1080p"): (1920, 1080),
    ("9:16", "1080p"): (1080, 1920),
    ("3:2", "1080p"): (1620, 1080),
    ("2:3", "1080p"): (1080, 1620),
    ("4:3", "1080p"): (1440, 1080),
    ("3:4", "1080p"): (1080, 1440),
}

"""The content policy's parts on their own: folding prompts for the word lists,
perceptual hashes across resizing and re-encoding, the policy file's checks,
how an endpoint's answer is judged, and which frames of a video are sampled."""

from __future__ import annotations

import importlib.util
import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from imagine.media.video import Mp4Writer, sample_frames
from imagine.moderation import build_moderator
from imagine.moderation.endpoint import EndpointVerdict
from imagine.moderation.hashes import HashList, KnownImage, image_hash, read_hash_list
from imagine.moderation.moderator import _decisive
from imagine.moderation.policy import DEFAULT_POLICY, load_policy
from imagine.moderation.text import WordList, fold, read_entries
from imagine.settings import SettingsError, load_settings

LIST = WordList(
    "house",
    ["naked", "nude*", "kill", "cunt", "cock", "ass", "bare breasts", r"re:\bnsfw\w*"],
)


@pytest.mark.parametrize(
    ("prompt", "entry"),
    [
        ("a naked figure", "naked"),
        ("NAKED", "naked"),
        ("n a k e d", "naked"),
        ("a n a k e d woman", "naked"),  # the article joins the run
        ("n.a.k.e.d", "naked"),
        ("n-a-k-e-d on a beach", "naked"),
        ("nаkеd", "naked"),  # Cyrillic а and е
        ("ΝΑΚΕD", "naked"),  # Greek capitals
        ("𝐧𝐚𝐤𝐞𝐝", "naked"),  # mathematical bold
        ("ｎａｋｅｄ", "naked"),  # full width
        ("nakéd", "naked"),
        ("na\u200bked", "naked"),  # a zero-width space
        ("n4k3d", "naked"),
        ("n 4 k 3 d", "naked"),
        ("naked!!!", "naked"),
        ("nudes at dawn", "nude*"),
        ("k1ll him", "kill"),  # 1 read as l
        ("k!ll", "kill"),
        ("@ss", "ass"),
        ("Bare   BREASTS", "bare breasts"),
        ("NSFW clip", r"re:\bnsfw\w*"),
    ],
)
def test_obfuscated_entries_are_found(prompt: str, entry: str) -> None:
    assert LIST.match(fold(prompt)) == entry


@pytest.mark.parametrize(
    "prompt",
    [
        "Scunthorpe United at home",
        "a cocktail bar in Havana",
        "assassin's creed trailer",
        "a classic car in Essex",
        "a bass guitar solo",
        "the cockpit of a jet",
        "skill and patience",
        "I saw a cat",
        "a denuded hillside",  # a prefix entry matches from a word's start only
    ],
)
def test_innocent_words_that_contain_entries_pass(prompt: str) -> None:
    assert LIST.match(fold(prompt)) is None


def test_the_shipped_explicit_list_spares_ordinary_prompts() -> None:
    explicit = load_policy().word_lists["explicit"]
    assert explicit.match(fold("a n a k e d woman")) == "naked"
    for prompt in ("chicken breasts on a grill", "a sexton in the church", "cumulus clouds"):
        assert explicit.match(fold(prompt)) is None, prompt


def _picture(seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    blocks = (rng.random((12, 16, 3)) * 255).astype(np.uint8)
    return Image.fromarray(blocks).resize((1280, 960), Image.Resampling.BICUBIC)


def _jpeg(image: Image.Image, size: tuple[int, int], quality: int) -> Image.Image:
    buffer = io.BytesIO()
    image.resize(size, Image.Resampling.LANCZOS).save(buffer, format="JPEG", quality=quality)
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


def test_a_resized_reencoded_copy_stays_near_and_other_pictures_far() -> None:
    original = image_hash(_picture(1))
    known = HashList("known", [KnownImage(original, "picture one")])
    for size, quality in (((640, 480), 70), ((300, 225), 50), ((1600, 1200), 90)):
        match = known.nearest(image_hash(_jpeg(_picture(1), size, quality)), 8)
        assert match is not None and match.distance <= 4, (size, quality)
    for seed in range(2, 12):
        assert known.nearest(image_hash(_picture(seed)), 8) is None, seed


def test_hash_list_files_are_read_with_labels_and_refused_when_malformed(
    tmp_path: Path,
) -> None:
    good = tmp_path / "known.txt"
    good.write_text("# known images\n\n00ff00ff00ff00ff  first one\n0123456789ABCDEF\n")
    listed = read_hash_list("known", good)
    assert [(image.hex, image.label) for image in listed.images] == [
        ("00ff00ff00ff00ff", "first one"),
        ("0123456789abcdef", ""),
    ]
    bad = tmp_path / "bad.txt"
    bad.write_text("00ff00ff00ff00ff\nnot-a-hash\n")
    with pytest.raises(ValueError, match="line 2"):
        read_hash_list("bad", bad)


def _policy_file(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "policy.toml"
    path.write_text(body)
    return path


@pytest.mark.parametrize(
    ("body", "complaint"),
    [
        ("[modes.normal.input]\ntext_clasifier = 0.5\n", "text_clasifier"),
        ("[modes.normal.input]\ntext_classifier = 1.5\n", "text_classifier"),
        ("[modes.normal.input]\nword_lists = ['missing']\n", "undefined lists"),
        ("[modes.normal.output]\nhash_lists = ['gone']\n", "undefined lists"),
        ("[modes.fun.input]\nword_lists = []\n", "modes.normal"),
        ("[modes.normal]\n[modes.weird]\n", "unknown modes"),
        ("[word_lists]\noperator = 'x.txt'\n[modes.normal]\n", "set by the settings"),
        ("[word_lists]\nmine = 'absent.txt'\n[modes.normal]\n", "absent.txt"),
        ("[word_lists]\nmine = 'builtin:nothing'\n[modes.normal]\n", "nothing.txt"),
        ("[modes.normal.output]\nword_lists = ['operator']\n", "word_lists"),
        ("modes = [", "moderation policy"),
    ],
)
def test_a_bad_policy_file_is_refused_with_the_key_named(
    tmp_path: Path, body: str, complaint: str
) -> None:
    with pytest.raises(ValueError, match=r"moderation policy|word list") as raised:
        load_policy(_policy_file(tmp_path, body))
    assert complaint in str(raised.value)


def test_modes_a_policy_leaves_out_follow_normal_and_lists_resolve_beside_it(
    tmp_path: Path,
) -> None:
    (tmp_path / "mine.txt").write_text("# mine\nzebra crossing\n")
    operator = tmp_path / "operator.txt"
    operator.write_text("okapi\n")
    policy = load_policy(
        _policy_file(
            tmp_path,
            "[word_lists]\nmine = 'mine.txt'\nexplicit = 'builtin:explicit'\n"
            "[modes.normal.input]\nword_lists = ['mine', 'operator', 'explicit']\n",
        ),
        operator_words=[operator],
    )
    for mode in ("fun", "spicy", "custom"):
        assert policy.for_mode(mode) == policy.for_mode("normal")
    assert policy.word_lists["mine"].match(fold("a Zebra Crossing")) == "zebra crossing"
    assert policy.word_lists["operator"].match(fold("an 0kapi")) == "okapi"
    assert policy.word_lists["explicit"].match(fold("N U D E S")) == "nude*"
    assert read_entries(operator) == ["okapi"]


def test_the_default_policy_is_strict_for_normal_and_fun_only() -> None:
    policy = load_policy()
    assert policy.source == DEFAULT_POLICY
    for mode in ("normal", "fun", "custom"):
        checks = policy.for_mode(mode).input
        assert "explicit" in checks.word_lists and "operator" in checks.word_lists
        assert checks.text_classifier is not None
    spicy = policy.for_mode("spicy").input
    assert spicy.word_lists == ("operator",) and spicy.text_classifier is None


def test_the_endpoints_answer_refuses_on_flagged_or_on_the_modes_thresholds() -> None:
    verdict = EndpointVerdict(
        flagged=True,
        categories={"sexual": True, "violence": False},
        scores={"sexual": 0.7, "violence": 0.1},
    )
    assert list(_decisive([verdict], {})) == [("flagged: sexual", 0.7)]
    # A mode with thresholds of its own ignores `flagged`: spicy lets 0.7 sexual pass.
    assert list(_decisive([verdict], {"sexual/minors": 0.2, "violence": 0.5})) == []
    assert list(_decisive([verdict], {"sexual": 0.6})) == [("sexual", 0.7)]
    calm = EndpointVerdict(flagged=False, categories={}, scores={"sexual": 0.01})
    assert list(_decisive([calm], {})) == []


def test_sampled_frames_spread_over_the_clip_from_first_to_last(tmp_path: Path) -> None:
    """Each frame's grey level is its number, so the samples tell where they came from."""
    path = tmp_path / "ramp.mp4"
    total = 48
    with Mp4Writer(path, 64, 64, fps=24) as writer:
        for number in range(total):
            writer.write_rgb(np.full((64, 64, 3), number * 5, dtype=np.uint8))
    numbers = [round(float(frame.mean()) / 5) for frame in sample_frames(path, 4)]
    assert numbers[0] == 0 and numbers[-1] == total - 1
    for got, step in zip(numbers[1:-1], (16, 32), strict=True):
        assert step <= got <= step + 3, numbers
    assert [round(float(f.mean()) / 5) for f in sample_frames(path, 1)] == [0]


def test_without_the_extra_the_built_in_policy_keeps_its_word_lists(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As on an install without `imagine[moderation]`: the text classifier's
    package cannot be found."""
    real_find_spec = importlib.util.find_spec

    def find_spec(name: str, *args: Any) -> Any:
        return None if name == "profanity_check" else real_find_spec(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    moderator = build_moderator(load_settings(data_dir=tmp_path))
    assert moderator is not None and not moderator.policy.uses_text_classifier
    assert moderator.policy.for_mode("normal").input.word_lists == ("explicit", "operator")
    own = tmp_path / "policy.toml"
    own.write_text("[modes.normal.input]\ntext_classifier = 0.8\n")
    with pytest.raises(SettingsError, match=r"imagine\[moderation\]"):
        build_moderator(load_settings(data_dir=tmp_path, moderation_policy=own))

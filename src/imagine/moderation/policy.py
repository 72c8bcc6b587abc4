"""The content policy: which checks run in each mode, at which thresholds.

A TOML file (`default_policy.toml` beside this module, or the operator's own
through `IMAGINE_MODERATION_POLICY`) names word lists and hash lists and,
per mode, the checks of two stages: `input` (the prompt and the input
images, before the engine starts) and `output` (sampled frames of the
videos, before the task completes). Every key is checked at start-up, so a
typo stops the process with the file and key named instead of silently
turning a check off.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from imagine.moderation.hashes import HashList, read_hash_list
from imagine.moderation.text import WordList, read_entries
from imagine.settings import MODES

__all__ = [
    "DEFAULT_POLICY",
    "OPERATOR",
    "InputChecks",
    "ModePolicy",
    "OutputChecks",
    "Policy",
    "check_classes",
    "load_policy",
]

DEFAULT_POLICY = Path(__file__).with_name("default_policy.toml")
BUILTIN_LISTS = Path(__file__).with_name("lists")
"""Lists that ship with Imagine, named `builtin:<name>` in a policy file."""
OPERATOR = "operator"
"""The list name every policy has: the files named in the settings."""

Threshold = Annotated[float, Field(gt=0, le=1)]


class _Checks(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    hash_lists: tuple[str, ...] = ()
    """Refuse an image within `hash_distance` bits of an entry of these lists."""
    hash_distance: int = Field(default=8, ge=0, le=32)
    image_classes: dict[str, Threshold] = Field(default_factory=dict)
    """Image classifier class -> the score at or above which an image is refused."""
    external: bool = False
    """Ask the moderation endpoint, when one is configured."""
    external_categories: dict[str, Threshold] = Field(default_factory=dict)
    """Category -> score at or above which the endpoint's answer refuses; empty:
    refuse whatever the endpoint flags."""


class InputChecks(_Checks):
    word_lists: tuple[str, ...] = ()
    text_classifier: Threshold | None = None
    """Offensive-language probability at or above which a prompt is refused; None: off."""
    external_images: bool = False
    """Send the input images to the endpoint too (models that take images)."""

    @property
    def active(self) -> bool:
        return bool(
            self.word_lists
            or self.text_classifier is not None
            or self.hash_lists
            or self.image_classes
            or self.external
        )


class OutputChecks(_Checks):
    frames: int = Field(default=4, ge=1, le=64)
    """Frames sampled from each output video, evenly spread."""


class ModePolicy(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    input: InputChecks = Field(default_factory=InputChecks)
    output: OutputChecks = Field(default_factory=OutputChecks)


class _PolicyFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    word_lists: dict[str, str] = Field(default_factory=dict)
    hash_lists: dict[str, str] = Field(default_factory=dict)
    modes: dict[str, ModePolicy] = Field(default_factory=dict)


@dataclass(frozen=True)
class Policy:
    """A loaded policy: every mode's checks, and the lists they name, read."""

    source: Path
    modes: Mapping[str, ModePolicy]
    word_lists: Mapping[str, WordList]
    hash_lists: Mapping[str, HashList]

    def for_mode(self, mode: str) -> ModePolicy:
        return self.modes.get(mode) or self.modes["normal"]

    def _stages(self) -> list[InputChecks | OutputChecks]:
        return [stage for mode in self.modes.values() for stage in (mode.input, mode.output)]

    @property
    def uses_text_classifier(self) -> bool:
        return any(mode.input.text_classifier is not None for mode in self.modes.values())

    @property
    def uses_image_classifier(self) -> bool:
        return any(stage.image_classes for stage in self._stages())

    @property
    def uses_image_hashes(self) -> bool:
        return any(
            len(self.hash_lists[name]) for stage in self._stages() for name in stage.hash_lists
        )

    @property
    def uses_external(self) -> bool:
        return any(stage.external for stage in self._stages())

    def without_text_classifier(self) -> Policy:
        """The same policy with the text classifier off (its package is missing)."""
        modes = {
            name: mode.model_copy(
                update={"input": mode.input.model_copy(update={"text_classifier": None})}
            )
            for name, mode in self.modes.items()
        }
        return Policy(self.source, modes, self.word_lists, self.hash_lists)


def load_policy(
    path: Path | None = None,
    *,
    operator_words: Sequence[Path] = (),
    operator_hashes: Sequence[Path] = (),
) -> Policy:
    """Read and check a policy file (default: the built-in one) and the lists it
    names; ValueError says what is wrong and where."""
    source = path or DEFAULT_POLICY
    try:
        raw = tomllib.loads(source.read_text(encoding="utf-8"))
        parsed = _PolicyFile.model_validate(raw)
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ValueError(f"moderation policy {source}: {exc}") from None
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in error['loc'])}: {error['msg']}"
            for error in exc.errors()
        )
        raise ValueError(f"moderation policy {source}: {problems}") from None
    where = f"moderation policy {source}"
    unknown_modes = sorted(set(parsed.modes) - set(MODES))
    if unknown_modes:
        raise ValueError(f"{where}: unknown modes {unknown_modes}; modes are {list(MODES)}")
    if "normal" not in parsed.modes:
        raise ValueError(f"{where}: [modes.normal] is required (other modes fall back to it)")
    for kind in ("word_lists", "hash_lists"):
        if OPERATOR in getattr(parsed, kind):
            raise ValueError(f"{where}: {kind}.{OPERATOR} is set by the settings, not the file")
    base = source.parent
    words = {
        name: WordList(name, read_entries(_list_path(base, file)))
        for name, file in parsed.word_lists.items()
    }
    words[OPERATOR] = WordList(
        OPERATOR, [entry for file in operator_words for entry in read_entries(file)]
    )
    hashes = {
        name: read_hash_list(name, _list_path(base, file))
        for name, file in parsed.hash_lists.items()
    }
    hashes[OPERATOR] = HashList(
        OPERATOR,
        [image for file in operator_hashes for image in read_hash_list(OPERATOR, file).images],
    )
    for mode, checks in parsed.modes.items():
        _check_names(where, f"modes.{mode}.input.word_lists", checks.input.word_lists, words)
        for stage in ("input", "output"):
            named = getattr(checks, stage).hash_lists
            _check_names(where, f"modes.{mode}.{stage}.hash_lists", named, hashes)
    modes = {mode: parsed.modes.get(mode) or parsed.modes["normal"] for mode in MODES}
    return Policy(source, modes, words, hashes)


def _list_path(base: Path, value: str) -> Path:
    """A list's file: `builtin:<name>` for one that ships with Imagine, else a
    path relative to the policy file."""
    if value.startswith("builtin:"):
        return BUILTIN_LISTS / f"{value.removeprefix('builtin:')}.txt"
    return base / value


def check_classes(policy: Policy, known: frozenset[str]) -> None:
    """ValueError unless every `image_classes` key is a class the classifier has."""
    for name, mode in policy.modes.items():
        for stage, checks in (("input", mode.input), ("output", mode.output)):
            unknown = sorted(set(checks.image_classes) - known)
            if unknown:
                raise ValueError(
                    f"moderation policy {policy.source}: modes.{name}.{stage}.image_classes "
                    f"names unknown classes {unknown}; the classifier has {sorted(known)}"
                )


def _check_names(where: str, key: str, names: Sequence[str], known: Mapping[str, object]) -> None:
    missing = [name for name in names if name not in known]
    if missing:
        raise ValueError(f"{where}: {key} names undefined lists {missing}")

"""What a model directory is, what it supports and what is missing, from its files.

No weights are loaded and nothing is imported from torch or diffusers, so
`imagine models check DIR` answers in milliseconds, and the engine refuses a
broken directory at start-up with a message naming the missing component
(diffusers itself only says that loading the whole directory failed).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from imagine.engines.diffusers.families import (
    FamilyAdapter,
    JsonObject,
    ModelSpec,
    UnsupportedModel,
    adapter_for,
    supported_pipeline_classes,
)

_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")
_LFS_POINTER = b"version https://git-lfs"


class ModelDirectoryError(ValueError):
    """A model directory that cannot be served; the message says why."""


@dataclass(frozen=True)
class ComponentStatus:
    name: str
    class_name: str
    problem: str | None = None
    """None: present and complete; else what is wrong, e.g. `no weights`."""
    detail: str = ""


@dataclass
class ModelReport:
    """The answer of `inspect_model_dir`: everything an operator needs to fix a directory."""

    path: Path
    pipeline_class: str | None = None
    family: str | None = None
    spec: ModelSpec | None = None
    components: list[ComponentStatus] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def missing(self) -> list[ComponentStatus]:
        return [c for c in self.components if c.problem is not None]

    @property
    def ok(self) -> bool:
        return self.spec is not None and not self.problems and not self.missing

    def refusal(self) -> str:
        """One message for a start-up error: each problem and each broken component."""
        reasons = list(self.problems)
        reasons += [f"{c.name}: {c.problem}" for c in self.missing]
        return (
            f"model directory {self.path} cannot be served: "
            + "; ".join(reasons or ["unknown problem"])
            + f" (see `imagine models check {self.path}`)"
        )

    def to_json(self) -> dict[str, Any]:
        spec = self.spec
        return {
            "path": str(self.path),
            "ok": self.ok,
            "pipeline_class": self.pipeline_class,
            "family": self.family,
            "variant": spec.variant if spec else None,
            "title": spec.title if spec else None,
            "supports": supports(spec) if spec else [],
            "fps": spec.fps if spec else None,
            "grid": spec.grid if spec else None,
            "frame_step": spec.frame_step if spec else None,
            "native_size": list(spec.native_size) if spec else None,
            "native_frames": spec.native_frames if spec else None,
            "licence": spec.licence if spec else None,
            "notes": list(spec.notes) if spec else [],
            "components": {
                c.name: {"class": c.class_name, "ok": c.problem is None, "problem": c.problem}
                for c in self.components
            },
            "missing": [c.name for c in self.missing],
            "problems": self.problems,
        }


def supports(spec: ModelSpec) -> list[str]:
    kinds = []
    if spec.text_to_video:
        kinds.append("text-to-video")
    if spec.image_to_video:
        kinds.append("image-to-video")
    return kinds


def inspect_model_dir(path: Path) -> ModelReport:
    """Read `model_index.json` and the component configs; check the files exist."""
    report = ModelReport(path=path)
    if not path.is_dir():
        report.problems.append("not a directory")
        return report
    index = _read_json(path / "model_index.json")
    if index is None:
        report.problems.append(
            "model_index.json is missing or unreadable (not a diffusers save_pretrained layout)"
        )
        return report
    pipeline_class = str(index.get("_class_name", ""))
    report.pipeline_class = pipeline_class
    adapter = adapter_for(pipeline_class)
    if adapter is None:
        report.problems.append(
            f"pipeline {pipeline_class or '(none)'} is not supported "
            f"(supported: {', '.join(supported_pipeline_classes())})"
        )
        return report
    report.family = adapter.family

    configs: dict[str, JsonObject] = {}
    for name, entry in index.items():
        if name.startswith("_") or not _names_class(entry):
            continue
        config = _read_json(path / name / "config.json")
        if config is not None:
            configs[name] = config
    spec = _identify(adapter, index, configs, report)
    declared = {n for n, e in index.items() if not n.startswith("_") and _names_class(e)}
    required = spec.components if spec is not None else tuple(sorted(declared))
    for name in required:
        entry = index.get(name)
        class_name = str(entry[1]) if isinstance(entry, list) and _names_class(entry) else ""
        if name not in declared:
            report.components.append(
                ComponentStatus(name, class_name, "not listed in model_index.json")
            )
            continue
        report.components.append(_check_component(path / name, name, class_name))
    return report


def _identify(
    adapter: FamilyAdapter,
    index: JsonObject,
    configs: dict[str, JsonObject],
    report: ModelReport,
) -> ModelSpec | None:
    try:
        spec = adapter.identify(index, configs)
    except UnsupportedModel as exc:
        report.problems.append(str(exc))
        return None
    report.spec = spec
    return spec


def _check_component(folder: Path, name: str, class_name: str) -> ComponentStatus:
    if not folder.is_dir():
        return ComponentStatus(name, class_name, "missing", f"no folder {folder.name}/")
    if "Scheduler" in class_name:
        if not (folder / "scheduler_config.json").is_file():
            return ComponentStatus(name, class_name, "no scheduler_config.json")
        return ComponentStatus(name, class_name)
    if "Tokenizer" in class_name or name.startswith("tokenizer"):
        vocab = [
            p
            for p in ("tokenizer.json", "spiece.model", "vocab.json", "tokenizer.model")
            if (folder / p).is_file()
        ]
        if not vocab:
            return ComponentStatus(name, class_name, "no vocabulary (tokenizer.json, spiece.model)")
        return ComponentStatus(name, class_name)
    if not (folder / "config.json").is_file():
        return ComponentStatus(name, class_name, "no config.json")
    problem, detail = _check_weights(folder)
    return ComponentStatus(name, class_name, problem, detail)


def _check_weights(folder: Path) -> tuple[str | None, str]:
    """(problem or None, detail) for the weight files in a model component folder."""
    for index_file in sorted(folder.glob("*.index.json")):
        index = _read_json(index_file)
        weight_map = index.get("weight_map") if index else None
        if not isinstance(weight_map, dict):
            return f"unreadable {index_file.name}", ""
        shards = sorted({str(s) for s in weight_map.values()})
        absent = [s for s in shards if not (folder / s).is_file()]
        if absent:
            return f"{len(absent)} of {len(shards)} weight shards missing", ", ".join(absent)
        pointers = [s for s in shards if _is_lfs_pointer(folder / s)]
        if pointers:
            return "weights are Git LFS pointers, not weights (run `git lfs pull`)", ""
        return None, f"{len(shards)} shards"
    weights = [p for p in folder.iterdir() if p.is_file() and p.name.endswith(_WEIGHT_SUFFIXES)]
    if not weights:
        return "no weights", "expected *.safetensors"
    if any(_is_lfs_pointer(p) for p in weights):
        return "weights are Git LFS pointers, not weights (run `git lfs pull`)", ""
    return None, ""


def _is_lfs_pointer(path: Path) -> bool:
    try:
        if path.stat().st_size > 1024:
            return False
        with path.open("rb") as f:
            return f.read(len(_LFS_POINTER)) == _LFS_POINTER
    except OSError:
        return False


def _names_class(entry: object) -> bool:
    return isinstance(entry, list) and len(entry) == 2 and entry[1] is not None


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None

"""Engines by name. Adding one is a module plus one line here."""

from __future__ import annotations

from collections.abc import Callable

from imagine.engines.base import Engine
from imagine.settings import Settings


def _preview(_settings: Settings) -> Engine:
    from imagine.engines.preview import PreviewEngine

    return PreviewEngine()


ENGINES: dict[str, Callable[[Settings], Engine]] = {
    "preview": _preview,
}


def create_engine(settings: Settings) -> Engine:
    try:
        factory = ENGINES[settings.engine]
    except KeyError:
        raise ValueError(
            f"unknown engine {settings.engine!r}; choose one of {', '.join(ENGINES)}"
        ) from None
    return factory(settings)

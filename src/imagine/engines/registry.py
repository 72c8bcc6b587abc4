"""Engines by name. Adding one is a module plus one line here."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from imagine.engines.base import Engine
from imagine.settings import Settings, SettingsError


def preview_engine(settings: Settings) -> Engine:
    """The preview engine, captions in `IMAGINE_PREVIEW_FONT` first if set."""
    from imagine.engines.preview import PreviewEngine

    try:
        return PreviewEngine(font_path=settings.preview_font)
    except Exception as exc:  # Pillow and fontTools raise several kinds for a bad file
        raise SettingsError(
            f"IMAGINE_PREVIEW_FONT: {settings.preview_font} is not a font the preview "
            f"engine can use ({type(exc).__name__}: {exc})"
        ) from None


def _xai(settings: Settings) -> Engine:
    try:
        from imagine.engines.xai.engine import XaiConfig, XaiEngine
    except ImportError as exc:
        raise SettingsError(
            f"the xai engine needs the xai-sdk package ({exc}): pip install 'imagine[xai]'"
        ) from None
    try:
        return XaiEngine(XaiConfig.from_settings(settings))
    except ValueError as exc:
        raise SettingsError(str(exc)) from None


def _diffusers(settings: Settings) -> Engine:
    from imagine.engines.diffusers.engine import create_diffusers_engine

    return create_diffusers_engine(settings)


ENGINES: dict[str, Callable[[Settings], Engine]] = {
    "preview": preview_engine,
    "xai": _xai,
    "diffusers": _diffusers,
}


@dataclass(frozen=True)
class EngineChoice:
    """Which engine serves, and why (printed at start-up)."""

    name: str
    reason: str

    def __str__(self) -> str:
        return f"{self.name} ({self.reason})"


def choose_engine(settings: Settings) -> EngineChoice:
    """Resolve `auto`: xai when XAI_API_KEY is set, else preview."""
    if settings.engine != "auto":
        chosen = "engine" in settings.model_fields_set
        return EngineChoice(settings.engine, "IMAGINE_ENGINE / --engine" if chosen else "default")
    key = settings.xai_api_key
    if key is not None and key.get_secret_value():
        return EngineChoice("xai", "auto: XAI_API_KEY is set")
    return EngineChoice("preview", "auto: XAI_API_KEY is not set")


def create_engine(settings: Settings) -> Engine:
    """The configured engine; `SettingsError` when it cannot run as configured."""
    name = choose_engine(settings).name
    try:
        factory = ENGINES[name]
    except KeyError:
        raise ValueError(f"unknown engine {name!r}; choose one of {', '.join(ENGINES)}") from None
    return factory(settings)

"""All configuration, from `IMAGINE_*` environment variables and CLI flags.

One pydantic-settings class, validated at start-up so a bad value stops the
process with a message naming the variable, instead of failing later.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

Plan = Literal["free", "pro", "enterprise"]
PLANS: tuple[Plan, ...] = ("free", "pro", "enterprise")
MODES: tuple[str, ...] = ("normal", "fun", "spicy", "custom")


class Settings(BaseSettings):
    """Every knob of the service. Field names map to `IMAGINE_<NAME>`."""

    model_config = SettingsConfigDict(env_prefix="IMAGINE_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    data_dir: Path = Path("./data")
    database_url: str | None = Field(
        default=None, description="SQLAlchemy async URL; default: SQLite file in the data dir."
    )
    public_url: str | None = Field(
        default=None,
        description="Base URL clients use to reach this server (for file links); "
        "default: the URL of each request.",
    )
    secret_key: str | None = Field(
        default=None,
        min_length=32,
        description="Signs file URLs; default: a random key kept in the data dir.",
    )

    workers: int = Field(default=1, ge=0, le=64, description="In-process workers.")
    engine: Literal["preview"] = "preview"

    cost_per_generation: int = Field(default=40, ge=0)
    starter_credits: int = Field(default=1000, ge=0)
    rate_limit_free: int = Field(default=100, ge=1)
    rate_limit_pro: int = Field(default=1000, ge=1)
    rate_limit_enterprise: int = Field(default=5000, ge=1)
    enabled_modes: tuple[str, ...] = MODES

    max_body_bytes: int = Field(default=100 * 1024 * 1024, ge=1024)
    max_prompt_chars: int = Field(default=5000, ge=1)
    max_images: int = Field(default=7, ge=0)
    image_max_bytes: int = Field(default=10 * 1024 * 1024, ge=1)
    image_fetch_timeout: float = Field(default=20.0, gt=0)
    allow_private_urls: bool = Field(
        default=False,
        description="Let image URLs reach loopback/private addresses (tests, trusted networks).",
    )

    lease_seconds: float = Field(default=30.0, gt=0)
    heartbeat_seconds: float | None = Field(default=None, gt=0)
    max_attempts: int = Field(default=3, ge=1)
    poll_interval: float = Field(default=0.5, gt=0)
    task_timeout_seconds: float = Field(default=1800.0, gt=0)
    shutdown_grace_seconds: float = Field(
        default=10.0, ge=0, description="On SIGTERM, how long in-flight tasks may finish."
    )
    file_url_ttl_seconds: int = Field(default=24 * 3600, ge=60)
    idempotency_ttl_seconds: int = Field(default=24 * 3600, ge=60)

    log_level: Literal["debug", "info", "warning", "error"] = "info"

    # Scaled-out mode: shared database, rate-limit store and object storage.
    auto_migrate: bool | None = Field(
        default=None,
        description="Upgrade the schema at start; default: only for the embedded SQLite file.",
    )
    redis_url: str | None = Field(
        default=None, description="redis://… for rate limits shared by all API processes."
    )
    rate_limit_fail_open: bool = Field(
        default=False,
        description="When the rate-limit store is unreachable, serve without limits "
        "instead of answering 503.",
    )
    storage_url: str | None = Field(
        default=None,
        description="s3://bucket/prefix for object storage; default: files in the data dir.",
    )
    storage_public_url: str | None = Field(
        default=None,
        description="Public/CDN base URL for stored files instead of presigned URLs.",
    )

    @field_validator("enabled_modes", mode="before")
    @classmethod
    def _split_modes(cls, value: object) -> object:
        if isinstance(value, str):
            value = tuple(m.strip() for m in value.split(",") if m.strip())
        return value

    @field_validator("enabled_modes")
    @classmethod
    def _known_modes(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        unknown = sorted(set(value) - set(MODES))
        if unknown or not value:
            raise ValueError(f"must be a comma-separated subset of {','.join(MODES)}")
        return value

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite+aiosqlite:///{self.data_dir.resolve() / 'imagine.db'}"

    @property
    def should_auto_migrate(self) -> bool:
        if self.auto_migrate is not None:
            return self.auto_migrate
        return self.resolved_database_url.startswith("sqlite")

    @field_validator("storage_url")
    @classmethod
    def _s3_url(cls, value: str | None) -> str | None:
        if value is not None and not (value.startswith("s3://") and len(value) > len("s3://")):
            raise ValueError("must look like s3://bucket or s3://bucket/prefix")
        return value

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must be a redis://, rediss:// or unix:// URL")
        return value

    @property
    def files_dir(self) -> Path:
        return self.data_dir / "files"

    @property
    def heartbeat_interval(self) -> float:
        return self.heartbeat_seconds or max(self.lease_seconds / 3, 0.1)

    def rate_limit_for(self, plan: str) -> int:
        limits: dict[str, int] = {
            "free": self.rate_limit_free,
            "pro": self.rate_limit_pro,
            "enterprise": self.rate_limit_enterprise,
        }
        return limits.get(plan, self.rate_limit_free)


class SettingsError(Exception):
    """A configuration value is invalid; the message names each bad variable."""


def load_settings(**overrides: object) -> Settings:
    """Build settings from the environment plus explicit overrides (CLI flags)."""
    given = {k: v for k, v in overrides.items() if v is not None}
    try:
        return Settings(**given)  # type: ignore[arg-type]
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            name = str(err["loc"][0]) if err["loc"] else "?"
            source = "option" if name in given else f"IMAGINE_{name.upper()}"
            lines.append(f"{source}: {err['msg']} (got {err.get('input')!r})")
        raise SettingsError("invalid configuration:\n  " + "\n  ".join(lines)) from None

"""All configuration, from `IMAGINE_*` environment variables and CLI flags.

One pydantic-settings class, validated at start-up so a bad value stops the
process with a message naming the variable, instead of failing later.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import pydantic_settings
from pydantic import (
    AliasChoices,
    Field,
    FilePath,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from imagine.credits import MAX_BALANCE

Plan = Literal["free", "pro", "enterprise"]
PLANS: tuple[Plan, ...] = ("free", "pro", "enterprise")
MODES: tuple[str, ...] = ("normal", "fun", "spicy", "custom")
_BODY_SLACK = 64 * 1024  # the other fields, data: headers, JSON punctuation and spacing


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
    grpc_port: int = Field(
        default=50051,
        ge=0,
        le=65535,
        description="Port of the xAI-compatible gRPC service (docs/compat.md), on the same "
        "host as HTTP; 0: not served.",
    )
    secret_key: str | None = Field(
        default=None,
        min_length=32,
        description="Signs file URLs and encrypts webhook signing secrets; default: a "
        "random key kept in the data dir. Give every process that shares the database "
        "but not the data dir the same value.",
    )

    workers: int = Field(default=1, ge=0, le=64, description="In-process workers.")
    engine: Literal["preview", "xai", "diffusers", "auto"] = Field(
        default="preview",
        description="preview | xai | diffusers | auto (xai when XAI_API_KEY is set, else preview).",
    )
    preview_font: FilePath | None = Field(
        default=None,
        description="A TrueType/OpenType font the preview engine's captions try first for "
        "each character; the fonts shipped in the package draw what it lacks.",
    )

    cost_per_generation: int = Field(default=40, ge=0, le=MAX_BALANCE)
    starter_credits: int = Field(default=1000, ge=0, le=MAX_BALANCE)
    rate_limit_free: int = Field(default=100, ge=1)
    rate_limit_pro: int = Field(default=1000, ge=1)
    rate_limit_enterprise: int = Field(default=5000, ge=1)
    # Fair claiming (imagine.queue.fairness): how far one task moves its account's
    # place in the queue. When accounts compete, each is served in proportion
    # to 1/quantum: the defaults give pro 3x and enterprise 6x a free account's share.
    queue_quantum_free: float = Field(
        default=60.0,
        gt=0,
        le=86400,
        description="Seconds of queue time one task of a free account counts for.",
    )
    queue_quantum_pro: float = Field(
        default=20.0, gt=0, le=86400, description="The same for a pro account."
    )
    queue_quantum_enterprise: float = Field(
        default=10.0, gt=0, le=86400, description="The same for an enterprise account."
    )
    enabled_modes: Annotated[tuple[str, ...], NoDecode] = MODES

    max_body_bytes: int | None = Field(
        default=None,
        ge=1024,
        description="Largest request body; default: what max_images data: images of "
        "image_max_bytes each and a full prompt need, plus 64 KiB.",
    )
    # What one request may take from the HTTP server (imagine.server).
    max_header_bytes: int = Field(
        default=32 * 1024,
        ge=1024,
        le=1024 * 1024,
        description="Largest request line and header block; 431 above.",
    )
    max_headers: int = Field(
        default=100, ge=8, le=10_000, description="Most header fields in a request; 431 above."
    )
    header_timeout_seconds: float = Field(
        default=10.0,
        ge=1,
        le=600,
        description="Time to send a request's headers, from its first byte (or from "
        "connecting); 408 and the connection closed after it.",
    )
    body_timeout_seconds: float = Field(
        default=20.0,
        ge=1,
        le=600,
        description="Longest pause while a request body arrives; 408 and closed after it.",
    )
    max_connections: int = Field(
        default=1000,
        ge=1,
        description="Open connections (and requests in progress) per API process; past it "
        "new requests get 503.",
    )
    keep_alive_seconds: int = Field(
        default=5, ge=1, le=300, description="How long an idle connection is kept open."
    )
    max_prompt_chars: int = Field(default=5000, ge=1)
    max_images: int = Field(default=7, ge=0)
    image_max_bytes: int = Field(default=10 * 1024 * 1024, ge=1)
    image_max_pixels: int = Field(
        default=50_000_000,
        ge=1,
        description="Largest width x height of one input image, read from its header "
        "before anything is decoded (decompression bombs).",
    )
    task_max_pixels: int = Field(
        default=100_000_000,
        ge=1,
        description="Largest sum of width x height over a task's input images: checked at "
        "submit for data: images, in the worker for fetched ones, before decoding.",
    )
    account_input_bytes: int = Field(
        default=512 * 1024 * 1024,
        ge=0,
        description="Most bytes of data: images an account's unfinished tasks may hold "
        "in storage; a submit beyond it is answered 429.",
    )
    input_retention_seconds: int = Field(
        default=3600,
        ge=60,
        description="Stored input images whose task ended, or never committed, are "
        "deleted by a periodic sweep once older than this (the safety net after a crash).",
    )
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
    key_cache_seconds: float = Field(
        default=5.0,
        ge=0,
        le=300,
        description="How long an API process remembers a valid key; a revoked key stops "
        "working within this time. 0: look every key up on every request.",
    )
    account_max_keys: int = Field(
        default=100,
        ge=1,
        le=100_000,
        description="Most unrevoked keys an account may hold; creating one more through "
        "the API is refused with 400 until one is revoked.",
    )

    # The web console at / (docs/console.md).
    console: bool = Field(
        default=True, description="Serve the web console at / (false: the API only)."
    )
    console_idle_seconds: int = Field(
        default=3600,
        ge=60,
        le=30 * 86400,
        description="A console session ends after this long without a request.",
    )
    console_max_seconds: int = Field(
        default=12 * 3600,
        ge=60,
        le=90 * 86400,
        description="A console session ends this long after sign-in, however active.",
    )
    console_signins_per_minute: int = Field(
        default=10,
        ge=1,
        le=10_000,
        description="Sign-in attempts one client address may make per minute.",
    )

    # Webhook delivery (docs/webhooks.md).
    webhook_retry_delays: Annotated[tuple[float, ...], NoDecode] = Field(
        default=(5, 30, 120, 600, 1800, 3600, 10800, 21600, 43200),
        description="Seconds to wait before each retry of a failed delivery, comma-separated; "
        "the default spans about 23 hours (10 attempts). Empty: no retries.",
    )
    webhook_timeout_seconds: float = Field(
        default=10.0, gt=0, description="Time limit of one delivery attempt, DNS included."
    )
    webhook_concurrency: int = Field(
        default=16, ge=1, le=1000, description="Deliveries in flight at once per process."
    )

    log_level: Literal["debug", "info", "warning", "error"] = "info"

    # Instruments: metrics, logs, health (docs/operations.md).
    log_format: Literal["auto", "json", "text"] = Field(
        default="auto",
        description="json: one JSON object per line; text: readable lines; auto: text on a "
        "terminal, json otherwise.",
    )
    metrics: bool = Field(default=True, description="Serve Prometheus metrics at /metrics.")
    metrics_token: SecretStr | None = Field(
        default=None,
        min_length=16,
        description="Bearer token /metrics requires; default: none (restrict by address).",
    )
    metrics_port: int | None = Field(
        default=None,
        ge=1,
        le=65535,
        description="Serve /metrics on this port of metrics_host instead of the API's; "
        "`imagine worker` serves metrics only there.",
    )
    metrics_host: str = Field(
        default="127.0.0.1", description="Address the metrics port listens on."
    )
    readiness_timeout_seconds: float = Field(
        default=0.5, gt=0, le=30, description="Time limit of each /readyz check."
    )
    readiness_cache_seconds: float = Field(
        default=1.0, ge=0, le=60, description="How long a /readyz answer is reused."
    )
    shutdown_delay_seconds: float = Field(
        default=0.0,
        ge=0,
        le=300,
        description="On SIGTERM, /readyz answers 503 for this long before the server stops "
        "taking connections, so load balancers move away first.",
    )

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
    storage_timeout_seconds: float = Field(
        default=30.0,
        gt=0,
        description="Object storage: connect and read timeout of each request; a timed-out "
        "or 5xx request is retried with back-off (3 tries) before the attempt fails.",
    )

    # --- Per-engine prices and the xai engine (docs/engines/xai.md) ----------
    cost_preview: int | None = Field(
        default=None,
        ge=0,
        le=MAX_BALANCE,
        description="Credits per preview task; default: cost_per_generation.",
    )
    cost_xai: int | None = Field(
        default=None,
        ge=0,
        le=MAX_BALANCE,
        description="Credits per xai task; default: cost_per_generation.",
    )
    xai_api_key: SecretStr | None = Field(
        default=None,
        # xAI's own variable, without our prefix, as the SDK and its docs name it.
        validation_alias=AliasChoices("XAI_API_KEY", "xai_api_key"),
        description="xAI API key (environment variable XAI_API_KEY).",
    )
    xai_api_host: str = Field(
        default="api.x.ai", description="gRPC target host[:port] of xAI's API, not a URL."
    )
    xai_insecure: bool = Field(
        default=False, description="Plaintext gRPC (tests, local proxies); never for api.x.ai."
    )
    xai_model: str = Field(default="grok-imagine-video", min_length=1)
    xai_timeout_seconds: float = Field(
        default=900.0,
        gt=0,
        description="Longest one job may take upstream (start to downloaded file); "
        "must be below task_timeout_seconds.",
    )
    xai_rpc_timeout_seconds: float = Field(
        default=60.0, gt=0, description="Time limit of one gRPC call or download read."
    )
    xai_poll_interval: float = Field(default=1.0, gt=0, description="First wait between polls.")
    xai_poll_max_interval: float = Field(
        default=5.0, gt=0, description="Back-off ceiling between polls."
    )
    xai_poll_retries: int = Field(
        default=20, ge=0, description="Consecutive failed polls tolerated before giving up."
    )

    @field_validator("metrics_port")
    @classmethod
    def _own_metrics_port(cls, value: int | None, info: ValidationInfo) -> int | None:
        if value is not None and value == info.data.get("port"):
            raise ValueError(
                "must differ from IMAGINE_PORT (leave it unset to serve /metrics there)"
            )
        return value

    @field_validator("xai_api_host")
    @classmethod
    def _grpc_target(cls, value: str) -> str:
        if "://" in value or "/" in value or not value.strip():
            raise ValueError("must be a gRPC target like api.x.ai or host:port, not a URL")
        return value.strip()

    @field_validator("xai_timeout_seconds")
    @classmethod
    def _xai_within_task_limit(cls, value: float, info: ValidationInfo) -> float:
        task_limit = info.data.get("task_timeout_seconds")
        engine = info.data.get("engine")
        uses_xai = engine == "xai" or (engine == "auto" and bool(info.data.get("xai_api_key")))
        if uses_xai and task_limit is not None and value >= task_limit:
            raise ValueError(
                f"must be below IMAGINE_TASK_TIMEOUT_SECONDS ({task_limit:g}), or the worker's "
                "time limit ends the task first"
            )
        return value

    def cost_for(self, engine: str) -> int:
        """Credits a task on `engine` costs: its own price, else cost_per_generation."""
        prices: dict[str, int | None] = {
            "preview": self.cost_preview,
            "xai": self.cost_xai,
            "diffusers": self.cost_diffusers,
        }
        price = prices.get(engine)
        return self.cost_per_generation if price is None else price

    # --- end of per-engine block ----------------------------------------------

    # --- The diffusers engine (docs/engines/diffusers.md) ---------------------
    cost_diffusers: int | None = Field(
        default=None,
        ge=0,
        le=MAX_BALANCE,
        description="Credits per diffusers task; default: cost_per_generation.",
    )
    diffusers_model: Path | None = Field(
        default=None, description="Local diffusers model directory (the one with model_index.json)."
    )
    diffusers_device: str = Field(
        default="auto", description="auto (cuda when available, else cpu) | cuda | cuda:N | cpu."
    )
    diffusers_dtype: Literal["auto", "bfloat16", "float16", "float32"] = Field(
        default="auto", description="Weights' dtype; auto: bfloat16 on a GPU, float32 on CPU."
    )
    diffusers_memory: Literal["resident", "offload", "group-offload"] = Field(
        default="resident",
        description="resident: everything on the GPU; offload: model CPU offload (24 GB cards); "
        "group-offload: layer groups streamed from CPU (least GPU memory).",
    )
    diffusers_vae_tiling: bool | None = Field(
        default=None, description="Decode in tiles; default: on with the offload presets."
    )
    diffusers_compile: bool = Field(
        default=False,
        description="torch.compile the repeated transformer blocks, warmed up at start for "
        "every allowed size and duration.",
    )
    diffusers_step_cache: Literal["none", "first-block", "mag"] = Field(
        default="none", description="Skip transformer work on steps that change little."
    )
    diffusers_cache_threshold: float | None = Field(
        default=None,
        gt=0,
        description="Step-cache threshold; default 0.05 (first-block), 0.06 (mag).",
    )
    diffusers_mag_ratios: Path | None = Field(
        default=None, description="JSON list of MagCache ratios from a calibration run."
    )
    diffusers_attention: str | None = Field(
        default=None, description="diffusers attention backend (native, flash, sage, …)."
    )
    diffusers_steps: int | None = Field(
        default=None, ge=1, le=200, description="Denoising steps; default: the model's own."
    )
    diffusers_guidance_scale: float | None = Field(
        default=None, ge=0, description="Classifier-free guidance; default: the model's own."
    )
    diffusers_fps: int | None = Field(
        default=None, ge=1, le=60, description="Output frame rate; default: the model's own."
    )
    diffusers_size_scale: float = Field(
        default=1.0,
        gt=0,
        le=1,
        description="Development only: scales the size table before it is snapped to the grid.",
    )
    diffusers_max_duration: int = Field(
        default=6, ge=1, le=15, description="Longest clip in seconds."
    )
    diffusers_resolutions: Annotated[tuple[str, ...], NoDecode] = Field(
        default=("480p", "720p"), description="Comma-separated resolutions served."
    )
    diffusers_ratios: Annotated[tuple[str, ...], NoDecode] = Field(
        default=("1:1", "16:9", "9:16", "2:3", "3:2", "4:3", "3:4"),
        description="Comma-separated ratios served (fewer sizes: fewer compile warm-ups).",
    )

    # --- Content policy (docs/moderation.md) ----------------------------------
    moderation: bool = Field(
        default=True, description="Run the content policy on every task (false: no checks)."
    )
    moderation_policy: Path | None = Field(
        default=None,
        description="TOML policy file: the checks and thresholds of each mode; default: "
        "the built-in policy (strict for normal, fun and custom).",
    )
    moderation_words: Annotated[tuple[Path, ...], NoDecode] = Field(
        default=(),
        description="Comma-separated word-list files: the policy's `operator` word list.",
    )
    moderation_image_hashes: Annotated[tuple[Path, ...], NoDecode] = Field(
        default=(),
        description="Comma-separated files of perceptual hashes of known images: the "
        "policy's `operator` hash list.",
    )
    moderation_image_classifier: str = Field(
        default="nudenet",
        description="The image classifier a policy's image_classes use: nudenet (the "
        "moderation-nudenet extra; AGPL-3.0, see docs/moderation.md) or package.module:factory.",
    )
    moderation_endpoint_url: str | None = Field(
        default=None,
        description="An OpenAI-style moderations URL (…/v1/moderations) the policy may ask.",
    )
    moderation_endpoint_key: SecretStr | None = Field(
        default=None, description="Bearer key for the moderation endpoint."
    )
    moderation_endpoint_model: str | None = Field(
        default=None, description="The `model` sent to the endpoint; default: none sent."
    )
    moderation_endpoint_timeout_seconds: float = Field(
        default=5.0, gt=0, le=120, description="Time limit of one call to the endpoint."
    )
    moderation_endpoint_fail_open: bool = Field(
        default=False,
        description="When the endpoint gives no answer, let the task go on (true) or fail it "
        "with the network error, retried like one (false).",
    )

    @field_validator("moderation_endpoint_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// URL")
        return value

    # --- end of the content policy block --------------------------------------

    @field_validator(
        "enabled_modes",
        "webhook_retry_delays",
        "diffusers_resolutions",
        "diffusers_ratios",
        "moderation_words",
        "moderation_image_hashes",
        mode="before",
    )
    @classmethod
    def _split_list(cls, value: object) -> object:
        """Every list setting is written `a,b,c` in the environment."""
        if isinstance(value, str):
            value = tuple(item.strip() for item in value.split(",") if item.strip())
        return value

    @field_validator("diffusers_attention")
    @classmethod
    def _offline_attention(cls, value: str | None) -> str | None:
        if value is not None and value.strip().endswith("_hub"):
            raise ValueError("backends ending in _hub download kernels at run time; use flash…")
        return value.strip() if value else None

    # --- end of the diffusers block -------------------------------------------

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

    @field_validator("webhook_retry_delays")
    @classmethod
    def _sane_delays(cls, value: tuple[float, ...]) -> tuple[float, ...]:
        if len(value) > 50 or any(not 0 <= delay <= 7 * 24 * 3600 for delay in value):
            raise ValueError(
                "must be at most 50 comma-separated delays in seconds, each from 0 to 604800"
            )
        return value

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must be a redis://, rediss:// or unix:// URL")
        return value

    @property
    def body_limit(self) -> int:
        """The request body cap: configured, or what the image and prompt limits need
        (base64 grows 3 bytes to 4; a JSON-escaped character takes at most 6 bytes)."""
        if self.max_body_bytes is not None:
            return self.max_body_bytes
        base64_image = (self.image_max_bytes + 2) // 3 * 4
        return self.max_images * base64_image + 6 * self.max_prompt_chars + _BODY_SLACK

    @property
    def local_url(self) -> str:
        """The HTTP server as a client on this machine reaches it (the wildcard
        address is not one a client can open)."""
        host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(self.host, self.host)
        return f"http://{f'[{host}]' if ':' in host else host}:{self.port}"

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

    def queue_quantum_for(self, plan: str) -> float:
        quanta: dict[str, float] = {
            "free": self.queue_quantum_free,
            "pro": self.queue_quantum_pro,
            "enterprise": self.queue_quantum_enterprise,
        }
        return quanta.get(plan, self.queue_quantum_free)


class SettingsError(Exception):
    """A configuration value is invalid; the message names each bad variable."""


def load_settings(**overrides: object) -> Settings:
    """Build settings from the environment plus explicit overrides (CLI flags)."""
    given = {k: v for k, v in overrides.items() if v is not None}
    try:
        return Settings(**given)  # type: ignore[arg-type]
    except pydantic_settings.SettingsError as exc:
        # A complex field whose environment value is not valid JSON.
        raise SettingsError(f"invalid configuration: {exc}") from None
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            name = str(err["loc"][0]) if err["loc"] else "?"
            source = "option" if name in given else f"IMAGINE_{name.upper()}"
            lines.append(f"{source}: {err['msg']} (got {err.get('input')!r})")
        raise SettingsError("invalid configuration:\n  " + "\n  ".join(lines)) from None

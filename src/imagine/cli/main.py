"""The `imagine` command: run the service and manage keys and credits."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from imagine import private_files
from imagine.credits import MAX_BALANCE
from imagine.settings import PLANS, Settings, SettingsError, load_settings

if TYPE_CHECKING:
    from imagine.accounts import service as accounts
    from imagine.db.database import Database

# Server modules (FastAPI, SQLAlchemy, Alembic, engines) are imported inside the
# commands that need them, so the client commands start quickly.

# No rich markup: help texts such as "[env IMAGINE_DATA_DIR]" must print as written.
app = typer.Typer(
    help="Imagine: a self-hostable video-generation API.",
    no_args_is_help=True,
    rich_markup_mode=None,
)
keys_app = typer.Typer(help="Create, list and revoke API keys.", no_args_is_help=True)
credits_app = typer.Typer(help="Manage account credits.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
app.add_typer(credits_app, name="credits")
db_app = typer.Typer(help="Database schema migrations.", no_args_is_help=True)
app.add_typer(db_app, name="db")
webhooks_app = typer.Typer(help="Webhook signing secrets.", no_args_is_help=True)
app.add_typer(webhooks_app, name="webhooks")

console = Console()
errors = Console(stderr=True)
T = TypeVar("T")

ModelDir = Annotated[
    Path | None,
    typer.Option(
        "--model",
        help="Local diffusers model directory; implies --engine diffusers "
        "[env IMAGINE_DIFFUSERS_MODEL]",
    ),
]
DataDir = Annotated[
    Path | None,
    typer.Option("--data-dir", help="Data directory [env IMAGINE_DATA_DIR; default ./data]"),
]


def _settings(**overrides: object) -> Settings:
    """The server's settings. Every command that loads them works on its data:
    from here on, what the process creates is private to its user."""
    private_files.private_by_default()
    try:
        return load_settings(**overrides)
    except SettingsError as exc:
        errors.print(f"[red]error:[/red] {exc}", highlight=False)
        raise typer.Exit(2) from None


def _start_logging(settings: Settings, service: str) -> None:
    """The process's logs (JSON lines, or text on a terminal) and, when the
    environment asks for them, its traces."""
    from imagine.observability import logs, tracing

    global _log_format
    _log_format = logs.configure(settings.log_level, settings.log_format)
    tracing.configure(service)


_log_format = "text"
_announcements = logging.getLogger("imagine")


def _announce(text: str) -> None:
    """A start-up line for the operator: on the console in text mode, as a log
    line in JSON mode (so the process's output stays JSON lines)."""
    if _log_format == "json":
        _announcements.info(text)
    else:
        console.print(text, highlight=False)


def _with_db(
    settings: Settings, action: Callable[[Database], Awaitable[T]], *, prepare: bool = True
) -> T:
    """Run `action` on the configured database, schema checked (or upgraded) first."""
    from imagine.db.database import Database
    from imagine.db.schema import SchemaOutOfDate
    from imagine.runtime import prepare_database

    async def runner() -> T:
        private_files.prepare_data_dir(settings.data_dir)
        db = Database(settings.resolved_database_url)
        try:
            if prepare:
                await prepare_database(db, settings)
            return await action(db)
        finally:
            await db.dispose()

    try:
        return asyncio.run(runner())
    except SchemaOutOfDate as exc:
        errors.print(f"error: {exc}", highlight=False)
        raise typer.Exit(2) from None


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Bind address [default 127.0.0.1]")] = None,
    port: Annotated[int | None, typer.Option(help="Port [default 8000]")] = None,
    data_dir: DataDir = None,
    workers: Annotated[
        int | None, typer.Option(help="In-process workers [default 1; 0 = API only]")
    ] = None,
    no_workers: Annotated[
        bool, typer.Option("--no-workers", help="API only; run `imagine worker` elsewhere")
    ] = False,
    engine: Annotated[
        str | None,
        typer.Option(help="preview | xai | diffusers | auto [env IMAGINE_ENGINE; default preview]"),
    ] = None,
    model: ModelDir = None,
    grpc_port: Annotated[
        int | None,
        typer.Option(
            "--grpc-port",
            help="xAI-compatible gRPC port [env IMAGINE_GRPC_PORT; default 50051; 0 = off]",
        ),
    ] = None,
) -> None:
    """Run the API and its workers."""
    from imagine.app import create_app
    from imagine.compat import grpc_served
    from imagine.engines.registry import choose_engine
    from imagine.observability import tracing
    from imagine.server import ImagineServer, uvicorn_config

    settings = _settings(
        host=host,
        port=port,
        data_dir=data_dir,
        workers=0 if no_workers else workers,
        engine=engine or ("diffusers" if model else None),
        diffusers_model=model,
        grpc_port=grpc_port,
    )
    _start_logging(settings, "imagine-api")
    try:  # a misconfigured engine stops the start before the database is touched
        application = create_app(settings)
        serves_grpc = grpc_served(settings)
        prepare = getattr(application.state.services.engine, "prepare", None)
        if settings.workers and prepare is not None:
            prepare()  # model weights and warm-up before serving, with a clean error
    except SettingsError as exc:
        errors.print(f"[red]error:[/red] {exc}", highlight=False)
        raise typer.Exit(2) from None
    issued = _with_db(settings, lambda db: _bootstrap_key(db, settings.starter_credits))
    if issued is not None:
        # Printed, never logged: the one time the key is shown.
        console.print(
            f"Created a development account on the free plan with {issued.credits} credits.\n"
            f"API key (shown once, keep it): [bold]{issued.key}[/bold]",
            highlight=False,
        )
    choice = choose_engine(settings)
    url = settings.local_url
    if settings.console:
        signing = "the API key above" if issued is not None else "an API key"
        _announce(
            f"Console: {url}/ (sign in with {signing}) · API reference: {url}/docs",
        )
    if serves_grpc:
        _announce(
            f"xAI SDK: xai_sdk.Client(api_host={_grpc_target(settings)!r}, api_key=<key>) · "
            f"OpenAI SDK: openai.OpenAI(base_url={url + '/openai/v1'!r}, api_key=<key>)",
        )
    _announce(
        f"Imagine serving on http://{settings.host}:{settings.port} "
        f"with the {choice.name} engine ({choice.reason}), {settings.workers} worker(s), "
        f"data in {settings.data_dir.resolve()}",
    )
    server = ImagineServer(
        uvicorn_config(application, settings),
        on_drain=application.state.health.drain,
        drain_seconds=settings.shutdown_delay_seconds,
    )
    try:
        server.run()
    finally:
        tracing.shutdown()


def _grpc_target(settings: Settings) -> str:
    """The `api_host` an xai-sdk client on this machine passes: `localhost:PORT` is
    the form the SDK connects to without TLS (any other host needs
    `use_insecure_channel=True`)."""
    loopback = settings.host in ("127.0.0.1", "0.0.0.0", "::", "::1", "localhost", "")
    host = "localhost" if loopback else settings.host
    return f"{host}:{settings.grpc_port}"


async def _bootstrap_key(db: Database, credits: int) -> accounts.IssuedKey | None:
    """On a first start with no keys, a development account and key to begin with."""
    from imagine.accounts import service as accounts

    async with db.write() as session:
        if await accounts.count_keys(session):
            return None
        return await accounts.create_account(
            session, plan="free", credits=credits, name="development"
        )


@app.command()
def worker(
    data_dir: DataDir = None,
    concurrency: Annotated[
        int, typer.Option(min=1, help="Tasks this process runs at once [default 1]")
    ] = 1,
    engine: Annotated[
        str | None, typer.Option(help="Generation engine [env IMAGINE_ENGINE]")
    ] = None,
    model: ModelDir = None,
) -> None:
    """Run workers only (no HTTP): claim tasks from the shared database and render them.

    SIGTERM or Ctrl-C lets in-flight tasks finish (or hands them back to the queue).
    """
    from imagine.db.schema import SchemaOutOfDate

    settings = _settings(
        data_dir=data_dir,
        engine=engine or ("diffusers" if model else None),
        diffusers_model=model,
    )
    _start_logging(settings, "imagine-worker")
    from imagine.observability import tracing

    try:
        asyncio.run(_run_workers(settings, concurrency))
    except (SchemaOutOfDate, SettingsError) as exc:
        errors.print(f"error: {exc}", highlight=False)
        raise typer.Exit(2) from None
    finally:
        tracing.shutdown()


async def _run_workers(settings: Settings, concurrency: int) -> None:
    from imagine.observability.exposition import MetricsServer
    from imagine.runtime import WorkerPool, build_services, prepare_database

    svc = build_services(settings)
    metrics = None
    try:
        await prepare_database(svc.db, settings)
        if settings.metrics and settings.metrics_port is not None:
            # This process's own counts only: the queue's figures come from the APIs.
            token = settings.metrics_token.get_secret_value() if settings.metrics_token else None
            metrics = MetricsServer(settings.metrics_host, settings.metrics_port, token=token)
            metrics.start()
        pool = WorkerPool(svc, concurrency)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        pool.start()
        where = (
            f", metrics on http://{settings.metrics_host}:{metrics.port}/metrics"
            if metrics is not None
            else ""
        )
        _announce(f"Imagine worker: {concurrency} slot(s), {svc.engine.name} engine{where}")
        await stop.wait()
        _announce("stopping: finishing or releasing in-flight tasks")
        await pool.stop()
    finally:
        if metrics is not None:
            metrics.stop()
        await svc.db.dispose()


@db_app.command("upgrade")
def db_upgrade(
    data_dir: DataDir = None,
    revision: Annotated[str, typer.Argument(help="Target revision")] = "head",
) -> None:
    """Apply schema migrations to the configured database."""
    from imagine.db import schema

    settings = _settings(data_dir=data_dir)

    async def action(db: Database) -> str | None:
        await schema.upgrade(db, revision)
        return await schema.current_revision(db)

    console.print(f"database schema at revision {_with_db(settings, action, prepare=False)}")


@db_app.command("current")
def db_current(data_dir: DataDir = None) -> None:
    """Show the database's schema revision and the one this version needs."""
    from imagine.db import schema

    settings = _settings(data_dir=data_dir)
    current = _with_db(settings, schema.current_revision, prepare=False)
    console.print(f"database: {current or 'empty'} · needed: {schema.head_revision()}")


@keys_app.command("create")
def keys_create(
    plan: Annotated[str, typer.Option(help="free | pro | enterprise")] = "free",
    credits: Annotated[int, typer.Option(min=0, max=MAX_BALANCE, help="Starting credits")] = 0,
    name: Annotated[str, typer.Option(help="A label for the account and key")] = "",
    data_dir: DataDir = None,
    as_json: Annotated[bool, typer.Option("--json", help="One line of JSON")] = False,
    test: Annotated[
        bool,
        typer.Option(
            "--test",
            help="A test key: its tasks cost nothing, run on the preview engine, and may "
            "force their outcome with the Imagine-Test-Outcome header",
        ),
    ] = False,
    admin: Annotated[
        bool,
        typer.Option(
            "--admin",
            help="An admin key: it may also use /v1/admin/ (every account, credits, "
            "every key); the account's other keys may not",
        ),
    ] = False,
) -> None:
    """Create an account with a key, and print the key (only now)."""
    from imagine.accounts import service as accounts

    if plan not in PLANS:
        errors.print(f"error: --plan must be one of {', '.join(PLANS)}")
        raise typer.Exit(2)
    if admin and test:
        errors.print("error: an admin key cannot be a test key (--admin or --test, not both)")
        raise typer.Exit(2)
    settings = _settings(data_dir=data_dir)

    async def action(db: Database) -> accounts.IssuedKey:
        async with db.write() as session:
            return await accounts.create_account(
                session, plan=plan, credits=credits, name=name, is_test=test, is_admin=admin
            )

    issued = _with_db(settings, action)
    if as_json:
        print(
            json.dumps(
                {
                    "key": issued.key,
                    "key_id": issued.key_id,
                    "account_id": issued.account_id,
                    "plan": issued.plan,
                    "credits": issued.credits,
                    "test": issued.is_test,
                    "admin": issued.is_admin,
                }
            )
        )
        return
    kind = "Admin API key" if issued.is_admin else "API key"
    console.print(f"{kind} (shown once): [bold]{issued.key}[/bold]", highlight=False)
    console.print(
        f"key id {issued.key_id} · account {issued.account_id} · plan {issued.plan} · "
        f"{issued.credits} credits",
        highlight=False,
    )


@keys_app.command("list")
def keys_list(
    data_dir: DataDir = None,
    as_json: Annotated[bool, typer.Option("--json", help="JSON lines")] = False,
) -> None:
    """List keys (never the keys themselves: prefix and last characters)."""
    from imagine.accounts import service as accounts

    settings = _settings(data_dir=data_dir)

    async def action(db: Database) -> list[accounts.KeyListing]:
        async with db.read() as session:
            return await accounts.list_keys(session)

    listings = _with_db(settings, action)
    if as_json:
        for item in listings:
            print(
                json.dumps(
                    {
                        "key_id": item.key_id,
                        "key": item.display,
                        "name": item.name,
                        "account_id": item.account_id,
                        "plan": item.plan,
                        "balance": item.balance,
                        "created_at": item.created_at.isoformat(),
                        "revoked": item.revoked_at is not None,
                        "test": item.is_test,
                        "admin": item.is_admin,
                    }
                )
            )
        return
    table = Table("key id", "key", "name", "account", "plan", "balance", "created", "state")
    for item in listings:
        table.add_row(
            item.key_id,
            item.display,
            item.name,
            item.account_id,
            item.plan,
            str(item.balance),
            item.created_at.strftime("%Y-%m-%d %H:%M"),
            ("revoked" if item.revoked_at else "active")
            + (" (test)" if item.is_test else "")
            + (" (admin)" if item.is_admin else ""),
        )
    console.print(table)


@keys_app.command("revoke")
def keys_revoke(key_id: str, data_dir: DataDir = None) -> None:
    """Revoke a key; running API processes refuse it within IMAGINE_KEY_CACHE_SECONDS."""
    from imagine.accounts import service as accounts

    settings = _settings(data_dir=data_dir)

    async def action(db: Database) -> bool:
        async with db.write() as session:
            return await accounts.revoke_key(session, key_id)

    if not _with_db(settings, action):
        errors.print(f"error: no active key with id {key_id}")
        raise typer.Exit(1)
    console.print(
        f"revoked {key_id}; API processes refuse it within {settings.key_cache_seconds:g} s"
    )


@credits_app.command("grant")
def credits_grant(
    account_id: str,
    amount: Annotated[int, typer.Argument(min=1, max=MAX_BALANCE, help="Credits to add")],
    data_dir: DataDir = None,
) -> None:
    """Add credits to an account (recorded in its ledger)."""
    from imagine.credits import ledger
    from imagine.db.database import in_session

    settings = _settings(data_dir=data_dir)

    async def action(db: Database) -> int | None:
        async with db.write() as session:
            return await in_session(
                session, ledger.grant, account_id, amount, "granted by operator"
            )

    try:
        balance = _with_db(settings, action)
    except ledger.BalanceLimit as exc:
        errors.print(f"error: {exc}; nothing was granted", highlight=False)
        raise typer.Exit(1) from None
    if balance is None:
        errors.print(f"error: no account with id {account_id}")
        raise typer.Exit(1)
    console.print(f"granted {amount} credits to {account_id}; balance {balance}")


@webhooks_app.command("secret")
def webhooks_secret(
    account_id: str,
    rotate: Annotated[
        bool,
        typer.Option(
            "--rotate",
            help="Replace the existing secret; deliveries are signed with the new one at once",
        ),
    ] = False,
    data_dir: DataDir = None,
) -> None:
    """Create the account's webhook signing secret and print it (only now).

    Tasks with a callback_url are refused until the account has one.
    """
    from imagine.webhooks import service as webhooks
    from imagine.webhooks.sealing import SecretBox

    settings = _settings(data_dir=data_dir)
    if not settings.resolved_database_url.startswith("sqlite") and not settings.secret_key:
        errors.print(
            "warning: IMAGINE_SECRET_KEY is not set, so the secret is stored encrypted "
            f"with the key in {settings.data_dir.resolve()}; worker processes that do not "
            "share this data dir cannot use it (give every process the same "
            "IMAGINE_SECRET_KEY)",
            highlight=False,
        )

    async def action(db: Database) -> str:
        box = SecretBox.for_settings(settings)
        async with db.write() as session:
            return await webhooks.create_secret(session, account_id, rotate=rotate, box=box)

    try:
        secret = _with_db(settings, action)
    except webhooks.UnknownAccount:
        errors.print(f"error: no account with id {account_id}", highlight=False)
        raise typer.Exit(1) from None
    except webhooks.SecretExists:
        errors.print(
            f"error: account {account_id} already has a webhook signing secret, and it is "
            "never shown again; pass --rotate to replace it (receivers must switch to the "
            "new one)",
            highlight=False,
        )
        raise typer.Exit(1) from None
    verb = "New" if rotate else "The"
    console.print(
        f"{verb} webhook signing secret of {account_id} (shown once, keep it):", highlight=False
    )
    print(secret)  # alone on its line, unwrapped, for scripts


from imagine.cli.client_commands import register as _register_client_commands  # noqa: E402
from imagine.cli.models import register as _register_model_commands  # noqa: E402
from imagine.cli.moderation import register as _register_moderation_commands  # noqa: E402

_register_client_commands(app)
_register_model_commands(app)
_register_moderation_commands(app)

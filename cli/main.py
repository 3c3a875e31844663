"""The ``billing`` command: the whole stack for development, or each part for deployment."""

from __future__ import annotations

import functools
import importlib
import os
import sys
from collections.abc import Callable
from typing import Any, NoReturn, TypeVar

import click

from cli.commands import api_argv, beat_argv, beat_schedule_file, worker_argv
from cli.waiting import ServerDown, wait_for_database
from db.migrate import upgrade
from settings import Settings, SettingsError, load_settings
from workers import heartbeat
from workers.heartbeat import ROLES, Role, heartbeat_path

R = TypeVar("R")

# Exit status for a configuration the command cannot run with (click uses 2 for usage errors).
EXIT_CONFIG = 2


def load_settings_or_exit() -> Settings:
    """The settings from the environment; an invalid one ends the process with status 2."""
    try:
        return load_settings()
    except SettingsError as exc:
        click.echo(f"billing: {exc}", err=True)
        raise SystemExit(EXIT_CONFIG) from None


def with_settings(command: Callable[..., R]) -> Callable[..., R]:
    """Load the settings before ``command`` runs and pass them as its first argument."""

    @functools.wraps(command)
    def wrapper(*args: object, **kwargs: object) -> R:
        return command(load_settings_or_exit(), *args, **kwargs)

    return wrapper


def require_servers(settings: Settings, command: str, *, redis: bool = True) -> str:
    """The database URL, after checking the servers ``command`` needs are configured.

    Exits with status 2 when one is missing: only ``billing dev`` starts embedded servers.
    """
    missing = ["BILLING_DATABASE_URL"] if settings.database_url is None else []
    if redis and settings.redis_url is None:
        missing.append("BILLING_REDIS_URL")
    if settings.database_url is None or missing:
        click.echo(
            f"billing {command}: {' and '.join(missing)} must be set. "
            "To run everything on an embedded PostgreSQL and Redis, use `billing dev`.",
            err=True,
        )
        raise SystemExit(EXIT_CONFIG)
    return settings.database_url


def exec_argv(argv: list[str]) -> NoReturn:
    """Replace this process with ``argv`` (same environment)."""
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(argv[0], argv)  # noqa: S606


class LazyGroup(click.Group):
    """A group that imports the modules of some subcommands only when they are used."""

    def __init__(self, *args: Any, lazy_commands: dict[str, str], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # name -> "module:attribute" of a click command defined elsewhere.
        self.lazy_commands = lazy_commands

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted([*super().list_commands(ctx), *self.lazy_commands])

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.lazy_commands:
            return super().get_command(ctx, cmd_name)
        module, attribute = self.lazy_commands[cmd_name].split(":")
        command = getattr(importlib.import_module(module), attribute)
        if not isinstance(command, click.Command):
            raise TypeError(f"{self.lazy_commands[cmd_name]} is not a click command")
        return command


# Command groups that live in their own module are registered here by name, so
# that `billing api|worker|beat` do not pay for importing them.
@click.group(
    name="billing",
    cls=LazyGroup,
    lazy_commands={"admin": "cli.admin:admin"},
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
def billing() -> None:
    """Billing backend: prepaid credits, Stripe payments and subscriptions for an API product.

    Every command reads the same BILLING_* environment settings; `billing dev` runs the
    whole stack locally, the other commands run one part each for deployment.
    """


@billing.command()
@click.option(
    "--stripe", type=click.Choice(["auto", "off"]), default="auto", show_default=True,
    help="auto: without a Stripe key, run a local Stripe peer (localstripe) and point the API "
    "and worker at it; off: take the Stripe settings as they are.",
)
@with_settings
def dev(settings: Settings, stripe: str) -> None:
    """Run the whole stack locally, in one command.

    Runs the migrations, then the API, a Celery worker and Celery beat, and stops them
    all on Ctrl-C. Without BILLING_DATABASE_URL / BILLING_REDIS_URL it starts its own
    PostgreSQL and Redis under BILLING_DATA_DIR (default ./.billing), keeping their data.
    Without a Stripe key it runs a local Stripe peer too, so purchases work offline.
    """
    # Imported here: the embedded servers' clients would double the start-up
    # time of every other command (and of `billing --help`).
    from cli.dev import run_dev

    raise SystemExit(run_dev(settings, stripe=stripe))


@billing.command()
@click.option("--host", help="Interface to listen on.  [default: BILLING_API_HOST]")
@click.option(
    "--port", type=click.IntRange(1, 65535), help="TCP port.  [default: BILLING_API_PORT]"
)
@click.option(
    "--workers", type=click.IntRange(min=1), default=1, show_default=True,
    help="Number of uvicorn worker processes.",
)  # fmt: skip
@with_settings
def api(settings: Settings, host: str | None, port: int | None, workers: int) -> None:
    """Serve the HTTP API with uvicorn.

    Listens on BILLING_API_HOST:BILLING_API_PORT unless --host/--port say otherwise.
    Needs BILLING_DATABASE_URL and BILLING_REDIS_URL (`billing dev` runs it all locally).
    """
    require_servers(settings, "api")
    exec_argv(api_argv(settings, host=host, port=port, workers=workers))


@billing.command()
@click.option(
    "--concurrency", type=click.IntRange(1, 64),
    help="Task processes to run in parallel.  [default: BILLING_WORKER_CONCURRENCY]",
)  # fmt: skip
@with_settings
def worker(settings: Settings, concurrency: int | None) -> None:
    """Run a Celery worker for the task queue.

    It processes Stripe events, usage and login logs, and reports. Needs
    BILLING_DATABASE_URL and BILLING_REDIS_URL; run as many as the load needs.
    """
    require_servers(settings, "worker")
    exec_argv(worker_argv(settings, concurrency=concurrency))


@billing.command()
@with_settings
def beat(settings: Settings) -> None:
    """Run the Celery beat scheduler.

    It enqueues the periodic work: stats snapshots, reports, event sweeps, integrity
    checks. Run exactly one per deployment; its schedule state lives in BILLING_DATA_DIR.
    """
    require_servers(settings, "beat")
    beat_schedule_file(settings).parent.mkdir(parents=True, exist_ok=True)
    exec_argv(beat_argv(settings))


@billing.command()
@click.argument("role", type=click.Choice(ROLES))
@with_settings
def health(settings: Settings, role: Role) -> None:
    """Exit 0 when a worker's consumer (or beat's loop) ran recently, else 1.

    Reads the heartbeat file the process touches from its own loop (BILLING_HEARTBEAT_FILE,
    default billing-ROLE.heartbeat in the temp dir), so it catches a process that is up but
    wedged; older than BILLING_HEARTBEAT_STALE_S counts as wedged. For container health
    checks and supervisors; run it where the process runs.
    """
    path = heartbeat_path(settings, role)
    seconds = heartbeat.age(path)
    if seconds is None:
        click.echo(f"billing health {role}: no heartbeat yet at {path}", err=True)
        raise SystemExit(1)
    if seconds > settings.heartbeat_stale_s:
        click.echo(
            f"billing health {role}: no heartbeat for {seconds:.0f}s at {path} "
            f"(limit {settings.heartbeat_stale_s}s)",
            err=True,
        )
        raise SystemExit(1)
    click.echo(f"billing health {role}: ok (last heartbeat {seconds:.0f}s ago)")


@billing.command()
@with_settings
def migrate(settings: Settings) -> None:
    """Apply pending database migrations.

    Upgrades the schema of BILLING_DATABASE_URL (unset: the embedded PostgreSQL of the
    data dir) to the latest Alembic revision; safe to run repeatedly. `billing dev` does
    this by itself on every start.
    """
    from cli.embedded import database_url  # see `dev`: keeps other commands' start-up fast

    with database_url(settings.database_url, settings.data_dir) as url:
        try:
            wait_for_database(url, who="billing migrate")
        except ServerDown as exc:
            click.echo(f"billing migrate: {exc}", err=True)
            raise SystemExit(1) from None
        upgrade(url)
    click.echo("billing migrate: database schema is up to date")


def main() -> None:
    """Entry point of the ``billing`` console script."""
    billing(prog_name="billing")


if __name__ == "__main__":
    main()

"""``billing admin``: create administrator accounts and promote existing ones."""

from __future__ import annotations

import sys

import click

from cli.embedded import database_url
from db import rls
from db.transaction import transaction
from services.auth import accounts
from services.errors import DomainError
from settings import Settings, SettingsError, load_settings

EXIT_FAILED = 1
EXIT_CONFIG = 2


def _settings() -> Settings:
    try:
        return load_settings()
    except SettingsError as exc:
        click.echo(f"billing: {exc}", err=True)
        raise SystemExit(EXIT_CONFIG) from None


def _password(settings: Settings, from_stdin: bool) -> str:
    if from_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    if settings.admin_password is not None:
        return settings.admin_password.get_secret_value()
    if not sys.stdin.isatty():
        click.echo(
            "billing admin create: no password: use --password-stdin, set "
            "BILLING_ADMIN_PASSWORD, or run it in a terminal",
            err=True,
        )
        raise SystemExit(EXIT_FAILED)
    return str(click.prompt("Password", hide_input=True, confirmation_prompt=True))


@click.group()
def admin() -> None:
    """Manage administrator accounts (role `admin`)."""


@admin.command()
@click.argument("email")
@click.option(
    "--password-stdin",
    is_flag=True,
    help="Read the password from the first line of standard input.",
)
def create(email: str, password_stdin: bool) -> None:
    """Create an admin account for EMAIL, confirmed, with a password.

    The password comes from --password-stdin, else BILLING_ADMIN_PASSWORD, else a prompt.
    It must pass the same policy as sign-up (length, not a common password).
    """
    settings = _settings()
    password = _password(settings, password_stdin)
    try:
        with (
            database_url(settings.database_url, settings.data_dir) as url,
            transaction(url, acting_as=rls.OWNER) as session,
        ):
            user = accounts.create_admin(session, settings, email=email, password=password)
            created = user.email
    except DomainError as exc:
        click.echo(f"billing admin create: {exc.message}", err=True)
        raise SystemExit(EXIT_FAILED) from None
    click.echo(f"billing admin create: {created} is an admin")


@admin.command()
@click.argument("email")
def promote(email: str) -> None:
    """Give the existing account with EMAIL the admin role."""
    settings = _settings()
    try:
        with (
            database_url(settings.database_url, settings.data_dir) as url,
            transaction(url, acting_as=rls.OWNER) as session,
        ):
            promoted = accounts.promote(session, email=email).email
    except DomainError as exc:
        click.echo(f"billing admin promote: {exc.message}", err=True)
        raise SystemExit(EXIT_FAILED) from None
    click.echo(f"billing admin promote: {promoted} is an admin")

"""Waiting for a server at start: a clear line while it is down, never a traceback loop."""

from __future__ import annotations

import time

import click
import psycopg

from db.engine import libpq_url

DATABASE_WAIT_S = 120.0
_RETRY_S = 2.0


class ServerDown(Exception):
    """The server did not answer within the wait; the message says which and why."""


def wait_for_database(url: str, *, who: str, timeout_s: float = DATABASE_WAIT_S) -> None:
    """Return once PostgreSQL at ``url`` accepts a connection; say so while it does not."""
    deadline = time.monotonic() + timeout_s
    said = False
    while True:
        try:
            psycopg.connect(libpq_url(url), connect_timeout=3).close()
            if said:
                click.echo(f"{who}: the database answers", err=True)
            return
        except psycopg.OperationalError as exc:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if time.monotonic() >= deadline:
            raise ServerDown(f"the database did not answer within {timeout_s:.0f}s ({reason})")
        if not said:
            click.echo(f"{who}: waiting for the database ({reason}); retrying every "
                       f"{_RETRY_S:.0f}s for up to {timeout_s:.0f}s", err=True)
            said = True
        time.sleep(_RETRY_S)

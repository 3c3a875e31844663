"""``billing dev``: the whole stack in one command, stopped as one.

It starts the embedded PostgreSQL and Redis when no URLs are configured, runs
the migrations, then supervises the API, a Celery worker and Celery beat as
child processes. Each child gets its own session (so a terminal Ctrl-C reaches
only us, and we stop things in order) and therefore its own process group,
which is what we SIGKILL if a child does not stop in time.
"""

from __future__ import annotations

import http.client
import os
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import NoReturn
from urllib.parse import urlsplit, urlunsplit

import click
import sqlalchemy.exc

from cli._process import LockHeld, exclusive_lock
from cli.commands import api_argv, beat_argv, worker_argv
from cli.embedded import EmbeddedPostgres, EmbeddedRedis, EmbeddedServerError
from db.migrate import upgrade
from settings import Settings

CHILD_STOP_TIMEOUT_S = 10.0
READY_WARNING_AFTER_S = 60.0
_POLL_S = 0.2
_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
# Our own API is local: an http_proxy from the environment must not be asked.
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class DevError(Exception):
    """A condition that ends ``billing dev`` with a message and a non-zero status."""


class _StopRequested(BaseException):
    """Raised by our signal handler; a BaseException so no ``except Exception`` eats it."""


@dataclass
class Child:
    """One supervised process: the leader of its own process group."""

    name: str
    proc: subprocess.Popen[bytes]

    def status(self) -> int | None:
        """Its exit status (negative: killed by that signal), or None while it runs.

        Uses WNOWAIT so the exited leader stays a zombie: its pid, and so its
        process group id, cannot be recycled before we sweep the group.
        """
        if self.proc.returncode is not None:
            return self.proc.returncode
        info = os.waitid(os.P_PID, self.proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        if info is None:
            return None
        return info.si_status if info.si_code == os.CLD_EXITED else -info.si_status

    def kill_group(self) -> None:
        """SIGKILL every process left in its group, then reap the leader."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()


def run_dev(settings: Settings) -> int:
    """Run the stack until Ctrl-C/SIGTERM (status 0) or until a part of it fails (status 1)."""
    data_dir = settings.data_dir.resolve()
    try:
        # Held for our whole life; the kernel drops it however we die.
        with exclusive_lock(data_dir / "dev.lock", wait=False):
            return DevStack(settings, data_dir).run()
    except LockHeld as exc:
        owner = f" (pid {exc.owner})" if exc.owner else ""
        click.echo(
            f"billing dev: already running on {data_dir}{owner}. Stop it first, "
            "or set BILLING_DATA_DIR to another directory.",
            err=True,
        )
        return 1


class DevStack:
    """The servers and child processes of one ``billing dev`` run."""

    def __init__(self, settings: Settings, data_dir: Path) -> None:
        self.settings = settings
        self.data_dir = data_dir
        self.servers: list[EmbeddedPostgres | EmbeddedRedis] = []
        self.children: list[Child] = []
        self._stop_requested = False
        self._deferring = False

    def run(self) -> int:
        """Start everything, supervise it, and always stop it all on the way out."""
        for sig in _STOP_SIGNALS:
            # A terminal signal ignored by whoever started us (nohup, a
            # background job) stays ignored, as shells do.
            if sig != signal.SIGTERM and signal.getsignal(sig) is signal.SIG_IGN:
                continue
            signal.signal(sig, self._on_signal)
        try:
            _check_port_free(self.settings.api_host, self.settings.api_port)
            settings = self._start_servers()
            self._prepare(settings)
            self._spawn_children(settings)
            self._supervise(settings)
        except _StopRequested:
            return 0
        except (DevError, EmbeddedServerError) as exc:
            click.echo(f"billing dev: {exc}", err=True)
            return 1
        finally:
            # Further signals must not interrupt the shutdown itself.
            self._stop_requested = True
            self._stop_children()
            self._stop_servers()
            click.echo("billing dev: stopped")

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        if self._stop_requested:
            return
        self._stop_requested = True
        click.echo(f"\nbilling dev: {signal.Signals(signum).name} received, stopping...", err=True)
        if not self._deferring:
            raise _StopRequested

    @contextmanager
    def _stop_deferred(self) -> Iterator[None]:
        """Hold a stop signal back until the block is done (then raise it)."""
        self._deferring = True
        try:
            yield
        finally:
            self._deferring = False
        if self._stop_requested:
            raise _StopRequested

    # -- start -----------------------------------------------------------------

    def _start_servers(self) -> Settings:
        database_url, redis_url = self.settings.database_url, self.settings.redis_url
        if database_url is None:
            postgres = EmbeddedPostgres(self.data_dir)
            # Registered before start() so that a half-done start is cleaned up too.
            self.servers.append(postgres)
            click.echo(f"billing dev: starting embedded PostgreSQL in {postgres.root}")
            database_url = postgres.start()
        if redis_url is None:
            redis = EmbeddedRedis(self.data_dir)
            self.servers.append(redis)
            click.echo(f"billing dev: starting embedded Redis in {redis.dir}")
            redis_url = redis.start()
        # The children read their settings from the environment, as in production.
        os.environ.update(
            {
                "BILLING_DATABASE_URL": database_url,
                "BILLING_REDIS_URL": redis_url,
                "BILLING_DATA_DIR": str(self.data_dir),
            }
        )
        return self.settings.with_urls(database_url=database_url, redis_url=redis_url)

    def _prepare(self, settings: Settings) -> None:
        # Create the dev JWT secret now: the API and the worker would otherwise
        # race to create the same file on their first token.
        settings.jwt_signing_key()
        click.echo("billing dev: running migrations")
        try:
            upgrade(os.environ["BILLING_DATABASE_URL"])
        except sqlalchemy.exc.OperationalError as exc:
            raise DevError(f"cannot migrate the database: {exc.orig}") from None

    def _spawn_children(self, settings: Settings) -> None:
        commands = {
            "api": api_argv(settings),
            "worker": worker_argv(settings),
            "beat": beat_argv(settings),
        }
        for name, argv in commands.items():
            # A stop arriving between the fork and the bookkeeping would leave
            # a child nobody stops.
            with self._stop_deferred():
                proc = subprocess.Popen(  # noqa: S603 (our own interpreter and modules)
                    argv, stdin=subprocess.DEVNULL, start_new_session=True
                )
                self.children.append(Child(name, proc))

    # -- run -------------------------------------------------------------------

    def _supervise(self, settings: Settings) -> NoReturn:
        base = _browsable_base_url(settings.api_host, settings.api_port)
        started = time.monotonic()
        announced = warned = False
        while True:
            for child in self.children:
                status = child.status()
                if status is not None:
                    raise DevError(
                        f"the {child.name} process exited unexpectedly ({_describe(status)}); "
                        "stopping everything"
                    )
            if not announced and _answers(f"{base}/healthz"):
                self._announce(settings, base)
                announced = True
            elif (
                not announced and not warned and time.monotonic() - started > READY_WARNING_AFTER_S
            ):
                click.echo(f"billing dev: the API has not answered {base}/healthz yet", err=True)
                warned = True
            time.sleep(_POLL_S)

    def _announce(self, settings: Settings, base: str) -> None:
        embedded = {type(server) for server in self.servers}
        database = _redacted(settings.database_url or "")
        redis = _redacted(settings.redis_url or "")
        lines = [
            f"billing dev: ready (data in {self.data_dir})",
            f"  API         {base}",
            f"  API docs    {base}/docs" if settings.docs_enabled else "  API docs    off",
            f"  PostgreSQL  {database}{' (embedded)' if EmbeddedPostgres in embedded else ''}",
            f"  Redis       {redis}{' (embedded)' if EmbeddedRedis in embedded else ''}",
            "Press Ctrl-C to stop.",
        ]
        click.echo("\n".join(lines))

    # -- stop ------------------------------------------------------------------

    def _stop_children(self) -> None:
        running = [child for child in self.children if child.status() is None]
        # Only the leader gets SIGTERM: uvicorn and Celery stop their own
        # workers gracefully; signalling the whole group would cut them short.
        for child in running:
            child.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + CHILD_STOP_TIMEOUT_S
        while time.monotonic() < deadline and any(c.status() is None for c in running):
            time.sleep(0.05)
        for child in self.children:
            if child.status() is None:
                click.echo(
                    f"billing dev: {child.name} did not stop within "
                    f"{CHILD_STOP_TIMEOUT_S:.0f}s; killing it",
                    err=True,
                )
            child.kill_group()

    def _stop_servers(self) -> None:
        for server in reversed(self.servers):
            try:
                server.stop()
            except (EmbeddedServerError, OSError) as exc:
                click.echo(f"billing dev: could not stop {type(server).__name__}: {exc}", err=True)


def _check_port_free(host: str, port: int) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise DevError(
                f"cannot listen on {host}:{port} ({exc.strerror}); "
                "set BILLING_API_PORT to a free port"
            ) from None


def _browsable_base_url(host: str, port: int) -> str:
    """The URL a local browser should use for a server bound to ``host``."""
    if host in ("0.0.0.0", "", "::"):  # noqa: S104 (a host we display, not bind)
        host = "127.0.0.1"
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _answers(url: str) -> bool:
    try:
        with _NO_PROXY.open(url, timeout=1) as response:
            return bool(response.status == 200)
    except (OSError, http.client.HTTPException):
        return False


def _redacted(url: str) -> str:
    """``url`` without its password, for printing."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def _describe(status: int) -> str:
    if status < 0:
        return f"killed by {signal.Signals(-status).name}"
    return f"exit status {status}"

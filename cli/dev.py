"""``billing dev``: the whole stack in one command, supervised, and stopped as one.

It starts the embedded PostgreSQL and Redis when no URLs are configured, runs
the migrations, then supervises the API, a Celery worker and Celery beat as
child processes. Each child gets its own session (so a terminal Ctrl-C reaches
only us, and we stop things in order) and therefore its own process group,
which is what we SIGKILL if a child does not stop in time.

A child that exits, or a worker or beat whose heartbeat goes stale (up but wedged),
is restarted with a backoff, and we say so. Nothing outlives us: a watchdog process
(``cli/watchdog.py``) stops the children and the embedded servers when we die, even
by SIGKILL, and a run file in the data directory lets the next ``billing dev`` stop
what was left if the watchdog died with us.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
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
from typing import IO, NoReturn
from urllib.parse import urlsplit, urlunsplit

import click
import psutil
import sqlalchemy.exc

from cli import dev_stripe
from cli._process import LockHeld, exclusive_lock, terminate
from cli.commands import api_argv, beat_argv, python_module, worker_argv
from cli.embedded import EmbeddedPostgres, EmbeddedRedis, EmbeddedServerError
from cli.waiting import ServerDown, wait_for_database
from db.migrate import upgrade
from settings import Settings
from workers import heartbeat

CHILD_STOP_TIMEOUT_S = 10.0
READY_WARNING_AFTER_S = 60.0
# Restart backoff: 1, 2, 4... seconds up to the maximum; a child that ran this long is
# counted as healthy again and its next failure restarts it after one second.
RESTART_MAX_DELAY_S = 30.0
STABLE_AFTER_S = 60.0
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
    started: float  # monotonic
    failures: int = 0  # consecutive short-lived runs
    restart_at: float | None = None  # when a dead one is due to start again

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
        if self.proc.returncode is not None:
            return  # reaped already: its group id may belong to someone else by now
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()


def run_dev(settings: Settings, *, stripe: str = "auto") -> int:
    """Run the stack until Ctrl-C/SIGTERM (status 0) or until it cannot start (status 1).

    ``stripe``: ``auto`` runs a local Stripe peer when there is no Stripe key
    (``cli/dev_stripe.py``); ``off`` takes the Stripe settings as they are.
    """
    data_dir = settings.data_dir.resolve()
    try:
        # Held for our whole life; the kernel drops it however we die.
        with exclusive_lock(data_dir / "dev.lock", wait=False):
            return DevStack(settings, data_dir, stripe=stripe).run()
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

    def __init__(self, settings: Settings, data_dir: Path, *, stripe: str = "auto") -> None:
        self.settings = settings
        self.data_dir = data_dir
        self.stripe_choice = stripe
        self.stripe = dev_stripe.StripeSetup("")
        self.servers: list[EmbeddedPostgres | EmbeddedRedis] = []
        self.children: dict[str, Child] = {}
        self.commands: dict[str, list[str]] = {}
        self.run_file = data_dir / "dev.run"
        self.watchdog: subprocess.Popen[bytes] | None = None
        self._watchdog_pipe: IO[str] | None = None
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
            self._stop_leftovers()
            self._start_watchdog()
            self._record_children()
            _check_port_free(self.settings.api_host, self.settings.api_port)
            self._configure_children(self.settings)
            settings = self._start_servers()
            self._prepare(settings)
            self._spawn_children(settings)
            self._supervise(settings)
        except _StopRequested:
            return 0
        except (DevError, EmbeddedServerError, dev_stripe.StripePeerMissing) as exc:
            click.echo(f"billing dev: {exc}", err=True)
            return 1
        finally:
            # Further signals must not interrupt the shutdown itself.
            self._stop_requested = True
            self._stop_children()
            self._stop_servers()
            self._release_watchdog()
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

    # -- nothing outlives us ------------------------------------------------------

    def _start_watchdog(self) -> None:
        read_end, write_end = os.pipe()
        try:
            self.watchdog = subprocess.Popen(  # noqa: S603 (our own interpreter and module)
                python_module("cli.watchdog", str(self.data_dir)),
                stdin=read_end, start_new_session=True,
            )
        finally:
            os.close(read_end)
        self._watchdog_pipe = os.fdopen(write_end, "w", buffering=1)

    def _tell_watchdog(self, line: str) -> None:
        if self._watchdog_pipe is not None:
            self._watchdog_pipe.write(line + "\n")

    def _release_watchdog(self) -> None:
        """Tell the watchdog we stopped everything ourselves, so it exits without a cleanup."""
        if self._watchdog_pipe is not None:
            self._tell_watchdog("done")
            self._watchdog_pipe.close()
            self._watchdog_pipe = None
        if self.watchdog is not None:
            self.watchdog.wait()
        self.run_file.unlink(missing_ok=True)

    def _record_children(self) -> None:
        """Write who runs now to the run file, for the next run if we die with our watchdog."""
        procs = [c.proc for c in self.children.values()]
        record = {
            "watchdog": _identity(self.watchdog.pid) if self.watchdog else None,
            "children": [i for i in (_identity(p.pid) for p in procs) if i is not None],
        }
        self.run_file.write_text(json.dumps(record))

    def _stop_leftovers(self) -> None:
        """Stop what a dead ``billing dev`` left on this data dir (pid and start time match)."""
        try:
            recorded = json.loads(self.run_file.read_text())
        except (OSError, ValueError):
            return
        watchdog = _process(recorded.get("watchdog"))
        if watchdog is not None:
            click.echo("billing dev: waiting for the previous run's watchdog to stop it", err=True)
            psutil.wait_procs([watchdog], timeout=CHILD_STOP_TIMEOUT_S * 6)
        left = []
        for identity in recorded.get("children", []):
            proc = _process(identity)
            if proc is not None:
                left += [proc, *proc.children(recursive=True)]
        if left:
            click.echo(
                f"billing dev: stopping {len(left)} process(es) a previous run left on "
                f"{self.data_dir}",
                err=True,
            )
            terminate(left, timeout=CHILD_STOP_TIMEOUT_S)
        self.run_file.unlink(missing_ok=True)

    # -- start -----------------------------------------------------------------

    def _start_servers(self) -> Settings:
        database_url, redis_url = self.settings.database_url, self.settings.redis_url
        if database_url is None:
            postgres = EmbeddedPostgres(self.data_dir)
            # Registered before start() so that a half-done start is cleaned up too.
            self.servers.append(postgres)
            self._tell_watchdog("server postgres")
            click.echo(f"billing dev: starting embedded PostgreSQL in {postgres.root}")
            database_url = postgres.start()
        if redis_url is None:
            redis = EmbeddedRedis(self.data_dir)
            self.servers.append(redis)
            self._tell_watchdog("server redis")
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
        # Every process that wrote metrics there is gone (a second dev is refused, a killed
        # one's children were stopped): start the counters afresh, as prometheus-client
        # asks of its multiprocess directory.
        shutil.rmtree(settings.metrics_path, ignore_errors=True)
        try:
            wait_for_database(os.environ["BILLING_DATABASE_URL"], who="billing dev")
        except ServerDown as exc:
            raise DevError(str(exc)) from None
        click.echo("billing dev: running migrations")
        try:
            upgrade(os.environ["BILLING_DATABASE_URL"])
        except sqlalchemy.exc.OperationalError as exc:
            raise DevError(f"cannot migrate the database: {exc.orig}") from None

    def _configure_children(self, settings: Settings) -> None:
        """The children's settings beyond the servers: Stripe, and where links point."""
        api_url = _browsable_base_url(settings.api_host, settings.api_port)
        self.stripe = dev_stripe.setup(settings, self.data_dir, choice=self.stripe_choice,
                                       api_url=api_url)
        # The children read their settings from the environment, as in production.
        os.environ.update(self.stripe.env)
        # Links in mails and Stripe's redirects open the API this run serves (on whatever
        # BILLING_API_PORT says), unless the public URL is set.
        os.environ.setdefault("BILLING_PUBLIC_BASE_URL", api_url)

    def _spawn_children(self, settings: Settings) -> None:
        peer = {"stripe": self.stripe.peer_argv} if self.stripe.peer_argv else {}
        self.commands = {
            **peer,  # first: the API and the worker talk to it
            "api": api_argv(settings),
            "worker": worker_argv(settings),
            "beat": beat_argv(settings),
        }
        for name in self.commands:
            self._spawn(name)

    def _heartbeat_file(self, name: str) -> Path:
        return self.data_dir / "run" / f"{name}.heartbeat"

    def _spawn(self, name: str) -> None:
        env = dict(os.environ)
        if name in heartbeat.ROLES:
            path = self._heartbeat_file(name)
            path.unlink(missing_ok=True)  # a fresh process has not beaten yet
            env["BILLING_HEARTBEAT_FILE"] = str(path)
        previous = self.children.get(name)
        # A stop arriving between the fork and the bookkeeping would leave
        # a child nobody stops.
        with self._stop_deferred():
            proc = subprocess.Popen(  # noqa: S603 (our own interpreter and modules)
                self.commands[name], stdin=subprocess.DEVNULL, start_new_session=True, env=env
            )
            self.children[name] = Child(
                name, proc, time.monotonic(), failures=previous.failures if previous else 0
            )
            self._tell_watchdog(f"child {proc.pid}")
        self._record_children()

    # -- run -------------------------------------------------------------------

    def _supervise(self, settings: Settings) -> NoReturn:
        base = _browsable_base_url(settings.api_host, settings.api_port)
        started = time.monotonic()
        announced = warned = False
        while True:
            for child in list(self.children.values()):
                self._watch(child)
            if not announced and _answers(f"{base}/healthz"):
                self._announce(settings, base)
                announced = True
            elif (
                not announced and not warned and time.monotonic() - started > READY_WARNING_AFTER_S
            ):
                click.echo(f"billing dev: the API has not answered {base}/healthz yet", err=True)
                warned = True
            time.sleep(_POLL_S)

    def _watch(self, child: Child) -> None:
        """Restart ``child`` when it died (after its backoff) or is wedged."""
        now = time.monotonic()
        if child.restart_at is not None:
            if now >= child.restart_at:
                click.echo(f"billing dev: restarting the {child.name} process", err=True)
                self._spawn(child.name)
            return
        status = child.status()
        if status is None:
            reason = self._wedged(child)
            if reason is None:
                return
            child.kill_group()
        else:
            reason = f"exited unexpectedly ({_describe(status)})"
            child.kill_group()  # reaps it, and whatever it left in its group
        self._tell_watchdog(f"gone {child.proc.pid}")
        child.failures = 1 if now - child.started >= STABLE_AFTER_S else child.failures + 1
        delay = min(RESTART_MAX_DELAY_S, 2.0 ** (child.failures - 1))
        child.restart_at = now + delay
        click.echo(
            f"billing dev: the {child.name} process {reason}; restarting it in {delay:.0f}s "
            f"(restart {child.failures} in a row)",
            err=True,
        )

    def _wedged(self, child: Child) -> str | None:
        """Why a running worker or beat counts as wedged (its heartbeat is stale), else None."""
        if child.name not in heartbeat.ROLES:
            return None
        limit = self.settings.heartbeat_stale_s
        age = heartbeat.age(self._heartbeat_file(child.name))
        if age is None:
            # Not beaten yet: starting, or waiting for a server; wedged only if that lasts.
            age = time.monotonic() - child.started - READY_WARNING_AFTER_S
        if age <= limit:
            return None
        return f"has not beaten for {age:.0f}s (wedged)"

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
            f"  Stripe      {self.stripe.summary}",
            "Press Ctrl-C to stop.",
        ]
        click.echo("\n".join(lines))

    # -- stop ------------------------------------------------------------------

    def _stop_children(self) -> None:
        children = list(self.children.values())
        running = [child for child in children if child.status() is None]
        # Only the leader gets SIGTERM: uvicorn and Celery stop their own
        # workers gracefully; signalling the whole group would cut them short.
        for child in running:
            child.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + CHILD_STOP_TIMEOUT_S
        while time.monotonic() < deadline and any(c.status() is None for c in running):
            time.sleep(0.05)
        for child in children:
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


def _identity(pid: int) -> list[float] | None:
    """A process's pid and start time: together they name it even after pid reuse."""
    try:
        return [pid, psutil.Process(pid).create_time()]
    except psutil.Error:
        return None


def _process(identity: list[float] | None) -> psutil.Process | None:
    """The live process ``identity`` names, or None."""
    if not identity:
        return None
    try:
        proc = psutil.Process(int(identity[0]))
        alive = proc.status() != psutil.STATUS_ZOMBIE
        return proc if alive and abs(proc.create_time() - identity[1]) < 0.01 else None
    except psutil.Error:
        return None


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

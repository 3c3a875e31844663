"""Helpers for tests: free ports, waiting, processes we start ourselves."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy.orm import Session

ROOT = Path(__file__).resolve().parent.parent
T = TypeVar("T")

# Under pytest-xdist each worker process ("gw0", "gw1", ...) runs its share of the tests
# against servers of its own: its own database, Redis database number, localstripe, mail
# server, Celery worker and artifacts folder. Without xdist this is "".
XDIST_WORKER = os.environ.get("PYTEST_XDIST_WORKER", "")
ARTIFACTS = ROOT / "test-artifacts" / XDIST_WORKER if XDIST_WORKER else ROOT / "test-artifacts"


def xdist_controller(config: Any) -> bool:
    """True in the process that only hands tests to xdist workers (it starts no servers)."""
    return bool(getattr(config.option, "numprocesses", None)) and not hasattr(config, "workerinput")


def own_database(url: str) -> str:
    """``url`` with this xdist worker's database name (``billing_ci`` -> ``billing_ci_gw1``)."""
    if not XDIST_WORKER:
        return url
    from sqlalchemy import make_url

    parsed = make_url(url)
    return parsed.set(database=f"{parsed.database}_{XDIST_WORKER}").render_as_string(False)


def own_redis_db(url: str) -> str:
    """``url`` with this xdist worker's Redis database number (base + worker index)."""
    if not XDIST_WORKER:
        return url
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    base = int(parts.path.strip("/") or 0)
    number = base + int(XDIST_WORKER.removeprefix("gw"))
    if number > 15:
        raise RuntimeError(f"Redis database {number} does not exist: lower the base of {url}")
    return urlunsplit(parts._replace(path=f"/{number}"))


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def scratch_session(database_url: str) -> Iterator[Session]:
    """A session of its own; what it did not commit is rolled back when the block ends."""
    from db.engine import get_sessionmaker

    session = get_sessionmaker(database_url)()
    try:
        yield session
    finally:
        session.rollback()
        session.close()


def on_event_loop(database_url: str, work: Callable[[Any], Awaitable[T]], *,
                  connections: int = 1) -> T:
    """``await work(db)`` with ``db`` a fresh async pool (``db.aio``), as the event-loop
    routes run their statements; the pool is closed after."""
    import asyncio

    from db.aio import AsyncDatabase

    async def run() -> T:
        db = AsyncDatabase(database_url, min_size=1, max_size=connections)
        await db.open()
        try:
            return await work(db)
        finally:
            await db.close()

    return asyncio.run(run())


def wait_for(predicate: Callable[[], T], *, timeout: float = 10.0, interval: float = 0.05,
             message: str = "condition") -> T:
    """Poll ``predicate`` until it returns something truthy, or fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            result = predicate()
            if result:
                return result
        except Exception as exc:  # the thing polled may not be up yet
            last_error = exc
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {message}: {last_error!r}")


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex((host, port)) == 0


def _die_with_parent() -> None:
    """In the child: SIGKILL it when the test process dies, however it dies.

    A worker that outlived a killed test run would go on consuming the test broker and
    take (and lose) the tasks of the next run.
    """
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)


def answers_ping(broker_url: str) -> bool:
    """Whether some worker consuming ``broker_url`` answers a ping."""
    from services.task_queue import producer_app

    app = producer_app(broker_url)
    try:
        return any(app.control.ping(timeout=0.5))
    finally:
        app.close()


def restart_redis(server) -> None:
    """An operator's restart of an embedded Redis: SHUTDOWN (it saves), then a fresh server."""
    import redis

    try:
        redis.Redis(port=server.port).shutdown()
    except redis.ConnectionError:
        pass  # the server closes the connection as it goes
    server.stop()  # reaps it and clears its pid file
    server.start()


def start_localstripe(workdir: Path) -> tuple[subprocess.Popen[bytes], str]:
    """A localstripe of its own (fresh state) on a free port; its process and URL."""
    port = free_port()
    log = open(workdir / "localstripe.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-m", "localstripe", "--port", str(port), "--from-scratch"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=workdir,
        preexec_fn=_die_with_parent,
    )
    wait_for(lambda: port_open(port), timeout=20, message="localstripe")
    return proc, f"http://127.0.0.1:{port}"


class WorkerProcess:
    """A real Celery worker process consuming the test broker."""

    def __init__(self, *, concurrency: int = 2, log_path: Path | None = None,
                 extra_env: dict[str, str] | None = None) -> None:
        self.concurrency = concurrency
        self.log_path = log_path
        self.extra_env = extra_env or {}
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> WorkerProcess:
        """Start the worker and wait until it consumes."""
        env = {**os.environ, **self.extra_env}
        log = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        self.proc = subprocess.Popen(  # noqa: S603
            [sys.executable, "-m", "celery", "-A", "workers.app", "worker",
             "--concurrency", str(self.concurrency), "--pool", "prefork",
             "--without-gossip", "--without-mingle", "--without-heartbeat",
             "--loglevel", "INFO"],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            preexec_fn=_die_with_parent,
        )
        wait_for(self._ready, timeout=30, message="celery worker to start")
        return self

    def _ready(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise RuntimeError(f"celery worker exited with {self.proc.returncode}")
        return answers_ping(self.extra_env.get("BILLING_REDIS_URL") or os.environ["BILLING_REDIS_URL"])

    def kill(self) -> None:
        """SIGKILL the whole worker (main process and its children), as a crash would."""
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        """Warm shutdown; escalate to SIGKILL if it does not stop in time."""
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()


@contextmanager
def served(app: Any, port: int | None = None) -> Iterator[str]:
    """``app`` served by a real uvicorn in a thread on a loopback port (``port``, else a free
    one); yields its base URL."""
    import uvicorn

    port = port or free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_for(lambda: server.started, timeout=15, message="live uvicorn")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)

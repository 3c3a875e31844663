"""PgBouncer in transaction pooling mode on a loopback port, in front of a PostgreSQL server.

For the tests and ``bench.spend --pgbouncer``: Debian's ``pgbouncer`` (1.18; ``scripts/test.sh``
installs it). ``POOL_SETTINGS`` are the pooling settings the README's production topology
recommends; authentication is ``trust`` on loopback, which suits nothing but a test machine.
PgBouncer refuses to run as root: as root it runs as the embedded PostgreSQL's system user
(which can reach that server's socket) or ``nobody``.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import time
from pathlib import Path

import psycopg
from sqlalchemy.engine import make_url

from cli._process import free_tcp_port
from cli.embedded import PG_SYSTEM_USER

# What every process of the backend needs from the pooler (see db/engine.py for why).
POOL_SETTINGS = {
    "pool_mode": "transaction",
    "default_pool_size": "20",  # server connections per database and user: the budget
    "max_client_conn": "2000",  # client connections are cheap: every pool of every process
    # The guard our direct connections set with a startup option, which a pooler refuses:
    # a client idle inside a transaction for a minute is cut off and its transaction undone.
    "idle_transaction_timeout": "60",
    "query_wait_timeout": "10",  # a client waiting that long for a server connection fails
}
_START_TIMEOUT_S = 15


class PgBouncerError(RuntimeError):
    """PgBouncer is missing or did not start; the message says why."""


def binary() -> str:
    """The ``pgbouncer`` executable (Debian puts it in /usr/sbin)."""
    found = shutil.which("pgbouncer") or shutil.which("pgbouncer", path="/usr/sbin")
    if found is None:
        raise PgBouncerError("pgbouncer not found: apt-get install -y pgbouncer")
    return found


class PgBouncer:
    """One PgBouncer process pooling every database of ``upstream_url``'s server."""

    def __init__(self, upstream_url: str, work_dir: Path, **settings: str) -> None:
        """``settings`` override ``POOL_SETTINGS`` or add to them (PgBouncer's names)."""
        self.upstream = make_url(upstream_url)
        self.dir = Path(work_dir)
        self.settings = {**POOL_SETTINGS, **settings}
        self.port = 0
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        """The PgBouncer process's id while it runs."""
        return self._proc.pid if self._proc is not None else None

    @property
    def url(self) -> str:
        """The upstream URL with the pooler in place of the server (same user and database)."""
        return (self.upstream.set(host="127.0.0.1", port=self.port)
                .difference_update_query(["host"]).render_as_string(hide_password=False))

    def start(self) -> str:
        """Start PgBouncer on a free port and wait until it serves; returns ``url``."""
        program = binary()
        self.dir.mkdir(parents=True, exist_ok=True)
        for _ in range(3):  # a port found free can be taken before PgBouncer binds it
            self.port = free_tcp_port()
            config = self._write_config()
            user = _run_as()
            log = open(self.dir / "pgbouncer.log", "ab")  # noqa: SIM115 (the child keeps it)
            self._proc = subprocess.Popen(  # noqa: S603 (a fixed program, argument list)
                [program, *(["-u", user] if user else []), str(config)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            log.close()
            if self._wait_until_serving():
                return self.url
            self.stop()
        raise PgBouncerError(f"pgbouncer did not start; see {self.dir / 'pgbouncer.log'}")

    def stop(self) -> None:
        """Stop PgBouncer at once (its clients' connections close)."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)  # immediate shutdown
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(10)
        self._proc = None

    def transactions(self) -> int:
        """Transactions PgBouncer has passed to the server so far, over every database."""
        admin = make_url(self.url).set(drivername="postgresql", database="pgbouncer")
        # The admin console speaks the simple query protocol only: bind on the client.
        with psycopg.connect(admin.render_as_string(hide_password=False), autocommit=True,
                             cursor_factory=psycopg.ClientCursor) as conn:
            cursor = conn.execute("SHOW STATS")
            names = [column.name for column in cursor.description or []]
            rows = [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
        return sum(int(row["total_xact_count"]) for row in rows if row["database"] != "pgbouncer")

    def _write_config(self) -> Path:
        upstream = self.upstream
        host = upstream.query.get("host") or upstream.host or "127.0.0.1"
        user = upstream.username or "postgres"
        password = upstream.password or ""
        users = self.dir / "users.txt"
        users.write_text(f'"{user}" "{password}"\n')
        lines = [
            "[databases]",
            f"* = host={host} port={upstream.port or 5432}",
            "[pgbouncer]",
            "listen_addr = 127.0.0.1",
            f"listen_port = {self.port}",
            "unix_socket_dir =",
            "auth_type = trust",
            f"auth_file = {users}",
            f"admin_users = {user}",
            *(f"{key} = {value}" for key, value in self.settings.items()),
        ]
        config = self.dir / "pgbouncer.ini"
        config.write_text("\n".join(lines) + "\n")
        runner = _run_as()
        if runner is not None:  # it reads its files after giving up root
            entry = pwd.getpwnam(runner)
            for path in (self.dir, users, config):
                os.chown(path, entry.pw_uid, entry.pw_gid)
        users.chmod(0o600)
        return config

    def _wait_until_serving(self) -> bool:
        assert self._proc is not None
        deadline = time.monotonic() + _START_TIMEOUT_S
        target = make_url(self.url).set(drivername="postgresql")
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                return False
            try:
                with psycopg.connect(target.render_as_string(hide_password=False),
                                     connect_timeout=2, prepare_threshold=None) as conn:
                    conn.execute("SELECT 1")
                return True
            except psycopg.OperationalError:
                time.sleep(0.1)
        return False


def _run_as() -> str | None:
    """Who PgBouncer runs as: us, unless we are root (it refuses to run as root)."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(PG_SYSTEM_USER).pw_name  # reaches an embedded server's socket
    except KeyError:
        return "nobody"

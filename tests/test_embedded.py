"""The embedded PostgreSQL and Redis: data survives restarts, crashes leave nothing that blocks."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import psutil
import psycopg
import pytest
import redis

from cli._process import free_tcp_port, read_pid_file
from cli.embedded import EmbeddedPostgres, EmbeddedRedis
from db.engine import libpq_url

ROOT = Path(__file__).resolve().parent.parent


def processes_using(path: Path) -> list[psutil.Process]:
    """Live processes working in, or started with an argument under, ``path``."""
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.status() == psutil.STATUS_ZOMBIE:
                continue
            if proc.cwd().startswith(str(path)) or any(str(path) in a for a in proc.cmdline()):
                found.append(proc)
        except psutil.Error:
            continue
    return found


def kill_and_wait(pid: int) -> None:
    """SIGKILL ``pid`` as a crash would, and wait until it is gone."""
    proc = psutil.Process(pid)
    proc.kill()
    psutil.wait_procs([proc], timeout=10)


def start_in_crashing_parent(data_dir: Path, server: str) -> str:
    """Start ``server`` from a child process that then dies by SIGKILL; return its URL."""
    script = textwrap.dedent(
        f"""
        import sys, time
        from pathlib import Path
        from cli.embedded import {server}
        print({server}(Path(sys.argv[1])).start(), flush=True)
        time.sleep(60)
        """
    )
    parent = subprocess.Popen(
        [sys.executable, "-c", script, str(data_dir)], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    assert parent.stdout is not None
    url = parent.stdout.readline().strip()
    parent.kill()
    parent.wait()
    assert url, f"{server} did not start in the child process"
    return url


@pytest.fixture
def data_dir(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "data"
    yield path
    # Whatever a failed test left running must not outlive it.
    EmbeddedRedis(path).stop()
    EmbeddedPostgres(path).stop()


# --- PostgreSQL --------------------------------------------------------------------------------


def test_postgres_keeps_data_across_a_restart_and_stops_without_leftovers(data_dir: Path) -> None:
    pg = EmbeddedPostgres(data_dir)
    url = pg.start()
    assert url.startswith("postgresql+psycopg://")
    with psycopg.connect(libpq_url(url), autocommit=True) as conn:
        conn.execute("CREATE TABLE kept (value text)")
        conn.execute("INSERT INTO kept VALUES ('before restart')")
    pg.stop()

    assert not (pg.pgdata / "postmaster.pid").exists()
    assert processes_using(data_dir) == []

    url = EmbeddedPostgres(data_dir).start()
    with psycopg.connect(libpq_url(url)) as conn:
        assert conn.execute("SELECT value FROM kept").fetchall() == [("before restart",)]


def test_postgres_admin_url_reaches_other_databases_of_the_server(data_dir: Path) -> None:
    pg = EmbeddedPostgres(data_dir, database="app")
    pg.start()
    with psycopg.connect(libpq_url(pg.admin_url()), autocommit=True) as conn:
        conn.execute("CREATE DATABASE scratch")
    with psycopg.connect(libpq_url(pg.admin_url("scratch"))) as conn:
        assert conn.execute("SELECT current_database()").fetchone() == ("scratch",)
    pg.stop()


def test_postgres_starts_after_its_server_was_killed(data_dir: Path) -> None:
    pg = EmbeddedPostgres(data_dir)
    url = pg.start()
    with psycopg.connect(libpq_url(url), autocommit=True) as conn:
        conn.execute("CREATE TABLE kept AS SELECT 42 AS answer")
    kill_and_wait(read_pid_file(pg.pgdata / "postmaster.pid") or 0)
    assert (pg.pgdata / "postmaster.pid").exists(), "the crash should leave a stale pid file"

    url = EmbeddedPostgres(data_dir).start()

    with psycopg.connect(libpq_url(url)) as conn:
        assert conn.execute("SELECT answer FROM kept").fetchone() == (42,)
    pg.stop()
    assert processes_using(data_dir) == []


def test_postgres_start_reuses_the_server_of_a_crashed_parent(data_dir: Path) -> None:
    url = start_in_crashing_parent(data_dir, "EmbeddedPostgres")
    pg = EmbeddedPostgres(data_dir)
    running = read_pid_file(pg.pgdata / "postmaster.pid")

    assert pg.start() == url
    assert read_pid_file(pg.pgdata / "postmaster.pid") == running
    with psycopg.connect(libpq_url(url)) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    pg.stop()
    assert processes_using(data_dir) == []


# --- Redis -------------------------------------------------------------------------------------


def test_redis_keeps_data_across_a_restart_and_stops_without_leftovers(data_dir: Path) -> None:
    server = EmbeddedRedis(data_dir)
    url = server.start()
    assert url.startswith("redis://127.0.0.1:") and url.endswith("/0")
    redis.Redis.from_url(url).set("kept", "before restart")
    server.stop()

    assert not server.pid_file.exists()
    assert processes_using(data_dir) == []

    url = EmbeddedRedis(data_dir).start()
    assert redis.Redis.from_url(url).get("kept") == b"before restart"


def test_redis_without_persistence_starts_empty_on_the_requested_port(data_dir: Path) -> None:
    port = free_tcp_port()
    server = EmbeddedRedis(data_dir, persist=False, port=port)
    assert server.start() == f"redis://127.0.0.1:{port}/0"
    redis.Redis(port=port).set("gone", "1")
    server.stop()

    server.start()
    assert redis.Redis(port=port).get("gone") is None
    server.stop()


def test_redis_starts_after_its_server_was_killed(data_dir: Path) -> None:
    server = EmbeddedRedis(data_dir)
    redis.Redis.from_url(server.start()).set("kept", "yes")
    kill_and_wait(read_pid_file(server.pid_file) or 0)
    assert server.pid_file.exists(), "the crash should leave a stale pid file"

    url = EmbeddedRedis(data_dir).start()

    assert redis.Redis.from_url(url).get("kept") == b"yes"
    server.stop()
    assert processes_using(data_dir) == []


def test_redis_start_reuses_the_server_of_a_crashed_parent(data_dir: Path) -> None:
    url = start_in_crashing_parent(data_dir, "EmbeddedRedis")
    server = EmbeddedRedis(data_dir)
    running = read_pid_file(server.pid_file)

    assert server.start() == url
    assert read_pid_file(server.pid_file) == running
    server.stop()
    assert processes_using(data_dir) == []


def test_servers_run_detached_from_the_callers_terminal(data_dir: Path) -> None:
    pg, server = EmbeddedPostgres(data_dir), EmbeddedRedis(data_dir)
    pg.start()
    server.start()
    # A Ctrl-C in the caller's terminal must not reach them.
    for pid in (read_pid_file(pg.pgdata / "postmaster.pid"), read_pid_file(server.pid_file)):
        assert pid is not None and os.getsid(pid) != os.getsid(0)
    server.stop()
    pg.stop()

"""The ``billing`` command: help, settings errors, and ``billing dev`` on the embedded default."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import psycopg
import pytest

from cli._process import free_tcp_port
from cli.embedded import EmbeddedPostgres, EmbeddedRedis
from db.engine import libpq_url
from tests.support import wait_for

ROOT = Path(__file__).resolve().parent.parent
BILLING = [sys.executable, "-m", "cli.main"]
COMMANDS = ["dev", "api", "worker", "beat", "migrate"]
READY_TIMEOUT_S = 30
# Generous: on a loaded 2-CPU machine a clean stop of everything can take a while.
STOP_TIMEOUT_S = 60


def clean_env(**settings: str) -> dict[str, str]:
    """This environment without any BILLING_* setting, plus ``settings``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BILLING_")}
    return {**env, **settings}



def billing(*args: str, env: dict[str, str], timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*BILLING, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )


# --- help and settings -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "phrase"),
    [
        ((), "prepaid credits"),
        (("dev",), "whole stack"),
        (("api",), "HTTP API"),
        (("worker",), "Celery worker"),
        (("beat",), "beat scheduler"),
        (("migrate",), "migrations"),
    ],
)
def test_help_explains_each_command(args: tuple[str, ...], phrase: str) -> None:
    # Help must work even when the settings are broken.
    result = billing(*args, "--help", env=clean_env(BILLING_API_PORT="abc"))

    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"Usage: billing {' '.join(args)}".rstrip())
    assert phrase in result.stdout


def test_help_lists_every_command() -> None:
    result = billing("--help", env=clean_env())

    listed = result.stdout.split("Commands:")[1]
    for command in COMMANDS:
        assert f"\n  {command} " in listed


# Every command, each of the two kinds of mistake (a bad value, an unknown name).
@pytest.mark.parametrize(
    ("command", "variable", "value"),
    [
        ("dev", "BILLING_API_PORT", "abc"),
        ("api", "BILLING_FOO", "1"),
        ("worker", "BILLING_API_PORT", "abc"),
        ("beat", "BILLING_FOO", "1"),
        ("migrate", "BILLING_API_PORT", "abc"),
    ],
)
def test_invalid_setting_exits_2_naming_the_variable(
    command: str, variable: str, value: str
) -> None:
    result = billing(command, env=clean_env(**{variable: value}))

    assert result.returncode == 2
    assert variable in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("command", ["api", "worker", "beat"])
def test_part_commands_without_server_urls_point_to_billing_dev(command: str) -> None:
    result = billing(command, env=clean_env())

    assert result.returncode == 2
    assert "BILLING_DATABASE_URL" in result.stderr
    assert "billing dev" in result.stderr


def test_one_shot_commands_use_the_data_dirs_embedded_database(tmp_path: Path) -> None:
    """Without URLs, `migrate` and `admin` work on the embedded PostgreSQL and stop it after."""
    env = clean_env(BILLING_DATA_DIR=str(tmp_path), BILLING_ADMIN_PASSWORD="a-long-admin-pass-77")
    migrated = billing("migrate", env=env, timeout=90)
    assert migrated.returncode == 0, migrated.stderr
    created = billing("admin", "create", "root@example.com", env=env, timeout=90)
    assert created.returncode == 0, created.stderr

    server = EmbeddedPostgres(tmp_path)
    try:
        with psycopg.connect(libpq_url(server.start())) as conn:
            row = conn.execute("SELECT role FROM users WHERE email = 'root@example.com'").fetchone()
        assert row is not None
        role = row[0]
        assert role == "admin"
    finally:
        server.stop()
    assert not (tmp_path / "postgres" / "data" / "postmaster.pid").exists()


# --- billing dev, end to end -------------------------------------------------------------------


class DevRun:
    """One ``billing dev`` process on a data directory, its output kept in a log file."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.log = log
        with log.open("ab") as out:
            self.proc = subprocess.Popen(
                [*BILLING, "dev"], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def tree(self) -> list[psutil.Process]:
        """The running process and all its descendants."""
        parent = psutil.Process(self.proc.pid)
        return [parent, *parent.children(recursive=True)]

    def wait(self) -> int:
        try:
            return self.proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            pytest.fail(f"billing dev did not exit within {STOP_TIMEOUT_S}s:\n{self.output()}")


def wait_ready(run: DevRun, base_url: str) -> None:
    """Wait until /readyz answers 200, failing early with the log if billing dev exits."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        assert run.proc.poll() is None, f"billing dev exited early:\n{run.output()}"
        try:
            # Its own banner too: an API a previous run left behind may answer as well.
            if (httpx.get(f"{base_url}/readyz", timeout=2).status_code == 200
                    and "billing dev: ready" in run.output()):
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    pytest.fail(f"/readyz did not answer 200 within {READY_TIMEOUT_S}s:\n{run.output()}")


def survivors(procs: list[psutil.Process], data_dir: Path) -> list[str]:
    """Which of ``procs``, or any process working with ``data_dir``, is still alive."""
    alive = [p for p in procs if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    for proc in psutil.process_iter():
        try:
            if proc.status() == psutil.STATUS_ZOMBIE:
                continue
            if proc.cwd().startswith(str(data_dir)) or any(
                str(data_dir) in arg for arg in proc.cmdline()
            ):
                alive.append(proc)
        except psutil.Error:
            continue
    described = []
    for proc in alive:
        try:
            described.append(f"{proc.pid}: {' '.join(proc.cmdline())}")
        except psutil.Error:
            continue
    return described


class DevHarness:
    """Starts ``billing dev`` runs on one data directory and API port."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.data_dir = tmp_path / "data"
        port = free_tcp_port()
        self.base_url = f"http://127.0.0.1:{port}"
        self.env = clean_env(
            BILLING_DATA_DIR=str(self.data_dir),
            BILLING_API_PORT=str(port),
            BILLING_LOG_JSON="false",
        )
        self.runs: list[DevRun] = []

    def start(self) -> DevRun:
        run = DevRun(self.env, self.tmp_path / f"dev-{len(self.runs) + 1}.log")
        self.runs.append(run)
        return run

    def clean_up(self) -> None:
        """Stop whatever a failed test left running, so nothing outlives it."""
        for run in self.runs:
            if run.proc.poll() is not None:
                continue
            tree = run.tree()
            run.proc.terminate()
            try:
                run.proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                for proc in tree:
                    with contextlib.suppress(psutil.NoSuchProcess):
                        proc.kill()
                run.proc.wait()
        EmbeddedRedis(self.data_dir).stop()
        EmbeddedPostgres(self.data_dir).stop()


@pytest.fixture
def dev(tmp_path: Path) -> Iterator[DevHarness]:
    harness = DevHarness(tmp_path)
    yield harness
    harness.clean_up()


def _child(run: DevRun, role: str) -> psutil.Process:
    """The running ``api``, ``worker``, ``beat`` or ``stripe`` (peer) child of ``run``."""
    marker = {"api": "api.server", "worker": "worker", "beat": "beat",
              "stripe": "cli.stripe_peer"}[role]
    return next(p for p in psutil.Process(run.proc.pid).children() if marker in p.cmdline())


def test_billing_dev_runs_the_stack_and_sigterm_leaves_nothing_behind(dev: DevHarness) -> None:
    run = dev.start()
    wait_ready(run, dev.base_url)

    second = billing("dev", env=dev.env)
    assert second.returncode != 0
    assert "already running" in second.stderr and str(dev.data_dir) in second.stderr

    database = libpq_url(EmbeddedPostgres(dev.data_dir).admin_url("billing"))
    with psycopg.connect(database) as conn:
        conn.execute("CREATE TABLE dev_probe (note text)")
        conn.execute("INSERT INTO dev_probe VALUES ('written in the first run')")

    # A child that dies is restarted, and billing dev says so.
    beat = _child(run, "beat")
    os.killpg(beat.pid, signal.SIGKILL)
    wait_for(lambda: _child(run, "beat").pid != beat.pid, timeout=30, message="a new beat")
    assert "the beat process exited unexpectedly (killed by SIGKILL); restarting it" in run.output()
    assert run.proc.poll() is None

    tree = run.tree()
    assert len(tree) >= 5, f"expected billing dev, its watchdog, api, worker and beat: {tree}"
    run.proc.send_signal(signal.SIGTERM)

    assert run.wait() == 0, run.output()
    assert survivors(tree, dev.data_dir) == [], run.output()
    assert not (dev.data_dir / "postgres" / "data" / "postmaster.pid").exists()
    assert not (dev.data_dir / "redis" / "redis.pid").exists()

    # The next start finds the same data.
    run = dev.start()
    wait_ready(run, dev.base_url)
    with psycopg.connect(database) as conn:
        notes = conn.execute("SELECT note FROM dev_probe").fetchall()
    assert notes == [("written in the first run",)]


def test_billing_dev_killed_leaves_nothing_running_and_starts_again(dev: DevHarness) -> None:
    """SIGKILL (an OOM kill, an IDE's stop button): its watchdog stops what it started."""
    run = dev.start()
    wait_ready(run, dev.base_url)
    tree = run.tree()
    run.proc.kill()
    run.wait()

    wait_for(lambda: survivors(tree, dev.data_dir) == [], timeout=STOP_TIMEOUT_S,
             message="everything billing dev started to stop")
    assert "billing dev is gone; stopping what it started" in run.output()

    # Killed together with its watchdog (a container's cgroup killed in part, say): the
    # next run stops the children left behind before it starts.
    run = dev.start()
    wait_ready(run, dev.base_url)
    watchdog = next(p for p in run.tree() if "cli.watchdog" in p.cmdline())
    left = [_child(run, role) for role in ("api", "worker", "beat")]
    watchdog.kill()
    run.proc.kill()
    run.wait()
    try:
        assert all(p.is_running() for p in left)

        run = dev.start()
        wait_ready(run, dev.base_url)
        assert "process(es) a previous run left" in run.output()
        assert not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in left)
    finally:
        for proc in left:  # whatever this test fails on, they must not outlive it
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)


def test_processes_started_while_the_servers_are_down_wait_with_a_clear_line(
    tmp_path: Path,
) -> None:
    """No traceback loop: each says what it waits for; /readyz names what is down."""
    port = free_tcp_port()
    env = clean_env(
        BILLING_DATABASE_URL=f"postgresql://postgres@127.0.0.1:{free_tcp_port()}/billing",
        BILLING_REDIS_URL=f"redis://127.0.0.1:{free_tcp_port()}/0",
        BILLING_DATA_DIR=str(tmp_path), BILLING_API_PORT=str(port), BILLING_LOG_JSON="false",
        BILLING_HEARTBEAT_FILE=str(tmp_path / "heartbeat"),
    )
    expected = {
        "migrate": "billing migrate: waiting for the database (connection failed",
        "worker": "Cannot connect to",
        "beat": "beat: broker unreachable, the schedule waits",
        "api": "Uvicorn running on",
    }
    procs = {name: subprocess.Popen(
        [*BILLING, name], cwd=ROOT, env=env, stdout=(tmp_path / f"{name}.log").open("wb"),
        stderr=subprocess.STDOUT, start_new_session=True) for name in expected}
    logs = {name: tmp_path / f"{name}.log" for name in expected}
    try:
        wait_for(lambda: all(expected[n] in logs[n].read_text(errors="replace")
                             for n in expected), timeout=60, interval=0.5,
                 message="every process to say what it waits for")
        ready = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=10)
        assert ready.status_code == 503
        assert ready.json()["error"]["checks"] == {"database": "unavailable",
                                                   "broker": "unavailable"}
        time.sleep(3)  # a few retries more
        assert all(proc.poll() is None for proc in procs.values())
    finally:
        for proc in procs.values():
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    for name, log in logs.items():
        assert "Traceback" not in log.read_text(errors="replace"), f"{name}: {log.read_text()}"


# --- billing dev without a Stripe key: the local Stripe peer -----------------------------------

DEV_PASSWORD = "a long first-run password 7"  # noqa: S105 (a test account's password)


def _buy_starter(base: str, headers: dict[str, str]) -> str:
    """Start a purchase and pay it with the test Visa, as the portal does; the payment id."""
    started = httpx.post(f"{base}/api/user-management/credits/purchase", headers=headers,
                         json={"package_id": "starter", "flow": "payment_intent"}, timeout=30)
    assert started.status_code == 201, started.text
    payment_id = started.json()["payment_id"]
    paid = httpx.post(f"{base}/api/dev/payments/{payment_id}/pay", headers=headers,
                      json={"card": "visa"}, timeout=30)
    assert paid.status_code == 200, paid.text
    return payment_id


def _balance(base: str, headers: dict[str, str]) -> int:
    return httpx.get(f"{base}/api/user-management/credits", headers=headers).json()["balance"]


def test_billing_dev_without_a_stripe_key_takes_a_payment_on_its_local_peer(
    dev: DevHarness,
) -> None:
    """A fresh clone's first run: sign up from the console mail, buy, get the credits through
    the peer's webhook and the worker, spend; the peer is one more supervised child."""
    run = dev.start()
    wait_ready(run, dev.base_url)
    base = dev.base_url
    assert re.search(r"^  Stripe      http://127\.0\.0\.1:\d+ \(local peer\)$", run.output(),
                     re.M), run.output()
    assert httpx.get(f"{base}/account/config.json").json() == {"payments": "test_cards"}

    # The console mail prints the link whole (no quoted-printable), to this run's API.
    assert httpx.post(f"{base}/api/auth/register", json={
        "email": "first@example.com", "password": DEV_PASSWORD}).status_code == 201
    link = wait_for(lambda: re.search(rf"^{re.escape(base)}/auth/confirm\?token=(\S+)$",
                                      run.output(), re.M), timeout=30, message="the mail")
    assert "=3D" not in run.output()
    # The page the link opens is there (the token stays out of this side's request log).
    assert httpx.get(link.group(0).split("?")[0]).status_code == 200
    assert httpx.post(f"{base}/api/auth/confirm",
                      json={"token": link.group(1)}).status_code == 200
    tokens = httpx.post(f"{base}/api/auth/login", json={
        "email": "first@example.com", "password": DEV_PASSWORD}).json()
    headers = {"Authorization": f"Bearer {tokens['access_token']}"}

    payment_id = _buy_starter(base, headers)
    wait_for(lambda: _balance(base, headers) == 100, timeout=60, interval=0.5,
             message="the credits, through the peer's webhook and the worker")
    spent = httpx.post(f"{base}/api/user-management/credits/use", headers=headers,
                       json={"credits": 10, "endpoint": "/v1/first"})
    assert spent.status_code == 200 and spent.json()["balance"] == 90
    receipt = httpx.get(f"{base}/api/user-management/payments/{payment_id}/receipt",
                        headers=headers, timeout=30).json()
    assert receipt["card"] == {"brand": "visa", "last4": "4242"}

    # Killed, the peer is restarted with what it knew (the customer) and our webhook.
    peer = _child(run, "stripe")
    os.killpg(peer.pid, signal.SIGKILL)
    wait_for(lambda: _child(run, "stripe").pid != peer.pid, timeout=30, message="a new peer")
    assert "the stripe process exited unexpectedly" in run.output()
    wait_for(lambda: httpx.post(f"{base}/api/user-management/credits/purchase",
                                headers=headers, json={"package_id": "starter",
                                                       "flow": "payment_intent"},
                                timeout=30).status_code == 201,
             timeout=30, interval=0.5, message="the restarted peer to answer")
    _buy_starter(base, headers)
    wait_for(lambda: _balance(base, headers) == 190, timeout=60, interval=0.5,
             message="the second purchase's credits")

    tree = run.tree()
    run.proc.send_signal(signal.SIGTERM)
    assert run.wait() == 0, run.output()
    assert survivors(tree, dev.data_dir) == [], run.output()

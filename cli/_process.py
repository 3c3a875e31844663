"""Process and lock helpers shared by the embedded servers and ``billing dev``."""

from __future__ import annotations

import fcntl
import os
import socket
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

import psutil


class LockHeld(Exception):
    """Raised when another process holds a lock file; ``owner`` is its recorded pid, if any."""

    def __init__(self, path: Path, owner: int | None) -> None:
        super().__init__(f"{path} is locked by pid {owner if owner else 'unknown'}")
        self.path = path
        self.owner = owner


@contextmanager
def exclusive_lock(path: Path, *, wait: bool) -> Iterator[IO[str]]:
    """Hold an flock on ``path`` (recording our pid in it); raise ``LockHeld`` if not ``wait``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # "a+" so that a failed attempt does not truncate the owner's pid.
    with open(path, "a+") as fh:
        flags = fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB
        try:
            fcntl.flock(fh.fileno(), flags)
        except BlockingIOError:
            raise LockHeld(path, _read_pid(path)) from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"{os.getpid()}\n")
        fh.flush()
        try:
            yield fh
        finally:
            fh.truncate(0)
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def read_pid_file(path: Path) -> int | None:
    """The pid on the first line of ``path``, or None when absent or unreadable."""
    return _read_pid(path)


def free_tcp_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _cwd(proc: psutil.Process) -> Path | None:
    try:
        return Path(proc.cwd())
    except (psutil.Error, OSError):
        return None


def _name(proc: psutil.Process) -> str:
    try:
        return proc.name()
    except psutil.Error:
        return ""


def process_if_ours(pid: int | None, *, name: str, cwd: Path) -> psutil.Process | None:
    """The live process ``pid`` if it is a ``name`` server working in ``cwd``, else None.

    Pid files outlive crashes and pids are recycled, so a pid alone proves nothing.
    """
    if pid is None or pid <= 0:
        return None
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return None
    except psutil.Error:
        return None
    if _name(proc).startswith(name) and _cwd(proc) == cwd:
        return proc
    return None


def processes_in(cwd: Path, *, name: str) -> list[psutil.Process]:
    """Every live ``name`` process whose working directory is ``cwd``."""
    found = []
    for proc in psutil.process_iter():
        if _name(proc).startswith(name) and _cwd(proc) == cwd:
            found.append(proc)
    return found


def terminate(procs: Iterable[psutil.Process], *, timeout: float) -> None:
    """SIGTERM ``procs``, then SIGKILL whatever is still alive after ``timeout`` seconds."""
    procs = list(procs)
    for proc in procs:
        try:
            proc.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(procs, timeout=timeout)
    for proc in alive:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=5)

"""The ``billing dev`` watchdog: when the supervisor dies, nothing it started outlives it.

``billing dev`` starts this process first, in its own session, with a pipe for stdin,
and tells it what it runs: ``child PID`` (a process group it spawned), ``gone PID`` (one
it reaped), ``server postgres|redis`` (an embedded server it started). It writes
``done`` once it has stopped everything itself. The pipe reaches end of file however
``billing dev`` ends, SIGKILL and OOM kills included (the kernel closes its end); without
``done`` first, the watchdog stops the children's groups and the embedded servers
(PostgreSQL stops its own backends), so the next ``billing dev`` finds a free port and a
free data directory. What survives a stop that kills the watchdog too, the next
``billing dev`` stops (``cli/dev.py``, the run file).
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

from cli.embedded import EmbeddedPostgres, EmbeddedRedis, EmbeddedServerError

GRACE_S = 10.0


def _alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def stop_groups(pgids: set[int], *, grace_s: float = GRACE_S) -> None:
    """SIGTERM each process group, then SIGKILL those still alive after ``grace_s``."""
    for pgid in pgids:
        if _alive(pgid):
            os.killpg(pgid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and any(_alive(p) for p in pgids):
        time.sleep(0.1)
    for pgid in pgids:
        if _alive(pgid):
            os.killpg(pgid, signal.SIGKILL)


def _say(message: str) -> None:
    print(f"billing dev (watchdog): {message}", file=sys.stderr, flush=True)


def main() -> None:
    """Read what ``billing dev`` runs until its pipe closes; clean up unless it said done."""
    for sig in (signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)  # only the end of the pipe ends us
    data_dir = Path(sys.argv[1])
    children: set[int] = set()
    servers: set[str] = set()
    done = False
    for line in sys.stdin:
        kind, _, value = line.strip().partition(" ")
        if kind == "child":
            children.add(int(value))
        elif kind == "gone":
            children.discard(int(value))
        elif kind == "server":
            servers.add(value)
        elif kind == "done":
            done = True
    if done:
        return
    _say("billing dev is gone; stopping what it started")
    stop_groups(children)
    embedded = (("redis", EmbeddedRedis(data_dir)), ("postgres", EmbeddedPostgres(data_dir)))
    for name, server in embedded:
        if name in servers:
            try:
                server.stop()
            except (EmbeddedServerError, OSError) as exc:
                _say(f"could not stop the embedded {name}: {exc}")
    _say("stopped")


if __name__ == "__main__":
    main()

"""The API's Redis client: commands issued while others are on the wire share one round trip.

The routes on the event loop check their token's revocation: a Redis round trip per request
(the spend does it in its database statement instead, and gathers its usage records in a
``logstream.UsageBuffer``). Sent one by one, each command pays redis-py's whole dispatch (a
connection from the pool, the retry wrapper, a write and a read of its own): about 40 µs of
CPU, where a command sent in a pipeline with others costs about 15 µs. ``AutoPipelineRedis``
queues each command, and each non-transactional pipeline as a unit, and sends what has
queued as one pipeline: at once when nothing is in flight, so a lone command waits for
nothing extra, and otherwise as soon as the pipeline in flight has answered. Under load one
round trip carries the commands of many requests. (ioredis calls this auto-pipelining.)

What callers see does not change: each command gets its own reply or its own error, each
pipeline its list of replies, in the order they were issued, on one connection. Two
differences:

- A command is queued when it is called, not when it is awaited: its future can be left
  unawaited, with its reply read in a callback.
- A connection lost mid-pipeline fails every command of that pipeline (after redis-py's own
  retries), as it would have failed each of them alone.

Blocking commands (``BLPOP``, ``XREAD ... BLOCK``, ...) would hold up everything queued
behind them, and a transaction (``MULTI``/``WATCH``) needs its connection to itself: those go
out as redis-py sends them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import redis.asyncio
from redis.asyncio.client import Pipeline
from redis.exceptions import ResponseError

# Commands that may wait on the server: never queued behind others, never ahead of them.
_BLOCKING = frozenset({
    "BLPOP", "BRPOP", "BRPOPLPUSH", "BLMOVE", "BLMPOP", "BZPOPMIN", "BZPOPMAX", "BZMPOP",
    "XREAD", "XREADGROUP", "WAIT", "WAITAOF",
})

_Command = tuple[tuple[Any, ...], Mapping[str, Any]]
# A unit: its commands, the future of its replies, and whether it is one command (whose
# future gets the reply, or raises its error) or a pipeline (whose future gets the list).
_Unit = tuple[list[_Command], "asyncio.Future[Any]", bool]


class AutoPipelineRedis(redis.asyncio.Redis):
    """``redis.asyncio.Redis`` whose commands are pipelined automatically (module docstring)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._queued: list[_Unit] = []
        self._sender: asyncio.Task[None] | None = None
        self.round_trips = 0  # pipelines sent, for tests and benchmarks

    def execute_command(self, *args: Any, **options: Any) -> Any:
        """Queue the command now; the returned future has its reply (or raises its error)."""
        name = args[0].decode() if isinstance(args[0], bytes) else args[0]
        if name.upper() in _BLOCKING:
            return asyncio.ensure_future(super().execute_command(*args, **options))
        return self._queue([(args, options)], single=True)

    def pipeline(self, transaction: bool = True, shard_hint: str | None = None) -> Pipeline:
        """A pipeline; without ``transaction``, one whose ``execute`` joins the queue."""
        if transaction:
            return super().pipeline(transaction, shard_hint)
        return _QueuedPipeline(self)

    def _queue(self, commands: list[_Command], *, single: bool) -> asyncio.Future[Any]:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queued.append((commands, future, single))
        if self._sender is None:
            self._sender = asyncio.create_task(self._send_queued())
        return future

    async def _send_queued(self) -> None:
        try:
            while self._queued:
                units, self._queued = self._queued, []
                await self._send(units)
        finally:
            self._sender = None

    async def _send(self, units: list[_Unit]) -> None:
        pipe = super().pipeline(transaction=False)
        for commands, _, _ in units:
            for args, options in commands:
                pipe.pipeline_execute_command(*args, **options)
        self.round_trips += 1
        try:
            replies = await pipe.execute(raise_on_error=False)  # resets the pipeline
        except asyncio.CancelledError:
            for _, future, _ in units:
                future.cancel()
            raise
        except Exception as exc:  # every command of the pipeline failed with it
            for _, future, _ in units:
                if not future.done():
                    future.set_exception(exc)
            return
        start = 0
        for commands, future, single in units:
            mine, start = replies[start:start + len(commands)], start + len(commands)
            if future.done():  # its caller went away (cancelled)
                continue
            if not single:
                future.set_result(mine)
            elif isinstance(mine[0], ResponseError):
                future.set_exception(mine[0])
            else:
                future.set_result(mine[0])

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        """Send what is queued, then close."""
        while self._sender is not None:
            await asyncio.shield(self._sender)
        await super().aclose(close_connection_pool)


class _QueuedPipeline(Pipeline):
    """A non-transactional pipeline of ``AutoPipelineRedis``: its commands go out as one unit
    of the client's queue, in one round trip with whatever else is queued."""

    def __init__(self, client: AutoPipelineRedis) -> None:
        super().__init__(client.connection_pool, client.response_callbacks, False, None)
        self._client = client

    async def execute(self, raise_on_error: bool = True) -> list[Any]:
        if self.watching or self.explicit_transaction or self.scripts:
            return await super().execute(raise_on_error)
        commands, self.command_stack = self.command_stack, []
        if not commands:
            return []
        replies: list[Any] = await self._client._queue(commands, single=False)
        if raise_on_error:
            self.raise_first_error(commands, replies)
        return replies

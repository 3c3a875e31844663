"""The API's auto-pipelining Redis client (services/autopipeline.py), against the real Redis."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import redis.asyncio
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from bench.load import free_port
from services.autopipeline import AutoPipelineRedis


def _run(settings: Any, body: Callable[[AutoPipelineRedis, str], Awaitable[None]],
         url: str | None = None) -> None:
    """``body(client, prefix)`` on a fresh client and event loop; the test's keys removed."""
    prefix = f"autopipeline-test:{uuid.uuid4().hex}:"

    async def main() -> None:
        client = AutoPipelineRedis.from_url(url or settings.redis_url, socket_timeout=2,
                                            socket_connect_timeout=1)
        try:
            await body(client, prefix)
        finally:
            if url is None:
                keys = [k async for k in client.scan_iter(match=prefix + "*")]
                if keys:
                    await client.delete(*keys)
            await client.aclose()

    asyncio.run(main())


def test_commands_issued_together_share_round_trips_and_keep_their_own_replies(settings):
    async def body(client: AutoPipelineRedis, prefix: str) -> None:
        await client.set(prefix + "seen", "1")
        before = client.round_trips
        replies = await asyncio.gather(*(
            client.exists(prefix + ("seen" if n % 2 else "unseen")) for n in range(50)
        ), *(client.incr(prefix + "count") for _ in range(50)))
        assert replies[:50] == [n % 2 for n in range(50)]
        assert sorted(replies[50:]) == list(range(1, 51))  # every INCR applied once
        # All 100 were queued before the first went out: one round trip, maybe two.
        assert client.round_trips - before <= 2

    _run(settings, body)


def test_a_failing_command_fails_alone_and_order_is_kept(settings):
    async def body(client: AutoPipelineRedis, prefix: str) -> None:
        key = prefix + "k"
        results = await asyncio.gather(
            client.set(key, "text"), client.incr(key), client.append(key, "!"), client.get(key),
            return_exceptions=True,
        )
        assert results[0] is True
        assert isinstance(results[1], ResponseError)  # not an integer: that command only
        assert results[2] == 5 and results[3] == b"text!"  # issued after it, applied after it

    _run(settings, body)


def test_a_plain_pipeline_joins_the_queue_and_a_transaction_does_not(settings):
    async def body(client: AutoPipelineRedis, prefix: str) -> None:
        stream, kick = prefix + "stream", prefix + "kick"

        async def hand_off() -> list[Any]:
            pipe = client.pipeline(transaction=False)
            pipe.xadd(stream, {"r": "x"})
            pipe.set(kick, "1", nx=True, ex=5)
            return await pipe.execute()

        before = client.round_trips
        handed = await asyncio.gather(*(hand_off() for _ in range(20)),
                                      client.exists(kick))
        assert [kicked for _, kicked in handed[:20]].count(True) == 1  # SET NX: the first only
        assert client.round_trips - before <= 2
        assert await client.xlen(stream) == 20

        failing = client.pipeline(transaction=False)
        failing.set(prefix + "n", "text").incr(prefix + "n")
        with pytest.raises(ResponseError):
            await failing.execute()
        kept = client.pipeline(transaction=False)
        kept.incr(prefix + "n").get(prefix + "n")
        replies = await kept.execute(raise_on_error=False)
        assert isinstance(replies[0], ResponseError) and replies[1] == b"text"

        before = client.round_trips
        async with client.pipeline(transaction=True) as tx:
            tx.incr(prefix + "tx").incr(prefix + "tx")
            assert await tx.execute() == [1, 2]  # MULTI/EXEC on a connection of its own
        assert client.round_trips == before

    _run(settings, body)


def test_blocking_commands_hold_up_nothing_queued(settings):
    async def body(client: AutoPipelineRedis, prefix: str) -> None:
        waiting = asyncio.ensure_future(client.blpop([prefix + "list"], timeout=2))
        await asyncio.sleep(0.05)
        # Queued while BLPOP waits on the server: answered at once, not after its 2 s.
        assert await asyncio.wait_for(client.rpush(prefix + "list", "a"), timeout=0.5) == 1
        assert tuple(await asyncio.wait_for(waiting, timeout=2)) == (prefix.encode() + b"list", b"a")

    _run(settings, body)


def test_a_cancelled_caller_leaves_the_others_their_replies(settings):
    async def body(client: AutoPipelineRedis, prefix: str) -> None:
        first = asyncio.ensure_future(client.incr(prefix + "n"))
        second = asyncio.ensure_future(client.incr(prefix + "n"))
        first.cancel()
        assert await second in (1, 2)
        assert await client.get(prefix + "n") == b"2"  # queued at the call: both went out

    _run(settings, body)


def test_closing_sends_what_is_queued_first(settings):
    prefix = f"autopipeline-test:{uuid.uuid4().hex}:"

    async def main() -> None:
        client = AutoPipelineRedis.from_url(settings.redis_url)
        queued = [client.set(prefix + str(n), n) for n in range(10)]
        await client.aclose()
        assert [f.result() for f in queued] == [True] * 10

    asyncio.run(main())

    async def check() -> None:
        plain = redis.asyncio.Redis.from_url(settings.redis_url)
        try:
            assert await plain.mget([prefix + str(n) for n in range(10)]) == [
                str(n).encode() for n in range(10)]
            await plain.delete(*(prefix + str(n) for n in range(10)))
        finally:
            await plain.aclose()

    asyncio.run(check())


def test_redis_unreachable_fails_every_waiter_instead_of_hanging(settings):
    async def body(client: AutoPipelineRedis, prefix: str) -> None:
        results = await asyncio.wait_for(asyncio.gather(
            *(client.exists(prefix + str(n)) for n in range(5)), return_exceptions=True,
        ), timeout=20)
        assert all(isinstance(r, RedisConnectionError) for r in results)

    _run(settings, body, url=f"redis://127.0.0.1:{free_port()}/0")

"""The send steps' own link (gateway.store.sendlink) on a real redis-server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from gateway.errors import Unavailable
from gateway.protocol import parse_stream_id
from gateway.store import Keys, ModerationLimits, SendResult, Store, make_redis
from gateway.store.messages import LINK_BATCH_MAX
from gateway.store.sendlink import SendLink
from tests.support import Outcomes, RedisServer


@pytest.fixture
async def client(own_redis: list[RedisServer]) -> AsyncIterator[Redis]:
    redis = make_redis(own_redis[0].url)
    yield redis
    await redis.aclose(close_connection_pool=True)  # the link's connection with it


async def test_replies_come_in_order_an_error_among_them(client: Redis) -> None:
    link = SendLink(client)
    got = await link.run(
        [
            ["SET", "t:a", "1"],
            ["INCR", "t:a"],
            ["EVALSHA", "0" * 40, 0],  # no such script
            ["LPUSH", "t:a", "x"],  # the wrong type
            ["GET", "t:a"],
        ]
    )
    assert got[:2] == ["OK", 2]
    assert isinstance(got[2], NoScriptError)
    assert isinstance(got[3], ResponseError) and "WRONGTYPE" in str(got[3])
    assert got[4] == "2"  # the replies after the errors are still in step
    # Batches from many callers at once: one at a time, each with its own replies.
    many = await asyncio.gather(*(link.run([["INCR", "t:n"], ["GET", "t:n"]]) for _ in range(50)))
    assert sorted(int(value) for _, value in many) == list(range(1, 51))
    assert all(str(n) == value for n, value in many)
    await link.close()


async def test_a_stalled_redis_fails_the_batch_in_time_and_the_next_reconnects(
    client: Redis, own_redis: list[RedisServer]
) -> None:
    link = SendLink(client, timeout_s=0.5)
    assert await link.run([["PING"]]) == ["PONG"]
    own_redis[0].pause()
    try:
        with pytest.raises(RedisTimeoutError):
            await link.run([["INCR", "t:stalled"]])
    finally:
        own_redis[0].resume()
    # The late reply went with the closed connection: the next batch is not misread.
    assert await link.run([["SET", "t:after", "x"], ["GET", "t:after"]]) == ["OK", "x"]


async def test_a_killed_connection_fails_its_batch_once_and_never_resends(
    client: Redis, own_redis: list[RedisServer]
) -> None:
    """redis-py would send the batch again on a fresh connection; a send without a
    client id would then be stored twice. Here the batch fails (the client's retry
    carries its cid) and the next one goes on a new connection."""
    link = SendLink(client)
    assert await link.run([["CLIENT", "SETNAME", "sendlink"]]) == ["OK"]
    async with Redis.from_url(own_redis[0].url, decode_responses=True) as admin:
        killed = await admin.execute_command("CLIENT", "KILL", "SKIPME", "yes", "TYPE", "normal")
        assert killed >= 1
    with pytest.raises(RedisConnectionError):
        await link.run([["INCR", "t:once"]])
    assert await link.run([["INCR", "t:once"]]) == [1]  # the failed one never ran twice


async def test_the_store_sends_by_the_link_and_reloads_a_lost_script(client: Redis) -> None:
    store = Store(client, Keys("t"))
    assert store.messages.link is not None
    first = await store.send("ann", "#general", "#general", "one")
    await client.script_flush()  # Redis restarted empty, as far as scripts go
    second = await store.send("ann", "#general", "#general", "two")
    texts = [m.text for m in await store.messages.read_last("#general", 10)]
    assert texts == ["one", "two"] and first.id < second.id
    await store.close()


async def test_send_now_queues_only_what_the_caches_let_through_in_order(
    client: Redis, own_redis: list[RedisServer]
) -> None:
    store = Store(client, Keys("t"), moderation=ModerationLimits(rate_limit=20))
    outcomes = Outcomes()
    await store.accounts.login("Bob", "pw")
    await store.accounts.login("amy", "pw")
    # Not yet: amy's standing (not banned) was never looked up in this process.
    assert not store.send_now("amy", "bob", "hi", None, outcomes)
    await store.send("amy", "#general", "#general", "first")  # asks Redis; counts, too
    fresh = Store(client, Keys("t"))
    await fresh.send("amy", "dm:amy:bob", "Bob", "from another store")
    assert not fresh.send_now("amy", "bob", "hi", None, outcomes)  # Bob's name: unknown
    # Known: her standing and Bob's name. A public room's quota, another room's
    # membership: never without Redis.
    await store.resolve("amy", "bob")
    assert not store.send_now("amy", "#general", "hi", None, outcomes)
    assert not store.send_now("amy", "#side", "hi", None, outcomes)
    assert outcomes.items == []
    await store.admit("amy", "dm:amy:bob", None)  # her standing, fresh (kept half a second)
    for i in range(30):
        target = ("BOB", "bob", "bOb")[i % 3]  # one route, however the name is typed
        assert store.send_now("amy", target, f"m{i}", f"c{i % 20}", outcomes)
    assert sorted(store._routes) == [("amy", "#general"), ("amy", "bob")]
    got = await outcomes.wait(30)
    assert all(isinstance(o, SendResult) for o in got)
    ids = [o.id for o in got]
    # In the order queued; the last ten reuse a cid: retries, answered with the first id.
    assert ids[20:] == ids[:10] and ids[:20] == sorted(ids[:20], key=parse_stream_id)
    stored = await store.messages.read_last("dm:amy:bob", 50)
    assert [m.text for m in stored] == ["from another store"] + [f"m{i}" for i in range(20)]
    assert [m.to for m in stored[1:]] == ["Bob"] * 20  # the display name, whatever was typed
    # Redis stalls: every queued send hears of it in time, as unavailable.
    outcomes = Outcomes()
    assert store.messages.link is not None
    store.messages.link.timeout_s = 0.5
    own_redis[0].pause()
    try:
        assert store.send_now("amy", "bob", "lost?", None, outcomes)
        (lost,) = await outcomes.wait(1, timeout=5)
    finally:
        own_redis[0].resume()
    assert isinstance(lost, Unavailable)
    store.forget_cached()  # Redis restarted and may have lost names: asked again
    assert not store.send_now("amy", "bob", "hi", None, outcomes)
    await store.close()
    await fresh.close()


async def test_a_long_queue_goes_in_bounded_batches_in_order(client: Redis) -> None:
    """However many sends wait, a batch holds at most LINK_BATCH_MAX of them, so its
    time in Redis stays far below the link's timeout; the rest follow in order."""
    store = Store(client, Keys("t"))
    link = store.messages.link
    assert link is not None
    sizes: list[int] = []
    run = link.run

    async def spy(commands: Sequence[Sequence[Any]]) -> list[Any]:
        sizes.append(len(commands))
        return await run(commands)

    link.run = spy  # type: ignore[method-assign]
    await store.accounts.login("zed", "pw")
    await store.send("zed", "#general", "#general", "first")  # zed's standing, looked up
    sizes.clear()
    outcomes = Outcomes()
    count = 2 * LINK_BATCH_MAX + 10
    for i in range(count):
        assert store.send_now("zed", "#general", f"m{i}", None, outcomes)
    got = await outcomes.wait(count, timeout=30)
    assert sizes == [LINK_BATCH_MAX, LINK_BATCH_MAX, 10]
    ids = [o.id for o in got]
    assert ids == sorted(ids, key=parse_stream_id) and len(set(ids)) == count
    await store.close()

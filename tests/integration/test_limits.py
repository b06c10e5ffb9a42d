"""Limits and subscriptions that had no test before the reshape (issue 8)."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from client.connection import ChatError, Connection
from gateway.errors import Unavailable
from gateway.store import Keys, LoginLimits, Store, dm_conversation
from gateway.store.cursors import MAX_DIRECT
from tests.support import Deployment, RedisServer, running
from tests.unit.test_session import live_session


async def test_connections_per_address_are_capped(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    extra = ["--max-connections-per-ip", "2"]
    async with running(Deployment(redis_server, tmp_path, gateways=1, extra=extra)) as dep:
        first, second = await dep.login("ann"), await dep.login("ben")
        third = await Connection.open("127.0.0.1", dep.port)
        with pytest.raises((ChatError, ConnectionError)) as err:
            await third.login("cat", "pw", timeout=5)
        if isinstance(err.value, ChatError):
            assert err.value.code == "forbidden"
        await third.close()
        await second.close()
        await asyncio.sleep(0.2)
        fourth = await dep.login("dan")  # a freed slot is usable again
        await fourth.ping()
        await first.ping()


async def test_replay_past_the_cap_says_so_and_shows_the_newest(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    async with running(
        Deployment(redis_server, tmp_path, gateways=1, extra=["--replay-max", "50"])
    ) as dep:
        r = aioredis.Redis.from_url(redis_server.url, decode_responses=True)
        store = Store(r, Keys(dep.prefix), login=LoginLimits(scrypt_n=1024))
        await store.send("wri", "#general", "#general", "seen")
        reader = await dep.login("rea")
        await reader.close()
        await asyncio.sleep(0.7)  # its #general cursor is saved
        ids = [(await store.send("wri", "#general", "#general", f"n{i}")).id for i in range(120)]
        await r.aclose()
        conn = await dep.connect()
        result = await conn.login("rea", "pw")
        assert result.welcome["unread"]["#general"] == 51  # counted up to the cap + 1
        assert [m["id"] for m in result.replayed] == ids[-50:]


async def test_the_hub_unsubscribes_when_the_last_local_session_leaves(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    async with running(Deployment(redis_server, tmp_path, gateways=1)) as dep:
        r = aioredis.Redis.from_url(redis_server.url, decode_responses=True)
        channel = Keys(dep.prefix).user_channel("uma")

        async def subscribers() -> int:
            return int((await r.pubsub_numsub(channel))[0][1])

        a, b = await dep.login("uma"), await dep.login("uma")
        assert await subscribers() == 1  # one subscription per process, not per session
        await a.close()
        await asyncio.sleep(0.3)
        assert await subscribers() == 1
        await b.close()
        for _ in range(50):
            if await subscribers() == 0:
                break
            await asyncio.sleep(0.05)
        assert await subscribers() == 0
        # Leave and join again at once, many times: each join is live when it returns.
        for i in range(10):
            c = await dep.login("uma")
            assert await subscribers() == 1
            sender = await dep.login(f"s{i}")
            await sender.send("uma", f"hello {i}")
            got = await c.messages(1, timeout=5)
            assert got[0]["text"] == f"hello {i}"
            await c.close()
            await sender.close()
        await r.aclose()


async def test_a_bug_is_logged_as_one_and_an_outage_is_unavailable(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import gateway.net.session as session_module

    session, transport = live_session(None)

    async def broken(ctx: object, cmd: object, hint: str = "") -> None:
        raise OSError("a bug that happens to be an OSError")

    monkeypatch.setattr(session_module, "dispatch", broken)
    with caplog.at_level(logging.ERROR, logger="redchat.session"):
        session.data_received(b'{"op":"status","rid":1}\n')
        await asyncio.sleep(0.05)
    assert transport.events()[-1]["code"] == "internal"
    assert any(r.exc_info for r in caplog.records), "a bug is logged with its traceback"

    async def down(ctx: object, cmd: object, hint: str = "") -> None:
        raise Unavailable("Redis unreachable")

    monkeypatch.setattr(session_module, "dispatch", down)
    session.data_received(b'{"op":"status","rid":2}\n')
    await asyncio.sleep(0.05)
    assert transport.events()[-1]["code"] == "unavailable"


async def test_login_and_status_read_a_bounded_number_of_conversations(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """Issue 9.9: a user with thousands of direct conversations logs in and asks for
    status with a bounded number of stream reads (the most recently active
    conversations are looked at), not two for every conversation ever had."""
    async with running(Deployment(redis_server, tmp_path, gateways=1)) as dep:
        r = aioredis.Redis.from_url(redis_server.url, decode_responses=True)
        k = Keys(dep.prefix)
        owner = await dep.login("many")
        await owner.close()
        then = int(time.time() * 1000) - 10 * 60_000  # ten minutes ago: quiet since
        async with r.pipeline(transaction=False) as pipe:
            for i in range(3000):
                conv = dm_conversation("many", f"p{i:04}")
                sid = f"{then + i}-0"
                pipe.xadd(k.stream(conv), {"from": f"p{i:04}", "to": "many", "text": "hi",
                                           "n": "1"}, id=sid)  # fmt: skip
                pipe.set(k.seq(conv), 1)
                pipe.zadd(k.conversations("many"), {conv: then + i})
                pipe.hset(k.cursors("many"), conv, sid)
            pipe.xadd(k.stream(dm_conversation("many", "new")), {"from": "new", "to": "many",
                      "text": "unread", "n": "1"})  # fmt: skip
            pipe.zadd(k.conversations("many"), {dm_conversation("many", "new"): then + 600_000})
            await pipe.execute()
        await r.config_resetstat()
        conn = await dep.connect()
        result = await conn.login("many", "pw")
        assert result.welcome["unread"] == {"new": 1}
        assert [m["text"] for m in result.replayed] == ["unread"]
        status = await conn.status()
        assert status["unread"] == {}
        stats = await r.info("commandstats")
        reads = sum(stats.get(f"cmdstat_{c}", {}).get("calls", 0) for c in ("xrange", "xrevrange"))
        # 2 reads per conversation looked at, for the login and the status: at most
        # MAX_DIRECT of the 3001 direct ones (every one of them would be over 12,000).
        assert reads <= 2 * 2 * (MAX_DIRECT + 2), reads
        await r.aclose()

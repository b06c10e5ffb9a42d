"""Fixtures of the unit tests."""

from __future__ import annotations

from collections.abc import AsyncIterator

import fakeredis
import pytest
from redis.asyncio import Redis

from gateway.store import make_redis
from tests.support import RedisServer


@pytest.fixture(params=["fakeredis", "redis-server", "redis-cluster"])
async def redis(
    request: pytest.FixtureRequest, redis_server: RedisServer
) -> AsyncIterator[fakeredis.FakeAsyncRedis]:
    """Each store test runs on fakeredis, on a real redis-server (the tests' own, on a
    free port): fakeredis' Lua and streams can differ from Redis'; and on a real
    Redis Cluster of 3 primaries (skipped without redis-server 7), where a script or
    a MULTI that spans two slots is refused."""
    if request.param == "fakeredis":
        r = fakeredis.FakeAsyncRedis(decode_responses=True)
    elif request.param == "redis-cluster":
        cluster = request.getfixturevalue("redis_cluster")
        r = make_redis(cluster.url, cluster=True)
        await r.initialize()  # type: ignore[attr-defined]
        stale = [key async for key in r.scan_iter(match="t:*")]
        for key in stale:
            await r.delete(key)
    else:
        r = Redis.from_url(redis_server.url, decode_responses=True)
        stale = [key async for key in r.scan_iter(match="t:*")]  # this module's prefix only
        if stale:
            await r.delete(*stale)
    yield r
    await r.aclose()

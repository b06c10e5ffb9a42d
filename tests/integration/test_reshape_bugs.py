"""Bugs found by using redchat from outside (issue 8), each reproduced end to end."""

from __future__ import annotations

import asyncio
import json
import socket
import struct
from pathlib import Path
from typing import Any

import fakeredis
import redis.asyncio as aioredis

from gateway.store import Keys, LoginLimits, Store
from tests.support import Deployment, RedisServer, running


async def raw_lines(
    port: int, lines: list[dict[str, Any]], timeout: float = 10.0
) -> list[dict[str, Any]]:
    """Send JSON lines, half-close (as `printf ... | nc -q 1` does), read until EOF."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"".join(json.dumps(line).encode() + b"\n" for line in lines))
    await writer.drain()
    writer.write_eof()
    data = await asyncio.wait_for(reader.read(), timeout)
    writer.close()
    return [json.loads(x) for x in data.splitlines() if x]


async def test_a_half_closed_connection_gets_every_line_answered(deployment: Deployment) -> None:
    for i in range(6):
        got = await raw_lines(
            deployment.port,
            [
                {"op": "login", "user": f"nc{i}", "password": "pw", "rid": 1},
                {"op": "send", "to": "#general", "text": f"from nc {i}", "rid": 2},
                {"op": "status", "rid": 3},
            ],
        )
        kinds = [(ev["type"], ev.get("rid")) for ev in got if ev["type"] != "message"]
        assert kinds == [("welcome", 1), ("synced", 1), ("ack", 2), ("status", 3)], got
    watcher = await deployment.login("watcher")
    texts = [
        m["text"] for m in (await watcher.request("history", **{"with": "#general"}))["messages"]
    ]
    assert [f"from nc {i}" for i in range(6)] == [t for t in texts if t.startswith("from nc")]


async def test_a_cancelled_sender_does_not_stall_the_others_in_its_batch() -> None:
    redis = fakeredis.FakeAsyncRedis(decode_responses=True)
    store = Store(redis, Keys("t"), login=LoginLimits(scrypt_n=1024))
    stay = [
        asyncio.create_task(store.send(f"u{i}", "#general", "#general", "x")) for i in range(20)
    ]
    gone = [
        asyncio.create_task(store.send(f"g{i}", "#general", "#general", "y")) for i in range(20)
    ]
    await asyncio.sleep(0)  # every send is queued for the same batch
    for task in gone:
        task.cancel()  # as when their connections reset
    results = await asyncio.wait_for(asyncio.gather(*stay), 5)
    assert len({r.id for r in results}) == 20
    later = await asyncio.wait_for(store.send("u0", "#general", "#general", "again"), 5)
    assert later.id > results[-1].id
    await redis.aclose()


async def test_senders_resetting_mid_batch_do_not_stall_other_clients(
    deployment: Deployment,
) -> None:
    stayers = [await deployment.login(f"stay{i}") for i in range(20)]
    leavers = []
    for i in range(20):
        reader, writer = await asyncio.open_connection("127.0.0.1", deployment.port)
        writer.write(
            json.dumps({"op": "login", "user": f"leave{i}", "password": "pw"}).encode() + b"\n"
        )
        await writer.drain()
        while b'"synced"' not in await asyncio.wait_for(reader.readline(), 10):
            pass
        leavers.append(writer)
    line = json.dumps({"op": "send", "to": "#general", "text": "bye"}).encode() + b"\n"
    for writer in leavers:
        writer.write(line)
    sends = [asyncio.create_task(c.send("#general", "still here")) for c in stayers]
    for writer in leavers:  # reset at once: SO_LINGER 0 sends RST
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()
    ids = await asyncio.wait_for(asyncio.gather(*sends), 15)
    assert len(set(ids)) == 20
    pongs = await asyncio.wait_for(asyncio.gather(*(c.request("ping") for c in stayers)), 10)
    assert all(p["type"] == "pong" for p in pongs)


async def test_status_never_counts_through_history(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """Unread counts are two single-entry reads per conversation, whatever the history."""
    async with running(Deployment(redis_server, tmp_path, gateways=1)) as dep:
        alice = await dep.login("alice")
        bob = await dep.login("bob")
        await bob.close()
        r = aioredis.Redis.from_url(redis_server.url, decode_responses=True)
        store = Store(r, Keys(dep.prefix), login=LoginLimits(scrypt_n=1024))
        for i in range(0, 3000, 500):
            await asyncio.gather(
                *(store.send("alice", "dm:alice:bob", "bob", f"m{j}") for j in range(i, i + 500))
            )
        await r.config_set("slowlog-log-slower-than", 0)
        await r.config_set("slowlog-max-len", 100000)
        await r.slowlog_reset()
        bob = await dep.connect()
        welcome = (await bob.login("bob", "pw")).welcome
        assert welcome["unread"]["alice"] == 3000  # exact, not capped
        assert (await bob.request("status"))["type"] == "status"
        counts = []
        for entry in await r.slowlog_get(1000):
            command = entry["command"]
            text = command.decode() if isinstance(command, bytes) else str(command)
            args = [a.upper() for a in text.split()]
            if args and args[0] in ("XRANGE", "XREVRANGE") and "COUNT" in args:
                counts.append(int(args[args.index("COUNT") + 1]))
        await r.config_set("slowlog-log-slower-than", 10000)
        assert counts, [e["command"] for e in (await r.slowlog_get(20))]
        assert max(counts) <= 201, counts  # pages and single entries, never the whole history
        await alice.close()
        await r.aclose()


async def test_unread_is_replayed_in_time_order_across_conversations(
    deployment: Deployment,
) -> None:
    amy = await deployment.login("amy")
    await amy.close()
    senders = [await deployment.login(name) for name in ("bo", "cy")]
    ids = []
    for i in range(6):
        ids.append(await senders[i % 2].send("amy", f"dm {i}"))
        ids.append(await senders[i % 2].send("#general", f"pub {i}"))
    conn = await deployment.connect()
    result = await conn.login("amy", "pw")
    got = [m for m in result.replayed if m["text"].startswith(("dm ", "pub "))]
    assert [m["id"] for m in got] == ids

"""A client that stops reading never delays the others, and resumes later without loss.

One client logs in and then never reads, while others receive 10,000 messages. The
others get every one; the stalled client is cut off with ``slow_consumer`` once its
outbox passes ``--max-outbox-bytes``; the gateway's memory stays bounded; later the
stalled client resumes from the last message it actually read and misses nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, cast

import pytest

from gateway.store import Store
from gateway.store.keys import GENERAL, Keys
from tests.integration.faults import (
    Member,
    log_count,
    redis_client,
    rss_kib,
    stream_ids,
    wait_delivered,
    wait_log,
)
from tests.support import Deployment, RedisServer, running

FLOOD = 10_000
TEXT_CHARS = 1000
OUTBOX = 512 * 1024


@pytest.fixture
def flood_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """Its own server, so that the flood's history does not stay in the shared one."""
    server = RedisServer(tmp_path / "redis").start()
    yield server
    server.stop()


@pytest.fixture
async def dep(flood_redis: RedisServer, tmp_path: Path) -> AsyncIterator[Deployment]:
    async with running(
        Deployment(flood_redis, tmp_path, extra=["--max-outbox-bytes", str(OUTBOX)])
    ) as d:
        yield d


class Stalled:
    """A JSON-lines client that logs in, then stops reading (a tiny receive buffer too)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.messages: list[dict[str, Any]] = []
        self.error: dict[str, Any] | None = None

    @classmethod
    async def open_on(cls, dep: Deployment, gateway: str, user: str) -> Stalled:
        for _ in range(60):
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.setblocking(False)
            await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", dep.port))
            reader, writer = await asyncio.open_connection(sock=sock, limit=1 << 20)
            client = cls(reader, writer)
            writer.write(json.dumps({"op": "login", "user": user, "password": "pw"}).encode())
            writer.write(b"\n")
            welcome = await client.read_until("welcome")
            await client.read_until("synced")
            if welcome["gateway"] == gateway:
                cast(asyncio.Transport, writer.transport).pause_reading()
                return client
            await client.close()
        raise AssertionError(f"never landed on {gateway}")

    async def read_until(self, kind: str) -> dict[str, Any]:
        while True:
            ev = json.loads(await asyncio.wait_for(self.reader.readline(), 10))
            if ev["type"] == kind:
                return dict(ev)

    async def read_rest(self) -> None:
        """Read again until the server's close, keeping messages and its last word."""
        cast(asyncio.Transport, self.writer.transport).resume_reading()
        while True:
            try:
                line = await asyncio.wait_for(self.reader.readline(), 20)
            except (ConnectionError, asyncio.IncompleteReadError):
                return
            if not line.endswith(b"\n"):
                return  # EOF, or a line cut off by the reset
            ev = json.loads(line)
            if ev["type"] == "message":
                self.messages.append(ev)
            elif ev["type"] == "error":
                self.error = ev

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError):
            await self.writer.wait_closed()


async def flood(url: str, prefix: str, count: int, lanes: int = 32) -> None:
    """``count`` messages to #general through the gateways' own send step (Lua script),
    from this process: the receiving side is what is under test, and this is fast."""
    text = "x" * TEXT_CHARS
    numbers = iter(range(count))
    async with redis_client(url) as r:
        store = Store(r, Keys(prefix))

        async def lane() -> None:
            for i in numbers:
                await store.send("flood", GENERAL, GENERAL, f"{i} {text}")

        await asyncio.gather(*(lane() for _ in range(lanes)))


async def chat(m: Member, count: int) -> None:
    """Meanwhile a client on the stalled client's gateway is served as usual."""
    for i in range(count):
        await m.send(GENERAL, f"still here {i}", cid=f"{m.user}-{i}", timeout=60)


@pytest.mark.timeout(120)
async def test_stalled_client_is_cut_others_get_everything(dep: Deployment) -> None:
    gw1, _ = dep.gateways
    fast = [Member(dep, "ann"), Member(dep, "ben")]
    await fast[0].join("gw1")
    await fast[1].join("gw2")
    sloth = await Stalled.open_on(dep, "gw1", "sloth")
    await fast[0].send(GENERAL, "warm up", cid="warm")
    await wait_delivered(fast, 10)
    baseline = rss_kib(gw1.pid)
    peak = baseline

    async def watch_memory() -> None:
        nonlocal peak
        while True:
            peak = max(peak, rss_kib(gw1.pid))
            await asyncio.sleep(0.05)

    watcher = asyncio.create_task(watch_memory())
    try:
        await asyncio.gather(flood(dep.redis.url, dep.prefix, FLOOD), chat(fast[0], 50))
        await wait_delivered(fast, 60)
        all_ids = await stream_ids(dep.redis.url, dep.prefix, GENERAL)
        deadline = asyncio.get_running_loop().time() + 60
        while any(len(m.received) < len(all_ids) for m in fast):
            assert asyncio.get_running_loop().time() < deadline, "the others did not get all"
            await asyncio.sleep(0.1)
    finally:
        watcher.cancel()
    assert len(all_ids) == FLOOD + 51
    for m in fast:
        assert [str(msg["id"]) for msg in m.received] == all_ids
    await wait_log(gw1, "slow_consumer user=sloth")
    assert log_count(gw1, "slow_consumer") == 1, "one cut, logged once"
    flood_mib = FLOOD * TEXT_CHARS / 2**20
    grown_mib = (peak - baseline) / 1024
    print(f"gw1 RSS {baseline} -> {peak} KiB (+{grown_mib:.1f} MiB, flood {flood_mib:.1f} MiB)")
    assert grown_mib < flood_mib / 2, "the gateway kept the flood for the stalled client"

    # Later, the stalled client reads what reached it, then resumes from there.
    await sloth.read_rest()
    got = [str(m["id"]) for m in sloth.messages]
    assert got == all_ids[: len(got)], "what reached the stalled client is in order"
    assert len(got) < len(all_ids), "it was cut off before the end"
    resumed = Member(dep, "sloth")
    if got:
        resumed.seen[GENERAL] = got[-1]
    await resumed.join()
    rest = [str(m["id"]) for m in resumed.received]
    assert got + rest == all_ids
    await sloth.close()


async def test_long_backlog_of_big_messages_is_paced_not_cut(dep: Deployment) -> None:
    """Replaying a backlog several times the outbox bound waits for the client to
    read; a client that reads is never taken for a slow consumer."""
    reader = Member(dep, "reader")
    await reader.join()
    first = await reader.send(GENERAL, "see you later", cid="bye")
    await wait_delivered([reader], 5)
    await reader.drop()
    text = "é" * 4000  # 8 KB a message: 200 of them are three times the outbox
    async with redis_client(dep.redis.url) as r:
        store = Store(r, Keys(dep.prefix))
        ids = [(await store.send("writer", GENERAL, GENERAL, text)).id for _ in range(200)]
    assert 200 * len(text.encode()) > 3 * OUTBOX
    await reader.reconnect()
    assert [m["id"] for m in reader.received] == [first, *ids]
    assert reader.conn is not None
    await reader.conn.ping()  # still connected
    assert "slow_consumer" not in dep.logs()

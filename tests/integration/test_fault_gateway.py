"""Gateway faults, end to end: kill -9 of a gateway, graceful shutdown, retried sends.

Each test runs two real gateway processes on one port (SO_REUSEPORT) against a real
redis-server, and checks what every client received, id by id.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from client.connection import Connection
from gateway.store.keys import GENERAL, Keys
from tests.integration.faults import (
    Member,
    assert_exactly_once_in_order,
    redis_client,
    stream_ids,
    until,
    wait_delivered,
    wait_log,
)
from tests.support import Deployment, RedisServer, running

USERS = ["ann", "ben", "cat", "dan", "eve", "fay"]
PARTNER = {"ann": "ben", "ben": "ann", "cat": "dan", "dan": "cat", "eve": "fay", "fay": "eve"}


@pytest.fixture
async def dep(redis_server: RedisServer, tmp_path: Path) -> AsyncIterator[Deployment]:
    async with running(Deployment(redis_server, tmp_path)) as d:
        yield d


async def join_all(dep: Deployment) -> list[Member]:
    """Half the users on each gateway, and a first message in every conversation they
    take part in, so each knows where it stands before anything breaks."""
    members = [Member(dep, u) for u in USERS]
    for i, m in enumerate(members):
        await m.join("gw1" if i % 2 == 0 else "gw2")
    for m in members:
        await m.send(PARTNER[m.user], f"hi {PARTNER[m.user]}", cid=f"{m.user}-hello")
    await members[0].send(GENERAL, "hello all", cid="ann-general")
    await wait_delivered(members, 10)
    return members


async def chat(m: Member, count: int, start: int = 0) -> None:
    for i in range(start, start + count):
        to = PARTNER[m.user] if i % 3 == 0 else GENERAL
        await m.send(to, f"{m.user} says {i}", cid=f"{m.user}-{i}")
        await asyncio.sleep(0.01)


@pytest.mark.timeout(90)
async def test_kill_9_gateway_clients_resume_exactly_once_in_order(dep: Deployment) -> None:
    members = await join_all(dep)
    gw1, gw2 = dep.gateways
    on_gw1 = [m for m in members if m.gateway == "gw1"]
    total = 30
    chatting = [asyncio.create_task(chat(m, total)) for m in members]

    # Kill gw1 in the middle of the conversation, then bring it back as a supervisor would.
    third = len(members) * total // 3
    await until(lambda: sum(len(m.acked) for m in members) >= third, 30, "a third of the chat")
    gw1.kill()
    await asyncio.sleep(0.5)
    gw1.start()

    await asyncio.gather(*chatting)
    await wait_delivered(members, 30)

    assert all(m.logins >= 2 for m in on_gw1), "clients of the killed gateway reconnected"
    assert gw2.alive()
    assert_exactly_once_in_order(members)
    # Every acked message is stored once, and nothing else is.
    acked = {sid for m in members for sid in m.acked.values()}
    stored = set(await stream_ids(dep.redis.url, dep.prefix, GENERAL))
    for m in members:
        if m.user < PARTNER[m.user]:
            stored |= set(
                await stream_ids(dep.redis.url, dep.prefix, f"dm:{m.user}:{PARTNER[m.user]}")
            )
    assert stored == acked


async def test_retried_send_is_stored_once_across_gateways(dep: Deployment) -> None:
    alice = await dep.connect_on("gw1", "alice")
    bob = Member(dep, "bob")
    await bob.join("gw2")
    first = await alice.send(GENERAL, "only once", cid="c-1")
    assert await alice.send(GENERAL, "only once", cid="c-1") == first

    # The same retry from another connection on the other gateway, after a reconnect.
    await alice.close()
    again = await dep.connect_on("gw2", "alice")
    assert await again.send(GENERAL, "only once", cid="c-1") == first
    dm = await again.send("bob", "private, once", cid="c-1")  # same cid, other conversation
    assert dm != first
    assert await again.send("bob", "private, once", cid="c-1") == dm
    fresh = await again.send(GENERAL, "a new one", cid="c-2")
    assert fresh != first

    keys = Keys(dep.prefix)
    assert await stream_ids(dep.redis.url, dep.prefix, GENERAL) == [first, fresh]
    async with redis_client(dep.redis.url) as r:
        assert await r.xlen(keys.stream(GENERAL)) == 2
        assert await r.xlen(keys.stream("dm:alice:bob")) == 1
        assert await r.xlen(keys.log("alice")) == 3
        ttl = await r.ttl(keys.sent(GENERAL, "alice", "c-1"))
        assert 0 < ttl <= 300
    await wait_delivered([bob], 5)
    await asyncio.sleep(0.3)  # a duplicate would be on its way by now
    assert [m["id"] for m in bob.received] == [first, dm, fresh]


@pytest.mark.timeout(60)
async def test_sigterm_drains_tells_clients_and_they_move_over(dep: Deployment) -> None:
    gw1, gw2 = dep.gateways
    leaving = [Member(dep, u) for u in ("ann", "ben")]
    staying = [Member(dep, u) for u in ("cat", "dan")]
    for m in leaving:
        await m.join("gw1")
    for m in staying:
        await m.join("gw2")
    members = leaving + staying
    await chat(staying[0], 3)
    await wait_delivered(members, 10)

    # Messages keep flowing from gw2 while gw1 shuts down.
    flowing = asyncio.create_task(chat(staying[1], 20))
    await asyncio.sleep(0.05)
    assert gw1.proc is not None
    gw1.proc.send_signal(signal.SIGTERM)
    for m in leaving:
        await m.wait_closed(15)
        notices = [ev for ev in m.events if ev.get("type") == "notice"]
        assert notices and "shutting down" in notices[-1]["text"], m.events
    code = await asyncio.to_thread(gw1.proc.wait, 15)
    assert code == 0
    await wait_log(gw1, "stopped")
    # Nobody can land on the stopped gateway any more.
    for _ in range(5):
        probe = await Connection.open("127.0.0.1", dep.port)
        result = await probe.login("probe", "pw")
        assert result.welcome["gateway"] == "gw2"
        await probe.close()

    for m in leaving:
        await m.reconnect()
        assert m.gateway == "gw2"
    await flowing
    await chat(leaving[0], 3)
    await wait_delivered(members, 20)
    assert_exactly_once_in_order(members)
    assert gw2.alive()

"""Redis faults, end to end: outage, pause, a lost pub/sub link, a full restart.

Every test here starts its own redis-server (with its append-only file on), never
the session's shared one, because it stops, pauses or restarts it.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from client.connection import ChatError, Connection
from gateway.store.keys import GENERAL
from tests.integration.faults import (
    Member,
    assert_exactly_once_in_order,
    log_count,
    redis_client,
    stream_entries,
    stream_ids,
    wait_delivered,
    wait_log,
)
from tests.support import Deployment, RedisServer, running, start_worker


@pytest.fixture
async def dep(own_redis: list[RedisServer], tmp_path: Path) -> AsyncIterator[Deployment]:
    async with running(Deployment(own_redis[0], tmp_path)) as d:
        yield d


def restart_redis(holder: list[RedisServer]) -> RedisServer:
    """A new redis-server on the same port and files, as after a crash and restart."""
    old = holder[-1]
    new = RedisServer(old.workdir, persist=True, port=old.port).start()
    holder.append(new)
    return new


async def expect_unavailable(conn: Connection, to: str, text: str, cid: str) -> None:
    """The send fails with ``unavailable``; the generous bound only catches a hang."""
    with pytest.raises(ChatError) as err:
        await asyncio.wait_for(conn.send(to, text, cid=cid), 20)
    assert err.value.code == "unavailable"


@pytest.mark.timeout(60)
async def test_redis_outage_gateways_stay_up_and_recover(
    dep: Deployment, own_redis: list[RedisServer]
) -> None:
    gw1, gw2 = dep.gateways
    alice, bob = Member(dep, "alice"), Member(dep, "bob")
    await alice.join("gw1")
    await bob.join("gw2")
    members = [alice, bob]
    before = [await alice.send(GENERAL, "before", cid="a0"), await bob.send("alice", "dm", "b0")]
    await wait_delivered(members, 10)
    logins = [m.logins for m in members]

    own_redis[-1].stop(signal.SIGKILL)
    assert alice.conn is not None and bob.conn is not None
    await expect_unavailable(alice.conn, GENERAL, "during", "a1")
    await expect_unavailable(bob.conn, "alice", "during", "b1")
    newcomer = await dep.connect()
    with pytest.raises(ChatError) as err:
        await asyncio.wait_for(newcomer.login("carol", "pw"), 20)
    assert err.value.code == "unavailable"
    await alice.conn.ping()  # the gateways still serve what needs no Redis
    await bob.conn.ping()
    for gw in dep.gateways:
        await wait_log(gw, "pub/sub link down")
    await asyncio.sleep(1.0)  # a few seconds of outage in all
    assert gw1.alive() and gw2.alive()

    restart_redis(own_redis)
    for gw in dep.gateways:
        await wait_log(gw, "pub/sub connected", 2)
    # Both sessions were kept; the failed sends are retried with their cids.
    assert [m.logins for m in members] == logins
    await alice.send(GENERAL, "during", cid="a1")
    await bob.send("alice", "during", cid="b1")
    for i in range(5):
        await alice.send(GENERAL, f"after {i}", cid=f"a-after-{i}")
        await bob.send(GENERAL if i % 2 else "alice", f"after {i}", cid=f"b-after-{i}")
    await wait_delivered(members, 20)
    assert_exactly_once_in_order(members)
    stored = await stream_ids(dep.redis.url, dep.prefix, GENERAL)
    assert before[0] in stored and len(stored) == 1 + 1 + 5 + 2
    await newcomer.login("carol", "pw")  # the same connection can now log in
    for gw in dep.gateways:  # an outage is logged once, not at every retry
        assert log_count(gw, "pub/sub link down") == 1
        assert log_count(gw, "could not save cursors") <= 1


@pytest.mark.timeout(60)
async def test_redis_paused_send_errors_and_retry_is_stored_once(
    dep: Deployment, own_redis: list[RedisServer]
) -> None:
    alice, bob = Member(dep, "alice"), Member(dep, "bob")
    await alice.join("gw1")
    await bob.join("gw2")
    members = [alice, bob]
    await alice.send(GENERAL, "before", cid="a0")
    await wait_delivered(members, 10)

    own_redis[-1].pause()  # SIGSTOP: connections stay open, nothing answers
    try:
        assert alice.conn is not None and bob.conn is not None
        pending = asyncio.create_task(alice.conn.send(GENERAL, "while paused", cid="a1"))
        await bob.conn.ping()  # the gateway's loop is not blocked meanwhile
        with pytest.raises(ChatError) as err:
            await asyncio.wait_for(pending, 20)
        assert err.value.code == "unavailable"
    finally:
        own_redis[-1].resume()
    # The send may still have reached Redis: "unavailable" means "retry with the cid".
    sid = await alice.send(GENERAL, "while paused", cid="a1")
    await alice.send(GENERAL, "after", cid="a2")
    await wait_delivered(members, 20)
    await asyncio.sleep(0.3)  # a duplicate would be on its way by now
    assert_exactly_once_in_order(members)
    texts = [f["text"] for _, f in await stream_entries(dep.redis.url, dep.prefix, GENERAL)]
    assert texts.count("while paused") == 1
    assert sid in await stream_ids(dep.redis.url, dep.prefix, GENERAL)


@pytest.mark.timeout(60)
async def test_lost_subscription_is_resynced_from_last_delivered_id(
    dep: Deployment, own_redis: list[RedisServer]
) -> None:
    """The pub/sub link of gw1 dies while Redis stays up and others keep publishing:
    gw1 must resubscribe by itself and re-read what it missed."""
    gw1, gw2 = dep.gateways
    alice, carl, bob = Member(dep, "alice"), Member(dep, "carl"), Member(dep, "bob")
    await alice.join("gw1")
    await carl.join("gw1")
    await bob.join("gw2")
    members = [alice, carl, bob]
    await bob.send(GENERAL, "warm up", cid="b0")
    await bob.send("alice", "warm up dm", cid="b0dm")
    await wait_delivered(members, 10)
    connected = log_count(gw1, "pub/sub connected")
    logins = [m.logins for m in members]

    # Freeze gw1 so that it cannot notice, kill every pub/sub link, publish from gw2.
    assert gw1.proc is not None
    os.kill(gw1.pid, signal.SIGSTOP)
    try:
        async with redis_client(dep.redis.url) as r:
            killed = await r.client_kill_filter(_type="pubsub")
        assert killed >= 2
        missed = []
        for i in range(6):
            to = "alice" if i % 3 == 0 else GENERAL
            missed.append(await bob.send(to, f"while gw1 was deaf {i}", cid=f"b{i + 1}"))
    finally:
        os.kill(gw1.pid, signal.SIGCONT)
    await wait_log(gw1, "pub/sub connected", connected + 1)
    await wait_delivered(members, 20)
    # Nothing could reach gw1 live: each missed message came from the re-sync.
    for m in (alice, carl):
        got = {msg["id"]: msg for msg in m.received}
        for sid in missed:
            if sid in got:
                assert got[sid].get("replay") is True
    live = await bob.send(GENERAL, "live again", cid="b-live")
    await wait_delivered(members, 10)
    await asyncio.sleep(0.3)
    assert_exactly_once_in_order(members)
    assert [m.logins for m in members] == logins, "nobody had to reconnect"
    assert not [m for m in alice.received if m["id"] == live and m.get("replay")]
    assert gw2.alive()


@pytest.mark.timeout(60)
async def test_full_restart_keeps_accounts_history_unread_and_logs(
    dep: Deployment, own_redis: list[RedisServer], tmp_path: Path
) -> None:
    worker = start_worker(dep.redis.url, dep.prefix, tmp_path)
    try:
        alice = await dep.login("alice", "secret-a")
        bob = await dep.login("bob", "secret-b")
        carol = await dep.login("carol", "secret-c")
        for i in range(3):
            await alice.send(GENERAL, f"general {i}")
        await alice.send("bob", "hi bob")
        await bob.send("alice", "hi alice")
        await bob.messages(4)
        await carol.messages(3)
        await carol.quit()
        later = [await alice.send(GENERAL, "while carol was away"), await bob.send(GENERAL, "2")]
        dm = await alice.send("carol", "for carol")
        await bob.messages(2)
        history = await alice.history(GENERAL, limit=50)
        dm_history = await bob.history("alice")
        alice_log = await alice.log()
        assert len(history) == 5 and len(dm_history) == 2 and len(alice_log) == 6
        await dep.close_all()

        # Everything stops: gateways and worker by SIGTERM, then Redis.
        for gw in dep.gateways:
            assert gw.terminate(15) == 0
        worker.terminate()
        assert worker.wait(15) == 0
        own_redis[-1].stop()
        restart_redis(own_redis)
        worker = start_worker(dep.redis.url, dep.prefix, tmp_path)
        dep.start()
    finally:
        worker.terminate()
        worker.wait(15)

    wrong = await dep.connect()
    with pytest.raises(ChatError) as err:
        await wrong.login("alice", "not-her-password")
    assert err.value.code == "bad_password"
    alice = await dep.connect()
    welcome = (await alice.login("alice", "secret-a")).welcome
    assert welcome["new"] is False and welcome["unread"] == {}
    assert await alice.history(GENERAL, limit=50) == history
    assert await alice.log() == alice_log
    bob = await dep.connect()
    assert (await bob.login("bob", "secret-b")).welcome["unread"] == {}
    assert await bob.history("alice") == dm_history
    carol = await dep.connect()
    back = await carol.login("carol", "secret-c")
    assert back.welcome["new"] is False
    assert back.welcome["unread"] == {"#general": 2, "alice": 1}
    assert [m["id"] for m in back.replayed] == [*later, dm]


@pytest.mark.timeout(60)
async def test_resubscribe_refused_for_a_while_is_retried(
    dep: Deployment, own_redis: list[RedisServer]
) -> None:
    """Redis turns the hubs' new connections away (maxclients reached, as in a
    reconnect storm); they keep trying and resubscribe once it lets them in."""
    gw1, gw2 = dep.gateways
    alice, bob = Member(dep, "alice"), Member(dep, "bob")
    await alice.join("gw1")
    await bob.join("gw2")
    members = [alice, bob]
    await bob.send(GENERAL, "warm up", cid="b0")
    await wait_delivered(members, 10)
    connected = [log_count(gw, "pub/sub connected") for gw in dep.gateways]
    async with redis_client(dep.redis.url) as r:
        info = await r.info("clients")
        pubsub = len(await r.client_list(_type="pubsub"))
        # Room for everyone but the pub/sub links about to be killed.
        await r.config_set("maxclients", int(info["connected_clients"]) - pubsub)
        try:
            assert await r.client_kill_filter(_type="pubsub") >= 2
            await asyncio.sleep(1.5)  # several refused attempts
        finally:
            await r.config_set("maxclients", 10_000)
    for gw, before in zip(dep.gateways, connected, strict=True):
        await wait_log(gw, "pub/sub connected", before + 1)
    for i in range(3):
        await alice.send(GENERAL, f"after {i}", cid=f"a{i}")
        await bob.send("alice", f"dm after {i}", cid=f"b{i + 1}")
    await wait_delivered(members, 10)
    assert_exactly_once_in_order(members)
    assert gw1.alive() and gw2.alive()

"""What a pub/sub blip costs Redis, end to end.

The reshape issue: "A pub/sub blip makes every live session re-read every
conversation at once: O(sessions × conversations) Redis calls. Re-read once per
channel." After the fix, a gateway whose pub/sub link came back re-reads each
conversation once per channel it routes (``Hub._resync``), whatever the number of
sessions behind that channel, and hands every session what it lacks.

This test runs its own redis-server (so ``INFO commandstats`` counts nothing but
this test's traffic) and two real gateways on one prefix: ``gw1`` holds the many
sessions being measured, ``gw2`` holds two "phones" that keep chatting while
``gw1`` is deaf. The blip is ``CLIENT KILL TYPE pubsub`` with ``gw1`` stopped
(SIGSTOP) meanwhile, so that what the phones send is surely published while ``gw1``
has no subscription, however slow the machine.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from client.connection import Connection, conversation_of, id_key
from gateway.embedded_redis import free_port
from gateway.store.keys import GENERAL, Keys
from tests.integration.faults import log_count, redis_client, until, wait_log
from tests.support import Deployment, GatewayProcess, RedisServer, running

USERS = [f"u{i:02d}" for i in range(20)]
SESSIONS_PER_USER = 2  # 40 sessions on gw1
DM_OFFSETS = (1, 2)  # user i talks with i±1 and i±2 (mod 20): 4 direct conversations each
PHONES = ["u00", "u10"]  # a second client of these users, on gw2, sends during the blip
SLACK = 5  # a small constant on top of the per-channel count
STREAM_READS = ("xrange", "xrevrange")


def partners(user: str) -> list[str]:
    i = USERS.index(user)
    n = len(USERS)
    return sorted(
        {USERS[(i + d) % n] for d in DM_OFFSETS} | {USERS[(i - d) % n] for d in DM_OFFSETS}
    )


async def command_calls(r: Redis) -> Counter[str]:
    """Calls per command (lower case) since the last CONFIG RESETSTAT."""
    stats: dict[str, Any] = await r.info("commandstats")
    return Counter(
        {
            name.removeprefix("cmdstat_"): int(value["calls"])
            for name, value in stats.items()
            if isinstance(value, dict)
        }
    )


async def numsub(r: Redis, channel: str) -> int:
    [(_, count)] = await r.pubsub_numsub(channel)
    return int(count)


async def wait_subscribed(r: Redis, channel: str, count: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while await numsub(r, channel) < count:
        assert time.monotonic() < deadline, f"{channel} never had {count} subscribers again"
        await asyncio.sleep(0.02)


class Session:
    """One logged-in connection, and every message it was shown, in arrival order."""

    def __init__(self, user: str, gateway: str, conn: Connection, replayed: list[Any]) -> None:
        self.user = user
        self.gateway = gateway
        self.conn = conn
        self.messages: list[dict[str, Any]] = list(replayed)
        self.others: list[dict[str, Any]] = []
        self.task = asyncio.create_task(self._collect())

    async def _collect(self) -> None:
        async for ev in self.conn.events():
            (self.messages if ev.get("type") == "message" else self.others).append(ev)

    def shown(self, messages: list[dict[str, Any]] | None = None) -> list[tuple[str, str]]:
        """(conversation as this user names it, id): ids are per conversation (stream)."""
        got = self.messages if messages is None else messages
        return [(conversation_of(m, self.user), str(m["id"])) for m in got]


async def login(port: int, user: str, gateway: str) -> Session:
    conn = await Connection.open("127.0.0.1", port)
    result = await conn.login(user, "pw")
    assert result.welcome["gateway"] == gateway
    return Session(user, gateway, conn, result.replayed)


@pytest.mark.timeout(120)
async def test_a_pubsub_blip_re_reads_once_per_channel_not_once_per_session(
    tmp_path: Path,
) -> None:
    server = RedisServer(tmp_path / "redis").start()
    dep = Deployment(server, tmp_path, gateways=1)
    gw1 = dep.gateways[0]
    # gw2 on a port of its own, so that every measured session lands on gw1.
    gw2 = GatewayProcess("gw2", free_port(), server.url, dep.prefix, tmp_path)
    dep.gateways.append(gw2)
    keys = Keys(dep.prefix)
    sessions: list[Session] = []
    try:
        async with running(dep), redis_client(server.url) as r:
            await run_blip(dep, gw1, gw2, keys, r, sessions)
    finally:
        for s in sessions:
            s.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await s.task
            await s.conn.close()
        server.stop()


async def run_blip(
    dep: Deployment,
    gw1: GatewayProcess,
    gw2: GatewayProcess,
    keys: Keys,
    r: Redis,
    sessions: list[Session],
) -> None:
    started = time.monotonic()

    # -- accounts, then the measured sessions (gw1) and the phones (gw2).
    async def create(user: str) -> None:
        async with await Connection.open("127.0.0.1", dep.port) as conn:
            await conn.login(user, "pw")

    await asyncio.gather(*(create(u) for u in USERS))
    for _ in range(SESSIONS_PER_USER):
        sessions += await asyncio.gather(*(login(dep.port, u, "gw1") for u in USERS))
    phones = [await login(gw2.port, u, "gw2") for u in PHONES]
    sessions += phones

    # -- some chat, live: every user says hello in #general and twice in each direct
    # conversation; every session has then been shown a message of each of its
    # conversations, so a re-sync starts from what each was shown.
    async def chat(first: Session) -> None:
        await first.conn.send(GENERAL, f"hello from {first.user}")
        for other in partners(first.user):
            if USERS.index(other) > USERS.index(first.user):
                for k in range(2):
                    await first.conn.send(other, f"{first.user} -> {other} #{k}")

    await asyncio.gather(*(chat(s) for s in sessions[: len(USERS)]))
    history = len(USERS) + 2 * len(partners(USERS[0]))
    await until(
        lambda: all(len(s.messages) >= history for s in sessions), 20, "the chat at every session"
    )
    on_gw1 = [s for s in sessions if s.gateway == "gw1"]
    assert len(on_gw1) == len(USERS) * SESSIONS_PER_USER
    general = keys.room_channel(GENERAL)
    assert await numsub(r, general) == 2  # one subscription per gateway, not per session
    for s in sessions:
        assert not s.others, f"{s.user}: {s.others}"
    before = {id(s): len(s.messages) for s in sessions}

    # What one re-sync may cost. A gateway re-reads #general once, and each direct
    # conversation once per user channel it routes (a DM between two users on gw1 is
    # read once for each of them): 1 + 20 × 4 = 81 on gw1, 1 + 2 × 4 = 9 on gw2.
    # Before the fix (0ded815) every session re-read each of its conversations:
    # 40 × (1 + 4) on gw1 plus 2 × (1 + 4) on gw2 = 210 (this test measured exactly
    # that there), which the bound (90 + SLACK = 95) does not allow. The bound has
    # no term in sessions: a second client per user must not cost a single read.
    per_channel = sum(
        1 + sum(len(partners(u)) for u in {s.user for s in sessions if s.gateway == gw})
        for gw in ("gw1", "gw2")
    )
    per_session = sum(1 + len(partners(s.user)) for s in sessions)
    bound = per_channel + SLACK
    assert (per_channel, per_session) == (90, 210)
    assert per_session > 2 * bound, "the old behaviour must fail this test by far"

    # -- the blip: gw1 is frozen so it cannot resubscribe until told, every pub/sub
    # link is killed, and the phones chat on gw2 while gw1 hears nothing.
    connected = log_count(gw1, "pub/sub connected")
    await r.config_resetstat()
    stats_before = await command_calls(r)
    missed: dict[str, set[tuple[str, str]]] = {u: set() for u in USERS}  # user -> keys
    os.kill(gw1.pid, signal.SIGSTOP)
    try:
        killed = await r.client_kill_filter(_type="pubsub")
        assert killed >= 2
        for phone in phones:
            sid = await phone.conn.send(GENERAL, f"blip in #general from {phone.user}")
            for user in USERS:
                missed[user].add((GENERAL, sid))
            for other in partners(phone.user):
                sid = await phone.conn.send(other, f"blip dm {phone.user} -> {other}")
                missed[phone.user].add((other, sid))
                missed[other].add((phone.user, sid))
        # Published while gw1 had no subscription: only its re-sync can deliver them.
        assert await numsub(r, keys.user_channel("u01")) == 0
    finally:
        os.kill(gw1.pid, signal.SIGCONT)

    # -- gw1 resubscribes by itself and re-syncs; a marker published after that shows
    # every session is live again (held events are let out only after the re-sync).
    await wait_log(gw1, "pub/sub connected", connected + 1)
    for user in USERS:
        await wait_subscribed(r, keys.user_channel(user), 1)
    await wait_subscribed(r, general, 2)
    marker = (GENERAL, await phones[0].conn.send(GENERAL, "marker: live again"))
    await until(
        lambda: all(marker in s.shown() for s in sessions), 20, "the marker at every session"
    )
    stats = await command_calls(r) - stats_before
    reads = sum(stats[c] for c in STREAM_READS)
    await asyncio.sleep(0.3)  # room for a late duplicate to show up
    print(
        f"stream reads during the re-sync: {reads} (bound {bound}, per channel {per_channel},"
        f" per session {per_session}); other calls: {dict(stats.most_common(8))};"
        f" took {time.monotonic() - started:.1f} s"
    )

    # -- exactly once, in order, nobody dropped.
    for s in sessions:
        assert not s.conn.closed.is_set(), f"{s.user}@{s.gateway} was closed: {s.others}"
        assert not [e for e in s.others if e.get("type") == "error"], s.others
        dupes = sorted(k for k, n in Counter(s.shown()).items() if n > 1)
        assert not dupes, f"{s.user}@{s.gateway} got {dupes} more than once"
        new = s.messages[before[id(s)] :]
        want = missed[s.user] | {marker}
        got = set(s.shown(new))
        assert got == want, f"{s.user}@{s.gateway}: missing {want - got}, extra {got - want}"
        by_conversation: dict[str, list[str]] = {}
        for m in s.messages:
            by_conversation.setdefault(conversation_of(m, s.user), []).append(str(m["id"]))
        for conv, conv_ids in by_conversation.items():
            assert conv_ids == sorted(conv_ids, key=id_key), f"{s.user}: {conv} out of order"
        if s.gateway == "gw1":
            # What gw1 missed can only have come from its re-sync. (The marker may come
            # either way: live, or re-read if the re-sync reached #general after it.)
            for key, m in zip(s.shown(new), new, strict=True):
                assert key == marker or m.get("replay") is True, f"{s.user}: {m}"

    # -- the cost: once per channel, not once per session.
    assert reads >= 1, "the re-sync read nothing"
    assert reads <= bound, (
        f"{reads} stream reads for one blip: more than once per channel ({bound});"
        f" once per session would be {per_session}"
    )

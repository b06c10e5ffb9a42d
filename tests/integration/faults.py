"""Helpers for the fault tests: chatting members that survive reconnects, Redis checks.

A ``Member`` is one user with one connection at a time. It keeps every message it
was shown, across connections (live, replayed at login, or re-synced), and what it
has seen per conversation, which it passes as ``since`` when it logs in again: the
client's own view decides where a resume starts, as a real client's would.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

from redis.asyncio import Redis

from client.connection import ChatError, Connection, ConnectionClosed, conversation_of, id_key
from gateway.store.keys import GENERAL, Keys, dm_conversation
from tests.support import Deployment, GatewayProcess

RETRYABLE = (ConnectionClosed, ConnectionError, OSError, TimeoutError)


class Member:
    def __init__(self, dep: Deployment, user: str, password: str = "pw") -> None:
        self.dep = dep
        self.user = user
        self.password = password
        self.conn: Connection | None = None
        self.gateway: str | None = None
        self.received: list[dict[str, Any]] = []
        self.seen: dict[str, str] = {}
        self.acked: dict[str, str] = {}  # cid -> id
        # (id, conversation as the sender names it): ids are per stream, so two
        # conversations can have a message with the same id.
        self.sent_to: list[tuple[str, str]] = []
        self.logins = 0
        self.events: list[dict[str, Any]] = []  # everything else: notices, errors
        self._reader: asyncio.Task[None] | None = None

    # -- connecting -------------------------------------------------------------
    async def join(self, gateway: str | None = None) -> None:
        """First login; with ``gateway``, retry until SO_REUSEPORT lands us there."""
        for _ in range(60):
            await self._login()
            if gateway is None or self.gateway == gateway:
                return
            await self.drop()
        raise AssertionError(f"{self.user} never landed on {gateway}")

    async def _login(self) -> None:
        conn = await self.dep.connect()  # closed by the deployment at teardown
        try:
            result = await conn.login(self.user, self.password, since=dict(self.seen) or None)
        except BaseException:
            await conn.close()
            raise
        self.conn = conn
        self.gateway = str(result.welcome["gateway"])
        self.logins += 1
        for msg in result.replayed:
            self._keep(msg)
        self._reader = asyncio.create_task(self._read(conn))

    async def reconnect(self, timeout: float = 20.0) -> None:
        """Drop the connection (if any) and log in again with ``since`` = what we saw."""
        await self.drop()
        deadline = time.monotonic() + timeout
        while True:
            try:
                await self._login()
                return
            except (*RETRYABLE, ChatError) as exc:
                if time.monotonic() > deadline:
                    raise AssertionError(f"{self.user} could not log in again: {exc}") from exc
                await asyncio.sleep(0.1)

    async def drop(self) -> None:
        """Close our side and wait until every event already read has been kept."""
        if self.conn is not None:
            await self.conn.close()
        if self._reader is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        self.conn = None
        self._reader = None

    async def wait_closed(self, timeout: float = 20.0) -> None:
        """Wait until the server ends our connection, keeping what it sent before."""
        assert self._reader is not None
        await asyncio.wait_for(asyncio.shield(self._reader), timeout)

    async def _read(self, conn: Connection) -> None:
        async for ev in conn.events():
            if ev.get("type") == "message":
                self._keep(ev)
            else:
                self.events.append(ev)

    def _keep(self, msg: dict[str, Any]) -> None:
        self.received.append(msg)
        conv = conversation_of(msg, self.user)
        last = self.seen.get(conv)
        if last is None or id_key(msg["id"]) > id_key(last):
            self.seen[conv] = str(msg["id"])

    # -- sending ------------------------------------------------------------------
    async def send(self, to: str, text: str, cid: str, timeout: float = 30.0) -> str:
        """Send until acked, reconnecting after a lost gateway; retries keep the cid."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                if self.conn is None or self.conn.closed.is_set():
                    raise ConnectionClosed("not connected")
                sid = await self.conn.send(to, text, cid=cid)
                break
            except RETRYABLE:
                if time.monotonic() > deadline:
                    raise
                await self.reconnect(max(1.0, deadline - time.monotonic()))
            except ChatError as exc:
                if exc.code != "unavailable" or time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.2)
        previous = self.acked.setdefault(cid, sid)
        assert previous == sid, f"cid {cid} acked as {previous} and then as {sid}"
        self.sent_to.append((sid, to))
        return sid

    # -- checking -----------------------------------------------------------------
    def by_conversation(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = defaultdict(list)
        for msg in self.received:
            out[conversation_of(msg, self.user)].append(str(msg["id"]))
        return dict(out)


def expected_for(members: list[Member]) -> dict[str, dict[str, list[str]]]:
    """Per user, per conversation (reader's name): every acked id, in id order."""
    out: dict[str, dict[str, list[str]]] = {m.user: defaultdict(list) for m in members}
    for sender in members:
        for sid, to in dict.fromkeys(sender.sent_to):
            if to.startswith("#"):
                for m in members:
                    out[m.user][to].append(sid)
            else:
                out[sender.user][to].append(sid)
                if to != sender.user:
                    out[to][sender.user].append(sid)
    return {u: {c: sorted(ids, key=id_key) for c, ids in convs.items()} for u, convs in out.items()}


async def wait_delivered(members: list[Member], timeout: float = 30.0) -> None:
    """Wait until every member holds every acked id meant for it (or time runs out)."""
    expected = expected_for(members)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(_holds(m, expected[m.user]) for m in members):
            return
        await asyncio.sleep(0.1)


def _holds(member: Member, expected: dict[str, list[str]]) -> bool:
    got = member.by_conversation()
    return all(set(ids) <= set(got.get(conv, ())) for conv, ids in expected.items())


def assert_exactly_once_in_order(members: list[Member]) -> None:
    """Each receiver got each acked id of its conversations once, in stream order."""
    expected = expected_for(members)
    for m in members:
        got = m.by_conversation()
        for conv in set(got) | set(expected[m.user]):
            ids = got.get(conv, [])
            dupes = sorted({i for i in ids if ids.count(i) > 1})
            assert not dupes, f"{m.user} got {len(dupes)} ids twice in {conv}: {dupes[:5]}"
            assert ids == sorted(ids, key=id_key), f"{m.user} got {conv} out of order"
            want = expected[m.user].get(conv, [])
            missing = sorted(set(want) - set(ids), key=id_key)
            extra = sorted(set(ids) - set(want), key=id_key)
            assert not missing, f"{m.user} is missing {len(missing)} of {conv}: {missing[:5]}"
            assert not extra, f"{m.user} got {len(extra)} unacked ids in {conv}: {extra[:5]}"


# -- Redis, seen from outside ----------------------------------------------------------


def redis_client(url: str) -> Redis:
    return Redis.from_url(url, decode_responses=True)


async def stream_entries(
    url: str, prefix: str, conversation: str
) -> list[tuple[str, dict[str, str]]]:
    async with redis_client(url) as r:
        entries = await r.xrange(Keys(prefix).stream(conversation))
    return cast(list[tuple[str, dict[str, str]]], entries or [])


async def stream_ids(url: str, prefix: str, conversation: str) -> list[str]:
    return [sid for sid, _ in await stream_entries(url, prefix, conversation)]


async def until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


def conversation_id(a: str, b: str) -> str:
    return GENERAL if b.startswith("#") else dm_conversation(a, b)


# -- processes --------------------------------------------------------------------------


def log_count(gw: GatewayProcess, text: str) -> int:
    return gw.log_text().count(text)


async def wait_log(gw: GatewayProcess, text: str, count: int = 1, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while log_count(gw, text) < count:
        if time.monotonic() > deadline:
            tail = gw.log_text()[-2000:]
            raise AssertionError(f"{gw.name} never logged {text!r} x{count}:\n{tail}")
        await asyncio.sleep(0.05)


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for pid {pid}")

"""Hostile and unlucky clients end to end: floods, bad values, caps, stalls, outages.

Each test runs real gateway processes on a real redis-server and checks that the
gateway bounds what one peer can make it do, answers bad input with a client
error (never ``internal``), and keeps serving everyone else.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import struct
from pathlib import Path
from typing import Any

import pytest

from client.connection import ChatError, Connection, ConnectionClosed
from gateway.store import Store
from gateway.store.keys import GENERAL, Keys
from tests.integration.faults import redis_client
from tests.support import Deployment, RedisServer, running

CLOSED = (ConnectionError, ConnectionClosed, OSError, asyncio.IncompleteReadError)


class RawJson:
    """A JSON-lines peer writing exact bytes (for values json.dumps will not produce)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, port: int) -> RawJson:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 22)
        return cls(reader, writer)

    async def write(self, line: str | bytes) -> None:
        self.writer.write((line.encode() if isinstance(line, str) else line) + b"\n")
        await self.writer.drain()

    async def event(self, timeout: float = 10.0) -> dict[str, Any]:
        raw = await asyncio.wait_for(self.reader.readline(), timeout)
        if not raw:
            raise ConnectionError("closed")
        return dict(json.loads(raw))

    async def reply(self, rid: str, timeout: float = 10.0) -> dict[str, Any]:
        """The first event with this rid (other events are skipped)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            ev = await self.event(max(0.01, deadline - loop.time()))
            if ev.get("rid") == rid:
                return ev

    async def ping(self, rid: str = "ping") -> None:
        await self.write(json.dumps({"op": "ping", "rid": rid}))
        assert (await self.reply(rid))["type"] == "pong"

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError):
            await self.writer.wait_closed()


async def read_to_eof(reader: asyncio.StreamReader, timeout: float) -> tuple[bytes, bool]:
    """Everything until the peer closes; (data, closed) — closed is False on timeout."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    data = b""
    while True:
        left = deadline - loop.time()
        if left <= 0:
            return data, False
        try:
            chunk = await asyncio.wait_for(reader.read(65536), left)
        except TimeoutError:
            return data, False
        except (ConnectionError, OSError):
            return data, True
        if not chunk:
            return data, True
        data += chunk


# -- 1. junk flood ------------------------------------------------------------------------


async def test_junk_flood_is_closed_and_others_are_served(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    async with running(Deployment(redis_server, tmp_path, gateways=1)) as dep:
        good = await dep.login("steady")
        reader, writer = await asyncio.open_connection("127.0.0.1", dep.port, limit=1 << 20)
        chunk = b"this is {not json at all\n" * 2600  # ~64 KB of bad lines
        writer.write(b'{"op":"ping","rid":"first"}\n')  # '{' picks JSON framing

        async def flood() -> int:
            sent = 0
            with contextlib.suppress(ConnectionError, OSError):
                while sent < 4 << 20:
                    writer.write(chunk)
                    await asyncio.wait_for(writer.drain(), 10)
                    sent += len(chunk)
            return sent

        # The flooder never reads on purpose; the transport buffers what arrives, and
        # this task only keeps it from being lost when the connection is reset.
        reading = asyncio.create_task(read_to_eof(reader, 20))
        flooding = asyncio.create_task(flood())
        # Meanwhile the other client is served.
        await good.ping()
        assert await good.send(GENERAL, "during the flood")
        await asyncio.wait_for(flooding, 15)
        data, closed = await reading
        assert closed, "the gateway never closed the flooding connection"
        assert b"too many bad requests" in data
        writer.close()
        await good.ping()
        assert await good.send(GENERAL, "after the flood")
        assert dep.gateways[0].alive()
        assert "Traceback" not in dep.logs()


# -- 2. bad values ------------------------------------------------------------------------


HUGE_ID = "99999999999999999999-0"  # past 2**64 ms


async def test_bad_values_get_client_errors_not_internal(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    async with running(Deployment(redis_server, tmp_path, gateways=1)) as dep:
        # Something to reply to / page through.
        seed = await dep.login("seeder")
        await seed.send(GENERAL, "a message")

        text = await dep.text()
        await text.send("/login texter pw\n")
        await text.expect(r"up to date")
        failures = []
        for line in ("/history ²", "/log ²", "/reply ² x", "/log " + "9" * 5000):
            await text.send(line + "\n")
            got = await text.expect(r"^!! ", timeout=5)
            if not got.startswith("!! error (") or got.startswith("!! error (internal)"):
                failures.append((line[:20], got))
            await text.send("/ping\n")
            await text.expect(r"\*\* pong")

        j = await RawJson.open(dep.port)
        await j.write(json.dumps({"op": "login", "rid": "l", "user": "jsoner", "password": "pw"}))
        assert (await j.reply("l"))["type"] == "welcome"
        assert (await j.reply("l"))["type"] == "synced"
        checks: list[tuple[str, dict[str, Any], bool]] = [
            ("h1", {"op": "history", "with": GENERAL, "before": HUGE_ID}, False),
            ("h2", {"op": "history", "with": GENERAL, "before": "0-0"}, True),
            ("s1", {"op": "send", "to": GENERAL, "text": "re", "reply_to": HUGE_ID}, False),
        ]
        for rid, req, empty_ok in checks:
            await j.write(json.dumps({**req, "rid": rid}))
            ev = await j.reply(rid)
            if empty_ok and ev["type"] == "history":
                if ev["messages"]:
                    failures.append((rid, ev))
            elif ev["type"] != "error" or ev.get("code") == "internal":
                failures.append((rid, ev))
            await j.ping(f"p{rid}")

        other = await RawJson.open(dep.port)
        login = {"op": "login", "rid": "l2", "user": "sincer", "password": "pw"}
        await other.write(json.dumps({**login, "since": {GENERAL: HUGE_ID}}))
        ev = await other.reply("l2")
        if ev["type"] != "error" or ev.get("code") == "internal":
            failures.append(("since", ev))
        await other.ping()

        third = await RawJson.open(dep.port)
        await third.write('{"op":"login","rid":"l3","user":"surrogate","password":"\\ud800"}')
        # Refused before its rid is read (the rid could be a surrogate too): no rid.
        ev = await third.event()
        if ev["type"] != "error" or ev.get("code") == "internal":
            failures.append(("surrogate", ev))
        await third.ping()

        for c in (j, other, third):
            await c.close()
        logs = dep.logs()
        assert not failures, failures
        assert "Traceback" not in logs


# -- 3. per-connection send cap --------------------------------------------------------------


async def test_connection_send_cap(redis_server: RedisServer, tmp_path: Path) -> None:
    extra = ["--conn-send-rate", "2", "--conn-send-burst", "5"]
    async with running(Deployment(redis_server, tmp_path, gateways=1, extra=extra)) as dep:
        conn = await dep.login("chatty")
        results = await asyncio.gather(
            *(conn.send(GENERAL, f"m{i}") for i in range(20)), return_exceptions=True
        )
        acks = [r for r in results if isinstance(r, str)]
        errors = [r for r in results if isinstance(r, ChatError)]
        assert len(acks) + len(errors) == 20, results
        assert 5 <= len(acks) <= 7, results
        for err in errors:
            assert err.code == "rate_limited"
            retry = err.event.get("retry_after")
            assert isinstance(retry, int) and retry >= 1, err.event
        await conn.ping()


# -- 4. a non-reading client with a big replay ---------------------------------------------


async def test_non_reading_client_with_big_replay_is_cut(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    extra = ["--stall-timeout-s", "2", "--max-outbox-bytes", "65536"]
    async with running(Deployment(redis_server, tmp_path, gateways=1, extra=extra)) as dep:
        text = "y" * 1000
        async with redis_client(dep.redis.url) as r:
            store = Store(r, Keys(dep.prefix))
            numbers = iter(range(3000))

            async def lane() -> None:
                for i in numbers:
                    await store.send("flooder", GENERAL, GENERAL, f"{i} {text}")

            await asyncio.gather(*(lane() for _ in range(16)))

        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", dep.port))
        login = {"op": "login", "rid": "l", "user": "sloth", "password": "pw"}
        login["since"] = {GENERAL: "0-0"}  # type: ignore[assignment]
        await asyncio.get_running_loop().sock_sendall(sock, json.dumps(login).encode() + b"\n")

        other = await dep.login("awake")
        for _ in range(60):  # up to 12 s
            if "read nothing for" in dep.logs():
                break
            await asyncio.sleep(0.2)
        await other.ping()
        cut_logged = "read nothing for" in dep.logs()
        # Now read: the socket must end (EOF or reset), not hang with more to come.
        reader, writer = await asyncio.open_connection(sock=sock, limit=1 << 22)
        _, closed = await read_to_eof(reader, 10)
        writer.close()
        assert cut_logged, "no 'read nothing for' within 12 s"
        assert closed, "the non-reading socket was never closed"
        assert "slow_consumer user=sloth" in dep.logs()


# -- 5. idle timeout ---------------------------------------------------------------------------


async def test_idle_connection_is_closed_pinging_one_stays(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    extra = ["--idle-timeout-s", "2"]
    async with running(Deployment(redis_server, tmp_path, gateways=1, extra=extra)) as dep:
        quiet = await dep.text()
        await quiet.send("/login quiet pw\n")
        await quiet.expect(r"up to date")
        busy = await dep.login("busy")

        async def keep_pinging() -> None:
            for _ in range(8):
                await busy.ping()
                await asyncio.sleep(0.5)

        pinger = asyncio.create_task(keep_pinging())
        await quiet.expect(r"idle", timeout=5)
        with pytest.raises(ConnectionError):
            while True:
                await quiet.line(timeout=4)
        await pinger
        await busy.ping()
        assert not busy.closed.is_set()


# -- 6. Redis restart ------------------------------------------------------------------------


async def _relogin(dep: Deployment, user: str) -> Connection:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while True:
        try:
            return await dep.login(user)
        except (*CLOSED, ChatError, TimeoutError):
            if loop.time() > deadline:
                raise
            await asyncio.sleep(0.2)


async def test_redis_restart_leaves_no_dead_pooled_connections(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "r", persist=True).start()
    try:
        async with running(Deployment(server, tmp_path, gateways=1)) as dep:
            users = [f"u{i}" for i in range(5)]
            conns = {u: await dep.login(u) for u in users}
            for c in conns.values():
                await c.status()
            server.stop()
            server = RedisServer(tmp_path / "r", persist=True, port=server.port).start()
            dep.redis = server

            loop = asyncio.get_running_loop()
            deadline = loop.time() + 10
            while True:
                c = conns[users[0]]
                try:
                    if c.closed.is_set():
                        c = conns[users[0]] = await dep.login(users[0])
                    await c.ping()
                    await c.send(GENERAL, "back?")
                    break
                except (*CLOSED, ChatError, TimeoutError):
                    assert loop.time() < deadline, "never recovered within 10 s"
                    await asyncio.sleep(0.2)

            for u in users:
                if conns[u].closed.is_set():
                    conns[u] = await _relogin(dep, u)
            unavailable = []
            for i in range(30):
                u = users[i % len(users)]
                try:
                    await conns[u].status()
                except ChatError as exc:
                    unavailable.append((i, exc.code))
            assert not unavailable, f"status failed after recovery: {unavailable}"
    finally:
        server.stop()


# -- 7. login cancelled while Redis is stalled ------------------------------------------------


async def test_login_cancelled_during_redis_stall_does_not_hang_others(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "r").start()
    try:
        async with running(Deployment(server, tmp_path, gateways=1)) as dep:
            first = await dep.login("dup")
            await first.close()

            a = await RawJson.open(dep.port)
            b = await RawJson.open(dep.port)
            login = json.dumps({"op": "login", "rid": "l", "user": "dup", "password": "pw"})
            a.writer.write(login.encode() + b"\n")
            b.writer.write(login.encode() + b"\n")
            await asyncio.gather(a.writer.drain(), b.writer.drain())
            server.pause()
            try:
                await asyncio.sleep(0.3)
                sock = a.writer.get_extra_info("socket")
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                a.writer.transport.abort()
                await asyncio.sleep(1.0)
            finally:
                server.resume()

            loop = asyncio.get_running_loop()
            deadline = loop.time() + 15
            kinds = []
            while "synced" not in kinds:
                left = deadline - loop.time()
                assert left > 0, f"B got only {kinds} in 15 s"
                ev = await b.event(left)
                if ev.get("rid") == "l":
                    kinds.append(ev["type"])
                    assert ev["type"] != "error", ev
            assert kinds == ["welcome", "synced"]
            await b.ping()
            third = await dep.connect()
            await third.login("dup", "pw", timeout=15)
            await third.ping()
            await b.close()
    finally:
        server.stop()

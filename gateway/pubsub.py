"""A minimal Redis pub/sub connection for the gateway's one subscription per process.

Why not redis-py's PubSub: it reconnects and resubscribes behind the caller's back,
so the gateway could not know that messages were missed while the link was down;
and it does per-message bookkeeping the fan-out path does not need. This reads
whole socket chunks with hiredis and hands the hub every message of a chunk at once.

Owns: the socket, RESP encoding of (P)SUBSCRIBE commands, subscribe confirmations.
Must not know about sessions or message contents.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable
from typing import Any

import hiredis
from redis.connection import parse_url

__all__ = ["Subscriber", "SubscriberClosed"]


class SubscriberClosed(ConnectionError):
    """The pub/sub link is down; make a new Subscriber."""


def _command(*parts: str | bytes) -> bytes:
    out = [b"*%d\r\n" % len(parts)]
    for p in parts:
        b = p.encode() if isinstance(p, str) else p
        out.append(b"$%d\r\n%s\r\n" % (len(b), b))
    return b"".join(out)


class Subscriber:
    def __init__(self, url: str, connect_timeout_s: float = 2.0) -> None:
        self._params: dict[str, Any] = parse_url(url)  # type: ignore[no-untyped-call]
        self._connect_timeout_s = connect_timeout_s
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._parser = hiredis.Reader()
        self._confirmations: dict[bytes, list[asyncio.Future[None]]] = {}

    async def connect(self) -> None:
        p = self._params
        if "path" in p:
            opening = asyncio.open_unix_connection(p["path"], limit=1 << 20)
        else:
            opening = asyncio.open_connection(
                p.get("host", "localhost"), int(p.get("port", 6379)), limit=1 << 20
            )
        try:
            async with asyncio.timeout(self._connect_timeout_s):
                self._reader, self._writer = await opening
        except (OSError, TimeoutError) as exc:
            raise SubscriberClosed(f"cannot reach Redis: {exc}") from exc
        if p.get("password"):
            auth = [p["username"], p["password"]] if p.get("username") else [p["password"]]
            self._write(_command("AUTH", *auth))
            reply = await self._read_one()
            if isinstance(reply, hiredis.ReplyError):
                raise SubscriberClosed(f"Redis refused AUTH: {reply}")

    async def _read_one(self) -> Any:
        assert self._reader is not None
        while (reply := self._parser.gets()) is False:
            chunk = await self._reader.read(65536)
            if not chunk:
                raise SubscriberClosed("Redis closed the connection")
            self._parser.feed(chunk)
        return reply

    async def subscribe(self, channels: Iterable[str]) -> None:
        """Subscribe and wait until Redis confirms each channel (so nothing is missed)."""
        names = [c.encode() for c in channels]
        if not names:
            return
        loop = asyncio.get_running_loop()
        waits = []
        for name in names:
            fut: asyncio.Future[None] = loop.create_future()
            self._confirmations.setdefault(name, []).append(fut)
            waits.append(fut)
        self._write(_command("SUBSCRIBE", *names))
        await asyncio.gather(*waits)

    def unsubscribe(self, channels: Iterable[str]) -> None:
        names = [c.encode() for c in channels]
        if names:
            self._write(_command("UNSUBSCRIBE", *names))

    def _write(self, data: bytes) -> None:
        if self._writer is None or self._writer.is_closing():
            raise SubscriberClosed("pub/sub connection is closed")
        self._writer.write(data)

    async def read_batch(self) -> list[tuple[bytes, bytes]]:
        """Wait for the next chunk from Redis; return every (channel, data) message in it."""
        if self._reader is None:
            raise SubscriberClosed("not connected")
        while True:
            try:
                chunk = await self._reader.read(1 << 18)
            except OSError as exc:
                raise self._broken(str(exc)) from exc
            if not chunk:
                raise self._broken("Redis closed the connection")
            self._parser.feed(chunk)
            batch: list[tuple[bytes, bytes]] = []
            while (reply := self._parser.gets()) is not False:
                if isinstance(reply, hiredis.ReplyError):
                    # E.g. "max number of clients reached": Redis closes the link next.
                    raise self._broken(f"Redis refused: {reply}")
                if isinstance(reply, list) and len(reply) == 3:
                    kind = reply[0]
                    if kind == b"message":
                        batch.append((reply[1], reply[2]))
                    elif kind == b"subscribe":
                        for fut in self._confirmations.pop(reply[1], []):
                            if not fut.done():
                                fut.set_result(None)
            if batch:
                return batch

    def _broken(self, reason: str) -> SubscriberClosed:
        """The link is dead: a subscribe still waiting for its confirmation fails too
        (instead of waiting forever), so the caller can reconnect."""
        exc = SubscriberClosed(reason)
        for futs in self._confirmations.values():
            for fut in futs:
                if not fut.done():
                    fut.set_exception(exc)
        self._confirmations.clear()
        return exc

    async def close(self) -> None:
        self._broken("pub/sub connection closed")
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(OSError):
                await self._writer.wait_closed()
            self._writer = None

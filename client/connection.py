"""The redchat client library: one JSON-lines connection to a gateway.

Used by the console client, the tests and the benchmark. ``Connection`` speaks the
protocol of docs/protocol.md: requests carry a ``rid`` and their replies resolve
the awaiting call; everything else (live messages, notices, errors without a rid)
arrives on ``events()``. ``Connection.seen`` keeps the last message id per
conversation, from the reader's side, ready to pass as ``since`` when resuming.

No terminal code here, and no reconnect policy: ``client.resilient`` builds that
on top.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "ChatClient",
    "ChatError",
    "Connection",
    "ConnectionClosed",
    "LoginResult",
    "conversation_of",
    "id_key",
]

MAX_LINE = 8 << 20


class ChatError(Exception):
    """The server answered a request with an ``error`` event."""

    def __init__(self, event: dict[str, Any]) -> None:
        super().__init__(f"{event.get('code')}: {event.get('message')}")
        self.event = event
        self.code = str(event.get("code"))


class ConnectionClosed(ConnectionError):
    """The connection ended before the reply came."""


@dataclass
class LoginResult:
    welcome: dict[str, Any]
    replayed: list[dict[str, Any]] = field(default_factory=list)


def conversation_of(message: dict[str, Any], me: str) -> str:
    """A message's conversation named from ``me``'s side: '#room' or the other user."""
    to, sender = str(message["to"]), str(message["from"])
    if to.startswith("#"):
        return to
    return to if sender.lower() == me.lower() else sender


def id_key(sid: str) -> tuple[int, int]:
    """A stream id as a comparable pair; anything malformed sorts first."""
    ms, _, seq = sid.partition("-")
    try:
        return int(ms), int(seq or 0)
    except ValueError:
        return (0, 0)


class ChatClient:
    """What every client offers, given ``request(op, **fields)`` and ``next_event()``."""

    async def request(self, op: str, timeout: float | None = 30.0, **fields: Any) -> Any:
        raise NotImplementedError

    async def next_event(self, timeout: float | None = None) -> dict[str, Any]:
        raise NotImplementedError

    async def events(self) -> AsyncIterator[dict[str, Any]]:
        """Every event until the client has ended."""
        while True:
            try:
                yield await self.next_event()
            except ConnectionClosed:
                return

    async def history(
        self, with_: str, limit: int | None = None, before: str | None = None
    ) -> list[dict[str, Any]]:
        fields: dict[str, Any] = {"with": with_}
        if limit is not None:
            fields["limit"] = limit
        if before is not None:
            fields["before"] = before
        reply = await self.request("history", **fields)
        return list(reply["messages"])

    async def log(self, limit: int | None = None) -> list[dict[str, Any]]:
        reply = await self.request("log", **({} if limit is None else {"limit": limit}))
        return list(reply["messages"])

    async def status(self) -> dict[str, Any]:
        return dict(await self.request("status"))


class Connection(ChatClient):
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self._rids = itertools.count(1)
        self._pending: dict[str, asyncio.Future[Any]] = {}
        self._logins: dict[str, LoginResult] = {}
        self._events: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        self.user: str | None = None
        self.seen: dict[str, str] = {}
        self.closed = asyncio.Event()
        self.close_reason: str | None = None
        self._task = asyncio.create_task(self._read_forever())

    @classmethod
    async def open(
        cls, host: str = "127.0.0.1", port: int = 8000, timeout: float = 5.0
    ) -> Connection:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(host, port, limit=MAX_LINE), timeout
        )
        return cls(reader, writer)

    # -- requests ---------------------------------------------------------------
    async def request(self, op: str, timeout: float | None = 30.0, **fields: Any) -> Any:
        """Send one request and wait for its reply; an ``error`` reply raises ChatError."""
        rid = f"r{next(self._rids)}"
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[rid] = fut
        if op == "login":
            self._logins[rid] = LoginResult({})
        try:
            self.write({"op": op, "rid": rid, **fields})
            return await asyncio.wait_for(fut, timeout)
        finally:
            self._pending.pop(rid, None)
            self._logins.pop(rid, None)

    def write(self, obj: dict[str, Any]) -> None:
        if self._writer.is_closing():
            raise ConnectionClosed(self.close_reason or "connection closed")
        self._writer.write(json.dumps(obj, ensure_ascii=False).encode() + b"\n")

    async def login(
        self, user: str, password: str, since: dict[str, str] | None = None, timeout: float = 60.0
    ) -> LoginResult:
        """Log in; returns the welcome and every replayed message, once ``synced`` came."""
        fields: dict[str, Any] = {"user": user, "password": password}
        if since:
            fields["since"] = since
        result: LoginResult = await self.request("login", timeout=timeout, **fields)
        return result

    async def send(
        self,
        to: str,
        text: str,
        cid: str | None = None,
        reply_to: str | None = None,
        timeout: float = 30.0,
    ) -> str:
        """Send a message; returns its id once the server has stored it."""
        fields: dict[str, Any] = {"to": to, "text": text}
        if cid is not None:
            fields["cid"] = cid
        if reply_to is not None:
            fields["reply_to"] = reply_to
        ack = await self.request("send", timeout=timeout, **fields)
        return str(ack["id"])

    async def ping(self, timeout: float = 10.0) -> None:
        await self.request("ping", timeout=timeout)

    async def quit(self) -> None:
        with contextlib.suppress(ConnectionClosed, TimeoutError, ConnectionError):
            await self.request("quit", timeout=5.0)
        await self.close()

    # -- events -----------------------------------------------------------------
    async def next_event(self, timeout: float | None = None) -> dict[str, Any]:
        """The next event that is not a reply; raises ConnectionClosed at the end."""
        ev = await asyncio.wait_for(self._events.get(), timeout)
        if ev is None:
            self._events.put_nowait(None)  # stay closed for later callers
            raise ConnectionClosed(self.close_reason or "connection closed")
        return ev

    async def messages(self, count: int, timeout: float = 10.0) -> list[dict[str, Any]]:
        """Wait for ``count`` message events (other events are skipped)."""
        out: list[dict[str, Any]] = []
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while len(out) < count:
            ev = await self.next_event(timeout=max(0.0, deadline - loop.time()))
            if ev.get("type") == "message":
                out.append(ev)
        return out

    # -- reading ------------------------------------------------------------------
    def _note_seen(self, ev: dict[str, Any]) -> None:
        if self.user is None:
            return
        conv = conversation_of(ev, self.user)
        last = self.seen.get(conv)
        if last is None or id_key(ev["id"]) > id_key(last):
            self.seen[conv] = str(ev["id"])

    def _dispatch(self, ev: dict[str, Any]) -> None:
        kind = ev.get("type")
        rid = ev.get("rid")
        rid = str(rid) if rid is not None else None
        fut = self._pending.get(rid) if rid is not None else None
        if kind == "message":
            self._note_seen(ev)
            login = next(iter(self._logins.values()), None)
            if ev.get("replay") and login is not None and login.welcome:
                login.replayed.append(ev)
                return
        elif fut is not None and not fut.done():
            if kind == "error":
                fut.set_exception(ChatError(ev))
            elif kind == "welcome" and rid in self._logins:
                self._logins[rid].welcome = ev
                self.user = str(ev["user"])
            elif kind == "synced" and rid in self._logins:
                fut.set_result(self._logins[rid])
            else:
                fut.set_result(ev)
            return
        self._events.put_nowait(ev)

    async def _read_forever(self) -> None:
        try:
            while True:
                line = await self._reader.readline()
                if not line:
                    break
                try:
                    ev = json.loads(line)
                except ValueError:
                    continue
                if isinstance(ev, dict):
                    if ev.get("type") == "error" and ev.get("rid") is None:
                        self.close_reason = f"{ev.get('code')}: {ev.get('message')}"
                    self._dispatch(ev)
        except (ConnectionError, OSError, ValueError, asyncio.LimitOverrunError) as exc:
            self.close_reason = self.close_reason or str(exc)
        finally:
            self.closed.set()
            for fut in self._pending.values():
                if not fut.done():
                    fut.set_exception(ConnectionClosed(self.close_reason or "connection closed"))
            self._events.put_nowait(None)

    async def close(self) -> None:
        self._writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await self._writer.wait_closed()
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    async def __aenter__(self) -> Connection:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

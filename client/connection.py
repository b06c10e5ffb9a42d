"""The redchat client library: one JSON-lines connection to a gateway.

Used by the console client, the tests and the benchmark. ``Connection`` speaks the
protocol of docs/protocol.md: requests carry a ``rid`` and their replies resolve
the awaiting call; everything else (live messages, notices, errors without a rid)
arrives on ``events()``. ``Connection.seen`` keeps the last message id per
conversation, from the reader's side, ready to pass as ``since`` when resuming.

Files travel in chunks (docs/protocol.md, "Files"): ``upload`` sends a file with a
few chunks in flight and returns the file message's ``ack``; ``download`` fetches
one by its ``fid`` and checks nothing but the order of its chunks (callers that know
the file's SHA-256, from its message, check it).

No terminal code here, and no reconnect policy: ``client.resilient`` builds that
on top.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
import itertools
import json
import os
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Final

__all__ = [
    "ChatClient",
    "ChatError",
    "Connection",
    "ConnectionClosed",
    "LoginResult",
    "Progress",
    "conversation_of",
    "id_key",
]

MAX_LINE = 8 << 20
UPLOAD_WINDOW: Final = 4  # chunks in flight: enough to hide a round trip, little to lose
HASH_READ: Final = 1 << 20

Progress = Callable[[int, int], None]  # (bytes done, bytes in all)


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

    def request_stream(
        self, op: str, timeout: float | None = 30.0, **fields: Any
    ) -> AsyncGenerator[dict[str, Any], None]:
        """Send one request answered by several events; yields them up to and with the
        one that has ``last: true``. An ``error`` raises ChatError."""
        raise NotImplementedError

    # -- files --------------------------------------------------------------------
    async def upload(
        self,
        source: bytes | bytearray | str | os.PathLike[str],
        to: str,
        *,
        name: str | None = None,
        mime: str | None = None,
        cid: str | None = None,
        progress: Progress | None = None,
        window: int = UPLOAD_WINDOW,
        timeout: float | None = 30.0,
    ) -> dict[str, Any]:
        """Send a file (its bytes, or a path, read as it goes) to ``to``; returns the
        ``ack`` with ``id`` and ``file``. A refused chunk aborts the upload."""
        with contextlib.ExitStack() as stack:
            if isinstance(source, bytes | bytearray):
                data = bytes(source)
                size, digest = len(data), hashlib.sha256(data).hexdigest()

                def piece(start: int, length: int) -> bytes:
                    return data[start : start + length]
            else:
                path = Path(source)
                name = name or path.name
                f = stack.enter_context(await asyncio.to_thread(path.open, "rb"))
                size, digest = await asyncio.to_thread(_hash_of, f)

                def piece(start: int, length: int) -> bytes:
                    f.seek(start)
                    return f.read(length)

            if name is None:
                raise ValueError("an upload of bytes needs a name")
            fields: dict[str, Any] = {"to": to, "name": name, "size": size, "sha256": digest}
            fields |= {k: v for k, v in (("mime", mime), ("cid", cid)) if v is not None}
            started = await self.request("upload", timeout=timeout, **fields)
            uid, step = str(started["uid"]), int(started["chunk_bytes"])
            await self._send_chunks(uid, step, int(started["chunks"]), size, piece,
                                    progress, max(1, window), timeout)  # fmt: skip
        return dict(await self.request("finish_upload", timeout=timeout, uid=uid))

    async def _send_chunks(
        self, uid: str, step: int, count: int, size: int, piece: Callable[[int, int], bytes],
        progress: Progress | None, window: int, timeout: float | None,
    ) -> None:  # fmt: skip
        done = 0
        if progress is not None:
            progress(0, size)
        flying: dict[asyncio.Task[Any], int] = {}
        try:
            for seq in range(count):
                chunk = piece(seq * step, step)
                data = base64.b64encode(chunk).decode("ascii")
                task = asyncio.ensure_future(
                    self.request("chunk", timeout=timeout, uid=uid, seq=seq, data=data)
                )
                flying[task] = len(chunk)
                while len(flying) >= window or (seq == count - 1 and flying):
                    finished, _ = await asyncio.wait(flying, return_when=asyncio.FIRST_COMPLETED)
                    for task in finished:
                        done += flying.pop(task)
                        task.result()  # a refused chunk raises here
                    if progress is not None:
                        progress(done, size)
        except ChatError:
            # The server refused a chunk: say so, so nothing waits for its expiry.
            with contextlib.suppress(ChatError, ConnectionClosed, TimeoutError):
                await self.request("abort_upload", timeout=timeout, uid=uid)
            raise
        finally:
            for task in flying:
                task.cancel()
            await asyncio.gather(*flying, return_exceptions=True)

    async def download(
        self, fid: str, *, progress: Progress | None = None, timeout: float | None = 30.0
    ) -> bytes:
        """A file's bytes, by its ``fid``."""
        out = bytearray()
        seq = 0
        # Closed at once if left early (its connection then drops the rest of it).
        async with contextlib.aclosing(
            self.request_stream("fetch", timeout=timeout, fid=fid)
        ) as events:
            async for ev in events:
                if ev.get("type") != "file_chunk" or ev.get("seq") != seq:
                    raise ChatError(_bad_reply(f"expected chunk {seq} of {fid}, got {ev!r:.100}"))
                try:
                    out += base64.b64decode(str(ev.get("data", "")), validate=True)
                except (binascii.Error, ValueError):
                    raise ChatError(_bad_reply(f"chunk {seq} of {fid} is not base64")) from None
                seq += 1
                if progress is not None:
                    size = ev.get("size")
                    progress(len(out), size if isinstance(size, int) else len(out))
        return bytes(out)


def _hash_of(f: IO[bytes]) -> tuple[int, str]:
    """(size, SHA-256) of an open file, read a megabyte at a time."""
    digest, size = hashlib.sha256(), 0
    while block := f.read(HASH_READ):
        digest.update(block)
        size += len(block)
    return size, digest.hexdigest()


def _bad_reply(message: str) -> dict[str, Any]:
    return {"type": "error", "code": "bad_reply", "message": message}


class Connection(ChatClient):
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self._rids = itertools.count(1)
        self._pending: dict[str, asyncio.Future[Any]] = {}
        self._logins: dict[str, LoginResult] = {}
        self._events: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        self._streams: dict[str, asyncio.Queue[dict[str, Any] | None]] = {}
        self._abandoned: set[str] = set()  # streams left early: the rest of them is dropped
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

    async def request_stream(
        self, op: str, timeout: float | None = 30.0, **fields: Any
    ) -> AsyncGenerator[dict[str, Any], None]:
        """Send one request answered by several events (``fetch``): yields them up to
        and with the one that has ``last: true``; ``timeout`` is per event."""
        rid = f"r{next(self._rids)}"
        queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        self._streams[rid] = queue
        ended = False
        try:
            self.write({"op": op, "rid": rid, **fields})
            while not ended:
                ev = await asyncio.wait_for(queue.get(), timeout)
                if ev is None:
                    ended = True
                    raise ConnectionClosed(self.close_reason or "connection closed")
                if ev.get("type") == "error":
                    ended = True
                    raise ChatError(ev)
                ended = ev.get("last") is True
                yield ev
        finally:
            self._streams.pop(rid, None)
            if not ended:
                self._abandoned.add(rid)

    def write(self, obj: dict[str, Any]) -> None:
        if self._writer.is_closing():
            raise ConnectionClosed(self.close_reason or "connection closed")
        # Compact, and ``op`` first (the dict's order): a chunk's line must start with
        # exactly {"op":"chunk", to get the longer line bound.
        line = json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()
        self._writer.write(line + b"\n")

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
        if rid is not None and kind != "message" and self._streamed(rid, ev):
            return
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

    def _streamed(self, rid: str, ev: dict[str, Any]) -> bool:
        """An event of a stream: handed to it (or dropped, if it was left early)."""
        stream = self._streams.get(rid)
        if stream is not None:
            stream.put_nowait(ev)
            return True
        if rid in self._abandoned:
            if ev.get("last") is True or ev.get("type") == "error":
                self._abandoned.discard(rid)
            return True
        return False

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
            for stream in self._streams.values():
                stream.put_nowait(None)
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

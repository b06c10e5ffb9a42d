"""A client that survives its gateway going away: reconnect, resume, resend.

Built on ``client.connection.Connection`` (one TCP connection) and owns the policy
around it:

- **Reconnect** with exponential backoff and jitter; every attempt is reported to
  ``on_status`` as a ``LinkStatus`` so a UI can say "reconnecting… (attempt 3,
  next in 2 s)". A refused password or a ban stops it (``LinkState.FAILED``).
- **Resume**: each login after the first passes ``since`` = the last message id
  this client *delivered* per conversation (``seen``), so the gateway replays
  exactly what was missed. Any message whose id is not above ``seen`` for its
  conversation is dropped here as well: nothing lost, nothing twice.
- **Sends** are queued (``send`` never blocks), each with a client id (``cid``,
  a uuid). The queue is sent in order, one at a time, and whatever is not acked
  when a connection dies is sent again on the next one with the same ``cid``, so
  the server stores it once even if the first attempt was stored and only its ack
  was lost.

Everything the consumer sees comes out of ``next_event`` / ``events`` in order:
the server's events (``welcome`` with ``resumed: true`` after a reconnect,
deduplicated ``message``s, ``synced``, ``notice``, ``error``), plus ``ack`` for a
queued send and ``error`` with the ``cid`` of a send the server refused.

No terminal code here: the console and the tests both drive this class.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import random
import uuid
from collections import deque
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from client.connection import (
    ChatClient,
    ChatError,
    Connection,
    ConnectionClosed,
    LoginResult,
    conversation_of,
    id_key,
)

__all__ = [
    "Backoff",
    "LinkState",
    "LinkStatus",
    "Outgoing",
    "ResilientClient",
    "SeenTracker",
]

# Refusals that another attempt will not change: stop reconnecting.
FATAL_LOGIN_CODES: Final = frozenset({"bad_password", "bad_name", "banned", "forbidden"})
# Refusals of a send that mean "not now" rather than "never": try it again.
RETRY_SEND_CODES: Final = frozenset({"unavailable"})
MAX_SEND_ATTEMPTS: Final = 10


class LinkState(enum.Enum):
    CONNECTING = "connecting"
    UP = "up"
    DOWN = "down"  # the connection just ended
    WAITING = "waiting"  # sleeping before attempt ``attempt``
    FAILED = "failed"  # gave up: refused login or out of attempts
    CLOSED = "closed"  # closed on purpose


@dataclass(frozen=True, slots=True)
class LinkStatus:
    state: LinkState
    attempt: int = 0
    delay_s: float = 0.0
    reason: str = ""
    gateway: str = ""

    def describe(self) -> str:
        match self.state:
            case LinkState.UP:
                return f"connected to gateway {self.gateway}"
            case LinkState.DOWN:
                return f"connection lost ({self.reason})"
            case LinkState.WAITING:
                return f"reconnecting… (attempt {self.attempt}, next in {self.delay_s:.1f} s)"
            case LinkState.CONNECTING:
                return f"reconnecting… (attempt {self.attempt})"
            case LinkState.FAILED:
                return f"gave up reconnecting ({self.reason})"
            case LinkState.CLOSED:
                return "disconnected"


@dataclass(frozen=True, slots=True)
class Backoff:
    """Delay before reconnect attempt n: initial * factor**(n-1), capped, ± jitter."""

    initial_s: float = 0.25
    factor: float = 2.0
    max_s: float = 10.0
    jitter: float = 0.2

    def delay(self, attempt: int) -> float:
        base = min(self.max_s, self.initial_s * self.factor ** max(0, attempt - 1))
        return base * (1 + random.uniform(-self.jitter, self.jitter))


class SeenTracker:
    """Last message id delivered per conversation; refuses anything not newer."""

    def __init__(self, since: Mapping[str, str] | None = None) -> None:
        self.last: dict[str, str] = dict(since or {})

    def accept(self, message: Mapping[str, Any], me: str) -> bool:
        conversation = conversation_of(dict(message), me)
        key = conversation.lower()
        sid = str(message["id"])
        known = self.last.get(key)
        if known is not None and id_key(sid) <= id_key(known):
            return False
        self.last[key] = sid
        return True


@dataclass(eq=False)
class Outgoing:
    """One queued send. ``wait`` returns its id once stored; raises if refused."""

    to: str
    text: str
    reply_to: str | None = None
    cid: str = field(default_factory=lambda: uuid.uuid4().hex)
    id: str | None = None
    error: ChatError | None = None
    attempts: int = 0
    done: asyncio.Event = field(default_factory=asyncio.Event)

    async def wait(self, timeout: float | None = None) -> str:
        await asyncio.wait_for(self.done.wait(), timeout)
        if self.error is not None:
            raise self.error
        assert self.id is not None
        return self.id


class ResilientClient(ChatClient):
    def __init__(
        self,
        user: str,
        password: str,
        host: str = "127.0.0.1",
        port: int = 8000,
        *,
        backoff: Backoff | None = None,
        on_status: Callable[[LinkStatus], None] | None = None,
        max_attempts: int | None = None,
        since: Mapping[str, str] | None = None,
        ping_interval_s: float = 20.0,
        timeout_s: float = 10.0,
        max_queued_events: int = 10_000,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.user = user
        self._password = password
        self.host = host
        self.port = port
        self.backoff = backoff or Backoff()
        self.on_status = on_status
        self.max_attempts = max_attempts
        self.ping_interval_s = ping_interval_s
        self.timeout_s = timeout_s
        self._sleep = sleep
        self._seen = SeenTracker(since)
        self.dropped = 0  # messages refused as already delivered
        self.reconnects = 0
        self.gateway = ""
        self.link = LinkStatus(LinkState.CONNECTING)
        self._conn: Connection | None = None
        self._up = asyncio.Event()
        self._pending: deque[Outgoing] = deque()
        self._queued = asyncio.Event()
        self._all_acked = asyncio.Event()
        self._all_acked.set()
        self._finished = asyncio.Event()
        self._delivered = asyncio.Condition()
        # Bounded: a consumer that stops reading stops us reading the socket, and the
        # gateway then cuts us off as a slow consumer; we resume from ``seen`` later.
        self._events: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue(max_queued_events)
        self._closing = False
        self._ended = False
        self._task: asyncio.Task[None] | None = None

    # -- public ---------------------------------------------------------------------
    @property
    def seen(self) -> dict[str, str]:
        """Last id delivered per conversation (lower-cased names), ready for ``since``."""
        return dict(self._seen.last)

    @property
    def connected(self) -> bool:
        return self._up.is_set()

    @property
    def unacked(self) -> list[Outgoing]:
        return list(self._pending)

    async def start(self) -> LoginResult:
        """Connect and log in once; errors here (refused, unreachable) are raised."""
        conn = await Connection.open(self.host, self.port, self.timeout_s)
        try:
            result = await conn.login(self.user, self._password, self._since(), self.timeout_s)
        except BaseException:
            await conn.close()
            raise
        await self._logged_in(conn, result, resumed=False)
        self._task = asyncio.create_task(self._run(conn))
        return result

    def send(self, to: str, text: str, reply_to: str | None = None) -> Outgoing:
        """Queue a message; it goes out now if connected, else after reconnecting."""
        item = Outgoing(to, text, reply_to)
        self._pending.append(item)
        self._all_acked.clear()
        self._queued.set()
        return item

    async def flush(self, timeout: float | None = None) -> bool:
        """Wait until every queued send was acked or refused, or the client ended.

        Returns True when nothing is left unacked.
        """
        acked = asyncio.ensure_future(self._all_acked.wait())
        ended = asyncio.ensure_future(self._finished.wait())
        try:
            await asyncio.wait([acked, ended], timeout=timeout, return_when="FIRST_COMPLETED")
        finally:
            acked.cancel()
            ended.cancel()
        return not self._pending

    def delivered(self, conversation: str, message_id: str) -> bool:
        """Whether a message of ``conversation`` with this id (or a later one) came out."""
        known = self._seen.last.get(conversation.lower())
        return known is not None and id_key(known) >= id_key(message_id)

    async def wait_delivered(self, conversation: str, message_id: str, timeout: float) -> bool:
        """Wait (up to ``timeout``) until ``delivered`` holds; returns whether it does."""
        async with self._delivered:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    self._delivered.wait_for(lambda: self.delivered(conversation, message_id)),
                    timeout,
                )
        return self.delivered(conversation, message_id)

    async def request(self, op: str, timeout: float | None = None, **fields: Any) -> Any:
        """A request on the current connection, waiting up to ``timeout`` for one."""
        timeout = self.timeout_s if timeout is None else timeout
        conn = await self._current(timeout)
        return await conn.request(op, timeout=timeout, **fields)

    async def _current(self, timeout: float) -> Connection:
        """The connection once it is up, waiting at most ``timeout``."""
        try:
            await asyncio.wait_for(self._up.wait(), timeout)
        except TimeoutError:
            raise ConnectionClosed("not connected") from None
        assert self._conn is not None
        return self._conn

    async def request_stream(
        self, op: str, timeout: float | None = None, **fields: Any
    ) -> AsyncGenerator[dict[str, Any], None]:
        """A request answered by several events, on the current connection (which, if
        it drops meanwhile, ends the stream with ConnectionClosed)."""
        timeout = self.timeout_s if timeout is None else timeout
        conn = await self._current(timeout)
        async with contextlib.aclosing(
            conn.request_stream(op, timeout=timeout, **fields)
        ) as events:
            async for ev in events:
                yield ev

    async def next_event(self, timeout: float | None = None) -> dict[str, Any]:
        """The next event for the consumer; ConnectionClosed once the client has ended."""
        if self._ended and self._events.empty():
            raise ConnectionClosed(self.link.reason or "closed")
        ev = await asyncio.wait_for(self._events.get(), timeout)
        if ev is None:
            self._ended = True
            raise ConnectionClosed(self.link.reason or "closed")
        return ev

    async def close(self) -> None:
        """Say goodbye and stop; unacked sends are abandoned (``flush`` first to keep them)."""
        self._closing = True
        conn = self._conn
        if conn is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.quit(), 5.0)
        if self._task is not None:
            if conn is not None:
                # Let it hand over what the connection still had, then stop it.
                await asyncio.wait([self._task], timeout=5.0)
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        else:
            self._end(LinkStatus(LinkState.CLOSED))

    # -- connection life --------------------------------------------------------------
    def _since(self) -> dict[str, str] | None:
        return self._seen.last.copy() or None

    def _report(self, status: LinkStatus) -> None:
        self.link = status
        if self.on_status is not None:
            self.on_status(status)

    def _end(self, status: LinkStatus) -> None:
        self._up.clear()
        self._finished.set()
        self._report(status)
        # The consumer may be gone; never block on the end marker.
        with contextlib.suppress(asyncio.QueueFull):
            self._events.put_nowait(None)

    async def _logged_in(self, conn: Connection, result: LoginResult, resumed: bool) -> None:
        self._conn = conn
        self.user = str(result.welcome.get("user", self.user))
        self.gateway = str(result.welcome.get("gateway", ""))
        await self._events.put({**result.welcome, "resumed": resumed})
        for message in result.replayed:
            await self._deliver(message)
        await self._events.put({"type": "synced"})
        self._up.set()
        self._report(LinkStatus(LinkState.UP, gateway=self.gateway))

    async def _deliver(self, ev: dict[str, Any]) -> None:
        if ev.get("type") == "message":
            try:
                fresh = self._seen.accept(ev, self.user)
            except (KeyError, TypeError):
                return
            if not fresh:
                self.dropped += 1
                return
            await self._events.put(ev)
            async with self._delivered:
                self._delivered.notify_all()
            return
        await self._events.put(ev)

    async def _run(self, conn: Connection | None) -> None:
        final = LinkStatus(LinkState.CLOSED)
        try:
            while conn is not None:
                reason = await self._serve(conn)
                self._up.clear()
                self._conn = None
                await conn.close()
                if self._closing:
                    break
                self._report(LinkStatus(LinkState.DOWN, reason=reason))
                conn = await self._reconnect(reason)
                if conn is None:
                    final = self.link
        finally:
            self._end(final if final.state is LinkState.FAILED else LinkStatus(LinkState.CLOSED))

    async def _serve(self, conn: Connection) -> str:
        """Pump one connection's events until it ends; returns why it ended."""
        helpers = [
            asyncio.create_task(self._send_queued(conn)),
            asyncio.create_task(self._keepalive(conn)),
        ]
        try:
            async for ev in conn.events():
                await self._deliver(ev)
        finally:
            for task in helpers:
                task.cancel()
            await asyncio.gather(*helpers, return_exceptions=True)
        return conn.close_reason or "connection closed"

    async def _reconnect(self, reason: str) -> Connection | None:
        attempt = 0
        while not self._closing:
            attempt += 1
            if self.max_attempts is not None and attempt > self.max_attempts:
                self._report(LinkStatus(LinkState.FAILED, attempt - 1, reason=reason))
                return None
            delay = self.backoff.delay(attempt)
            self._report(LinkStatus(LinkState.WAITING, attempt, delay, reason))
            await self._sleep(delay)
            self._report(LinkStatus(LinkState.CONNECTING, attempt, reason=reason))
            conn: Connection | None = None
            try:
                conn = await Connection.open(self.host, self.port, self.timeout_s)
                result = await conn.login(self.user, self._password, self._since(), self.timeout_s)
            except ChatError as exc:
                if conn is not None:
                    await conn.close()
                reason = str(exc)
                if exc.code in FATAL_LOGIN_CODES:
                    await self._events.put(exc.event)
                    self._report(LinkStatus(LinkState.FAILED, attempt, reason=reason))
                    return None
                continue
            except (OSError, ConnectionClosed, TimeoutError) as exc:
                if conn is not None:
                    await conn.close()
                reason = str(exc) or type(exc).__name__
                continue
            self.reconnects += 1
            await self._logged_in(conn, result, resumed=True)
            return conn
        return None

    async def _keepalive(self, conn: Connection) -> None:
        """A connection that stops answering pings is dead even if TCP has not noticed."""
        while True:
            await asyncio.sleep(self.ping_interval_s)
            try:
                await conn.ping(timeout=self.timeout_s)
            except TimeoutError:
                conn.close_reason = "no answer to ping"
                await conn.close()
                return
            except (ConnectionClosed, ChatError):
                return

    async def _send_queued(self, conn: Connection) -> None:
        """Send the queue in order; what is not acked when ``conn`` dies stays queued."""
        while True:
            while not self._pending:
                self._queued.clear()
                await self._queued.wait()
            item = self._pending[0]
            item.attempts += 1
            try:
                item.id = await conn.send(
                    item.to, item.text, cid=item.cid, reply_to=item.reply_to,
                    timeout=self.timeout_s,
                )  # fmt: skip
            except ChatError as exc:
                if exc.code in RETRY_SEND_CODES and item.attempts < MAX_SEND_ATTEMPTS:
                    await asyncio.sleep(self.backoff.delay(min(item.attempts, 6)))
                    continue
                item.error = exc
                await self._events.put({**exc.event, "cid": item.cid, "to": item.to})
            except TimeoutError:
                # No ack in time: assume the link is dead and let a new one resend it.
                conn.close_reason = "no ack in time"
                await conn.close()
                return
            except ConnectionClosed:
                return
            else:
                await self._events.put({"type": "ack", "id": item.id, "cid": item.cid})
            self._pending.popleft()
            item.done.set()
            if not self._pending:
                self._all_acked.set()

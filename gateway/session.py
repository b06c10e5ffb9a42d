"""One client connection: moves bytes, runs its commands in order, holds its outbox.

The session does not parse (the codec from ``gateway.protocol`` does) and does not
build Redis keys (the store does). It owns the connection's state machine:

    NEW --first bytes--> GUEST --login--> SYNCING --replay done--> LIVE
     |                     |                 ^                       |
     |                     |                 +------ resync ---------+
     +---------------------+-----------------+-----------------------+--> CLOSED

While SYNCING, live events are held back and delivered after the replay, minus any
id the replay already sent: no gap, no duplicate.

Output goes through ``write``: bytes are queued and flushed once per loop turn, and
when what is queued for this client passes ``max_outbox_bytes`` the client is cut
off with ``slow_consumer`` instead of delaying anyone else.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections import deque
from collections.abc import Mapping
from typing import TYPE_CHECKING, Final, cast

from gateway.errors import ClientError
from gateway.keys import GENERAL, dm_conversation, is_room
from gateway.protocol import (
    HELP_TEXT,
    Ack,
    Bye,
    Codec,
    Command,
    Error,
    Event,
    Framing,
    GetHistory,
    GetLog,
    GetStatus,
    Help,
    HistoryResult,
    JsonCodec,
    Login,
    LogResult,
    Message,
    Notice,
    Ping,
    Pong,
    Quit,
    Send,
    StatusResult,
    Synced,
    TextCodec,
    Welcome,
    detect_framing,
    http_not_implemented,
    parse_stream_id,
)
from gateway.store import REDIS_DOWN

if TYPE_CHECKING:
    from gateway.server import Gateway

__all__ = ["Flusher", "Session", "State"]

log = logging.getLogger("redchat.session")

MAX_QUEUED_COMMANDS: Final = 64  # past this, stop reading from the socket
MAX_FIRST_BYTES: Final = 16  # enough to tell an HTTP method from text
REPLAY_PAGE: Final = 200
DRAIN_HIGH_WATER: Final = 256 * 1024


class State(enum.Enum):
    NEW = "new"
    GUEST = "guest"
    SYNCING = "syncing"
    LIVE = "live"
    CLOSED = "closed"


_ALLOWED: Final = {
    State.NEW: {State.GUEST, State.CLOSED},
    State.GUEST: {State.SYNCING, State.CLOSED},
    State.SYNCING: {State.LIVE, State.GUEST, State.CLOSED},
    State.LIVE: {State.SYNCING, State.CLOSED},
    State.CLOSED: set(),
}


class _Resync:
    """Internal queue item: re-read history after the pub/sub link came back."""


class Flusher:
    """Flushes the outboxes of a gateway's sessions together, one socket write each.

    Idle, a write goes out on the next loop turn, as a per-session ``call_soon``
    would. Busy, flushes are at most ``interval_s`` apart: every message that
    arrives in between joins the same write, which turns one ``send()`` per
    message and recipient into one per recipient and interval (a loopback send
    also wakes the reader, so each one costs a context switch on a small box).
    A flush never waits longer than ``interval_s``; 0 turns the coalescing off.
    """

    def __init__(self, interval_s: float) -> None:
        self.interval_s = interval_s
        self._dirty: list[Session] = []
        self._scheduled = False
        self._last = 0.0

    def add(self, session: Session) -> None:
        self._dirty.append(session)
        if not self._scheduled:
            self._scheduled = True
            loop = asyncio.get_running_loop()
            due = self._last + self.interval_s
            if due <= loop.time():
                loop.call_soon(self._run)
            else:
                loop.call_at(due, self._run)

    def _run(self) -> None:
        self._scheduled = False
        self._last = asyncio.get_running_loop().time()
        dirty, self._dirty = self._dirty, []
        for session in dirty:
            session._flush()


class Session(asyncio.Protocol):
    def __init__(self, gateway: Gateway) -> None:
        self.gw = gateway
        self.settings = gateway.settings
        self.state = State.NEW
        self.codec: Codec | None = None
        self.user: str | None = None  # display name once logged in
        self.peer = "?"
        self.transport: asyncio.Transport | None = None
        self._first = b""
        self._inbox: deque[Command | Error | _Resync] = deque()
        self._worker: asyncio.Task[None] | None = None
        self._reading_paused = False
        self._out: list[bytes] = []
        self._out_bytes = 0
        self._flush_scheduled = False
        self._drained: asyncio.Event = asyncio.Event()
        self._drained.set()
        self._held: list[tuple[str, Message]] = []
        self._held_bytes = 0
        self.last_sent: dict[str, tuple[int, int]] = {}  # conversation -> last id delivered
        self._login_timer: asyncio.TimerHandle | None = None
        self._counted = False  # counted in the gateway's presence

    # -- state ------------------------------------------------------------------
    def _to(self, new: State) -> None:
        if new not in _ALLOWED[self.state]:
            raise RuntimeError(f"session cannot go from {self.state} to {new}")
        self.state = new

    # -- asyncio.Protocol -----------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but behave as one.
        self.transport = transport = cast(asyncio.Transport, transport)
        # Replay waits for the client below this mark, well under the outbox bound.
        transport.set_write_buffer_limits(
            high=min(DRAIN_HIGH_WATER, self.settings.max_outbox_bytes // 4)
        )
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        loop = asyncio.get_running_loop()
        self._login_timer = loop.call_later(self.settings.login_timeout_s, self._login_timeout)
        if not self.gw.admit(self):
            self.close_with(Error("forbidden", "too many connections from your address"))

    def data_received(self, data: bytes) -> None:
        if self.state is State.CLOSED:
            return
        if self.codec is None:
            data = self._first + data
            framing = detect_framing(data)
            if framing is None and len(data) < MAX_FIRST_BYTES:
                self._first = data
                return
            self._first = b""
            if framing is Framing.HTTP:
                self._write_now(http_not_implemented())
                self._close_transport()
                return
            self._start(JsonCodec if framing is Framing.JSON else TextCodec)
            assert self.codec is not None
        self._inbox.extend(self.codec.feed(data))
        if len(self._inbox) > MAX_QUEUED_COMMANDS and not self._reading_paused:
            assert self.transport is not None
            self.transport.pause_reading()
            self._reading_paused = True
        self._kick()

    def _start(self, codec_class: type[Codec]) -> None:
        s = self.settings
        self.codec = codec_class(s.max_line_bytes, s.max_text_chars)
        self._to(State.GUEST)

    def connection_lost(self, exc: Exception | None) -> None:
        was = self.state
        if was is not State.CLOSED:
            self._to(State.CLOSED)
        if self._login_timer is not None:
            self._login_timer.cancel()
        if self._worker is not None and not self._worker.done():
            self._worker.cancel()
        self._drained.set()
        self._out.clear()
        self._held.clear()
        self.gw.forget(self)
        if self.user is not None and was in (State.SYNCING, State.LIVE):
            self.gw.hub.leave(self)
            if self._counted:
                self.gw.user_left(self.user)
            log.info("logout user=%s peer=%s", self.user, self.peer)

    def _undo_login(self) -> None:
        """Login failed half-way: back to a guest, as if it had never started."""
        if self.state is not State.SYNCING or self.user is None:
            return
        self.gw.hub.leave(self)
        if self._counted:
            self._counted = False
            self.gw.user_left(self.user)
        self.user = None
        self._held.clear()
        self._held_bytes = 0
        self.last_sent.clear()
        self._to(State.GUEST)

    def pause_writing(self) -> None:
        self._drained.clear()

    def resume_writing(self) -> None:
        self._drained.set()

    # -- output -------------------------------------------------------------------
    def send_event(self, ev: Event) -> None:
        if self.codec is not None:
            self.write(self.codec.encode(ev))

    async def reply_large(self, ev: Event) -> None:
        """A reply the client asked for (history, log): it may pass the outbox bound,
        which is for traffic the client did not ask for; the next command waits
        until the client has read it."""
        if self.codec is not None:
            self.write(self.codec.encode(ev), bounded=False)
            await self._drain()

    def write(self, data: bytes, bounded: bool = True) -> None:
        """Queue bytes for the client, or cut it off if it is too far behind."""
        if self.state is State.CLOSED or self.transport is None or not data:
            return
        if self.transport.is_closing():
            return  # already cut off or saying goodbye: nothing more is queued
        if bounded and self._queued() + len(data) > self.settings.max_outbox_bytes:
            self._slow_consumer()
            return
        self._out.append(data)
        self._out_bytes += len(data)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self.gw.flusher.add(self)

    def _flush(self) -> None:
        self._flush_scheduled = False
        if not self._out or self.transport is None or self.transport.is_closing():
            return
        data = b"".join(self._out) if len(self._out) > 1 else self._out[0]
        self._out.clear()
        self._out_bytes = 0
        self.transport.write(data)

    def _write_now(self, data: bytes) -> None:
        self._flush()
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def _slow_consumer(self) -> None:
        log.warning(
            "slow_consumer user=%s peer=%s: outbox over %d bytes, disconnecting",
            self.user,
            self.peer,
            self.settings.max_outbox_bytes,
        )
        self.close_with(
            Error("slow_consumer", "you fell too far behind; reconnect to catch up"),
            flush=False,
        )

    def close_with(self, ev: Event | None = None, flush: bool = True) -> None:
        """Say a last word and close; a client that does not read is cut off after 2 s."""
        if self.transport is None or self.transport.is_closing():
            return
        if flush:
            self._flush()
        else:
            self._out.clear()
            self._out_bytes = 0
        if ev is not None:
            self.transport.write((self.codec or TextCodec()).encode(ev))
        self._close_transport()

    def _close_transport(self) -> None:
        transport = self.transport
        if transport is None:
            return
        transport.close()
        asyncio.get_running_loop().call_later(2.0, transport.abort)

    def _queued(self) -> int:
        buffered = self.transport.get_write_buffer_size() if self.transport is not None else 0
        return buffered + self._out_bytes

    async def _drain(self) -> None:
        self._flush()
        await self._drained.wait()

    def _login_timeout(self) -> None:
        if self.user is None and self.state is not State.CLOSED:
            limit = self.settings.login_timeout_s
            self.close_with(Error("not_logged_in", f"no login within {limit:g} s; closing"))

    # -- live delivery (called by the hub, never awaits) -------------------------------
    def deliver(self, conversation: str, msg: Message) -> None:
        if self.state is State.LIVE:
            self._deliver_now(conversation, msg)
        elif self.state is State.SYNCING:
            size = len(msg.raw or b"") or 256
            if self._held_bytes + size > self.settings.max_outbox_bytes:
                self._slow_consumer()
                return
            self._held.append((conversation, msg))
            self._held_bytes += size

    def _deliver_now(self, conversation: str, msg: Message) -> None:
        key = msg.key
        last = self.last_sent.get(conversation)
        if last is not None and key <= last:
            return
        self.last_sent[conversation] = key
        assert self.codec is not None and self.user is not None
        self.write(self.codec.encode(msg))
        self.gw.hub.mark_delivered(self.user, conversation, msg)

    def _go_live(self) -> None:
        held, self._held, self._held_bytes = self._held, [], 0
        self._to(State.LIVE)
        for conversation, msg in held:
            self._deliver_now(conversation, msg)

    def _finish_sync(self) -> None:
        if self.state is State.SYNCING:
            self._go_live()

    def resync(self) -> None:
        if self.state is State.LIVE:
            self._inbox.append(_Resync())
            self._kick()

    # -- commands ---------------------------------------------------------------------
    def _kick(self) -> None:
        if self._inbox and (self._worker is None or self._worker.done()):
            self._worker = asyncio.create_task(self._work())

    async def _work(self) -> None:
        while self._inbox and self.state is not State.CLOSED:
            item = self._inbox.popleft()
            if self._reading_paused and len(self._inbox) < MAX_QUEUED_COMMANDS // 2:
                assert self.transport is not None
                self.transport.resume_reading()
                self._reading_paused = False
            if isinstance(item, Error):
                self.send_event(item)
                continue
            rid = getattr(item, "rid", None)
            try:
                await self._handle(item)
            except ClientError as exc:
                self.send_event(Error(exc.code, exc.message, rid=rid, extra=exc.extra))
                self._log_error(exc.code, exc.message)
            except REDIS_DOWN as exc:
                self.send_event(
                    Error("unavailable", "chat storage is unreachable; try again shortly", rid=rid)
                )
                self._log_error("unavailable", str(exc))
            except Exception:
                log.exception("bug while serving user=%s peer=%s", self.user, self.peer)
                self.send_event(Error("internal", "internal error; it has been logged", rid=rid))

    def _log_error(self, code: str, message: str) -> None:
        log.info(
            "error user=%s peer=%s code=%s %s",
            self.user,
            self.peer,
            code,
            message,
        )

    async def _handle(self, cmd: Command | _Resync) -> None:
        match cmd:
            case _Resync():
                await self._resync()
            case Login():
                await self._login(cmd)
            case Help():
                self.send_event(Notice(HELP_TEXT, rid=cmd.rid))
            case Ping():
                self.send_event(Pong(rid=cmd.rid))
            case Quit():
                self.close_with(Bye(rid=cmd.rid))
            case _ if self.user is None:
                raise ClientError("not_logged_in", "log in first: /login <name> <password>")
            case Send():
                await self._send(cmd)
            case GetHistory():
                conversation, name = await self._resolve(cmd.with_)
                messages = await self.gw.store.read_last(conversation, cmd.limit, cmd.before)
                await self.reply_large(HistoryResult(name, tuple(messages), rid=cmd.rid))
            case GetLog():
                messages = await self.gw.store.log(self.user, cmd.limit)
                await self.reply_large(LogResult(tuple(messages), rid=cmd.rid))
            case GetStatus():
                await self._status(cmd)

    async def _resolve(self, target: str) -> tuple[str, str]:
        """(conversation id, name as the reader sees it) for '#room' or a user name."""
        assert self.user is not None
        if is_room(target):
            if target != GENERAL:
                raise ClientError("not_found", f"no room {target}")
            return GENERAL, GENERAL
        name = await self.gw.store.display_name(target)
        if name is None:
            raise ClientError("unknown_user", f"no user named {target}")
        return dm_conversation(self.user, name), name

    async def _send(self, cmd: Send) -> None:
        assert self.user is not None
        conversation, to = await self._resolve(cmd.to)
        result = await self.gw.store.send(
            self.user, conversation, to, cmd.text, cid=cmd.cid, reply_to=cmd.reply_to
        )
        self.send_event(Ack(result.id, rid=cmd.rid, cid=cmd.cid))
        log.info(
            "send user=%s to=%s id=%s%s",
            self.user,
            to,
            result.id,
            " (retry, stored before)" if result.duplicate else "",
        )

    async def _status(self, cmd: GetStatus) -> None:
        assert self.user is not None
        store = self.gw.store
        online = await store.online(stale_ms=int(self.settings.heartbeat_s * 3000))
        cursors = await store.cursors(self.user)
        unread: dict[str, int] = {}
        for conversation in await store.conversations(self.user):
            after = _later(cursors.get(conversation), self.last_sent.get(conversation))
            count = await store.count_after(conversation, after, self.settings.replay_max)
            if count:
                unread[await self._reader_name(conversation)] = count
        self.send_event(StatusResult(self.user, self.gw.name, tuple(online), unread, rid=cmd.rid))

    async def _reader_name(self, conversation: str) -> str:
        """A conversation's name from this user's side: '#room' or the other user."""
        if is_room(conversation):
            return conversation
        assert self.user is not None
        _, a, b = conversation.split(":", 2)
        other = b if a == self.user.lower() else a
        return await self.gw.store.display_name(other) or other

    # -- login and replay ---------------------------------------------------------------
    async def _login(self, cmd: Login) -> None:
        if self.user is not None:
            raise ClientError("bad_request", f"already logged in as {self.user}")
        account = await self.gw.store.login(cmd.user, cmd.password)
        if self.state is State.CLOSED:
            return
        if self._login_timer is not None:
            self._login_timer.cancel()
        self.user = account.name
        self._to(State.SYNCING)
        try:
            await self.gw.hub.join(self)
            self._counted = True  # from here on, leaving must count the user out
            await self.gw.user_joined(account.name)
            plan = await self._plan_replay(cmd.since)
            unread = {name: count for name, count, _, _ in plan if count}
            self.send_event(Welcome(account.name, account.new, unread, self.gw.name, rid=cmd.rid))
            await self._replay(plan)
        except BaseException:
            # Anything short of `synced` leaves the client logged out, free to try again.
            self._undo_login()
            raise
        self._finish_sync()
        self.send_event(Synced(rid=cmd.rid))
        log.info("login user=%s new=%s peer=%s", account.name, account.new, self.peer)

    async def _plan_replay(
        self, since: Mapping[str, str] | None
    ) -> list[tuple[str, int, list[Message], str | None]]:
        """Per conversation: (reader's name, unread count, messages known already, after id)."""
        assert self.user is not None
        store = self.gw.store
        s = self.settings
        cursors = await store.cursors(self.user)
        wanted = {k.lower(): v for k, v in (since or {}).items()}
        plan: list[tuple[str, int, list[Message], str | None]] = []
        for conversation in await store.conversations(self.user):
            name = await self._reader_name(conversation)
            after = wanted.get(name.lower(), cursors.get(conversation))
            if after is None and conversation == GENERAL:
                # Never saw #general: show its last few messages as context.
                recent = await store.read_last(GENERAL, s.history_size)
                plan.append((name, len(recent), recent, None))
                continue
            count = await store.count_after(conversation, after, s.replay_max + 1)
            plan.append((name, count, [], after))
        return plan

    async def _replay(self, plan: list[tuple[str, int, list[Message], str | None]]) -> None:
        assert self.user is not None
        for name, count, known, after in plan:
            conversation = name if is_room(name) else dm_conversation(self.user, name)
            if known:
                await self._replay_page(conversation, known)
                continue
            if not count:
                continue
            limit = self.settings.replay_max
            if count > limit:
                self.send_event(
                    Notice(f"more than {limit} unread in {name}; showing the last {limit}")
                )
                await self._replay_page(
                    conversation, await self.gw.store.read_last(conversation, limit)
                )
                continue
            await self._replay_after(conversation, after)

    async def _replay_after(self, conversation: str, after: str | None) -> None:
        while self.state is not State.CLOSED:
            page = await self.gw.store.read_after(conversation, after, REPLAY_PAGE)
            if not page:
                return
            await self._replay_page(conversation, page)
            after = page[-1].id
            if len(page) < REPLAY_PAGE:
                return

    async def _replay_page(self, conversation: str, page: list[Message]) -> None:
        assert self.codec is not None and self.user is not None
        last = self.last_sent.get(conversation)
        for msg in page:
            key = msg.key
            if last is not None and key <= last:
                continue
            last = key
            self.write(self.codec.encode(msg))
            if self._queued() > self.settings.max_outbox_bytes // 2:
                # A backlog is paced by the client's reading, not cut as a slow consumer.
                await self._drain()
        if page and last is not None:
            self.last_sent[conversation] = last
            self.gw.hub.mark_delivered(self.user, conversation, page[-1])
        await self._drain()

    async def _resync(self) -> None:
        """After the pub/sub link came back: read what was missed while it was down."""
        if self.state is not State.LIVE or self.user is None:
            return
        self._to(State.SYNCING)
        try:
            cursors = await self.gw.store.cursors(self.user)
            for conversation in await self.gw.store.conversations(self.user):
                # This session's own position, not the user's: another client may be ahead.
                last = self.last_sent.get(conversation)
                after = cursors.get(conversation) if last is None else f"{last[0]}-{last[1]}"
                await self._replay_after(conversation, after)
        except REDIS_DOWN:
            # Going live now could hide a gap: the client comes back and resumes instead.
            self.close_with(Error("unavailable", "lost track of new messages; reconnect"))
        finally:
            self._finish_sync()


def _later(a: str | None, b: tuple[int, int] | None) -> str | None:
    if b is None:
        return a
    if a is None or parse_stream_id(a) < b:
        return f"{b[0]}-{b[1]}"
    return a

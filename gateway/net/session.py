"""One client connection: moves bytes, runs its commands in order, delivers live events.

The session does not parse (its codec does), does not know what a command does
(``gateway.handlers``) and does not build Redis keys (the store does). It owns the
connection's state machine:

    NEW --first bytes--> GUEST --login--> SYNCING --replay done--> LIVE
     |                     |                 ^                       |
     |                     |                 +------ resync ---------+
     +---------------------+-----------------+-----------------------+--> CLOSED

While SYNCING, live events are held back and delivered after the replay, minus any
id the replay already sent: no gap, no duplicate.

Bounds on what a peer can make it do:
- input: what is buffered and not yet parsed is at most ``MAX_UNREAD_BYTES`` plus
  one read (reading pauses past it), plus one file chunk line being received;
  commands run one at a time, and the worker yields to the loop every
  ``WORK_SLICE`` requests, so one client's flood cannot stall the others; the
  one exception is a run of sends that the gateway's caches let through
  (``chat.send_now``): up to ``MAX_SENDS_IN_FLIGHT`` of them, with texts of up
  to ``MAX_UNREAD_BYTES`` characters in all, join the store's batches without
  waiting for each other's answer, and any other command waits until they are
  answered, so answers still come in order;
- errors: a client earning more than ``ERROR_BURST`` error replies at once
  (refilled at ``ERROR_RATE`` per second) gets one last error and is closed;
- sends: ``conn_send_rate`` per second, with a burst of ``conn_send_burst``;
- output: see ``gateway.net.outbox``;
- time: ``login_timeout_s`` to log in, ``idle_timeout_s`` without a byte from the
  client, ``stall_timeout_s`` without it reading what is queued for it.

A client that half-closes (EOF) has every line it sent before that answered, and
is then closed.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import math
import time
from functools import partial
from typing import TYPE_CHECKING, Final, cast

from gateway.errors import ClientError, Unavailable
from gateway.handlers import chat, sync
from gateway.handlers.context import Context
from gateway.handlers.dispatch import dispatch
from gateway.net.http import HttpExchange
from gateway.net.outbox import Outbox, reset_on_close, tune_socket
from gateway.protocol import (
    Bye,
    Codec,
    Command,
    Error,
    Event,
    Framing,
    GetHistory,
    GetLog,
    GetMembers,
    GetStatus,
    GetThread,
    Joined,
    JsonCodec,
    Left,
    ListRooms,
    LiveRun,
    Message,
    Send,
    TextCodec,
    detect_framing,
)
from gateway.protocol.events import LoggedOut, Rid
from gateway.protocol.http import HttpCodec, HttpReject, HttpRequest, error_body
from gateway.protocol.ops import PACED_LIKE_READS, PACED_LIKE_SENDS
from gateway.store.time import now_ms
from gateway.store.tokens import digest_of

if TYPE_CHECKING:
    from gateway.net.server import Gateway

__all__ = ["Session", "State"]

log = logging.getLogger("redchat.session")

MAX_FIRST_BYTES: Final = 16  # enough to tell an HTTP method from text
MAX_UNREAD_BYTES: Final = 64 * 1024  # past this, stop reading from the socket
WORK_SLICE: Final = 16  # requests served before yielding to the loop
MAX_SENDS_IN_FLIGHT: Final = 64  # sends queued and not yet answered (chat.send_now)
ERROR_BURST: Final = 50
# Requests whose cost grows with what the user has: paced like sends (--conn-send-rate).
READS: Final = (
    GetStatus, GetHistory, GetLog, GetThread, GetMembers, ListRooms, *PACED_LIKE_READS
)  # fmt: skip
MAX_HELD_EVENTS: Final = 100  # pushed events kept while a login or re-sync runs
ERROR_RATE: Final = 5.0
TOKEN_RECHECK_S: Final = 60.0  # an event stream ends within this of its token's end
MIN_BODY_RATE: Final = 16 * 1024  # bytes/s an HTTP body must average, on top of the timeout
LINGER_S: Final = 2.0  # an HTTP connection closing reads (and drops) its input this long


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


class TokenBucket:
    """``rate`` per second with a burst of ``burst``; rate 0 means unlimited."""

    __slots__ = ("at", "burst", "rate", "tokens")

    def __init__(self, rate: float, burst: float) -> None:
        self.rate = rate
        self.burst = max(1.0, burst)
        self.tokens = self.burst
        self.at = time.monotonic()

    def ready(self) -> bool:
        """``take`` would allow one now (nothing is taken)."""
        if not self.rate:
            return True
        return self.tokens + (time.monotonic() - self.at) * self.rate >= 1

    def take(self) -> float:
        """0 when allowed (one token taken), else the seconds until one is there."""
        if not self.rate:
            return 0.0
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
        self.at = now
        if self.tokens >= 1:
            self.tokens -= 1
            return 0.0
        return (1 - self.tokens) / self.rate


class Session(asyncio.Protocol):
    # Slots: a gateway holds one per connection, and with more attributes than
    # CPython shares keys for, each instance dict took about 2 KB.
    __slots__ = (
        "_counted", "_eof", "_errors", "_first", "_heartbeat_at", "_held", "_held_bytes",
        "_held_events", "_lingering", "_reading_paused", "_reads", "_request_began",
        "_room_changes", "_room_worker", "_send_chars_in_flight", "_sends", "_sends_below",
        "_sends_in_flight", "_token", "_token_checked", "_token_task", "_upload_bytes",
        "_wake", "_wake_on_input", "_worker", "base_url", "codec", "created", "ctx", "gw",
        "http", "joined_ms", "last_heard", "last_sent", "outbox", "peer", "peer_address",
        "rooms", "settings", "state", "token_id", "transport", "user",
    )  # fmt: skip

    def __init__(self, gateway: Gateway) -> None:
        self.gw = gateway
        self.settings = s = gateway.settings
        self.state = State.NEW
        self.codec: Codec | None = None
        self.user: str | None = None  # display name once logged in
        self.peer = "?"
        self.peer_address = ""
        self.transport: asyncio.Transport | None = None
        self.outbox: Outbox | None = None
        self.ctx = Context(gateway, self)
        self._first = b""
        self._eof = False
        self._worker: asyncio.Task[None] | None = None
        self._reading_paused = False
        self._held: list[tuple[str, Message]] = []
        self._held_events: list[Event] = []
        self._held_bytes = 0
        self.last_sent: dict[str, tuple[int, int]] = {}  # conversation -> last id delivered
        self.joined_ms = 0  # when it began to log in (wall clock, as stream ids are)
        self.rooms: set[str] = set()  # rooms subscribed (besides #general)
        self._room_changes: list[Joined | Left] = []
        self._room_worker: asyncio.Task[None] | None = None
        self.created = self.last_heard = time.monotonic()
        self._counted = False  # counted in the gateway's presence
        self._errors = TokenBucket(ERROR_RATE, ERROR_BURST)
        self._sends = TokenBucket(s.conn_send_rate, s.conn_send_burst)
        self._reads = TokenBucket(s.conn_send_rate, s.conn_send_burst)  # status, history, ...
        # Sends queued without a wait (chat.send_now), and the worker's wait on them.
        self._sends_in_flight = 0
        self._send_chars_in_flight = 0  # their texts' length, bounded as unread input is
        self._wake: asyncio.Future[None] | None = None
        self._sends_below = 0  # ... wakes it once fewer are in flight than this
        self._wake_on_input = False  # ... or when the client sends more
        # HTTP only
        self.http: HttpExchange | None = None
        self.token_id: str | None = None  # an event stream's token (digest start)
        self._token = ""
        self._request_began = 0.0
        self._heartbeat_at = 0.0
        self._token_checked = 0.0
        self._token_task: asyncio.Task[None] | None = None
        self._lingering = False
        self._upload_bytes = 0  # reserved from the gateway's upload budget
        self.base_url = ""  # http://HOST:PORT as this client reached us, for file links

    # -- state ------------------------------------------------------------------
    def _to(self, new: State) -> None:
        if new not in _ALLOWED[self.state]:
            raise RuntimeError(f"session cannot go from {self.state} to {new}")
        self.state = new

    @property
    def busy(self) -> asyncio.Task[None] | None:
        return self._worker if self._worker is not None and not self._worker.done() else None

    # -- asyncio.Protocol -----------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but behave as one.
        self.transport = transport = cast(asyncio.Transport, transport)
        s = self.settings
        tune_socket(transport, s.sndbuf_bytes)
        self.outbox = Outbox(
            transport,
            self.gw.flusher,
            max_bytes=s.max_outbox_bytes,
            stall_s=s.stall_timeout_s,
            on_overflow=self._slow_consumer,
        )
        here = transport.get_extra_info("sockname")
        if isinstance(here, tuple):
            host = f"[{here[0]}]" if ":" in str(here[0]) else str(here[0])
            self.base_url = f"http://{host}:{here[1]}"
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple):
            self.peer_address = str(peer[0])
            self.peer = f"{peer[0]}:{peer[1]}"
        else:
            self.peer = self.peer_address = str(peer or "local")
        if not self.gw.admit(self):
            self.close_with(Error("forbidden", "too many connections from your address"))

    def data_received(self, data: bytes) -> None:
        if self.state is State.CLOSED or self._eof or self._lingering:
            return
        self.last_heard = time.monotonic()
        if self.codec is None:
            data = self._first + data
            framing = detect_framing(data)
            if framing is None and len(data) < MAX_FIRST_BYTES:
                self._first = data
                return
            self._first = b""
            if framing is Framing.HTTP:
                self._start_http()
            else:
                self._start(JsonCodec if framing is Framing.JSON else TextCodec)
        assert self.codec is not None
        if self.http is not None and not self.http.codec.partial:
            self._request_began = self.last_heard
        self.codec.push(data)
        if self.codec.buffered > MAX_UNREAD_BYTES and not self._reading_paused:
            assert self.transport is not None
            self.transport.pause_reading()
            self._reading_paused = True
        self._kick()

    def eof_received(self) -> bool:
        """The client half-closed: answer every line it sent, then close."""
        if self._lingering:
            return False
        self._eof = True
        if self.codec is None:
            if self._first:
                self._start(TextCodec)
                assert self.codec is not None
                self.codec.push(self._first)
                self._first = b""
            else:
                return False  # said nothing: close now
        assert self.codec is not None
        self.codec.finish()  # a last line without its newline still counts
        self._kick()
        if self.busy is None:
            self._close_after_eof()
        return True  # keep the write side open until the answers are out

    def _start(self, codec_class: type[Codec]) -> None:
        s = self.settings
        self.codec = codec_class(s.max_line_bytes, s.max_text_chars)
        self._to(State.GUEST)

    def _start_http(self) -> None:
        s = self.settings
        codec = HttpCodec(
            s.max_line_bytes,
            s.max_text_chars,
            body_limits={"/files": s.max_file_bytes},
            admit=self._admit_upload,
        )
        self.codec = codec
        self.http = HttpExchange(self, codec)
        self._to(State.GUEST)

    def connection_lost(self, exc: Exception | None) -> None:
        was = self.state
        if was is not State.CLOSED:
            self._to(State.CLOSED)
        for task in (self._worker, self._room_worker, self._token_task):
            if task is not None and not task.done():
                task.cancel()
        if self.outbox is not None:
            self.outbox.release()
        self.release_upload()
        self._held.clear()
        self.gw.forget(self)
        if self.user is not None and was in (State.SYNCING, State.LIVE):
            self.gw.hub.leave(self)
            if self._counted:
                self.gw.user_left(self.user)
            log.info("logout user=%s peer=%s", self.user, self.peer)

    def pause_writing(self) -> None:
        if self.outbox is not None:
            self.outbox.pause_writing()

    def resume_writing(self) -> None:
        if self.outbox is not None:
            self.outbox.resume_writing()

    # -- output -------------------------------------------------------------------
    def send_event(self, ev: Event) -> None:
        if self.codec is not None and self.outbox is not None:
            self.outbox.write(self.codec.encode(ev))

    async def send_paced(self, ev: Event) -> None:
        """A reply the client asked for (history, log): it may pass the outbox bound,
        which is for traffic the client did not ask for; the next command waits
        until the client has read it."""
        if self.codec is not None and self.outbox is not None:
            self.outbox.write(self.codec.encode(ev), bounded=False)
            await self._drain()

    async def _drain(self) -> None:
        assert self.outbox is not None
        if not await self.outbox.drain():
            self._stalled()

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

    def _stalled(self) -> None:
        log.warning(
            "slow_consumer user=%s peer=%s: read nothing for %g s, disconnecting",
            self.user,
            self.peer,
            self.settings.stall_timeout_s,
        )
        if self.outbox is not None:
            self.outbox.discard()
        if self.transport is not None:
            reset_on_close(self.transport)
        self.abort()

    def switch_to(self, conversation: str) -> None:
        if isinstance(self.codec, TextCodec):
            self.codec.room = conversation

    def close_with(self, ev: Event | None = None, flush: bool = True) -> None:
        """Say a last word and close; a client that does not read is cut off after 2 s."""
        if self.transport is None or self.transport.is_closing() or self.outbox is None:
            return
        if self._lingering:
            return  # the last answer is out; the connection closes by itself
        if not flush:
            self.outbox.discard()
        codec = self.codec or TextCodec()
        data = codec.encode(ev) if ev is not None else b""
        if isinstance(codec, HttpCodec):
            data += codec.end_stream()  # an event stream ends cleanly
        self.outbox.write_now(data)
        self._close_transport()

    def _close_transport(self) -> None:
        transport = self.transport
        if transport is None:
            return
        transport.close()
        asyncio.get_running_loop().call_later(2.0, transport.abort)

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def check_timers(self, now: float) -> None:
        """Called about once a second by the gateway: enforce the time bounds."""
        if self.state is State.CLOSED or self.transport is None or self.transport.is_closing():
            return
        s = self.settings
        if isinstance(self.codec, HttpCodec):
            self._http_timers(self.codec, now)
        elif self.user is None and now - self.created > s.login_timeout_s and self.busy is None:
            self.close_with(Error("not_logged_in", f"no login within {s.login_timeout_s:g} s"))
        elif s.idle_timeout_s and now - self.last_heard > s.idle_timeout_s:
            self.close_with(Error("idle", f"nothing received for {s.idle_timeout_s:g} s; closing"))
        elif self.outbox is not None and self.outbox.stalled_for(now) > s.stall_timeout_s:
            self._stalled()

    def _http_timers(self, codec: HttpCodec, now: float) -> None:
        """Bounds of an HTTP connection: a request arrives in time, an idle keep-alive
        connection goes, an event stream gets its heartbeat and its token checked."""
        s = self.settings
        assert self.outbox is not None
        if codec.streaming:
            if self.outbox.stalled_for(now) > s.stall_timeout_s:
                self._stalled()
            elif now - self._heartbeat_at >= s.sse_heartbeat_s:
                self._heartbeat_at = now
                self.outbox.write(codec.comment())
            if now - self._token_checked >= TOKEN_RECHECK_S and self._token_task is None:
                self._token_checked = now
                self._token_task = asyncio.create_task(self._recheck_token())
            return
        if self.busy is not None:
            return
        if codec.partial:
            timeout = s.http_header_timeout_s
            if codec.reading_body:
                timeout += codec.body_limit / MIN_BODY_RATE
            if now - self._request_began > timeout or now - self.last_heard > timeout:
                log.info("http peer=%s: request not complete in time, closing", self.peer)
                self.outbox.write(
                    codec.respond(408, error_body("timeout", "request not received in time")),
                    bounded=False,
                )
                self.linger_close()
        elif now - self.last_heard > s.http_keepalive_s:
            self._close_transport()

    def linger_close(self) -> None:
        """Close an HTTP connection after its last answer without losing that answer:
        the client may still be sending (a body that was refused), and closing with
        input unread would reset the connection, which can drop what we wrote. So stop
        writing, read and drop the input until the client closes, ``LINGER_S`` at most."""
        transport, outbox = self.transport, self.outbox
        if transport is None or outbox is None or transport.is_closing() or self._lingering:
            return
        self._lingering = True
        if not outbox.end():
            self._close_transport()
            return
        if self._reading_paused:
            transport.resume_reading()
            self._reading_paused = False
        asyncio.get_running_loop().call_later(LINGER_S, self._close_transport)

    async def _recheck_token(self) -> None:
        """A stream's token could end without its logout event reaching us (it expired,
        or pub/sub was down when it was revoked): look it up now and then."""
        try:
            if await self.gw.store.tokens.user_of(self._token) is None:
                self.close_with(Bye())
        except Unavailable:
            pass  # Redis is down: the stream waits, as every session does
        finally:
            self._token_task = None

    async def start_events(self, user: str, token: str, resume: dict[str, str]) -> None:
        """``GET /events``: this connection becomes ``user``'s live session, in SSE form,
        resuming after ``resume`` ({conversation: id}) and the user's cursors."""
        codec, outbox = self.codec, self.outbox
        assert isinstance(codec, HttpCodec) and outbox is not None
        self.token_id, self._token = digest_of(token)[:16], token
        outbox.write(codec.start_stream(user, resume), bounded=False)
        self._heartbeat_at = self._token_checked = time.monotonic()
        error = None
        try:
            await sync.attach(self.ctx, user, False, resume or None)
        except ClientError as exc:
            error = Error(exc.code, exc.message, extra=exc.extra)
        except Unavailable:
            error = Error("unavailable", "chat storage is unreachable; try again shortly")
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("bug while starting an event stream user=%s peer=%s", user, self.peer)
            error = Error("internal", "internal error; it has been logged")
        if error is not None:
            self.close_with(error)
        else:
            log.info("http events user=%s peer=%s resume=%d", user, self.peer, len(resume))

    async def write_answer(self, data: bytes, *, last: bool = True) -> None:
        """An HTTP answer, written at once; the next request waits until it is read.
        A part of one (``last=False``, a download) waits only when much is unread."""
        assert self.outbox is not None
        self.outbox.write(data, bounded=False)
        if not last:
            if self.outbox.queued() > self.settings.max_outbox_bytes // 2:
                await self._drain()
            return
        await self._drain()
        codec = self.codec
        if isinstance(codec, HttpCodec) and codec.must_close and not codec.streaming:
            self.linger_close()

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

    def deliver_run(self, conversation: str, run: LiveRun) -> None:
        """Live messages of one conversation that arrived together: one write, and the
        bookkeeping (what was sent, the cursor) once, not once per message."""
        if self.state is not State.LIVE:
            for msg in run.messages:
                self.deliver(conversation, msg)
            return
        last = self.last_sent.get(conversation)
        if last is not None and run.first <= last:
            for msg in run.messages:  # some of it was had (a re-read overlapped)
                self._deliver_now(conversation, msg)
            return
        assert self.codec is not None and self.outbox is not None
        self.outbox.write(self.codec.encode_live(run))
        self._sent_up_to(conversation, run.messages[-1])

    def push(self, ev: Event) -> None:
        """An event published to the user (a warning, ...): live, or after the sync.
        Joining or leaving a room also changes what this session receives."""
        if isinstance(ev, LoggedOut):
            if ev.token == self.token_id:
                self.close_with(Bye())  # its token was revoked
            return
        if self.state is State.LIVE and isinstance(ev, Joined | Left):
            self._room_changes.append(ev)
            if self._room_worker is None or self._room_worker.done():
                self._room_worker = asyncio.create_task(self._apply_room_changes())
        elif self.state is State.LIVE:
            self.send_event(ev)
        elif self.state is State.SYNCING and len(self._held_events) < MAX_HELD_EVENTS:
            self._held_events.append(ev)

    async def _apply_room_changes(self) -> None:
        """Subscribe to a room just joined (with its last messages, as a new user gets
        #general's) or drop one just left; then tell the client. One at a time."""
        while self._room_changes and self.state is not State.CLOSED:
            ev = self._room_changes.pop(0)
            try:
                if isinstance(ev, Left):
                    self.gw.hub.leave_room(self, ev.room)
                    self.send_event(ev)
                elif ev.room in self.rooms:
                    self.send_event(ev)
                else:
                    await self._join_room(ev.room)
            except Unavailable as exc:
                log.warning("could not follow user=%s into %s: %s", self.user, ev.room, exc)
                self.close_with(Error("unavailable", "lost track of your rooms; reconnect"))
            except Exception:
                log.exception("bug while following user=%s into %s", self.user, ev.room)
                self.close_with(Error("internal", "internal error; it has been logged"))

    async def _join_room(self, room: str) -> None:
        await self.gw.hub.join_room(self, room)
        holding = self.begin_resync()  # the room's live messages wait for its last ones
        try:
            recent = await self.gw.store.messages.read_last(room, self.settings.history_size)
            self.send_event(Joined(room))
            self.replay_now(room, recent)
        finally:
            if holding:
                self.finish_sync()

    def _deliver_now(self, conversation: str, msg: Message) -> None:
        last = self.last_sent.get(conversation)
        if last is not None and msg.key <= last:
            return
        assert self.codec is not None and self.outbox is not None
        self.outbox.write(self.codec.encode(msg))
        self._sent_up_to(conversation, msg)

    def _unsent(self, conversation: str, page: list[Message]) -> list[Message]:
        """The messages of an (oldest first) page this session has not had yet."""
        last = self.last_sent.get(conversation)
        return page if last is None else [m for m in page if m.key > last]

    def _sent_up_to(self, conversation: str, msg: Message) -> None:
        assert self.user is not None
        self.last_sent[conversation] = msg.key
        self.gw.hub.mark_delivered(self.user, conversation, msg)

    # -- login and re-sync (for gateway.handlers.sync and the hub) ---------------------
    async def begin_sync(self, user: str) -> list[str]:
        if isinstance(self.codec, TextCodec):
            await self.gw.load_link_key()  # its file lines carry signed links
        if self.state is State.CLOSED:
            raise asyncio.CancelledError
        self.user = user
        self.joined_ms = now_ms()
        self._to(State.SYNCING)
        if isinstance(self.codec, TextCodec):
            base = self.base_url
            self.codec.file_url = lambda f: self.gw.file_url(f.fid, user, base)
        try:
            rooms = await self.gw.store.rooms.of_user(user)
            await self.gw.hub.join(self, rooms)
            self._counted = True  # from here on, leaving must count the user out
            await self.gw.user_joined(user)
        except BaseException:
            self.undo_login()
            raise
        return rooms

    def undo_login(self) -> None:
        """Login failed half-way: back to a guest, as if it had never started."""
        if self.state is not State.SYNCING or self.user is None:
            return
        self.gw.hub.leave(self)
        if self._counted:
            self._counted = False
            self.gw.user_left(self.user)
        self.user = None
        self._held.clear()
        self._held_events.clear()
        self._held_bytes = 0
        self.last_sent.clear()
        self._to(State.GUEST)

    def begin_resync(self) -> bool:
        """Hold live events while the hub re-reads what the link missed."""
        if self.state is not State.LIVE:
            return False
        self._to(State.SYNCING)
        return True

    def finish_sync(self) -> None:
        if self.state is not State.SYNCING:
            return
        held, self._held, self._held_bytes = self._held, [], 0
        events, self._held_events = self._held_events, []
        self._to(State.LIVE)
        for ev in events:
            self.push(ev)
        for conversation, msg in held:
            self._deliver_now(conversation, msg)

    def replay_now(self, conversation: str, page: list[Message]) -> None:
        """Write replayed messages this session has not had, within the outbox bound."""
        assert self.codec is not None and self.outbox is not None
        fresh = self._unsent(conversation, page)
        for msg in fresh:
            self.outbox.write(self.codec.encode(msg))
        if fresh:
            self._sent_up_to(conversation, fresh[-1])

    async def replay_page(self, conversation: str, page: list[Message]) -> None:
        """Like ``replay_now``, paced by the client's reading instead of bounded:
        a backlog it asked for is not cut as a slow consumer."""
        assert self.codec is not None and self.outbox is not None
        fresh = self._unsent(conversation, page)
        half = self.settings.max_outbox_bytes // 2
        for msg in fresh:
            self.outbox.write(self.codec.encode(msg), bounded=False)
            if self.outbox.queued() > half:
                await self._drain()
        if fresh:
            self._sent_up_to(conversation, fresh[-1])

    # -- commands ---------------------------------------------------------------------
    def _kick(self) -> None:
        if self.busy is None and self.state is not State.CLOSED:
            self._worker = asyncio.create_task(self._work())
        elif self._wake_on_input:
            self._wake_up()

    async def _work(self) -> None:
        """Serve what the client sent, in order. The worker ends once every command
        is answered, the sends in flight included."""
        served = 0
        # The client waits for the answers of commands served here: they go out as
        # soon as nothing is left to serve, not with the next coalesced write. The
        # acks of sends in flight come in batches, and go with the coalesced writes.
        answered = False
        while self.state is not State.CLOSED and self.codec is not None:
            item = self.codec.next()
            if self.http is not None and (out := self.http.codec.take_output()):
                assert self.outbox is not None
                self.outbox.write(out, bounded=False)  # 100 Continue
            if item is None:
                if not self._sends_in_flight:
                    break
                if answered and self.outbox is not None:
                    self.outbox.flush()
                answered = False
                await self._sends_settle(0, or_input=True)
                continue
            self._resume_reading_if_drained()
            if type(item) is Send and self._send_now(item):
                while (
                    self._sends_in_flight >= MAX_SENDS_IN_FLIGHT
                    or self._send_chars_in_flight >= MAX_UNREAD_BYTES
                ):
                    await self._sends_settle(self._sends_in_flight - 1)
            else:
                # Answers go in order, and a command sees the sends made before it.
                await self._sends_settle(0)
                await self._serve(item)
                answered = True
            served += 1
            if served % WORK_SLICE == 0:
                await asyncio.sleep(0)  # let the loop serve everyone else
        if answered and self.outbox is not None:
            self.outbox.flush()
        self._resume_reading_if_drained()
        if self._eof:
            self._close_after_eof()

    def _send_now(self, cmd: Send) -> bool:
        """Queue a send that needs no wait before it joins the store's batch
        (``chat.send_now``); False when it must be served as other commands are."""
        if self.user is None or not self._sends.ready():
            return False  # the usual path says why (not logged in, too fast)
        if not chat.send_now(self.ctx, cmd, partial(self._sent, cmd)):
            return False
        self._sends.take()
        self._sends_in_flight += 1
        self._send_chars_in_flight += len(cmd.text)
        return True

    def _sent(self, cmd: Send, error: Exception | None) -> None:
        """A send queued by ``_send_now`` is answered: its ack went out, or ``error``."""
        self._sends_in_flight -= 1
        self._send_chars_in_flight -= len(cmd.text)
        if error is not None:
            self._answer(self._failure(error, self.user, cmd.rid))
        if self._sends_in_flight < self._sends_below:
            self._wake_up()

    async def _sends_settle(self, most: int, *, or_input: bool = False) -> None:
        """Wait until at most ``most`` sends are in flight (or, ``or_input``, the
        client sent more). Bounded: every batch ends within the store's timeout and
        answers each of its sends."""
        if self._sends_in_flight <= most:
            return
        self._wake = asyncio.get_running_loop().create_future()
        self._sends_below, self._wake_on_input = most + 1, or_input
        try:
            await self._wake
        finally:
            self._wake, self._sends_below, self._wake_on_input = None, 0, False

    def _wake_up(self) -> None:
        if self._wake is not None and not self._wake.done():
            self._wake.set_result(None)

    def _resume_reading_if_drained(self) -> None:
        if (
            self._reading_paused
            and self.codec is not None
            and self.transport is not None
            and self.codec.buffered < MAX_UNREAD_BYTES // 2
        ):
            self.transport.resume_reading()
            self._reading_paused = False

    def _close_after_eof(self) -> None:
        if self.state is not State.CLOSED:
            self.close_with()

    async def _serve(self, item: Command | Error | HttpRequest | HttpReject) -> None:
        if isinstance(item, Error):
            self._error(item)
        elif isinstance(item, HttpRequest | HttpReject):
            assert self.http is not None
            try:
                await self.http.serve(item)
            finally:
                self.release_upload()
        elif (error := await self.run(self.ctx, item)) is not None:
            self._answer(error)

    def _answer(self, error: Error) -> None:
        if error.code in ("unavailable", "internal"):
            self.send_event(error)  # not the client's fault: not counted against it
        else:
            self._error(error)

    async def run(self, ctx: Context, cmd: Command) -> Error | None:
        """Run one command for ``ctx.conn`` (this session, or one HTTP request on it):
        the connection's rate limits, then its handler. A peer's mistake, or Redis
        being down, comes back as the error to answer with; a bug is logged."""
        user = ctx.conn.user
        try:
            if isinstance(cmd, PACED_LIKE_SENDS) and user is not None:
                self._check_send_rate(self._sends, "messages")
            elif isinstance(cmd, READS) and user is not None:
                self._check_send_rate(self._reads, "requests for history or status")
            await dispatch(ctx, cmd, self.codec.login_hint if self.codec else "")
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            return self._failure(exc, user, getattr(cmd, "rid", None))
        return None

    def _failure(self, exc: Exception, user: str | None, rid: Rid) -> Error:
        """The answer to a command that failed: a peer's mistake or Redis being down
        as such; a bug is logged with its traceback, and not shown."""
        if isinstance(exc, ClientError):
            self._log_error(user, exc.code, exc.message)
            return Error(exc.code, exc.message, rid=rid, extra=exc.extra)
        if isinstance(exc, Unavailable):
            self._log_error(user, "unavailable", str(exc))
            return Error("unavailable", "chat storage is unreachable; try again shortly", rid=rid)
        log.error("bug while serving user=%s peer=%s", user, self.peer, exc_info=exc)
        return Error("internal", "internal error; it has been logged", rid=rid)

    def _admit_upload(self, nbytes: int) -> bool:
        if not self.gw.reserve_upload(nbytes):
            return False
        self._upload_bytes += nbytes
        return True

    def release_upload(self) -> None:
        if self._upload_bytes:
            self.gw.release_upload(self._upload_bytes)
            self._upload_bytes = 0

    def check_send_rate(self) -> None:
        """Pace a send that is not a command (an HTTP upload) as sends are."""
        self._check_send_rate(self._sends, "messages")

    def check_read_rate(self) -> None:
        """Pace a read that is not a command (an HTTP poll) as status and history are."""
        self._check_send_rate(self._reads, "requests for history or status")

    def count_error(self) -> bool:
        """Count an error answer; True when the client earns them too fast (close it)."""
        return bool(self._errors.take())

    def _check_send_rate(self, bucket: TokenBucket, what: str) -> None:
        wait = bucket.take()
        if wait:
            raise ClientError(
                "rate_limited",
                f"too fast: at most {self.settings.conn_send_rate:g} {what} a second",
                retry_after=max(1, math.ceil(wait)),
            )

    def _error(self, ev: Error) -> None:
        """An error reply; a client that earns them faster than anyone typing gets closed."""
        if self._errors.take():
            self.close_with(Error("bad_request", "too many bad requests; closing", rid=ev.rid))
            log.info("closed peer=%s user=%s: too many bad requests", self.peer, self.user)
            return
        self.send_event(ev)

    def _log_error(self, user: str | None, code: str, message: str) -> None:
        log.info("error user=%s peer=%s code=%s %s", user, self.peer, code, message)

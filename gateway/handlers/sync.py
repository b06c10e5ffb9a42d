"""Logging in with replay, and status.

A login subscribes first (``Conn.begin_sync``), then counts what is unread in
every conversation (two single-entry reads each, all in one round trip), then
replays it in pages, oldest first across all conversations, then goes live
(``Conn.finish_sync``): no gap, no duplicate.
"""

from __future__ import annotations

import heapq
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field

from gateway.errors import ClientError, Unavailable
from gateway.handlers.context import Context
from gateway.protocol import (
    GENERAL,
    GetStatus,
    JoinRequest,
    Login,
    Message,
    Notice,
    Quota,
    StatusResult,
    Synced,
    Welcome,
    format_stream_id,
    parse_stream_id,
)
from gateway.protocol.events import Rid
from gateway.store import is_room, other_user
from gateway.store.messages import PAGE

__all__ = ["attach", "login", "poll", "status", "unread"]

log = logging.getLogger("redchat.sync")

MERGE_PAGE = 50  # per conversation while merging many into one time order


@dataclass(slots=True)
class _Replay:
    """One conversation to replay: its reader's name, count, and where to read."""

    conversation: str
    name: str
    count: int
    after: str | None
    known: list[Message] = field(default_factory=list)  # already read (first join)


async def login(ctx: Context, cmd: Login) -> None:
    if ctx.conn.user is not None:
        raise ClientError("bad_request", f"already logged in as {ctx.conn.user}")
    account = await ctx.store.accounts.login(cmd.user, cmd.password, ctx.conn.peer_address)
    await attach(ctx, account.name, account.new, cmd.since, cmd.rid)


async def attach(
    ctx: Context, name: str, new: bool, since: Mapping[str, str] | None, rid: Rid = None
) -> None:
    """Go live as ``name``, whose password (or token) was checked: welcome, what is
    unread, ``synced``, then live events. Used by a login and by ``GET /events``."""
    conn = ctx.conn
    rooms = await conn.begin_sync(name)
    try:
        plan = await _plan(ctx, since, rooms)
        if ctx.store.scripts.sharded:
            _mark_read(conn.last_sent, plan)
        unread = {r.name: r.count for r in plan if r.count}
        conn.send_event(Welcome(name, new, unread, ctx.gw.name, rid=rid))
        await _replay(ctx, plan, conn.replay_page)
    except BaseException:
        # Anything short of `synced` leaves the client logged out, free to try again.
        conn.undo_login()
        raise
    conn.finish_sync()
    conn.send_event(Synced(rid=rid))
    # An owner hears of every request still open, as if it had come just now.
    try:
        waiting = await ctx.store.rooms.pending_for_owner(name, rooms)
        names = await ctx.store.accounts.display_names([user for _, user in waiting])
    except Unavailable as exc:
        log.warning("could not list join requests for %s: %s", name, exc)
        return
    for (room, user), shown in zip(waiting, names, strict=True):
        conn.send_event(JoinRequest(room, shown or user))
    log.info("login user=%s new=%s peer=%s", name, new, conn.peer_address)


def _mark_read(last_sent: dict[str, tuple[int, int]], plan: list[_Replay]) -> None:
    """On a cluster the hub reads a direct conversation after what a session has of it
    (gateway.net.hub): what the login starts from counts as had, so a conversation
    with nothing unread is not handed over again from its start."""
    for item in plan:
        if item.after is not None and not is_room(item.conversation):
            try:
                last_sent.setdefault(item.conversation, parse_stream_id(item.after))
            except ValueError:
                continue


async def unread(ctx: Context) -> dict[str, int]:
    """{conversation as the user names it: unread count}, as a login's welcome has."""
    return {r.name: r.count for r in await _plan(ctx, None) if r.count}


async def poll(ctx: Context, most: int) -> tuple[list[Message], bool]:
    """What is unread in every conversation, oldest first, at most ``most`` of it, and
    whether more is left. The user's cursors move past it, so every client of theirs
    counts it as read (a poll is a delivery, like a live one)."""
    got: list[Message] = []
    moved: dict[str, str] = {}

    async def take(conversation: str, page: list[Message]) -> None:
        got.extend(page)
        moved[conversation] = page[-1].id

    more = await _replay(ctx, await _plan(ctx, None), take, most)
    if moved:
        await ctx.store.cursors.advance({ctx.user: moved})
    return got, more


async def _plan(
    ctx: Context, since: Mapping[str, str] | None, rooms: list[str] | None = None
) -> list[_Replay]:
    """What to replay; ``rooms``: the user's rooms as the login subscribed them (a
    room joined since is announced and replayed by the session once it is live)."""
    store, s, me = ctx.store, ctx.settings, ctx.user
    conversations, cursors = await store.reading(me, rooms)
    wanted = {k.lower(): v for k, v in (since or {}).items()}
    reading: list[tuple[str, str | None]] = []
    for conversation in conversations:
        key = other_user(me, conversation) or conversation
        reading.append((conversation, wanted.get(key, cursors.get(conversation))))
    names = await store.reader_names(me, [c for c, _ in reading])
    plan: list[_Replay] = []
    counted: list[_Replay] = []
    for (conversation, after), name in zip(reading, names, strict=True):
        if after is None and conversation == GENERAL:
            # Never saw #general: its last few messages, as context.
            recent = await store.messages.read_last(GENERAL, s.history_size)
            plan.append(_Replay(GENERAL, name, len(recent), None, recent))
            continue
        item = _Replay(conversation, name, 0, after)
        plan.append(item)
        counted.append(item)
    counts = await store.messages.unread_counts(
        [(r.conversation, r.after) for r in counted], s.replay_max + 1
    )
    for item, count in zip(counted, counts, strict=True):
        item.count = count
    return plan


Sink = Callable[[str, list[Message]], Awaitable[None]]


async def _replay(ctx: Context, plan: list[_Replay], sink: Sink, most: int | None = None) -> bool:
    """Everything unread, oldest first across conversations, a page at a time, to
    ``sink``; at most ``most`` messages (True when that left some out)."""
    messages, limit = ctx.store.messages, ctx.settings.replay_max
    sources: list[_Source] = []
    for item in plan:
        if item.known:
            sources.append(_Source(item.conversation, None, list(item.known), done=True))
        elif item.count > limit:
            ctx.conn.send_event(
                Notice(f"more than {limit} unread in {item.name}; showing the last {limit}")
            )
            start = await messages.start_of_last(item.conversation, limit)
            sources.append(_Source(item.conversation, start, [], left=limit))
        elif item.count:
            sources.append(_Source(item.conversation, item.after, [], left=item.count + PAGE))
    page = MERGE_PAGE if len(sources) > 1 else PAGE
    heap: list[tuple[tuple[int, int], int]] = []
    for i, src in enumerate(sources):
        await src.fill(ctx, page)
        if src.buffer:
            heap.append((src.buffer[0].key, i))
    heapq.heapify(heap)
    while heap:
        _, i = heapq.heappop(heap)
        src = sources[i]
        run = [src.buffer.pop(0)]
        bound = heap[0][0] if heap else None
        while src.buffer and (bound is None or src.buffer[0].key < bound):
            run.append(src.buffer.pop(0))
        if most is not None:
            if len(run) >= most:
                await sink(src.conversation, run[:most])
                return True
            most -= len(run)
        await sink(src.conversation, run)
        if not src.buffer:
            await src.fill(ctx, page)
        if src.buffer:
            heapq.heappush(heap, (src.buffer[0].key, i))
    return False


@dataclass(slots=True)
class _Source:
    conversation: str
    after: str | None
    buffer: list[Message]
    left: int = 0  # most messages still to read
    done: bool = False

    async def fill(self, ctx: Context, page: int) -> None:
        if self.done or self.left <= 0:
            return
        got = await ctx.store.messages.read_after(
            self.conversation, self.after, min(page, self.left)
        )
        self.buffer = got
        self.left -= len(got)
        if len(got) < min(page, PAGE):
            self.done = True
        if got:
            self.after = got[-1].id


async def status(ctx: Context, cmd: GetStatus) -> None:
    store, me = ctx.store, ctx.user
    online = await store.presence.online(stale_ms=int(ctx.settings.heartbeat_s * 3000))
    cursors = await store.cursors.cursors(me)
    reading = [
        (c, _later(cursors.get(c), ctx.conn.last_sent.get(c)))
        for c in await store.conversations(me)
    ]
    counts = await store.messages.unread_counts(reading, ctx.settings.replay_max)
    counted = [(c, n) for (c, _), n in zip(reading, counts, strict=True) if n]
    names = await store.reader_names(me, [c for c, _ in counted])
    unread = {name: n for name, (_, n) in zip(names, counted, strict=True)}
    state = await store.moderation.state(me)
    limit = store.moderation.limits.rate_limit
    quota = None
    if limit:
        quota = Quota(limit, max(0, limit - state.quota_used), state.quota_resets_at)
    ctx.conn.send_event(
        StatusResult(
            me, ctx.gw.name, tuple(online), unread, rid=cmd.rid,
            banned_until=state.banned_until, quota=quota,
        )
    )  # fmt: skip


def _later(a: str | None, b: tuple[int, int] | None) -> str | None:
    if b is None:
        return a
    if a is None or parse_stream_id(a) < b:
        return format_stream_id(b)
    return a

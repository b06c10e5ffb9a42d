"""The hub: one pub/sub subscription per gateway process, fanned out to local sessions.

Each channel is subscribed once, however many local sessions need it, and
unsubscribed when the last one leaves. An event is decoded once per gateway and
handed to each session, which encodes it for its framing (JSON sessions share the
published bytes as they are). The hub never awaits a session: delivery only
appends to a bounded outbox.

When the pub/sub link drops, the hub reconnects with backoff, resubscribes, and
re-reads what was published meanwhile once per channel (not once per session):
every live session holds its live events while the missed messages are handed to
it, minus those it had, so nothing is missed and nothing doubled.

A route's subscription belongs to the hub, not to the session that asked first:
if that session goes away half-way, the others still get the confirmation, and
every wait for one is bounded.

The hub also batches the "delivered up to" cursors of local users and saves them
to Redis every ``cursor_flush_s``.

On a Redis Cluster (``cluster`` given) the link is sharded (gateway.net.sharded),
and a direct message is published after its atomic step rather than in it (its
users' channels are in other slots than the conversation), so two of them can
arrive out of order. There an event on a user's channel is taken as word that the
conversation has news: the hub reads it from the stream after what its sessions
have, in order, once for every session of that user (coalesced while a read runs).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

from redis.asyncio import Redis

from gateway.aio import stop_tasks
from gateway.errors import Unavailable
from gateway.net.pubsub import Subscriber, SubscriberClosed
from gateway.net.sharded import ShardedSubscriber
from gateway.protocol import (
    Error,
    LiveRun,
    Message,
    ReportWarning,
    format_stream_id,
    published_from_json,
    pushed_from_dict,
)
from gateway.store import GENERAL, Keys, Store, dm_conversation, now_ms
from gateway.store.messages import PAGE

if TYPE_CHECKING:
    from gateway.net.session import Session

__all__ = ["Hub"]

log = logging.getLogger("redchat.hub")

SUBSCRIBE_WAIT_S: Final = 10.0
CATCH_UP_TRIES: Final = 5  # reads of a direct conversation before its readers reconnect
RESYNC_MARGIN_MS: Final = 5000  # clocks of gateways and Redis may differ this much


@dataclass(eq=False)
class Route:
    """The local sessions behind one channel. ``user`` is set for a user's own channel."""

    channel: str
    user: str | None
    sessions: set[Session] = field(default_factory=set)
    room: str | None = None  # set for a room's channel (other than #general)
    # Set once Redis confirmed the subscription, then dropped (None): an Event holds a
    # deque of 760 bytes, and there is a route per logged-in user.
    pending: asyncio.Event | None = field(default_factory=asyncio.Event)

    def confirm(self) -> None:
        if self.pending is not None:
            self.pending.set()
            self.pending = None


class Hub:
    def __init__(
        self,
        redis_url: str,
        keys: Keys,
        store: Store,
        *,
        cursor_flush_s: float = 0.5,
        on_reconnect: Callable[[], None] | None = None,
        client_name: str | None = None,
        cluster: Redis | None = None,
    ) -> None:
        self.client_name = client_name
        self.cluster = cluster
        self.redis_url = redis_url
        self.keys = keys
        self.store = store
        self.cursor_flush_s = cursor_flush_s
        self.on_reconnect = on_reconnect
        self._routes: dict[bytes, Route] = {}
        general = keys.room_channel(GENERAL)
        self._general = Route(general, None)
        self._routes[general.encode()] = self._general
        self._sub: Subscriber | ShardedSubscriber | None = None
        self._ready = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False
        self._cursors: dict[str, dict[str, str]] = {}  # user -> {conversation: id}
        self._cursors_failing = False  # log an outage once, not at every flush
        self._subscribing: set[asyncio.Task[None]] = set()
        self._lost_at_ms = 0
        # On a cluster: (user channel, conversation) being read -> read again after.
        self._catching_up: dict[tuple[bytes, str], bool] = {}
        self._catch_ups: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._run(), name="hub-pubsub"),
            asyncio.create_task(self._flush_cursors_forever(), name="hub-cursors"),
        ]

    async def wait_ready(self, timeout_s: float) -> bool:
        try:
            async with asyncio.timeout(timeout_s):
                await self._ready.wait()
        except TimeoutError:
            return False
        return True

    async def stop(self) -> None:
        self._stopping = True
        await stop_tasks([*self._tasks, *self._subscribing, *self._catch_ups])
        await self.flush_cursors()

    # -- subscriptions ----------------------------------------------------------
    async def join(self, session: Session, rooms: list[str] | None = None) -> None:
        """Attach a logged-in session to #general, its user's channel and ``rooms``.

        Returns once Redis has confirmed the subscriptions, so a replay read after
        this cannot miss a message published in between; waits at most
        ``SUBSCRIBE_WAIT_S``.
        """
        assert session.user is not None
        self._general.sessions.add(session)
        routes = [self._attach(session, self.keys.user_channel(session.user), session.user)]
        for room in rooms or ():
            session.rooms.add(room)
            routes.append(self._attach(session, self.keys.room_channel(room), None, room))
        await self._confirmed(session, routes)

    async def join_room(self, session: Session, room: str) -> None:
        """Attach a live session to one more room (it just became a member)."""
        session.rooms.add(room)
        route = self._attach(session, self.keys.room_channel(room), None, room)
        await self._confirmed(session, [route], room)

    def leave_room(self, session: Session, room: str) -> None:
        session.rooms.discard(room)
        self._detach(session, self.keys.room_channel(room))

    def leave(self, session: Session) -> None:
        self._general.sessions.discard(session)
        if session.user is None:
            return
        self._detach(session, self.keys.user_channel(session.user))
        for room in list(session.rooms):
            self.leave_room(session, room)

    def _attach(
        self, session: Session, channel: str, user: str | None, room: str | None = None
    ) -> Route:
        if not self._ready.is_set() or self._sub is None:
            raise Unavailable("the pub/sub link is down")
        route = self._routes.get(channel.encode())
        if route is None:
            route = Route(channel, user.lower() if user else None, room=room)
            self._routes[channel.encode()] = route
            task = asyncio.create_task(self._subscribe(self._sub, route))
            self._subscribing.add(task)
            task.add_done_callback(self._subscribing.discard)
        route.sessions.add(session)
        return route

    async def _confirmed(
        self, session: Session, routes: list[Route], room: str | None = None
    ) -> None:
        try:
            async with asyncio.timeout(SUBSCRIBE_WAIT_S):
                for route in routes:
                    if (pending := route.pending) is not None:
                        await pending.wait()
        except BaseException as exc:
            if room is None:
                self.leave(session)
            else:
                self.leave_room(session, room)
            if isinstance(exc, TimeoutError):
                raise Unavailable(f"no subscription within {SUBSCRIBE_WAIT_S:g} s") from None
            raise

    async def _subscribe(self, sub: Subscriber | ShardedSubscriber, route: Route) -> None:
        """Owned by the hub: a session cancelled while waiting does not cancel it."""
        try:
            await sub.subscribe([route.channel])
        except SubscriberClosed:
            return  # the link is down: the reconnect resubscribes every route
        route.confirm()

    def _detach(self, session: Session, channel: str) -> None:
        key = channel.encode()
        route = self._routes.get(key)
        if route is None or route is self._general:
            return
        route.sessions.discard(session)
        if not route.sessions:
            del self._routes[key]
            if self._sub is not None and self._ready.is_set():
                with contextlib.suppress(SubscriberClosed):
                    self._sub.unsubscribe([route.channel])

    # -- the pub/sub link ---------------------------------------------------------
    async def _run(self) -> None:
        backoff = 0.1
        connected_before = False
        while not self._stopping:
            sub = self._new_link()
            reader: asyncio.Task[None] | None = None
            try:
                await sub.connect()
                reader = asyncio.create_task(self._read(sub))
                await sub.subscribe(route.channel for route in list(self._routes.values()))
                for route in self._routes.values():
                    route.confirm()
                self._sub = sub
                self._ready.set()
                log.info("pub/sub connected (%d channels)", len(self._routes))
                if connected_before:
                    if self.on_reconnect is not None:
                        self.on_reconnect()
                    await self._resync(self._lost_at_ms - RESYNC_MARGIN_MS)
                connected_before = True
                backoff = 0.1
                await reader
            except (SubscriberClosed, OSError) as exc:
                if self._ready.is_set() or not connected_before:
                    log.warning("pub/sub link down: %s; reconnecting", exc)
            finally:
                if self._ready.is_set():
                    self._lost_at_ms = now_ms()
                self._ready.clear()
                self._sub = None
                if reader is not None:
                    reader.cancel()
                    await asyncio.gather(reader, return_exceptions=True)
                await sub.close()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 2.0)

    def _new_link(self) -> Subscriber | ShardedSubscriber:
        if self.cluster is not None:
            return ShardedSubscriber(self.redis_url, self.cluster, client_name=self.client_name)
        return Subscriber(self.redis_url, client_name=self.client_name)

    async def _read(self, sub: Subscriber | ShardedSubscriber) -> None:
        while not self._stopping:
            self._dispatch_batch(await sub.read_batch())

    def _dispatch_batch(self, batch: list[tuple[bytes, bytes]]) -> None:
        """Everything one read brought. Consecutive messages of one channel and
        conversation go to each session as one run: one write and one cursor update
        per session, not one per message (under load a read carries many). An event
        that is not a message (a notice, a warning) goes out after every message
        that came before it, on any channel: "your scheduled message was sent"
        after the message."""
        runs: dict[bytes, tuple[Route, str, list[Message]]] = {}
        # A direct message comes on both users' channels: decoded once, with its
        # conversation.
        seen: dict[bytes, tuple[str, Message]] = {}
        for channel, data in batch:
            route = self._routes.get(channel)
            if route is None or not route.sessions:
                continue
            got = self._decode(route, channel, data, seen)
            if got is None:
                continue
            if isinstance(got, dict):  # an event for a user: after all that came before it
                for earlier in runs.values():
                    self._deliver(*earlier)
                runs.clear()
                self._push(route, got)
                continue
            conversation, msg = got
            run = runs.get(channel)
            if run is not None and run[1] == conversation:
                run[2].append(msg)
                continue
            if run is not None:
                self._deliver(*run)
            runs[channel] = (route, conversation, [msg])
        for run in runs.values():
            self._deliver(*run)

    def _deliver(self, route: Route, conversation: str, messages: list[Message]) -> None:
        run = LiveRun(messages)
        for session in list(route.sessions):
            session.deliver_run(conversation, run)

    # -- after an outage: re-read once per channel ------------------------------------
    async def _resync(self, since_ms: int) -> None:
        """Hand every live session what was published while the link was down."""
        holding = {s for s in list(self._general.sessions) if s.begin_resync()}
        if not holding:
            return
        try:
            await self._reread(GENERAL, holding, since_ms)
            for route in list(self._routes.values()):
                targets = holding & route.sessions
                if not targets:
                    continue
                if route.room is not None:
                    await self._reread(route.room, targets, since_ms)
                elif route.user is not None:
                    for conversation in (await self.store.cursors.conversations(route.user))[1:]:
                        await self._reread(conversation, targets, since_ms)
        except Exception as exc:
            # Going live now could hide a gap: the clients come back and resume instead.
            if isinstance(exc, Unavailable):
                log.warning("re-sync after the outage failed (%s); disconnecting", exc)
            else:
                log.exception("bug in the re-sync after an outage; disconnecting")
            for session in holding:
                session.close_with(Error("unavailable", "lost track of new messages; reconnect"))
        finally:
            for session in holding:
                session.finish_sync()

    async def _reread(self, conversation: str, targets: set[Session], since_ms: int) -> None:
        known = [s.last_sent[conversation] for s in targets if conversation in s.last_sent]
        after = format_stream_id(min(known)) if known else f"{max(0, since_ms)}-0"
        while True:
            page = await self.store.messages.read_after(conversation, after, PAGE)
            for session in targets:
                session.replay_now(conversation, page)
            if len(page) < PAGE:
                return
            after = page[-1].id

    def _decode(
        self, route: Route, channel: bytes, data: bytes, seen: dict[bytes, tuple[str, Message]]
    ) -> tuple[str, Message] | dict[str, object] | None:
        """A message to deliver, with its conversation; an event for a user that is
        not a message, as its JSON object; None for what is not delivered as it came
        (malformed; a direct message on a cluster, read from its stream instead).
        ``seen``: the messages decoded from this read, by their bytes."""
        found = seen.get(data)
        if found is None:
            try:
                got = published_from_json(data)
            except (ValueError, KeyError, TypeError, AttributeError):
                log.warning("dropped a malformed event on %s", channel[:100])
                return None
            if not isinstance(got, Message):
                return got
            # A room's message comes on its room's channel, a direct one on users'.
            conversation = got.to if route.user is None else dm_conversation(got.from_, got.to)
            found = seen[data] = (conversation, got)
        if route.user is not None and self.cluster is not None:
            self._catch_up(channel, found[0])
            return None
        return found

    # -- on a cluster: direct messages read from their stream, in order -----------------
    def _catch_up(self, channel: bytes, conversation: str) -> None:
        key = (channel, conversation)
        if key in self._catching_up:
            self._catching_up[key] = True  # read again once the read in flight is done
            return
        self._catching_up[key] = False
        task = asyncio.create_task(self._read_direct(key, conversation))
        self._catch_ups.add(task)
        task.add_done_callback(self._catch_ups.discard)

    async def _read_direct(self, key: tuple[bytes, str], conversation: str) -> None:
        """Hand the channel's sessions what the conversation has after what they have.
        ``deliver`` drops what a session had and holds it for a session still syncing.
        A session with nothing of it has it from when it logged in: the login's
        replay marks the conversations listed then (gateway.handlers.sync), and one
        not listed then has had no message since well before.

        The channel's route is looked up at each read: its sessions may all have
        left and new ones come (a new route) while a read was in flight, and the
        word coalesced into this read is for them."""
        tries = 0
        try:
            while True:
                self._catching_up[key] = False
                route = self._routes.get(key[0])
                targets = list(route.sessions) if route is not None else []
                if not targets:
                    return
                after = format_stream_id(
                    min(
                        s.last_sent.get(conversation) or (max(0, s.joined_ms - RESYNC_MARGIN_MS), 0)
                        for s in targets
                    )
                )
                try:
                    while True:
                        page = await self.store.messages.read_after(
                            conversation, after, PAGE, replay=False
                        )
                        for msg in page:
                            for session in targets:
                                session.deliver(conversation, msg)
                        if len(page) < PAGE:
                            break
                        after = page[-1].id
                except Unavailable as exc:
                    tries += 1
                    if tries >= CATCH_UP_TRIES:
                        log.warning("could not read %s (%s); disconnecting", conversation, exc)
                        for session in targets:
                            session.close_with(
                                Error("unavailable", "lost track of new messages; reconnect")
                            )
                        return
                    self._catching_up[key] = True
                    await asyncio.sleep(0.2 * tries)
                if not self._catching_up[key]:
                    return
        finally:
            del self._catching_up[key]

    def _push(self, route: Route, obj: dict[str, object]) -> None:
        """An event for a user that is not a message: to each of their local sessions."""
        ev = pushed_from_dict(obj) if route.user is not None else None
        if ev is None:
            log.warning("dropped an unknown event %r", str(obj.get("type"))[:40])
            return
        if isinstance(ev, ReportWarning) and ev.banned_until is not None and route.user:
            self.store.moderation.forget(route.user)  # refused from the next send on
        for session in list(route.sessions):
            session.push(ev)

    # -- cursors ----------------------------------------------------------------
    def mark_delivered(self, user: str, conversation: str, message: Message) -> None:
        # Called once per delivery: no throwaway dict as setdefault's default would make.
        cursors = self._cursors.get(user)
        if cursors is None:
            cursors = self._cursors[user] = {}
        cursors[conversation] = message.id

    async def flush_cursors(self) -> None:
        pending, self._cursors = self._cursors, {}
        if not pending:
            return
        try:
            await self.store.cursors.advance(pending)
            if self._cursors_failing:
                self._cursors_failing = False
                log.info("cursors saved again")
        except Unavailable as exc:
            if not self._cursors_failing:
                self._cursors_failing = True
                log.warning("could not save cursors (%s); will retry", exc)
            for user, convs in pending.items():
                mine = self._cursors.setdefault(user, {})
                for conv, sid in convs.items():
                    mine.setdefault(conv, sid)
        except Exception:
            log.exception("could not save cursors")

    async def _flush_cursors_forever(self) -> None:
        while not self._stopping:
            await asyncio.sleep(self.cursor_flush_s)
            await self.flush_cursors()

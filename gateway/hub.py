"""The hub: one pub/sub subscription per gateway process, fanned out to local sessions.

Each channel is subscribed once, however many local sessions need it, and
unsubscribed when the last one leaves. An event is decoded once per gateway and
handed to each session, which encodes it for its framing (JSON sessions share the
published bytes as they are). The hub never awaits a session: delivery only
appends to a bounded outbox.

When the pub/sub link drops, the hub reconnects with backoff, resubscribes, and
asks every live session to re-sync from the last id it delivered, so nothing
published while the link was down is missed.

The hub also batches the "delivered up to" cursors of local users and saves them
to Redis every ``cursor_flush_s``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from gateway.aio import stop_tasks
from gateway.errors import ClientError
from gateway.keys import GENERAL, Keys, dm_conversation
from gateway.protocol import Message, message_from_dict
from gateway.pubsub import Subscriber, SubscriberClosed
from gateway.store import REDIS_DOWN, Store

if TYPE_CHECKING:
    from gateway.session import Session

__all__ = ["Hub"]

log = logging.getLogger("redchat.hub")


@dataclass(eq=False)
class Route:
    """The local sessions behind one channel. ``user`` is set for a user's own channel."""

    channel: str
    user: str | None
    sessions: set[Session] = field(default_factory=set)
    confirmed: asyncio.Event = field(default_factory=asyncio.Event)


class Hub:
    def __init__(
        self,
        redis_url: str,
        keys: Keys,
        store: Store,
        *,
        cursor_flush_s: float = 0.5,
        on_reconnect: Callable[[], None] | None = None,
    ) -> None:
        self.redis_url = redis_url
        self.keys = keys
        self.store = store
        self.cursor_flush_s = cursor_flush_s
        self.on_reconnect = on_reconnect
        self._routes: dict[bytes, Route] = {}
        general = keys.room_channel(GENERAL)
        self._general = Route(general, None)
        self._routes[general.encode()] = self._general
        self._sub: Subscriber | None = None
        self._ready = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False
        self._cursors: dict[str, dict[str, str]] = {}  # user -> {conversation: id}
        self._cursors_failing = False  # log an outage once, not at every flush

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
        await stop_tasks(self._tasks)
        await self.flush_cursors()

    # -- subscriptions ----------------------------------------------------------
    async def join(self, session: Session) -> None:
        """Attach a logged-in session to #general and its user's channel.

        Returns once Redis has confirmed the subscriptions, so a replay read after
        this cannot miss a message published in between.
        """
        if not self._ready.is_set() or self._sub is None:
            raise ClientError("unavailable", "chat storage is unreachable; try again shortly")
        assert session.user is not None
        channel = self.keys.user_channel(session.user)
        route = self._routes.get(channel.encode())
        if route is None:
            route = Route(channel, session.user.lower())
            self._routes[channel.encode()] = route
            route.sessions.add(session)
            self._general.sessions.add(session)
            try:
                await self._sub.subscribe([channel])
            except SubscriberClosed:
                self.leave(session)
                raise ClientError("unavailable", "chat storage is unreachable") from None
            route.confirmed.set()
        else:
            route.sessions.add(session)
            self._general.sessions.add(session)
            await route.confirmed.wait()

    def leave(self, session: Session) -> None:
        self._general.sessions.discard(session)
        if session.user is None:
            return
        key = self.keys.user_channel(session.user).encode()
        route = self._routes.get(key)
        if route is None:
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
            sub = Subscriber(self.redis_url)
            reader: asyncio.Task[None] | None = None
            try:
                await sub.connect()
                reader = asyncio.create_task(self._read(sub))
                await sub.subscribe(route.channel for route in list(self._routes.values()))
                for route in self._routes.values():
                    route.confirmed.set()
                self._sub = sub
                self._ready.set()
                log.info("pub/sub connected (%d channels)", len(self._routes))
                if connected_before and self.on_reconnect is not None:
                    self.on_reconnect()
                connected_before = True
                backoff = 0.1
                await reader
            except (SubscriberClosed, OSError) as exc:
                if self._ready.is_set() or not connected_before:
                    log.warning("pub/sub link down: %s; reconnecting", exc)
            finally:
                self._ready.clear()
                self._sub = None
                if reader is not None:
                    reader.cancel()
                    await asyncio.gather(reader, return_exceptions=True)
                await sub.close()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 2.0)

    async def _read(self, sub: Subscriber) -> None:
        while not self._stopping:
            batch = await sub.read_batch()
            for channel, data in batch:
                self._dispatch(channel, data)

    def _dispatch(self, channel: bytes, data: bytes) -> None:
        route = self._routes.get(channel)
        if route is None or not route.sessions:
            return
        try:
            msg = message_from_dict(json.loads(data), raw=data + b"\n")
        except (ValueError, KeyError, TypeError):
            log.warning("dropped a malformed event on %s", channel[:100])
            return
        conversation = msg.to if route.user is None else dm_conversation(msg.from_, msg.to)
        for session in list(route.sessions):
            session.deliver(conversation, msg)

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
            await self.store.advance_cursors(pending)
            if self._cursors_failing:
                self._cursors_failing = False
                log.info("cursors saved again")
        except REDIS_DOWN as exc:
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

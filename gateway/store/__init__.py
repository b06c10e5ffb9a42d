"""All of redchat's reads and writes to Redis, by domain.

    keys.py      every key and channel name (the only place they are built)
    redis.py     the client, the Lua runner, the error boundary
    lua/*.lua    the atomic steps, each on one cluster slot
    accounts.py  names, passwords, the login throttle
    messages.py  the atomic send, history in pages, unread counts, the sender's log
    cursors.py   each user's conversations and delivered-up-to cursors
    presence.py  gateways alive and who is on each
    moderation.py  the public-chat rate limit, reports, bans
    rooms.py     rooms, members, join requests, invite links
    schedules.py scheduled messages
    tokens.py    the HTTP API's bearer tokens
    files.py     the bytes of file messages, in chunks; each user's byte quota

``Store`` holds one of each and the conversions between a conversation's id and
its name from a reader's side. The store knows nothing about sockets or
sessions; Redis being unreachable leaves it as ``gateway.errors.Unavailable``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from functools import partial
from time import monotonic
from typing import Final

from redis.asyncio import Redis

from gateway.errors import ClientError, Unavailable
from gateway.protocol.events import FileInfo, Message, Quote
from gateway.store.accounts import Account, Accounts, LoginLimits, hash_password, verify_password
from gateway.store.cursors import Cursors
from gateway.store.files import FileLimits, Files
from gateway.store.keys import GENERAL, Keys, dm_conversation, is_room
from gateway.store.messages import Messages, SendDone, SendResult, entry_to_message
from gateway.store.moderation import Moderation, ModerationLimits
from gateway.store.presence import Presence
from gateway.store.redis import REDIS_DOWN, Scripts, boundary, make_redis
from gateway.store.rooms import Rooms
from gateway.store.schedules import Schedules
from gateway.store.sendlink import SendLink
from gateway.store.time import now_ms
from gateway.store.tokens import Tokens

__all__ = [
    "GENERAL",
    "REDIS_DOWN",
    "Account",
    "FileLimits",
    "Keys",
    "LoginLimits",
    "ModerationLimits",
    "SendResult",
    "Store",
    "dm_conversation",
    "entry_to_message",
    "hash_password",
    "is_room",
    "make_redis",
    "now_ms",
    "other_user",
    "verify_password",
]


PRIVACY_CACHE_S: Final = 5.0
# Direct routes kept for send_now (a few hundred bytes each); past it they start over.
ROUTES_MAX: Final = 20_000


@boundary
class Store:
    def __init__(
        self,
        redis: Redis,
        keys: Keys,
        *,
        message_ttl_s: int = 3600,
        history_max_len: int = 100_000,
        idempotency_ttl_s: int = 300,
        login: LoginLimits | None = None,
        moderation: ModerationLimits | None = None,
        token_ttl_s: int = 86_400,
        file_limits: FileLimits | None = None,
        wait_replicas: int = 0,
    ) -> None:
        self.redis = redis
        self.keys = keys
        self.scripts = Scripts(redis)
        self.accounts = Accounts(redis, keys, self.scripts, login or LoginLimits())
        self.messages = Messages(
            redis,
            keys,
            self.scripts,
            message_ttl_s=message_ttl_s,
            history_max_len=history_max_len,
            idempotency_ttl_s=idempotency_ttl_s,
            wait_replicas=wait_replicas,
        )
        if not self.scripts.sharded and not wait_replicas:
            self.messages.link = SendLink(redis)
        self.cursors = Cursors(redis, keys, self.scripts, message_ttl_s)
        self.presence = Presence(redis, keys)
        self.rooms = Rooms(redis, keys, self.scripts)
        self._private: dict[str, tuple[bool, float]] = {}  # room -> (private, when looked up)
        # send_now's (sender, target) -> (conversation, to, channels, lists)
        self._routes: dict[tuple[str, str], tuple[str, str, list[str], tuple[str, str] | None]] = {}
        # The gateway and the worker pass their settings; a bare Store has no rate limit.
        limits = moderation or ModerationLimits(rate_limit=0, idempotency_ttl_s=idempotency_ttl_s)
        self.moderation = Moderation(redis, keys, self.scripts, limits)
        self.schedules = Schedules(redis, keys, self.scripts)
        self.tokens = Tokens(redis, keys, token_ttl_s)
        self.files = Files(redis, keys, message_ttl_s=message_ttl_s, limits=file_limits)

    async def close(self) -> None:
        """Give back the pooled connection its send link keeps (the client and its
        pool are the caller's to close)."""
        if self.messages.link is not None:
            await self.messages.link.close()

    def forget_cached(self) -> None:
        """Redis may have lost data (it restarted): look everything up again."""
        self.accounts.forget_cached()
        self.messages.forget_cached()
        self._routes.clear()  # a name it holds may be gone

    # -- conversations from a reader's side ---------------------------------------
    async def resolve(self, me: str, target: str) -> tuple[str, str]:
        """(conversation id, name as ``me`` sees it) for '#room' or a user name."""
        if is_room(target):
            room = target.lower()
            if room != GENERAL and await self._room_private(room) is None:
                raise ClientError("not_found", f"no room {room}")
            return room, room
        name = await self.accounts.display_name(target)
        if name is None:
            raise ClientError("unknown_user", f"no user named {target}")
        return dm_conversation(me, name), name

    async def conversations(self, me: str) -> list[str]:
        """Every conversation ``me`` reads: #general, their rooms, their direct ones
        (the most recently active ``MAX_DIRECT``)."""
        direct = await self.cursors.direct(me)
        return [GENERAL, *await self.rooms.of_user(me), *direct]

    async def reading(
        self, me: str, rooms: Sequence[str] | None = None
    ) -> tuple[list[str], dict[str, str]]:
        """``conversations`` and ``me``'s cursors, in one round trip for the user's
        keys; ``rooms``: their rooms as the caller already knows them (a login's
        subscriptions), else read too."""
        direct, cursors = await self.cursors.read(me)
        if rooms is None:
            rooms = await self.rooms.of_user(me)
        return [GENERAL, *rooms, *direct], cursors

    async def check_readable(self, me: str, conversation: str) -> None:
        """A private room's history and members are for its members only."""
        if not is_room(conversation) or conversation == GENERAL:
            return
        if await self._room_private(conversation) and not await self.rooms.is_member(
            conversation, me
        ):
            raise ClientError("forbidden", f"{conversation} is private: members only")

    def forget_room(self, room: str) -> None:
        """The room closed: the next look-up asks Redis (other gateways' look-ups may
        take up to ``PRIVACY_CACHE_S`` to notice, and answer ``forbidden`` meanwhile)."""
        self._private.pop(room, None)

    async def _room_private(self, room: str) -> bool | None:
        """Whether a room is private (None: no such room). A room's privacy never
        changes while it exists, so it is kept a few seconds (a closed room's name
        may be taken again)."""
        cached = self._private.get(room)
        if cached is not None and monotonic() - cached[1] < PRIVACY_CACHE_S:
            return cached[0]
        info = await self.rooms.info(room)
        if info is None:
            self._private.pop(room, None)
            return None
        if len(self._private) >= 10_000:
            self._private.clear()
        self._private[room] = (info.private, monotonic())
        return info.private

    async def reader_names(self, me: str, conversations: Sequence[str]) -> list[str]:
        """Each conversation's name from ``me``'s side: '#room' or the other user
        (display names looked up in one round trip)."""
        others = [other_user(me, c) for c in conversations]
        names = await self.accounts.display_names([o for o in others if o is not None])
        found = iter(names)
        return [
            c if other is None else (next(found) or other)
            for c, other in zip(conversations, others, strict=True)
        ]

    # -- sending -------------------------------------------------------------------
    async def send(
        self,
        sender: str,
        conversation: str,
        to: str,
        text: str,
        *,
        cid: str | None = None,
        reply_to: str | None = None,
        scheduled: bool = False,
        file: FileInfo | None = None,
        admitted: bool = False,
    ) -> SendResult:
        """Store and publish one message; ``to`` is '#room' or the recipient's display name.

        A banned sender is refused first, and a message to a public room takes one
        from the sender's quota (given back if the message is then refused). A file
        message carries a ``file`` stored in this conversation (``files.store`` or
        ``files.finish``); its text is the file's name, for clients that know no files.
        """
        if file is not None:
            text = file.name
        # ``admitted``: the caller ran ``admit`` (a file checks before storing its bytes)
        taken = False if admitted else await self.admit(sender, conversation, cid)
        try:
            return await self._send(
                sender, conversation, to, text, cid=cid, reply_to=reply_to, scheduled=scheduled,
                file=file,
            )  # fmt: skip
        except (ClientError, Unavailable):
            if taken:
                await self.moderation.refund(sender, cid)
            raise

    def send_now(
        self, sender: str, target: str, text: str, cid: str | None, on_done: SendDone
    ) -> bool:
        """``send`` without a wait, for the common send that this process's caches
        let through: to #general or to a user whose name is known here, from a
        sender not banned a moment ago, taking nothing from a quota. False, with
        nothing done, when ``send`` must ask Redis first.

        Only where batches go one at a time (the send link), so that a caller who
        queues sends in order has them stored, and answered, in that order."""
        if self.messages.link is None:
            return False
        route_key = (sender, target.lower())  # not as typed: casings would each take room
        route = self._routes.get(route_key)
        if route is None:
            if is_room(target):
                if target.lower() != GENERAL:
                    return False  # a room's privacy and membership: ``send`` checks them
                conversation = to = GENERAL
            else:
                found = self.accounts.cached_name(target)
                if found is None:
                    return False
                conversation, to = dm_conversation(sender, found), found
            # Display names never change once claimed: the route holds.
            route = (conversation, to, *self._route(sender, conversation, to))
            if len(self._routes) >= ROUTES_MAX:
                self._routes.clear()
            self._routes[route_key] = route
        conversation, to, channels, lists = route
        if not self.moderation.cleared(sender, counts=conversation == GENERAL):
            return False
        self.messages.queue(
            sender, conversation, to, text, channels=channels, on_done=on_done, cid=cid, lists=lists
        )
        return True

    def _route(
        self, sender: str, conversation: str, to: str
    ) -> tuple[list[str], tuple[str, str] | None]:
        """Where a message goes live (channels), and for a direct one the two users'
        conversation lists it joins."""
        k = self.keys
        if is_room(conversation):
            return [k.room_channel(conversation)], None
        channels = [k.user_channel(sender)]
        if sender.lower() != to.lower():
            channels.append(k.user_channel(to))
        return channels, (k.conversations(sender), k.conversations(to))

    async def admit(self, sender: str, conversation: str, cid: str | None) -> bool:
        """Refuse a banned sender, or one over the public-chat rate limit when the
        conversation is public; whether a quota unit was taken (``moderation.refund``)."""
        public = conversation == GENERAL
        if is_room(conversation) and conversation != GENERAL:
            public = await self._room_private(conversation) is False
        return await self.moderation.admit(sender, counts=public, cid=cid)

    async def sent_before(self, conversation: str, sender: str, cid: str) -> Message | None:
        """The message ``sender`` already stored with client id ``cid``, if any (a retry)."""
        sid = await self.redis.get(self.keys.sent(conversation, sender, cid))
        return None if sid is None else await self.messages.read_one(conversation, str(sid))

    async def _send(
        self,
        sender: str,
        conversation: str,
        to: str,
        text: str,
        *,
        cid: str | None,
        reply_to: str | None,
        scheduled: bool,
        file: FileInfo | None = None,
    ) -> SendResult:
        room = is_room(conversation) and conversation != GENERAL
        quote = None
        if file is not None:
            # The message's file is the stored one: a file of another conversation, or
            # one described wrongly, is not passed along under this conversation's name.
            found = await self.files.info(file.fid)
            if found != (conversation, file):
                raise ClientError("not_found", f"no file {file.fid} in {to}")
        if reply_to is not None:
            if room and not await self.rooms.is_member(conversation, sender):
                raise ClientError("forbidden", f"you are not a member of {conversation}")
            parent = await self.messages.read_one(conversation, reply_to)
            if parent is None:
                raise ClientError("not_found", f"no message {reply_to} in {to}")
            quote = Quote.of(parent.from_, parent.text)
        channels, lists = self._route(sender, conversation, to)
        done: asyncio.Future[SendResult] = asyncio.get_running_loop().create_future()
        self.messages.queue(
            sender, conversation, to, text, channels=channels, on_done=partial(_settle, done),
            cid=cid, reply_to=reply_to, lists=lists, member=sender if room else None, quote=quote,
            scheduled=scheduled, file=file,
        )  # fmt: skip
        try:
            return await done
        except ClientError as exc:
            # Not a member: of a room that may have closed since it was looked up.
            if exc.code == "forbidden" and await self.rooms.info(conversation) is None:
                self.forget_room(conversation)
                raise ClientError("not_found", f"no room {conversation}") from None
            raise


def _settle(future: asyncio.Future[SendResult], outcome: SendResult | Exception) -> None:
    if future.done():  # its caller was cancelled (disconnected) meanwhile
        return
    if isinstance(outcome, Exception):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)


def other_user(me: str, conversation: str) -> str | None:
    """The other user of a direct conversation (lower case); None for a room."""
    if is_room(conversation):
        return None
    _, a, b = conversation.split(":", 2)
    return b if a == me.lower() else a

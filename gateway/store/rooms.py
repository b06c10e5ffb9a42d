"""Rooms: public and private rooms, members, join requests and invite links.

A room's own keys (``{c:#name}``: ``room``, ``members``, ``pending``, ``link``,
and its stream) share one cluster slot, so every change to its members is one
atomic script (``room_member.lua``), and the send step checks membership in the
same script that stores the message. Each user's side (``{u:<name>}:rooms``) is
written after the room's, in a command of its own; reads trust the room's
``members`` and drop anything the user's side holds that the room does not.

The owner's decisions (invite, approve, deny) and a user's own moves (join,
leave) are pushed to every client of the users concerned on their channel, so
all their clients change together on every gateway.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline

from gateway.errors import ClientError
from gateway.store.keys import GENERAL, Keys
from gateway.store.redis import Scripts, boundary
from gateway.store.time import now_ms

__all__ = ["LINK_TTL_S", "MAX_ROOMS_PER_USER", "MemberChange", "RoomInfo", "Rooms"]

MAX_ROOMS_PER_USER: Final = 100
MAX_LISTED: Final = 1000  # members (and requests) listed by ``members``
LINK_TTL_S: Final = 7 * 86_400  # an invite link works a week, or until a new one is made
_TOKEN_BYTES: Final = 18


@dataclass(frozen=True, slots=True)
class RoomInfo:
    room: str  # "#name", lower case
    owner: str  # lower case
    private: bool
    members: int = 0
    member: bool = False  # the user who asked is in it


@dataclass(frozen=True, slots=True)
class MemberChange:
    status: str  # see room_member.lua
    detail: str  # the owner (joined, pending) or the new owner (handed)


@boundary
class Rooms:
    def __init__(self, redis: Redis, keys: Keys, scripts: Scripts) -> None:
        self.redis = redis
        self.keys = keys
        self.scripts = scripts

    # -- creating and reading -----------------------------------------------------
    async def create(self, room: str, owner: str, private: bool) -> RoomInfo:
        k = self.keys
        if room == GENERAL:
            raise ClientError("exists", "#general is everyone's room")
        await self._check_room_count(owner)
        created = await self.scripts.call(
            "room_create",
            (k.room(room), k.members(room)),
            (owner.lower(), "1" if private else "0", now_ms()),
        )
        if not created:
            raise ClientError("exists", f"{room} is taken")
        if not private:
            await self.redis.sadd(k.public_rooms, room)
        await asyncio.shield(self._follow_up(MemberChange("joined", ""), room, owner))
        return RoomInfo(room, owner.lower(), private, 1)

    async def _check_room_count(self, user: str) -> None:
        """A user is in at most ``MAX_ROOMS_PER_USER`` rooms (each costs every login
        a subscription and a read), so rooms cannot be made or joined without end."""
        if await self.redis.scard(self.keys.user_rooms(user)) >= MAX_ROOMS_PER_USER:
            raise ClientError(
                "forbidden", f"{user} is in {MAX_ROOMS_PER_USER} rooms already; leave one first"
            )

    async def info(self, room: str) -> RoomInfo | None:
        k = self.keys
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hmget(k.room(room), ["owner", "private"])
            pipe.zcard(k.members(room))
            (owner, private), members = await pipe.execute()
        if owner is None:
            return None
        return RoomInfo(room, str(owner), private == "1", int(members))

    async def is_member(self, room: str, user: str) -> bool:
        return await self.redis.zscore(self.keys.members(room), user.lower()) is not None

    async def of_user(self, user: str) -> list[str]:
        """The rooms the user is a member of (sorted), as the rooms themselves say."""
        k = self.keys
        listed = sorted(str(r) for r in await self.redis.smembers(k.user_rooms(user)))
        if not listed:
            return []
        async with self.redis.pipeline(transaction=False) as pipe:
            for room in listed:
                pipe.zscore(k.members(room), user.lower())
            scores = await pipe.execute()
        stale = [room for room, score in zip(listed, scores, strict=True) if score is None]
        if stale:  # a change that reached the room but not this list, or a closed room
            await self.redis.srem(k.user_rooms(user), *stale)
        return [room for room, score in zip(listed, scores, strict=True) if score is not None]

    async def listing(self, user: str) -> list[RoomInfo]:
        """The user's rooms and the public ones."""
        mine = set(await self.of_user(user))
        rooms = mine | {str(r) for r in await self.redis.smembers(self.keys.public_rooms)}
        found = [await self.info(room) for room in sorted(rooms)]
        return [
            dataclasses.replace(info, member=info.room in mine)
            for info in found
            if info is not None
        ]

    async def members(self, room: str) -> tuple[list[str], list[str]]:
        """(members, pending), lower case, in the order they came; the first
        ``MAX_LISTED`` of each."""
        k = self.keys
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.zrange(k.members(room), 0, MAX_LISTED - 1)
            pipe.zrange(k.pending(room), 0, MAX_LISTED - 1)
            members, pending = await pipe.execute()
        return [str(m) for m in members], [str(p) for p in pending]

    async def pending_for_owner(
        self, owner: str, rooms: Sequence[str] | None = None
    ) -> list[tuple[str, str]]:
        """(room, user) for every open join request to rooms ``owner`` owns; ``rooms``:
        the owner's rooms if the caller knows them (else they are read)."""
        k = self.keys
        if rooms is None:
            rooms = await self.of_user(owner)
        if not rooms:
            return []
        async with self.redis.pipeline(transaction=False) as pipe:
            for room in rooms:
                pipe.hget(k.room(room), "owner")
                pipe.zrange(k.pending(room), 0, -1)
            raw: list[Any] = await pipe.execute()
        out: list[tuple[str, str]] = []
        for i, room in enumerate(rooms):
            if raw[2 * i] == owner.lower():
                out += [(room, str(user)) for user in raw[2 * i + 1]]
        return out

    # -- members ------------------------------------------------------------------
    async def change(self, mode: str, room: str, actor: str, user: str) -> MemberChange:
        """One change to the room's members (see room_member.lua); then, whatever
        happens to the caller, the user's side and the pushes that follow from it:
        ``joined`` / ``left`` to every client of ``user`` (display name), a
        ``join_request`` to the owner, a ``notice`` to a new owner or a denied user."""
        k = self.keys
        if mode in ("invite", "approve", "public"):
            await self._check_room_count(user)
        status, detail = await self.scripts.call(
            "room_member",
            (
                k.room(room), k.members(room), k.pending(room), k.room_link(room),
                k.stream(room), k.seq(room), k.replies(room),
            ),
            (mode, actor.lower(), user.lower(), now_ms()),
        )  # fmt: skip
        change = MemberChange(str(status), str(detail))
        # Shielded: a client that disconnects now must not leave the change half told.
        await asyncio.shield(self._follow_up(change, room, user))
        return change

    async def _follow_up(self, change: MemberChange, room: str, user: str) -> None:
        k = self.keys
        async with self.redis.pipeline(transaction=False) as pipe:
            match change.status:
                case "joined" | "member":
                    pipe.sadd(k.user_rooms(user), room)
                    if change.status == "joined":
                        self._push(pipe, user, {"type": "joined", "room": room})
                case "left" | "handed" | "closed":
                    pipe.srem(k.user_rooms(user), room)
                    self._push(pipe, user, {"type": "left", "room": room})
                    if change.status == "closed":
                        pipe.srem(k.public_rooms, room)
                    if change.status == "handed":
                        notice = {"type": "notice", "text": f"you now own {room}"}
                        self._push(pipe, change.detail, notice)
                case "pending":
                    request = {"type": "join_request", "room": room, "user": user}
                    self._push(pipe, change.detail, request)
                case "denied":
                    text = f"your request to join {room} was turned down"
                    self._push(pipe, user, {"type": "notice", "text": text})
            await pipe.execute()

    def _push(self, pipe: Pipeline, user: str, event: dict[str, Any]) -> None:
        self.scripts.publish(
            pipe, self.keys.user_channel(user), json.dumps(event, separators=(",", ":"))
        )

    async def new_link(self, room: str) -> str:
        """A fresh invite token for the room; the previous one stops working."""
        k = self.keys
        token = secrets.token_urlsafe(_TOKEN_BYTES)
        old = await self.redis.set(k.room_link(room), token, ex=LINK_TTL_S, get=True)
        async with self.redis.pipeline(transaction=False) as pipe:
            if old:
                pipe.delete(k.link(str(old)))
            pipe.set(k.link(token), room, ex=LINK_TTL_S)
            await pipe.execute()
        return token

    async def room_of_link(self, token: str) -> str | None:
        """The room a token invites to, if it is still the room's current link."""
        room = await self.redis.get(self.keys.link(token))
        if room is None or await self.redis.get(self.keys.room_link(str(room))) != token:
            return None
        return str(room)

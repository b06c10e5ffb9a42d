"""Rooms: creating, joining (public, by invite, by link with the owner's approval),
leaving, listing; threads of replies; where a text connection's plain lines go.

Who may do what is decided in Redis, in the room's own atomic step
(``gateway/store/lua/room_member.lua``); a change that concerns a user is pushed
to every client of that user (``joined``, ``left``, ``join_request``), so all of
them change together, on every gateway.
"""

from __future__ import annotations

import logging

from gateway.errors import ClientError
from gateway.handlers.context import Context
from gateway.protocol import (
    GENERAL,
    Approve,
    CreateRoom,
    Deny,
    GetMembers,
    GetThread,
    Invite,
    Join,
    Joined,
    Leave,
    Left,
    LinkResult,
    ListRooms,
    MakeLink,
    MembersResult,
    Notice,
    Ok,
    Pending,
    RoomInfo,
    RoomResult,
    RoomsResult,
    Switch,
    ThreadResult,
)
from gateway.protocol.events import Rid
from gateway.store.rooms import MemberChange

__all__ = [
    "approve",
    "create_room",
    "deny",
    "invite",
    "join",
    "leave",
    "link",
    "members",
    "rooms",
    "switch",
    "thread",
]

log = logging.getLogger("redchat.rooms")


def _not_general(room: str, what: str) -> None:
    if room == GENERAL:
        raise ClientError("bad_request", f"everyone is in #general; it has no {what}")


def _refused(change: MemberChange, room: str, what: str) -> None:
    """The errors a member change can end in, as the client sees them."""
    match change.status:
        case "no_room":
            raise ClientError("not_found", f"no room {room}")
        case "forbidden":
            raise ClientError("forbidden", what)


async def _user(ctx: Context, name: str) -> str:
    found = await ctx.store.accounts.display_name(name)
    if found is None:
        raise ClientError("unknown_user", f"no user named {name}")
    return found


async def create_room(ctx: Context, cmd: CreateRoom) -> None:
    info = await ctx.store.rooms.create(cmd.room, ctx.user, cmd.private)
    ctx.conn.send_event(RoomResult(info.room, ctx.user, info.private, rid=cmd.rid))
    log.info("room created room=%s owner=%s private=%s", info.room, ctx.user, info.private)


async def invite(ctx: Context, cmd: Invite) -> None:
    _not_general(cmd.room, "invitations")
    user = await _user(ctx, cmd.user)
    change = await ctx.store.rooms.change("invite", cmd.room, ctx.user, user)
    _refused(change, cmd.room, f"only the owner of {cmd.room} can invite")
    if change.status == "joined":
        log.info("room invite room=%s user=%s by=%s", cmd.room, user, ctx.user)
    ctx.conn.send_event(Ok(rid=cmd.rid))


async def link(ctx: Context, cmd: MakeLink) -> None:
    _not_general(cmd.room, "invite links")
    info = await ctx.store.rooms.info(cmd.room)
    if info is None:
        raise ClientError("not_found", f"no room {cmd.room}")
    if info.owner != ctx.user.lower():
        raise ClientError("forbidden", f"only the owner of {cmd.room} can make links")
    token = await ctx.store.rooms.new_link(cmd.room)
    ctx.conn.send_event(LinkResult(cmd.room, token, rid=cmd.rid))
    log.info("room link room=%s by=%s", cmd.room, ctx.user)


async def join(ctx: Context, cmd: Join) -> None:
    rooms = ctx.store.rooms
    if cmd.token is not None:
        room = await rooms.room_of_link(cmd.token)
        if room is None:
            raise ClientError("not_found", "that invite link is not valid (any more)")
        change = await rooms.change("request", room, ctx.user, ctx.user)
        _refused(change, room, "")
        if change.status == "pending":
            ctx.conn.send_event(Pending(room, rid=cmd.rid))
            log.info("room request room=%s user=%s", room, ctx.user)
            return
    else:
        assert cmd.room is not None
        room = cmd.room
        _not_general(room, "joining to do")
        change = await rooms.change("public", room, ctx.user, ctx.user)
        _refused(change, room, f"{room} is private: ask its owner for an invite link")
        if change.status == "joined":
            log.info("room join room=%s user=%s", room, ctx.user)
    ctx.conn.send_event(Joined(room, rid=cmd.rid))


async def approve(ctx: Context, cmd: Approve) -> None:
    await _decide(ctx, "approve", cmd.room, cmd.user, cmd.rid)


async def deny(ctx: Context, cmd: Deny) -> None:
    await _decide(ctx, "deny", cmd.room, cmd.user, cmd.rid)


async def _decide(ctx: Context, mode: str, room: str, name: str, rid: Rid) -> None:
    _not_general(room, "requests")
    user = await _user(ctx, name)
    rooms = ctx.store.rooms
    change = await rooms.change(mode, room, ctx.user, user)
    _refused(change, room, f"only the owner of {room} can {mode} requests")
    if change.status == "not_pending":
        raise ClientError("not_found", f"{user} has not asked to join {room}")
    ctx.conn.send_event(Ok(rid=rid))
    log.info("room %s room=%s user=%s by=%s -> %s", mode, room, user, ctx.user, change.status)


async def leave(ctx: Context, cmd: Leave) -> None:
    _not_general(cmd.room, "leaving (everyone is in it)")
    rooms = ctx.store.rooms
    change = await rooms.change("leave", cmd.room, ctx.user, ctx.user)
    _refused(change, cmd.room, "")
    if change.status == "not_member":
        raise ClientError("not_found", f"you are not in {cmd.room}")
    if change.status == "closed":
        ctx.store.forget_room(cmd.room)
    ctx.conn.send_event(Left(cmd.room, rid=cmd.rid))
    log.info("room leave room=%s user=%s -> %s %s", cmd.room, ctx.user, change.status,
             change.detail)  # fmt: skip


async def rooms(ctx: Context, cmd: ListRooms) -> None:
    found = await ctx.store.rooms.listing(ctx.user)
    owners = await ctx.store.accounts.display_names([r.owner for r in found])
    ctx.conn.send_event(
        RoomsResult(
            tuple(
                RoomInfo(r.room, owner or r.owner, r.private, r.members, r.member)
                for r, owner in zip(found, owners, strict=True)
            ),
            rid=cmd.rid,
        )
    )


async def members(ctx: Context, cmd: GetMembers) -> None:
    _not_general(cmd.room, "member list (everyone is in it; /status shows who is online)")
    info = await ctx.store.rooms.info(cmd.room)
    if info is None:
        raise ClientError("not_found", f"no room {cmd.room}")
    await ctx.store.check_readable(ctx.user, cmd.room)
    names, waiting = await ctx.store.rooms.members(cmd.room)
    shown = await ctx.store.accounts.display_names(names + waiting)
    display = [d or n for d, n in zip(shown, names + waiting, strict=True)]
    mine = info.owner == ctx.user.lower()
    ctx.conn.send_event(
        MembersResult(
            cmd.room,
            tuple(display[: len(names)]),
            tuple(display[len(names) :]) if mine else None,
            rid=cmd.rid,
        )
    )


async def thread(ctx: Context, cmd: GetThread) -> None:
    conversation, name = await ctx.store.resolve(ctx.user, cmd.with_)
    await ctx.store.check_readable(ctx.user, conversation)
    messages = ctx.store.messages
    parent = await messages.read_one(conversation, cmd.id)
    if parent is None:
        raise ClientError("not_found", f"no message {cmd.id} in {name}")
    replies = await messages.thread(conversation, cmd.id, 200)
    await ctx.conn.send_paced(ThreadResult(name, parent, tuple(replies), rid=cmd.rid))


async def switch(ctx: Context, cmd: Switch) -> None:
    conversation, name = await ctx.store.resolve(ctx.user, cmd.to)
    room = conversation.startswith("#") and conversation != GENERAL
    if room and not await ctx.store.rooms.is_member(conversation, ctx.user):
        raise ClientError("forbidden", f"you are not in {conversation}; /join it first")
    ctx.conn.switch_to(name)
    ctx.conn.send_event(Notice(f"your plain lines now go to {name}", rid=cmd.rid))

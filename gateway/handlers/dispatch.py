"""Command type -> handler: the one place a new op is wired in."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Final

from gateway.errors import ClientError
from gateway.handlers import chat, files, moderation, rooms, schedule, sync
from gateway.handlers.context import Context
from gateway.protocol import (
    HELP_TEXT,
    Approve,
    Bye,
    Command,
    CreateRoom,
    Deny,
    GetHistory,
    GetLog,
    GetMembers,
    GetStatus,
    GetThread,
    Help,
    Invite,
    Join,
    Leave,
    ListRooms,
    Login,
    MakeLink,
    Notice,
    Ping,
    Pong,
    Quit,
    Report,
    Send,
    Switch,
)
from gateway.protocol.ops import (
    AbortUpload,
    Cancel,
    Fetch,
    FinishUpload,
    GetSchedules,
    PutChunk,
    Schedule,
    StartUpload,
    op_of,
)

__all__ = ["dispatch"]

Handler = Callable[[Context, Any], Awaitable[None]]


async def _help(ctx: Context, cmd: Help) -> None:
    ctx.conn.send_event(Notice(HELP_TEXT, rid=cmd.rid))


async def _ping(ctx: Context, cmd: Ping) -> None:
    ctx.conn.send_event(Pong(rid=cmd.rid))


async def _quit(ctx: Context, cmd: Quit) -> None:
    ctx.conn.close_with(Bye(rid=cmd.rid))


HANDLERS: Final[dict[type, Handler]] = {
    Login: sync.login,
    Send: chat.send,
    GetHistory: chat.history,
    GetLog: chat.log_of,
    GetStatus: sync.status,
    Help: _help,
    Ping: _ping,
    Quit: _quit,
    Report: moderation.report,
    Schedule: schedule.schedule,
    GetSchedules: schedule.list_schedules,
    Cancel: schedule.cancel,
    CreateRoom: rooms.create_room,
    Invite: rooms.invite,
    MakeLink: rooms.link,
    Join: rooms.join,
    Approve: rooms.approve,
    Deny: rooms.deny,
    Leave: rooms.leave,
    ListRooms: rooms.rooms,
    GetMembers: rooms.members,
    GetThread: rooms.thread,
    Switch: rooms.switch,
    StartUpload: files.start_upload,
    PutChunk: files.put_chunk,
    FinishUpload: files.finish_upload,
    AbortUpload: files.abort_upload,
    Fetch: files.fetch,
}


async def dispatch(ctx: Context, cmd: Command, login_hint: str = "log in first") -> None:
    """Run one command. A peer's mistake raises ``ClientError``; Redis being down
    raises ``Unavailable``; anything else is a bug."""
    if op_of(cmd).needs_login and ctx.conn.user is None:
        raise ClientError("not_logged_in", login_hint)
    await HANDLERS[type(cmd)](ctx, cmd)

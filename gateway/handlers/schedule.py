"""Scheduled messages: schedule one, list them, cancel one.

The message is sent later by a worker (``worker.scheduler``) through the same path
as a ``send``. What can be checked now is checked now, with the errors a send would
get (no such user or room, not a member, banned, no such ``reply_to``); what may
change by then (a ban, the rate limit, leaving the room) is checked again at the
time, and a refusal then reaches the author as a ``notice``.
"""

from __future__ import annotations

import logging

from gateway.errors import ClientError
from gateway.handlers.context import Context
from gateway.protocol.events import Cancelled, ScheduleList
from gateway.protocol.ops import Cancel, GetSchedules, Schedule
from gateway.protocol.values import say_duration
from gateway.store import GENERAL, is_room, now_ms
from gateway.store.moderation import banned_error
from gateway.store.schedules import CancelResult

__all__ = ["cancel", "list_schedules", "schedule"]

log = logging.getLogger("redchat.schedule")


async def schedule(ctx: Context, cmd: Schedule) -> None:
    store, s, me = ctx.store, ctx.settings, ctx.user
    now = now_ms()
    at = cmd.at if cmd.at is not None else now + round((cmd.in_ or 0) * 1000)
    if at <= now:
        raise ClientError("bad_request", "that time has passed; say when in the future")
    if at - now > s.schedule_max_ahead_s * 1000:
        raise ClientError(
            "bad_request",
            f"a message can be scheduled at most {say_duration(s.schedule_max_ahead_s)} ahead",
        )
    conversation, to = await store.resolve(me, cmd.to)
    room = is_room(conversation) and conversation != GENERAL
    if room and not await store.rooms.is_member(conversation, me):
        raise ClientError("forbidden", f"you are not a member of {conversation}")
    state = await store.moderation.state(me)
    if state.banned_until is not None:
        raise banned_error(state.banned_until, now)
    parent = cmd.reply_to and await store.messages.read_one(conversation, cmd.reply_to)
    if cmd.reply_to and parent is None:
        raise ClientError("not_found", f"no message {cmd.reply_to} in {to}")
    job = await store.schedules.add(me, to, cmd.text, at, cmd.reply_to, s.schedule_max)
    ctx.conn.send_event(job.event(rid=cmd.rid))
    log.info("schedule user=%s sid=%s to=%s at=%d (in %d ms)", me, job.sid, to, at, at - now)


async def list_schedules(ctx: Context, cmd: GetSchedules) -> None:
    jobs = await ctx.store.schedules.pending(ctx.user)
    ctx.conn.send_event(ScheduleList(tuple(job.event() for job in jobs), rid=cmd.rid))


async def cancel(ctx: Context, cmd: Cancel) -> None:
    result = await ctx.store.schedules.cancel(ctx.user, cmd.sid)
    if result is CancelResult.CLAIMED:
        log.info("cancel user=%s sid=%s too late: sent or being sent", ctx.user, cmd.sid)
        raise ClientError("not_found", f"scheduled message {cmd.sid} was already sent")
    if result is CancelResult.UNKNOWN:
        raise ClientError("not_found", f"no scheduled message {cmd.sid} waiting to be sent")
    ctx.conn.send_event(Cancelled(cmd.sid, rid=cmd.rid))
    log.info("cancel user=%s sid=%s", ctx.user, cmd.sid)

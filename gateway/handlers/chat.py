"""Chat: sending, history, the user's own log."""

from __future__ import annotations

import logging

from gateway.errors import ClientError
from gateway.handlers.context import Context
from gateway.protocol import Ack, GetHistory, GetLog, HistoryResult, LogResult, Send

__all__ = ["history", "log_of", "send"]

log = logging.getLogger("redchat.chat")


async def send(ctx: Context, cmd: Send) -> None:
    conversation, to = await ctx.store.resolve(ctx.user, cmd.to)
    try:
        result = await ctx.store.send(
            ctx.user, conversation, to, cmd.text, cid=cmd.cid, reply_to=cmd.reply_to
        )
    except ClientError as exc:
        log.info("send refused user=%s to=%s code=%s: %s", ctx.user, to, exc.code, exc.message)
        raise
    ctx.conn.send_event(Ack(result.id, rid=cmd.rid, cid=cmd.cid))
    log.info(
        "send user=%s to=%s id=%s%s",
        ctx.user,
        to,
        result.id,
        " (retry, stored before)" if result.duplicate else "",
    )


async def history(ctx: Context, cmd: GetHistory) -> None:
    conversation, name = await ctx.store.resolve(ctx.user, cmd.with_)
    await ctx.store.check_readable(ctx.user, conversation)
    store = ctx.store.messages
    messages = await store.with_replies(
        conversation, await store.read_last(conversation, cmd.limit, cmd.before)
    )
    await ctx.conn.send_paced(HistoryResult(name, tuple(messages), rid=cmd.rid))


async def log_of(ctx: Context, cmd: GetLog) -> None:
    messages = await ctx.store.messages.log(ctx.user, cmd.limit)
    await ctx.conn.send_paced(LogResult(tuple(messages), rid=cmd.rid))

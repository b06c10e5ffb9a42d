"""Chat: sending, history, the user's own log."""

from __future__ import annotations

import logging
from collections.abc import Callable

from gateway.errors import ClientError
from gateway.handlers.context import Context
from gateway.protocol import Ack, GetHistory, GetLog, HistoryResult, LogResult, Send
from gateway.store import SendResult

__all__ = ["history", "log_of", "send", "send_now"]

log = logging.getLogger("redchat.chat")


async def send(ctx: Context, cmd: Send) -> None:
    conversation, to = await ctx.store.resolve(ctx.user, cmd.to)
    try:
        result = await ctx.store.send(
            ctx.user, conversation, to, cmd.text, cid=cmd.cid, reply_to=cmd.reply_to
        )
    except ClientError as exc:
        _refused(ctx.user, to, exc)
        raise
    _acked(ctx, cmd, result)


def send_now(ctx: Context, cmd: Send, finished: Callable[[Exception | None], None]) -> bool:
    """``send`` without a wait when the gateway's caches let it through
    (``Store.send_now``). When the batch is back the ack goes out and ``finished``
    is called with None, or with the error to answer with. False, with nothing
    done, when ``send`` must run."""
    if cmd.reply_to is not None:
        return False
    user = ctx.user

    def done(outcome: SendResult | Exception) -> None:
        if isinstance(outcome, SendResult):
            _acked(ctx, cmd, outcome)
            finished(None)
            return
        if isinstance(outcome, ClientError):
            _refused(user, cmd.to, outcome)
        finished(outcome)

    return ctx.store.send_now(user, cmd.to, cmd.text, cmd.cid, done)


def _acked(ctx: Context, cmd: Send, result: SendResult) -> None:
    ctx.conn.send_event(Ack(result.id, rid=cmd.rid, cid=cmd.cid))
    log.info(
        "send user=%s to=%s id=%s%s",
        ctx.user,
        cmd.to,
        result.id,
        " (retry, stored before)" if result.duplicate else "",
    )


def _refused(user: str, to: str, exc: ClientError) -> None:
    log.info("send refused user=%s to=%s code=%s: %s", user, to, exc.code, exc.message)


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

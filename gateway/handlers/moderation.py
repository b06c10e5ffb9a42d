"""Moderation: reports (and the bans they lead to).

The rules themselves (the rate limit, the ban on sending) are checked by the
store on every send, whichever framing or process it comes from.
"""

from __future__ import annotations

import logging

from gateway.errors import ClientError
from gateway.handlers.context import Context
from gateway.protocol import Report, Reported

__all__ = ["report"]

log = logging.getLogger("redchat.moderation")


async def report(ctx: Context, cmd: Report) -> None:
    if cmd.user.lower() == ctx.user.lower():
        raise ClientError("bad_request", "you cannot report yourself")
    name = await ctx.store.accounts.display_name(cmd.user)
    if name is None:
        raise ClientError("unknown_user", f"no user named {cmd.user}")
    result = await ctx.store.moderation.report(ctx.user, name, cmd.reason)
    ctx.conn.send_event(
        Reported(
            name, result.counted, result.reports, result.threshold, result.banned_until,
            rid=cmd.rid,
        )
    )  # fmt: skip
    if not result.counted:
        log.info("report user=%s by=%s not counted (repeat or already banned)", name, ctx.user)
    elif result.banned_until:
        log.warning(
            "ban user=%s until=%d after %d reports (last by %s)",
            name, result.banned_until, result.reports, ctx.user,
        )  # fmt: skip
    else:
        log.info(
            "report user=%s by=%s reports=%d/%d reason=%r",
            name, ctx.user, result.reports, result.threshold, cmd.reason,
        )  # fmt: skip

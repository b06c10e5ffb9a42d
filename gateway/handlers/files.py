"""Files: a file message is bytes stored beside the conversation, and a message
that points at them. Framing-free, like every handler: HTTP's ``POST /files``
calls ``send_file`` with the body it read.

Checks run before the bytes are stored, so a refused upload stores nothing: the
sender may write there (a room's member; a direct conversation is the sender's by
construction), is not banned, and has byte quota left. The send itself then counts
as one message against the public-chat rate limit, as any message does.
"""

from __future__ import annotations

import logging

from gateway.errors import ClientError, Unavailable
from gateway.handlers.context import Context
from gateway.protocol.events import FileInfo
from gateway.store import GENERAL, SendResult, is_room

__all__ = ["send_file"]

log = logging.getLogger("redchat.files")


async def send_file(
    ctx: Context, to: str, name: str, mime: str, data: bytes | bytearray, cid: str | None = None
) -> tuple[SendResult, FileInfo]:
    store, me = ctx.store, ctx.user
    conversation, shown = await store.resolve(me, to)
    room = is_room(conversation) and conversation != GENERAL
    if room and not await store.rooms.is_member(conversation, me):
        raise ClientError("forbidden", f"you are not a member of {conversation}")
    await store.moderation.admit(me, counts=False, cid=None)  # banned: refused here
    await store.files.take_quota(me, len(data))
    try:
        info = await store.files.store(conversation, me, name, mime, data)
        result = await store.send(me, conversation, shown, name, cid=cid, file=info)
    except (ClientError, Unavailable):
        await store.files.refund_quota(me, len(data))
        raise
    log.info("file user=%s to=%s id=%s fid=%s bytes=%d", me, shown, result.id, info.fid, info.size)
    return result, info

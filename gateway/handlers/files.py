"""Files: a file message is bytes stored beside the conversation, and a message
that points at them. Framing-free, like every handler: HTTP's ``POST /files``
calls ``send_file`` with the body it read.

Checks run before the bytes are stored, so a refused upload stores nothing: the
sender may write there (a room's member; a direct conversation is the sender's by
construction), is not banned, is within the public-chat rate limit (a file counts
as one message) and has byte quota left. A retry with the same ``cid`` gets the
file it stored the first time.

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
    before = await store.sent_before(conversation, me, cid) if cid is not None else None
    if before is not None and before.file is not None:  # a retry: no second copy
        return SendResult(before.id, duplicate=True), before.file
    taken = await store.admit(me, conversation, cid)  # banned, or over the rate limit
    try:
        await store.files.take_quota(me, len(data))
    except ClientError:
        if taken:
            await store.moderation.refund(me, cid)
        raise
    try:
        info = await store.files.store(conversation, me, name, mime, data)
        result = await store.send(me, conversation, shown, name, cid=cid, file=info, admitted=True)
    except (ClientError, Unavailable):
        await store.files.refund_quota(me, len(data))
        if taken:
            await store.moderation.refund(me, cid)
        raise
    log.info("file user=%s to=%s id=%s fid=%s bytes=%d", me, shown, result.id, info.fid, info.size)
    return result, info

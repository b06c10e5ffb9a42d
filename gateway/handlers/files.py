"""Files: a file message is bytes stored beside the conversation, and a message
that points at them. Framing-free, like every handler: HTTP's ``POST /files``
calls ``send_file`` with the body it read.

Checks run before the bytes are stored, so a refused upload stores nothing: the
sender may write there (a room's member; a direct conversation is the sender's by
construction), is not banned, is within the public-chat rate limit (a file counts
as one message) and has byte quota left. A retry with the same ``cid`` gets the
file it stored the first time.

JSON-lines clients (and any HTTP client, as ``POST /<op>``) send a file in chunks:
``upload`` runs those checks (but the rate limit) and takes the byte quota for the
declared size, then ``chunk`` requests store the bytes, and ``finish_upload`` checks
the rate limit, the size and the SHA-256, and sends the message; a refused one is
deleted (as is one ``abort_upload`` drops). Nothing of an upload lives in the gateway:
its id carries the conversation, and the store keeps the rest (who, where to, the
``cid``) until it is finished or expires, so the chunks of one upload may come over
any connection to any gateway. ``fetch`` sends a file back, a chunk per event.
"""

from __future__ import annotations

import base64
import binascii
import logging

from gateway.errors import ClientError, Unavailable
from gateway.handlers.context import Context
from gateway.protocol.events import ChunkStored, FileAck, FileChunk, FileInfo, Ok, UploadReady
from gateway.protocol.ops import AbortUpload, Fetch, FinishUpload, PutChunk, StartUpload
from gateway.protocol.values import valid_name
from gateway.store import GENERAL, SendResult, Store, is_room
from gateway.store.files import CHUNK_BYTES, chunk_count

__all__ = [
    "abort_upload",
    "fetch",
    "finish_upload",
    "may_read",
    "put_chunk",
    "send_file",
    "start_upload",
    "upload_id",
]

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
    if result.duplicate:
        # A twin with the same cid was stored first (sent at the same moment): its
        # file is the one the message carries; these bytes go unused, and expire.
        await store.files.refund_quota(me, len(data))
        first = await store.messages.read_one(conversation, result.id)
        if first is not None and first.file is not None:
            info = first.file
    log.info("file user=%s to=%s id=%s fid=%s bytes=%d", me, shown, result.id, info.fid, info.size)
    return result, info


# -- in chunks ---------------------------------------------------------------------


def upload_id(conversation: str, fid: str) -> str:
    """What a client calls an upload: the file's id, a dot, and the conversation in
    URL-safe base64. The conversation names the keys' slot, so any gateway finds the
    upload from its id alone; the fid part is unguessable, so the id is also what
    lets its holder add chunks."""
    where = base64.urlsafe_b64encode(conversation.encode()).rstrip(b"=").decode("ascii")
    return f"{fid}.{where}"


def _upload_of(uid: str) -> tuple[str, str]:
    """(conversation, fid) of an upload id; ``not_found`` for one no server made."""
    fid, _, where = uid.partition(".")
    try:
        conversation = base64.urlsafe_b64decode(where + "=" * (-len(where) % 4)).decode("ascii")
    except (binascii.Error, ValueError):
        raise ClientError("not_found", "no such upload") from None
    if conversation.startswith("#"):
        ok = valid_name(conversation[1:])
    else:
        kind, _, pair = conversation.partition(":")
        a, _, b = pair.partition(":")
        ok = kind == "dm" and valid_name(a) and valid_name(b)
    if not ok or conversation != conversation.lower():
        raise ClientError("not_found", "no such upload")
    return conversation, fid


async def may_read(store: Store, user: str, conversation: str) -> bool:
    """Whether ``user`` may read ``conversation``: a direct one's two people; a
    private room's members; anyone for #general and public rooms."""
    if conversation.startswith("dm:"):
        return user.lower() in conversation.split(":")[1:]
    if is_room(conversation):
        try:
            await store.check_readable(user, conversation)
        except ClientError:
            return False
    return True


async def start_upload(ctx: Context, cmd: StartUpload) -> None:
    """``upload``: every check a sent file gets, before a byte of it is stored."""
    store, me = ctx.store, ctx.user
    conversation, shown = await store.resolve(me, cmd.to)
    room = is_room(conversation) and conversation != GENERAL
    if room and not await store.rooms.is_member(conversation, me):
        raise ClientError("forbidden", f"you are not a member of {conversation}")
    await store.moderation.admit(me, counts=False, cid=None)  # banned: refused here
    limit = ctx.settings.max_file_bytes
    if cmd.size > limit:
        raise ClientError("too_long", f"a file may have at most {limit} bytes")
    # Taken for the declared size now, so the uploads a user has open are bounded by
    # the quota too; given back when the upload is aborted or refused, not when it is
    # abandoned (it then counts until the quota's window ends).
    await store.files.take_quota(me, cmd.size)
    try:
        fid = await store.files.begin(
            conversation, me, cmd.name, cmd.size, cmd.mime or "", cmd.sha256,
            tags={"to": shown, "cid": cmd.cid or ""},
        )  # fmt: skip
    except (ClientError, Unavailable):
        await store.files.refund_quota(me, cmd.size)
        raise
    uid = upload_id(conversation, fid)
    ctx.conn.send_event(UploadReady(uid, CHUNK_BYTES, chunk_count(cmd.size), rid=cmd.rid))
    log.info("upload begins user=%s to=%s fid=%s bytes=%d", me, shown, fid, cmd.size)


async def put_chunk(ctx: Context, cmd: PutChunk) -> None:
    conversation, fid = _upload_of(cmd.uid)
    await ctx.store.files.put_chunk(conversation, fid, cmd.seq, cmd.data)
    received = cmd.seq * CHUNK_BYTES + len(cmd.data)
    ctx.conn.send_event(ChunkStored(cmd.uid, cmd.seq, received, rid=cmd.rid))


async def _own_upload(ctx: Context, uid: str) -> tuple[str, str, dict[str, str]]:
    """(conversation, fid, what ``upload`` noted) of the caller's upload in progress."""
    conversation, fid = _upload_of(uid)
    note = await ctx.store.files.pending(conversation, fid)
    if note is None or note.get("from", "").lower() != ctx.user.lower():
        raise ClientError("not_found", "no such upload (it expired, or was aborted or finished)")
    return conversation, fid, note


async def finish_upload(ctx: Context, cmd: FinishUpload) -> None:
    """``finish_upload``: the bytes are checked against what ``upload`` declared, and
    the file is sent as a message. Whatever refuses it, the upload is gone after."""
    store, me = ctx.store, ctx.user
    conversation, fid, note = await _own_upload(ctx, cmd.uid)
    size, shown, cid = int(note.get("size", 0)), note.get("tag:to", ""), note.get("tag:cid")
    ours = True  # this call ends the upload, so the quota it took is ours to give back
    taken = False
    try:
        try:
            # banned meanwhile, or over the rate limit: refused before the file is kept
            taken = await store.admit(me, conversation, cid or None)
        except ClientError:
            ours = await store.files.abort(conversation, fid)
            raise
        try:
            info = await store.files.finish(conversation, fid)
        except ClientError as exc:
            ours = exc.code != "not_found"  # not_found: it ended meanwhile (expiry, a twin)
            raise
        result = await store.send(
            me, conversation, shown, info.name, cid=cid or None, file=info, admitted=True
        )
    except (ClientError, Unavailable):
        if taken:
            await store.moderation.refund(me, cid or None)
        if ours:
            await store.files.refund_quota(me, size)
        raise
    if result.duplicate:  # an earlier upload with this cid is the message: name its file
        first = await store.messages.read_one(conversation, result.id)
        if first is not None and first.file is not None:
            info = first.file
    ctx.conn.send_event(FileAck(result.id, info, cid=cid or None, rid=cmd.rid))
    log.info(
        "file user=%s to=%s id=%s fid=%s bytes=%d (in chunks)",
        me, shown, result.id, info.fid, info.size,
    )  # fmt: skip


async def abort_upload(ctx: Context, cmd: AbortUpload) -> None:
    conversation, fid, note = await _own_upload(ctx, cmd.uid)
    if not await ctx.store.files.abort(conversation, fid):
        raise ClientError("not_found", "no such upload (it expired, or was aborted or finished)")
    await ctx.store.files.refund_quota(ctx.user, int(note.get("size", 0)))
    ctx.conn.send_event(Ok(rid=cmd.rid))
    log.info("upload aborted user=%s fid=%s", ctx.user, fid)


async def fetch(ctx: Context, cmd: Fetch) -> None:
    """``fetch``: a file's chunks, one ``file_chunk`` each, paced by the client's reading
    (a download is asked for, so a slow reader waits, and is not cut off)."""
    store = ctx.store
    found = await store.files.info(cmd.fid)
    if found is None or not await may_read(store, ctx.user, found[0]):
        raise ClientError("not_found", f"no file {cmd.fid}")  # the same for "not yours"
    conversation, info = found
    n = chunk_count(info.size)
    if cmd.from_chunk >= max(n, 1):
        raise ClientError("bad_request", f"'from_chunk' is past the last chunk, {max(n, 1) - 1}")
    if n == 0:
        await ctx.conn.send_paced(FileChunk(info.fid, 0, b"", True, 0, rid=cmd.rid))
        return
    seq = cmd.from_chunk
    async for chunk in store.files.chunks(conversation, info.fid, start=seq):
        last = seq == n - 1
        await ctx.conn.send_paced(FileChunk(info.fid, seq, chunk, last, info.size, rid=cmd.rid))
        seq += 1

"""Files: the bytes of file messages, kept in chunks in their conversation's slot.

A file is two hashes of its conversation (``Keys.file``: metadata, ``Keys.file_data``:
chunk index -> at most ``CHUNK_BYTES`` bytes) and a global ``Keys.file_index`` (fid ->
conversation), written last, so a download finds the file from its fid alone. Keeping
chunks small keeps every command small: a write round trip carries at most
``WRITE_BATCH`` chunks (1 MiB) in one command each, a read carries one chunk, so one
big file never blocks Redis for everyone else, and a download never holds the whole
file in the gateway.

A file's ``state`` moves forward only, each step one script on its two keys
(``file_move.lua``)::

    uploading ──finish──> finishing ──checked──> done      (indexed, downloadable)
        │                     │
        └──abort / expiry     └──check failed: deleted

While ``uploading`` (``begin`` then ``put_chunk``; ``store`` takes the same path in
one call) the file expires ``UPLOAD_TTL_S`` after its last chunk, so an interrupted
upload leaves nothing behind. A done file lives as long as the messages
(``--message-ttl``; 0 keeps it) plus ``GRACE_S``: it is done before the message that
carries it is sent, and must not vanish before that message does.

Bytes are written as plain arguments and read with redis-py's ``NEVER_DECODE``
option (the one its own DUMP uses), so the process's one client, which decodes
replies to ``str``, serves them without a second connection pool.

Also here: each user's byte quota (``--file-quota-bytes`` per
``--file-quota-window-s``, ``file_quota.lua``). This module knows nothing about who
may read a conversation: callers check membership (``Store.check_readable``) before
``chunks``, and take the quota before ``store`` or ``begin``.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, cast

from redis.asyncio import Redis
from redis.client import NEVER_DECODE

from gateway.errors import ClientError, Unavailable
from gateway.protocol.events import FileInfo
from gateway.protocol.values import say_duration
from gateway.store.keys import Keys
from gateway.store.redis import REDIS_DOWN, boundary, load_lua
from gateway.store.time import now_ms

if TYPE_CHECKING:
    from gateway.settings import StoreSettings

__all__ = [
    "CHUNK_BYTES",
    "UPLOAD_TTL_S",
    "FileLimits",
    "Files",
    "chunk_count",
    "valid_fid",
]

CHUNK_BYTES: Final = 64 * 1024
WRITE_BATCH: Final = 16  # chunks per round trip when storing: at most 1 MiB in flight
UPLOAD_TTL_S: Final = 600  # an upload in progress is forgotten this long after its last chunk
GRACE_S: Final = 60  # a done file outlives its message's lifetime by this much
MAX_NAME_CHARS: Final = 255
MAX_MIME_CHARS: Final = 127
DEFAULT_MIME: Final = "application/octet-stream"

_FID_RE: Final = re.compile(r"[A-Za-z0-9_-]{1,64}")
_SHA256_RE: Final = re.compile(r"[0-9a-f]{64}")
# A media type ends up in a Content-Type header: visible ASCII (and spaces) only.
_MIME_RE: Final = re.compile(r"[!-.0-~]+/[ -~]+")
_RAW: Final[dict[str, Any]] = {NEVER_DECODE: True}  # this reply is bytes, not text


def valid_fid(fid: str) -> bool:
    """What ``new_fid`` makes (URL-safe base64); anything else names no file."""
    return _FID_RE.fullmatch(fid) is not None


def chunk_count(size: int) -> int:
    return -(-size // CHUNK_BYTES)


@dataclass(frozen=True, slots=True)
class FileLimits:
    max_file_bytes: int = 5_242_880
    quota_bytes: int = 100 << 20  # per user and window; 0 turns the quota off
    quota_window_s: int = 86_400

    @classmethod
    def of(cls, settings: StoreSettings, max_file_bytes: int = 5_242_880) -> FileLimits:
        return cls(
            max_file_bytes=max_file_bytes,
            quota_bytes=settings.file_quota_bytes,
            quota_window_s=settings.file_quota_window_s,
        )


@boundary
class Files:
    def __init__(
        self,
        redis: Redis,
        keys: Keys,
        *,
        message_ttl_s: int = 3600,
        limits: FileLimits | None = None,
    ) -> None:
        self.redis = redis
        self.keys = keys
        self.message_ttl_s = message_ttl_s
        self.limits = limits or FileLimits()
        # Scripts of their own (redis-py's, which reload themselves after NOSCRIPT):
        # files are rare next to messages, so they never share a batch.
        self._chunk = redis.register_script(load_lua("file_chunk"))
        self._move = redis.register_script(load_lua("file_move"))
        self._quota = redis.register_script(load_lua("file_quota"))

    @property
    def file_ttl_ms(self) -> int:
        """How long a done file lives (0: for ever, as the messages do)."""
        return (self.message_ttl_s + GRACE_S) * 1000 if self.message_ttl_s else 0

    # -- storing -------------------------------------------------------------------
    async def store(
        self, conversation: str, sender: str, name: str, mime: str, data: bytes | bytearray
    ) -> FileInfo:
        """Store a whole file (an HTTP upload) and return it, done and downloadable."""
        name, size, mime = _checked(name, len(data), mime, self.limits.max_file_bytes)
        # Hashed on the event loop, about 10 ms for 5 MiB: measured, a thread gave chat
        # a better median but a worse tail (GIL handoffs), so it stays here.
        info = FileInfo(_new_fid(), name, size, hashlib.sha256(data).hexdigest(), mime)
        meta, blob = self._file_keys(conversation, info.fid)
        await self._create(meta, sender, info)
        n = chunk_count(info.size)
        for start in range(0, n, WRITE_BATCH):
            # MULTI: the chunks never exist without their expiry, so a store cut short
            # goes the way of an abandoned upload. One command per chunk, and at most
            # a megabyte a round trip, so Redis serves others in between.
            async with self.redis.pipeline(transaction=True) as pipe:
                for i in range(start, min(n, start + WRITE_BATCH)):
                    pipe.hset(blob, str(i), bytes(data[i * CHUNK_BYTES : (i + 1) * CHUNK_BYTES]))
                pipe.pexpire(blob, UPLOAD_TTL_S * 1000)
                pipe.pexpire(meta, UPLOAD_TTL_S * 1000)
                await pipe.execute()
        await self._commit(conversation, info.fid, "uploading")
        return info

    async def begin(
        self, conversation: str, sender: str, name: str, size: int, mime: str, sha256: str,
        tags: Mapping[str, str] | None = None,
    ) -> str:  # fmt: skip
        """Start an upload in chunks of ``CHUNK_BYTES`` (the last one shorter); returns
        its id, which becomes the file's fid once ``finish`` has checked it. ``tags``
        are the caller's notes, kept with the upload until then (``pending``)."""
        if not isinstance(sha256, str) or _SHA256_RE.fullmatch(sha256.lower()) is None:
            raise ClientError("bad_request", "sha256 must be 64 hexadecimal digits")
        name, size, mime = _checked(name, size, mime, self.limits.max_file_bytes)
        uid = _new_fid()
        meta, _ = self._file_keys(conversation, uid)
        info = FileInfo(uid, name, size, sha256.lower(), mime)
        await self._create(meta, sender, info, tags)
        return uid

    async def pending(self, conversation: str, uid: str) -> dict[str, str] | None:
        """An upload in progress, as ``begin`` noted it: ``from``, ``name``, ``size``,
        ``sha256``, ``mime`` and each tag as ``tag:<name>`` (None: no such upload)."""
        if not valid_fid(uid):
            return None
        fields = await self._hgetall(self.keys.file(conversation, uid))
        return fields if fields.get("state") == "uploading" else None

    async def put_chunk(self, conversation: str, uid: str, index: int, data: bytes) -> None:
        """Store chunk ``index`` of an upload (again, if it was sent before)."""
        if not valid_fid(uid):
            raise ClientError("not_found", "no such upload")
        if isinstance(index, bool) or not isinstance(index, int) or index < 0:
            raise ClientError("bad_request", f"chunk index {index!r} out of range")
        if len(data) > CHUNK_BYTES:
            raise ClientError("too_long", f"a chunk is at most {CHUNK_BYTES} bytes")
        status = int(
            await self._chunk(
                keys=self._file_keys(conversation, uid),
                args=[str(index), data, CHUNK_BYTES, UPLOAD_TTL_S * 1000],
            )
        )
        if status == 0:
            raise ClientError("not_found", "no such upload (it expired, or was finished)")
        if status == -1:
            raise ClientError("bad_request", f"chunk index {index} out of range for the size")
        if status == -2:
            raise ClientError(
                "bad_request",
                f"chunk {index} has {len(data)} bytes: every chunk has {CHUNK_BYTES}"
                " but the last, which has the rest",
            )

    async def finish(self, conversation: str, uid: str) -> FileInfo:
        """Check an upload (every chunk there, the declared size, the SHA-256) and make it
        a done file. Anything wrong deletes the upload and raises ``bad_request``."""
        if not valid_fid(uid):
            raise ClientError("not_found", "no such upload")
        meta, blob = self._file_keys(conversation, uid)
        # From here on late chunks are refused: what is checked is what is kept.
        if not await self._move(keys=[meta, blob], args=["uploading", "finishing", 0]):
            raise ClientError("not_found", "no such upload (it expired, or was finished)")
        try:
            info = _info_of(uid, await self._hgetall(meta), "finishing")
            if info is None:
                raise ClientError("not_found", "no such upload (it expired)")
            await self._verify(blob, info)
        except ClientError:
            await self._move(keys=[meta, blob], args=["finishing", "", 0])
            raise
        # (Redis unreachable meanwhile: the upload stays "finishing" until it expires.)
        await self._commit(conversation, uid, "finishing")
        return info

    async def abort(self, conversation: str, uid: str) -> bool:
        """Drop an upload in progress (False: there was none; a done file is never dropped)."""
        if not valid_fid(uid):
            return False
        keys = self._file_keys(conversation, uid)
        return bool(await self._move(keys=keys, args=["uploading", "", 0]))

    # -- reading -------------------------------------------------------------------
    async def info(self, fid: str) -> tuple[str, FileInfo] | None:
        """The conversation a done file was sent in, and the file (None: no such file)."""
        if not valid_fid(fid):
            return None
        conversation = cast(str | None, await self.redis.get(self.keys.file_index(fid)))
        if conversation is None:
            return None
        info = _info_of(fid, await self._hgetall(self.keys.file(conversation, fid)), "done")
        return None if info is None else (conversation, info)

    async def chunks(self, conversation: str, fid: str, start: int = 0) -> AsyncIterator[bytes]:
        """A done file's bytes, a chunk per round trip, from chunk ``start`` on. Raises
        ``not_found`` before the first chunk for no such file, and after some if the
        file expires meanwhile."""
        if not valid_fid(fid):
            raise ClientError("not_found", "no such file")
        try:
            meta = self.keys.file(conversation, fid)
            state, size = cast(list[str | None], await self.redis.hmget(meta, "state", "size"))
        except REDIS_DOWN as exc:
            raise _unavailable(exc) from exc
        if state != "done" or size is None:
            raise ClientError("not_found", f"no file {fid}")
        blob = self.keys.file_data(conversation, fid)
        for i in range(max(0, start), chunk_count(int(size))):
            try:
                chunk = await self._chunk_of(blob, i)
            except REDIS_DOWN as exc:
                raise _unavailable(exc) from exc
            if chunk is None:
                raise ClientError("not_found", f"file {fid} expired")
            yield chunk

    # -- quota ---------------------------------------------------------------------
    async def take_quota(self, user: str, nbytes: int) -> None:
        """Count ``nbytes`` against the user's file quota, or refuse with ``rate_limited``."""
        lim = self.limits
        if not lim.quota_bytes or nbytes <= 0:
            return
        if nbytes > lim.quota_bytes:
            raise ClientError(
                "too_long", f"a file may not be larger than your quota of {lim.quota_bytes} bytes"
            )
        taken, left_ms = await self._quota(
            keys=[self.keys.file_quota(user)],
            args=[nbytes, lim.quota_bytes, lim.quota_window_s * 1000],
        )
        if not int(taken):
            retry_after = max(1, -(-int(left_ms) // 1000))
            raise ClientError(
                "rate_limited",
                f"you can send {lim.quota_bytes} bytes of files every"
                f" {say_duration(lim.quota_window_s)}; you can send more in"
                f" {say_duration(retry_after)}",
                retry_after=retry_after,
            )

    async def refund_quota(self, user: str, nbytes: int) -> None:
        """Give back what ``take_quota`` took for a file that was then not sent."""
        if self.limits.quota_bytes and nbytes > 0:
            await self._quota(
                keys=[self.keys.file_quota(user)],
                args=[-nbytes, self.limits.quota_bytes, self.limits.quota_window_s * 1000],
            )

    # -- steps -----------------------------------------------------------------------
    def _file_keys(self, conversation: str, fid: str) -> list[str]:
        return [self.keys.file(conversation, fid), self.keys.file_data(conversation, fid)]

    async def _hgetall(self, key: str) -> dict[str, str]:
        return cast(dict[str, str], await self.redis.hgetall(key))

    async def _chunk_of(self, blob: str, index: int) -> bytes | None:
        """One chunk, as bytes: this reply alone is not decoded to text."""
        raw = await self.redis.execute_command("HGET", blob, str(index), **_RAW)  # type: ignore[no-untyped-call]
        return None if raw is None else bytes(raw)

    async def _create(
        self, meta: str, sender: str, info: FileInfo, tags: Mapping[str, str] | None = None
    ) -> None:
        fields: dict[str, str | int] = {
            "name": info.name, "size": info.size, "sha256": info.sha256, "mime": info.mime,
            "from": sender, "created": now_ms(), "chunks": chunk_count(info.size),
            "state": "uploading",
        }  # fmt: skip
        fields |= {f"tag:{k}": v for k, v in (tags or {}).items()}
        # MULTI: the metadata never exists without its expiry.
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(meta, mapping=cast(dict[Any, Any], fields))
            pipe.pexpire(meta, UPLOAD_TTL_S * 1000)
            await pipe.execute()

    async def _verify(self, blob: str, info: FileInfo) -> None:
        """Read the chunks back one at a time (never the whole file at once)."""
        n = chunk_count(info.size)
        fields = cast(list[str], await self.redis.hkeys(blob))
        present = {int(f) for f in fields if f.isdecimal() and len(f) < 10}
        missing = sorted(set(range(n)) - present)
        if missing:
            shown = ", ".join(map(str, missing[:10])) + (", ..." if len(missing) > 10 else "")
            raise ClientError("bad_request", f"upload incomplete: missing chunk(s) {shown} of {n}")
        digest, total = hashlib.sha256(), 0
        for i in range(n):
            chunk = await self._chunk_of(blob, i)
            if chunk is None:
                raise ClientError("bad_request", f"upload incomplete: missing chunk {i} of {n}")
            digest.update(chunk)
            total += len(chunk)
        if total != info.size:
            raise ClientError(
                "bad_request", f"upload has {total} bytes but {info.size} were declared"
            )
        if digest.hexdigest() != info.sha256:
            raise ClientError("bad_request", "upload's sha256 does not match the declared one")

    async def _commit(self, conversation: str, fid: str, state: str) -> None:
        """Done: the file takes the messages' lifetime, then the index finds it."""
        meta, blob = self._file_keys(conversation, fid)
        ttl_ms = self.file_ttl_ms
        if not await self._move(keys=[meta, blob], args=[state, "done", ttl_ms]):
            raise ClientError("not_found", "the upload expired before it was finished")
        # Its own slot, so a command of its own, after the file is whole: an index entry
        # never names a file that is not done (a crash here leaves an unlisted file,
        # which expires).
        await self.redis.set(self.keys.file_index(fid), conversation, px=ttl_ms or None)


def _new_fid() -> str:
    return secrets.token_urlsafe(12)


def _checked(name: str, size: int, mime: str, max_bytes: int) -> tuple[str, int, str]:
    """A file's name, size and media type as a peer gave them, checked (the name is
    shown to others and the type becomes a Content-Type header)."""
    if not isinstance(name, str) or not 1 <= len(name) <= MAX_NAME_CHARS:
        raise ClientError("bad_request", f"a file name has 1 to {MAX_NAME_CHARS} characters")
    if name in (".", "..") or any(c in "/\\" or not c.isprintable() for c in name):
        raise ClientError("bad_request", "a file name has no slashes or control characters")
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise ClientError("bad_request", f"bad file size {size!r}")
    if size > max_bytes:
        raise ClientError("too_long", f"a file may have at most {max_bytes} bytes")
    mime = mime or DEFAULT_MIME
    if not isinstance(mime, str) or len(mime) > MAX_MIME_CHARS or _MIME_RE.fullmatch(mime) is None:
        raise ClientError("bad_request", "a media type looks like type/subtype, in ASCII")
    return name, size, mime


def _info_of(fid: str, fields: Mapping[str, str], state: str) -> FileInfo | None:
    """A file from its metadata hash (None: gone, or not in that state)."""
    if fields.get("state") != state:
        return None
    try:
        return FileInfo(fid, fields["name"], int(fields["size"]), fields["sha256"], fields["mime"])
    except (KeyError, ValueError):
        return None


def _unavailable(exc: BaseException) -> Unavailable:
    # ``boundary`` does this for coroutines; an async iterator does it itself.
    return Unavailable(f"Redis unreachable: {type(exc).__name__}: {exc}")

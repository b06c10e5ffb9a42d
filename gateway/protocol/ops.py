"""Commands (client -> server) and the one table of ops.

Each op has one entry in ``OPS``: its JSON name, its text words (the first is the
name shown, the rest are aliases), its usage and help line, how its JSON fields and
its text arguments become a command, and whether it needs a login. The JSON-lines
codec, the text-lines codec and the console client all read this table, so an
alias or a field rule cannot drift between them. ``request_of`` goes the other way,
command -> JSON request, for clients that parse what a person types.

Pure code: a peer's mistake raises ``Reject`` (code, message), which the codecs
turn into an ``error`` event; nothing here does I/O.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import math
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Final

from gateway.protocol.events import Rid
from gateway.protocol.values import (
    DEFAULT_LIMIT,
    MAX_CID_CHARS,
    MAX_LIMIT,
    MAX_PASSWORD_CHARS,
    is_stream_id,
    parse_count,
    printable,
    valid_cid,
    valid_name,
    valid_token,
)
from gateway.protocol.when import parse_when

__all__ = [
    "BY_NAME",
    "BY_WORD",
    "FILE_CHUNK_BYTES",
    "GENERAL",
    "OPS",
    "PACED_LIKE_READS",
    "PACED_LIKE_SENDS",
    "AbortUpload",
    "Approve",
    "Cancel",
    "Command",
    "CreateRoom",
    "Deny",
    "Fetch",
    "FinishUpload",
    "GetHistory",
    "GetLog",
    "GetMembers",
    "GetSchedules",
    "GetStatus",
    "GetThread",
    "Help",
    "Invite",
    "Join",
    "Leave",
    "ListRooms",
    "Login",
    "MakeLink",
    "Op",
    "Ping",
    "PutChunk",
    "Quit",
    "Reject",
    "Report",
    "Schedule",
    "Send",
    "StartUpload",
    "Switch",
    "TextContext",
    "help_text",
    "parse_json_request",
    "parse_text_line",
    "request_of",
]

GENERAL: Final = "#general"
MAX_REASON_CHARS: Final = 500
# Bytes in one ``chunk`` of an upload and one ``file_chunk`` of a download: the store's
# chunk (gateway.store.files.CHUNK_BYTES; tests/unit/test_files_ops.py checks they
# agree). Said here too because this package imports nothing from the store.
FILE_CHUNK_BYTES: Final = 64 * 1024
MAX_FILE_NAME_CHARS: Final = 255
MAX_MIME_CHARS: Final = 127


class Reject(Exception):
    """A request that cannot be served as written: becomes an ``error`` event."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


# ---------------------------------------------------------------------------
# Commands
# ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Login:
    OP: ClassVar[str] = "login"
    user: str
    password: str = field(repr=False)
    since: Mapping[str, str] | None = None
    rid: Rid = None


@dataclass(frozen=True, slots=True)
class Send:
    OP: ClassVar[str] = "send"
    to: str
    text: str
    cid: str | None = None
    reply_to: str | None = None
    rid: Rid = None


@dataclass(frozen=True, slots=True)
class GetHistory:
    OP: ClassVar[str] = "history"
    with_: str
    before: str | None = None
    limit: int = DEFAULT_LIMIT
    rid: Rid = None


@dataclass(frozen=True, slots=True)
class GetLog:
    OP: ClassVar[str] = "log"
    limit: int = DEFAULT_LIMIT
    rid: Rid = None


@dataclass(frozen=True, slots=True)
class GetStatus:
    OP: ClassVar[str] = "status"
    rid: Rid = None


@dataclass(frozen=True, slots=True)
class Ping:
    OP: ClassVar[str] = "ping"
    rid: Rid = None


@dataclass(frozen=True, slots=True)
class Quit:
    OP: ClassVar[str] = "quit"
    rid: Rid = None


@dataclass(frozen=True, slots=True)
class Report:
    OP: ClassVar[str] = "report"
    user: str
    reason: str = ""
    rid: Rid = None


@dataclass(frozen=True, slots=True)
class Help:
    OP: ClassVar[str] = "help"
    rid: Rid = None


@dataclass(frozen=True, slots=True)
class CreateRoom:
    OP: ClassVar[str] = "create_room"
    room: str
    private: bool = True
    rid: Rid = None


@dataclass(frozen=True, slots=True)
class Invite:
    OP: ClassVar[str] = "invite"
    room: str
    user: str
    rid: Rid = None


@dataclass(frozen=True, slots=True)
class MakeLink:
    OP: ClassVar[str] = "link"
    room: str
    rid: Rid = None


@dataclass(frozen=True, slots=True)
class Join:
    """A public room by name, or a private one by its invite token."""

    OP: ClassVar[str] = "join"
    room: str | None = None
    token: str | None = None
    rid: Rid = None


@dataclass(frozen=True, slots=True)
class Approve:
    OP: ClassVar[str] = "approve"
    room: str
    user: str
    rid: Rid = None


@dataclass(frozen=True, slots=True)
class Deny:
    OP: ClassVar[str] = "deny"
    room: str
    user: str
    rid: Rid = None


@dataclass(frozen=True, slots=True)
class Leave:
    OP: ClassVar[str] = "leave"
    room: str
    rid: Rid = None


@dataclass(frozen=True, slots=True)
class ListRooms:
    OP: ClassVar[str] = "rooms"
    rid: Rid = None


@dataclass(frozen=True, slots=True)
class GetMembers:
    OP: ClassVar[str] = "members"
    room: str
    rid: Rid = None


@dataclass(frozen=True, slots=True)
class GetThread:
    OP: ClassVar[str] = "thread"
    with_: str
    id: str
    rid: Rid = None


@dataclass(frozen=True, slots=True)
class Switch:
    """Text lines only: where this connection's plain lines go."""

    OP: ClassVar[str] = "switch"
    to: str
    rid: Rid = None


@dataclass(frozen=True, slots=True)
class Schedule:
    """Send ``text`` to ``to`` later: at ``at`` (ms since the epoch) or ``in_`` seconds
    from when the server reads the request; exactly one of the two."""

    OP: ClassVar[str] = "schedule"
    to: str
    text: str
    at: int | None = None
    in_: float | None = None
    reply_to: str | None = None
    rid: Rid = None


@dataclass(frozen=True, slots=True)
class GetSchedules:
    OP: ClassVar[str] = "schedules"
    rid: Rid = None


@dataclass(frozen=True, slots=True)
class Cancel:
    OP: ClassVar[str] = "cancel"
    sid: str
    rid: Rid = None


@dataclass(frozen=True, slots=True)
class StartUpload:
    """Begin sending a file in chunks (JSON lines): its size and SHA-256 are declared
    here and checked when the upload is finished."""

    OP: ClassVar[str] = "upload"
    to: str
    name: str
    size: int
    sha256: str
    mime: str | None = None
    cid: str | None = None
    rid: Rid = None


@dataclass(frozen=True, slots=True)
class PutChunk:
    """Chunk ``seq`` of an upload: ``FILE_CHUNK_BYTES`` bytes, the last one shorter."""

    OP: ClassVar[str] = "chunk"
    uid: str
    seq: int
    data: bytes = field(repr=False)
    rid: Rid = None


@dataclass(frozen=True, slots=True)
class FinishUpload:
    OP: ClassVar[str] = "finish_upload"
    uid: str
    rid: Rid = None


@dataclass(frozen=True, slots=True)
class AbortUpload:
    OP: ClassVar[str] = "abort_upload"
    uid: str
    rid: Rid = None


@dataclass(frozen=True, slots=True)
class Fetch:
    """A file's bytes, in chunks, from chunk ``from_chunk`` on."""

    OP: ClassVar[str] = "fetch"
    fid: str
    from_chunk: int = 0
    rid: Rid = None


Command = (
    Login | Send | GetHistory | GetLog | GetStatus | Ping | Quit | Help | Report
    | CreateRoom | Invite | MakeLink | Join | Approve | Deny | Leave | ListRooms | GetMembers
    | GetThread | Switch
    | Schedule | GetSchedules | Cancel
    | StartUpload | PutChunk | FinishUpload | AbortUpload | Fetch
)  # fmt: skip

# How a connection paces commands (its --conn-send-rate buckets): an upload is a
# message (one per file, however many chunks it has: the chunks are bounded by the
# size the upload declared), and a fetch costs what a history read does.
PACED_LIKE_SENDS: Final = (Send, StartUpload)
PACED_LIKE_READS: Final = (Fetch,)


# ---------------------------------------------------------------------------
# Field rules, shared by both framings
# ---------------------------------------------------------------------------


def check_text(text: Any, max_chars: int, what: str = "text") -> str:
    if not isinstance(text, str):
        raise Reject("bad_request", f"{what} must be a string")
    if not text.strip():
        raise Reject("bad_request", f"{what} is empty")
    if len(text) > max_chars:
        raise Reject("too_long", f"{what} is longer than {max_chars} characters")
    _check_unicode(text, what)
    return text


def _check_unicode(text: str, what: str) -> None:
    # JSON can carry lone surrogates ("\ud800"), which no UTF-8 encoder accepts.
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise Reject("bad_request", f"{what} is not valid Unicode") from None


def check_name(name: Any, what: str = "user") -> str:
    if not isinstance(name, str) or not valid_name(name):
        raise Reject(
            "bad_name",
            f"{what} must be 1-32 letters, digits, '_', '.' or '-', with a letter or digit",
        )
    return name


def check_target(to: Any, what: str = "'to'") -> str:
    if not isinstance(to, str) or not to:
        raise Reject("bad_request", f"{what} must be '#room' or a user name")
    if to.startswith("#"):
        if not valid_name(to[1:]):
            raise Reject("bad_name", "room names are '#' and 1-32 letters, digits, '_.-'")
        return to.lower()
    return check_name(to, "recipient")


def check_room(room: Any, what: str = "'room'") -> str:
    if not isinstance(room, str) or not room.startswith("#"):
        raise Reject("bad_request", f"{what} must be a room name like #team")
    return check_target(room, what)


def check_token(token: Any) -> str:
    if not isinstance(token, str) or not valid_token(token):
        raise Reject("not_found", "that invite link is not valid")
    return token


def check_bool(value: Any, what: str, default: bool) -> bool:
    if value is None:
        return default
    if not isinstance(value, bool):
        raise Reject("bad_request", f"{what} must be true or false")
    return value


def check_id(value: Any, what: str) -> str:
    if not is_stream_id(value):
        raise Reject("bad_request", f"{what} must be a message id like 1732190000000-0")
    return str(value)


def check_limit(value: Any) -> int:
    if value is None:
        return DEFAULT_LIMIT
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise Reject("bad_request", "limit must be a positive whole number")
    return min(value, MAX_LIMIT)


def check_password(password: Any) -> str:
    if not isinstance(password, str) or not password:
        raise Reject("bad_request", "'password' must be a non-empty string")
    if len(password) > MAX_PASSWORD_CHARS:
        raise Reject("too_long", f"password is longer than {MAX_PASSWORD_CHARS} characters")
    _check_unicode(password, "password")
    return password


def check_reason(reason: Any) -> str:
    if not isinstance(reason, str):
        raise Reject("bad_request", "'reason' must be a string")
    if len(reason) > MAX_REASON_CHARS:
        raise Reject("too_long", f"reason is longer than {MAX_REASON_CHARS} characters")
    _check_unicode(reason, "reason")
    return reason.strip()


def check_cid(cid: Any) -> str | None:
    if cid is None:
        return None
    if not isinstance(cid, str) or not valid_cid(cid):
        raise Reject("bad_request", f"'cid' must be 1-{MAX_CID_CHARS} visible ASCII characters")
    return cid


def check_since(since: Any) -> dict[str, str] | None:
    if since is None:
        return None
    if not isinstance(since, dict) or len(since) > 1000:
        raise Reject("bad_request", "'since' must be an object {conversation: id}")
    return {check_target(conv, "each 'since' key"): check_id(sid, "each 'since' value")
            for conv, sid in since.items()}  # fmt: skip


_SID_RE: Final = re.compile(r"[0-9A-Za-z]{1,32}")


def check_sid(sid: Any) -> str:
    """A scheduled message's id (the server makes them: lower-case letters and digits)."""
    if not isinstance(sid, str) or not _SID_RE.fullmatch(sid):
        raise Reject("bad_request", "'sid' must be a scheduled message's id, like 3f9a2c1b")
    return sid.lower()


def check_when(at: Any, in_: Any) -> tuple[int | None, float | None]:
    """Exactly one of ``at`` (ms since the epoch) and ``in`` (seconds from now). How far
    ahead is allowed is a setting, checked by the server."""
    if (at is None) == (in_ is None):
        raise Reject("bad_request", "give 'at' (ms since the epoch) or 'in' (seconds), not both")
    if at is not None:
        if isinstance(at, bool) or not isinstance(at, int) or not 0 < at < 1 << 53:
            raise Reject("bad_request", "'at' must be a time in ms since the epoch")
        return at, None
    if isinstance(in_, bool) or not isinstance(in_, int | float) or not math.isfinite(in_):
        raise Reject("bad_request", "'in' must be a number of seconds")
    if not 0 < in_ <= 1e9:
        raise Reject("bad_request", "'in' must be more than 0 seconds")
    return None, in_


_SHA256_RE: Final = re.compile(r"[0-9a-fA-F]{64}")
_FID_RE: Final = re.compile(r"[A-Za-z0-9_-]{1,64}")
# An upload's id: the file's id, a dot, then where it goes (see gateway.handlers.files).
_UID_RE: Final = re.compile(r"[A-Za-z0-9_-]{1,64}\.[A-Za-z0-9_-]{1,128}")
_MAX_SEQ: Final = 1 << 20  # far more chunks than any file size setting allows


def check_file_name(name: Any) -> str:
    """A file's name as others will see it: no folders, nothing a terminal runs."""
    if not isinstance(name, str) or not 1 <= len(name) <= MAX_FILE_NAME_CHARS:
        raise Reject("bad_request", f"'name' must be 1 to {MAX_FILE_NAME_CHARS} characters")
    _check_unicode(name, "'name'")
    if name in (".", "..") or any(c in "/\\" or not c.isprintable() for c in name):
        raise Reject("bad_request", "'name' has no slashes or control characters")
    return name


def check_size(size: Any) -> int:
    if isinstance(size, bool) or not isinstance(size, int) or not 0 <= size < 1 << 53:
        raise Reject("bad_request", "'size' must be the file's length in bytes, 0 or more")
    return size


def check_sha256(digest: Any) -> str:
    if not isinstance(digest, str) or not _SHA256_RE.fullmatch(digest):
        raise Reject("bad_request", "'sha256' must be 64 hexadecimal digits")
    return digest.lower()


def check_mime(mime: Any) -> str | None:
    if mime is None:
        return None
    if not isinstance(mime, str) or len(mime) > MAX_MIME_CHARS or not mime.isascii():
        raise Reject("bad_request", "'mime' must be a media type like image/png")
    return mime


def check_uid(uid: Any) -> str:
    if not isinstance(uid, str) or not _UID_RE.fullmatch(uid):
        raise Reject("bad_request", "'uid' must be the id an 'upload' reply gave")
    return uid


def check_fid(fid: Any) -> str:
    if not isinstance(fid, str) or not _FID_RE.fullmatch(fid):
        raise Reject("bad_request", "'fid' must be a file's id, as in a message's 'file'")
    return fid


def check_seq(seq: Any, what: str = "'seq'") -> int:
    if isinstance(seq, bool) or not isinstance(seq, int) or not 0 <= seq < _MAX_SEQ:
        raise Reject("bad_request", f"{what} must be a chunk number, 0 or more")
    return seq


def check_chunk_data(data: Any) -> bytes:
    """Base64 (RFC 4648, with padding) of at most ``FILE_CHUNK_BYTES`` bytes."""
    if not isinstance(data, str):
        raise Reject("bad_request", "'data' must be a base64 string")
    if len(data) > 4 * (-(-FILE_CHUNK_BYTES // 3)):
        raise Reject("too_long", f"a chunk is at most {FILE_CHUNK_BYTES} bytes")
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise Reject("bad_request", "'data' is not valid base64") from None
    if len(raw) > FILE_CHUNK_BYTES:
        raise Reject("too_long", f"a chunk is at most {FILE_CHUNK_BYTES} bytes")
    return raw


# ---------------------------------------------------------------------------
# Text arguments
# ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TextContext:
    """What a text line needs beyond itself: where plain lines go, how long a text
    may be, how a short number shown on screen maps to (conversation, id), and the
    clock a time of day (``/schedule 14:30 ...``) is read against (local time)."""

    max_text_chars: int = 4000
    room: str = GENERAL
    resolve: Callable[[int], tuple[str, str] | None] = lambda n: None
    now: Callable[[], float] = time.time


def _usage(op: str) -> Reject:
    return Reject("bad_request", f"usage: {BY_NAME[op].usage}")


def _text_login(rest: str, ctx: TextContext) -> Command:
    name, _, password = rest.partition(" ")
    if not name or not password.strip():
        raise _usage("login")
    return Login(check_name(name), check_password(password.strip()))


def _text_send(rest: str, ctx: TextContext) -> Command:
    # "/private to bob hi", "/private bob hi", "/msg bob hi"
    first, _, after = rest.partition(" ")
    if first.lower() == "to" and after.strip():
        rest = after.lstrip()
    to, _, text = rest.partition(" ")
    if not to or not text.strip():
        raise _usage("send")
    return Send(check_name(to, "recipient"), check_text(text.strip(), ctx.max_text_chars))


def _text_reply(rest: str, ctx: TextContext) -> Command:
    ref, _, body = rest.partition(" ")
    n = parse_count(ref.removeprefix("[").removesuffix("]"))
    if n is None or not body.strip():
        raise _usage("reply")
    target = ctx.resolve(n)
    if target is None:
        raise Reject("not_found", f"no message [{n}] on this screen")
    conversation, sid = target
    return Send(conversation, check_text(body.strip(), ctx.max_text_chars), reply_to=sid)


def _text_history(rest: str, ctx: TextContext) -> Command:
    with_, limit = ctx.room, None
    args = rest.split()
    if len(args) > 2:
        raise _usage("history")
    for arg in args:
        n = parse_count(arg)
        if n is not None:
            limit = n
        elif arg.startswith("#") or valid_name(arg):
            with_ = check_target(arg, "the conversation")
        else:
            raise _usage("history")
    return GetHistory(with_, limit=check_limit(limit))


def _text_log(rest: str, ctx: TextContext) -> Command:
    if not rest:
        return GetLog()
    n = parse_count(rest)
    if n is None:
        raise _usage("log")
    return GetLog(check_limit(n))


def _text_report(rest: str, ctx: TextContext) -> Command:
    name, _, reason = rest.partition(" ")
    if not name:
        raise _usage("report")
    return Report(check_name(name), check_reason(reason.strip()))


def _args(rest: str, op: str, count: int) -> list[str]:
    args = rest.split()
    if len(args) != count:
        raise _usage(op)
    return args


def _text_room(rest: str, ctx: TextContext) -> Command:
    args = rest.split()
    if len(args) not in (2, 3) or args[0].lower() != "create":
        raise _usage("create_room")
    if len(args) == 3 and args[2].lower() not in ("public", "private"):
        raise _usage("create_room")
    public = len(args) == 3 and args[2].lower() == "public"
    return CreateRoom(check_room(args[1], "the room"), private=not public)


def _text_room_user(make: Callable[[str, str], Command], op: str) -> TextParser:
    def parse(rest: str, ctx: TextContext) -> Command:
        room, user = _args(rest, op, 2)
        return make(check_room(room, "the room"), check_name(user))

    return parse


def _text_room_only(make: Callable[[str], Command], op: str) -> TextParser:
    def parse(rest: str, ctx: TextContext) -> Command:
        (room,) = _args(rest, op, 1)
        return make(check_room(room, "the room"))

    return parse


def _text_join(rest: str, ctx: TextContext) -> Command:
    (what,) = _args(rest, "join", 1)
    if what.startswith("#"):
        return Join(room=check_room(what, "the room"))
    return Join(token=check_token(what))


def _text_thread(rest: str, ctx: TextContext) -> Command:
    (ref,) = _args(rest, "thread", 1)
    n = parse_count(ref.removeprefix("[").removesuffix("]"))
    if n is None:
        raise _usage("thread")
    target = ctx.resolve(n)
    if target is None:
        raise Reject("not_found", f"no message [{n}] on this screen")
    conversation, sid = target
    return GetThread(conversation, sid)


def _text_switch(rest: str, ctx: TextContext) -> Command:
    (to,) = _args(rest, "switch", 1)
    return Switch(check_target(to, "where to switch"))


def _text_schedule(rest: str, ctx: TextContext) -> Command:
    # "/schedule 10m bob see you", "/schedule 14:30 #general lunch!"
    when, _, after = rest.partition(" ")
    to, _, text = after.strip().partition(" ")
    if not when or not to or not text.strip():
        raise _usage("schedule")
    try:
        at, in_s = parse_when(when, ctx.now())
    except ValueError as exc:
        raise Reject("bad_request", f"{exc}; usage: {BY_NAME['schedule'].usage}") from None
    return Schedule(
        check_target(to, "the recipient"), check_text(text.strip(), ctx.max_text_chars),
        at=at, in_=in_s,
    )  # fmt: skip


def _text_cancel(rest: str, ctx: TextContext) -> Command:
    (sid,) = _args(rest, "cancel", 1)
    return Cancel(check_sid(sid))


def _text_upload(rest: str, ctx: TextContext) -> Command:
    raise Reject(
        "bad_request",
        "files are sent with the console client (redchat: /upload <path>) or with"
        " HTTP: curl --data-binary @FILE 'http://HOST:PORT/files?to=%23general&name=NAME'",
    )


def _text_download(rest: str, ctx: TextContext) -> Command:
    raise Reject(
        "bad_request",
        "each file is shown with a link: curl -o NAME 'LINK' downloads it"
        " (or the console client: /download <n>)",
    )


def _no_args(make: Callable[[], Command]) -> Callable[[str, TextContext], Command]:
    return lambda rest, ctx: make()


# ---------------------------------------------------------------------------
# JSON fields
# ---------------------------------------------------------------------------


def _json_login(obj: Mapping[str, Any], ctx: TextContext, rid: Rid) -> Command:
    return Login(
        check_name(obj.get("user")),
        check_password(obj.get("password")),
        check_since(obj.get("since")),
        rid,
    )


def _json_send(obj: Mapping[str, Any], ctx: TextContext, rid: Rid) -> Command:
    reply_to = obj.get("reply_to")
    return Send(
        to=check_target(obj.get("to")),
        text=check_text(obj.get("text"), ctx.max_text_chars),
        cid=check_cid(obj.get("cid")),
        reply_to=None if reply_to is None else check_id(reply_to, "'reply_to'"),
        rid=rid,
    )


def _json_history(obj: Mapping[str, Any], ctx: TextContext, rid: Rid) -> Command:
    before = obj.get("before")
    return GetHistory(
        with_=check_target(obj.get("with"), "'with'"),
        before=None if before is None else check_id(before, "'before'"),
        limit=check_limit(obj.get("limit")),
        rid=rid,
    )


def _json_log(obj: Mapping[str, Any], ctx: TextContext, rid: Rid) -> Command:
    return GetLog(check_limit(obj.get("limit")), rid)


def _json_report(obj: Mapping[str, Any], ctx: TextContext, rid: Rid) -> Command:
    reason = obj.get("reason")
    return Report(check_name(obj.get("user")), check_reason("" if reason is None else reason), rid)


def _json_create_room(obj: Mapping[str, Any], ctx: TextContext, rid: Rid) -> Command:
    return CreateRoom(
        check_room(obj.get("room")), check_bool(obj.get("private"), "'private'", True), rid
    )


def _json_room_user(make: Callable[[str, str, Rid], Command]) -> JsonParser:
    return lambda obj, ctx, rid: make(check_room(obj.get("room")), check_name(obj.get("user")), rid)


def _json_room_only(make: Callable[[str, Rid], Command]) -> JsonParser:
    return lambda obj, ctx, rid: make(check_room(obj.get("room")), rid)


def _json_join(obj: Mapping[str, Any], ctx: TextContext, rid: Rid) -> Command:
    room, token = obj.get("room"), obj.get("token")
    if (room is None) == (token is None):
        raise Reject("bad_request", "join takes 'room' (a public room) or 'token' (a link)")
    if room is not None:
        return Join(room=check_room(room), rid=rid)
    return Join(token=check_token(token), rid=rid)


def _json_thread(obj: Mapping[str, Any], ctx: TextContext, rid: Rid) -> Command:
    return GetThread(check_target(obj.get("with"), "'with'"), check_id(obj.get("id"), "'id'"), rid)


def _json_schedule(obj: Mapping[str, Any], ctx: TextContext, rid: Rid) -> Command:
    at, in_s = check_when(obj.get("at"), obj.get("in"))
    reply_to = obj.get("reply_to")
    return Schedule(
        to=check_target(obj.get("to")),
        text=check_text(obj.get("text"), ctx.max_text_chars),
        at=at,
        in_=in_s,
        reply_to=None if reply_to is None else check_id(reply_to, "'reply_to'"),
        rid=rid,
    )


def _json_cancel(obj: Mapping[str, Any], ctx: TextContext, rid: Rid) -> Command:
    return Cancel(check_sid(obj.get("sid")), rid)


def _json_upload(obj: Mapping[str, Any], ctx: TextContext, rid: Rid) -> Command:
    return StartUpload(
        to=check_target(obj.get("to")),
        name=check_file_name(obj.get("name")),
        size=check_size(obj.get("size")),
        sha256=check_sha256(obj.get("sha256")),
        mime=check_mime(obj.get("mime")),
        cid=check_cid(obj.get("cid")),
        rid=rid,
    )


def _json_chunk(obj: Mapping[str, Any], ctx: TextContext, rid: Rid) -> Command:
    return PutChunk(
        check_uid(obj.get("uid")), check_seq(obj.get("seq")), check_chunk_data(obj.get("data")),
        rid,
    )  # fmt: skip


def _json_upload_id(make: Callable[[str, Rid], Command]) -> JsonParser:
    return lambda obj, ctx, rid: make(check_uid(obj.get("uid")), rid)


def _json_fetch(obj: Mapping[str, Any], ctx: TextContext, rid: Rid) -> Command:
    start = obj.get("from_chunk")
    return Fetch(
        check_fid(obj.get("fid")), 0 if start is None else check_seq(start, "'from_chunk'"), rid
    )


def _json_text_only(obj: Mapping[str, Any], ctx: TextContext, rid: Rid) -> Command:
    raise Reject("unknown_op", "this command is for text lines only")


def _text_none(rest: str, ctx: TextContext) -> Command:
    raise AssertionError("an op without text words is never parsed from text")


def _json_plain(
    make: Callable[[Rid], Command],
) -> Callable[[Mapping[str, Any], TextContext, Rid], Command]:
    return lambda obj, ctx, rid: make(rid)


# ---------------------------------------------------------------------------
# The table
# ---------------------------------------------------------------------------


TextParser = Callable[[str, "TextContext"], Command]
JsonParser = Callable[[Mapping[str, Any], "TextContext", Rid], Command]


@dataclass(frozen=True, slots=True)
class Op:
    name: str  # the JSON op
    words: tuple[str, ...]  # text words; the first is shown, the rest are aliases (none: JSON only)
    usage: str
    help: str
    from_json: Callable[[Mapping[str, Any], TextContext, Rid], Command]
    from_text: Callable[[str, TextContext], Command]
    needs_login: bool = True
    console: bool = True  # the console client offers it (it logs in by itself)


OPS: Final[tuple[Op, ...]] = (
    Op("login", ("login",), "/login <name> <password>",
       "log in (the first login claims the name)", _json_login, _text_login,
       needs_login=False, console=False),
    Op("send", ("private", "msg", "m", "p"), "/private to <user> <text>",
       "private message", _json_send, _text_send),
    Op("reply", ("reply", "r"), "/reply <n> <text>",
       "reply to the message shown as [n]", _json_send, _text_reply),
    Op("history", ("history", "h"), "/history [#room|user] [N]",
       "last N messages of a conversation", _json_history, _text_history),
    Op("log", ("log",), "/log [N]", "your own last N messages", _json_log, _text_log),
    Op("status", ("status", "who"), "/status",
       "who you are, who is online, unread counts",
       _json_plain(GetStatus), _no_args(GetStatus)),
    Op("report", ("report",), "/report <user> [reason]",
       "report abuse (enough reports get a user banned from sending)",
       _json_report, _text_report),
    Op("thread", ("thread", "t"), "/thread <n>",
       "the message shown as [n] and all its replies", _json_thread, _text_thread),
    Op("create_room", ("room",), "/room create #name [public]",
       "make a room you own (private unless 'public')", _json_create_room, _text_room),
    Op("join", ("join",), "/join #room|<link>",
       "join a public room, or ask to join a private one with its link",
       _json_join, _text_join),
    Op("leave", ("leave",), "/leave #room", "leave a room",
       _json_room_only(Leave), _text_room_only(Leave, "leave")),
    Op("rooms", ("rooms",), "/rooms", "your rooms and the public ones",
       _json_plain(ListRooms), _no_args(ListRooms)),
    Op("members", ("members",), "/members #room",
       "who is in a room (and, for its owner, who waits)",
       _json_room_only(GetMembers), _text_room_only(GetMembers, "members")),
    Op("invite", ("invite",), "/invite #room <user>", "owner: add someone to your room",
       _json_room_user(Invite), _text_room_user(Invite, "invite")),
    Op("link", ("link",), "/link #room", "owner: a new invite link (the old one stops working)",
       _json_room_only(MakeLink), _text_room_only(MakeLink, "link")),
    Op("approve", ("approve",), "/approve #room <user>", "owner: let a user who asked in",
       _json_room_user(Approve), _text_room_user(Approve, "approve")),
    Op("deny", ("deny",), "/deny #room <user>", "owner: turn down a request to join",
       _json_room_user(Deny), _text_room_user(Deny, "deny")),
    Op("switch", ("switch", "s"), "/switch #room|user",
       "where your plain lines go (default #general)",
       _json_text_only, _text_switch),
    Op("schedule", ("schedule",), "/schedule <when> <#room|user> <text>",
       "send later; when: 90s, 10m, 2h, 14:30 or 2025-11-21T14:30",
       _json_schedule, _text_schedule),
    Op("schedules", ("schedules",), "/schedules", "your scheduled messages not sent yet",
       _json_plain(GetSchedules), _no_args(GetSchedules)),
    Op("cancel", ("cancel",), "/cancel <sid>", "cancel a scheduled message",
       _json_cancel, _text_cancel),
    # Files, in chunks, for programs (the console client's /upload and /download use
    # them). Text lines cannot carry bytes: their words only say what to use instead.
    Op("upload", ("upload",), "/upload",
       "files: send them with the console client or HTTP POST /files",
       _json_upload, _text_upload, console=False),
    Op("chunk", (), "", "", _json_chunk, _text_none, console=False),
    Op("finish_upload", (), "", "", _json_upload_id(FinishUpload), _text_none, console=False),
    Op("abort_upload", (), "", "", _json_upload_id(AbortUpload), _text_none, console=False),
    Op("fetch", ("download",), "/download",
       "files: the link shown with each file downloads it",
       _json_fetch, _text_download, console=False),
    Op("help", ("help", "?"), "/help", "this text",
       _json_plain(Help), _no_args(Help), needs_login=False),
    Op("ping", ("ping",), "/ping", "check the connection is alive",
       _json_plain(Ping), _no_args(Ping), needs_login=False, console=False),
    Op("quit", ("quit", "exit", "bye", "q"), "/quit", "leave",
       _json_plain(Quit), _no_args(Quit), needs_login=False),
)  # fmt: skip

# "reply" is a text-only form of send: its JSON op is "send" with reply_to.
BY_NAME: Final = {op.name: op for op in OPS}
BY_WORD: Final = {word: op for op in OPS for word in op.words}
# "switch" is a text-only setting of the connection (JSON clients say "to" in each send).
_JSON_OPS: Final = {name: op for name, op in BY_NAME.items() if name not in ("reply", "switch")}


def op_of(cmd: Command) -> Op:
    return BY_NAME[cmd.OP]


def parse_json_request(obj: Mapping[str, Any], ctx: TextContext, rid: Rid) -> Command:
    op = obj.get("op")
    if not isinstance(op, str):
        raise Reject("bad_request", "missing 'op'")
    spec = _JSON_OPS.get(op)
    if spec is None:
        raise Reject("unknown_op", f"unknown op {printable(op[:40])!r}")
    return spec.from_json(obj, ctx, rid)


def parse_text_line(text: str, ctx: TextContext, *, console: bool = False) -> Command:
    """One line a person typed: a message to ``ctx.room`` or a ``/command``."""
    if not text.strip():
        raise Reject("bad_request", "empty line; type a message or /help")
    if text.startswith("//"):
        return Send(ctx.room, check_text(text[1:], ctx.max_text_chars))
    if not text.startswith("/"):
        return Send(ctx.room, check_text(text, ctx.max_text_chars))
    word, _, rest = text[1:].partition(" ")
    spec = BY_WORD.get(word.lower())
    if spec is None or (console and not spec.console):
        raise Reject("unknown_op", f"unknown command /{printable(word[:40])}; /help lists them")
    return spec.from_text(rest.strip(), ctx)


def help_text(*, console: bool = False, extra: tuple[tuple[str, str], ...] = ()) -> str:
    """The command list, from the table: each op's usage, help and aliases."""
    rows = [("<text>", "send to #general")]
    for spec in OPS:
        if (console and not spec.console) or not spec.words:
            continue
        aliases = ", ".join("/" + w for w in spec.words[1:])
        rows.append((spec.usage, spec.help + (f" (also {aliases})" if aliases else "")))
    rows += [("//text", "send a line that starts with /"), *extra]
    width = max(len(usage) for usage, _ in rows) + 2
    return "commands:\n" + "\n".join(f"  {usage.ljust(width)}{what}" for usage, what in rows)


def request_of(cmd: Command) -> tuple[str, dict[str, Any]]:
    """A command as a JSON-lines request: (op, fields), for clients. Fields left at
    None are left out; ``with_`` is ``with``."""
    fields: dict[str, Any] = {}
    for f in dataclasses.fields(cmd):
        value = getattr(cmd, f.name)
        if f.name == "rid" or value is None:
            continue
        fields[f.name.rstrip("_")] = dict(value) if isinstance(value, Mapping) else value
    return cmd.OP, fields

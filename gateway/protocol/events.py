"""Events (server -> client) as frozen dataclasses, and their one JSON form.

``event_to_dict`` is the contract of docs/protocol.md. A message has exactly one
serializer: the store publishes ``message_json_head`` + ``message_json_tail``
(built in Lua around the id Redis assigns), and ``event_to_dict`` of the same
message dumps to the same bytes (tests/unit/test_protocol.py checks it).
"""

from __future__ import annotations

import base64
import json
import json.encoder
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from gateway.protocol.values import parse_stream_id

__all__ = [
    "Ack",
    "Bye",
    "Cancelled",
    "ChunkStored",
    "Error",
    "Event",
    "FileAck",
    "FileChunk",
    "FileInfo",
    "HistoryResult",
    "JoinRequest",
    "Joined",
    "Left",
    "LinkResult",
    "LogResult",
    "LoggedOut",
    "MembersResult",
    "Message",
    "Notice",
    "Ok",
    "Pending",
    "Pong",
    "Quota",
    "Quote",
    "ReportWarning",
    "Reported",
    "Rid",
    "RoomInfo",
    "RoomResult",
    "RoomsResult",
    "ScheduleList",
    "ScheduleOutcome",
    "Scheduled",
    "StatusResult",
    "Synced",
    "ThreadResult",
    "UploadReady",
    "Welcome",
    "ack_line",
    "dumps",
    "event_from_json",
    "event_to_dict",
    "file_dict",
    "file_from_dict",
    "file_json",
    "message_dict",
    "message_from_dict",
    "message_json_tail",
    "published_from_json",
    "pushed_from_dict",
    "schedule_event_from_dict",
    "scheduled_from_dict",
]

Rid = str | int | None


QUOTE_CHARS = 80  # how much of a replied-to message a reply shows


@dataclass(frozen=True, slots=True)
class Quote:
    """The start of the message a reply answers: who wrote it and its first words."""

    from_: str
    text: str

    @classmethod
    def of(cls, from_: str, text: str) -> Quote:
        return cls(from_, text if len(text) <= QUOTE_CHARS else text[: QUOTE_CHARS - 1] + "…")


@dataclass(frozen=True, slots=True)
class FileInfo:
    """A file a message carries: its id (``fid``, for downloads), name, size in bytes,
    SHA-256 (hex) and media type. The bytes live in the store, never in the message."""

    fid: str
    name: str
    size: int
    sha256: str
    mime: str


@dataclass(frozen=True, slots=True)
class Message:
    id: str
    from_: str
    to: str
    text: str
    ts: int
    reply_to: str | None = None
    replay: bool = False
    quote: Quote | None = None  # the start of the message replied to
    replies: int = 0  # how many replies it has (in history and threads)
    scheduled: bool = False  # sent by the scheduler, at its author's chosen time
    file: FileInfo | None = None  # a file message (its text is the file's name)
    # The JSON line as published, shared by every JSON session on a gateway.
    raw: bytes | None = field(default=None, compare=False, repr=False)
    _key: tuple[int, int] | None = field(default=None, init=False, compare=False, repr=False)

    @property
    def key(self) -> tuple[int, int]:
        # Parsed once, not once per recipient: every local session compares it.
        key = self._key
        if key is None:
            key = parse_stream_id(self.id)
            object.__setattr__(self, "_key", key)
        return key


@dataclass(frozen=True, slots=True)
class Ack:
    id: str
    rid: Rid = None
    cid: str | None = None


@dataclass(frozen=True, slots=True)
class Welcome:
    user: str
    new: bool
    unread: Mapping[str, int]
    gateway: str
    rid: Rid = None


@dataclass(frozen=True, slots=True)
class Synced:
    rid: Rid = None


@dataclass(frozen=True, slots=True)
class HistoryResult:
    with_: str
    messages: tuple[Message, ...]
    rid: Rid = None


@dataclass(frozen=True, slots=True)
class LogResult:
    messages: tuple[Message, ...]
    rid: Rid = None


@dataclass(frozen=True, slots=True)
class Quota:
    """The public-chat rate limit as it stands for one user."""

    limit: int
    left: int
    resets_at: int | None  # ms; None while no window is running (nothing sent yet)


@dataclass(frozen=True, slots=True)
class StatusResult:
    user: str
    gateway: str
    online: tuple[str, ...]
    unread: Mapping[str, int]
    rid: Rid = None
    banned_until: int | None = None  # ms; 0 = until an operator lifts it
    quota: Quota | None = None  # None when there is no rate limit


@dataclass(frozen=True, slots=True)
class Reported:
    """The answer to a report."""

    user: str
    counted: bool
    reports: int
    threshold: int
    banned_until: int | None
    rid: Rid = None


@dataclass(frozen=True, slots=True)
class ReportWarning:
    """Pushed to every client of a reported user (type ``warning``)."""

    reports: int
    threshold: int
    banned_until: int | None
    rid: Rid = None


@dataclass(frozen=True, slots=True)
class RoomInfo:
    room: str
    owner: str
    private: bool
    members: int = 0
    member: bool = False  # the asking user is in it


@dataclass(frozen=True, slots=True)
class RoomResult:
    """The answer to ``create_room`` (type ``room``)."""

    room: str
    owner: str
    private: bool
    rid: Rid = None


@dataclass(frozen=True, slots=True)
class LinkResult:
    room: str
    token: str
    rid: Rid = None


@dataclass(frozen=True, slots=True)
class Joined:
    """The user is now a member: the answer to ``join``, and pushed to all their clients."""

    room: str
    rid: Rid = None


@dataclass(frozen=True, slots=True)
class Pending:
    """A join by link waits for the owner."""

    room: str
    rid: Rid = None


@dataclass(frozen=True, slots=True)
class Left:
    room: str
    rid: Rid = None


@dataclass(frozen=True, slots=True)
class JoinRequest:
    """Pushed to a room's owner: ``user`` asks to join."""

    room: str
    user: str
    rid: Rid = None


@dataclass(frozen=True, slots=True)
class RoomsResult:
    rooms: tuple[RoomInfo, ...]
    rid: Rid = None


@dataclass(frozen=True, slots=True)
class MembersResult:
    room: str
    members: tuple[str, ...]
    pending: tuple[str, ...] | None = None  # the owner's view only
    rid: Rid = None


@dataclass(frozen=True, slots=True)
class ThreadResult:
    with_: str
    message: Message
    replies: tuple[Message, ...]
    rid: Rid = None


@dataclass(frozen=True, slots=True)
class Ok:
    rid: Rid = None


@dataclass(frozen=True, slots=True)
class Scheduled:
    """A message waiting to be sent at ``at`` (ms): the answer to ``schedule``, an
    item of ``schedules``, and pushed (without rid) to every client of its author."""

    sid: str
    to: str
    at: int
    text: str
    reply_to: str | None = None
    rid: Rid = None


@dataclass(frozen=True, slots=True)
class ScheduleList:
    """The caller's scheduled messages not yet sent, soonest first (type ``schedules``)."""

    items: tuple[Scheduled, ...]
    rid: Rid = None


@dataclass(frozen=True, slots=True)
class Cancelled:
    """A scheduled message will not be sent: the answer to ``cancel``, also pushed."""

    sid: str
    rid: Rid = None


@dataclass(frozen=True, slots=True)
class ScheduleOutcome:
    """Pushed to every client of the author when a scheduled message was sent, or was
    refused at its time (type ``notice``, with the scheduled message's fields)."""

    sid: str
    to: str
    at: int
    sent: bool
    id: str | None = None  # the message id, when sent
    code: str | None = None  # when not sent: why, as an error code ...
    reason: str = ""  # ... and its message
    rid: Rid = None

    @property
    def text(self) -> str:
        head = f"your scheduled message {self.sid} to {self.to}"
        return f"{head} was sent" if self.sent else f"{head} was not sent: {self.reason}"


@dataclass(frozen=True, slots=True)
class UploadReady:
    """The answer to ``upload`` (type ``upload``): send ``chunks`` chunks of
    ``chunk_bytes`` (the last one shorter) with this ``uid``."""

    uid: str
    chunk_bytes: int
    chunks: int
    rid: Rid = None


@dataclass(frozen=True, slots=True)
class ChunkStored:
    """The answer to ``chunk`` (type ``chunk``): chunk ``seq`` is stored; ``received``
    is the file's bytes up to the end of it (what a client sending in order has sent)."""

    uid: str
    seq: int
    received: int
    rid: Rid = None


@dataclass(frozen=True, slots=True)
class FileAck:
    """The answer to ``finish_upload`` (type ``ack``): the file message is stored."""

    id: str
    file: FileInfo
    cid: str | None = None
    rid: Rid = None


@dataclass(frozen=True, slots=True)
class FileChunk:
    """One chunk of a download (type ``file_chunk``), the bytes in base64 on the wire;
    ``last`` on the final one (a 0-byte file has one, empty)."""

    fid: str
    seq: int
    data: bytes = field(repr=False)
    last: bool = False
    size: int = 0  # the whole file's, for progress
    rid: Rid = None


@dataclass(frozen=True, slots=True)
class Error:
    code: str
    message: str
    rid: Rid = None
    extra: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Notice:
    text: str
    rid: Rid = None


@dataclass(frozen=True, slots=True)
class Pong:
    rid: Rid = None


@dataclass(frozen=True, slots=True)
class Bye:
    rid: Rid = None


@dataclass(frozen=True, slots=True)
class LoggedOut:
    """An HTTP token was revoked (published to its user): the live streams opened
    with it end. ``token`` is the start of its digest; never sent to a client."""

    token: str
    rid: Rid = None


Event = (
    Message
    | Ack
    | Welcome
    | Synced
    | HistoryResult
    | LogResult
    | StatusResult
    | Reported
    | ReportWarning
    | RoomResult
    | LinkResult
    | Joined
    | Pending
    | Left
    | JoinRequest
    | RoomsResult
    | MembersResult
    | ThreadResult
    | Scheduled
    | ScheduleList
    | Cancelled
    | ScheduleOutcome
    | Ok
    | UploadReady
    | ChunkStored
    | FileAck
    | FileChunk
    | Error
    | Notice
    | Pong
    | Bye
    | LoggedOut
)


def _not_json(obj: Any) -> Any:
    raise TypeError(f"{type(obj).__name__} is not JSON serializable")


def _compact_encoder() -> Callable[[Any], str]:
    """``json.dumps(obj, ensure_ascii=False, separators=(",", ":"))``, the same text,
    with the C encoder made once: json.dumps builds one per call, which was most of
    the cost of encoding an ack."""
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:  # a Python without the C accelerator
        return json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
    # markers (None: no circular check), default, string encoder, indent, separators,
    # sort_keys, skipkeys, allow_nan: what json.dumps passes for these options.
    encode = make(
        None, _not_json, json.encoder.encode_basestring, None, ":", ",", False, False, True
    )
    return lambda obj: "".join(encode(obj, 0))


compact_json: Final = _compact_encoder()
# One JSON string, as compact_json writes strings (ensure_ascii=False).
_json_str: Final = json.encoder.encode_basestring


def dumps(obj: Any) -> bytes:
    """One JSON line, compact, UTF-8: the form of every JSON-lines event."""
    return compact_json(obj).encode() + b"\n"


def ack_line(ev: Ack) -> bytes:
    """``dumps(event_to_dict(ev))`` without the dict: every send is answered with one."""
    cid = "null" if ev.cid is None else _json_str(ev.cid)
    rid = ev.rid
    if rid is None:
        return f'{{"type":"ack","id":{_json_str(ev.id)},"cid":{cid}}}\n'.encode()
    rid_json = str(rid) if type(rid) is int else compact_json(rid)
    return f'{{"type":"ack","id":{_json_str(ev.id)},"cid":{cid},"rid":{rid_json}}}\n'.encode()


def file_dict(f: FileInfo) -> dict[str, Any]:
    """A file's JSON object, as in a message's ``file``."""
    return {"fid": f.fid, "name": f.name, "size": f.size, "sha256": f.sha256, "mime": f.mime}


def file_json(f: FileInfo) -> str:
    """A file's JSON object, compact: how a stream entry and a log entry keep it."""
    return compact_json(file_dict(f))


def file_from_dict(d: Any) -> FileInfo:
    """A file from its JSON object. Strict: ``TypeError``, ``KeyError`` or ``ValueError``
    for anything that is not one, so a malformed event is dropped whole."""
    if not isinstance(d, Mapping):
        raise TypeError(f"a file is an object, not {type(d).__name__}")
    size = d["size"]
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise ValueError(f"bad file size {size!r}")
    fid, name, sha256, mime = d["fid"], d["name"], d["sha256"], d["mime"]
    if not all(isinstance(v, str) for v in (fid, name, sha256, mime)):
        raise TypeError("a file's fid, name, sha256 and mime are strings")
    return FileInfo(fid, name, size, sha256, mime)


def message_json_tail(
    from_: str,
    to: str,
    text: str,
    reply_to: str | None,
    quote: Quote | None = None,
    scheduled: bool = False,
    file: FileInfo | None = None,
) -> str:
    """What follows ``{"type":"message","id":"<id>","ts":<ms>`` in a published message."""
    if not reply_to and file is None and not scheduled:  # most: no dict, one format
        return f',"from":{_json_str(from_)},"to":{_json_str(to)},"text":{_json_str(text)}}}'
    tail: dict[str, Any] = {"from": from_, "to": to, "text": text}
    if reply_to:
        tail["reply_to"] = reply_to
        if quote is not None:
            tail["quote"] = {"from": quote.from_, "text": quote.text}
    if file is not None:
        tail["file"] = file_dict(file)
    if scheduled:
        tail["scheduled"] = True
    return "," + compact_json(tail)[1:]


def _message_dict(m: Message) -> dict[str, Any]:
    d: dict[str, Any] = {
        "type": "message",
        "id": m.id,
        "ts": m.ts,
        "from": m.from_,
        "to": m.to,
        "text": m.text,
    }
    if m.reply_to:
        d["reply_to"] = m.reply_to
        if m.quote is not None:
            d["quote"] = {"from": m.quote.from_, "text": m.quote.text}
    if m.file is not None:
        d["file"] = file_dict(m.file)
    if m.scheduled:
        d["scheduled"] = True
    if m.replies:
        d["replies"] = m.replies
    if m.replay:
        d["replay"] = True
    return d


def message_dict(m: Message) -> dict[str, Any]:
    """A message's JSON object (as in a ``history`` list)."""
    return _message_dict(m)


def event_to_dict(ev: Event) -> dict[str, Any]:
    """The JSON object of an event, as in docs/protocol.md."""
    d: dict[str, Any]
    match ev:
        case Message():
            return _message_dict(ev)
        case Ack():
            d = {"type": "ack", "id": ev.id, "cid": ev.cid}
        case Welcome():
            d = {
                "type": "welcome",
                "user": ev.user,
                "new": ev.new,
                "unread": dict(ev.unread),
                "gateway": ev.gateway,
            }
        case Synced():
            d = {"type": "synced"}
        case HistoryResult():
            d = {
                "type": "history",
                "with": ev.with_,
                "messages": [_message_dict(m) for m in ev.messages],
            }
        case LogResult():
            d = {"type": "log", "messages": [_message_dict(m) for m in ev.messages]}
        case StatusResult():
            d = {
                "type": "status",
                "user": ev.user,
                "gateway": ev.gateway,
                "online": list(ev.online),
                "unread": dict(ev.unread),
                "banned_until": ev.banned_until,
                "quota": None
                if ev.quota is None
                else {
                    "limit": ev.quota.limit,
                    "left": ev.quota.left,
                    "resets_at": ev.quota.resets_at,
                },
            }
        case Reported():
            d = {
                "type": "reported",
                "user": ev.user,
                "counted": ev.counted,
                "reports": ev.reports,
                "threshold": ev.threshold,
                "banned_until": ev.banned_until,
            }
        case ReportWarning():
            d = {
                "type": "warning",
                "reports": ev.reports,
                "threshold": ev.threshold,
                "banned_until": ev.banned_until,
            }
        case RoomResult():
            d = {"type": "room", "room": ev.room, "owner": ev.owner, "private": ev.private}
        case LinkResult():
            d = {"type": "link", "room": ev.room, "token": ev.token}
        case Joined():
            d = {"type": "joined", "room": ev.room}
        case Pending():
            d = {"type": "pending", "room": ev.room}
        case Left():
            d = {"type": "left", "room": ev.room}
        case JoinRequest():
            d = {"type": "join_request", "room": ev.room, "user": ev.user}
        case RoomsResult():
            d = {
                "type": "rooms",
                "rooms": [
                    {
                        "room": r.room,
                        "private": r.private,
                        "owner": r.owner,
                        "members": r.members,
                        "member": r.member,
                    }
                    for r in ev.rooms
                ],
            }
        case MembersResult():
            d = {"type": "members", "room": ev.room, "members": list(ev.members)}
            if ev.pending is not None:
                d["pending"] = list(ev.pending)
        case ThreadResult():
            d = {
                "type": "thread",
                "with": ev.with_,
                "message": _message_dict(ev.message),
                "replies": [_message_dict(m) for m in ev.replies],
            }
        case Scheduled():
            d = {"type": "scheduled", **_scheduled_dict(ev)}
        case ScheduleList():
            d = {"type": "schedules", "items": [_scheduled_dict(s) for s in ev.items]}
        case Cancelled():
            d = {"type": "cancelled", "sid": ev.sid}
        case ScheduleOutcome():
            d = {"type": "notice", "text": ev.text, "sid": ev.sid, "to": ev.to, "at": ev.at,
                 "sent": ev.sent}  # fmt: skip
            if ev.sent:
                d["id"] = ev.id
            else:
                d |= {"code": ev.code, "reason": ev.reason}
        case Ok():
            d = {"type": "ok"}
        case UploadReady():
            d = {"type": "upload", "uid": ev.uid, "chunk_bytes": ev.chunk_bytes,
                 "chunks": ev.chunks}  # fmt: skip
        case ChunkStored():
            d = {"type": "chunk", "uid": ev.uid, "seq": ev.seq, "received": ev.received}
        case FileAck():
            d = {"type": "ack", "id": ev.id, "cid": ev.cid, "file": file_dict(ev.file)}
        case FileChunk():
            d = {"type": "file_chunk", "fid": ev.fid, "seq": ev.seq, "size": ev.size,
                 "last": ev.last, "data": base64.b64encode(ev.data).decode("ascii")}  # fmt: skip
        case Error():
            d = {"type": "error", "code": ev.code, "message": ev.message, **ev.extra}
        case Notice():
            d = {"type": "notice", "text": ev.text}
        case Pong():
            d = {"type": "pong"}
        case Bye():
            d = {"type": "bye"}
        case LoggedOut():
            d = {"type": "logout"}
    if ev.rid is not None:
        d["rid"] = ev.rid
    return d


def _scheduled_dict(s: Scheduled) -> dict[str, Any]:
    d: dict[str, Any] = {"sid": s.sid, "to": s.to, "at": s.at, "text": s.text}
    if s.reply_to:
        d["reply_to"] = s.reply_to
    return d


def scheduled_from_dict(d: Mapping[str, Any]) -> Scheduled:
    """A scheduled message from its JSON object (as stored, listed and pushed)."""
    reply_to = d.get("reply_to")
    return Scheduled(
        str(d["sid"]), str(d["to"]), int(d["at"]), str(d["text"]),
        str(reply_to) if reply_to else None,
    )  # fmt: skip


def schedule_event_from_dict(
    d: Mapping[str, Any],
) -> Scheduled | ScheduleList | Cancelled | ScheduleOutcome | None:
    """A scheduled-message event as a client received it; None for any other event
    (or a malformed one), so a client can show it in the server's own words."""
    kind = d.get("type")
    try:
        if kind == "schedules":
            return ScheduleList(tuple(scheduled_from_dict(item) for item in d.get("items") or ()))
        if kind in ("scheduled", "cancelled") or (kind == "notice" and "sid" in d):
            ev = pushed_from_dict(d)
            if isinstance(ev, Scheduled | Cancelled | ScheduleOutcome):
                return ev
    except (KeyError, TypeError, ValueError, AttributeError):
        pass
    return None


def message_from_dict(d: Mapping[str, Any], raw: bytes | None = None) -> Message:
    """A message event from its JSON object (as published by the store)."""
    reply_to = d.get("reply_to")
    quote = d.get("quote")
    file = d.get("file")
    sid = str(d["id"])
    parse_stream_id(sid)  # a malformed id is refused here, not at every recipient
    return Message(
        id=sid,
        from_=str(d["from"]),
        to=str(d["to"]),
        text=str(d["text"]),
        ts=int(d["ts"]),
        reply_to=str(reply_to) if reply_to else None,
        quote=Quote(str(quote["from"]), str(quote["text"])) if isinstance(quote, dict) else None,
        scheduled=d.get("scheduled") is True,
        file=None if file is None else file_from_dict(file),
        raw=raw,
    )


# A message as the send step publishes it when it has nothing but its sender, its
# conversation and a text with no escapes: most of them. Its strings are exactly
# their JSON values (no backslash, no control character), so it needs no parser.
_PLAIN_MESSAGE: Final = re.compile(
    rb'\{"type":"message","id":"([0-9]+-[0-9]+)","ts":(0|[1-9][0-9]{0,19}),'
    rb'"from":"([^"\\\x00-\x1f]*)","to":"([^"\\\x00-\x1f]*)","text":"([^"\\\x00-\x1f]*)"\}'
)


def published_from_json(data: bytes) -> Message | dict[str, Any]:
    """An event as published on a channel: a message (``raw``: its JSON line), or
    any other event as its JSON object. Raises ``ValueError`` (or ``KeyError``,
    ``TypeError``) for what is neither; the result is what ``json.loads`` and
    ``message_from_dict`` make of it, the common case without either."""
    plain = _PLAIN_MESSAGE.fullmatch(data)
    if plain is None:
        return event_from_json(data)
    sid_b, ts, from_, to, text = plain.groups()
    sid = sid_b.decode()  # digits and a dash
    # As json.loads decodes bytes (lone surrogates pass; a message checked them at input).
    msg = Message(
        id=sid,
        from_=from_.decode("utf-8", "surrogatepass"),
        to=to.decode("utf-8", "surrogatepass"),
        text=text.decode("utf-8", "surrogatepass"),
        ts=int(ts),
        raw=data + b"\n",
    )
    object.__setattr__(msg, "_key", parse_stream_id(sid))  # refuses an id out of range
    return msg


def event_from_json(data: bytes) -> Message | dict[str, Any]:
    """``published_from_json`` the long way: ``json.loads``, then ``message_from_dict``."""
    obj = json.loads(data)
    if not isinstance(obj, dict):
        raise ValueError("an event is a JSON object")
    if obj.get("type") != "message":
        return obj
    return message_from_dict(obj, raw=data + b"\n")


def pushed_from_dict(d: Mapping[str, Any]) -> Event | None:
    """An event published to a user's channel other than a message (None if unknown)."""
    match d.get("type"):
        case "joined":
            return Joined(str(d["room"]))
        case "left":
            return Left(str(d["room"]))
        case "join_request":
            return JoinRequest(str(d["room"]), str(d["user"]))
        case "scheduled":
            return scheduled_from_dict(d)
        case "cancelled":
            return Cancelled(str(d["sid"]))
        case "notice" if "sid" in d:
            code = d.get("code")
            return ScheduleOutcome(
                str(d["sid"]), str(d["to"]), int(d["at"]), d.get("sent") is True,
                id=str(d["id"]) if d.get("id") else None,
                code=str(code) if code else None,
                reason=str(d.get("reason") or ""),
            )  # fmt: skip
        case "notice":
            return Notice(str(d["text"]))
        case "logout":
            return LoggedOut(str(d["token"]))
        case "warning":
            until = d.get("banned_until")
            return ReportWarning(
                int(d["reports"]), int(d["threshold"]), None if until is None else int(until)
            )
    return None


def room_event_from_dict(d: Mapping[str, Any]) -> Event | None:
    """A rooms event from its JSON object, for clients (None if it is not one)."""
    room = str(d.get("room", "?"))
    match d.get("type"):
        case "room":
            return RoomResult(room, str(d.get("owner", "?")), d.get("private") is not False)
        case "link":
            return LinkResult(room, str(d.get("token", "")))
        case "joined":
            return Joined(room)
        case "pending":
            return Pending(room)
        case "left":
            return Left(room)
        case "join_request":
            return JoinRequest(room, str(d.get("user", "?")))
        case "rooms":
            return RoomsResult(
                tuple(
                    RoomInfo(
                        str(r.get("room", "?")), str(r.get("owner", "?")),
                        r.get("private") is not False, int(r.get("members") or 0),
                        r.get("member") is True,
                    )
                    for r in d.get("rooms") or ()
                    if isinstance(r, dict)
                )
            )  # fmt: skip
        case "members":
            pending = d.get("pending")
            return MembersResult(
                room,
                tuple(str(m) for m in d.get("members") or ()),
                None if pending is None else tuple(str(p) for p in pending),
            )
    return None

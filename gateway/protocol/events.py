"""Events (server -> client) as frozen dataclasses, and their one JSON form.

``event_to_dict`` is the contract of docs/protocol.md. A message has exactly one
serializer: the store publishes ``message_json_head`` + ``message_json_tail``
(built in Lua around the id Redis assigns), and ``event_to_dict`` of the same
message dumps to the same bytes (tests/unit/test_protocol.py checks it).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from gateway.protocol.values import parse_stream_id

__all__ = [
    "Ack",
    "Bye",
    "Error",
    "Event",
    "HistoryResult",
    "LogResult",
    "Message",
    "Notice",
    "Pong",
    "Quota",
    "ReportWarning",
    "Reported",
    "Rid",
    "StatusResult",
    "Synced",
    "Welcome",
    "dumps",
    "event_to_dict",
    "message_from_dict",
    "message_json_tail",
    "pushed_from_dict",
]

Rid = str | int | None


@dataclass(frozen=True, slots=True)
class Message:
    id: str
    from_: str
    to: str
    text: str
    ts: int
    reply_to: str | None = None
    replay: bool = False
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
    | Error
    | Notice
    | Pong
    | Bye
)


def dumps(obj: Any) -> bytes:
    """One JSON line, compact, UTF-8: the form of every JSON-lines event."""
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"


def message_json_tail(from_: str, to: str, text: str, reply_to: str | None) -> str:
    """What follows ``{"type":"message","id":"<id>","ts":<ms>`` in a published message."""
    tail: dict[str, str] = {"from": from_, "to": to, "text": text}
    if reply_to:
        tail["reply_to"] = reply_to
    return "," + json.dumps(tail, ensure_ascii=False, separators=(",", ":"))[1:]


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
    if m.replay:
        d["replay"] = True
    return d


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
        case Error():
            d = {"type": "error", "code": ev.code, "message": ev.message, **ev.extra}
        case Notice():
            d = {"type": "notice", "text": ev.text}
        case Pong():
            d = {"type": "pong"}
        case Bye():
            d = {"type": "bye"}
    if ev.rid is not None:
        d["rid"] = ev.rid
    return d


def message_from_dict(d: Mapping[str, Any], raw: bytes | None = None) -> Message:
    """A message event from its JSON object (as published by the store)."""
    reply_to = d.get("reply_to")
    sid = str(d["id"])
    parse_stream_id(sid)  # a malformed id is refused here, not at every recipient
    return Message(
        id=sid,
        from_=str(d["from"]),
        to=str(d["to"]),
        text=str(d["text"]),
        ts=int(d["ts"]),
        reply_to=str(reply_to) if reply_to else None,
        raw=raw,
    )


def pushed_from_dict(d: Mapping[str, Any]) -> Event | None:
    """An event published to a user's channel other than a message (None if unknown)."""
    match d.get("type"):
        case "warning":
            until = d.get("banned_until")
            return ReportWarning(
                int(d["reports"]), int(d["threshold"]), None if until is None else int(until)
            )
    return None

"""The wire protocol: bytes in, commands out; events in, bytes out.

This module owns framing detection, line splitting with a length bound, parsing of
JSON-lines and text-lines requests into frozen command objects, and rendering of
events for each framing. It must not import asyncio or redis and does no I/O, so
every path can be tested byte by byte and fuzzed (tests/unit/test_protocol*.py).

A peer's mistake never raises out of a codec: ``feed`` returns an ``Error`` event
in place of the command it could not read, and the connection goes on.
"""

from __future__ import annotations

import json
import re
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Final

__all__ = [
    "HTTP_METHODS",
    "Ack",
    "Bye",
    "Codec",
    "Command",
    "Error",
    "Event",
    "Framing",
    "GetHistory",
    "GetLog",
    "GetStatus",
    "Help",
    "HistoryResult",
    "JsonCodec",
    "LineSplitter",
    "LogResult",
    "Login",
    "Message",
    "Notice",
    "Ping",
    "Pong",
    "Quit",
    "Send",
    "StatusResult",
    "Synced",
    "TextCodec",
    "Welcome",
    "detect_framing",
    "event_to_dict",
    "message_from_dict",
    "parse_stream_id",
    "printable",
    "valid_name",
]

NAME_RE: Final = re.compile(r"[A-Za-z0-9_.\-]{1,32}")
STREAM_ID_RE: Final = re.compile(r"[0-9]{1,20}-[0-9]{1,20}")
MAX_RID_CHARS: Final = 64
MAX_PASSWORD_CHARS: Final = 1024
MAX_LIMIT: Final = 200
DEFAULT_LIMIT: Final = 20
HTTP_METHODS: Final = (b"GET ", b"POST ", b"PUT ", b"DELETE ", b"HEAD ", b"OPTIONS ")

Rid = str | int | None


def valid_name(name: str) -> bool:
    return NAME_RE.fullmatch(name) is not None


def parse_stream_id(sid: str) -> tuple[int, int]:
    """``"1732190000000-3"`` -> ``(1732190000000, 3)``: ids compare as these tuples."""
    ms, _, seq = sid.partition("-")
    return int(ms), int(seq or 0)


# Control characters (C0, DEL, C1) and the bidi overrides that can disguise text.
_UNSAFE_RE: Final = re.compile("[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def _escape_char(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(text: str) -> str:
    """Text safe to put on a terminal: control and bidi characters shown escaped."""
    return _UNSAFE_RE.sub(_escape_char, text)


# ---------------------------------------------------------------------------
# Framing
# ---------------------------------------------------------------------------


class Framing(Enum):
    TEXT = "text"
    JSON = "json"
    HTTP = "http"


def detect_framing(data: bytes) -> Framing | None:
    """Pick the framing from a connection's first bytes; None until they decide it."""
    if not data:
        return None
    if data[:1] == b"{":
        return Framing.JSON
    undecided = False
    for method in HTTP_METHODS:
        if data.startswith(method):
            return Framing.HTTP
        if method.startswith(data):
            undecided = True
    return None if undecided else Framing.TEXT


class LineSplitter:
    """Splits a byte stream into lines of at most ``max_line_bytes``.

    An overlong line yields one ``None`` (as soon as it passes the bound) and the
    rest of it, up to its newline, is dropped without being buffered.
    """

    def __init__(self, max_line_bytes: int) -> None:
        self.max_line_bytes = max_line_bytes
        self._buf = bytearray()
        self._discarding = False

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def feed(self, data: bytes) -> list[bytes | None]:
        out: list[bytes | None] = []
        start = 0
        while (nl := data.find(b"\n", start)) >= 0:
            piece = data[start:nl]
            start = nl + 1
            if self._discarding:
                self._discarding = False
                continue
            if len(self._buf) + len(piece) > self.max_line_bytes:
                self._buf.clear()
                out.append(None)
                continue
            if self._buf:
                self._buf += piece
                line = bytes(self._buf)
                self._buf.clear()
            else:
                line = piece
            out.append(line[:-1] if line.endswith(b"\r") else line)
        if start < len(data) and not self._discarding:
            if len(self._buf) + len(data) - start > self.max_line_bytes:
                self._buf.clear()
                self._discarding = True
                out.append(None)
            else:
                self._buf += data[start:]
        return out


# ---------------------------------------------------------------------------
# Commands (client -> server)
# ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Login:
    user: str
    password: str
    since: Mapping[str, str] | None = None
    rid: Rid = None


@dataclass(frozen=True, slots=True)
class Send:
    to: str
    text: str
    cid: str | None = None
    reply_to: str | None = None
    rid: Rid = None


@dataclass(frozen=True, slots=True)
class GetHistory:
    with_: str
    before: str | None = None
    limit: int = DEFAULT_LIMIT
    rid: Rid = None


@dataclass(frozen=True, slots=True)
class GetLog:
    limit: int = DEFAULT_LIMIT
    rid: Rid = None


@dataclass(frozen=True, slots=True)
class GetStatus:
    rid: Rid = None


@dataclass(frozen=True, slots=True)
class Ping:
    rid: Rid = None


@dataclass(frozen=True, slots=True)
class Quit:
    rid: Rid = None


@dataclass(frozen=True, slots=True)
class Help:
    rid: Rid = None


Command = Login | Send | GetHistory | GetLog | GetStatus | Ping | Quit | Help

# ---------------------------------------------------------------------------
# Events (server -> client)
# ---------------------------------------------------------------------------


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
class StatusResult:
    user: str
    gateway: str
    online: tuple[str, ...]
    unread: Mapping[str, int]
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
    | Error
    | Notice
    | Pong
    | Bye
)


def _message_dict(m: Message) -> dict[str, Any]:
    d: dict[str, Any] = {
        "type": "message",
        "id": m.id,
        "from": m.from_,
        "to": m.to,
        "text": m.text,
        "ts": m.ts,
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
    return Message(
        id=str(d["id"]),
        from_=str(d["from"]),
        to=str(d["to"]),
        text=str(d["text"]),
        ts=int(d["ts"]),
        reply_to=str(reply_to) if reply_to else None,
        raw=raw,
    )


def dumps(obj: Any) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"


HELP_TEXT: Final = """commands:
  /login <name> <password>      log in (the first login claims the name)
  <text>                        send to #general
  /private to <user> <text>     private message (also /msg <user> <text>)
  /reply <n> <text>             reply to the message shown as [n]
  /history [#room|user] [N]     last N messages of a conversation
  /log [N]                      your own last N messages
  /status                       who you are, who is online, unread counts
  /help                         this text
  /quit                         leave
  //text                        send a line that starts with /"""


# ---------------------------------------------------------------------------
# Parsing helpers shared by both framings
# ---------------------------------------------------------------------------


class _Reject(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _check_text(text: Any, max_text_chars: int, what: str = "text") -> str:
    if not isinstance(text, str):
        raise _Reject("bad_request", f"{what} must be a string")
    if not text.strip():
        raise _Reject("bad_request", f"{what} is empty")
    if len(text) > max_text_chars:
        raise _Reject("too_long", f"{what} is longer than {max_text_chars} characters")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise _Reject("bad_request", f"{what} is not valid Unicode") from None
    return text


def _check_name(name: Any, what: str = "user") -> str:
    if not isinstance(name, str) or not valid_name(name):
        raise _Reject("bad_name", f"{what} must be 1-32 letters, digits, '_', '.' or '-'")
    return name


def _check_target(to: Any) -> str:
    if not isinstance(to, str) or not to:
        raise _Reject("bad_request", "'to' must be '#room' or a user name")
    if to.startswith("#"):
        if not valid_name(to[1:]):
            raise _Reject("bad_name", "room names are '#' and 1-32 letters, digits, '_.-'")
        return to.lower()
    return _check_name(to, "recipient")


def _check_id(value: Any, what: str) -> str:
    if not isinstance(value, str) or not STREAM_ID_RE.fullmatch(value):
        raise _Reject("bad_request", f"{what} must be a message id like 1732190000000-0")
    return value


def _check_limit(value: Any) -> int:
    if value is None:
        return DEFAULT_LIMIT
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise _Reject("bad_request", "limit must be a positive whole number")
    return min(value, MAX_LIMIT)


def _decode_line(line: bytes) -> str:
    try:
        return line.decode("utf-8")
    except UnicodeDecodeError:
        raise _Reject("bad_request", "line is not valid UTF-8") from None


class Codec:
    """Turns one connection's bytes into commands and its events into bytes."""

    framing: Framing

    def __init__(self, max_line_bytes: int = 16_384, max_text_chars: int = 4000) -> None:
        self.max_text_chars = max_text_chars
        self._lines = LineSplitter(max_line_bytes)

    @property
    def buffered(self) -> int:
        return self._lines.buffered

    def feed(self, data: bytes) -> list[Command | Error]:
        out: list[Command | Error] = []
        for line in self._lines.feed(data):
            if line is None:
                limit = self._lines.max_line_bytes
                out.append(Error("too_long", f"line longer than {limit} bytes was dropped"))
                continue
            try:
                out.append(self.parse_line(line))
            except _RejectWithRid as exc:
                out.append(Error(exc.code, exc.message, rid=exc.rid))
            except _Reject as exc:
                out.append(Error(exc.code, exc.message))
        return out

    def parse_line(self, line: bytes) -> Command:
        raise NotImplementedError

    def encode(self, ev: Event) -> bytes:
        raise NotImplementedError


class _RejectWithRid(_Reject):
    def __init__(self, code: str, message: str, rid: Rid) -> None:
        super().__init__(code, message)
        self.rid = rid


# ---------------------------------------------------------------------------
# JSON lines
# ---------------------------------------------------------------------------


class JsonCodec(Codec):
    framing = Framing.JSON

    def parse_line(self, line: bytes) -> Command:
        if not line.strip():
            raise _Reject("bad_request", "empty line; send one JSON object per line")
        try:
            obj = json.loads(_decode_line(line))
        except (ValueError, RecursionError):
            raise _Reject("bad_request", "malformed JSON") from None
        if not isinstance(obj, dict):
            raise _Reject("bad_request", "each line must be a JSON object")
        rid = obj.get("rid")
        if rid is not None and (
            isinstance(rid, bool) or not isinstance(rid, str | int) or len(str(rid)) > MAX_RID_CHARS
        ):
            raise _Reject("bad_request", f"rid must be a string or number of <= {MAX_RID_CHARS}")
        try:
            return self._parse_op(obj, rid)
        except _Reject as exc:
            raise _RejectWithRid(exc.code, exc.message, rid) from None

    def _parse_op(self, obj: dict[str, Any], rid: Rid) -> Command:
        op = obj.get("op")
        if not isinstance(op, str):
            raise _Reject("bad_request", "missing 'op'")
        match op:
            case "login":
                user = _check_name(obj.get("user"))
                password = obj.get("password")
                if not isinstance(password, str) or not password:
                    raise _Reject("bad_request", "'password' must be a non-empty string")
                if len(password) > MAX_PASSWORD_CHARS:
                    raise _Reject("too_long", "password is too long")
                return Login(user, password, self._parse_since(obj.get("since")), rid)
            case "send":
                cid = obj.get("cid")
                if cid is not None and (not isinstance(cid, str) or not 0 < len(cid) <= 64):
                    raise _Reject("bad_request", "'cid' must be a string of 1-64 characters")
                reply_to = obj.get("reply_to")
                return Send(
                    to=_check_target(obj.get("to")),
                    text=_check_text(obj.get("text"), self.max_text_chars),
                    cid=cid,
                    reply_to=None if reply_to is None else _check_id(reply_to, "'reply_to'"),
                    rid=rid,
                )
            case "history":
                before = obj.get("before")
                return GetHistory(
                    with_=_check_target(obj.get("with")),
                    before=None if before is None else _check_id(before, "'before'"),
                    limit=_check_limit(obj.get("limit")),
                    rid=rid,
                )
            case "log":
                return GetLog(_check_limit(obj.get("limit")), rid)
            case "status":
                return GetStatus(rid)
            case "ping":
                return Ping(rid)
            case "quit":
                return Quit(rid)
            case "help":
                return Help(rid)
        raise _Reject("unknown_op", f"unknown op {op[:40]!r}")

    @staticmethod
    def _parse_since(since: Any) -> dict[str, str] | None:
        if since is None:
            return None
        if not isinstance(since, dict) or len(since) > 1000:
            raise _Reject("bad_request", "'since' must be an object {conversation: id}")
        out: dict[str, str] = {}
        for conv, sid in since.items():
            out[_check_target(conv)] = _check_id(sid, "each 'since' value")
        return out

    def encode(self, ev: Event) -> bytes:
        if isinstance(ev, Message) and ev.raw is not None and not ev.replay:
            return ev.raw
        return dumps(event_to_dict(ev))


# ---------------------------------------------------------------------------
# Text lines (people with nc or telnet)
# ---------------------------------------------------------------------------

_SHORT_IDS_KEPT: Final = 1000


class TextCodec(Codec):
    """Text lines for people. Messages are numbered per connection ([12]) so that
    ``/reply 12 ...`` can name one; the last 1000 numbers are remembered."""

    framing = Framing.TEXT

    def __init__(self, max_line_bytes: int = 16_384, max_text_chars: int = 4000) -> None:
        super().__init__(max_line_bytes, max_text_chars)
        self.user: str | None = None
        self.room = "#general"
        self._numbers: OrderedDict[str, int] = OrderedDict()  # stream id -> n
        self._targets: dict[int, tuple[str, str]] = {}  # n -> (conversation, stream id)
        self._next = 1

    # -- reading -------------------------------------------------------------
    def parse_line(self, line: bytes) -> Command:
        text = _decode_line(line)
        if not text.strip():
            raise _Reject("bad_request", "empty line; type a message or /help")
        if text.startswith("//"):
            return Send(self.room, _check_text(text[1:], self.max_text_chars))
        if not text.startswith("/"):
            return Send(self.room, _check_text(text, self.max_text_chars))
        word, _, rest = text[1:].partition(" ")
        rest = rest.strip()
        match word.lower():
            case "login":
                name, _, password = rest.partition(" ")
                if not name or not password.strip():
                    raise _Reject("bad_request", "usage: /login <name> <password>")
                return Login(_check_name(name), password.strip())
            case "private" | "msg" | "m":
                parts = rest.split(" ", 2)
                if word.lower() == "private" and parts and parts[0] == "to":
                    parts = parts[1:]
                else:
                    parts = rest.split(" ", 1)
                if len(parts) < 2 or not parts[1].strip():
                    raise _Reject("bad_request", "usage: /private to <user> <text>")
                return Send(_check_name(parts[0], "recipient"), self._text(parts[1]))
            case "reply" | "r":
                ref, _, body = rest.partition(" ")
                if not ref.isdigit() or not body.strip():
                    raise _Reject("bad_request", "usage: /reply <n> <text>")
                target = self._targets.get(int(ref))
                if target is None:
                    raise _Reject("not_found", f"no message [{ref}] on this screen")
                conversation, sid = target
                return Send(conversation, self._text(body), reply_to=sid)
            case "history":
                with_, limit = self.room, None
                for arg in rest.split():
                    if arg.isdigit():
                        limit = int(arg)
                    else:
                        with_ = _check_target(arg)
                return GetHistory(with_, limit=_check_limit(limit))
            case "log":
                return GetLog(_check_limit(int(rest) if rest.isdigit() else None))
            case "status" | "who":
                return GetStatus()
            case "help" | "?":
                return Help()
            case "quit" | "exit" | "bye":
                return Quit()
            case "ping":
                return Ping()
        raise _Reject("unknown_op", f"unknown command /{printable(word[:40])}; /help lists them")

    def _text(self, text: str) -> str:
        return _check_text(text, self.max_text_chars)

    # -- writing -------------------------------------------------------------
    def _number(self, m: Message) -> int:
        n = self._numbers.get(m.id)
        if n is None:
            n = self._next
            self._next += 1
            self._numbers[m.id] = n
            self._targets[n] = (self._conversation_of(m), m.id)
            if len(self._numbers) > _SHORT_IDS_KEPT:
                _, old = self._numbers.popitem(last=False)
                self._targets.pop(old, None)
        return n

    def _conversation_of(self, m: Message) -> str:
        if m.to.startswith("#"):
            return m.to
        if self.user is not None and m.from_.lower() == self.user.lower():
            return m.to
        return m.from_

    def _message_line(self, m: Message) -> str:
        n = self._number(m)
        clock = time.strftime("%H:%M:%S", time.localtime(m.ts / 1000))
        if m.to == "#general":
            where = ""
        elif m.to.startswith("#"):
            where = f"{m.to} "
        elif self.user is not None and m.from_.lower() == self.user.lower():
            where = f"(private to {m.to}) "
        else:
            where = "(private) "
        reply = ""
        if m.reply_to:
            ref = self._numbers.get(m.reply_to)
            reply = f"(re [{ref}]) " if ref is not None else "(re an earlier message) "
        return f"{clock} [{n}] {where}{m.from_}: {reply}{printable(m.text)}"

    def encode(self, ev: Event) -> bytes:
        lines: list[str]
        match ev:
            case Message():
                lines = [self._message_line(ev)]
            case Ack():
                return b""  # the message itself comes back on the user's own stream
            case Welcome():
                self.user = ev.user
                status = "new name claimed" if ev.new else "welcome back"
                lines = [f"** {ev.user} logged in ({status}) on gateway {ev.gateway}."]
                lines.append(f"** unread: {_unread(ev.unread)}. /help lists commands.")
            case Synced():
                lines = ["** you are up to date"]
            case HistoryResult():
                lines = [f"** history of {ev.with_}: {len(ev.messages)} message(s)"]
                lines += [self._message_line(m) for m in ev.messages]
            case LogResult():
                lines = [f"** your last {len(ev.messages)} message(s)"]
                lines += [self._message_line(m) for m in ev.messages]
            case StatusResult():
                online = ", ".join(ev.online) or "nobody"
                lines = [
                    f"** you are {ev.user} on gateway {ev.gateway}; "
                    f"online ({len(ev.online)}): {online}; unread: {_unread(ev.unread)}"
                ]
            case Error():
                extra = "".join(f"; {k}={v}" for k, v in ev.extra.items())
                lines = [f"!! error ({ev.code}): {printable(ev.message)}{extra}"]
            case Notice():
                lines = [f"** {printable(line)}" for line in ev.text.splitlines() or [""]]
            case Pong():
                lines = ["** pong"]
            case Bye():
                lines = ["** bye"]
        return "".join(line + "\r\n" for line in lines).encode()


def _unread(unread: Mapping[str, int]) -> str:
    parts = [
        f"{n} in {c}" if c.startswith("#") else f"{n} from {c}" for c, n in unread.items() if n
    ]
    return ", ".join(parts) or "none"


def http_not_implemented() -> bytes:
    body = dumps({"type": "error", "code": "unavailable", "message": "HTTP API not available yet"})
    head = (
        "HTTP/1.1 501 Not Implemented\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    )
    return head.encode() + body

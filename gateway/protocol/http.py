"""HTTP/1.1 on the chat port: h11 parses, this module says what a request means.

Pure, like the rest of the package: bytes in, ``HttpRequest``s out; answers in,
bytes out. h11 does the framing (keep-alive, pipelining, ``Content-Length`` and
chunked bodies, HTTP/1.0, ``Connection: close``); this module bounds what a peer
controls (header size and count, body size checked from the headers before the
body is read) and turns routes into the same commands the line framings make.

    HttpCodec        one connection: ``push`` bytes, ``next`` request, ``respond``
    route_of         (method, path) -> what to do, or the 404 / 405 to answer
    command_of       a request's JSON body or query -> a ``Command``, via ``ops``
    status_of        an error code -> its HTTP status
    encode_resume /  the SSE ``id:`` line: {conversation: last id} -> text and back
    parse_resume

A live stream (``GET /events``) is Server-Sent Events on the same connection:
after ``start_stream``, ``encode`` turns each event into one SSE event in an
HTTP chunk, so the session delivers to it as it does to a JSON-lines client.
"""

from __future__ import annotations

import enum
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import parse_qsl, urlsplit

import h11

from gateway.protocol.events import Event, Message, dumps, event_to_dict
from gateway.protocol.framing import Codec, Framing
from gateway.protocol.ops import BY_NAME, Command, Reject, TextContext, parse_json_request
from gateway.protocol.values import MAX_RID_CHARS, is_stream_id, valid_name

__all__ = [
    "MAX_HEADERS",
    "MAX_HEADER_BYTES",
    "MAX_RESUME_CONVERSATIONS",
    "HttpCodec",
    "HttpReject",
    "HttpRequest",
    "Route",
    "RouteKind",
    "command_of",
    "encode_resume",
    "error_body",
    "parse_resume",
    "route_of",
    "status_of",
]

MAX_HEADER_BYTES: Final = 16 * 1024  # the request line and every header together
MAX_HEADERS: Final = 100
MAX_RESUME_CONVERSATIONS: Final = 64  # conversations an SSE id carries, most recent first
SERVER: Final = b"redchat"

_STATUS_OF_CODE: Final = {
    "bad_request": 400,
    "unknown_op": 400,
    "bad_name": 400,
    "too_long": 400,
    "not_logged_in": 401,
    "bad_password": 401,
    "banned": 403,
    "forbidden": 403,
    "not_found": 404,
    "unknown_user": 404,
    "exists": 409,
    "too_large": 413,
    "rate_limited": 429,
    "internal": 500,
    "unavailable": 503,
}
_REASONS: Final = {
    100: b"Continue", 200: b"OK", 204: b"No Content", 400: b"Bad Request",
    401: b"Unauthorized", 403: b"Forbidden", 404: b"Not Found",
    405: b"Method Not Allowed", 408: b"Request Timeout", 409: b"Conflict", 411: b"Length Required",
    413: b"Content Too Large", 415: b"Unsupported Media Type", 429: b"Too Many Requests",
    431: b"Request Header Fields Too Large", 500: b"Internal Server Error",
    501: b"Not Implemented", 503: b"Service Unavailable", 505: b"HTTP Version Not Supported",
}  # fmt: skip


def status_of(code: str) -> int:
    """The HTTP status that fits an error code (400 for one it does not know)."""
    return _STATUS_OF_CODE.get(code, 400)


def error_body(code: str, message: str, **extra: Any) -> dict[str, Any]:
    return {"type": "error", "code": code, "message": message, **extra}


# ---------------------------------------------------------------------------
# Requests
# ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HttpRequest:
    method: str
    path: str
    query: Mapping[str, str]
    headers: Mapping[str, str]  # lower-case names; a repeated header keeps its last value
    body: bytes | bytearray = b""  # as received: a 5 MB upload is not copied

    @property
    def head(self) -> bool:
        return self.method == "HEAD"

    def bearer(self) -> str | None:
        """The token of ``Authorization: Bearer``, or of ``?token=`` (what a browser's
        EventSource, which cannot set headers, has to use)."""
        auth = self.headers.get("authorization", "")
        scheme, _, token = auth.partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
        return self.query.get("token") or None


@dataclass(frozen=True, slots=True)
class HttpReject:
    """A request that cannot be read: answered with ``status``, then the connection
    closes (what follows it on the connection cannot be trusted)."""

    status: int
    code: str
    message: str
    method: str = "-"  # what of the request could be read, for the log
    path: str = "-"
    retry_after: int | None = None


class RouteKind(enum.Enum):
    CONNECT = "connect"  # log in: a token
    DISCONNECT = "disconnect"  # revoke the token
    POLL = "poll"  # GET /messages
    EVENTS = "events"  # GET /events: a live stream
    UPLOAD = "upload"  # POST /files: raw bytes become a file message
    DOWNLOAD = "download"  # GET /files/<fid>
    OP = "op"  # any JSON-lines op, through the same handlers
    STATIC = "static"  # the browser page's files (gateway.web): op is the path


@dataclass(frozen=True, slots=True)
class Route:
    kind: RouteKind
    op: str = ""  # for OP: the JSON-lines op; for DOWNLOAD: the fid
    allow: tuple[str, ...] = ("POST",)  # methods, HEAD and OPTIONS besides
    needs_token: bool = True


_SPECIAL: Final = {
    "/connect": Route(RouteKind.CONNECT, needs_token=False),
    "/login": Route(RouteKind.CONNECT, needs_token=False),
    "/disconnect": Route(RouteKind.DISCONNECT),
    "/logout": Route(RouteKind.DISCONNECT),
    "/quit": Route(RouteKind.DISCONNECT),
    "/messages": Route(RouteKind.POLL, allow=("GET",)),
    "/events": Route(RouteKind.EVENTS, allow=("GET",)),
    "/files": Route(RouteKind.UPLOAD),
    # the seed's reads are GETs with a query; as ops, they are POSTs as well
    "/status": Route(RouteKind.OP, "status", allow=("GET", "POST")),
    "/history": Route(RouteKind.OP, "history", allow=("GET", "POST")),
    "/log": Route(RouteKind.OP, "log", allow=("GET", "POST")),
    # the browser page (gateway/web): one HTML file, one script, one stylesheet
    "/": Route(RouteKind.STATIC, "/", allow=("GET",), needs_token=False),
    "/app.js": Route(RouteKind.STATIC, "/app.js", allow=("GET",), needs_token=False),
    "/app.css": Route(RouteKind.STATIC, "/app.css", allow=("GET",), needs_token=False),
}
_NOT_OPS: Final = {"reply", "switch", "login", "quit"}  # text-only, or a route above


def route_of(path: str) -> Route | None:
    """What ``path`` is (None: 404). Every JSON-lines op is ``POST /<op>``, so an op
    added to ``ops.OPS`` is served here without touching this module."""
    route = _SPECIAL.get(path)
    if route is not None:
        return route
    if path.startswith("/files/") and path.count("/") == 2 and len(path) > 7:
        return Route(RouteKind.DOWNLOAD, path[7:], allow=("GET",), needs_token=False)
    name = path[1:]
    if name in BY_NAME and name not in _NOT_OPS:
        return Route(RouteKind.OP, name)
    return None


def allowed(route: Route) -> list[str]:
    methods = list(route.allow)
    if "GET" in methods:
        methods.append("HEAD")
    return [*methods, "OPTIONS"]


_NUMBERS: Final = {"limit"}  # query fields that are numbers in the JSON form


def command_of(req: HttpRequest, op: str, ctx: TextContext) -> Command:
    """The command a request asks for: its JSON body (a POST) or its query (a GET),
    read by the same table the JSON-lines codec uses. Raises ``Reject``."""
    fields: dict[str, Any]
    if req.method == "POST" and req.body.strip():
        fields = json_body(req)
    else:
        fields = {k: _number(v) if k in _NUMBERS else v for k, v in req.query.items()}
        fields.pop("token", None)
    rid = fields.get("rid")
    if rid is not None and (
        isinstance(rid, bool) or not isinstance(rid, str | int) or len(str(rid)) > MAX_RID_CHARS
    ):
        raise Reject("bad_request", f"rid must be a string or number of <= {MAX_RID_CHARS}")
    fields["op"] = op
    return parse_json_request(fields, ctx, rid)


def _number(text: str) -> int | str:
    """A query's number, or the text as it is (the op's own check then refuses it)."""
    return int(text) if _DIGITS.fullmatch(text) else text


_DIGITS: Final = re.compile(r"[0-9]{1,9}")


def json_body(req: HttpRequest) -> dict[str, Any]:
    """A request's body as a JSON object (an empty body is an empty object)."""
    if not req.body.strip():
        return {}
    try:
        obj = json.loads(req.body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise Reject("bad_request", "the body must be a JSON object") from None
    if not isinstance(obj, dict):
        raise Reject("bad_request", "the body must be a JSON object")
    try:
        dumps(obj)  # lone surrogates (from \\ud800 escapes) cannot be sent back
    except (UnicodeEncodeError, ValueError):
        raise Reject("bad_request", "strings must be valid Unicode (no lone surrogates)") from None
    return obj


# ---------------------------------------------------------------------------
# SSE resume ids
# ---------------------------------------------------------------------------


def encode_resume(positions: Mapping[str, str]) -> str:
    """``#general=1732190000000-0,bob=1732190000001-3``: where each conversation is."""
    return ",".join(f"{conv}={sid}" for conv, sid in positions.items())


def parse_resume(text: str) -> dict[str, str]:
    """A ``Last-Event-ID`` back into {conversation: id}; raises ``Reject``."""
    out: dict[str, str] = {}
    for part in text.strip().split(","):
        if not part:
            continue
        conv, eq, sid = part.rpartition("=")
        name = conv[1:] if conv.startswith("#") else conv
        if not eq or not valid_name(name) or not is_stream_id(sid):
            raise Reject("bad_request", "Last-Event-ID is not an id this server sent")
        out[conv.lower()] = sid
    if len(out) > MAX_RESUME_CONVERSATIONS:
        raise Reject("bad_request", "Last-Event-ID names too many conversations")
    return out


# ---------------------------------------------------------------------------
# One connection
# ---------------------------------------------------------------------------


_CONTROL: Final = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(slots=True)
class _Partial:
    method: str
    target: str
    headers: dict[str, str]
    body: bytearray = field(default_factory=bytearray)
    limit: int = 0


class HttpCodec(Codec):
    """One HTTP connection's parser and answer writer (h11 underneath).

    ``next`` hands out one whole request at a time (the body read in full, within
    the route's limit); the next pipelined request is read only once the answer to
    this one is written with ``respond``. ``must_close`` says the connection ends
    after the answer (``Connection: close``, HTTP/1.0, an unreadable request).
    """

    framing = Framing.HTTP
    login_hint = 'connect first: POST /connect with {"user": ..., "password": ...}'

    def __init__(
        self,
        max_line_bytes: int = 16_384,
        max_text_chars: int = 4000,
        *,
        body_limits: Mapping[str, int] | None = None,
        admit: Callable[[int], bool] | None = None,
    ) -> None:
        super().__init__(max_line_bytes, max_text_chars)
        self.ctx = TextContext(max_text_chars=max_text_chars)
        self.max_body_bytes = max_line_bytes  # a JSON body is one request, like a line
        self.body_limits = dict(body_limits or {})  # path prefix -> its own limit (uploads)
        # An upload's bytes are reserved from a budget before its body is read.
        self.admit = admit
        self._h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEADER_BYTES)
        self._partial: _Partial | None = None
        self._output = bytearray()
        self._in_response = False
        self._head = False  # the request being answered is a HEAD: its answer has no body
        self.must_close = False
        self.streaming = False
        self._user = ""
        self._positions: dict[str, str] = {}

    # -- input ------------------------------------------------------------------
    @property
    def buffered(self) -> int:
        """Bytes received and not parsed yet (a body being read is bounded by its limit)."""
        return len(self._h11.trailing_data[0])

    @property
    def partial(self) -> bool:
        """Part of a request has arrived, and not all of it."""
        return self._partial is not None or bool(self._h11.trailing_data[0])

    @property
    def reading_body(self) -> bool:
        return self._partial is not None

    @property
    def body_limit(self) -> int:
        return self._partial.limit if self._partial is not None else self.max_body_bytes

    def push(self, data: bytes) -> None:
        if data and not self._h11.trailing_data[1]:  # nothing counts after the EOF
            self._h11.receive_data(data)

    def finish(self) -> None:
        self._h11.receive_data(b"")

    def take_output(self) -> bytes:
        """Bytes to write that no answer carries (``100 Continue``)."""
        out, self._output = bytes(self._output), bytearray()
        return out

    def next(self) -> HttpRequest | HttpReject | None:  # type: ignore[override]
        if self._in_response or self.must_close:
            return None
        while True:
            try:
                event = self._h11.next_event()
            except h11.RemoteProtocolError as exc:
                return self._reject(exc.error_status_hint, str(exc))
            if event is h11.NEED_DATA or event is h11.PAUSED:
                return None
            if isinstance(event, h11.ConnectionClosed):
                self.must_close = True
                return None
            if isinstance(event, h11.Request):
                got = self._begin(event)
                if got is not None:
                    return got
            elif isinstance(event, h11.Data):
                assert self._partial is not None
                if len(self._partial.body) + len(event.data) > self._partial.limit:
                    return self._too_large(self._partial.limit)
                self._partial.body += event.data
            elif isinstance(event, h11.EndOfMessage):
                return self._complete()

    def _begin(self, event: h11.Request) -> HttpReject | None:
        self._head = event.method == b"HEAD"  # before any refusal: its answer has no body
        if len(event.headers) > MAX_HEADERS:
            return self._reject(431, f"more than {MAX_HEADERS} headers")
        # h11 bounds the block only while it waits for its end; a whole one can be longer.
        size = len(event.method) + len(event.target) + 12
        size += sum(len(k) + len(v) + 4 for k, v in event.headers)
        if size > MAX_HEADER_BYTES:
            return self._reject(431, f"request line and headers over {MAX_HEADER_BYTES} bytes")
        if event.http_version not in (b"1.0", b"1.1"):
            return self._reject(505, "only HTTP/1.0 and HTTP/1.1 are spoken here")
        try:
            method = event.method.decode("ascii")
            target = event.target.decode("ascii")
            headers = {k.decode("ascii"): v.decode("latin-1") for k, v in event.headers}
        except UnicodeDecodeError:
            return self._reject(400, "the request line and header names must be ASCII")
        path = urlsplit(target).path
        limit, upload = self.max_body_bytes, False
        for prefix in sorted(self.body_limits, key=len):  # the longest match wins
            if path == prefix or path.startswith(prefix.rstrip("/") + "/"):
                limit, upload = self.body_limits[prefix], True
        length = headers.get("content-length")
        if length is not None and int(length) > limit:  # h11 checked it is a number
            return self._too_large(limit, method, path)  # answered now, the body never read
        wants = int(length) if length is not None else limit
        if upload and method == "POST" and self.admit is not None and not self.admit(wants):
            message = "too many uploads in progress here; retry shortly"
            return self._reject(503, message, "unavailable", method, path, retry_after=1)
        self._partial = _Partial(method, target, headers, limit=limit)
        if self._h11.they_are_waiting_for_100_continue:
            self._output += self._h11.send(h11.InformationalResponse(status_code=100, headers=[]))
        return None

    def _complete(self) -> HttpRequest | HttpReject:
        partial, self._partial = self._partial, None
        assert partial is not None
        self._in_response = True
        split = urlsplit(partial.target)
        try:
            query = dict(parse_qsl(split.query, keep_blank_values=True, errors="strict"))
        except (UnicodeDecodeError, ValueError):
            return self._reject(400, "the query is not valid UTF-8")
        return HttpRequest(partial.method, split.path or "/", query, partial.headers, partial.body)

    def _too_large(self, limit: int, method: str = "-", path: str = "-") -> HttpReject:
        message = f"the body is over the limit of {limit} bytes"
        return self._reject(413, message, "too_large", method, path)

    def _reject(
        self, status: int, message: str, code: str = "bad_request", method: str = "-",
        path: str = "-", retry_after: int | None = None,
    ) -> HttpReject:  # fmt: skip
        self._partial = None
        self.must_close = True
        self._in_response = True
        message = _CONTROL.sub(" ", message)[:200]
        code = "too_large" if status == 413 else code
        return HttpReject(status, code, message, method, path, retry_after)

    # -- output -----------------------------------------------------------------
    def respond(
        self,
        status: int,
        body: Mapping[str, Any] | bytes | None,
        *,
        head: bool = False,
        content_type: str = "application/json",
        headers: Mapping[str, str] | None = None,
        close: bool = False,
    ) -> bytes:
        """The whole answer to the request ``next`` gave; the next one may then be read."""
        data = body if isinstance(body, bytes) or body is None else dumps(dict(body))
        if data is None or status in (204, 304):
            data = b""  # these answers have no body
        fields = [(b"server", SERVER)]
        if data or status not in (204, 304):
            fields.append((b"content-type", content_type.encode()))
            fields.append((b"content-length", str(len(data)).encode()))
        for name, value in (headers or {}).items():
            fields.append((name.encode(), value.encode("latin-1")))
        # an answer given before the body was read ends the connection
        close = close or self.must_close or self._h11.their_state is not h11.DONE
        if close:
            fields.append((b"connection", b"close"))
        head = head or self._head  # whoever answers, a HEAD gets no body
        out = self._send_response(status, fields)
        if out is None:
            return self._raw_response(status, fields, b"" if head else data)
        if data and not head:
            out += self._h11.send(h11.Data(data=data))
        out += self._h11.send(h11.EndOfMessage())
        self._end_cycle(close)
        return out

    def _send_response(self, status: int, fields: list[tuple[bytes, bytes]]) -> bytes | None:
        """The status line and headers through h11, or None when h11 cannot send an
        answer any more (the request was unreadable): then it is written by hand."""
        if self._h11.our_state is not h11.SEND_RESPONSE:
            return None
        try:
            return self._h11.send(
                h11.Response(status_code=status, headers=fields, reason=_REASONS.get(status, b""))
            )
        except h11.LocalProtocolError:
            return None

    def _raw_response(self, status: int, fields: list[tuple[bytes, bytes]], data: bytes) -> bytes:
        self.must_close = True
        self._in_response = True
        if (b"connection", b"close") not in fields:
            fields.append((b"connection", b"close"))
        head = b"HTTP/1.1 %d %s\r\n" % (status, _REASONS.get(status, b""))
        head += b"".join(b"%s: %s\r\n" % (k, v) for k, v in fields)
        return head + b"\r\n" + data

    def _end_cycle(self, close: bool) -> None:
        if close or self._h11.our_state is h11.MUST_CLOSE or self._h11.their_state is not h11.DONE:
            self.must_close = True  # the client may still be sending a body never read
            return
        try:
            self._h11.start_next_cycle()
        except h11.LocalProtocolError:
            self.must_close = True
            return
        self._in_response = False
        self._head = False

    # -- an answer in parts (a download) -----------------------------------------------
    def begin_answer(self, status: int, headers: Mapping[str, str], length: int) -> bytes:
        """The status line and headers of an answer whose ``length`` bytes of body
        follow through ``answer_part`` (nothing for a HEAD), then ``end_answer``."""
        fields = [(b"server", SERVER), (b"content-length", str(length).encode())]
        fields += [(k.encode(), v.encode("latin-1")) for k, v in headers.items()]
        if self.must_close:
            fields.append((b"connection", b"close"))
        out = self._send_response(status, fields)
        assert out is not None, "a request just read can be answered"
        return out

    def answer_part(self, data: bytes) -> bytes:
        return self._h11.send(h11.Data(data=data))

    def end_answer(self) -> bytes:
        out = self._h11.send(h11.EndOfMessage())
        self._end_cycle(False)
        return out

    # -- a live stream ---------------------------------------------------------------
    def start_stream(self, user: str, resume: Mapping[str, str], *, head: bool = False) -> bytes:
        """Answer ``GET /events``: the headers of an endless ``text/event-stream``.
        ``resume`` is where the stream starts ({conversation: id}), carried on."""
        fields = [
            (b"server", SERVER),
            (b"content-type", b"text/event-stream; charset=utf-8"),
            (b"cache-control", b"no-store"),
            (b"x-accel-buffering", b"no"),  # no proxy may hold events back
        ]
        out = self._send_response(200, fields)
        assert out is not None, "a request just read can be answered"
        if head:  # the GET's headers (h11 frames a HEAD's answer as the GET's), no body
            out += self._h11.send(h11.EndOfMessage())
            self._end_cycle(False)
            return out
        self.streaming = True
        self._user = user.lower()
        self._positions = dict(resume)
        return out + self._chunk(b"retry: 2000\n\n")

    def encode(self, ev: Event) -> bytes:
        """One SSE event in an HTTP chunk; a ``message`` carries an ``id:`` line that
        resumes the stream after it. Nothing before the stream starts: HTTP does not
        push."""
        if not self.streaming:
            return b""
        if isinstance(ev, Message):
            data = (ev.raw or b"").rstrip(b"\n") if not ev.replay else b""
            data = data or dumps(event_to_dict(ev)).rstrip(b"\n")
            self._moved(ev)
            text = b"id: %s\ndata: %s\n\n" % (
                encode_resume(self._positions).encode(),
                data,
            )
            return self._chunk(text)
        return self._chunk(b"data: %s\n\n" % dumps(event_to_dict(ev)).rstrip(b"\n"))

    def comment(self, text: str = "keep-alive") -> bytes:
        """A heartbeat: ignored by every SSE reader, it keeps proxies from closing."""
        return self._chunk(b": %s\n\n" % text.encode()) if self.streaming else b""

    def end_stream(self) -> bytes:
        if not self.streaming:
            return b""
        self.streaming = False
        self.must_close = True
        try:
            return self._h11.send(h11.EndOfMessage())
        except h11.LocalProtocolError:
            return b""

    def _moved(self, msg: Message) -> None:
        to = msg.to.lower()
        conv = msg.from_.lower() if to == self._user else to  # a room's name starts with '#'
        self._positions.pop(conv, None)
        self._positions[conv] = msg.id
        while len(self._positions) > MAX_RESUME_CONVERSATIONS:
            del self._positions[next(iter(self._positions))]

    def _chunk(self, data: bytes) -> bytes:
        try:
            return self._h11.send(h11.Data(data=data))
        except h11.LocalProtocolError:
            return b""

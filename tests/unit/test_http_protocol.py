"""HTTP/1.1 on the chat port, the pure layer: bytes in, requests out; answers in, bytes out.

Everything here is byte level, with no socket: ``HttpCodec`` is fed raw requests (whole,
byte by byte, pipelined, split at random) and what it writes is read back by an h11
*client*, so a malformed answer fails the test rather than passing a string compare.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import h11
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.protocol.events import Message, Notice, Pong, event_to_dict, message_from_dict
from gateway.protocol.http import (
    MAX_HEADER_BYTES,
    MAX_HEADERS,
    MAX_RESUME_CONVERSATIONS,
    HttpCodec,
    HttpReject,
    HttpRequest,
    Route,
    RouteKind,
    allowed,
    command_of,
    encode_resume,
    error_body,
    json_body,
    parse_resume,
    route_of,
    status_of,
)
from gateway.protocol.ops import (
    OPS,
    GetHistory,
    GetStatus,
    Join,
    Reject,
    Send,
    TextContext,
)

CTX = TextContext(max_text_chars=4000)
LIMIT = 1000  # the body limit of the codecs below (HttpCodec's first argument)


# ---------------------------------------------------------------------------
# Helpers: raw requests in, parsed answers out
# ---------------------------------------------------------------------------


def raw(
    method: str = "GET",
    target: str = "/status",
    headers: Iterable[tuple[str, str]] = (),
    body: bytes = b"",
    *,
    version: str = "1.1",
    host: bool = True,
) -> bytes:
    """One request as a client writes it (``Content-Length`` only when given)."""
    head = f"{method} {target} HTTP/{version}\r\n"
    if host:
        head += "Host: chat.example\r\n"
    head += "".join(f"{name}: {value}\r\n" for name, value in headers)
    return head.encode("latin-1") + b"\r\n" + body


def post(target: str, body: bytes, *extra: tuple[str, str]) -> bytes:
    return raw("POST", target, [("Content-Length", str(len(body))), *extra], body)


def chunked(*pieces: bytes) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"


def read_one(data: bytes, limit: int = LIMIT) -> tuple[HttpCodec, HttpRequest | HttpReject | None]:
    codec = HttpCodec(limit)
    codec.push(data)
    return codec, codec.next()


def request_of(data: bytes, limit: int = LIMIT) -> HttpRequest:
    _, got = read_one(data, limit)
    assert isinstance(got, HttpRequest), got
    return got


@dataclass
class Answer:
    status: int
    headers: dict[str, str]  # lower-case names
    body: bytes
    complete: bool  # the answer's end (EndOfMessage) was in the bytes
    informational: list[int] = field(default_factory=list)
    chunks: list[bytes] = field(default_factory=list)


def parse_answer(data: bytes, method: bytes = b"GET") -> Answer:
    """Read what the server wrote with an h11 client (which raises on bad framing)."""
    client = h11.Connection(h11.CLIENT)
    client.send(h11.Request(method=method, target=b"/", headers=[(b"host", b"x")]))
    client.send(h11.EndOfMessage())
    client.receive_data(data)
    answer: Answer | None = None
    informational: list[int] = []
    while True:
        event = client.next_event()
        if event is h11.NEED_DATA or event is h11.PAUSED:
            break
        if isinstance(event, h11.InformationalResponse):
            informational.append(event.status_code)
        elif isinstance(event, h11.Response):
            headers = {k.decode(): v.decode("latin-1") for k, v in event.headers}
            answer = Answer(event.status_code, headers, b"", False, informational)
        elif isinstance(event, h11.Data):
            assert answer is not None
            answer.body += event.data
            answer.chunks.append(bytes(event.data))
        elif isinstance(event, h11.EndOfMessage):
            assert answer is not None
            answer.complete = True
            break
    if answer is None:
        return Answer(0, {}, b"", False, informational)
    return answer


def unchunk(data: bytes) -> list[bytes]:
    """HTTP chunks, strictly: ``<hex size>\\r\\n<payload>\\r\\n``, each."""
    out: list[bytes] = []
    while data:
        size_line, sep, rest = data.partition(b"\r\n")
        assert sep, data
        assert re.fullmatch(rb"[0-9a-f]+", size_line), size_line
        size = int(size_line, 16)
        assert rest[size : size + 2] == b"\r\n", data
        out.append(rest[:size])
        data = rest[size + 2 :]
    return out


def sse_fields(chunk: bytes) -> list[tuple[str, str]]:
    """One SSE event's lines as (field, value); a comment is ("", text)."""
    text = chunk.decode("utf-8")
    assert text.endswith("\n\n"), text
    body = text[:-2]
    assert "\n\n" not in body and "\r" not in body
    out = []
    for line in body.split("\n"):
        name, sep, value = line.partition(":")
        assert sep, line
        out.append((name, value.removeprefix(" ")))
    return out


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    pieces, pos = [], 0
    for size in cuts:
        if pos >= len(data):
            break
        pieces.append(data[pos : pos + size])
        pos += size
    if pos < len(data):
        pieces.append(data[pos:])
    return pieces


def pump(codec: HttpCodec, seen: list[HttpRequest | HttpReject], out: bytearray) -> None:
    """Take every request the codec hands out and answer it, as the session does."""
    while True:
        item = codec.next()
        out += codec.take_output()
        if item is None:
            return
        assert isinstance(item, HttpRequest | HttpReject), item
        seen.append(item)
        if isinstance(item, HttpReject):
            assert codec.must_close
            assert 400 <= item.status < 600
            answer = codec.respond(item.status, error_body(item.code, item.message))
            assert answer.startswith(b"HTTP/1.1 %d " % item.status), answer[:40]
            assert codec.must_close
            assert codec.next() is None  # nothing after an unreadable request
        else:
            answer = codec.respond(200, {"type": "ok"}, head=item.head)
            assert answer.startswith(b"HTTP/1.1 200 OK\r\n"), answer[:40]
        out += answer


def drive(
    pieces: Iterable[bytes], limit: int = LIMIT
) -> tuple[list[HttpRequest | HttpReject], bytes]:
    codec = HttpCodec(limit)
    seen: list[HttpRequest | HttpReject] = []
    out = bytearray()
    for piece in pieces:
        codec.push(piece)
        pump(codec, seen, out)
    codec.finish()
    pump(codec, seen, out)
    assert codec.next() is None
    assert codec.must_close  # the peer is gone, or the connection was to close anyway
    return seen, bytes(out)


# ---------------------------------------------------------------------------
# 1. Reading requests: whole, byte by byte, pipelined
# ---------------------------------------------------------------------------

GET_HISTORY = raw(
    "GET",
    "/history?with=%23general&limit=5&empty=&q=a%20b",
    [("X-Custom-Thing", "Some Value"), ("Authorization", "Bearer tok123"), ("ACCEPT", "*/*")],
)


def test_a_whole_get_is_one_request() -> None:
    codec, got = read_one(GET_HISTORY)
    assert isinstance(got, HttpRequest)
    assert got.method == "GET"
    assert got.path == "/history"
    assert dict(got.query) == {"with": "#general", "limit": "5", "empty": "", "q": "a b"}
    assert dict(got.headers) == {
        "host": "chat.example",
        "x-custom-thing": "Some Value",
        "authorization": "Bearer tok123",
        "accept": "*/*",
    }
    assert got.body == b""
    assert not got.head
    assert got.bearer() == "tok123"
    assert not codec.must_close
    assert codec.next() is None  # one request, handed out once


def test_byte_by_byte_gives_the_same_request() -> None:
    whole = request_of(GET_HISTORY)
    codec = HttpCodec(LIMIT)
    got: list[HttpRequest | HttpReject] = []
    for i in range(len(GET_HISTORY)):
        codec.push(GET_HISTORY[i : i + 1])
        item = codec.next()
        if i < len(GET_HISTORY) - 1:
            assert item is None, f"handed out at byte {i}"
            assert codec.partial
        if item is not None:
            got.append(item)
    assert got == [whole]


def test_pipelined_request_waits_for_the_answer_to_the_first() -> None:
    second = raw("GET", "/log?limit=3")
    codec, first = read_one(GET_HISTORY + second)
    assert isinstance(first, HttpRequest) and first.path == "/history"
    assert codec.next() is None  # not before the first is answered
    assert codec.next() is None
    answer = codec.respond(200, {"type": "history"})
    assert parse_answer(answer).status == 200
    got = codec.next()
    assert isinstance(got, HttpRequest)
    assert (got.path, dict(got.query)) == ("/log", {"limit": "3"})
    assert codec.next() is None


def test_a_repeated_header_keeps_its_last_value() -> None:
    got = request_of(raw("GET", "/status?x=1&x=2", [("X-A", "one"), ("x-a", "two")]))
    assert got.headers["x-a"] == "two"
    assert got.query["x"] == "2"


def test_header_values_are_latin_1_and_stripped() -> None:
    got = request_of(raw("GET", "/status", [("X-A", "  caf\xe9  ")]))
    assert got.headers["x-a"] == "caf\xe9"


@pytest.mark.parametrize(
    ("auth", "query", "expected"),
    [
        ("Bearer abc", "", "abc"),
        ("bearer   abc  ", "", "abc"),
        ("Basic abc", "", None),
        ("Basic abc", "?token=q1", "q1"),
        ("Bearer x", "?token=q1", "x"),  # the header wins
        (None, "?token=q1", "q1"),
        (None, "?token=", None),
        ("Bearer ", "", None),
    ],
)
def test_bearer_token(auth: str | None, query: str, expected: str | None) -> None:
    headers = [] if auth is None else [("Authorization", auth)]
    assert request_of(raw("GET", "/events" + query, headers)).bearer() == expected


def test_absolute_form_target_gives_its_path() -> None:
    got = request_of(raw("GET", "http://chat.example/status?x=1"))
    assert (got.path, dict(got.query)) == ("/status", {"x": "1"})


def test_a_query_that_is_not_utf8_is_rejected() -> None:
    codec, got = read_one(raw("GET", "/history?with=%ff"))
    assert isinstance(got, HttpReject)
    assert (got.status, got.code) == (400, "bad_request")
    assert codec.must_close


# ---------------------------------------------------------------------------
# 2. Bodies
# ---------------------------------------------------------------------------


def test_content_length_body_split_over_many_pushes() -> None:
    body = json.dumps({"to": "#general", "text": "x" * 300}).encode()
    data = post("/send", body)
    head_end = data.index(b"\r\n\r\n") + 4
    codec = HttpCodec(LIMIT)
    codec.push(data[:head_end])
    assert codec.next() is None
    assert codec.reading_body and codec.body_limit == LIMIT
    for i in range(head_end, len(data), 7):
        assert codec.next() is None
        codec.push(data[i : i + 7])
    got = codec.next()
    assert isinstance(got, HttpRequest)
    assert (got.method, got.path, got.body) == ("POST", "/send", body)
    assert not codec.reading_body


@pytest.mark.parametrize("step", [1, 2, 3, 5, 8, 13])
def test_chunked_body_split_across_chunk_boundaries(step: int) -> None:
    pieces = [b"hello", b" ", b"chunked", b" world" * 10, b"!"]
    data = raw("POST", "/send", [("Transfer-Encoding", "chunked")], chunked(*pieces))
    codec = HttpCodec(LIMIT)
    got: list[HttpRequest | HttpReject] = []
    for i in range(0, len(data), step):
        codec.push(data[i : i + step])
        item = codec.next()
        if item is not None:
            got.append(item)
    assert len(got) == 1
    assert isinstance(got[0], HttpRequest)
    assert got[0].body == b"".join(pieces)
    assert got[0].headers["transfer-encoding"] == "chunked"


def test_a_body_of_exactly_the_limit_is_read() -> None:
    body = b"y" * LIMIT
    got = request_of(post("/send", body))
    assert got.body == body


# ---------------------------------------------------------------------------
# 3. Bodies over the limit
# ---------------------------------------------------------------------------


def test_content_length_over_the_limit_is_413_before_the_body() -> None:
    codec = HttpCodec(LIMIT)
    codec.push(raw("POST", "/send", [("Content-Length", str(LIMIT + 1))]))  # headers only
    got = codec.next()
    assert isinstance(got, HttpReject)
    assert (got.status, got.code) == (413, "too_large")
    assert str(LIMIT) in got.message
    assert codec.must_close
    answer = codec.respond(got.status, error_body(got.code, got.message))
    parsed = parse_answer(answer)
    assert parsed.status == 413
    assert parsed.headers["connection"] == "close"
    assert json.loads(parsed.body)["code"] == "too_large"
    codec.push(b"z" * (LIMIT + 1))  # the body arrives after all: never read
    assert codec.next() is None


def test_a_smaller_limit_from_the_constructor() -> None:
    _, got = read_one(post("/send", b"x" * 11), limit=10)
    assert isinstance(got, HttpReject) and got.status == 413


def test_chunked_body_growing_over_the_limit_is_413() -> None:
    codec = HttpCodec(LIMIT)
    codec.push(raw("POST", "/send", [("Transfer-Encoding", "chunked")]))
    assert codec.next() is None
    half = b"a" * (LIMIT // 2 + 1)
    codec.push(b"%x\r\n%s\r\n" % (len(half), half))
    assert codec.next() is None  # still within the limit
    assert not codec.must_close
    codec.push(b"%x\r\n%s\r\n" % (len(half), half))
    got = codec.next()
    assert isinstance(got, HttpReject)
    assert (got.status, got.code) == (413, "too_large")
    assert codec.must_close
    parsed = parse_answer(codec.respond(413, error_body(got.code, got.message)))
    assert (parsed.status, parsed.headers["connection"]) == (413, "close")


def test_body_limits_per_path_prefix() -> None:
    limits = {"/files": 5000}
    big = b"f" * 4000
    codec = HttpCodec(LIMIT, body_limits=limits)
    codec.push(raw("POST", "/files?to=bob&name=a.bin", [("Content-Length", str(len(big)))]))
    assert codec.next() is None
    assert codec.body_limit == 5000
    codec.push(big)
    got = codec.next()
    assert isinstance(got, HttpRequest) and got.body == big
    # the prefix covers paths under it, and its limit still holds
    codec = HttpCodec(LIMIT, body_limits=limits)
    codec.push(raw("POST", "/files/abc", [("Content-Length", "5001")]))
    over = codec.next()
    assert isinstance(over, HttpReject) and over.status == 413 and "5000" in over.message
    # other paths keep the default
    codec = HttpCodec(LIMIT, body_limits=limits)
    codec.push(raw("POST", "/send", [("Content-Length", "4000")]))
    other = codec.next()
    assert isinstance(other, HttpReject) and other.status == 413 and "1000" in other.message


def test_body_limits_can_be_smaller_than_the_default() -> None:
    codec = HttpCodec(LIMIT, body_limits={"/tiny": 4})
    codec.push(post("/tiny", b"12345"))
    got = codec.next()
    assert isinstance(got, HttpReject) and got.status == 413
    codec = HttpCodec(LIMIT, body_limits={"/tiny": 4})
    codec.push(raw("POST", "/tiny", [("Transfer-Encoding", "chunked")], chunked(b"123", b"45")))
    got = codec.next()
    assert isinstance(got, HttpReject) and got.status == 413


# ---------------------------------------------------------------------------
# 4. Header bounds and garbage
# ---------------------------------------------------------------------------


def test_an_unfinished_header_block_over_the_bound_is_431() -> None:
    data = raw("GET", "/status", [("X-Big", "b" * (2 * MAX_HEADER_BYTES))])
    codec = HttpCodec(LIMIT)
    got: HttpRequest | HttpReject | None = None
    for i in range(0, len(data), 1024):  # as it arrives from a socket, read after each push
        codec.push(data[i : i + 1024])
        got = codec.next()
        if got is not None:
            break
    assert isinstance(got, HttpReject)
    assert got.status == 431
    assert codec.must_close
    parsed = parse_answer(codec.respond(got.status, error_body(got.code, got.message)))
    assert parsed.status == 431
    assert parsed.headers["connection"] == "close"


def test_a_whole_header_block_over_the_bound_is_431() -> None:
    data = raw("GET", "/status", [("X-Big", "b" * (MAX_HEADER_BYTES + 100))])
    _, got = read_one(data)
    assert isinstance(got, HttpReject)
    assert got.status == 431


def test_header_count_bound() -> None:
    # Host is one of them: MAX_HEADERS in all is read, one more is 431
    ok = [(f"X-H{i}", "v") for i in range(MAX_HEADERS - 1)]
    got = request_of(raw("GET", "/status", ok))
    assert len(got.headers) == MAX_HEADERS
    codec, over = read_one(raw("GET", "/status", [*ok, ("X-One-More", "v")]))
    assert isinstance(over, HttpReject)
    assert over.status == 431
    assert codec.must_close


def test_duplicate_headers_count_towards_the_bound() -> None:
    same = [("X-Same", str(i)) for i in range(MAX_HEADERS)]
    _, over = read_one(raw("GET", "/status", same))
    assert isinstance(over, HttpReject) and over.status == 431


GARBAGE = [
    b"GET  HTTP/1.1\r\n\r\n",
    b"GET / HTTP/1.1\r\n\r\n",  # HTTP/1.1 without Host
    b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    b"\x00\x01\x02\x03\r\n\r\n",
    b"\r\n\r\n",
    b"GET /\xff HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nno colon here\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nX: a\x00b\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nX :a\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: " + b"9" * 5000 + b"\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcXY",
    b"GET /?a=%ff%fe HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET / HTTP/1\r\nHost: x\r\n\r\n",
    b"G\xc3\x89T / HTTP/1.1\r\nHost: x\r\n\r\n",
]


@pytest.mark.parametrize("data", GARBAGE, ids=lambda d: repr(d[:40]))
def test_garbage_is_a_4xx_reject_never_an_exception(data: bytes) -> None:
    codec, got = read_one(data)
    assert isinstance(got, HttpReject), got
    assert 400 <= got.status < 500
    assert got.code in ("bad_request", "too_large")
    assert not re.search(r"[\x00-\x1f\x7f]", got.message)  # safe to log and to send back
    assert len(got.message) <= 200
    assert codec.must_close
    assert codec.next() is None
    answer = codec.respond(got.status, error_body(got.code, got.message))
    assert answer.startswith(b"HTTP/1.1 %d " % got.status)
    parsed = parse_answer(answer)
    assert parsed.status == got.status and parsed.complete
    assert parsed.headers["connection"] == "close"
    assert json.loads(parsed.body) == error_body(got.code, got.message)
    assert int(parsed.headers["content-length"]) == len(parsed.body)
    assert codec.next() is None


@pytest.mark.parametrize("data", GARBAGE, ids=lambda d: repr(d[:40]))
def test_garbage_byte_by_byte_is_rejected_too(data: bytes) -> None:
    seen, _ = drive(data[i : i + 1] for i in range(len(data)))
    assert len(seen) == 1
    assert isinstance(seen[0], HttpReject) and 400 <= seen[0].status < 500


def test_an_unsupported_transfer_encoding_is_501() -> None:
    codec, got = read_one(raw("POST", "/send", [("Transfer-Encoding", "gzip")]))
    assert isinstance(got, HttpReject)
    assert got.status == 501
    assert codec.must_close


@pytest.mark.parametrize("version", ["9.9", "2.0", "3.0"])
def test_an_unknown_http_version_is_refused(version: str) -> None:
    _, got = read_one(raw("GET", "/status", version=version, host=False))
    assert isinstance(got, HttpReject)
    assert got.status in (400, 505)


# ---------------------------------------------------------------------------
# 5. Answers
# ---------------------------------------------------------------------------


def test_respond_writes_status_line_length_and_json() -> None:
    codec, got = read_one(raw("GET", "/status"))
    assert isinstance(got, HttpRequest)
    body = {"type": "status", "user": "alice", "text": "caf\xe9 \u2603"}
    answer = codec.respond(200, body)
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n")
    parsed = parse_answer(answer)
    assert parsed.status == 200 and parsed.complete
    assert parsed.headers["content-type"] == "application/json"
    assert int(parsed.headers["content-length"]) == len(parsed.body)
    assert answer.endswith(parsed.body)
    assert json.loads(parsed.body) == body
    assert "connection" not in parsed.headers
    assert not codec.must_close


@pytest.mark.parametrize(
    ("status", "reason"),
    [(400, b"Bad Request"), (401, b"Unauthorized"), (404, b"Not Found"),
     (405, b"Method Not Allowed"), (413, b"Content Too Large"), (429, b"Too Many Requests"),
     (503, b"Service Unavailable")],
)  # fmt: skip
def test_respond_error_status_lines(status: int, reason: bytes) -> None:
    codec, _ = read_one(raw("GET", "/status"))
    answer = codec.respond(status, error_body("x", "y"), headers={"Retry-After": "7"})
    assert answer.startswith(b"HTTP/1.1 %d %s\r\n" % (status, reason))
    parsed = parse_answer(answer)
    assert parsed.status == status
    assert parsed.headers["retry-after"] == "7"
    assert json.loads(parsed.body) == {"type": "error", "code": "x", "message": "y"}


def test_respond_with_raw_bytes_and_a_content_type() -> None:
    codec, _ = read_one(raw("GET", "/files/abc"))
    data = bytes(range(256))
    parsed = parse_answer(codec.respond(200, data, content_type="application/octet-stream"))
    assert parsed.body == data
    assert parsed.headers["content-type"] == "application/octet-stream"
    assert parsed.headers["content-length"] == "256"


def test_head_gets_the_gets_headers_and_no_body() -> None:
    body = {"type": "status", "online": ["bob", "carol"]}
    get_codec, _ = read_one(raw("GET", "/status"))
    get_answer = parse_answer(get_codec.respond(200, body))
    codec, got = read_one(raw("HEAD", "/status") + raw("GET", "/log"))
    assert isinstance(got, HttpRequest) and got.head
    answer = codec.respond(200, body, head=got.head)
    _, sep, after = answer.partition(b"\r\n\r\n")
    assert sep and after == b""  # headers only
    parsed = parse_answer(answer, method=b"HEAD")
    assert parsed.status == 200 and parsed.complete
    assert parsed.headers["content-length"] == get_answer.headers["content-length"]
    assert int(parsed.headers["content-length"]) == len(get_answer.body) > 0
    assert not codec.must_close
    nxt = codec.next()  # keep-alive: the pipelined GET follows
    assert isinstance(nxt, HttpRequest) and nxt.path == "/log"


def test_close_true_closes() -> None:
    codec, _ = read_one(raw("GET", "/status") + raw("GET", "/log"))
    parsed = parse_answer(codec.respond(200, {"type": "ok"}, close=True))
    assert parsed.headers["connection"] == "close"
    assert codec.must_close
    assert codec.next() is None  # the pipelined request is never read


def test_a_connection_close_request_closes() -> None:
    codec, got = read_one(raw("GET", "/status", [("Connection", "close")]) + raw("GET", "/log"))
    assert isinstance(got, HttpRequest)
    parsed = parse_answer(codec.respond(200, {"type": "ok"}))
    assert parsed.headers["connection"].lower() == "close"
    assert codec.must_close
    assert codec.next() is None


def test_an_http_1_0_request_closes() -> None:
    codec, got = read_one(raw("GET", "/status", version="1.0", host=False) + raw("GET", "/log"))
    assert isinstance(got, HttpRequest) and got.path == "/status"
    answer = codec.respond(200, {"type": "ok"})
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n")
    parsed = parse_answer(answer)
    assert parsed.headers["connection"].lower() == "close"
    assert json.loads(parsed.body) == {"type": "ok"}
    assert codec.must_close
    assert codec.next() is None


def test_keep_alive_reads_request_after_request() -> None:
    paths = [f"/p{i}" for i in range(5)]
    codec = HttpCodec(LIMIT)
    codec.push(b"".join(raw("GET", p) for p in paths))
    got = []
    while (item := codec.next()) is not None:
        assert isinstance(item, HttpRequest)
        got.append(item.path)
        parsed = parse_answer(codec.respond(200, {"n": len(got)}))
        assert "connection" not in parsed.headers
        assert not codec.must_close
    assert got == paths


def test_a_timeout_answer_mid_headers_closes() -> None:
    # what the session writes when a request does not arrive in time (408)
    codec = HttpCodec(LIMIT)
    codec.push(b"POST /send HTTP/1.1\r\nHost: x\r\nContent-Le")
    assert codec.next() is None and codec.partial and not codec.reading_body
    answer = codec.respond(408, error_body("timeout", "request not received in time"))
    assert answer.startswith(b"HTTP/1.1 408 Request Timeout\r\n")
    parsed = parse_answer(answer)
    assert (parsed.status, parsed.headers["connection"]) == (408, "close")
    assert json.loads(parsed.body)["code"] == "timeout"
    assert codec.must_close
    assert codec.next() is None


def _timeout_mid_body() -> tuple[HttpCodec, Answer]:
    codec = HttpCodec(LIMIT)
    codec.push(raw("POST", "/send", [("Content-Length", "10")], b"abc"))
    assert codec.next() is None and codec.reading_body
    answer = codec.respond(408, error_body("timeout", "request not received in time"))
    return codec, parse_answer(answer)


def test_a_timeout_answer_mid_body_closes() -> None:
    codec, parsed = _timeout_mid_body()
    assert parsed.status == 408 and parsed.complete
    assert codec.must_close  # the rest of the body is never read
    assert codec.next() is None


def test_a_timeout_answer_mid_body_says_close() -> None:
    _, parsed = _timeout_mid_body()
    assert parsed.headers.get("connection") == "close"


@pytest.mark.parametrize(
    "data",
    [b"GET  HTTP/1.1\r\n\r\n", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n"],
)
def test_answer_to_an_unreadable_request_is_well_formed(data: bytes) -> None:
    codec, got = read_one(data)
    assert isinstance(got, HttpReject)
    body = error_body(got.code, got.message)
    answer = codec.respond(got.status, body)
    assert re.match(rb"HTTP/1\.1 %d [A-Za-z ]+\r\n" % got.status, answer)
    parsed = parse_answer(answer)
    assert parsed.status == got.status and parsed.complete
    assert parsed.headers["connection"] == "close"
    assert int(parsed.headers["content-length"]) == len(parsed.body)
    assert json.loads(parsed.body) == body
    assert codec.must_close


def test_respond_204_has_no_body() -> None:
    codec, _ = read_one(raw("OPTIONS", "/send"))
    answer = codec.respond(204, None, headers={"Allow": "POST, OPTIONS"})
    assert answer.startswith(b"HTTP/1.1 204 No Content\r\n")
    assert answer.endswith(b"\r\n\r\n")
    parsed = parse_answer(answer)
    assert parsed.status == 204 and parsed.body == b"" and parsed.complete
    assert parsed.headers["allow"] == "POST, OPTIONS"
    assert not codec.must_close


# ---------------------------------------------------------------------------
# 6. Expect: 100-continue
# ---------------------------------------------------------------------------


def test_expect_100_continue_once() -> None:
    codec = HttpCodec(LIMIT)
    codec.push(raw("POST", "/send", [("Content-Length", "5"), ("Expect", "100-continue")]))
    assert codec.next() is None
    out = codec.take_output()
    assert out.startswith(b"HTTP/1.1 100")
    assert out.endswith(b"\r\n\r\n")
    assert parse_answer(out).informational == [100]
    assert codec.take_output() == b""  # only once
    assert codec.next() is None
    assert codec.take_output() == b""
    codec.push(b"hello")
    got = codec.next()
    assert isinstance(got, HttpRequest) and got.body == b"hello"
    assert codec.take_output() == b""
    parsed = parse_answer(out + codec.respond(200, {"type": "ack"}))
    assert parsed.informational == [100] and parsed.status == 200


def test_expect_100_continue_with_a_chunked_body() -> None:
    codec = HttpCodec(LIMIT)
    codec.push(raw("POST", "/send", [("Transfer-Encoding", "chunked"), ("Expect", "100-continue")]))
    assert codec.next() is None
    assert codec.take_output().startswith(b"HTTP/1.1 100")
    codec.push(chunked(b"ab", b"cd"))
    got = codec.next()
    assert isinstance(got, HttpRequest) and got.body == b"abcd"
    assert codec.take_output() == b""


def test_no_100_continue_for_a_body_over_the_limit() -> None:
    codec = HttpCodec(LIMIT)
    codec.push(
        raw("POST", "/send", [("Content-Length", str(LIMIT + 1)), ("Expect", "100-continue")])
    )
    got = codec.next()
    assert isinstance(got, HttpReject) and got.status == 413
    assert codec.take_output() == b""
    answer = codec.respond(413, error_body(got.code, got.message))
    assert b"HTTP/1.1 100" not in answer
    assert parse_answer(answer).informational == []


def test_no_100_continue_without_expect() -> None:
    codec = HttpCodec(LIMIT)
    codec.push(raw("POST", "/send", [("Content-Length", "5")]))
    assert codec.next() is None
    assert codec.take_output() == b""


# ---------------------------------------------------------------------------
# 7. The end of the stream
# ---------------------------------------------------------------------------


def test_eof_between_requests() -> None:
    codec, got = read_one(raw("GET", "/status"))
    assert isinstance(got, HttpRequest)
    codec.respond(200, {"type": "ok"})
    assert not codec.must_close
    codec.finish()
    assert codec.next() is None
    assert codec.must_close
    codec.push(raw("GET", "/log"))  # nothing counts after the EOF
    assert codec.next() is None


def test_eof_before_anything() -> None:
    codec = HttpCodec(LIMIT)
    codec.finish()
    assert codec.next() is None
    assert codec.must_close


def test_eof_inside_a_request_is_a_reject() -> None:
    codec = HttpCodec(LIMIT)
    codec.push(b"GET /status HTTP/1.1\r\nHost: x\r\n")
    assert codec.next() is None
    codec.finish()
    got = codec.next()
    assert isinstance(got, HttpReject) and got.status == 400
    assert codec.must_close


def test_eof_after_a_whole_request_still_answers_it() -> None:
    codec = HttpCodec(LIMIT)
    codec.push(raw("GET", "/status"))
    codec.finish()
    got = codec.next()
    assert isinstance(got, HttpRequest)
    parsed = parse_answer(codec.respond(200, {"type": "ok"}))
    assert parsed.status == 200 and parsed.complete
    assert codec.next() is None
    assert codec.must_close


# ---------------------------------------------------------------------------
# 8. Routes
# ---------------------------------------------------------------------------

NOT_ROUTED_OPS = {"reply", "switch", "login", "quit"}
ROUTED_OPS = [op.name for op in OPS if op.name not in NOT_ROUTED_OPS]


@pytest.mark.parametrize(
    ("path", "kind", "op", "methods", "needs_token"),
    [
        ("/connect", RouteKind.CONNECT, "", ("POST",), False),
        ("/login", RouteKind.CONNECT, "", ("POST",), False),
        ("/disconnect", RouteKind.DISCONNECT, "", ("POST",), True),
        ("/logout", RouteKind.DISCONNECT, "", ("POST",), True),
        ("/quit", RouteKind.DISCONNECT, "", ("POST",), True),
        ("/messages", RouteKind.POLL, "", ("GET",), True),
        ("/events", RouteKind.EVENTS, "", ("GET",), True),
        ("/status", RouteKind.OP, "status", ("GET", "POST"), True),
        ("/history", RouteKind.OP, "history", ("GET", "POST"), True),
        ("/log", RouteKind.OP, "log", ("GET", "POST"), True),
    ],
)
def test_special_routes(
    path: str, kind: RouteKind, op: str, methods: tuple[str, ...], needs_token: bool
) -> None:
    route = route_of(path)
    assert route is not None
    assert (route.kind, route.op, route.needs_token) == (kind, op, needs_token)
    assert set(route.allow) == set(methods)


@pytest.mark.parametrize("name", ROUTED_OPS)
def test_every_json_op_is_a_route(name: str) -> None:
    route = route_of("/" + name)
    assert route is not None
    assert route.kind is RouteKind.OP
    assert route.op == name
    assert route.needs_token
    assert "POST" in route.allow


def test_the_routed_ops_are_most_of_the_table() -> None:
    assert len(ROUTED_OPS) == len(OPS) - len(NOT_ROUTED_OPS)
    assert {"send", "report", "thread", "join", "schedule", "cancel", "help", "ping"} <= set(
        ROUTED_OPS
    )


@pytest.mark.parametrize(
    "path",
    ["", "/nope", "/reply", "/switch", "/SEND", "/send/", "send", "//send", "/send%20",
     "/connect/", "/events/x", "/_NOT_OPS", "/BY_NAME", "/" + "a" * 500],
)  # fmt: skip
def test_unknown_paths_have_no_route(path: str) -> None:
    assert route_of(path) is None


def test_allowed_adds_head_for_gets_and_options_always() -> None:
    assert allowed(Route(RouteKind.OP, "send")) == ["POST", "OPTIONS"]
    assert allowed(Route(RouteKind.POLL, allow=("GET",))) == ["GET", "HEAD", "OPTIONS"]
    paths = ["/connect", "/disconnect", "/messages", "/events", "/status", "/history", "/log"]
    for path in paths + ["/" + name for name in ROUTED_OPS]:
        route = route_of(path)
        assert route is not None
        methods = allowed(route)
        assert methods[: len(route.allow)] == list(route.allow)
        assert methods[-1] == "OPTIONS" and methods.count("OPTIONS") == 1
        assert ("HEAD" in methods) == ("GET" in route.allow)
        assert len(methods) == len(set(methods))
    status = route_of("/status")
    assert status is not None
    assert sorted(allowed(status)) == ["GET", "HEAD", "OPTIONS", "POST"]


# ---------------------------------------------------------------------------
# 9. Commands from requests
# ---------------------------------------------------------------------------


def test_post_json_body_is_the_command() -> None:
    req = request_of(post("/send", b'{"to":"#General","text":"hi there","cid":"c-1","rid":7}'))
    assert command_of(req, "send", CTX) == Send("#general", "hi there", cid="c-1", rid=7)


def test_post_to_a_user() -> None:
    body = json.dumps({"to": "bob", "text": "caf\xe9", "reply_to": "17-2"}).encode()
    cmd = command_of(request_of(post("/send", body)), "send", CTX)
    assert cmd == Send("bob", "caf\xe9", reply_to="17-2")


def test_get_query_is_the_command() -> None:
    req = request_of(raw("GET", "/history?with=%23general&limit=5"))
    assert command_of(req, "history", CTX) == GetHistory("#general", limit=5)


def test_query_fields_are_plain_strings() -> None:
    req = request_of(raw("GET", "/history?with=bob&before=1732190000000-3&rid=r1"))
    assert command_of(req, "history", CTX) == GetHistory("bob", before="1732190000000-3", rid="r1")


@pytest.mark.parametrize("limit", ["abc", "0", "-1", "", "1.5", "5x"])
def test_a_bad_query_limit_is_rejected(limit: str) -> None:
    req = request_of(raw("GET", f"/history?with=%23general&limit={limit}"))
    with pytest.raises(Reject) as exc:
        command_of(req, "history", CTX)
    assert exc.value.code == "bad_request"


@pytest.mark.parametrize("limit", ["%C2%B2", "9" * 5000])
def test_a_query_limit_int_cannot_read_is_rejected(limit: str) -> None:
    req = request_of(raw("GET", f"/history?with=%23general&limit={limit}"), limit=LIMIT)
    with pytest.raises(Reject) as exc:
        command_of(req, "history", CTX)
    assert exc.value.code == "bad_request"


def test_a_huge_query_limit_is_capped() -> None:
    req = request_of(raw("GET", "/history?with=%23general&limit=999999"))
    cmd = command_of(req, "history", CTX)
    assert isinstance(cmd, GetHistory)
    assert 0 < cmd.limit < 999999


def test_the_token_query_field_is_ignored() -> None:
    # join takes 'room' or 'token', not both: a bearer ?token= must not count as one
    req = request_of(raw("GET", "/join?room=%23team&token=abcdefghijklmnopqrstuvwxyz"))
    assert command_of(req, "join", CTX) == Join(room="#team")
    req = request_of(raw("GET", "/status?token=abcdefghijklmnop"))
    assert command_of(req, "status", CTX) == GetStatus()


def test_a_post_without_a_body_reads_the_query() -> None:
    req = request_of(raw("POST", "/history?with=alice&limit=2", [("Content-Length", "0")]))
    assert command_of(req, "history", CTX) == GetHistory("alice", limit=2)
    req = request_of(post("/status", b"  \r\n "))
    assert command_of(req, "status", CTX) == GetStatus()


@pytest.mark.parametrize(
    "body",
    [
        b"{",
        b"not json",
        b"[1, 2]",
        b'"a string"',
        b"42",
        b"null",
        b"\xff\xfe{}",
        b'{"to":"#general","text":"\\ud800"}',
        b'{"to":"#general","text":"ok","\\udfff":1}',
        b'{"to":"#general","text":"ok","x":["\\ud83d"]}',
        b"[" * 5000 + b"]" * 5000,
    ],
    ids=lambda b: repr(b[:30]),
)
def test_bad_bodies_are_bad_request(body: bytes) -> None:
    req = request_of(post("/send", body), limit=20_000)
    with pytest.raises(Reject) as exc:
        command_of(req, "send", CTX)
    assert exc.value.code == "bad_request"
    with pytest.raises(Reject):
        json_body(req)


def test_a_surrogate_pair_is_fine() -> None:
    req = request_of(post("/send", b'{"to":"#general","text":"\\ud83d\\ude00"}'))
    assert command_of(req, "send", CTX) == Send("#general", "\U0001f600")


@pytest.mark.parametrize("rid", ["true", "[1]", '{"a":1}', '"' + "r" * 65 + '"', "1.5"])
def test_a_bad_rid_is_bad_request(rid: str) -> None:
    body = b'{"to":"#general","text":"hi","rid":' + rid.encode() + b"}"
    with pytest.raises(Reject) as exc:
        command_of(request_of(post("/send", body)), "send", CTX)
    assert exc.value.code == "bad_request"


def test_missing_fields_are_rejected_by_the_op_table() -> None:
    with pytest.raises(Reject) as exc:
        command_of(request_of(post("/send", b'{"text":"hi"}')), "send", CTX)
    assert exc.value.code == "bad_request"
    with pytest.raises(Reject) as exc:
        command_of(request_of(post("/send", b'{"to":"#general","text":"x"}')), "nope", CTX)
    assert exc.value.code == "unknown_op"


def test_the_body_cannot_choose_the_op() -> None:
    req = request_of(post("/status", b'{"op":"send","to":"#general","text":"hi"}'))
    assert command_of(req, "status", CTX) == GetStatus()


def test_json_body_of_an_empty_body_is_empty() -> None:
    assert json_body(request_of(post("/send", b""))) == {}
    assert json_body(request_of(post("/send", b'{"a": [1, "\xc3\xa9"]}'))) == {"a": [1, "\xe9"]}


# ---------------------------------------------------------------------------
# 10. Error codes -> statuses
# ---------------------------------------------------------------------------

DOCUMENTED_STATUS = {
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


@pytest.mark.parametrize(("code", "status"), sorted(DOCUMENTED_STATUS.items()))
def test_status_of_documented_codes(code: str, status: int) -> None:
    assert status_of(code) == status


@pytest.mark.parametrize("code", ["", "nope", "slow_consumer", "BAD_REQUEST"])
def test_status_of_an_unknown_code_is_400(code: str) -> None:
    assert status_of(code) == 400


def test_status_of_matches_the_errors_table_of_the_protocol_doc() -> None:
    """Each code named in a row of docs/protocol.md's HTTP error table maps to that
    row's status (names that are fields or headers, not codes, left aside)."""
    doc = Path(__file__).resolve().parents[2] / "docs" / "protocol.md"
    text = doc.read_text(encoding="utf-8")
    section = text[text.index("### Errors and limits") :]
    rows = re.findall(r"^\| (\d{3}) \| (.*) \|$", section, flags=re.MULTILINE)
    assert len(rows) >= 10
    not_codes = {"until", "retry_after"}
    checked = set()
    for status, what in rows:
        for code in re.findall(r"`([a-z]+(?:_[a-z]+)*)`", what):
            if code not in not_codes:
                assert status_of(code) == int(status), (code, status)
                checked.add(code)
    assert checked >= {"banned", "forbidden", "not_found", "exists", "rate_limited"}


# ---------------------------------------------------------------------------
# 11. Server-Sent Events
# ---------------------------------------------------------------------------


def msg(sid: str, from_: str, to: str, text: str = "hi") -> Message:
    return Message(id=sid, from_=from_, to=to, text=text, ts=int(sid.split("-")[0]))


def stream(user: str = "alice", resume: Mapping[str, str] | None = None) -> tuple[HttpCodec, bytes]:
    codec = HttpCodec(LIMIT)
    codec.push(raw("GET", "/events", [("Accept", "text/event-stream")]))
    assert isinstance(codec.next(), HttpRequest)
    return codec, codec.start_stream(user, resume or {})


def event_of(chunk_bytes: bytes) -> list[tuple[str, str]]:
    chunks = unchunk(chunk_bytes)
    assert len(chunks) == 1 and chunks[0]
    return sse_fields(chunks[0])


def resume_of(codec: HttpCodec, m: Message) -> tuple[dict[str, str], dict[str, object]]:
    fields = event_of(codec.encode(m))
    assert [name for name, _ in fields] == ["id", "data"]
    return parse_resume(fields[0][1]), json.loads(fields[1][1])


def test_start_stream_headers_and_framing() -> None:
    codec, head = stream()
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    parsed = parse_answer(head)
    assert parsed.status == 200 and not parsed.complete
    assert parsed.headers["content-type"].startswith("text/event-stream")
    assert parsed.headers["transfer-encoding"] == "chunked"
    assert "content-length" not in parsed.headers
    assert parsed.headers["cache-control"] == "no-store"
    assert codec.streaming
    _, _, first = head.partition(b"\r\n\r\n")
    assert [sse_fields(c) for c in unchunk(first)] == [[("retry", "2000")]]


def test_a_message_is_an_event_with_id_and_data() -> None:
    codec, _ = stream()
    m = msg("1732190000000-0", "bob", "#general", 'hello\nworld \u2028 "q"')
    fields = event_of(codec.encode(m))
    assert [name for name, _ in fields] == ["id", "data"]
    data = json.loads(fields[1][1])
    assert data == event_to_dict(m)
    assert message_from_dict(data) == m
    assert parse_resume(fields[0][1]) == {"#general": "1732190000000-0"}


def test_a_message_carries_its_raw_json_line() -> None:
    codec, _ = stream()
    m = msg("5-1", "bob", "#general", "hi")
    line = json.dumps(event_to_dict(m), separators=(",", ":")).encode() + b"\n"
    marked = Message(m.id, m.from_, m.to, m.text, m.ts, raw=line)
    fields = event_of(codec.encode(marked))
    assert fields[1] == ("data", line.rstrip(b"\n").decode())
    # a replayed message is written from its fields, with "replay": true
    replayed = Message(m.id, m.from_, m.to, m.text, m.ts, replay=True, raw=line)
    data = json.loads(event_of(codec.encode(replayed))[1][1])
    assert data["replay"] is True and data["id"] == "5-1"


def test_the_id_holds_every_conversation_from_the_readers_side() -> None:
    codec, _ = stream("Alice")
    seen: dict[str, str] = {}
    for m, conv in [
        (msg("10-0", "bob", "#general"), "#general"),
        (msg("11-0", "Bob", "alice"), "bob"),  # to me: keyed by the sender
        (msg("12-0", "alice", "Carol"), "carol"),  # from me: keyed by the recipient
        (msg("13-0", "dave", "#Team"), "#team"),
        (msg("14-0", "ALICE", "alice"), "alice"),  # to myself
        (msg("15-0", "carol", "ALICE"), "carol"),  # the same conversation, other way
        (msg("16-0", "eve", "#general"), "#general"),
    ]:
        seen.pop(conv, None)
        seen[conv] = m.id
        resume, data = resume_of(codec, m)
        assert resume == seen
        assert list(resume) == list(seen)  # most recent last
        assert data["id"] == m.id
    assert list(seen) == ["bob", "#team", "alice", "carol", "#general"]


def test_the_id_carries_the_resume_it_started_from() -> None:
    start = {"#general": "100-0", "bob": "90-1"}
    codec, _ = stream("alice", start)
    resume, _ = resume_of(codec, msg("200-0", "carol", "alice"))
    assert resume == {**start, "carol": "200-0"}
    resume, _ = resume_of(codec, msg("201-0", "bob", "#general"))
    assert resume == {"bob": "90-1", "carol": "200-0", "#general": "201-0"}
    assert list(resume) == ["bob", "carol", "#general"]


def test_the_id_keeps_the_most_recent_conversations() -> None:
    codec, _ = stream("alice")
    extra = 7
    rooms = [f"#room{i}" for i in range(MAX_RESUME_CONVERSATIONS + extra)]
    resume: dict[str, str] = {}
    for i, room in enumerate(rooms):
        resume, _ = resume_of(codec, msg(f"{1000 + i}-0", "bob", room))
        assert len(resume) == min(i + 1, MAX_RESUME_CONVERSATIONS)
    assert list(resume) == rooms[extra:]
    assert resume[rooms[-1]] == f"{1000 + len(rooms) - 1}-0"
    # touching the oldest kept one makes it the newest: the next eviction spares it
    resume, _ = resume_of(codec, msg("5000-0", "bob", rooms[extra]))
    assert list(resume)[-1] == rooms[extra]
    resume, _ = resume_of(codec, msg("5001-0", "bob", "#brand-new"))
    assert rooms[extra] in resume and rooms[extra + 1] not in resume
    assert len(resume) == MAX_RESUME_CONVERSATIONS


def test_a_non_message_event_is_data_without_id() -> None:
    codec, _ = stream()
    for ev in (Notice("the gateway is restarting\nsoon"), Pong(rid="r-1")):
        fields = event_of(codec.encode(ev))
        assert [name for name, _ in fields] == ["data"]
        assert json.loads(fields[0][1]) == event_to_dict(ev)


def test_comment_and_end_of_stream() -> None:
    codec, head = stream()
    beat = codec.comment()
    assert unchunk(beat) == [b": keep-alive\n\n"]
    hello = codec.comment("hello")
    assert unchunk(hello) == [b": hello\n\n"]
    body = codec.encode(msg("7-0", "bob", "#general"))
    end = codec.end_stream()
    assert end == b"0\r\n\r\n"
    assert codec.must_close and not codec.streaming
    assert codec.end_stream() == b""
    assert codec.encode(msg("8-0", "bob", "#general")) == b""
    assert codec.comment() == b""
    parsed = parse_answer(head + beat + hello + body + end)  # one well-formed chunked answer
    assert parsed.status == 200 and parsed.complete
    assert parsed.body.startswith(b"retry: 2000\n\n: keep-alive\n\n: hello\n\nid: #general=7-0\n")


def test_nothing_is_pushed_before_the_stream_starts() -> None:
    codec, got = read_one(raw("GET", "/events"))
    assert isinstance(got, HttpRequest)
    assert codec.encode(msg("1-0", "bob", "#general")) == b""
    assert codec.encode(Notice("x")) == b""
    assert codec.comment() == b""
    assert codec.end_stream() == b""
    assert not codec.streaming


def test_head_of_events_is_headers_only() -> None:
    codec, got = read_one(raw("HEAD", "/events"))
    assert isinstance(got, HttpRequest) and got.head
    answer = codec.start_stream("alice", {}, head=True)
    parsed = parse_answer(answer, method=b"HEAD")
    assert parsed.status == 200 and parsed.complete and parsed.body == b""
    assert parsed.headers["content-type"].startswith("text/event-stream")
    assert not codec.streaming
    assert codec.encode(Notice("x")) == b""


# ---------------------------------------------------------------------------
# 12. Resume ids
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "general",
        "#general",
        "#general:1-0",
        "#general=",
        "#general=abc",
        "#general=1-",
        "#general=-1",
        "#general=1.0",
        "#general=18446744073709551616-0",  # past 64 bits
        "=1-0",
        "#=1-0",
        "#gen eral=1-0",
        "bad/name=1-0",
        "..=1-0",
        "a" * 33 + "=1-0",
        "#general=1-0,bob",
        "#general=1-0;bob=2-0",
        "caf\xe9=1-0",
    ],
)
def test_parse_resume_rejects_junk(text: str) -> None:
    with pytest.raises(Reject) as exc:
        parse_resume(text)
    assert exc.value.code == "bad_request"


def test_parse_resume_bounds_the_conversations() -> None:
    many = {f"user{i}": f"{i}-0" for i in range(MAX_RESUME_CONVERSATIONS + 1)}
    with pytest.raises(Reject) as exc:
        parse_resume(encode_resume(many))
    assert exc.value.code == "bad_request"
    ok = dict(list(many.items())[:MAX_RESUME_CONVERSATIONS])
    assert parse_resume(encode_resume(ok)) == ok


def test_parse_resume_reads_what_it_should() -> None:
    assert parse_resume("") == {}
    assert parse_resume(" ,, ") == {}
    assert parse_resume("  #General=1-0,Bob=2-3\t") == {"#general": "1-0", "bob": "2-3"}
    assert parse_resume("#a=1-0,#a=2-0") == {"#a": "2-0"}


names = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,31}", fullmatch=True)
conversations = names.map(str.lower) | names.map(lambda n: "#" + n.lower())
stream_ids = st.builds("{}-{}".format, st.integers(0, 2**64 - 1), st.integers(0, 2**64 - 1))


@settings(max_examples=100, deadline=None)
@given(st.dictionaries(conversations, stream_ids, max_size=MAX_RESUME_CONVERSATIONS))
def test_resume_round_trips(positions: dict[str, str]) -> None:
    assert parse_resume(encode_resume(positions)) == positions


# ---------------------------------------------------------------------------
# 13. Fuzzing
# ---------------------------------------------------------------------------

VALID_REQUESTS = [
    raw("GET", "/status"),
    raw("GET", "/history?with=%23general&limit=5", [("Authorization", "Bearer t0k")]),
    post("/send", b'{"to":"bob","text":"x"}'),
    raw("POST", "/send", [("Transfer-Encoding", "chunked")], chunked(b"abc", b"de")),
    raw("HEAD", "/status"),
    raw("OPTIONS", "/send"),
    raw("GET", "/log", version="1.0", host=False),
    raw("GET", "/status", [("Connection", "close")]),
    raw("POST", "/big", [("Content-Length", "5000")]),  # over the limit: 413, close
    post("/send", b"abc", ("Expect", "100-continue")),
    post("/send", b""),
]
FRAGMENTS = [
    b"\r\n", b"\n", b"GET ", b"POST ", b"/ ", b"HTTP/1.1", b"HTTP/1.0\r\n", b"Host: x\r\n",
    b"Content-Length: 5\r\n", b"Content-Length: 99999\r\n", b"Transfer-Encoding: chunked\r\n",
    b"Expect: 100-continue\r\n", b"Connection: close\r\n", b"0\r\n\r\n", b"5\r\nhello\r\n",
    b"\x00", b"\xff", b":", b" ", b"\t", b"%ff",
]  # fmt: skip

byte_soup = st.lists(
    st.sampled_from(VALID_REQUESTS) | st.sampled_from(FRAGMENTS) | st.binary(max_size=24),
    max_size=8,
).map(b"".join)
cut_lists = st.lists(st.integers(1, 64), max_size=24)


@settings(max_examples=200, deadline=None)
@given(data=byte_soup, cuts=cut_lists)
def test_fuzz_bytes_never_raise(data: bytes, cuts: list[int]) -> None:
    seen, out = drive(split(data, cuts))
    rejects = [i for i, item in enumerate(seen) if isinstance(item, HttpReject)]
    assert not rejects or rejects == [len(seen) - 1]  # nothing is read after a reject
    if out:
        assert out.startswith(b"HTTP/1.1 ")


@settings(max_examples=150, deadline=None)
@given(
    requests=st.lists(st.sampled_from(VALID_REQUESTS), min_size=1, max_size=6),
    cuts=cut_lists,
)
def test_fuzz_valid_requests_split_anyhow_read_the_same(
    requests: list[bytes], cuts: list[int]
) -> None:
    data = b"".join(requests)
    whole, whole_out = drive([data])
    pieces, pieces_out = drive(split(data, cuts))
    bytewise, _ = drive(data[i : i + 1] for i in range(len(data)))
    assert pieces == whole
    assert bytewise == whole
    assert pieces_out == whole_out
    # every request is read until one closes the connection
    expected = 0
    for r in requests:
        expected += 1
        if b"Connection: close" in r or b"HTTP/1.0" in r or b"Length: 5000" in r:
            break
    assert len(whole) == expected


TOKEN_CHARS = "!#$%&'*+-.^_`|~abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
ODD_NAMES = [b"X-A", b"x-a", b"Accept", b"Cookie", b"Authorization", b"Connection", b"Expect",
             b"Content-Length", b"Transfer-Encoding", b"Host", b"Last-Event-ID", b""]  # fmt: skip
ODD_VALUES = [b"", b" x ", b"\xff\xfe", b"close", b"100-continue", b"chunked", b"5", b"-1",
              b"a\x00b", b"\t", b"a\r\nX-Injected: 1", b"keep-alive", b"Bearer abc"]  # fmt: skip
header_names = (
    st.sampled_from(ODD_NAMES)
    | st.text(TOKEN_CHARS, min_size=1, max_size=20).map(str.encode)
    | st.binary(max_size=10)
)
header_values = (
    st.sampled_from(ODD_VALUES)
    | st.binary(max_size=40)
    | st.integers(1, 3 * MAX_HEADER_BYTES).map(lambda n: b"v" * n)
)


@settings(max_examples=150, deadline=None)
@given(
    headers=st.lists(st.tuples(header_names, header_values), max_size=12),
    cuts=cut_lists,
    body=st.binary(max_size=16),
)
def test_fuzz_odd_headers_never_raise(
    headers: list[tuple[bytes, bytes]], cuts: list[int], body: bytes
) -> None:
    data = (
        b"POST /send HTTP/1.1\r\nHost: x\r\n"
        + b"".join(name + b": " + value + b"\r\n" for name, value in headers)
        + b"\r\n"
        + body
    )
    for pieces in ([data], split(data, cuts)):
        seen, _ = drive(pieces)
        for item in seen:
            if isinstance(item, HttpRequest):
                assert len(item.headers) <= MAX_HEADERS
                assert all(name == name.lower() for name in item.headers)


plain_names = st.text(st.sampled_from("abcdefghijklmnopqrstuvwxyz-0123456789"), min_size=1,
                      max_size=12).map(lambda n: "x-" + n)  # fmt: skip
plain_values = st.text(st.sampled_from("abc xyz=;,/0123456789"), max_size=30)


@settings(max_examples=100, deadline=None)
@given(
    headers=st.lists(st.tuples(plain_names, plain_values), max_size=MAX_HEADERS + 30),
    cuts=cut_lists,
)
def test_fuzz_header_count(headers: list[tuple[str, str]], cuts: list[int]) -> None:
    data = raw("GET", "/status", headers)
    assert len(data) < MAX_HEADER_BYTES
    seen, _ = drive(split(data, cuts))
    assert len(seen) == 1
    (item,) = seen
    if len(headers) + 1 > MAX_HEADERS:  # Host is one more
        assert isinstance(item, HttpReject)
        assert item.status == 431
    else:
        assert isinstance(item, HttpRequest)
        expected = {"host": "chat.example"} | {n: v.strip() for n, v in headers}
        assert dict(item.headers) == expected


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"HEAD /send HTTP/1.1\r\nHost: x\r\nContent-Length: 99999\r\n\r\n",  # 413 from headers
        b"HEAD /status?x=%ff HTTP/1.1\r\nHost: x\r\n\r\n",  # a query that is not UTF-8
        b"HEAD /status HTTP/1.1\r\nHost: x\r\n" + b"X: y\r\n" * 101 + b"\r\n",  # 431
        b"HEAD /status HTTP/1.2\r\nHost: x\r\n\r\n",  # 505
    ],
)
def test_a_refused_head_request_is_answered_without_a_body(request_bytes: bytes) -> None:
    """Found by the end-to-end fuzz: answering a refused HEAD with a body made h11 raise."""
    codec = HttpCodec(1000)
    codec.push(request_bytes)
    got = codec.next()
    assert isinstance(got, HttpReject)
    out = codec.respond(got.status, error_body(got.code, got.message))
    head, _, body = out.partition(b"\r\n\r\n")
    assert head.startswith(f"HTTP/1.1 {got.status} ".encode()) and body == b""


@settings(max_examples=150, deadline=None)
@given(
    method=st.sampled_from(["GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH"]),
    path=st.sampled_from(["/status", "/send", "/files", "/files/x", "/", "/nope", "/s?x=%ff"]),
    version=st.sampled_from(["1.0", "1.1", "1.2", "2.0"]),
    extra=st.integers(0, 110),
    length=st.one_of(st.none(), st.integers(0, 10**7)),
)
def test_whatever_a_request_gets_it_is_answered_well_formed(
    method: str, path: str, version: str, extra: int, length: int | None
) -> None:
    """Any refusal or request of any method can be answered: no h11 error, and a
    HEAD's answer has no body."""
    head = f"{method} {path} HTTP/{version}\r\nHost: x\r\n" + "X: y\r\n" * extra
    if length is not None:
        head += f"Content-Length: {length}\r\n"
    codec = HttpCodec(1000, body_limits={"/files": 5000})
    codec.push(head.encode() + b"\r\n")
    got = codec.next()
    if got is None:
        return  # waiting for a body
    status = got.status if isinstance(got, HttpReject) else 200
    out = codec.respond(status, error_body("x", "y"))
    top, _, body = out.partition(b"\r\n\r\n")
    assert top.startswith(f"HTTP/1.1 {status} ".encode())
    if method == "HEAD":
        assert body == b""

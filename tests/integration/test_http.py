"""The HTTP API end to end: real gateway processes on a real port, a real redis-server.

The clients are the ones people use: ``http.client`` (the main one), ``urllib.request``
(a second opinion), ``curl`` as typed in a shell, and raw sockets where a client
library would hide what is checked (pipelining, a body in pieces, a request cut off,
a reader that never reads). The contract is the HTTP section of the shared protocol
page: routes, status codes, headers, keep-alive, Server-Sent Events with resumable
ids, and the framings on one port reaching each other.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import os
import re
import shlex
import shutil
import signal
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from client.connection import Connection, conversation_of, id_key
from tests.httpkit import (
    Reply,
    acall,
    aconnect,
    call,
    connect,
    encode_body,
    headers_for,
    http_on,
    ok,
    parse_answer,
    request,
)  # fmt: skip
from tests.support import Deployment, RedisServer, TextClient, next_of, running, wait_for

GENERAL: Final = "#general"
MAX_BODY: Final = 16_384  # --max-line-bytes, the JSON body limit (default)
FAST_HTTP: Final = ["--http-header-timeout-s", "1", "--http-keepalive-s", "2"]
ID_LINE: Final = re.compile(r"^(?:#?[\w.-]+=\d+-\d+)(?:,#?[\w.-]+=\d+-\d+)*$")

# ---------------------------------------------------------------------------
# Clients
# ---------------------------------------------------------------------------


def urlopen(port: int, method: str, path: str, body: Any = None, token: str | None = None) -> Reply:
    """The same through ``urllib.request``: a second client's reading of the answers."""
    data = encode_body(body)
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}",
        data=data,
        method=method,
        headers=headers_for(token, None, data),
    )
    try:
        with urllib.request.urlopen(req, timeout=20) as resp:
            return Reply(resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read())
    except urllib.error.HTTPError as err:
        with err:
            return Reply(err.code, {k.lower(): v for k, v in err.headers.items()}, err.read())


def flood(port: int, token: str, to: str, count: int, size: int = 3900) -> list[str]:
    """``count`` messages of ``size`` characters to ``to``, on one keep-alive connection."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
    try:
        body = {"to": to, "text": "f" * size}
        return [ok(request(conn, "POST", "/send", body, token), "ack")["id"] for _ in range(count)]
    finally:
        conn.close()


@dataclass
class Raw:
    data: bytes
    closed: bool  # the server closed (EOF or reset) before the timeout


async def raw(
    port: int,
    parts: bytes | list[bytes],
    *,
    pause: float = 0.0,
    timeout: float = 5.0,
    half_close: bool = False,
    until: Callable[[bytes], bool] | None = None,
) -> Raw:
    """Write ``parts`` (``pause`` seconds apart), then read until the server closes,
    ``until(data)`` holds, or ``timeout``."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    data = b""
    closed = False
    try:
        for i, part in enumerate([parts] if isinstance(parts, bytes) else parts):
            if i and pause:
                await asyncio.sleep(pause)
            writer.write(part)
            await writer.drain()
        if half_close:
            writer.write_eof()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while until is None or not until(data):
            left = deadline - loop.time()
            if left <= 0:
                break
            try:
                got = await asyncio.wait_for(reader.read(65536), left)
            except TimeoutError:
                break
            except ConnectionError:
                closed = True
                break
            if not got:
                closed = True
                break
            data += got
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    return Raw(data, closed)


def parse_responses(data: bytes, methods: list[str]) -> tuple[list[Reply], bytes]:
    """HTTP/1.1 answers (bodies by Content-Length), in order, and what is left over."""
    out: list[Reply] = []
    for method in methods:
        reply, data = parse_answer(data, head=method == "HEAD")
        if reply is None:
            break
        out.append(reply)
    return out, data


def http_request(
    method: str, path: str, body: bytes = b"", *, token: str | None = None, extra: str = ""
) -> bytes:
    """A request's bytes, as a raw socket writes them."""
    head = f"{method} {path} HTTP/1.1\r\nHost: chat\r\n"
    if token:
        head += f"Authorization: Bearer {token}\r\n"
    if body:
        head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    return (head + extra + "\r\n").encode() + body


# ---------------------------------------------------------------------------
# Server-Sent Events over a raw socket (the chunked framing decoded here)
# ---------------------------------------------------------------------------


@dataclass
class SseEvent:
    id: str | None = None
    data: dict[str, Any] | None = None
    comment: str | None = None
    retry: int | None = None

    @property
    def type(self) -> Any:
        return None if self.data is None else self.data.get("type")


class Sse:
    """``GET /events`` read as a browser's EventSource would, event by event."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        status: int,
        headers: dict[str, str],
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.status = status
        self.headers = headers
        self.events: list[SseEvent] = []  # every whole event received
        self.ended = False  # no more events will come
        self.clean_end = False  # ended with the last chunk (not cut off)
        self._buf = b""
        self._size: int | None = None
        self.error: Reply | None = None

    @classmethod
    async def open(
        cls, port: int, token: str | None, last_id: str | None = None, *, in_query: bool = False
    ) -> Sse:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        path = f"/events?token={token}" if in_query else "/events"
        head = f"GET {path} HTTP/1.1\r\nHost: chat\r\nAccept: text/event-stream\r\n"
        if token and not in_query:
            head += f"Authorization: Bearer {token}\r\n"
        if last_id is not None:
            head += f"Last-Event-ID: {last_id}\r\n"
        writer.write((head + "\r\n").encode())
        raw_head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        lines = raw_head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {}
        for line in lines[1:]:
            if line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        sse = cls(reader, writer, status, headers)
        if status != 200:
            length = int(headers.get("content-length", "0"))
            body = await asyncio.wait_for(reader.readexactly(length), 10)
            sse.error = Reply(status, headers, body)
            sse.ended = True
        else:
            assert headers["content-type"].startswith("text/event-stream"), headers
            assert headers.get("transfer-encoding") == "chunked", headers
        return sse

    async def _fill(self) -> None:
        try:
            if self._size is None:
                line = await self.reader.readline()
                if not line.endswith(b"\r\n"):
                    self.ended = True
                    return
                self._size = int(line.split(b";")[0].strip(), 16)
            if self._size == 0:
                await self.reader.readline()  # the empty trailer
                self.ended = self.clean_end = True
                return
            chunk = await self.reader.readexactly(self._size + 2)
            self._size = None
            assert chunk.endswith(b"\r\n"), chunk[-10:]
            self._buf += chunk[:-2]
        except (asyncio.IncompleteReadError, ConnectionError):
            self.ended = True

    def _parse(self, block: bytes) -> SseEvent:
        ev = SseEvent()
        for line in block.decode("utf-8").split("\n"):
            if line.startswith(":"):
                ev.comment = line[1:].strip()
                continue
            name, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if name == "id":
                ev.id = value
            elif name == "data":
                assert ev.data is None, block  # one JSON object per event
                ev.data = json.loads(value)
            elif name == "retry":
                ev.retry = int(value)
            else:
                raise AssertionError(f"unexpected SSE line {line!r}")
        return ev

    async def next(self, timeout: float = 5.0) -> SseEvent | None:
        """The next event (a comment counts); None once the stream has ended."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            idx = self._buf.find(b"\n\n")
            if idx >= 0:
                block, self._buf = self._buf[:idx], self._buf[idx + 2 :]
                ev = self._parse(block)
                self.events.append(ev)
                return ev
            if self.ended:
                return None
            left = deadline - loop.time()
            if left <= 0:
                raise TimeoutError("no SSE event in time")
            await asyncio.wait_for(self._fill(), left)

    async def until(self, pred: Callable[[SseEvent], bool], timeout: float = 5.0) -> SseEvent:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            try:
                ev = await self.next(max(0.01, deadline - loop.time()))
            except TimeoutError:
                raise AssertionError(f"no matching event; got {self.events[-5:]}") from None
            if ev is None:
                raise AssertionError(f"stream ended before a matching event; {self.events[-5:]}")
            if pred(ev):
                return ev

    async def rest(self, timeout: float = 5.0) -> list[SseEvent]:
        """Every event until the stream ends (fails if it does not end in time)."""
        out = []
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while (ev := await self.next(max(0.01, deadline - loop.time()))) is not None:
            out.append(ev)
        return out

    def messages(self) -> list[dict[str, Any]]:
        return [ev.data for ev in self.events if ev.data and ev.type == "message"]

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError):
            await self.writer.wait_closed()

    async def __aenter__(self) -> Sse:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


def is_type(kind: str) -> Callable[[SseEvent], bool]:
    return lambda ev: ev.type == kind


def text_is(text: str) -> Callable[[SseEvent], bool]:
    return lambda ev: ev.type == "message" and ev.data is not None and ev.data["text"] == text


async def text_on(dep: Deployment, gateway: str, user: str) -> TextClient:
    """A text-lines client logged in on ``gateway``."""
    for _ in range(60):
        client = await dep.text()
        await client.send(f"/login {user} pw\n")
        line = await client.expect(r"logged in.* on gateway gw\d")
        if f"on gateway {gateway}." in line:
            await client.expect(r"up to date")
            return client
        await client.close()
    raise AssertionError(f"never landed on {gateway}")


async def sse_on(
    stack: contextlib.AsyncExitStack, port: int, gateway: str, token: str, in_query: bool = False
) -> Sse:
    """An event stream, synced, that the kernel's spread put on ``gateway``."""
    for _ in range(60):
        stream = await stack.enter_async_context(await Sse.open(port, token, in_query=in_query))
        welcome = await stream.until(is_type("welcome"))
        if welcome.data is not None and welcome.data["gateway"] == gateway:
            await stream.until(is_type("synced"))
            return stream
        await stream.close()
    raise AssertionError(f"never landed on {gateway}")


# ---------------------------------------------------------------------------
# Logs
# ---------------------------------------------------------------------------


async def wait_log(dep: Deployment, pattern: str, timeout: float = 10.0) -> re.Match[str]:
    rx = re.compile(pattern)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        m = rx.search(dep.logs())
        if m:
            return m
        if loop.time() > deadline:
            raise AssertionError(f"no log line matching {pattern!r}:\n{dep.logs()[-3000:]}")
        await asyncio.sleep(0.05)


LOG_RECORD: Final = re.compile(r"^(?=\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)", re.MULTILINE)


def tracebacks(logs: str) -> list[str]:
    """The log records with a traceback."""
    return [r for r in LOG_RECORD.split(logs) if "Traceback" in r]


def assert_logged(dep: Deployment, method: str, path: str, status: int, user: str) -> None:
    line = f"http {method} {path} {status} user={user} "
    # A request is logged once answered: the line may land just after the answer.
    with contextlib.suppress(AssertionError):
        wait_for(lambda: line in dep.logs(), 5, "the log line")
    assert line in dep.logs(), f"{line!r} not in the gateway logs:\n{dep.logs()[-3000:]}"


async def curl(command: str, timeout: float = 15.0) -> tuple[int, str]:
    """Run a curl command line as typed in a shell; its exit code and output."""
    args = shlex.split(command)
    assert args[0] == "curl"
    proc = await asyncio.create_subprocess_exec(
        *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    assert proc.returncode is not None
    return proc.returncode, out.decode()


async def message_with(conn: Connection, text: str, timeout: float = 5.0) -> dict[str, Any]:
    """The next ``message`` event with ``text`` a JSON-lines client receives."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        ev = await next_of(conn, "message", max(0.01, deadline - loop.time()))
        if ev["text"] == text:
            return ev


async def deployment_login(dep: Deployment, user: str) -> Connection:
    return await dep.login(user)


needs_curl = pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")


# ---------------------------------------------------------------------------
# 1. A person with curl
# ---------------------------------------------------------------------------


@needs_curl
async def test_curl_session_connect_send_status_poll_events(deployment: Deployment) -> None:
    base = f"http://127.0.0.1:{deployment.port}"
    rc, out = await curl(
        f"curl -s -X POST {base}/connect -H 'Content-Type: application/json'"
        """ -d '{"user": "dana", "password": "secret"}'"""
    )
    assert rc == 0, out
    hello = json.loads(out)
    assert hello["type"] == "connected" and hello["user"] == "dana" and hello["new"] is True
    assert hello["gateway"] in ("gw1", "gw2") and hello["unread"] == {}
    auth = f"-H 'Authorization: Bearer {hello['token']}'"

    eve = await deployment.login("eve")
    dm = await eve.send("dana", "psst, dana")  # waiting for dana's first poll

    rc, out = await curl(
        f"curl -s {base}/send {auth} -H 'Content-Type: application/json'"
        """ -d '{"to": "#general", "text": "hello from curl"}'"""
    )
    assert rc == 0, out
    ack = json.loads(out)
    assert ack["type"] == "ack" and ack["cid"] is None and re.fullmatch(r"\d+-\d+", ack["id"])
    got = await message_with(eve, "hello from curl")  # live, over JSON lines
    assert got["id"] == ack["id"] and got["from"] == "dana" and got["to"] == GENERAL

    rc, out = await curl(f"curl -s {base}/status {auth}")
    status = json.loads(out)
    assert status["type"] == "status" and status["user"] == "dana"
    assert "eve" in status["online"] and status["unread"] == {"#general": 1, "eve": 1}

    rc, out = await curl(f"curl -s {base}/messages {auth}")
    poll = json.loads(out)
    assert poll["type"] == "messages" and poll["more"] is False
    assert [(m["id"], m["from"], m["text"]) for m in poll["messages"]] == [
        (dm, "eve", "psst, dana"),
        (ack["id"], "dana", "hello from curl"),
    ]
    rc, out = await curl(f"curl -s {base}/messages {auth}")
    assert json.loads(out)["messages"] == []  # the poll moved dana's cursors

    # The live stream, as `curl -N` shows it, while eve writes.
    proc = await asyncio.create_subprocess_exec(
        *shlex.split(f"curl -sN --max-time 2 {base}/events {auth}"),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout = proc.stdout
    assert stdout is not None
    lines: list[str] = []

    async def read_until(text: str) -> None:
        while text not in "\n".join(lines):
            line = await asyncio.wait_for(stdout.readline(), 5)
            assert line, f"curl's output ended before {text!r}: {lines}"
            lines.append(line.decode().rstrip("\n"))

    await read_until('"type":"synced"')
    live = await eve.send("dana", "are you there?")
    await read_until("are you there?")
    await proc.communicate()
    assert proc.returncode == 28  # curl's "--max-time reached": the stream stays open
    assert lines[0] == "retry: 2000"
    welcome = json.loads(next(x for x in lines if "welcome" in x).removeprefix("data: "))
    assert welcome["user"] == "dana" and welcome["unread"] == {}
    data = [x for x in lines if x.startswith("data: ")]
    assert [json.loads(x[6:])["type"] for x in data] == ["welcome", "synced", "message"]
    assert lines[lines.index(data[-1]) - 1] == f"id: eve={live}"
    assert json.loads(data[-1][6:])["text"] == "are you there?"

    rc, out = await curl(f"curl -s -X POST {base}/disconnect {auth}")
    assert json.loads(out) == {"type": "bye"}
    rc, out = await curl(f"curl -s -o /dev/null -w '%{{http_code}}' {base}/status {auth}")
    assert out == "401"
    assert_logged(deployment, "POST", "/send", 200, "dana")
    assert_logged(deployment, "GET", "/messages", 200, "dana")
    assert_logged(deployment, "GET", "/status", 401, "None")


# ---------------------------------------------------------------------------
# 2. Every route, every op, every error status
# ---------------------------------------------------------------------------


async def test_every_route_and_op_answers_its_event(deployment: Deployment) -> None:
    port = deployment.port
    olga = await aconnect(port, "olga")
    pat, quinn, rex = [await aconnect(port, u) for u in ("pat", "quinn", "rex")]

    def post(who: str, op: str, /, **fields: Any) -> Reply:
        return call(port, "POST", f"/{op}", fields, who)

    def get(token: str, path: str) -> Reply:
        return call(port, "GET", path, token=token)

    def run() -> None:
        # /login is /connect; a second token of the same user; both work.
        again = call(port, "POST", "/login", {"user": "olga", "password": "pw"})
        body = ok(again, "connected")
        assert body["new"] is False and body["token"] != olga
        assert ok(get(body["token"], "/status"), "status")["user"] == "olga"

        # send, with a cid (a retry is stored once) and a reply
        ack = ok(post(olga, "send", to=GENERAL, text="first", cid="c-1"), "ack")
        assert ack["cid"] == "c-1" and re.fullmatch(r"\d+-\d+", ack["id"])
        assert ok(post(olga, "send", to=GENERAL, text="first", cid="c-1"), "ack") == ack
        reply = ok(post(pat, "send", to=GENERAL, text="re: first", reply_to=ack["id"]), "ack")
        dm = ok(post(olga, "send", to="pat", text="just you"), "ack")
        thread = ok(post(olga, "thread", **{"with": GENERAL, "id": ack["id"]}), "thread")
        assert thread["message"]["id"] == ack["id"]
        assert [(m["id"], m["reply_to"]) for m in thread["replies"]] == [(reply["id"], ack["id"])]

        # the reads, as GETs with a query and as POSTs with a body
        hist = ok(get(olga, "/history?with=%23general&limit=2"), "history")
        assert hist["with"] == GENERAL
        assert [m["id"] for m in hist["messages"]] == [ack["id"], reply["id"]]
        hist = ok(post(olga, "history", **{"with": GENERAL, "limit": 1}), "history")
        assert [m["text"] for m in hist["messages"]] == ["re: first"]
        hist = ok(get(pat, "/history?with=olga"), "history")
        assert [m["id"] for m in hist["messages"]] == [dm["id"]]
        log = ok(get(olga, "/log?limit=5"), "log")
        assert [m["text"] for m in log["messages"]] == ["first", "just you"]
        assert [m["text"] for m in ok(post(olga, "log", limit=1), "log")["messages"]] == [
            "just you"
        ]
        status = ok(get(pat, "/status"), "status")
        assert status["user"] == "pat" and status["unread"]["olga"] == 1
        assert ok(post(pat, "status"), "status")["user"] == "pat"

        # rooms: a private one, by invite link with approval, by invitation
        room = ok(post(olga, "create_room", room="#club"), "room")
        assert room == {"type": "room", "room": "#club", "owner": "olga", "private": True}
        link = ok(post(olga, "link", room="#club"), "link")
        assert link["room"] == "#club" and len(link["token"]) >= 16
        assert ok(post(pat, "join", token=link["token"]), "pending")["room"] == "#club"
        assert ok(post(quinn, "join", token=link["token"]), "pending")["room"] == "#club"
        members = ok(post(olga, "members", room="#club"), "members")
        assert members["members"] == ["olga"] and sorted(members["pending"]) == ["pat", "quinn"]
        ok(post(olga, "approve", room="#club", user="pat"), "ok")
        ok(post(olga, "deny", room="#club", user="quinn"), "ok")
        ok(post(olga, "invite", room="#club", user="rex"), "ok")
        members = ok(post(pat, "members", room="#club"), "members")
        assert sorted(members["members"]) == ["olga", "pat", "rex"]
        assert ok(post(pat, "send", to="#club", text="in the club"), "ack")
        rooms = ok(post(pat, "rooms"), "rooms")["rooms"]
        assert [(r["room"], r["private"], r["owner"]) for r in rooms] == [("#club", True, "olga")]
        # a public one, joined by name and left
        assert (
            ok(post(olga, "create_room", room="#open", private=False), "room")["private"] is False
        )
        assert ok(post(quinn, "join", room="#open"), "joined")["room"] == "#open"
        assert "#open" in [r["room"] for r in ok(post(quinn, "rooms"), "rooms")["rooms"]]
        assert ok(post(quinn, "leave", room="#open"), "left")["room"] == "#open"

        # scheduling
        sched = ok(post(olga, "schedule", to=GENERAL, text="later", **{"in": 600}), "scheduled")
        assert sched["to"] == GENERAL and sched["at"] > time.time() * 1000 + 500_000
        items = ok(post(olga, "schedules"), "schedules")["items"]
        assert [(i["sid"], i["text"]) for i in items] == [(sched["sid"], "later")]
        assert ok(post(olga, "cancel", sid=sched["sid"]), "cancelled")["sid"] == sched["sid"]
        assert ok(post(olga, "schedules"), "schedules")["items"] == []

        # moderation and the small ones
        reported = ok(post(pat, "report", user="quinn", reason="spam"), "reported")
        assert reported["counted"] is True and reported["reports"] == 1
        assert reported["threshold"] == 3 and reported["banned_until"] is None
        assert ok(post(pat, "ping"), "pong")
        assert "/private" in ok(post(pat, "help"), "notice")["text"]

        # a poll: everything unread, every conversation, oldest first
        polled = ok(get(rex, "/messages"), "messages")
        assert polled["more"] is False
        assert [m["text"] for m in polled["messages"]] == ["first", "re: first", "in the club"]
        assert ok(get(rex, "/messages"), "messages")["messages"] == []
        assert ok(post(rex, "leave", room="#club"), "left")["room"] == "#club"

        # logging out, by each name: that token ends, the user's others do not
        for path in ("/disconnect", "/logout", "/quit"):
            token = connect(port, "olga")
            assert ok(call(port, "POST", path, token=token), "bye") == {"type": "bye"}
            gone = get(token, "/status")
            assert gone.status == 401 and gone.code == "not_logged_in"
            assert "revoked" in gone.json["message"]
        ok(get(olga, "/status"), "status")

        # urllib's reading of the same
        tok = urlopen(port, "POST", "/connect", {"user": "uma", "password": "pw"}).json["token"]
        assert (
            urlopen(port, "POST", "/send", {"to": "olga", "text": "via urllib"}, tok).type == "ack"
        )
        hist = ok(urlopen(port, "GET", "/history?with=%23general&limit=1", token=tok), "history")
        assert [m["text"] for m in hist["messages"]] == ["re: first"]
        assert ok(urlopen(port, "GET", "/status", token=tok), "status")["user"] == "uma"
        assert ok(urlopen(port, "GET", f"/status?token={tok}"), "status")["user"] == "uma"
        assert ok(urlopen(port, "POST", "/disconnect", token=tok), "bye")
        assert urlopen(port, "GET", "/status", token=tok).status == 401

    await asyncio.to_thread(run)
    assert_logged(deployment, "POST", "/send", 200, "olga")
    assert_logged(deployment, "GET", "/history", 200, "olga")
    assert_logged(deployment, "POST", "/members", 200, "pat")
    assert_logged(deployment, "GET", "/messages", 200, "rex")
    assert_logged(deployment, "POST", "/connect", 200, "uma")


async def test_poll_first_gives_recent_general_then_pages_of_500(deployment: Deployment) -> None:
    port = deployment.port
    sid = await deployment.login("sid")
    older = await asyncio.gather(*(sid.send(GENERAL, f"g{i}") for i in range(25)))
    newt = await aconnect(port, "newt")
    first = ok(await acall(port, "GET", "/messages", token=newt), "messages")
    # a brand new user's first poll: #general's last 20, as a first login shows them
    assert [m["id"] for m in first["messages"]] == sorted(older, key=id_key)[-20:]
    assert first["more"] is False
    assert ok(await acall(port, "GET", "/messages", token=newt), "messages")["messages"] == []

    sent = list(await asyncio.gather(*(sid.send("newt", f"d{i}") for i in range(505))))
    sent.append(await sid.send(GENERAL, "last"))
    page = ok(await acall(port, "GET", "/messages", token=newt), "messages")
    assert page["more"] is True and len(page["messages"]) == 500
    page2 = ok(await acall(port, "GET", "/messages", token=newt), "messages")
    assert page2["more"] is False
    got = [m["id"] for m in page["messages"] + page2["messages"]]
    assert got == sorted(sent, key=id_key)  # oldest first across conversations, once each
    assert {m["to"] for m in page2["messages"]} == {"newt", GENERAL}
    assert ok(await acall(port, "GET", "/messages", token=newt), "messages")["messages"] == []

    # The cursors moved are the user's own: a JSON-lines login has nothing to replay.
    conn = await deployment.connect()
    result = await conn.login("newt", "pw")
    assert result.welcome["unread"] == {} and result.replayed == []


async def test_error_statuses(deployment: Deployment) -> None:
    port = deployment.port
    who = await aconnect(port, "wendy")
    troll = await aconnect(port, "troll")
    reporters = [await aconnect(port, f"rep{i}") for i in range(3)]

    def bad(reply: Reply, status: int, code: str) -> dict[str, Any]:
        assert reply.status == status, reply
        assert reply.code == code, reply
        return reply.json

    def run() -> None:
        # 400: a body that is not a JSON object, a missing or wrong field, a bad query
        for junk in (b"{bad", b"[1, 2]", b'"text"', b"\xff\xfe"):
            bad(call(port, "POST", "/send", junk, who), 400, "bad_request")
        bad(call(port, "POST", "/send", {"to": GENERAL}, who), 400, "bad_request")
        bad(call(port, "POST", "/send", {"to": GENERAL, "text": 7}, who), 400, "bad_request")
        bad(call(port, "GET", "/history?with=%23general&limit=abc", token=who), 400, "bad_request")
        long = call(port, "POST", "/send", {"to": GENERAL, "text": "x" * 4001}, who)
        bad(long, 400, "too_long")
        bad(call(port, "POST", "/connect", {"user": "no such!", "password": "x"}), 400, "bad_name")
        bad(call(port, "POST", "/connect", b"user=a&password=b"), 400, "bad_request")
        events = call(port, "GET", "/events", token=who, headers={"Last-Event-ID": "garbage"})
        bad(events, 400, "bad_request")
        bad(call(port, "POST", "/nope", token=who), 404, "not_found")

        # 401: no token (with WWW-Authenticate), an unknown one, another scheme, a bad password
        missing = call(port, "GET", "/status")
        assert bad(missing, 401, "not_logged_in")
        assert missing.headers["www-authenticate"].startswith("Bearer")
        for headers in ({"Authorization": "Bearer nope"}, {"Authorization": f"Basic {who}"}):
            unknown = call(port, "GET", "/status", headers=headers)
            bad(unknown, 401, "not_logged_in")
            assert "www-authenticate" in unknown.headers
        bad(call(port, "GET", "/status?token=nope"), 401, "not_logged_in")
        bad(call(port, "POST", "/send", {"to": GENERAL, "text": "x"}), 401, "not_logged_in")
        bad(call(port, "GET", "/events"), 401, "not_logged_in")
        wrong = bad(
            call(port, "POST", "/connect", {"user": "wendy", "password": "no"}), 401, "bad_password"
        )
        assert "token" not in wrong

        # 403: a banned user (three reports), a private room's outsider
        for rep in reporters:
            ok(call(port, "POST", "/report", {"user": "troll"}, rep), "reported")
        banned = call(port, "POST", "/send", {"to": GENERAL, "text": "hi"}, troll)
        body = bad(banned, 403, "banned")
        assert body["until"] > time.time() * 1000
        assert int(banned.headers["retry-after"]) == body["retry_after"] > 0
        ok(call(port, "POST", "/create_room", {"room": "#vault"}, who), "room")
        outsider = reporters[0]
        bad(call(port, "POST", "/members", {"room": "#vault"}, outsider), 403, "forbidden")
        bad(
            call(port, "POST", "/send", {"to": "#vault", "text": "let me in"}, outsider),
            403,
            "forbidden",
        )
        bad(
            call(port, "POST", "/invite", {"room": "#vault", "user": "rep1"}, outsider),
            403,
            "forbidden",
        )

        # 404: an unknown path (no token needed to learn that), not_found, unknown_user
        bad(call(port, "GET", "/nope"), 404, "not_found")
        bad(call(port, "GET", "/nope/"), 404, "not_found")
        bad(call(port, "POST", "/login/extra", {"user": "x", "password": "y"}), 404, "not_found")
        bad(call(port, "POST", "/cancel", {"sid": "nope"}, who), 404, "not_found")
        bad(call(port, "POST", "/send", {"to": "nobody", "text": "x"}, who), 404, "unknown_user")
        thread = call(port, "POST", "/thread", {"with": GENERAL, "id": "1-0"}, who)
        bad(thread, 404, "not_found")

        # 405 with Allow
        for method, path, allow in (
            ("GET", "/send", "POST, OPTIONS"),
            ("GET", "/connect", "POST, OPTIONS"),
            ("DELETE", "/status", "GET, POST, HEAD, OPTIONS"),
            ("POST", "/messages", "GET, HEAD, OPTIONS"),
            ("PUT", "/events", "GET, HEAD, OPTIONS"),
        ):
            wrong_method = call(port, method, path, token=who)
            assert wrong_method.status == 405, (method, path, wrong_method)
            assert wrong_method.json["type"] == "error"
            assert wrong_method.headers["allow"] == allow
        assert urlopen(port, "GET", "/send", token=who).headers["allow"] == "POST, OPTIONS"

        # 409
        bad(call(port, "POST", "/create_room", {"room": "#vault"}, troll), 409, "exists")

        # a JSON body of exactly the limit is read; one byte more is not
        pad = MAX_BODY - len(json.dumps({"to": GENERAL, "text": "edge"}).encode())
        edge = json.dumps({"to": GENERAL, "text": "edge"}).encode() + b" " * pad
        assert len(edge) == MAX_BODY
        ok(call(port, "POST", "/send", edge, who), "ack")
        bad(call(port, "POST", "/send", edge + b" ", who), 413, "too_large")

    await asyncio.to_thread(run)

    # 413 from the headers alone: the answer comes, and the connection closes, though
    # the body is never sent.
    for length in (MAX_BODY + 1, 10**12):
        head = f"POST /send HTTP/1.1\r\nHost: chat\r\nAuthorization: Bearer {who}\r\n"
        head += f"Content-Type: application/json\r\nContent-Length: {length}\r\n\r\n"
        got = await raw(port, head.encode(), timeout=5)
        assert got.closed, got
        (answer,), rest = parse_responses(got.data, ["POST"])
        assert answer.status == 413 and answer.code == "too_large" and rest == b""
        assert answer.headers["connection"] == "close"
    # an unreadable request: 400, then the connection closes
    got = await raw(port, b"GET /status HTTP/1.1\r\nHost: chat\r\nno colon here\r\n\r\n")
    (answer,), _ = parse_responses(got.data, ["GET"])
    assert got.closed and answer.status == 400 and answer.code == "bad_request"

    assert_logged(deployment, "POST", "/send", 403, "troll")
    assert_logged(deployment, "POST", "/create_room", 409, "troll")
    assert_logged(deployment, "GET", "/nope", 404, "None")
    assert_logged(deployment, "DELETE", "/status", 405, "None")
    assert not tracebacks(deployment.logs())


async def test_rate_limited_429_and_redis_down_503(
    own_redis: list[RedisServer], tmp_path: Path
) -> None:
    limits = ["--conn-send-rate", "1", "--conn-send-burst", "1", "--rate-limit", "2"]
    dep = Deployment(own_redis[0], tmp_path, gateways=1, extra=limits)
    async with running(dep):
        port = dep.port
        ivy = await aconnect(port, "ivy")

        def limited(reply: Reply) -> int:
            assert reply.status == 429 and reply.code == "rate_limited", reply
            retry = int(reply.headers["retry-after"])
            assert retry == reply.json["retry_after"] and retry >= 1
            return retry

        def per_connection() -> None:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
            try:  # one connection: one send a second, with a burst of one
                ok(request(conn, "POST", "/send", {"to": "ivy", "text": "1"}, ivy), "ack")
                limited(request(conn, "POST", "/send", {"to": "ivy", "text": "2"}, ivy))
                ok(request(conn, "GET", "/status", token=ivy), "status")
                limited(request(conn, "GET", "/status", token=ivy))
                ok(request(conn, "POST", "/ping", token=ivy), "pong")  # not paced
            finally:
                conn.close()

        def per_user() -> None:  # --rate-limit: two public messages a window, any connection
            for i in range(2):
                ok(call(port, "POST", "/send", {"to": GENERAL, "text": f"p{i}"}, ivy), "ack")
            assert limited(call(port, "POST", "/send", {"to": GENERAL, "text": "p2"}, ivy)) > 1

        await asyncio.to_thread(per_connection)
        await asyncio.to_thread(per_user)
        assert_logged(dep, "POST", "/send", 429, "ivy")

        own_redis[0].pause()
        try:
            down, conn_down = await asyncio.gather(
                acall(port, "GET", "/status", token=ivy),
                acall(port, "POST", "/connect", {"user": "ivy", "password": "pw"}),
            )
        finally:
            own_redis[0].resume()
        for reply in (down, conn_down):
            assert reply.status == 503 and reply.code == "unavailable", reply
            assert int(reply.headers["retry-after"]) >= 1
        ok(await acall(port, "GET", "/status", token=ivy), "status")
        await wait_log(dep, r"http GET /status 503 user=None")


# ---------------------------------------------------------------------------
# 3 and 6. Connections: keep-alive, pipelining, bodies in pieces, closing, timeouts
# ---------------------------------------------------------------------------


async def test_keepalive_pipelining_bodies_head_options_and_timeouts(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    async with running(Deployment(redis_server, tmp_path, gateways=1, extra=FAST_HTTP)) as dep:
        port = dep.port
        kim = await aconnect(port, "kim")

        def keepalive() -> list[str]:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
            try:
                request(conn, "POST", "/ping", token=kim)
                assert conn.sock is not None
                sock, local = conn.sock, conn.sock.getsockname()
                ids = []
                for i in range(200):
                    if i % 3 == 0:
                        ack = ok(
                            request(conn, "POST", "/send", {"to": "kim", "text": f"k{i}"}, kim),
                            "ack",
                        )
                        ids.append(ack["id"])
                    elif i % 3 == 1:
                        assert ok(request(conn, "GET", "/status", token=kim), "status")
                    else:
                        reply = request(conn, "HEAD", "/status", token=kim)
                        assert reply.status == 200 and reply.body == b""
                    # the same socket all along: http.client did not have to reconnect
                    assert conn.sock is sock and sock.getsockname() == local
                return ids
            finally:
                conn.close()

        ids = await asyncio.to_thread(keepalive)
        hist = ok(await acall(port, "GET", "/history?with=kim&limit=100", token=kim), "history")
        assert [m["id"] for m in hist["messages"]] == ids

        # Pipelining: requests in one write, answers in order (a slow one first: a
        # login's password check), none after the one that closes.
        pipelined = (
            http_request("POST", "/connect", b'{"user": "kim", "password": "pw"}')
            + http_request("POST", "/send", b'{"to": "kim", "text": "piped"}', token=kim)
            + http_request("GET", "/log?limit=1", token=kim)
            + http_request("POST", "/ping", token=kim, extra="Connection: close\r\n")
            + http_request("GET", "/status", token=kim)
        )
        got = await raw(port, pipelined)
        answers, rest = parse_responses(got.data, ["POST", "POST", "GET", "POST"])
        assert got.closed and rest == b"", got
        assert [a.type for a in answers] == ["connected", "ack", "log", "pong"]
        assert answers[2].json["messages"][0]["id"] == answers[1].json["id"]
        assert (
            "connection" not in answers[1].headers and answers[3].headers["connection"] == "close"
        )
        # three at once, as the brief's own example: three answers, in order, on one socket
        three = b"".join(http_request("POST", "/ping", token=kim) for _ in range(2))
        three += http_request("GET", "/status", token=kim, extra="Connection: close\r\n")
        got = await raw(port, three)
        answers, rest = parse_responses(got.data, ["POST", "POST", "GET"])
        assert [a.type for a in answers] == ["pong", "pong", "status"] and rest == b""

        # Expect: 100-continue: "go on" first, then the answer; over the limit, a 413 and
        # no "go on"
        body = b'{"to": "kim", "text": "after 100"}'
        ask = http_request("POST", "/send", body, token=kim, extra="Expect: 100-continue\r\n")
        got = await raw(port, [ask[: -len(body)], body], pause=0.2, until=lambda d: b"ack" in d)
        assert re.match(rb"HTTP/1\.1 100 .*\r\n\r\nHTTP/1\.1 200 ", got.data), got
        big = ask[: -len(body)].replace(b"Content-Length: %d" % len(body), b"Content-Length: 99999")
        got = await raw(port, big)
        (answer,), _ = parse_responses(got.data, ["POST"])
        assert got.closed and answer.status == 413 and got.data.startswith(b"HTTP/1.1 413 ")

        # A body (and the headers) in many small writes with pauses.
        body = json.dumps({"to": "kim", "text": "in pieces " + "é" * 40}).encode()
        whole = http_request("POST", "/send", body, token=kim, extra="Connection: close\r\n")
        cut = len(whole) - len(body)
        parts = [whole[:10], whole[10 : cut - 3], whole[cut - 3 : cut]]
        parts += [body[i : i + 9] for i in range(0, len(body), 9)]
        got = await raw(port, parts, pause=0.05)
        (answer,), _ = parse_responses(got.data, ["POST"])
        assert got.closed and ok(answer, "ack")
        last = ok(await acall(port, "GET", "/log?limit=1", token=kim), "log")["messages"][0]
        assert last["id"] == answer.json["id"] and last["text"] == "in pieces " + "é" * 40

        # A chunked upload, as http.client sends an iterable body.
        def chunked() -> Reply:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
            text = json.dumps({"to": "kim", "text": "chunked " + "z" * 3000}).encode()
            pieces = [text[i : i + 100] for i in range(0, len(text), 100)]
            try:
                conn.request(
                    "POST",
                    "/send",
                    body=iter(pieces),
                    encode_chunked=True,
                    headers={"Authorization": f"Bearer {kim}", "Transfer-Encoding": "chunked"},
                )
                resp = conn.getresponse()
                return Reply(resp.status, dict(resp.getheaders()), resp.read())
            finally:
                conn.close()

        ack = await asyncio.to_thread(chunked)
        assert ack.status == 200, ack
        last = ok(await acall(port, "GET", "/log?limit=1", token=kim), "log")["messages"][0]
        assert last["id"] == json.loads(ack.body)["id"] and last["text"] == "chunked " + "z" * 3000
        # a chunked body over the limit is refused as it arrives
        over = b"POST /send HTTP/1.1\r\nHost: chat\r\nTransfer-Encoding: chunked\r\n"
        over += f"Authorization: Bearer {kim}\r\n\r\n".encode()
        over += b"%x\r\n%s\r\n" % (MAX_BODY + 10, b" " * (MAX_BODY + 10))
        got = await raw(port, over)
        (answer,), _ = parse_responses(got.data, ["POST"])
        assert got.closed and answer.status == 413 and answer.code == "too_large"

        # HTTP/1.0 and Connection: close: the answer, then the server closes.
        for req in (
            f"GET /status HTTP/1.0\r\nAuthorization: Bearer {kim}\r\n\r\n".encode(),
            http_request("GET", "/status", token=kim, extra="Connection: close\r\n"),
        ):
            got = await raw(port, req)
            (answer,), rest = parse_responses(got.data, ["GET"])
            assert got.closed and rest == b"" and ok(answer, "status")["user"] == "kim"

        # HEAD: the headers of the GET, no body; and no effect (a HEAD poll moves nothing).
        ok(await acall(port, "POST", "/send", {"to": "kim", "text": "unread"}, kim), "ack")
        for path in ("/status", "/messages", "/history?with=kim"):
            got = await raw(
                port, http_request("HEAD", path, token=kim, extra="Connection: close\r\n")
            )
            head, sep, after = got.data.partition(b"\r\n\r\n")
            assert got.closed and sep and after == b"", got
            assert head.startswith(b"HTTP/1.1 200 ") and b"content-type: application/json" in head
        polled = ok(await acall(port, "GET", "/messages", token=kim), "messages")["messages"]
        assert polled and polled[-1]["text"] == "unread"

        # OPTIONS: 204 with Allow, no token needed
        for path, allow in (
            ("/send", "POST, OPTIONS"),
            ("/status", "GET, POST, HEAD, OPTIONS"),
            ("/events", "GET, HEAD, OPTIONS"),
            ("/connect", "POST, OPTIONS"),
        ):
            reply = await acall(port, "OPTIONS", path)
            assert reply.status == 204 and reply.body == b"" and reply.headers["allow"] == allow
        assert (await acall(port, "OPTIONS", "/nope")).status == 404

        # 6. Half a request line, or headers that stop half-way, then nothing: 408 once
        # the header timeout (1 s) passes, then closed. An idle keep-alive connection is
        # closed after --http-keepalive-s (2 s). All three at once.
        async def timed(parts: bytes) -> tuple[Raw, float]:
            began = time.monotonic()
            got = await raw(port, parts, timeout=8)
            return got, time.monotonic() - began

        (half_line, t1), (half_headers, t2), (idle, t3) = await asyncio.gather(
            timed(b"GET /sta"),
            timed(f"GET /status HTTP/1.1\r\nAuthorization: Bearer {kim}\r\n".encode()),
            timed(http_request("GET", "/status", token=kim)),
        )
        for got, took in ((half_line, t1), (half_headers, t2)):
            (answer,), rest = parse_responses(got.data, ["GET"])
            assert got.closed and answer.status == 408 and rest == b"", got
            assert answer.json["type"] == "error" and took >= 1.0  # not before its time
        (answer,), rest = parse_responses(idle.data, ["GET"])
        assert ok(answer, "status") and rest == b"" and idle.closed and t3 >= 2.0
        assert dep.gateways[0].alive()


# ---------------------------------------------------------------------------
# 4. Server-Sent Events
# ---------------------------------------------------------------------------


async def test_events_live_heartbeat_logout_and_slow_consumer(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    extra = ["--sse-heartbeat-s", "1", "--max-outbox-bytes", "65536"]
    dep = Deployment(redis_server, tmp_path, extra=extra)
    async with running(dep), contextlib.AsyncExitStack() as stack:
        port = dep.port
        lea = await aconnect(port, "lea")
        max_ = await deployment_login(dep, "max")
        early = await max_.send("lea", "before the stream")

        stream = await stack.enter_async_context(await Sse.open(port, lea))
        assert stream.headers["cache-control"] == "no-store"
        first = await stream.next()
        assert first is not None and first.retry == 2000
        welcome = (await stream.until(is_type("welcome"))).data
        assert welcome is not None and welcome["gateway"] in ("gw1", "gw2")
        assert welcome == {
            "type": "welcome",
            "user": "lea",
            "new": False,
            "unread": {"max": 1},
            "gateway": welcome["gateway"],
        }
        replayed = await stream.until(is_type("message"))
        assert replayed.data is not None and replayed.data["id"] == early
        assert replayed.data["replay"] is True and replayed.id == f"max={early}"
        await stream.until(is_type("synced"))

        # live: over JSON lines from another user, in a room and privately
        in_room = await max_.send(GENERAL, "hello room")
        ev = await stream.until(text_is("hello room"))
        assert ev.data is not None and ev.data["id"] == in_room and "replay" not in ev.data
        assert ev.data["from"] == "max" and ev.data["to"] == GENERAL
        assert ev.id == f"max={early},#general={in_room}"
        private = await max_.send("lea", "hello lea,\nsecond line\r\n\u2028é")
        ev = await stream.until(text_is("hello lea,\nsecond line\r\n\u2028é"))
        assert ev.id == f"#general={in_room},max={private}" and ID_LINE.match(ev.id)
        # her own message sent over HTTP shows in her stream, under the other's name
        mine = ok(await acall(port, "POST", "/send", {"to": "max", "text": "hi max"}, lea), "ack")
        ev = await stream.until(text_is("hi max"))
        assert ev.id == f"#general={in_room},max={mine['id']}"
        # a heartbeat comment while nothing happens
        beat = await stream.until(lambda e: e.comment is not None, timeout=5)
        assert beat.comment == "keep-alive" and beat.data is None
        # the ?token= form (what a browser's EventSource has to use), on the other gateway
        other = "gw2" if welcome["gateway"] == "gw1" else "gw1"
        by_query = await sse_on(stack, port, other, lea, in_query=True)

        # Logging out ends every stream opened with that token, on both gateways: `bye`.
        ok(await acall(port, "POST", "/disconnect", token=lea), "bye")
        for s in (stream, by_query):
            tail = await s.rest(timeout=5)
            assert [e.type for e in tail if e.data] == ["bye"], tail
            assert s.clean_end
        again = await stack.enter_async_context(await Sse.open(port, lea))
        assert again.error is not None and again.error.status == 401
        await wait_log(dep, r"http GET /events 200 user=lea ")

        # A stream nobody reads is cut off as a slow consumer; the gateway serves on.
        slow = await aconnect(port, "slowpoke")
        flo = await aconnect(port, "flo")
        witnesses = [await dep.connect_on(gw.name, f"wit{i}") for i, gw in enumerate(dep.gateways)]
        staller = socket.socket()
        staller.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        try:
            staller.connect(("127.0.0.1", port))
            staller.sendall(http_request("GET", "/events", token=slow))
            await wait_log(dep, r"http events user=slowpoke ")
            # (flooded over HTTP: a sender with a live session would get its echoes too)
            await asyncio.to_thread(flood, port, flo, "slowpoke", 150)
            m = await wait_log(dep, r"\[(gw\d)\] redchat.session: slow_consumer user=slowpoke ")
            cut_on = m.group(1)
            # the server closed the stalled stream
            staller.setblocking(False)
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 10
            while loop.time() < deadline:
                try:
                    if not await asyncio.wait_for(loop.sock_recv(staller, 1 << 20), 5):
                        break
                except ConnectionError:
                    break
            else:
                raise AssertionError("the stalled stream was not closed")
        finally:
            staller.close()
        assert all(gw.alive() for gw in dep.gateways), cut_on
        after = await max_.send(GENERAL, "still serving")
        for w in witnesses:
            assert (await message_with(w, "still serving"))["id"] == after
        fresh = await aconnect(port, "fresh")
        ok(await acall(port, "GET", "/status", token=fresh), "status")
        assert not tracebacks(dep.logs())


async def test_events_resume_after_the_gateway_is_killed(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """The stream's gateway dies (kill -9) with messages just sent; more are sent while
    the stream is down; ``Last-Event-ID`` on the survivor resumes without gap or
    duplicate."""
    dep = Deployment(redis_server, tmp_path)
    async with running(dep), contextlib.AsyncExitStack() as stack:
        port = dep.port
        rita = await aconnect(port, "rita")
        first = await stack.enter_async_context(await Sse.open(port, rita))
        welcome = await first.until(is_type("welcome"))
        assert welcome.data is not None
        held_by = welcome.data["gateway"]
        survivor = next(gw.name for gw in dep.gateways if gw.name != held_by)
        await first.until(is_type("synced"))
        sam = await dep.connect_on(survivor, "Sam")  # a name in capitals: ids are lower-case
        sent: list[str] = []
        sent_in: list[str] = []  # each sent id's conversation, as conv_of names it

        def conv_of(m: dict[str, Any]) -> str:  # as the SSE id names it
            return conversation_of(m, "rita").lower()

        async def send(i: int) -> None:
            to = GENERAL if i % 3 == 0 else "rita"
            sent.append(await sam.send(to, f"m{i}"))
            sent_in.append(GENERAL if to == GENERAL else "sam")

        for i in range(6):  # live, and read
            await send(i)
        await first.until(text_is("m5"))
        for i in range(6, 9):  # stored just before the kill, maybe on their way
            await send(i)
        holder = next(gw for gw in dep.gateways if gw.name == held_by)
        os.kill(holder.pid, signal.SIGSTOP)  # frozen: the next ones cannot get out
        for i in range(9, 12):
            await send(i)
        holder.kill()
        await first.rest(timeout=10)  # whatever got out before the kill
        assert not first.clean_end
        for i in range(12, 18):  # while the stream is down
            await send(i)

        got_first = first.messages()
        last_id = next(ev.id for ev in reversed(first.events) if ev.type == "message")
        assert last_id is not None and ID_LINE.match(last_id)
        assert set(dict(p.split("=") for p in last_id.split(","))) == {"#general", "sam"}
        second = await stack.enter_async_context(await Sse.open(port, rita, last_id))
        welcome2 = await second.until(is_type("welcome"))
        assert welcome2.data is not None and welcome2.data["gateway"] == survivor
        await second.until(is_type("synced"))
        replayed = second.messages()
        assert all(m.get("replay") is True for m in replayed), replayed
        for i in range(18, 21):  # live again
            await send(i)
        await second.until(text_is("m20"))
        live = second.messages()[len(replayed) :]
        assert all("replay" not in m for m in live), live

        ids = [m["id"] for m in got_first + second.messages()]
        assert sorted(ids, key=id_key) == sorted(sent, key=id_key), (
            f"first stream: {[m['text'] for m in got_first]}; "
            f"resumed with {last_id}: {[m['text'] for m in second.messages()]}"
        )
        assert 6 <= len(got_first) <= 9 and live  # both streams carried messages
        for stream in (first, second):  # each conversation in order in each stream
            for conv in (GENERAL, "sam"):
                seq = [m["id"] for m in stream.messages() if conv_of(m) == conv]
                assert seq == sorted(seq, key=id_key)
        # the resumed stream's ids go on from where the first stopped
        last = next(ev.id for ev in reversed(second.events) if ev.type == "message")
        assert last is not None
        newest: dict[str, str] = {}
        for m in got_first + second.messages():
            conv = conv_of(m)
            newest[conv] = max(newest.get(conv, m["id"]), m["id"], key=id_key)
        assert dict(p.split("=") for p in last.split(",")) == newest

        # Any id resumes right after it, whatever the cursors say: from m2's, m3 on.
        mid = next(ev.id for ev in first.events if ev.data and ev.data.get("text") == "m2")
        third = await stack.enter_async_context(await Sse.open(port, rita, mid))
        await third.until(is_type("synced"))
        # Ids are per conversation: two sent in one millisecond to the two may replay
        # in either order, so each conversation's are compared.
        for conv in (GENERAL, "sam"):
            got = [m["id"] for m in third.messages() if conv_of(m) == conv]
            want = [i for i, c in list(zip(sent, sent_in, strict=True))[3:] if c == conv]
            assert got == want
        assert len(third.messages()) == len(sent) - 3
        assert all(m.get("replay") is True for m in third.messages())


# ---------------------------------------------------------------------------
# 5. The framings reach each other
# ---------------------------------------------------------------------------


async def test_http_json_lines_and_text_reach_each_other(deployment: Deployment) -> None:
    dep, port = deployment, deployment.port
    hal = await aconnect(port, "hal")
    jay = await dep.connect_on("gw1", "jay")
    tex = await text_on(dep, "gw1", "tex")

    # over HTTP on gw2, to a JSON-lines client and a text client on gw1
    conn = await asyncio.to_thread(http_on, port, "gw2", hal)
    try:
        room = await asyncio.to_thread(
            request, conn, "POST", "/send", {"to": GENERAL, "text": "from http"}, hal
        )
        dm_jay = await asyncio.to_thread(
            request, conn, "POST", "/send", {"to": "jay", "text": "dm from http"}, hal
        )
        dm_tex = await asyncio.to_thread(
            request, conn, "POST", "/send", {"to": "tex", "text": "psst tex"}, hal
        )
    finally:
        conn.close()
    got = await message_with(jay, "from http")
    assert got["id"] == ok(room, "ack")["id"] and got["from"] == "hal" and got["to"] == GENERAL
    got = await message_with(jay, "dm from http")
    assert got["id"] == ok(dm_jay, "ack")["id"] and got["to"] == "jay"
    assert ok(dm_tex, "ack")
    assert re.fullmatch(r"\d\d:\d\d:\d\d \[\d+\] hal: from http", await tex.expect("from http"))
    assert re.search(r"\(private\) hal: psst tex$", await tex.expect("psst tex"))
    assert not any("dm from http" in line for line in tex.lines)

    # over JSON lines and text on gw1, to an HTTP poll and an event stream on gw2
    reader = await aconnect(port, "ria")
    async with contextlib.AsyncExitStack() as stack:
        stream = await sse_on(stack, port, "gw2", reader)
        json_id = await jay.send("ria", "from json lines")
        await tex.send("/private to ria from text lines\n")
        await tex.send("to everyone, from text\n")
        ev = await stream.until(text_is("from json lines"))
        assert ev.data is not None and ev.data["id"] == json_id and ev.id is not None
        assert ev.id.endswith(f"jay={json_id}")
        ev = await stream.until(text_is("from text lines"))
        assert ev.data is not None and ev.data["from"] == "tex" and ev.data["to"] == "ria"
        ev = await stream.until(text_is("to everyone, from text"))
        assert ev.data is not None and ev.data["to"] == GENERAL

    poller = await aconnect(port, "polly")
    await jay.send("polly", "poll me")
    await tex.send("/msg polly and me\n")
    await tex.expect(r"and me")  # stored (the sender sees its own message)

    def poll() -> list[dict[str, Any]]:
        pc = http_on(port, "gw2", poller)
        try:
            return list(ok(request(pc, "GET", "/messages", token=poller), "messages")["messages"])
        finally:
            pc.close()

    texts = [m["text"] for m in await asyncio.to_thread(poll) if m["to"] == "polly"]
    assert texts == ["poll me", "and me"]


# ---------------------------------------------------------------------------
# 7. Fuzz: whatever follows an HTTP method, the answer is HTTP or a close
# ---------------------------------------------------------------------------

METHODS: Final = ["GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH", "CONNECT", "TRACE"]
PATHS: Final = [
    "/", "*", "/connect", "/login", "/disconnect", "/send", "/status", "/messages", "/events",
    "/history?with=%23general&limit=3", "/log?limit=2", "/ping", "/rooms", "/nope",
    "/status?token=%ff", "/history?with=%ff%fe", "/" + "a" * 400, "/send?x=1&x=2", "//status",
    "http://chat/status",
]  # fmt: skip
HEADER_NAMES: Final = [
    "Host", "Content-Length", "Transfer-Encoding", "Connection", "Authorization", "Expect",
    "Last-Event-ID", "Content-Type", "Upgrade", "X-Junk", "Cookie",
]  # fmt: skip
TOKEN: Final = "@TOKEN@"  # replaced by a live token in each example
HEADER_VALUES: Final = [
    "0", "5", "-1", "99999999999999999999", "1, 2", "chunked", "gzip, chunked", "identity",
    "close", "keep-alive", "Upgrade", "100-continue", f"Bearer {TOKEN}", "Bearer ", "Basic x",
    "#general=1-0", "#general=99999999999999999999-0", "application/json", "h2c", "",
]  # fmt: skip

printable = st.text(
    st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40
)  # header-safe text
raw_value = st.binary(max_size=40)
header_names = st.sampled_from(HEADER_NAMES) | st.from_regex(
    r"[A-Za-z0-9!#$%&'*+.^_`|~-]{0,20}", fullmatch=True
)  # valid field names, and the empty one
headers = st.lists(
    st.tuples(
        header_names,
        st.sampled_from(HEADER_VALUES).map(str.encode) | printable.map(str.encode) | raw_value,
    ),
    max_size=5,
)
bodies = st.sampled_from(
    [b"", b"{}", b'{"user": "fz", "password": "pw"}', b'{"to": "#general", "text": "fuzz"}',
     b"0\r\n\r\n", b"5\r\nhello\r\n0\r\n\r\n", b"zz\r\n"]
) | st.binary(max_size=200)  # fmt: skip


@st.composite
def fuzz_requests(draw: st.DrawFn) -> bytes:
    method = draw(st.sampled_from(METHODS)).encode()
    if draw(st.integers(0, 2)) == 0:  # anything after the method
        return method + b" " + draw(st.binary(max_size=300))
    path = draw(st.sampled_from(PATHS) | printable.map(lambda s: "/" + s)).encode()
    version = draw(st.sampled_from([b"HTTP/1.1"] * 4 + [b"HTTP/1.0", b"HTTP/2.0", b"HTTP/1.1x"]))
    line = method + b" " + path + b" " + version + b"\r\n"
    fields = draw(headers)
    if draw(st.integers(0, 4)):
        fields.insert(draw(st.integers(0, len(fields))), ("Host", b"chat"))
    head = b"".join(name.encode() + b": " + value + b"\r\n" for name, value in fields)
    return line + head + b"\r\n" + draw(bodies)


@dataclass
class FuzzTarget:
    port: int
    dep: Deployment
    answers: list[int] = field(default_factory=list)

    def exchange(self, data: bytes, half_close: bool) -> None:
        token = connect(self.port, "fuzzer")
        data = data.replace(TOKEN.encode(), token.encode())
        got = b""
        closed = False
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as sock:
            try:
                sock.sendall(data)
                if half_close:
                    sock.shutdown(socket.SHUT_WR)
                deadline = time.monotonic() + 5
                while len(got) < 13 and time.monotonic() < deadline:
                    sock.settimeout(max(0.01, deadline - time.monotonic()))
                    chunk = sock.recv(4096)
                    if not chunk:
                        closed = True
                        break
                    got += chunk
            except TimeoutError:
                pass
            except ConnectionError:
                closed = True
        if got:
            m = re.match(rb"HTTP/1\.1 (\d{3}) ", got)
            assert m, (data, got)
            status = int(m.group(1))
            assert status != 500, (data, got)
            self.answers.append(status)
        else:
            assert closed, f"no answer and not closed within 5 s: {data!r}"
        assert all(gw.alive() for gw in self.dep.gateways)


@pytest.mark.timeout(120)  # passing takes seconds; shrinking a failure takes longer
def test_fuzzed_requests_get_http_answers_or_a_close(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    dep = Deployment(redis_server, tmp_path, gateways=1, extra=FAST_HTTP)
    dep.start()
    try:
        target = FuzzTarget(dep.port, dep)

        @settings(
            max_examples=40,
            deadline=None,
            suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
        )
        @given(data=fuzz_requests(), half_close=st.integers(0, 9).map(lambda n: n != 7))
        @example(data=http_request("GET", "/status", token=TOKEN), half_close=True)
        @example(data=http_request("GET", "/events", token=TOKEN), half_close=False)
        @example(data=b"POST /send HTTP/1.1\r\nContent-Len", half_close=False)
        def check(data: bytes, half_close: bool) -> None:
            target.exchange(data, half_close)

        check()
        assert {200, 400, 408} <= set(target.answers), target.answers
        # the gateway lives and still serves
        assert dep.gateways[0].alive()
        token = connect(dep.port, "afterwards")
        assert ok(call(dep.port, "GET", "/status", token=token), "status")["user"] == "afterwards"
    finally:
        dep.stop()  # a gateway ignoring SIGTERM fails here
        print(dep.logs()[-3000:])
    logs = dep.logs()
    assert not tracebacks(logs) and "bug serving" not in logs, tracebacks(logs)


# ---------------------------------------------------------------------------
# Bugs this file found, each fixed: kept so they stay fixed
# ---------------------------------------------------------------------------


async def test_half_close_after_connection_close_logs_no_traceback(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    dep = Deployment(redis_server, tmp_path, gateways=1)
    async with running(dep):
        token = await aconnect(dep.port, "hank")
        wrong = b'{"user": "hank", "password": "wrong"}'
        requests = [
            b"POST /connect HTTP/1.0\r\nContent-Length: %d\r\n\r\n%s" % (len(wrong), wrong),
            http_request("GET", "/status", token=token, extra="Connection: close\r\n"),
        ]
        for req in requests * 3:  # as `printf '...' | nc -N host port` sends it
            got = await raw(dep.port, req, half_close=True)
            (answer,), rest = parse_responses(got.data, ["GET"])
            assert got.closed and rest == b"" and answer.status in (200, 401)
        # The dead task's exception is logged when it is collected, at the latest when
        # the gateway exits; stop it once the lingering connections are gone (2 s,
        # session.LINGER_S), which keeps test_shutdown_right_after_... out of this.
        await asyncio.sleep(3)
        dep.stop()
    assert not tracebacks(dep.logs()), tracebacks(dep.logs())[0]


async def test_shutdown_right_after_a_closing_http_answer_is_clean(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    dep = Deployment(redis_server, tmp_path, gateways=1)
    async with running(dep):
        await dep.login("jo")  # a JSON-lines client, told when the gateway goes
        reader, writer = await asyncio.open_connection("127.0.0.1", dep.port)
        try:
            writer.write(http_request("GET", "/nope", extra="Connection: close\r\n"))
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            assert head.startswith(b"HTTP/1.1 404 ")
            gw = dep.gateways[0]
            code = await asyncio.to_thread(gw.terminate)  # the client has not closed yet
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
        logs = gw.log_text()
        assert code == 0 and "stopped" in logs, tracebacks(logs)


async def test_refused_request_with_a_good_token_is_logged_with_its_user(
    deployment: Deployment,
) -> None:
    token = await aconnect(deployment.port, "lou")
    reply = await acall(deployment.port, "POST", "/send", {"to": GENERAL}, token)
    assert reply.status == 400 and reply.code == "bad_request"
    reply = await acall(deployment.port, "GET", "/history?with=%23general&limit=x", token=token)
    assert reply.status == 400
    assert_logged(deployment, "POST", "/send", 400, "lou")
    assert_logged(deployment, "GET", "/history", 400, "lou")


async def test_head_events_has_the_headers_of_get(deployment: Deployment) -> None:
    token = await aconnect(deployment.port, "hedy")
    head = await acall(deployment.port, "HEAD", "/events", token=token)
    assert head.status == 200 and head.body == b""
    async with await Sse.open(deployment.port, token) as stream:
        assert stream.status == 200
        assert head.headers["content-type"] == stream.headers["content-type"]

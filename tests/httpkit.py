"""An HTTP client for end-to-end tests: ``http.client`` underneath, JSON answers read
with checks (a 200 of the right event type, an error with its code)."""

from __future__ import annotations

import asyncio
import http.client
import json
import re
from dataclasses import dataclass
from typing import Any

__all__ = [
    "Reply", "acall", "aconnect", "call", "connect", "encode_body", "headers_for", "http_on", "ok",
    "parse_answer", "request",
]  # fmt: skip


@dataclass
class Reply:
    status: int
    headers: dict[str, str]  # lower-case names
    body: bytes

    @property
    def json(self) -> dict[str, Any]:
        assert self.headers.get("content-type", "").startswith("application/json"), self
        obj = json.loads(self.body)
        assert isinstance(obj, dict), self.body
        return obj

    @property
    def type(self) -> Any:
        return self.json.get("type")

    @property
    def code(self) -> Any:
        body = self.json
        assert body["type"] == "error" and isinstance(body["message"], str), body
        return body["code"]

    def __repr__(self) -> str:  # a 5 MiB body is not worth printing
        return f"Reply({self.status}, {self.headers}, {self.body[:300]!r}, {len(self.body)} bytes)"


def encode_body(body: Any) -> bytes | None:
    if body is None or isinstance(body, bytes):
        return body
    return json.dumps(body).encode()


def headers_for(token: str | None, headers: dict[str, str] | None, body: Any) -> dict[str, str]:
    out = {}
    if body is not None and not isinstance(body, bytes):  # raw bytes say their own type
        out["Content-Type"] = "application/json"
    if token is not None:
        out["Authorization"] = f"Bearer {token}"
    out.update(headers or {})
    return out


def request(
    conn: http.client.HTTPConnection,
    method: str,
    path: str,
    body: Any = None,
    token: str | None = None,
    headers: dict[str, str] | None = None,
) -> Reply:
    """One request on an open ``http.client`` connection (kept alive)."""
    data = encode_body(body)
    conn.request(method, path, body=data, headers=headers_for(token, headers, body))
    resp = conn.getresponse()
    got = resp.read()
    return Reply(resp.status, {k.lower(): v for k, v in resp.getheaders()}, got)


def call(
    port: int,
    method: str,
    path: str,
    body: Any = None,
    token: str | None = None,
    headers: dict[str, str] | None = None,
) -> Reply:
    """One request on a fresh connection (a new session, its own rate buckets)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
    try:
        return request(conn, method, path, body, token, headers)
    finally:
        conn.close()


async def acall(
    port: int,
    method: str,
    path: str,
    body: Any = None,
    token: str | None = None,
    headers: dict[str, str] | None = None,
) -> Reply:
    return await asyncio.to_thread(call, port, method, path, body, token, headers)


def connect(port: int, user: str, password: str = "pw", path: str = "/connect") -> str:
    reply = call(port, "POST", path, {"user": user, "password": password})
    assert reply.status == 200, reply
    body = reply.json
    assert body["type"] == "connected" and body["user"] == user, body
    token = body["token"]
    assert isinstance(token, str) and len(token) >= 20
    return token


async def aconnect(port: int, user: str, password: str = "pw") -> str:
    return await asyncio.to_thread(connect, port, user, password)


def ok(reply: Reply, kind: str) -> dict[str, Any]:
    """A 200 whose JSON body is the ``kind`` event."""
    assert reply.status == 200, reply
    body = reply.json
    assert body["type"] == kind, body
    return body


def http_on(port: int, gateway: str, token: str) -> http.client.HTTPConnection:
    """A keep-alive connection that the kernel's SO_REUSEPORT spread put on ``gateway``."""
    for _ in range(60):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
        if ok(request(conn, "GET", "/status", token=token), "status")["gateway"] == gateway:
            return conn
        conn.close()
    raise AssertionError(f"never landed on {gateway}")


def parse_answer(data: bytes, *, head: bool = False) -> tuple[Reply | None, bytes]:
    """The first whole HTTP/1.1 answer in ``data`` (bodies by Content-Length; none for
    a HEAD) and what follows it; None while not all of it is here."""
    top, sep, rest = data.partition(b"\r\n\r\n")
    if not sep:
        return None, data
    lines = top.decode("latin-1").split("\r\n")
    m = re.fullmatch(r"HTTP/1\.1 (\d{3}) .*", lines[0])
    assert m, lines[0]
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = 0 if head else int(headers.get("content-length", "0"))
    if len(rest) < length:
        return None, data
    return Reply(int(m.group(1)), headers, rest[:length]), rest[length:]

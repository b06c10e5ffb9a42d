"""Files over JSON lines end to end: two real gateway processes on one port, a real
redis-server; uploads in chunks, downloads with ``fetch``, and the console client's
``/upload`` and ``/download``."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import random
import re
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from client.connection import Connection
from tests.integration.test_console import running_console, shown, until
from tests.support import Deployment, RedisServer, chat_error, next_of, running

KIB = 1024
MIB = 1024 * KIB
CHUNK = 64 * KIB
UPLOAD_TTL_MS = 600_000


def data_of(size: int, seed: int = 0) -> bytes:
    return random.Random(size * 31 + seed).randbytes(size)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def record(into: list[tuple[int, int]]) -> Callable[[int, int], None]:
    return lambda done, total: into.append((done, total))


async def redis_for(dep: Deployment) -> aioredis.Redis:
    return aioredis.Redis.from_url(dep.redis.url, decode_responses=True)


async def keys_of(dep: Deployment, fid: str) -> list[str]:
    """Every key of the deployment that names this file or upload."""
    r = await redis_for(dep)
    try:
        return sorted([k async for k in r.scan_iter(match=f"{dep.prefix}:*{fid}*")])
    finally:
        await r.aclose()


async def begin(conn: Connection, data: bytes, to: str = "#general", **kw: Any) -> str:
    reply = await conn.request(
        "upload", to=to, name=kw.pop("name", "f.bin"), size=kw.pop("size", len(data)),
        sha256=kw.pop("sha256", sha(data)), **kw,
    )  # fmt: skip
    assert reply["type"] == "upload" and reply["chunk_bytes"] == CHUNK
    assert reply["chunks"] == -(-len(data) // CHUNK)
    return str(reply["uid"])


async def put(conn: Connection, uid: str, data: bytes, seqs: range | list[int]) -> None:
    for seq in seqs:
        piece = data[seq * CHUNK : (seq + 1) * CHUNK]
        reply = await conn.request("chunk", uid=uid, seq=seq, data=b64(piece))
        assert reply == {"type": "chunk", "uid": uid, "seq": seq,
                         "received": seq * CHUNK + len(piece), "rid": reply["rid"]}  # fmt: skip


# -- round trips ---------------------------------------------------------------------------


async def test_round_trips_byte_for_byte_across_gateways(deployment: Deployment) -> None:
    alice = await deployment.connect_on("gw1", "alice")
    bob = await deployment.connect_on("gw2", "bob")
    for size in (0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 5 * MIB):
        data = data_of(size)
        sent: list[tuple[int, int]] = []
        ack = await alice.upload(data, "bob", name=f"f{size}.bin", progress=record(sent))
        info = {"fid": ack["file"]["fid"], "name": f"f{size}.bin", "size": size,
                "sha256": sha(data), "mime": "application/octet-stream"}  # fmt: skip
        assert ack["type"] == "ack" and ack["file"] == info and ack["cid"] is None
        assert sent[0] == (0, size) and sent[-1] == (size, size)
        live = await next_of(bob, "message")  # the recipient, on the other gateway
        assert (live["id"], live["from"], live["to"]) == (ack["id"], "alice", "bob")
        assert live["file"] == info and live["text"] == f"f{size}.bin"
        fetched: list[tuple[int, int]] = []
        got = await bob.download(info["fid"], progress=record(fetched))
        assert got == data, f"{size} bytes came back different"
        assert len(fetched) == max(1, -(-size // CHUNK)) and fetched[-1] == (size, size)
    # The sender's own gateway serves it too, and from a chunk on.
    events = [ev async for ev in alice.request_stream("fetch", fid=info["fid"], from_chunk=79)]
    assert [(ev["seq"], ev["last"], ev["size"]) for ev in events] == [(79, True, 5 * MIB)]
    assert base64.b64decode(events[0]["data"]) == data[79 * CHUNK :]
    assert (await chat_error(alice.request("fetch", fid=info["fid"], from_chunk=80))).code == (
        "bad_request"
    )
    # An empty file is one empty, last chunk.
    empty = await alice.upload(b"", "#general", name="empty")
    events = [ev async for ev in bob.request_stream("fetch", fid=empty["file"]["fid"])]
    assert [(e["seq"], e["data"], e["last"], e["size"]) for e in events] == [(0, "", True, 0)]


async def test_a_file_is_a_message_with_its_cid_and_mime(deployment: Deployment) -> None:
    ann = await deployment.login("ann")
    ack = await ann.upload(b"<p>hi</p>", "#general", name="a.html", mime="text/html", cid="up-1")
    assert ack["cid"] == "up-1" and ack["file"]["mime"] == "text/html"
    [mine] = [m for m in await ann.history("#general") if m["id"] == ack["id"]]
    assert mine["file"] == ack["file"]
    # The bytes are the ones HTTP serves too.
    reader, writer = await asyncio.open_connection("127.0.0.1", deployment.port)
    writer.write(b'POST /connect HTTP/1.1\r\nHost: x\r\nContent-Length: 33\r\n\r\n'
                 b'{"user":"ann","password":"pw"}   ')  # fmt: skip
    head = await reader.readuntil(b"\r\n\r\n")
    length = int(re.search(rb"Content-Length: (\d+)", head, re.I).group(1))  # type: ignore[union-attr]
    token = re.search(rb'"token":"([^"]+)"', await reader.readexactly(length)).group(1)  # type: ignore[union-attr]
    writer.write(b"GET /files/" + ack["file"]["fid"].encode() + b" HTTP/1.1\r\nHost: x\r\n"
                 b"Authorization: Bearer " + token + b"\r\n\r\n")  # fmt: skip
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and b"text/html" in head
    assert await reader.readexactly(9) == b"<p>hi</p>"
    writer.close()


async def test_a_slow_reader_is_paced_not_cut_off(deployment: Deployment) -> None:
    """5 MiB is several times the outbox bound (1 MiB) and the socket buffers: a
    fetch waits for the reader instead of dropping it as a slow consumer."""
    alice = await deployment.login("alice")
    data = data_of(5 * MIB, seed=7)
    ack = await alice.upload(data, "#general", name="big.bin")
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * KIB)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", deployment.port))
    reader, writer = await asyncio.open_connection(sock=sock, limit=1 * MIB)
    fetch = {"op": "fetch", "rid": "f", "fid": ack["file"]["fid"]}
    writer.write(b'{"op":"login","user":"slow","password":"pw"}\n' + json.dumps(fetch).encode())
    writer.write(b"\n")
    await asyncio.sleep(2)  # reads nothing meanwhile
    got = bytearray()
    while True:
        ev = json.loads(await asyncio.wait_for(reader.readline(), 10))
        assert ev["type"] not in ("error", "bye"), ev
        if ev["type"] == "file_chunk":
            got += base64.b64decode(ev["data"])
            if ev["last"]:
                break
    assert got == data
    writer.close()


# -- errors, and the connection goes on ------------------------------------------------------


async def test_too_big_wrong_sizes_and_checksums_are_errors(deployment: Deployment) -> None:
    eve = await deployment.login("eve")
    big = await chat_error(eve.upload(data_of(5 * MIB + 1), "#general", name="big"))
    assert big.code == "too_long" and "5242880" in big.event["message"]
    await eve.ping()

    # A checksum that does not match: refused at the end, and the upload is gone.
    data = data_of(CHUNK + 10)
    uid = await begin(eve, data, sha256="0" * 64)
    await put(eve, uid, data, range(2))
    err = await chat_error(eve.request("finish_upload", uid=uid))
    assert err.code == "bad_request" and "sha256" in err.event["message"]
    await eve.ping()
    assert (await chat_error(eve.request("finish_upload", uid=uid))).code == "not_found"
    assert await keys_of(deployment, uid.split(".")[0]) == []

    # Sizes: a chunk of the wrong length, and fewer bytes than declared.
    uid = await begin(eve, data_of(100))
    err = await chat_error(eve.request("chunk", uid=uid, seq=0, data=b64(b"x" * 90)))
    assert err.code == "bad_request" and "90 bytes" in err.event["message"]
    err = await chat_error(eve.request("chunk", uid=uid, seq=1, data=b64(b"x" * 100)))
    assert err.code == "bad_request" and "out of range" in err.event["message"]
    data = data_of(CHUNK + 1)
    uid = await begin(eve, data)
    await put(eve, uid, data, [0])
    err = await chat_error(eve.request("finish_upload", uid=uid))
    assert err.code == "bad_request" and "missing chunk" in err.event["message"]
    # Bad base64, an upload no one began, and a forged id.
    err = await chat_error(eve.request("chunk", uid=uid, seq=0, data="!!!"))
    assert err.code == "bad_request"
    assert (await chat_error(eve.request("chunk", uid=uid, seq=0, data=""))).code == "not_found"
    forged = "AAAAAAAAAAAAAAAA." + base64.urlsafe_b64encode(b"dm:eve:zed").decode().strip("=")
    assert (await chat_error(eve.request("finish_upload", uid=forged))).code == "not_found"
    assert (await chat_error(eve.request("abort_upload", uid=uid))).code == "not_found"
    # Refused before any byte moves: no one to send to, a room that is not there.
    assert (await chat_error(eve.upload(b"x", "nobody", name="x"))).code == "unknown_user"
    assert (await chat_error(eve.upload(b"x", "#nowhere", name="x"))).code == "not_found"
    await eve.ping()
    assert not eve.closed.is_set()


async def test_only_chunk_lines_may_be_long(deployment: Deployment) -> None:
    """Over a real connection: a full chunk's line (about 87 KiB) is served (every
    upload above sends them), any other line that long is dropped, and the
    connection reads the next line as usual."""
    zed = await deployment.login("zed")
    zed.write({"op": "send", "rid": "long", "to": "#general", "text": "x" * (90 * KIB)})
    err = await next_of(zed, "error")
    assert err["code"] == "too_long" and "16384" in err["message"] and "rid" not in err
    await zed.ping()
    data = data_of(CHUNK)
    uid = await begin(zed, data)
    await put(zed, uid, data, [0])
    assert (await zed.request("finish_upload", uid=uid))["file"]["size"] == CHUNK


async def test_a_chunk_line_arriving_slowly_is_read_whole(deployment: Deployment) -> None:
    """A chunk's line is longer than what the gateway reads ahead before pausing
    (64 KiB): one that arrives in pieces must still be read to its end."""
    slow = await deployment.login("slow")
    data = data_of(CHUNK, seed=3)
    uid = await begin(slow, data)
    request = {"op": "chunk", "rid": "c", "uid": uid, "seq": 0, "data": b64(data)}
    line = json.dumps(request, separators=(",", ":")).encode() + b"\n"
    writer = slow._writer
    for start in range(0, len(line), 20 * KIB):
        writer.write(line[start : start + 20 * KIB])
        await writer.drain()
        await asyncio.sleep(0.1)  # each piece read on its own
    reply = await next_of(slow, "chunk")
    assert (reply["seq"], reply["received"]) == (0, CHUNK)
    assert (await slow.request("finish_upload", uid=uid))["file"]["size"] == CHUNK


# -- uploads that stop half-way ------------------------------------------------------------


async def test_an_interrupted_upload_expires_and_can_be_resumed(deployment: Deployment) -> None:
    ivy = await deployment.login("ivy")
    data = data_of(3 * CHUNK + 5)
    uid = await begin(ivy, data)
    fid = uid.split(".")[0]
    await put(ivy, uid, data, range(2))
    await ivy.close()  # interrupted: the client went away mid-way

    # What it left behind is two keys (metadata, chunks), both expiring within the
    # upload TTL, refreshed by each chunk: nothing is left after it.
    r = await redis_for(deployment)
    try:
        keys = await keys_of(deployment, fid)
        assert len(keys) == 2 and {k.rsplit(":", 2)[-2] for k in keys} == {"file", "fdata"}
        for key in keys:
            assert 0 < await r.pttl(key) <= UPLOAD_TTL_MS

        # Within that time it can be finished from another connection (any gateway),
        # by its owner only.
        mallory = await deployment.login("mallory")
        assert (await chat_error(mallory.request("finish_upload", uid=uid))).code == "not_found"
        assert (await chat_error(mallory.request("abort_upload", uid=uid))).code == "not_found"
        again = await deployment.login("ivy")
        await put(again, uid, data, [2, 3])
        ack = await again.request("finish_upload", uid=uid)
        assert await again.download(ack["file"]["fid"]) == data

        # Once the TTL has run out (shortened here: the expiry is Redis' own), the
        # keys are gone and the upload is unknown.
        uid = await begin(again, data)
        fid = uid.split(".")[0]
        await put(again, uid, data, [0])
        for key in await keys_of(deployment, fid):
            await r.pexpire(key, 50)
        await asyncio.sleep(0.2)
        assert await keys_of(deployment, fid) == []
        err = await chat_error(
            again.request("chunk", uid=uid, seq=1, data=b64(data[CHUNK:][:CHUNK]))
        )
        assert err.code == "not_found"
        assert (await chat_error(again.request("finish_upload", uid=uid))).code == "not_found"
    finally:
        await r.aclose()


async def test_abort_drops_an_upload_and_gives_its_quota_back(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    extra = ["--file-quota-bytes", "300000"]
    async with running(Deployment(redis_server, tmp_path, gateways=1, extra=extra)) as dep:
        quinn = await dep.login("quinn")
        data = data_of(200_000)
        uid = await begin(quinn, data)
        await put(quinn, uid, data, [0])
        # The declared size is taken from the quota at once: a second one does not fit.
        assert (await chat_error(begin(quinn, data))).code == "rate_limited"
        assert (await quinn.request("abort_upload", uid=uid))["type"] == "ok"
        assert await keys_of(dep, uid.split(".")[0]) == []
        # Aborted, and refused (a bad checksum): both give the quota back.
        uid = await begin(quinn, data, sha256="f" * 64)
        await put(quinn, uid, data, range(4))
        assert (await chat_error(quinn.request("finish_upload", uid=uid))).code == "bad_request"
        ack = await quinn.upload(data, "#general", name="fits.bin")
        assert ack["file"]["size"] == 200_000
        assert (await chat_error(quinn.upload(data, "#general", name="no"))).code == (
            "rate_limited"
        )


# -- who may upload, who may fetch ---------------------------------------------------------


async def test_a_banned_user_cannot_upload(deployment: Deployment) -> None:
    mal = await deployment.login("mal")
    data = data_of(CHUNK + 1)
    uid = await begin(mal, data)  # begun before the ban
    await put(mal, uid, data, range(2))
    for name in ("rep1", "rep2", "rep3"):
        reporter = await deployment.login(name)
        await reporter.request("report", user="mal", reason="spam")
    err = await chat_error(mal.upload(b"hello", "#general", name="x.txt"))
    assert err.code == "banned" and err.event["until"] > 0
    err = await chat_error(mal.upload(b"hello", "rep1", name="x.txt"))  # direct, too
    assert err.code == "banned"
    # The upload begun before: refused at the end, and dropped.
    assert (await chat_error(mal.request("finish_upload", uid=uid))).code == "banned"
    assert await keys_of(deployment, uid.split(".")[0]) == []
    await mal.ping()


async def test_a_file_over_the_rate_limit_is_refused_and_dropped(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """A file counts as one message against the public-chat limit; refused at
    ``finish_upload``, it leaves nothing stored, and a direct one still goes."""
    extra = ["--rate-limit", "1"]
    async with running(Deployment(redis_server, tmp_path, gateways=1, extra=extra)) as dep:
        rita = await dep.login("rita")
        await dep.login("sam")
        await rita.send("#general", "the one public message of the window")
        data = data_of(CHUNK + 5)
        uid = await begin(rita, data)
        await put(rita, uid, data, range(2))
        err = await chat_error(rita.request("finish_upload", uid=uid))
        assert err.code == "rate_limited" and err.event["retry_after"] > 0
        assert await keys_of(dep, uid.split(".")[0]) == []
        ack = await rita.upload(data, "sam", name="direct.bin")  # not public: not counted
        assert ack["file"]["size"] == CHUNK + 5


async def test_two_uploads_with_one_cid_are_one_message(deployment: Deployment) -> None:
    """A client that retried its whole upload (same cid): one message, and both
    ``finish_upload`` answers name the file that message carries."""
    una = await deployment.login("una")
    data = data_of(CHUNK + 7)
    uids = [await begin(una, data, cid="same") for _ in range(2)]
    for uid in uids:
        await put(una, uid, data, range(2))
    acks = [await una.request("finish_upload", uid=uid) for uid in uids]
    assert acks[0]["id"] == acks[1]["id"] and acks[0]["file"] == acks[1]["file"]


async def test_only_readers_of_the_conversation_fetch(deployment: Deployment) -> None:
    alice, bob = await deployment.login("alice"), await deployment.login("bob")
    carol = await deployment.login("carol")
    direct = await alice.upload(b"for bob", "bob", name="dm.txt")
    assert await bob.download(direct["file"]["fid"]) == b"for bob"
    assert await alice.download(direct["file"]["fid"]) == b"for bob"
    err = await chat_error(carol.download(direct["file"]["fid"]))
    assert err.code == "not_found"  # as for a file that does not exist
    assert (await chat_error(carol.download("NoSuchFile123"))).code == "not_found"

    await alice.request("create_room", room="#secret")
    private = await alice.upload(b"members only", "#secret", name="s.txt")
    assert (await chat_error(bob.download(private["file"]["fid"]))).code == "not_found"
    assert (await chat_error(bob.upload(b"x", "#secret", name="x"))).code == "forbidden"
    await alice.request("invite", room="#secret", user="bob")
    assert await bob.download(private["file"]["fid"]) == b"members only"

    public = await carol.upload(b"everyone", "#general", name="p.txt")
    assert await bob.download(public["file"]["fid"]) == b"everyone"


async def test_text_lines_are_told_what_to_use(deployment: Deployment) -> None:
    text = await deployment.text()
    await text.send("/login tex pw\n")
    await text.expect(r"up to date")
    await text.send("/upload photo.jpg\n")
    await text.expect(r"^!! error \(bad_request\): files are sent with the console client")
    await text.send("/download 1\n")
    await text.expect(r"^!! error \(bad_request\): each file is shown with a link")
    await text.send("/chunk x\n")
    await text.expect(r"^!! error \(unknown_op\)")


# -- the console client ----------------------------------------------------------------------


async def test_console_uploads_and_downloads(
    deployment: Deployment, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bob = await deployment.login("bob")
    data = data_of(3 * CHUNK + 77)
    source = tmp_path / "my report.bin"
    source.write_bytes(data)
    out = tmp_path / "out.bin"
    async with running_console(deployment, "alice") as (console, pipe):
        pipe.send_text(f"/upload '{source}'\r")
        live = await next_of(bob, "message", timeout=15)
        assert live["from"] == "alice" and live["to"] == "#general"
        assert live["file"]["name"] == "my report.bin" and live["file"]["sha256"] == sha(data)
        await until(lambda: shown(console, "sent my report.bin (192 KiB) to #general") == 1, "sent")
        await until(lambda: shown(console, "[file] my report.bin") == 1, "the file message")
        assert console.chat is not None and not console.chat.transfers  # its bar is gone
        [line] = [line for line in console.transcript if "[file] my report.bin" in line]
        n = re.search(r"\[(\d+)\]", line).group(1)  # type: ignore[union-attr]

        pipe.send_text(f"/download {n} {out}\r")
        await until(
            lambda: shown(console, f"saved my report.bin (192 KiB, sha256 checked) to {out}") == 1,
            "saved",
        )
        assert out.read_bytes() == data

        out.write_bytes(b"mine")  # an existing file is kept ...
        pipe.send_text(f"/download {n} {out}\r")
        await until(lambda: shown(console, f"{out} exists; add -f to overwrite it") == 1, "refusal")
        assert out.read_bytes() == b"mine"
        pipe.send_text(f"/download {n} {out} -f\r")  # ... unless asked
        await until(lambda: shown(console, f"to {out}") == 2, "overwritten")
        assert out.read_bytes() == data

        # By default: the file's own name, in the current folder.
        here = tmp_path / "here"
        here.mkdir()
        monkeypatch.chdir(here)
        pipe.send_text(f"/download {n}\r")
        await until(lambda: (here / "my report.bin").exists(), "the default path")
        assert (here / "my report.bin").read_bytes() == data

        # Direct, to a user; errors are said plainly.
        pipe.send_text(f"/upload {source.parent / 'nope.bin'}\r")
        await until(lambda: shown(console, "!! error (not_found): no file") == 1, "no file")
        (tmp_path / "big.bin").write_bytes(b"\0" * (5 * MIB + 1))
        pipe.send_text(f"/upload {tmp_path / 'big.bin'} bob\r")
        await until(lambda: shown(console, "!! error (too_long): big.bin was not sent") == 1, "big")
        pipe.send_text("/download 999\r")
        await until(lambda: shown(console, "no message [999] on this screen") == 1, "unknown n")
        small = tmp_path / "hi.txt"
        small.write_bytes(b"hi bob")
        pipe.send_text(f"/upload {small} bob\r")
        dm = await next_of(bob, "message", timeout=15)
        assert dm["to"] == "bob" and dm["file"]["name"] == "hi.txt"
        assert await bob.download(dm["file"]["fid"]) == b"hi bob"

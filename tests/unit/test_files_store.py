"""Files in the store (on fakeredis and a real redis-server, as the ``redis`` fixture of
tests/unit/conftest.py runs each test), file messages on the wire, and their lines."""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
from collections.abc import Awaitable
from typing import Any

import fakeredis
import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from client.render import ShortIds, message_line, plain
from gateway.errors import ClientError, Unavailable
from gateway.protocol import TextCodec, event_to_dict
from gateway.protocol.events import (
    FileInfo,
    Message,
    dumps,
    file_from_dict,
    message_dict,
    message_from_dict,
    message_json_tail,
)
from gateway.protocol.textlines import size_text
from gateway.store import GENERAL, FileLimits, Keys, Store, dm_conversation
from gateway.store import files as files_module
from gateway.store.files import CHUNK_BYTES, UPLOAD_TTL_S, WRITE_BATCH, chunk_count
from gateway.store.redis import is_cluster
from tests.channels import listener

Redis = fakeredis.FakeAsyncRedis
KIB = 1024
MIB = 1024 * KIB


def _store(r: Redis, **kw: Any) -> Store:
    return Store(r, Keys("t"), **kw)


def _data(size: int) -> bytes:
    return random.Random(size).randbytes(size)


async def _error(coro: Awaitable[Any]) -> ClientError:
    with pytest.raises(ClientError) as err:
        await coro
    return err.value


async def _download(store: Store, conversation: str, fid: str) -> list[bytes]:
    return [chunk async for chunk in store.files.chunks(conversation, fid)]


async def _file_keys(r: Redis, fid: str, conversation: str = GENERAL) -> list[str]:
    """Every key of one file that exists."""
    names = [f"t:{{c:{conversation}}}:file:{fid}", f"t:{{c:{conversation}}}:fdata:{fid}",
             f"t:file:{fid}"]  # fmt: skip
    return [n for n in names if await r.exists(n)]


def _chunks_of(data: bytes) -> list[bytes]:
    return [data[i : i + CHUNK_BYTES] for i in range(0, len(data), CHUNK_BYTES)]


# -- whole files -------------------------------------------------------------------


@pytest.mark.parametrize(
    "size", [0, 1, 64 * KIB - 1, 64 * KIB, 64 * KIB + 1, 5 * MIB], ids=lambda n: f"{n}B"
)
async def test_a_stored_file_comes_back_byte_for_byte(redis: Redis, size: int) -> None:
    store = _store(redis)
    data = _data(size)
    info = await store.files.store(GENERAL, "alice", "blob.bin", "application/x-test", data)
    assert info == FileInfo(info.fid, "blob.bin", size, hashlib.sha256(data).hexdigest(),
                            "application/x-test")  # fmt: skip
    chunks = await _download(store, GENERAL, info.fid)
    assert b"".join(chunks) == data
    assert len(chunks) == chunk_count(size) and all(len(c) <= CHUNK_BYTES for c in chunks)
    assert all(isinstance(c, bytes) for c in chunks)
    assert await store.files.info(info.fid) == (GENERAL, info)
    meta = await redis.hgetall(f"t:{{c:#general}}:file:{info.fid}")
    assert meta["state"] == "done" and meta["from"] == "alice"
    assert meta["chunks"] == str(chunk_count(size)) and meta["sha256"] == info.sha256


async def test_storing_sends_at_most_a_megabyte_per_round_trip(redis: Redis) -> None:
    if is_cluster(redis):
        pytest.skip("reads the command stack of redis-py's single-Redis pipeline")
    store = _store(redis)
    sizes: list[int] = []
    real_pipeline = redis.pipeline

    def counting_pipeline(*args: Any, **kwargs: Any) -> Any:
        pipe = real_pipeline(*args, **kwargs)
        execute = pipe.execute

        async def counted_execute(*a: Any, **k: Any) -> Any:
            sizes.append(sum(len(x) for cmd, _ in pipe.command_stack for x in cmd
                             if isinstance(x, bytes)))  # fmt: skip
            return await execute(*a, **k)

        pipe.execute = counted_execute
        return pipe

    redis.pipeline = counting_pipeline  # type: ignore[method-assign]
    try:
        data = _data(3 * MIB + 5)
        info = await store.files.store(GENERAL, "alice", "big", "", data)
    finally:
        del redis.pipeline  # type: ignore[method-assign]
    assert max(sizes) <= WRITE_BATCH * CHUNK_BYTES == MIB
    assert sum(sizes) == len(data)
    assert b"".join(await _download(store, GENERAL, info.fid)) == data


async def test_a_file_lives_as_long_as_the_messages(redis: Redis) -> None:
    store = _store(redis, message_ttl_s=120)
    info = await store.files.store(GENERAL, "alice", "a.txt", "text/plain", b"x" * 100)
    for key in await _file_keys(redis, info.fid):
        # the lifetime, and a minute's grace: the message is sent after its file is done
        assert 120_000 < await redis.pttl(key) <= 180_000, key
    assert len(await _file_keys(redis, info.fid)) == 3

    forever = _store(redis, message_ttl_s=0)
    kept = await forever.files.store(GENERAL, "alice", "b.txt", "text/plain", b"y")
    assert [await redis.pttl(k) for k in await _file_keys(redis, kept.fid)] == [-1, -1, -1]


async def test_unknown_and_malformed_fids_name_no_file(redis: Redis) -> None:
    store = _store(redis)
    for fid in ["nope", "", "../x", "a" * 65, "a b"]:
        assert await store.files.info(fid) is None
        assert (await _error(_download(store, GENERAL, fid))).code == "not_found"
    info = await store.files.store(GENERAL, "alice", "a", "", b"abc")
    assert info.mime == "application/octet-stream"
    # the fid in another conversation's name is not the file
    assert (await _error(_download(store, "dm:a:b", info.fid))).code == "not_found"


@pytest.mark.parametrize(
    ("name", "mime", "code"),
    [
        ("", "text/plain", "bad_request"),
        ("x" * 256, "text/plain", "bad_request"),
        ("a/b.txt", "text/plain", "bad_request"),
        ("..", "text/plain", "bad_request"),
        ("bell\x07.txt", "text/plain", "bad_request"),
        ("ok.txt", "text/plain\r\nX-Evil: 1", "bad_request"),
        ("ok.txt", "notatype", "bad_request"),
        ("ok.txt", "ü/x", "bad_request"),
    ],
)
async def test_names_and_types_are_checked(redis: Redis, name: str, mime: str, code: str) -> None:
    store = _store(redis)
    assert (await _error(store.files.store(GENERAL, "a", name, mime, b"1"))).code == code
    sha = hashlib.sha256(b"1").hexdigest()
    assert (await _error(store.files.begin(GENERAL, "a", name, 1, mime, sha))).code == code
    assert [k async for k in redis.scan_iter(match="t:*file*")] == []


async def test_files_over_the_limit_are_refused(redis: Redis) -> None:
    store = _store(redis, file_limits=FileLimits(max_file_bytes=1000))
    await store.files.store(GENERAL, "a", "ok", "", b"x" * 1000)
    assert (await _error(store.files.store(GENERAL, "a", "big", "", b"x" * 1001))).code == (
        "too_long"
    )
    sha = hashlib.sha256(b"").hexdigest()
    assert (await _error(store.files.begin(GENERAL, "a", "big", 1001, "", sha))).code == (
        "too_long"
    )


# -- uploads in chunks -------------------------------------------------------------


async def _begin(store: Store, data: bytes, conversation: str = GENERAL, **kw: Any) -> str:
    args: dict[str, Any] = {"name": "up.bin", "size": len(data), "mime": "image/png",
                            "sha256": hashlib.sha256(data).hexdigest(), **kw}  # fmt: skip
    return await store.files.begin(conversation, "alice", **args)


@pytest.mark.parametrize("order", ["in order", "out of order"])
async def test_an_upload_in_chunks(redis: Redis, order: str) -> None:
    store = _store(redis, message_ttl_s=300)
    data = _data(3 * CHUNK_BYTES + 123)
    uid = await _begin(store, data)
    assert await store.files.info(uid) is None  # not a file until finished
    assert (await _error(_download(store, GENERAL, uid))).code == "not_found"
    parts = list(enumerate(_chunks_of(data)))
    if order == "out of order":
        parts = [parts[2], parts[0], parts[3], parts[1], parts[0]]  # one sent twice
    for index, chunk in parts:
        await store.files.put_chunk(GENERAL, uid, index, chunk)
    info = await store.files.finish(GENERAL, uid)
    assert info == FileInfo(uid, "up.bin", len(data), hashlib.sha256(data).hexdigest(),
                            "image/png")  # fmt: skip
    assert await store.files.info(uid) == (GENERAL, info)
    assert b"".join(await _download(store, GENERAL, uid)) == data
    for key in await _file_keys(redis, uid):
        assert 300_000 < await redis.pttl(key) <= 360_000
    # Finished: no chunk, abort or second finish touches it any more.
    code = (await _error(store.files.put_chunk(GENERAL, uid, 0, b"\0" * CHUNK_BYTES))).code
    assert code == "not_found"
    assert not await store.files.abort(GENERAL, uid)
    assert (await _error(store.files.finish(GENERAL, uid))).code == "not_found"
    assert b"".join(await _download(store, GENERAL, uid)) == data


async def test_empty_upload(redis: Redis) -> None:
    store = _store(redis)
    uid = await _begin(store, b"")
    assert (await _error(store.files.put_chunk(GENERAL, uid, 0, b""))).code == "bad_request"
    info = await store.files.finish(GENERAL, uid)
    assert info.size == 0 and await _download(store, GENERAL, uid) == []


async def test_a_missing_chunk_fails_the_upload_and_leaves_nothing(redis: Redis) -> None:
    store = _store(redis)
    data = _data(2 * CHUNK_BYTES + 1)
    uid = await _begin(store, data)
    chunks = _chunks_of(data)
    await store.files.put_chunk(GENERAL, uid, 0, chunks[0])
    await store.files.put_chunk(GENERAL, uid, 2, chunks[2])
    err = await _error(store.files.finish(GENERAL, uid))
    assert err.code == "bad_request" and "missing chunk(s) 1 of 3" in err.message
    assert await _file_keys(redis, uid) == []
    assert (await _error(store.files.put_chunk(GENERAL, uid, 1, chunks[1]))).code == "not_found"


async def test_chunks_of_the_wrong_size_or_place_are_refused(redis: Redis) -> None:
    store = _store(redis)
    data = _data(CHUNK_BYTES + 10)
    uid = await _begin(store, data)
    full, last = _chunks_of(data)
    put = store.files.put_chunk
    assert (await _error(put(GENERAL, uid, 0, full[:-1]))).code == "bad_request"  # short
    assert (await _error(put(GENERAL, uid, 1, last + b"!"))).code == "bad_request"  # long last
    assert (await _error(put(GENERAL, uid, 2, b"x"))).code == "bad_request"  # past the end
    assert (await _error(put(GENERAL, uid, -1, b"x"))).code == "bad_request"
    assert (await _error(put(GENERAL, uid, 0, full + b"!"))).code == "too_long"
    assert (await _error(put(GENERAL, "unknown", 0, full))).code == "not_found"
    assert (await _error(put("dm:a:b", uid, 0, full))).code == "not_found"  # other conversation
    assert await redis.hlen(f"t:{{c:#general}}:fdata:{uid}") == 0
    # A declared size the bytes do not have: the upload cannot be finished, and is gone.
    await put(GENERAL, uid, 0, full)
    err = await _error(store.files.finish(GENERAL, uid))
    assert err.code == "bad_request" and "missing" in err.message
    assert await _file_keys(redis, uid) == []


async def test_a_wrong_size_found_at_finish_fails_the_upload(redis: Redis) -> None:
    store = _store(redis)
    data = _data(CHUNK_BYTES + 10)
    uid = await _begin(store, data)
    for index, chunk in enumerate(_chunks_of(data)):
        await store.files.put_chunk(GENERAL, uid, index, chunk)
    # As if the declared size changed under the stored chunks (by hand, say).
    await redis.hset(f"t:{{c:#general}}:file:{uid}", "size", str(len(data) + 1))
    err = await _error(store.files.finish(GENERAL, uid))
    assert err.code == "bad_request" and "declared" in err.message
    assert await _file_keys(redis, uid) == []


async def test_a_sha256_mismatch_fails_the_upload_and_leaves_nothing(redis: Redis) -> None:
    store = _store(redis)
    data = _data(CHUNK_BYTES * 2)
    uid = await _begin(store, data, sha256=hashlib.sha256(b"something else").hexdigest())
    for index, chunk in enumerate(_chunks_of(data)):
        await store.files.put_chunk(GENERAL, uid, index, chunk)
    err = await _error(store.files.finish(GENERAL, uid))
    assert err.code == "bad_request" and "sha256" in err.message
    assert await _file_keys(redis, uid) == []
    assert await store.files.info(uid) is None


async def test_a_bad_sha256_is_refused_at_begin(redis: Redis) -> None:
    store = _store(redis)
    for sha in ["", "xyz", "a" * 63, "g" * 64]:
        assert (await _error(_begin(store, b"abc", sha256=sha))).code == "bad_request"
    # upper-case hex is the same digest
    uid = await _begin(store, b"abc", sha256=hashlib.sha256(b"abc").hexdigest().upper())
    await store.files.put_chunk(GENERAL, uid, 0, b"abc")
    assert (await store.files.finish(GENERAL, uid)).sha256 == hashlib.sha256(b"abc").hexdigest()


async def test_an_abandoned_upload_expires(redis: Redis, monkeypatch: pytest.MonkeyPatch) -> None:
    store = _store(redis)
    data = _data(CHUNK_BYTES + 1)
    uid = await _begin(store, data)
    await store.files.put_chunk(GENERAL, uid, 0, data[:CHUNK_BYTES])
    keys = await _file_keys(redis, uid)
    assert len(keys) == 2  # metadata and data; no index before it is finished
    for key in keys:
        assert 0 < await redis.pttl(key) <= UPLOAD_TTL_S * 1000
    # And it really goes: with a one-second lifetime, nothing is left after it.
    monkeypatch.setattr(files_module, "UPLOAD_TTL_S", 1)
    short = await _begin(store, data)
    await store.files.put_chunk(GENERAL, short, 0, data[:CHUNK_BYTES])
    await asyncio.sleep(1.2)
    assert await _file_keys(redis, short) == []
    assert (await _error(store.files.finish(GENERAL, short))).code == "not_found"


async def test_abort_drops_an_upload_but_never_a_file(redis: Redis) -> None:
    store = _store(redis)
    uid = await _begin(store, b"abc")
    await store.files.put_chunk(GENERAL, uid, 0, b"abc")
    assert await store.files.abort(GENERAL, uid)
    assert await _file_keys(redis, uid) == []
    assert not await store.files.abort(GENERAL, uid)
    done = await store.files.store(GENERAL, "alice", "keep", "", b"keep")
    assert not await store.files.abort(GENERAL, done.fid)
    assert b"".join(await _download(store, GENERAL, done.fid)) == b"keep"


# -- the quota ---------------------------------------------------------------------


async def test_the_byte_quota(redis: Redis) -> None:
    store = _store(redis, file_limits=FileLimits(quota_bytes=1000, quota_window_s=60))
    await store.files.take_quota("Amy", 600)
    await store.files.take_quota("amy", 400)
    err = await _error(store.files.take_quota("AMY", 1))
    assert err.code == "rate_limited" and 1 <= err.extra["retry_after"] <= 60
    assert await redis.get("t:{u:amy}:fileq") == "1000"
    assert 0 < await redis.pttl("t:{u:amy}:fileq") <= 60_000
    await store.files.take_quota("bob", 1000)  # each user has their own
    await store.files.refund_quota("amy", 500)
    await store.files.take_quota("amy", 300)
    assert await redis.get("t:{u:amy}:fileq") == "800"
    assert (await _error(store.files.take_quota("amy", 1001))).code == "too_long"
    await store.files.refund_quota("carol", 10)  # nothing taken: nothing to give back
    assert await redis.get("t:{u:carol}:fileq") is None
    # an operator's key without an expiry still ends
    await redis.set("t:{u:dan}:fileq", "1000")
    assert (await _error(store.files.take_quota("dan", 1))).code == "rate_limited"
    assert 0 < await redis.pttl("t:{u:dan}:fileq") <= 60_000


async def test_no_quota_when_it_is_off(redis: Redis) -> None:
    store = _store(redis, file_limits=FileLimits(quota_bytes=0))
    for _ in range(3):
        await store.files.take_quota("amy", 10 * MIB)
    assert await redis.get("t:{u:amy}:fileq") is None


# -- file messages -----------------------------------------------------------------

FILE = FileInfo("AbCdEfGhIjKlMnOp", "photo ü.jpg", 123_456, "ab" * 32, "image/jpeg")


def test_a_file_message_round_trips_through_its_json() -> None:
    m = Message("5-1", "alice", "#general", FILE.name, 5, file=FILE)
    d = event_to_dict(m)
    assert d["file"] == {"fid": FILE.fid, "name": FILE.name, "size": 123_456,
                         "sha256": "ab" * 32, "mime": "image/jpeg"}  # fmt: skip
    back = message_from_dict(json.loads(json.dumps(d)))
    assert back == m and back.file == FILE
    # The published form (built in Lua around the id) is the same bytes.
    head = '{"type":"message","id":"5-1","ts":5'
    tail = message_json_tail("alice", "#general", FILE.name, None, file=FILE)
    assert (head + tail).encode() + b"\n" == dumps(message_dict(m))
    assert "file" not in event_to_dict(Message("5-1", "a", "#general", "hi", 5))


@pytest.mark.parametrize(
    "bad",
    [
        "a string",
        [],
        {"fid": "x", "name": "n", "size": "12", "sha256": "s", "mime": "m"},
        {"fid": "x", "name": "n", "size": -1, "sha256": "s", "mime": "m"},
        {"fid": "x", "name": "n", "size": True, "sha256": "s", "mime": "m"},
        {"fid": 5, "name": "n", "size": 1, "sha256": "s", "mime": "m"},
        {"name": "n", "size": 1, "sha256": "s", "mime": "m"},
    ],
)
def test_a_malformed_file_makes_the_event_malformed(bad: Any) -> None:
    d = {"type": "message", "id": "5-1", "ts": 5, "from": "a", "to": "#general", "text": "",
         "file": bad}  # fmt: skip
    with pytest.raises((KeyError, TypeError, ValueError)):
        message_from_dict(d)
    with pytest.raises((KeyError, TypeError, ValueError)):
        file_from_dict(bad)


async def test_a_file_message_is_stored_published_and_logged(redis: Redis) -> None:
    store = _store(redis)
    data = _data(70_000)
    info = await store.files.store(GENERAL, "alice", "report.pdf", "application/pdf", data)
    pubsub = listener(redis)
    await pubsub.subscribe("t:{c:#general}:events")
    await pubsub.get_message(timeout=1)  # the subscribe confirmation
    sent = await store.send("alice", GENERAL, GENERAL, "ignored", file=info, cid="f1")
    published = await pubsub.get_message(timeout=1)
    await pubsub.aclose()
    assert published is not None
    event = json.loads(published["data"])
    assert event == {
        "type": "message", "id": sent.id, "ts": int(sent.id.split("-")[0]), "from": "alice",
        "to": GENERAL, "text": "report.pdf",
        "file": {"fid": info.fid, "name": "report.pdf", "size": 70_000,
                 "sha256": hashlib.sha256(data).hexdigest(), "mime": "application/pdf"},
    }  # fmt: skip
    assert message_from_dict(event).file == info
    [entry] = await redis.xrange("t:{c:#general}:stream")
    assert json.loads(entry[1]["file"]) == event["file"]
    [read] = await store.messages.read_last(GENERAL, 10)
    assert read.id == sent.id and read.file == info and read.text == "report.pdf"
    [after] = await store.messages.read_after(GENERAL, None, 10)
    assert after.file == info
    [logged] = await store.messages.log("alice", 10)
    assert logged.id == sent.id and logged.file == info
    again = await store.send("alice", GENERAL, GENERAL, "", file=info, cid="f1")
    assert again.duplicate and again.id == sent.id


async def test_a_file_message_in_a_direct_conversation(redis: Redis) -> None:
    store = _store(redis)
    await store.accounts.login("bob", "pw")
    conv = dm_conversation("alice", "bob")
    info = await store.files.store(conv, "alice", "notes.txt", "text/plain", b"hello")
    pubsub = listener(redis)
    await pubsub.subscribe("t:{u:bob}:events")
    await pubsub.get_message(timeout=1)
    sent = await store.send("alice", conv, "bob", "", file=info)
    published = await pubsub.get_message(timeout=1)
    await pubsub.aclose()
    assert published is not None and json.loads(published["data"])["file"]["fid"] == info.fid
    [read] = await store.messages.read_last(conv, 10)
    assert read.id == sent.id and read.file == info


async def test_a_message_only_carries_a_file_of_its_conversation(redis: Redis) -> None:
    store = _store(redis)
    info = await store.files.store("dm:alice:bob", "alice", "secret.txt", "text/plain", b"s")
    for file in [
        info,  # stored in another conversation
        FileInfo("unknownfid", "x", 1, "ab" * 32, "text/plain"),
        FileInfo(info.fid, "renamed.txt", 1, info.sha256, info.mime),  # described wrongly
    ]:
        err = await _error(store.send("alice", GENERAL, GENERAL, "", file=file))
        assert err.code == "not_found"
    assert await redis.xlen("t:{c:#general}:stream") == 0


async def test_a_malformed_stored_file_field_shows_a_plain_message(redis: Redis) -> None:
    store = _store(redis)
    await redis.xadd("t:{c:#general}:stream", {"from": "a", "to": GENERAL, "text": "t",
                                               "file": "{not json"})  # fmt: skip
    [read] = await store.messages.read_last(GENERAL, 10)
    assert read.file is None and read.text == "t"


# -- how file messages look ----------------------------------------------------------


def test_sizes_as_people_read_them() -> None:
    assert [size_text(n) for n in [0, 1, 1023, 1024, 1536, 64 * KIB - 1, 5 * MIB, 300 * MIB]] == [
        "0 B", "1 B", "1023 B", "1 KiB", "1.5 KiB", "64.0 KiB", "5 MiB", "300 MiB",
    ]  # fmt: skip


def test_text_lines_show_a_file_and_its_link() -> None:
    codec = TextCodec()
    m = Message("1700000000000-0", "bob", GENERAL, FILE.name, 1_700_000_000_000, file=FILE)
    line = codec.encode(m).decode()
    assert line.endswith(" [1] bob: [file] photo ü.jpg (121 KiB)\r\n")
    codec.file_url = lambda f: f"http://chat.example:8000/files/{f.fid}"
    line = codec.encode(m).decode()
    assert line.endswith(
        " [1] bob: [file] photo ü.jpg (121 KiB) http://chat.example:8000/files/AbCdEfGhIjKlMnOp\r\n"
    )
    evil = Message("2-0", "bob", "dm:a:b", "x", 2, file=FileInfo("f", "a\x1b[2Jb", 1, "", ""))
    assert "\x1b" not in codec.encode(evil).decode()


def test_the_console_shows_a_file_and_its_fid() -> None:
    d = message_dict(Message("1-0", "bob", GENERAL, FILE.name, 1, file=FILE))
    shown = plain(message_line(d, "alice", ShortIds()))
    assert shown.endswith("bob: [file] photo ü.jpg (121 KiB) fid AbCdEfGhIjKlMnOp")
    d["file"]["name"] = "\x1b]0;evil\x07"
    assert "\x1b" not in plain(message_line(d, "alice", ShortIds()))


async def test_redis_down_during_a_download_is_unavailable(
    redis: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = _store(redis)
    info = await store.files.store(GENERAL, "alice", "a", "", _data(3 * CHUNK_BYTES))
    real = store.files._chunk_of

    async def drop_the_second(blob: str, index: int) -> bytes | None:
        if index == 1:
            raise RedisConnectionError("connection lost")
        return await real(blob, index)

    monkeypatch.setattr(store.files, "_chunk_of", drop_the_second)
    got = []
    with pytest.raises(Unavailable):
        async for chunk in store.files.chunks(GENERAL, info.fid):
            got.append(chunk)
    assert len(got) == 1

"""Hardening: unsafe text, names, framing, codec edge cases, the store on a real Redis."""

from __future__ import annotations

import asyncio
import json
import socket
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from redis.asyncio import Redis
from redis.connection import HiredisRespSerializer

from gateway.errors import ClientError
from gateway.net.outbox import tune_socket
from gateway.protocol.events import Error
from gateway.protocol.framing import (
    Framing,
    LineSplitter,
    detect_framing,
)
from gateway.protocol.jsonlines import JsonCodec
from gateway.protocol.ops import GetLog
from gateway.protocol.textlines import TextCodec
from gateway.protocol.values import MAX_LIMIT, printable, valid_name
from gateway.store import LoginLimits, Store
from gateway.store.accounts import _Hasher
from gateway.store.keys import Keys, dm_conversation
from gateway.store.redis import make_redis
from tests.support import RedisServer

# ---------------------------------------------------------------------------
# printable
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("char", "escaped"),
    [
        ("\u200e", "\\u200e"),  # LRM
        ("\u200f", "\\u200f"),  # RLM
        ("\u061c", "\\u061c"),  # ALM
        ("\u2028", "\\u2028"),  # line separator
        ("\u2029", "\\u2029"),  # paragraph separator
        ("\u200b", "\\u200b"),  # zero-width space
        ("\ufeff", "\\ufeff"),  # BOM
        ("\U000e0041", "\\U000e0041"),  # tag LATIN CAPITAL A
        ("\u202e", "\\u202e"),  # RLO
        ("\x1b", "\\x1b"),  # ESC
    ],
)
def test_printable_escapes_unsafe_characters(char: str, escaped: str) -> None:
    out = printable(f"a{char}b")
    assert char not in out
    assert out == f"a{escaped}b"


def test_printable_keeps_zwj_in_emoji_but_escapes_it_between_ascii() -> None:
    family = "\U0001f468\u200d\U0001f469"
    assert printable(family) == family
    assert printable("a\u200db") == "a\\u200db"
    assert "\u200d" not in printable("a\u200db")


# ---------------------------------------------------------------------------
# names and framing
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", [".", "..", "-", "_", "", "a" * 33, "._-"])
def test_valid_name_rejects(name: str) -> None:
    assert not valid_name(name)


@pytest.mark.parametrize("name", ["a.b", "_x", "Bob-1", "a" * 32])
def test_valid_name_accepts(name: str) -> None:
    assert valid_name(name)


@pytest.mark.parametrize(
    "first", [b"PATCH ", b"CONNECT ", b"TRACE ", b"PRI * HTTP/2.0\r\n", b"PATCH /x HTTP/1.1\r\n"]
)
def test_detect_framing_http_methods(first: bytes) -> None:
    assert detect_framing(first) is Framing.HTTP


def test_detect_framing_waits_on_method_prefix_and_picks_text_otherwise() -> None:
    assert detect_framing(b"PAT") is None
    assert detect_framing(b"PRI *") is None
    assert detect_framing(b"hello\n") is Framing.TEXT
    assert detect_framing(b'{"op":"ping"}\n') is Framing.JSON


def _one(codec: JsonCodec | TextCodec, line: bytes) -> Any:
    items = codec.feed(line + b"\n")
    assert len(items) == 1, items
    return items[0]


@pytest.mark.parametrize("cid", ["a\\u001bb", "a\\u202eb", "a b"])
def test_json_cid_with_unsafe_characters_is_bad_request(cid: str) -> None:
    line = '{"op":"send","to":"#general","text":"hi","cid":"' + cid + '"}'
    item = _one(JsonCodec(), line.encode())
    assert isinstance(item, Error)
    assert item.code == "bad_request"


def test_json_cid_visible_ascii_is_accepted() -> None:
    item = _one(JsonCodec(), b'{"op":"send","to":"#general","text":"hi","cid":"abc-1"}')
    assert not isinstance(item, Error)


def test_json_lone_surrogate_password_is_bad_request() -> None:
    item = _one(JsonCodec(), b'{"op":"login","user":"a","password":"\\ud800"}')
    assert isinstance(item, Error)
    assert item.code == "bad_request"


def test_json_lone_surrogate_rid_is_error() -> None:
    item = _one(JsonCodec(), b'{"op":"ping","rid":"\\ud800"}')
    assert isinstance(item, Error)
    assert item.code == "bad_request"


@pytest.mark.parametrize(
    "request_",
    [
        {"op": "history", "with": "#general", "before": "99999999999999999999-0"},
        {
            "op": "login",
            "user": "a",
            "password": "p",
            "since": {"#general": "99999999999999999999-0"},
        },
        {"op": "send", "to": "#general", "text": "hi", "reply_to": "99999999999999999999-0"},
    ],
)
def test_json_ids_beyond_u64_are_bad_request(request_: dict[str, Any]) -> None:
    item = _one(JsonCodec(), json.dumps(request_).encode())
    assert isinstance(item, Error)
    assert item.code == "bad_request"


def test_json_ids_within_u64_are_accepted() -> None:
    item = _one(
        JsonCodec(), b'{"op":"history","with":"#general","before":"18446744073709551615-0"}'
    )
    assert not isinstance(item, Error)


def test_json_huge_limit_is_rejected_or_clamped() -> None:
    line = b'{"op":"log","limit":' + b"9" * 5000 + b"}"
    item = _one(JsonCodec(), line)
    if isinstance(item, Error):
        assert item.code == "bad_request"
    else:
        assert isinstance(item, GetLog)
        assert 1 <= item.limit <= MAX_LIMIT


# ---------------------------------------------------------------------------
# TextCodec
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "line",
    [
        "/history \u00b2",
        "/log \u00b2",
        "/reply \u00b2 x",
        "/log -1",
        "/log abc",
        "/log " + "9" * 5000,
    ],
)
def test_text_bad_numbers_are_errors(line: str) -> None:
    item = _one(TextCodec(), line.encode())
    assert isinstance(item, Error)


def test_text_long_password_is_too_long() -> None:
    item = _one(TextCodec(), ("/login a " + "x" * 1025).encode())
    assert isinstance(item, Error)
    assert item.code == "too_long"


def test_login_hints_differ_by_framing() -> None:
    assert '"op":"login"' in JsonCodec.login_hint
    assert "/login" in TextCodec.login_hint
    assert JsonCodec.login_hint != TextCodec.login_hint
    assert "/login" not in JsonCodec.login_hint


# ---------------------------------------------------------------------------
# Line splitting is incremental
# ---------------------------------------------------------------------------


def test_codec_next_takes_one_line_at_a_time() -> None:
    codec = JsonCodec()
    total = 256 * 1024
    codec.push(b"\n" * total)
    first = codec.next()
    assert isinstance(first, Error)
    assert codec.buffered == total - 1  # the rest waits for the next call
    assert codec.next() is not None
    assert codec.buffered == total - 2


def test_line_splitter_yields_every_empty_line_once() -> None:
    splitter = LineSplitter(1024)
    total = 256 * 1024
    splitter.push(b"\n" * total)
    count = 0
    while (line := splitter.next_line()) is not None:
        assert line == b""
        count += 1
        assert splitter.buffered == total - count
    assert count == total
    assert splitter.buffered == 0


# ---------------------------------------------------------------------------
# The store on a real redis-server
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def real_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("hardening-redis")).start()
    try:
        yield server
    finally:
        server.stop()


StoreMaker = Callable[..., Store]


@pytest.fixture
async def make_store(real_redis: RedisServer) -> AsyncIterator[StoreMaker]:
    clients: list[Redis] = []

    def make(**kw: Any) -> Store:
        client = Redis.from_url(real_redis.url, decode_responses=True)
        clients.append(client)
        return Store(client, Keys(prefix="h" + uuid.uuid4().hex[:12]), **kw)

    yield make
    for client in clients:
        await client.aclose()


async def test_login_throttle_is_atomic(make_store: StoreMaker) -> None:
    store = make_store(login=LoginLimits(scrypt_n=1024, fail_limit=5))
    await store.accounts.login("bob", "right")
    results = await asyncio.gather(
        *(store.accounts.login("bob", "wrong", "10.0.0.1") for _ in range(100)),
        return_exceptions=True,
    )
    assert all(isinstance(r, ClientError) for r in results), results
    codes = [r.code for r in results if isinstance(r, ClientError)]
    bad = codes.count("bad_password")
    limited = codes.count("rate_limited")
    assert 1 <= bad <= 5, codes
    assert bad + limited == 100, codes


async def test_a_login_storm_of_right_passwords_from_one_address_is_let_in(
    make_store: StoreMaker,
) -> None:
    """Behind a load balancer everyone shares an address: only wrong guesses count."""
    store = make_store(login=LoginLimits(scrypt_n=1024, per_address=10, scrypt_queue=500))
    results = await asyncio.gather(
        *(store.accounts.login(f"u{i}", "pw", "10.0.0.7") for i in range(60)),
        return_exceptions=True,
    )
    assert not [r for r in results if isinstance(r, BaseException)], results
    again = await asyncio.gather(
        *(store.accounts.login(f"u{i}", "pw", "10.0.0.7") for i in range(60)),
        return_exceptions=True,
    )
    assert not [r for r in again if isinstance(r, BaseException)], again


async def test_stranger_cannot_lock_out_owner(make_store: StoreMaker) -> None:
    store = make_store(login=LoginLimits(fail_limit=3, per_name=5, per_address=1000, scrypt_n=1024))
    first = await store.accounts.login("bob", "right", "10.0.0.9")
    assert first.new
    outcomes: list[str] = []
    for i in range(20):
        for _ in range(10):
            try:
                await store.accounts.login("bob", "wrong", f"192.168.1.{i + 1}")
            except ClientError as exc:
                outcomes.append(exc.code)
                if exc.code == "rate_limited":
                    break
            else:
                pytest.fail("a wrong password logged in")
        else:
            pytest.fail(f"stranger {i} was never rate limited")
    assert outcomes.count("bad_password") <= 5
    owner = await store.accounts.login("bob", "right", "10.0.0.9")
    assert owner.name == "bob" and not owner.new
    with pytest.raises(ClientError) as err:
        await store.accounts.login("bob", "right", "10.0.0.77")
    assert err.value.code == "rate_limited"


async def _send_many(store: Store, n: int) -> list[str]:
    ids = []
    for i in range(n):
        result = await store.send("alice", "#general", "#general", f"m{i}")
        ids.append(result.id)
    return ids


async def test_unread_counts_exact_and_capped(make_store: StoreMaker) -> None:
    store = make_store()
    ids = await _send_many(store, 500)
    assert len(set(ids)) == 500
    m = store.messages
    assert await m.unread_counts([("#general", ids[99])], cap=10000) == [400]
    assert await m.unread_counts([("#general", ids[99])], cap=10) == [10]
    assert await m.unread_counts([("#general", ids[-1])], cap=10000) == [0]
    assert await m.unread_counts([("#general", None)], cap=10000) == [500]
    top = "18446744073709551615-18446744073709551615"
    assert await m.unread_counts([("#general", top)], cap=10000) == [0]
    assert await m.read_last("#general", 10, before="0-0") == []
    # the counts come from the numbered entries, not from counting the stream
    raw = await store.redis.xrange(store.keys.stream("#general"), count=1)
    assert raw and "n" in raw[0][1]


async def test_start_of_last_replays_exactly_the_last_n(make_store: StoreMaker) -> None:
    store = make_store()
    ids = await _send_many(store, 500)
    after = await store.messages.start_of_last("#general", 250)
    got: list[str] = []
    for _ in range(10):
        page = await store.messages.read_after("#general", after, 200)
        if not page:
            break
        got += [msg.id for msg in page]
        after = page[-1].id
    assert got == ids[-250:]
    assert await store.messages.start_of_last("#general", 1000) is None


async def test_expired_conversation_leaves_the_list_with_its_cursor(
    make_store: StoreMaker,
) -> None:
    store = make_store(message_ttl_s=1)
    dm = dm_conversation("alice", "bob")
    await store.send("alice", dm, "bob", "hi")
    await store.cursors.advance({"alice": {dm: "1-0"}, "bob": {dm: "1-0"}})
    assert dm in await store.redis.hgetall(store.keys.cursors("alice"))
    await store.redis.zadd(store.keys.conversations("alice"), {dm: 0})
    await store.redis.zadd(store.keys.conversations("bob"), {dm: 10**13})  # recent, in the future
    assert await store.cursors.conversations("alice") == ["#general"]
    assert dm not in await store.redis.hgetall(store.keys.cursors("alice"))
    assert await store.redis.zscore(store.keys.conversations("alice"), dm) is None
    # a conversation still alive stays, with its cursor
    assert await store.cursors.conversations("bob") == ["#general", dm]
    assert dm in await store.redis.hgetall(store.keys.cursors("bob"))


# ---------------------------------------------------------------------------
# tune_socket
# ---------------------------------------------------------------------------


async def test_tune_socket_caps_sndbuf_and_turns_on_keepalive() -> None:
    accepted: asyncio.Future[asyncio.StreamWriter] = asyncio.get_running_loop().create_future()

    async def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.set_result(writer)

    server = await asyncio.start_server(on_client, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    _, client = await asyncio.open_connection("127.0.0.1", port)
    writer = await asyncio.wait_for(accepted, 5)
    try:
        sock = writer.transport.get_extra_info("socket")
        # Start from a big buffer and keepalive off, so the test sees what tune_socket does.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 * 1024 * 1024)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 0)
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) > 2 * 65536
        tune_socket(writer.transport, 65536)
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) <= 2 * 65536
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
    finally:
        client.close()
        writer.close()
        server.close()
        await server.wait_closed()


async def test_password_checks_from_known_addresses_go_first() -> None:
    """Issue 9.5: a botnet's guesses (from addresses never seen) queue behind the
    owners' logins, so a flood of them does not delay the people who own names."""
    hasher = _Hasher(threads=1, queue=100)
    order: list[str] = []

    def check(name: str) -> str:
        time.sleep(0.02)
        order.append(name)
        return name

    guesses = [asyncio.create_task(hasher.run(check, f"guess{i}")) for i in range(20)]
    await asyncio.sleep(0.01)  # the guesses are queued first
    owner = asyncio.create_task(hasher.run(check, "owner", first=True))
    cancelled = asyncio.create_task(hasher.run(check, "gone"))
    await asyncio.sleep(0)
    cancelled.cancel()
    await asyncio.gather(owner, *guesses)
    assert order.index("owner") <= 2, order  # not 21st
    assert "gone" not in order and len(order) == 21


# ---------------------------------------------------------------------------
# Packing commands for Redis
# ---------------------------------------------------------------------------

_ARG = st.one_of(
    st.text(),
    st.binary(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.binary().map(bytearray),
    st.binary().map(lambda b: memoryview(b)),
)


@given(
    st.one_of(st.sampled_from(["EVALSHA", "SET", "CLIENT SETNAME", "é"]), st.text(min_size=1)),
    st.lists(_ARG, max_size=8),
)
def test_the_fast_packing_sends_the_bytes_redis_py_would(name: str, args: list[Any]) -> None:
    """The gateway's packing (hiredis as it is, redis-py's packer for the rest) gives
    the same bytes as redis-py's own, for every kind of argument redis-py takes."""
    pool: Any = make_redis("redis://127.0.0.1:1").connection_pool
    ours = b"".join(pool.make_connection().pack_command(name, *args))
    packer: Any = HiredisRespSerializer()
    theirs = b"".join(packer.pack(name, *args))
    assert ours == theirs

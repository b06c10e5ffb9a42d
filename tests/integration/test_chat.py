"""Issue 2 end to end: two real gateway processes on one port, a real redis-server."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from client.connection import ChatError, Connection
from gateway.protocol import parse_stream_id
from gateway.store import make_redis
from tests.support import (
    ON_REDIS_AND_CLUSTER,
    AnyRedis,
    Deployment,
    RedisClusterServer,
    RedisServer,
    TextClient,
    redis_client,
    running,
    start_worker,
)


async def redis_for(dep: Deployment) -> aioredis.Redis:
    return aioredis.Redis.from_url(dep.redis.url, decode_responses=True)


# -- text lines, as a person with nc ------------------------------------------------------


@ON_REDIS_AND_CLUSTER
async def test_text_users_chat_with_sender_and_time(deployment: Deployment) -> None:
    alice, bob = await deployment.text(), await deployment.text()
    await alice.send("/login alice pw\n")
    await alice.expect(r"alice logged in \(new name claimed\) on gateway gw\d")
    await alice.expect(r"up to date")
    await bob.send("/login bob pw\n")
    await bob.expect(r"up to date")
    await alice.send("hello from alice\n")
    line = await bob.expect(r"hello from alice")
    assert re.fullmatch(r"\d\d:\d\d:\d\d \[\d+\] alice: hello from alice", line)
    await bob.send("/private to alice just you\n")
    assert re.search(r"\(private\) bob: just you$", await alice.expect("just you"))
    await alice.send("/quit\n")
    await alice.expect(r"\*\* bye")
    with pytest.raises(ConnectionError):
        await alice.line()
    await bob.close()


async def test_only_login_help_and_quit_work_before_login(deployment: Deployment) -> None:
    guest = await deployment.text()
    await guest.send("hello?\n/status\n/history\n/help\n")
    for _ in range(3):
        await guest.expect(r"^!! error \(not_logged_in\)")
    await guest.expect(r"/private to <user> <text>")
    # A guest receives no chat traffic.
    speaker = await deployment.login("speaker")
    await speaker.send("#general", "not for guests")
    await guest.send("/ping\n")
    await guest.expect(r"\*\* pong")
    assert not any("not for guests" in line for line in guest.lines)
    await guest.close()


async def test_bad_names_wrong_passwords_and_throttling(deployment: Deployment) -> None:
    conn = await deployment.connect()
    with pytest.raises(ChatError) as err:
        await conn.request("login", user="bad name!", password="x")
    assert err.value.code == "bad_name"
    await conn.login("carol", "right")
    other = await deployment.connect()
    for _ in range(5):
        with pytest.raises(ChatError) as err:
            await other.login("CAROL", "wrong")
        assert err.value.code == "bad_password"
    with pytest.raises(ChatError) as err:
        await other.login("carol", "right")
    assert err.value.code == "rate_limited" and err.value.event["retry_after"] > 0
    await other.ping()  # the connection goes on


# -- broadcast, private messages, across gateways ------------------------------------------


@ON_REDIS_AND_CLUSTER
async def test_messages_cross_gateways_through_redis(deployment: Deployment) -> None:
    a1 = await deployment.connect_on("gw1", "ann")
    b2 = await deployment.connect_on("gw2", "ben")
    sid = await b2.send("#general", "from gw2")
    [got] = await a1.messages(1)
    assert (got["id"], got["from"], got["to"], got["text"]) == (sid, "ben", "#general", "from gw2")
    assert abs(got["ts"] - int(sid.split("-")[0])) == 0
    dm = await a1.send("ben", "private from gw1")
    [own, got] = await b2.messages(2)  # ben sees his own broadcast first
    assert own["id"] == sid
    assert (got["id"], got["from"], got["to"]) == (dm, "ann", "ben")


@ON_REDIS_AND_CLUSTER
async def test_each_gateway_subscribes_once_per_channel(deployment: Deployment) -> None:
    for i in range(8):
        await deployment.login(f"user{i}")
    general = f"{deployment.prefix}:{{c:#general}}:events"
    if isinstance(deployment.redis, RedisClusterServer):
        # Sharded: counted on the node that owns the channel's slot.
        cluster = make_redis(deployment.redis.url, cluster=True)
        await cluster.initialize()  # type: ignore[attr-defined]
        node = cluster.get_node_from_key(general)  # type: ignore[attr-defined]
        try:
            reply = await cluster.execute_command(
                "PUBSUB", "SHARDNUMSUB", general, target_nodes=node
            )
        finally:
            await cluster.aclose()
        subscribers = dict(zip(reply[::2], reply[1::2], strict=True))[general]
    else:
        r = await redis_for(deployment)
        try:
            [(_, subscribers)] = await r.pubsub_numsub(general)
        finally:
            await r.aclose()
    assert subscribers == 2  # two gateway processes, however many clients


@ON_REDIS_AND_CLUSTER
async def test_private_message_to_offline_user_waits_for_login(deployment: Deployment) -> None:
    dora = await deployment.login("dora")
    await dora.quit()
    eve = await deployment.login("eve")
    sid = await eve.send("dora", "read this later")
    dora = await deployment.connect()
    result = await dora.login("dora", "pw")
    assert result.welcome["unread"] == {"eve": 1}
    assert [(m["id"], m["text"], m["replay"]) for m in result.replayed] == [
        (sid, "read this later", True)
    ]


async def test_message_to_unknown_user_is_refused_and_not_stored(deployment: Deployment) -> None:
    fred = await deployment.login("fred")
    with pytest.raises(ChatError) as err:
        await fred.send("nobody", "hello?")
    assert err.value.code == "unknown_user"
    with pytest.raises(ChatError) as err:
        await fred.send("#nowhere", "hello?")
    assert err.value.code == "not_found"
    r = await redis_for(deployment)
    assert await r.keys(f"{deployment.prefix}:{{c:dm:*") == []
    assert await fred.log() == []
    await r.aclose()


# -- history, unread, several clients ----------------------------------------------------------


@ON_REDIS_AND_CLUSTER
async def test_first_login_replays_the_last_20_of_general_in_order(deployment: Deployment) -> None:
    talker = await deployment.login("talker")
    ids = [await talker.send("#general", f"m{i}") for i in range(25)]
    newbie = await deployment.connect()
    result = await newbie.login("newbie", "pw")
    assert result.welcome["new"] is True
    assert [m["id"] for m in result.replayed] == ids[-20:]
    assert result.welcome["unread"] == {"#general": 20}


@ON_REDIS_AND_CLUSTER
async def test_later_login_replays_everything_unread_without_duplicates(
    deployment: Deployment,
) -> None:
    gina = await deployment.login("gina")
    hal = await deployment.login("hal")
    seen = await gina.send("#general", "seen by hal live")
    await hal.messages(1)
    await asyncio.sleep(0.8)  # let the gateway save hal's cursor (every 0.5 s)
    await hal.quit()
    public = [await gina.send("#general", f"p{i}") for i in range(3)]
    private = [await gina.send("hal", f"d{i}") for i in range(2)]
    hal = await deployment.connect()
    result = await hal.login("hal", "pw")
    assert result.welcome["unread"] == {"#general": 3, "gina": 2}
    replayed = [m["id"] for m in result.replayed]
    assert seen not in replayed
    assert replayed == public + private
    live = await gina.send("#general", "after login")
    [got] = await hal.messages(1)
    assert got["id"] == live and "replay" not in got


@ON_REDIS_AND_CLUSTER
async def test_several_clients_of_one_user_stay_in_sync(deployment: Deployment) -> None:
    phone = await deployment.connect_on("gw1", "ivy")
    laptop = await deployment.connect_on("gw2", "ivy")
    jon = await deployment.login("jon")
    sid = await phone.send("#general", "from my phone")
    [on_laptop] = await laptop.messages(1)
    assert on_laptop["id"] == sid
    dm = await phone.send("jon", "hi jon")
    assert [m["id"] for m in await laptop.messages(1)] == [dm]
    reply = await jon.send("ivy", "hi ivy")
    assert [m["id"] for m in await phone.messages(3)] == [sid, dm, reply]
    assert [m["id"] for m in await laptop.messages(1)] == [reply]
    await asyncio.sleep(0.8)
    # Unread state is shared: what reached the phone is not unread for a new client.
    third = await deployment.connect()
    result = await third.login("ivy", "pw")
    assert result.welcome["unread"] == {}
    assert result.replayed == []


@ON_REDIS_AND_CLUSTER
async def test_log_history_and_status(deployment: Deployment) -> None:
    kim = await deployment.connect_on("gw1", "kim")
    leo = await deployment.connect_on("gw2", "leo")
    mine = [await kim.send("#general", "k1"), await kim.send("leo", "k2")]
    await leo.send("#general", "l1")
    log = await kim.log()
    assert [m["id"] for m in log] == mine and all(m["from"] == "kim" for m in log)
    assert [m["text"] for m in await kim.log(limit=1)] == ["k2"]
    history = await kim.history("#general", limit=2)
    assert [m["text"] for m in history] == ["k1", "l1"]
    assert [m["text"] for m in await leo.history("kim")] == ["k2"]
    older = await kim.history("#general", before=history[1]["id"])
    assert [m["text"] for m in older] == ["k1"]
    status = await leo.status()
    assert status["user"] == "leo" and status["gateway"] == "gw2"
    assert {"kim", "leo"} <= set(status["online"])
    await kim.quit()
    for _ in range(50):
        if "kim" not in (await leo.status())["online"]:
            break
        await asyncio.sleep(0.1)
    else:
        raise AssertionError("kim still online after quitting")


async def test_direct_history_is_only_for_participants(deployment: Deployment) -> None:
    mia = await deployment.login("mia")
    ned = await deployment.login("ned")
    await mia.send("ned", "secret")
    oz = await deployment.login("oz")
    # oz can only ever name his own conversation with a user, never theirs.
    assert await oz.history("mia") == []
    assert [m["text"] for m in await ned.history("mia")] == ["secret"]


# -- bad input ---------------------------------------------------------------------------------


async def test_bad_input_gets_errors_and_the_connection_goes_on(deployment: Deployment) -> None:
    t = await deployment.text()
    await t.send("/login pat pw\n")
    await t.expect("up to date")
    cases = [
        (b"\n", "bad_request"),
        (b"/frobnicate\n", "unknown_op"),
        (b"\xff\xfe\xfd\n", "bad_request"),
        (b"x" * 20_000 + b"\n", "too_long"),
        ("y" * 4001 + "\n", "too_long"),
    ]
    for data, code in cases:
        await t.send(data)
        await t.expect(rf"^!! error \({code}\)")
    await t.send("/ping\n/ping\n")  # two commands in one packet
    await t.expect("pong")
    await t.expect("pong")
    for chunk in (b"/pi", b"n", b"g\n"):  # one command split across packets
        await t.send(chunk)
        await asyncio.sleep(0.05)
    await t.expect("pong")
    await t.send("still here\n")
    await t.expect("pat: still here")
    await t.close()


async def test_malformed_json_gets_errors_and_goes_on(deployment: Deployment) -> None:
    conn = await deployment.connect()
    conn._writer.write(b'{"op": "ping"\n{"op": "ping", "rid": "ok"}\n[]\n')
    first = await conn.next_event(timeout=5)
    assert first["type"] == "error" and first["code"] == "bad_request"
    await conn.ping()


async def test_control_characters_are_escaped_for_text_readers(deployment: Deployment) -> None:
    sender = await deployment.login("mallory")
    reader = await deployment.text()
    await reader.send("/login quinn pw\n")
    await reader.expect("up to date")
    await sender.send("#general", "clear \x1b[2J bell \x07 done")
    line = await reader.expect("done")
    assert "\x1b" not in line and "\x07" not in line
    assert "\\x1b[2J" in line and "\\x07" in line


async def test_connection_that_never_logs_in_is_closed(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    async with running(
        Deployment(redis_server, tmp_path, gateways=1, extra=["--login-timeout-s", "1"])
    ) as dep:
        t = await dep.text()
        await t.send("/help\n")
        await t.expect(r"not_logged_in.*no login within 1 s", timeout=5)
        with pytest.raises(ConnectionError):
            while True:
                await t.line(timeout=5)
        conn = await dep.login("ruth")  # logging in in time is fine
        await asyncio.sleep(1.5)
        await conn.ping()


# -- lifetime ------------------------------------------------------------------------------------


@ON_REDIS_AND_CLUSTER
async def test_expired_messages_are_gone_and_trimmed_by_the_worker(
    chat_redis: AnyRedis, tmp_path: Path
) -> None:
    """On a cluster the janitor scans each primary (the streams spread over them)."""
    deployment = Deployment(chat_redis, tmp_path, gateways=1, extra=["--message-ttl", "1"])
    async with running(deployment) as dep:
        worker = None
        r = await redis_client(dep.redis)
        try:
            sam = await dep.login("sam")
            await (await dep.login("tia")).quit()
            await sam.send("#general", "short-lived")
            await sam.send("#general", "also short-lived")
            await sam.send("tia", "short-lived too")
            await asyncio.sleep(1.3)
            assert await sam.history("#general") == []
            assert await sam.log() == []
            fresh = await dep.connect()
            assert (await fresh.login("tia", "pw")).replayed == []
            streams = [
                f"{dep.prefix}:{{c:#general}}:stream",
                f"{dep.prefix}:{{c:dm:sam:tia}}:stream",
                f"{dep.prefix}:{{u:sam}}:log",
            ]
            assert [await r.xlen(s) for s in streams] == [2, 1, 3]  # until trimmed
            worker = start_worker(dep.redis, dep.prefix, tmp_path, "--message-ttl", "1",
                                  "--trim-interval-s", "0.2")  # fmt: skip
            for _ in range(100):
                if [await r.xlen(s) for s in streams] == [0, 0, 0]:
                    break
                await asyncio.sleep(0.1)
            else:
                raise AssertionError("the worker did not trim expired messages")
        finally:
            await r.aclose()
            if worker is not None:
                worker.terminate()
                assert worker.wait(10) == 0


async def test_gateway_logs_actions_with_user_and_gateway(deployment: Deployment) -> None:
    uma = await deployment.connect_on("gw1", "uma")
    await uma.send("#general", "logged")
    with pytest.raises(ChatError):
        await uma.send("ghost", "x")
    await uma.quit()
    await asyncio.sleep(0.2)
    log = deployment.gateways[0].log_text()
    assert re.search(r"\[gw1\] .*login user=uma", log)
    assert re.search(r"\[gw1\] .*send user=uma to=#general id=\d+-\d+", log)
    assert re.search(r"\[gw1\] .*error user=uma .*code=unknown_user", log)
    assert re.search(r"\[gw1\] .*logout user=uma", log)


async def test_raw_socket_split_json_login(deployment: Deployment) -> None:
    """Byte-by-byte JSON over a real socket: framing is decided by the first byte."""
    reader, writer = await asyncio.open_connection("127.0.0.1", deployment.port)
    conn = Connection(reader, writer)
    for b in b'{"op":"login","user":"vic","password":"pw","rid":"1"}\n':
        writer.write(bytes([b]))
        await writer.drain()
    welcome = await conn.next_event(timeout=5)
    assert welcome["type"] == "welcome" and welcome["user"] == "vic"
    await conn.close()


async def test_text_client_helper_is_real(deployment: Deployment) -> None:
    # A sanity check on the harness itself: a wrong expectation must fail.
    t: TextClient = await deployment.text()
    await t.send("/ping\n")
    with pytest.raises(AssertionError):
        await t.expect("this will never appear", timeout=0.5)
    await t.close()


async def test_history_larger_than_the_outbox_is_paced_not_cut(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    async with running(
        Deployment(redis_server, tmp_path, gateways=1, extra=["--max-outbox-bytes", "65536"])
    ) as dep:
        writer = await dep.login("wes")
        reader = await dep.login("xia")
        ids = [await writer.send("xia", f"{i:03d} " + "y" * 3000) for i in range(60)]
        await reader.messages(60)
        history = await reader.history("wes", limit=200)  # ~180 KB, three times the bound
        assert [m["id"] for m in history] == ids
        await reader.ping()  # still connected: asked-for replies are not "falling behind"


@ON_REDIS_AND_CLUSTER
async def test_both_sides_of_a_direct_conversation_at_once_arrive_in_order(
    deployment: Deployment,
) -> None:
    """Both users send at once from two gateways; a second client of each, on the
    other gateway, gets all of it once, in the conversation's order. (On a cluster
    a direct message is published after its step, so two can cross on the way.)"""
    ann = await deployment.connect_on("gw1", "ann")
    bob = await deployment.connect_on("gw2", "bob")
    ann2 = await deployment.connect_on("gw2", "ann")
    bob2 = await deployment.connect_on("gw1", "bob")
    sent = await asyncio.gather(
        *(ann.send("bob", f"a{i}") for i in range(40)),
        *(bob.send("ann", f"b{i}") for i in range(40)),
    )
    order = sorted(sent, key=parse_stream_id)
    for client in (ann2, bob2, ann, bob):
        got = [m["id"] for m in await client.messages(80, timeout=20)]
        assert got == order


async def test_sends_written_at_once_are_stored_and_answered_in_order(
    deployment: Deployment,
) -> None:
    """A client writes 100 sends, a history request and 50 more sends in one go,
    then half-closes. Its sends join the store's batches without waiting for each
    other's answer, yet they are stored, acked and delivered in the order written;
    the history has every send before it; every line is answered before the close."""
    bob = await deployment.login("bob")
    reader, writer = await asyncio.open_connection("127.0.0.1", deployment.port)
    writer.write(b'{"op":"login","user":"amy","password":"pw"}\n')
    while json.loads(await asyncio.wait_for(reader.readline(), 10))["type"] != "synced":
        pass
    lines: list[dict[str, object]] = [
        {"op": "send", "to": "bob", "text": f"m{i:03d}", "rid": i} for i in range(150)
    ]
    lines.insert(100, {"op": "history", "with": "bob", "limit": 200, "rid": "h"})
    writer.write(b"".join(json.dumps(line).encode() + b"\n" for line in lines))
    writer.write_eof()
    answers = []
    while line := await asyncio.wait_for(reader.readline(), 20):
        ev = json.loads(line)
        if ev["type"] != "message":  # amy's own echoes
            answers.append(ev)
    writer.close()
    assert [ev["type"] for ev in answers] == ["ack"] * 100 + ["history"] + ["ack"] * 50
    history = answers.pop(100)
    assert [ev["rid"] for ev in answers] == list(range(150))
    ids = [ev["id"] for ev in answers]
    assert ids == sorted(ids, key=parse_stream_id) and len(set(ids)) == 150
    assert [m["id"] for m in history["messages"]] == ids[:100]
    got = await bob.messages(150, timeout=20)
    assert [(m["id"], m["text"]) for m in got] == [(i, f"m{n:03d}") for n, i in enumerate(ids)]

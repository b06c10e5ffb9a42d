"""Moderation end to end (issue 10): the public-chat rate limit, reports, bans, and
the redis-cli lines of docs/redis-keys.md, on real gateways and a real redis-server,
with windows of a few seconds."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from client.connection import ChatError, Connection
from tests.support import (
    ON_REDIS_AND_CLUSTER,
    AnyRedis,
    Deployment,
    chat_error,
    doc_recipes,
    next_of,
    redis_client,
    running,
    start_worker,
    wait_for,
)

pytestmark = ON_REDIS_AND_CLUSTER


def _moderation(
    chat_redis: AnyRedis, tmp_path: Path, *, limit: int = 0, window: int = 3600,
    threshold: int = 3, ban_s: int = 14400, gateways: int = 2,
) -> Deployment:  # fmt: skip
    extra = [
        "--rate-limit", str(limit), "--rate-window", str(window),
        "--report-threshold", str(threshold), "--ban-s", str(ban_s),
    ]  # fmt: skip
    return Deployment(chat_redis, tmp_path, gateways=gateways, extra=extra)


async def _history_from(conn: Connection, user: str) -> list[dict[str, Any]]:
    return [m for m in await conn.history("#general", limit=200) if m["from"] == user]


@pytest.fixture
async def redis(chat_redis: AnyRedis) -> AsyncIterator[aioredis.Redis]:
    client = await redis_client(chat_redis)
    yield client
    await client.aclose()


# -- the rate limit --------------------------------------------------------------------


async def test_racing_sends_of_one_user_stop_exactly_at_the_limit(
    chat_redis: AnyRedis, tmp_path: Path
) -> None:
    """30 sends racing from 3 clients on 2 gateways, limit 20: exactly 20 acks, 20 stored;
    the count survives reconnecting; the window's end restores sending."""
    dep = _moderation(chat_redis, tmp_path, limit=20, window=4)
    async with running(dep):
        clients = [
            await dep.connect_on("gw1", "rat"),
            await dep.connect_on("gw2", "rat"),
            await dep.connect_on("gw1", "rat"),
        ]
        sends = [
            c.send("#general", f"m{i}-{j}", cid=f"c{i}-{j}", timeout=10)
            for j in range(10)
            for i, c in enumerate(clients)
        ]
        results = await asyncio.gather(*sends, return_exceptions=True)
        acked = [r for r in results if isinstance(r, str)]
        refused = [r for r in results if isinstance(r, ChatError)]
        assert len(acked) == 20 and len(refused) == 10, results
        assert {e.code for e in refused} == {"rate_limited"}
        assert all(1 <= e.event["retry_after"] <= 4 for e in refused), refused
        assert "you can send again in" in refused[0].event["message"]
        reader = await dep.login("reader")
        assert len(await _history_from(reader, "rat")) == 20

        # A retry of an acked send (same cid) is counted once: the same ack, no error.
        first = next(i for i, r in enumerate(results) if isinstance(r, str))
        i, j = first % 3, first // 3
        assert await clients[i].send("#general", f"m{i}-{j}", cid=f"c{i}-{j}") == results[first]

        # Reconnecting (on either gateway) does not reset the count.
        for c in clients:
            await c.close()
        again = await dep.connect_on("gw2", "rat")
        err = await chat_error(again.send("#general", "after reconnecting"))
        assert err.code == "rate_limited"
        status = await again.status()
        assert status["quota"]["limit"] == 20 and status["quota"]["left"] == 0
        assert status["quota"]["resets_at"] > time.time() * 1000
        # Direct messages do not count (docs: the limit is on public rooms).
        await again.send("reader", "a private word")

        await asyncio.sleep(err.event["retry_after"] + 0.3)
        await again.send("#general", "a new window")
        assert (await again.status())["quota"]["left"] == 19
        assert len(await _history_from(reader, "rat")) == 21


async def test_a_refused_send_uses_no_quota(chat_redis: AnyRedis, tmp_path: Path) -> None:
    dep = _moderation(chat_redis, tmp_path, limit=2, window=60, gateways=1)
    async with running(dep):
        conn = await dep.login("ref")
        for _ in range(3):
            err = await chat_error(conn.send("#general", "re nothing", reply_to="1-0"))
            assert err.code == "not_found"
        assert (await conn.status())["quota"]["left"] == 2
        await conn.send("#general", "one")
        await conn.send("#general", "two")
        assert (await chat_error(conn.send("#general", "three"))).code == "rate_limited"


async def test_the_limit_can_be_turned_off(chat_redis: AnyRedis, tmp_path: Path) -> None:
    dep = _moderation(chat_redis, tmp_path, limit=0, gateways=1)
    async with running(dep):
        conn = await dep.login("free")
        for i in range(30):
            await conn.send("#general", f"n{i}")
        assert (await conn.status())["quota"] is None


# -- reports and bans ------------------------------------------------------------------


async def test_three_reports_ban_on_every_gateway_until_the_ban_ends(
    chat_redis: AnyRedis, tmp_path: Path, redis: aioredis.Redis
) -> None:
    dep = _moderation(chat_redis, tmp_path, limit=50, threshold=3, ban_s=4)
    async with running(dep):
        worker = start_worker(chat_redis, dep.prefix, tmp_path)
        try:
            await _reports_and_ban(dep, redis, tmp_path / "worker.log")
        finally:
            worker.terminate()
            worker.wait(10)


async def _reports_and_ban(dep: Deployment, redis: aioredis.Redis, worker_log: Path) -> None:
    target = [await dep.connect_on("gw1", "tgt"), await dep.connect_on("gw2", "tgt")]
    await target[0].send("#general", "before any report")
    r1, r2, r3 = [await dep.login(n) for n in ("rep1", "rep2", "rep3")]
    text = await dep.text()
    await text.send("/login tgt pw\r\n")
    await text.expect("logged in")

    assert (await chat_error(r1.request("report", user="rep1"))).code == "bad_request"
    assert (await chat_error(r1.request("report", user="nobody"))).code == "unknown_user"

    first = await r1.request("report", user="TGT", reason="spam")
    assert first == {"type": "reported", "rid": first["rid"], "user": "tgt", "counted": True,
                     "reports": 1, "threshold": 3, "banned_until": None}  # fmt: skip
    for conn in target:  # every client of the user, on both gateways
        warning = await next_of(conn, "warning")
        assert warning["reports"] == 1 and warning["banned_until"] is None
    await text.expect(r"!! warning: you were reported \(1 of 3\)")
    repeat = await r1.request("report", user="tgt")
    assert repeat["counted"] is False and repeat["reports"] == 1
    assert await redis.hkeys(f"{dep.prefix}:{{u:tgt}}:reports") == ["rep1"]

    await r2.request("report", user="tgt")
    banning = await r3.request("report", user="tgt", reason="more spam")
    until = banning["banned_until"]
    assert banning["counted"] and banning["reports"] == 3
    assert until > time.time() * 1000
    for conn in target:
        while (warning := await next_of(conn, "warning"))["banned_until"] is None:
            pass
        assert warning["banned_until"] == until
    await text.expect(r"!! you were reported by 3 users: you cannot send until")

    # At once, on both gateways, and for every kind of send.
    for conn in target:
        err = await chat_error(conn.send("#general", "still here?"))
        assert err.code == "banned" and err.event["until"] == until
        assert 1 <= err.event["retry_after"] <= 4
        assert (await chat_error(conn.send("rep1", "psst"))).code == "banned"
    await text.send("still here?\r\n")
    await text.expect(r"!! error \(banned\): you are banned from sending; you can send again in")
    # The banned user still reads.
    status = await target[1].status()
    assert status["banned_until"] == until
    assert any(m["text"] == "before any report" for m in await target[1].history("#general"))
    assert len(await target[0].log()) == 1
    # A report of someone banned changes nothing.
    late = await r1.request("report", user="tgt")
    assert late["counted"] is False and late["banned_until"] == until
    assert await redis.exists(f"{dep.prefix}:{{u:tgt}}:reports") == 0
    assert await redis.zscore(f"{dep.prefix}:bans", "tgt") == until
    for gw in dep.gateways:  # each refusal is logged where it happened
        assert "send refused user=tgt to=#general code=banned" in gw.log_text()
    logs = dep.logs()
    assert "ban user=tgt" in logs and "report user=tgt by=rep1" in logs

    # The ban ends by itself; the user sends again and starts from zero reports.
    await asyncio.sleep(max(0.0, until / 1000 - time.time()) + 0.2)
    await target[0].send("#general", "back")
    assert (await target[1].status())["banned_until"] is None
    fresh = await r1.request("report", user="tgt")
    assert fresh["counted"] and fresh["reports"] == 1
    wait_for(lambda: "ban ended user=tgt" in worker_log.read_text(), 5, "the worker to log it")
    assert await redis.zscore(f"{dep.prefix}:bans", "tgt") is None


async def test_reports_racing_at_the_threshold_give_one_ban(
    chat_redis: AnyRedis, tmp_path: Path
) -> None:
    dep = _moderation(chat_redis, tmp_path, threshold=3)
    async with running(dep):
        target = await dep.login("victim")
        reporters = [await dep.login(f"rr{i}") for i in range(8)]
        await reporters[0].request("report", user="victim")
        await reporters[1].request("report", user="victim")
        replies = await asyncio.gather(*(r.request("report", user="victim") for r in reporters[2:]))
        banning = [r for r in replies if r["counted"]]
        assert len(banning) == 1, replies
        until = banning[0]["banned_until"]
        assert all(r["banned_until"] == until for r in replies)
        warnings = []
        with pytest.raises(TimeoutError):
            while True:
                warnings.append(await next_of(target, "warning", timeout=1.0))
        assert [w["banned_until"] for w in warnings] == [None, None, until]


# -- operators -------------------------------------------------------------------------


async def _run(redis: aioredis.Redis, prefix: str, recipes: dict[str, list[str]],
               starts: str) -> list[Any]:  # fmt: skip
    (lines,) = [lines for what, lines in recipes.items() if what.startswith(starts)]
    out = []
    for line in lines:
        args = re.sub(r"\bredchat:", f"{prefix}:", line).split()
        out.append(await redis.execute_command(*args))  # type: ignore[no-untyped-call]
    return out


async def test_the_documented_redis_cli_lines_do_what_the_doc_says(
    chat_redis: AnyRedis, tmp_path: Path, redis: aioredis.Redis
) -> None:
    recipes = doc_recipes("## Moderation with redis-cli")
    dep = _moderation(chat_redis, tmp_path, limit=2, window=600, threshold=2, gateways=1)
    async with running(dep):
        p = dep.prefix
        bob = await dep.login("bob")
        r1, r2 = await dep.login("ann"), await dep.login("cat")
        await bob.send("#general", "one")
        await bob.send("#general", "two")
        assert await _run(redis, p, recipes, "how many public messages") == ["2", pytest.approx(
            600_000, abs=5000)]  # fmt: skip
        assert (await chat_error(bob.send("#general", "three"))).code == "rate_limited"
        await _run(redis, p, recipes, "reset bob's quota")
        await bob.send("#general", "three")  # at once

        await r1.request("report", user="bob", reason="rude words")
        (who,) = await _run(redis, p, recipes, "who reported bob")
        assert list(who) == ["ann"] and who["ann"].endswith(" rude words")
        await _run(redis, p, recipes, "forget the reports")
        again = await r1.request("report", user="bob")
        assert again["counted"] and again["reports"] == 1

        banning = await r2.request("report", user="bob")
        until = banning["banned_until"]
        (banned,) = await _run(redis, p, recipes, "banned users")
        assert [(name, int(score)) for name, score in banned] == [("bob", until)]
        ban, left = await _run(redis, p, recipes, "is bob banned")
        assert int(ban) == until and 0 < left <= 14_400_000
        assert (await chat_error(bob.send("ann", "hi"))).code == "banned"

        await _run(redis, p, recipes, "lift bob's ban")
        await bob.send("ann", "free again")  # at once
        assert await _run(redis, p, recipes, "banned users") == [[]]

        await _run(redis, p, recipes, "ban bob by hand")
        # Held within a second everywhere (a gateway trusts "not banned" for half of one).
        loop = asyncio.get_running_loop()
        start = loop.time()
        while True:
            try:
                await bob.send("ann", "and now?")
            except ChatError as exc:
                err = exc
                break
            assert loop.time() - start < 1.0, "the ban did not hold within a second"
            await asyncio.sleep(0.05)
        assert err.code == "banned" and err.event["until"] is None
        assert "until an operator lifts the ban" in err.event["message"]
        assert (await bob.status())["banned_until"] == 0

"""Moderation in the store (on fakeredis and a real redis-server), and its words."""

from __future__ import annotations

import asyncio
import json

import fakeredis
import pytest

from gateway.errors import ClientError
from gateway.protocol import Quota, Reported, ReportWarning, StatusResult, TextCodec
from gateway.protocol.values import say_duration
from gateway.store import GENERAL, Keys, ModerationLimits, Store, now_ms
from tests.channels import listener

Redis = fakeredis.FakeAsyncRedis


def _store(r: Redis, **limits: int) -> Store:
    return Store(r, Keys("t"), moderation=ModerationLimits(**limits))


async def _code(coro: object) -> ClientError:
    with pytest.raises(ClientError) as err:
        await coro  # type: ignore[misc]
    return err.value


async def test_the_limit_counts_public_sends_once_each(redis: Redis) -> None:
    store = _store(redis, rate_limit=3, rate_window_s=60)
    first = await store.send("amy", GENERAL, GENERAL, "1", cid="a")
    assert (await store.send("amy", GENERAL, GENERAL, "1", cid="a")).id == first.id  # a retry
    await store.send("amy", GENERAL, GENERAL, "2")
    await store.send("amy", "dm:amy:bob", "bob", "private words do not count")
    await store.send("amy", GENERAL, GENERAL, "3")
    err = await _code(store.send("amy", GENERAL, GENERAL, "4"))
    assert err.code == "rate_limited" and 1 <= err.extra["retry_after"] <= 60
    assert "you can send again in 1 min" in err.message
    assert await redis.xlen("t:{c:#general}:stream") == 3
    state = await store.moderation.state("AMY")
    assert state.quota_used == 3 and state.quota_resets_at is not None
    await store.send("bob", GENERAL, GENERAL, "another user has a window of their own")


async def test_a_refused_send_gives_its_quota_back(redis: Redis) -> None:
    store = _store(redis, rate_limit=1, rate_window_s=60)
    for _ in range(3):
        assert (await _code(store.send("amy", GENERAL, GENERAL, "x", reply_to="1-0"))).code == (
            "not_found"
        )
    await store.send("amy", GENERAL, GENERAL, "the one")
    assert (await _code(store.send("amy", GENERAL, GENERAL, "over"))).code == "rate_limited"


async def test_the_window_ends_and_the_count_starts_again(redis: Redis) -> None:
    store = _store(redis, rate_limit=1, rate_window_s=1)
    await store.send("amy", GENERAL, GENERAL, "1")
    err = await _code(store.send("amy", GENERAL, GENERAL, "2"))
    await asyncio.sleep(err.extra["retry_after"] + 0.1)
    await store.send("amy", GENERAL, GENERAL, "2")


async def test_a_quota_set_by_hand_without_expiry_gets_one(redis: Redis) -> None:
    store = _store(redis, rate_limit=2, rate_window_s=60)
    await redis.set("t:{u:amy}:quota", "5")
    assert (await _code(store.send("amy", GENERAL, GENERAL, "x"))).code == "rate_limited"
    assert 0 < await redis.pttl("t:{u:amy}:quota") <= 60_000


async def test_reports_ban_at_the_threshold_and_start_again(redis: Redis) -> None:
    store = _store(redis, report_threshold=2, ban_s=60)
    m = store.moderation
    pubsub = listener(redis)
    await pubsub.subscribe("t:{u:tom}:events")
    one = await m.report("ann", "Tom", "spam")
    assert (one.counted, one.reports, one.banned_until) == (True, 1, None)
    repeat = await m.report("ANN", "Tom", "again")
    assert (repeat.counted, repeat.reports) == (False, 1)
    assert (await redis.hget("t:{u:tom}:reports", "ann") or "").endswith(" spam")
    two = await m.report("bob", "Tom", "")
    assert two.counted and two.reports == 2 and two.banned_until is not None
    assert 59_000 < two.banned_until - now_ms() <= 60_000
    assert await redis.exists("t:{u:tom}:reports") == 0  # a ban starts again from zero
    assert await redis.zscore("t:bans", "tom") == two.banned_until
    late = await m.report("cat", "Tom", "")
    assert not late.counted and late.banned_until == two.banned_until
    err = await _code(store.send("tom", "dm:ann:tom", "ann", "hi"))
    assert err.code == "banned" and err.extra["until"] == two.banned_until
    warnings = []
    for _ in range(20):
        msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.1)
        if msg is not None:
            warnings.append(json.loads(msg["data"]))
        if len(warnings) == 2:
            break
    assert warnings == [
        {"type": "warning", "reports": 1, "threshold": 2, "banned_until": None},
        {"type": "warning", "reports": 2, "threshold": 2, "banned_until": two.banned_until},
    ]
    await pubsub.aclose()


async def test_an_ended_ban_is_reported_once(redis: Redis) -> None:
    store = _store(redis, report_threshold=1, ban_s=1)
    await store.moderation.report("ann", "tom", "")
    assert await store.moderation.ended_bans() == []
    await asyncio.sleep(1.1)
    await store.send("tom", GENERAL, GENERAL, "free")
    assert await store.moderation.ended_bans() == ["tom"]
    assert await store.moderation.ended_bans() == []


def test_durations_read_as_people_say_them() -> None:
    assert [say_duration(s) for s in (0, 0.2, 45, 60, 61, 719, 3600, 11_520, 86_400, 97_200)] == [
        "0 s", "1 s", "45 s", "1 min", "2 min", "12 min", "1 h", "3 h 12 min", "1 day",
        "1 day 3 h",
    ]  # fmt: skip


def test_the_text_framing_says_what_moderation_means() -> None:
    codec = TextCodec()
    now = now_ms()

    def text(ev: object) -> str:
        return codec.encode(ev).decode()  # type: ignore[arg-type]

    assert "!! warning: you were reported (1 of 3)" in text(ReportWarning(1, 3, None))
    banned = text(ReportWarning(3, 3, now + 4 * 3600_000))
    assert "!! you were reported by 3 users: you cannot send until" in banned
    assert "(in 4 h)" in banned
    assert "now banned" in text(Reported("tom", True, 3, 3, now + 1000))
    assert "already reported tom" in text(Reported("tom", False, 1, 3, None))
    status = text(
        StatusResult("amy", "gw", (), {}, banned_until=now + 600_000,
                     quota=Quota(20, 4, now + 90_000))
    )  # fmt: skip
    assert "!! you are banned from sending until" in status and "(in 10 min)" in status
    assert "public messages left: 4 of 20; the count starts again in 2 min" in status

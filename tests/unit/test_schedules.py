"""Scheduled messages without processes: the "when" words, the wire shapes, the text
lines, and the store's scripts and the scheduler's pass on fakeredis and on a real
redis-server (the ``redis`` fixture of tests/unit/conftest.py runs each test on both)."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import datetime
from typing import Any

import fakeredis
import pytest

from client.commands import parse as console_parse
from client.console import render_event
from client.render import ShortIds, plain
from gateway.errors import ClientError
from gateway.protocol import TextCodec, event_to_dict, pushed_from_dict
from gateway.protocol.events import Cancelled, Scheduled, ScheduleList, ScheduleOutcome
from gateway.protocol.jsonlines import JsonCodec
from gateway.protocol.ops import (
    Cancel,
    Reject,
    Schedule,
    TextContext,
    parse_text_line,
    request_of,
)
from gateway.protocol.when import parse_when
from gateway.store import GENERAL, Keys, LoginLimits, Store, now_ms
from gateway.store.moderation import ModerationLimits
from gateway.store.schedules import GONE_GRACE_MS, CancelResult, ClaimStatus, Due
from tests.channels import listener
from worker.scheduler import Scheduler

Redis = fakeredis.FakeAsyncRedis
DUE = "t:sched:due"
NOW_S = datetime(2025, 11, 21, 12, 0, 0).timestamp()  # local time, as the parser reads it


def _store(r: Redis, **limits: int) -> Store:
    return Store(
        r, Keys("t"), login=LoginLimits(scrypt_n=1024),
        moderation=ModerationLimits(**{"rate_limit": 0, **limits}),
    )  # fmt: skip


async def _code(coro: Any) -> str:
    with pytest.raises(ClientError) as err:
        await coro
    return err.value.code


# -- the words ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("word", "expected"),
    [
        ("90s", (None, 90)),
        ("10m", (None, 600)),
        ("2h", (None, 7200)),
        ("1h30m", (None, 5400)),
        ("1D", (None, 86_400)),
        ("14:30", (round(datetime(2025, 11, 21, 14, 30).timestamp() * 1000), None)),
        ("9:05:30", (round(datetime(2025, 11, 22, 9, 5, 30).timestamp() * 1000), None)),
        ("12:00", (round(datetime(2025, 11, 22, 12, 0).timestamp() * 1000), None)),  # now: tomorrow
        ("2025-11-21T18:00", (round(datetime(2025, 11, 21, 18, 0).timestamp() * 1000), None)),
        ("2025-11-21t18:00z", (1763748000000, None)),
        ("2025-11-21T19:00+01:00", (1763748000000, None)),
    ],
)
def test_when_words(word: str, expected: tuple[int | None, int | None]) -> None:
    assert parse_when(word, NOW_S) == expected


@pytest.mark.parametrize("word", ["90", "0s", "10x", "25:00", "14:60", "2025-13-01T10:00", "soon"])
def test_when_words_that_are_not(word: str) -> None:
    with pytest.raises(ValueError):
        parse_when(word, NOW_S)


def test_schedule_text_lines_parse_with_the_clock_given() -> None:
    ctx = TextContext(now=lambda: NOW_S)
    assert parse_text_line("/schedule 10m bob see you", ctx) == Schedule("bob", "see you", in_=600)
    at = round(datetime(2025, 11, 21, 14, 30).timestamp() * 1000)
    assert parse_text_line("/schedule 14:30 #General lunch!", ctx) == Schedule(
        "#general", "lunch!", at=at
    )
    assert parse_text_line("/cancel 3F9A2C1B", ctx) == Cancel("3f9a2c1b")
    for bad in ("/schedule 10m bob", "/schedule bob hi", "/schedule soon bob hi", "/cancel a-b"):
        with pytest.raises(Reject) as err:
            parse_text_line(bad, ctx)
        assert err.value.code == "bad_request", bad


@pytest.mark.parametrize(
    ("fields", "code"),
    [
        ({"to": "bob", "text": "x"}, "bad_request"),  # neither at nor in
        ({"to": "bob", "text": "x", "at": 1, "in": 1}, "bad_request"),  # both
        ({"to": "bob", "text": "x", "in": 0}, "bad_request"),
        ({"to": "bob", "text": "x", "in": "5"}, "bad_request"),
        ({"to": "bob", "text": "x", "in": True}, "bad_request"),
        ({"to": "bob", "text": "x", "at": 1.5}, "bad_request"),
        ({"to": "bob", "text": "", "in": 5}, "bad_request"),
        ({"to": "bob", "text": "x" * 4001, "in": 5}, "too_long"),
        ({"to": "b b", "text": "x", "in": 5}, "bad_name"),
        ({"to": "bob", "text": "x", "in": 5, "reply_to": "nope"}, "bad_request"),
    ],
)
def test_bad_schedule_requests(fields: dict[str, Any], code: str) -> None:
    codec = JsonCodec()
    (ev,) = codec.feed(json.dumps({"op": "schedule", "rid": 1, **fields}).encode() + b"\n")
    assert not isinstance(ev, Schedule)
    assert (ev.code, ev.rid) == (code, 1)  # type: ignore[union-attr]


def test_schedule_events_on_the_wire_and_back() -> None:
    s = Scheduled("ab12cd34", "bob", 1763748000000, "hi", rid=7)
    assert event_to_dict(s) == {"type": "scheduled", "sid": "ab12cd34", "to": "bob",
                                "at": 1763748000000, "text": "hi", "rid": 7}  # fmt: skip
    assert event_to_dict(ScheduleList((s,), rid=8))["items"] == [
        {"sid": "ab12cd34", "to": "bob", "at": 1763748000000, "text": "hi"}
    ]
    assert event_to_dict(Cancelled("ab12cd34", rid=9)) == {
        "type": "cancelled", "sid": "ab12cd34", "rid": 9,
    }  # fmt: skip
    sent = ScheduleOutcome("ab12cd34", "bob", 1763748000000, True, id="1-0")
    refused = ScheduleOutcome("ab12cd34", "#general", 1, False, code="banned", reason="banned!")
    assert event_to_dict(sent) == {
        "type": "notice", "text": "your scheduled message ab12cd34 to bob was sent",
        "sid": "ab12cd34", "to": "bob", "at": 1763748000000, "sent": True, "id": "1-0",
    }  # fmt: skip
    assert event_to_dict(refused)["text"].endswith("to #general was not sent: banned!")
    # What the store publishes on a user's channel comes back as the same event.
    for ev in (Scheduled("ab12cd34", "bob", 5, "hi", "1-0"), Cancelled("x1"), sent, refused):
        assert pushed_from_dict(event_to_dict(ev)) == ev
    assert pushed_from_dict({"type": "notice", "text": "plain"}) is not None


def test_text_lines_show_a_schedule_once_whether_reply_or_push_comes_first() -> None:
    codec = TextCodec()
    at = round(time.time() * 1000) + 599_000
    push = Scheduled("ab12cd34", "bob", at, "see you")
    reply = Scheduled("ab12cd34", "bob", at, "see you", rid=3)
    first = codec.encode(push).decode()
    assert first.startswith("** scheduled ab12cd34 ") and "(in 10 min) to bob: see you" in first
    assert codec.encode(reply) == b""
    cancelled = b"** cancelled scheduled message ab12cd34\r\n"
    assert codec.encode(Cancelled("ab12cd34", rid=4)) == cancelled
    assert codec.encode(Cancelled("ab12cd34")) == b""
    listing = codec.encode(ScheduleList((push, push))).decode().splitlines()
    assert listing[0] == "** 2 scheduled message(s):" and listing[1].startswith("**   ab12cd34 ")
    assert codec.encode(ScheduleList(())) == b"** no scheduled messages\r\n"
    refused = ScheduleOutcome("ab12cd34", "bob", at, False, code="banned", reason="no\x1b[31m")
    assert codec.encode(refused).decode().startswith("!! your scheduled message ab12cd34")
    assert b"\x1b" not in codec.encode(refused)


# -- the store ---------------------------------------------------------------------


async def test_add_list_cancel_and_the_index(redis: Redis) -> None:
    store = _store(redis)
    s = store.schedules
    later = now_ms() + 60_000
    a = await s.add("Amy", "bob", "first", later + 1000, None, max_pending=2)
    b = await s.add("Amy", "#general", "second", later, "1-0", max_pending=2)
    assert [j.sid for j in await s.pending("amy")] == [b.sid, a.sid]  # soonest first
    assert await _code(s.add("amy", "bob", "third", later, None, max_pending=2)) == "bad_request"
    assert await redis.zcard(DUE) == 2  # the refused one left no index entry
    stored = json.loads(await redis.hget("t:{u:amy}:sched", a.sid) or "")
    assert stored == {"sid": a.sid, "from": "Amy", "to": "bob", "text": "first",
                      "at": later + 1000, "created": a.created}  # fmt: skip
    assert await redis.zscore(DUE, f"amy:{a.sid}") == later + 1000

    assert await s.cancel("bob", a.sid) is CancelResult.UNKNOWN  # someone else's
    assert await s.cancel("amy", "00000000") is CancelResult.UNKNOWN
    assert await s.cancel("AMY", a.sid) is CancelResult.CANCELLED
    assert await s.cancel("amy", a.sid) is CancelResult.UNKNOWN
    assert [j.sid for j in await s.pending("amy")] == [b.sid]
    assert await redis.zrange(DUE, 0, -1) == [f"amy:{b.sid}"]


async def test_adding_and_cancelling_are_pushed_to_the_authors_clients(redis: Redis) -> None:
    store = _store(redis)
    pubsub = listener(redis)
    await pubsub.subscribe("t:{u:amy}:events")
    job = await store.schedules.add("amy", "bob", "hi", now_ms() + 60_000, None, 5)
    await store.schedules.cancel("amy", job.sid)
    got = []
    for _ in range(50):
        msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.1)
        if msg is not None:
            got.append(pushed_from_dict(json.loads(msg["data"])))
        if len(got) == 2:
            break
    await pubsub.aclose()
    assert got == [job.event(), Cancelled(job.sid)]


async def test_claims_race_lease_and_takeover(redis: Redis) -> None:
    store = _store(redis)
    s = store.schedules
    now = now_ms()
    jobs = [await s.add("amy", "bob", f"m{i}", now + 10 + i, None, 100) for i in range(20)]
    later = now + 1000
    due = await s.due(later, 100)
    assert [d.sid for d in due] == [j.sid for j in jobs]
    # Two workers claim the same entries at once: each message goes to exactly one.
    one, two = await asyncio.gather(
        s.claim(due, "w1", later, 5000), s.claim(list(reversed(due)), "w2", later, 5000)
    )
    claimed = [c for c in one + two if c.status is ClaimStatus.CLAIMED]
    assert sorted(c.due.sid for c in claimed) == sorted(j.sid for j in jobs)
    assert {c.status for c in one + two} == {ClaimStatus.CLAIMED, ClaimStatus.HELD}
    # Claimed entries are out of sight until their lease ends...
    assert await s.due(later, 100) == []
    assert await s.next_due() == later + 5000
    # ... and cannot be cancelled any more: the claim committed them.
    assert await s.cancel("amy", jobs[0].sid) is CancelResult.CLAIMED
    # After the lease, another worker takes over (its second claim).
    after = later + 5001
    again = await s.claim(await s.due(after, 100), "w3", after, 5000)
    assert len(again) == 20 and all(c.status is ClaimStatus.CLAIMED for c in again)
    assert {c.tries for c in again} == {2}
    lease = await redis.hget("t:{u:amy}:sched:lease", jobs[0].sid)
    assert lease == f"{after + 5000} 2 w3"


async def test_finish_tells_once_and_forgets(redis: Redis) -> None:
    store = _store(redis)
    s = store.schedules
    job = await s.add("amy", "bob", "hi", now_ms() + 10, None, 5)
    later = now_ms() + 1000
    [claim] = await s.claim(await s.due(later, 10), "w1", later, 5000)
    pubsub = listener(redis)
    await pubsub.subscribe("t:{u:amy}:events")
    outcome = ScheduleOutcome(job.sid, "bob", job.at, True, id="1-0")
    assert await s.finish([(claim, outcome)]) == [True]
    assert await s.finish([(claim, outcome)]) == [False]  # a second worker, late: no notice
    pushed = []
    for _ in range(10):
        msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.1)
        if msg is not None:
            pushed.append(json.loads(msg["data"]))
    await pubsub.aclose()
    assert [p["sid"] for p in pushed] == [job.sid]
    assert await s.pending("amy") == []
    assert await redis.exists("t:{u:amy}:sched:lease", DUE) == 0
    assert await s.cancel("amy", job.sid) is CancelResult.UNKNOWN  # sent: not found


async def test_an_index_entry_without_a_message_is_dropped_after_a_grace(redis: Redis) -> None:
    store = _store(redis)
    now = now_ms()
    await redis.zadd(DUE, {"amy:aaaa": now - GONE_GRACE_MS - 1, "amy:bbbb": now - 1})
    claims = await store.schedules.claim(await store.schedules.due(now, 10), "w1", now, 5000)
    assert [c.status for c in claims] == [ClaimStatus.GONE, ClaimStatus.GONE]
    # The old one is dropped; the young one may be a message being added: looked at later.
    assert await redis.zrange(DUE, 0, -1, withscores=True) == [
        ("amy:bbbb", float(now + GONE_GRACE_MS))
    ]


# -- the scheduler's pass ---------------------------------------------------------


async def _users(store: Store, *names: str) -> None:
    for name in names:
        await store.accounts.login(name, "pw")


async def test_a_pass_sends_through_the_send_path_once(redis: Redis) -> None:
    store = _store(redis)
    await _users(store, "amy", "bob")
    s = store.schedules
    direct = await s.add("amy", "bob", "to bob", now_ms() + 30, None, 10)
    public = await s.add("amy", GENERAL, "to all", now_ms() + 30, None, 10)
    await asyncio.sleep(0.05)
    scheduler = Scheduler(store, "w1", lease_s=1)
    assert await scheduler.run_once() == 2
    texts = [m.text for m in await store.messages.read_after(GENERAL, None, 10)]
    assert texts == ["to all"]
    assert [m.text for m in await store.messages.read_after("dm:amy:bob", None, 10)] == ["to bob"]
    assert sorted(m.text for m in await store.messages.log("amy", 10)) == ["to all", "to bob"]
    assert await s.pending("amy") == [] and await redis.zcard(DUE) == 0
    # The client id is the sid: a second send of the same message is the same message.
    again = await store.send("amy", GENERAL, GENERAL, "to all", cid=f"s:{public.sid}")
    assert again.duplicate
    assert direct.sid != public.sid


async def test_a_takeover_after_a_crash_stores_the_message_once(redis: Redis) -> None:
    store = _store(redis)
    await _users(store, "amy")
    job = await store.schedules.add("amy", GENERAL, "once", now_ms() + 20, None, 10)
    await asyncio.sleep(0.05)
    # A worker claims and sends, then dies before finishing.
    crashed = Scheduler(store, "w1", lease_s=1)
    now = now_ms()
    [claim] = await store.schedules.claim(await store.schedules.due(now, 10), "w1", now, 1000)
    assert (await crashed._send(claim)) is not None
    await asyncio.sleep(1.05)
    taker = Scheduler(store, "w2", lease_s=1)
    assert await taker.run_once() == 1
    assert [m.text for m in await store.messages.read_after(GENERAL, None, 10)] == ["once"]
    assert await store.schedules.pending("amy") == []
    assert job.sid


async def test_refusals_at_the_time_drop_the_message_and_tell_the_author(redis: Redis) -> None:
    store = _store(redis)
    await _users(store, "amy")
    s = store.schedules
    await s.add("amy", GENERAL, "banned by then", now_ms() + 20, None, 10)
    await s.add("amy", "#nowhere", "no such room", now_ms() + 20, None, 10)
    late = await s.add("amy", GENERAL, "too late", now_ms() + 20, None, 10)
    await redis.set("t:{u:amy}:ban", str(now_ms() + 60_000))
    await redis.zadd(DUE, {f"amy:{late.sid}": now_ms() - 1})
    pubsub = listener(redis)
    await pubsub.subscribe("t:{u:amy}:events")
    await asyncio.sleep(0.05)
    scheduler = Scheduler(store, "w1", max_late_s=0)
    assert await scheduler.run_once() == 3
    codes = []
    for _ in range(30):
        msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.1)
        if msg is not None:
            codes.append(json.loads(msg["data"])["code"])
        if len(codes) == 3:
            break
    await pubsub.aclose()
    assert sorted(codes) == ["banned", "banned", "not_found"]
    assert await s.pending("amy") == []
    assert await store.messages.read_after(GENERAL, None, 10) == []


async def test_a_message_claimed_too_late_is_not_sent(redis: Redis) -> None:
    store = _store(redis)
    await _users(store, "amy")
    job = await store.schedules.add("amy", GENERAL, "stale", now_ms() + 20, None, 10)
    await asyncio.sleep(1.1)
    scheduler = Scheduler(store, "w1", max_late_s=1)
    now = now_ms()
    [claim] = await store.schedules.claim(await store.schedules.due(now, 10), "w1", now, 1000)
    outcome = await scheduler._send(claim)
    assert outcome is not None and (outcome.sent, outcome.code) == (False, "too_late")
    assert job.sid == outcome.sid
    assert await store.messages.read_after(GENERAL, None, 10) == []


async def test_stop_finishes_the_pass_and_returns(redis: Redis) -> None:
    store = _store(redis)
    scheduler = Scheduler(store, "w1", poll_s=5)
    task = asyncio.create_task(scheduler.run())
    await asyncio.sleep(0.05)
    started = time.monotonic()
    scheduler.stop()
    await asyncio.wait_for(task, 2)
    assert time.monotonic() - started < 1


def test_due_members_split_on_the_first_colon() -> None:
    assert Due("amy", "ab12", 5).member == "amy:ab12"


async def test_a_stop_during_a_pass_lets_its_sends_finish(redis: Redis) -> None:
    store = _store(redis)
    await _users(store, "amy")
    await store.schedules.add("amy", GENERAL, "in flight", now_ms() + 20, None, 10)
    await asyncio.sleep(0.05)
    sending, release = asyncio.Event(), asyncio.Event()

    class Slow(Scheduler):
        async def _send(self, claim: Any) -> Any:
            sending.set()
            await release.wait()
            return await super()._send(claim)

    scheduler = Slow(store, "w1", poll_s=0.05)
    task = asyncio.create_task(scheduler.run())
    await asyncio.wait_for(sending.wait(), 2)
    scheduler.stop()  # as SIGTERM does: no cancel
    await asyncio.sleep(0.1)
    assert not task.done()
    release.set()
    await asyncio.wait_for(task, 2)
    assert [m.text for m in await store.messages.read_after(GENERAL, None, 10)] == ["in flight"]
    assert await store.schedules.pending("amy") == []


# -- the console client ------------------------------------------------------------


def test_the_console_sends_a_time_of_day_as_at_and_shows_schedules_in_server_words() -> None:
    cmd = console_parse("/schedule 23:59:59 bob good night")
    assert isinstance(cmd, Schedule) and cmd.in_ is None and cmd.at is not None
    assert 0 < cmd.at - time.time() * 1000 <= 86_400_000  # local time, the next one
    assert request_of(cmd) == ("schedule", {"to": "bob", "text": "good night", "at": cmd.at})
    assert request_of(console_parse("/schedule 90s #general hi")) == (  # type: ignore[arg-type]
        "schedule", {"to": "#general", "text": "hi", "in": 90},
    )  # fmt: skip
    at = round(time.time() * 1000) + 599_000
    ids = ShortIds()
    refused = {"type": "notice", "text": "…", "sid": "ab12cd34", "to": "bob", "at": at,
               "sent": False, "code": "banned", "reason": "you are banned"}  # fmt: skip
    events = (
        {"type": "scheduled", "sid": "ab12cd34", "to": "bob", "at": at, "text": "x", "rid": 1},
        {"type": "schedules", "items": [], "rid": 2},
        {"type": "cancelled", "sid": "ab12cd34"},
        refused,
    )
    shown = [plain(line) for ev in events for line in render_event(ev, "amy", ids)]
    assert shown[0].startswith("** scheduled ab12cd34 ") and "(in 10 min) to bob: x" in shown[0]
    assert shown[1:] == [
        "** no scheduled messages",
        "** cancelled scheduled message ab12cd34",
        "!! your scheduled message ab12cd34 to bob was not sent: you are banned",
    ]

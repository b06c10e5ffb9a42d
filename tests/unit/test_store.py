"""The store against fakeredis: accounts, atomic sends, lifetime, cursors, presence."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import fakeredis
import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from gateway.errors import ClientError, Unavailable
from gateway.store import LoginLimits, Store, hash_password, now_ms, verify_password
from gateway.store.keys import Keys, dm_conversation
from gateway.store.redis import is_cluster, load_lua
from tests.channels import listener
from tests.support import Outcomes


@pytest.fixture
def store(redis: fakeredis.FakeAsyncRedis) -> Store:
    return Store(redis, Keys("t"), login=LoginLimits(scrypt_n=1024, fail_limit=3))


def test_password_hash_is_salted_and_verifies() -> None:
    a, b = hash_password("secret", 1024), hash_password("secret", 1024)
    assert a != b and a.startswith("scrypt$1024$")
    assert verify_password("secret", a) and not verify_password("Secret", a)
    assert not verify_password("secret", "garbage")


async def test_first_login_claims_and_later_logins_must_match(
    store: Store, redis: fakeredis.FakeAsyncRedis
) -> None:
    first = await store.accounts.login("Alice", "pw")
    assert first.new and first.name == "Alice"
    again = await store.accounts.login("ALICE", "pw")
    assert not again.new and again.name == "Alice"  # unique ignoring case, display case kept
    with pytest.raises(ClientError) as err:
        await store.accounts.login("alice", "wrong")
    assert err.value.code == "bad_password"
    stored = await redis.hgetall("t:{u:alice}:account")
    assert stored["name"] == "Alice" and stored["pw"].startswith("scrypt$")
    assert "pw" not in stored["pw"].split("$")


async def test_failed_logins_are_throttled(store: Store) -> None:
    await store.accounts.login("bob", "right")
    for _ in range(3):
        with pytest.raises(ClientError):
            await store.accounts.login("bob", "wrong")
    with pytest.raises(ClientError) as err:
        await store.accounts.login("bob", "right")  # even the right password waits now
    assert err.value.code == "rate_limited"
    assert 0 < err.value.extra["retry_after"] <= 300


class RoundTrips:
    """Counts what a client sends to Redis: each command alone, each pipeline once."""

    def __init__(self, redis: fakeredis.FakeAsyncRedis, monkeypatch: pytest.MonkeyPatch) -> None:
        self.count = 0
        send, open_pipeline = redis.execute_command, redis.pipeline

        async def execute_command(*args: Any, **kwargs: Any) -> Any:
            self.count += 1
            return await send(*args, **kwargs)

        def pipeline(*args: Any, **kwargs: Any) -> Any:
            pipe = open_pipeline(*args, **kwargs)
            run = pipe.execute

            async def execute(*a: Any, **kw: Any) -> Any:
                self.count += 1
                return await run(*a, **kw)

            pipe.execute = execute  # type: ignore[method-assign]
            return pipe

        monkeypatch.setattr(redis, "execute_command", execute_command)
        monkeypatch.setattr(redis, "pipeline", pipeline)

    def take(self) -> int:
        count, self.count = self.count, 0
        return count


async def test_a_login_from_a_known_address_is_two_round_trips(
    store: Store, redis: fakeredis.FakeAsyncRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    await store.accounts.login("Erin", "pw", "10.0.0.1")  # claims; loads the scripts
    trips = RoundTrips(redis, monkeypatch)
    pair = store.keys.login_failures("erin", "10.0.0.2")
    account = await store.accounts.login("erin", "pw", "10.0.0.2")
    # Unknown: the address's own counter is one more.
    assert (account.name, account.new, trips.take()) == ("Erin", False, 3)
    assert await redis.get(pair) is None
    before = await redis.zscore(store.keys.known_addresses("erin"), "10.0.0.2")
    await asyncio.sleep(0.002)
    trips.take()  # not the test's own reads
    account = await store.accounts.login("erin", "pw", "10.0.0.2")
    assert (account.name, account.new, trips.take()) == ("Erin", False, 2)
    assert await redis.get(pair) is None
    after = await redis.zscore(store.keys.known_addresses("erin"), "10.0.0.2")
    assert before is not None and after is not None and after > before


async def test_a_login_keeps_the_last_known_addresses(
    store: Store, redis: fakeredis.FakeAsyncRedis
) -> None:
    for i in range(22):
        await store.accounts.login("fay", "pw", f"10.0.1.{i}")
        await asyncio.sleep(0.002)  # scored by the ms: no ties
    await store.accounts.login("fay", "pw")  # no address: nothing to remember
    known = await redis.zrange(store.keys.known_addresses("fay"), 0, -1)
    assert known == [f"10.0.1.{i}" for i in range(2, 22)]


async def test_a_known_address_is_exempt_from_the_per_name_limit(
    redis: fakeredis.FakeAsyncRedis,
) -> None:
    limits = LoginLimits(scrypt_n=1024, fail_limit=3, per_name=2, per_address=1000)
    store = Store(redis, Keys("t"), login=limits)
    await store.accounts.login("gus", "right", "10.0.0.1")
    for address in ("10.0.0.2", "10.0.0.3"):
        with pytest.raises(ClientError) as err:
            await store.accounts.login("gus", "wrong", address)
        assert err.value.code == "bad_password"
    with pytest.raises(ClientError) as err:
        await store.accounts.login("gus", "right", "10.0.0.4")
    assert err.value.code == "rate_limited" and "for gus" in err.value.message
    assert await redis.get(store.keys.login_failures("gus", "10.0.0.4")) is None
    owner = await store.accounts.login("gus", "right", "10.0.0.1")
    assert owner.name == "gus" and not owner.new


async def test_an_address_past_its_limit_is_refused_and_the_pair_given_back(
    redis: fakeredis.FakeAsyncRedis,
) -> None:
    limits = LoginLimits(scrypt_n=1024, fail_limit=3, per_name=100, per_address=2)
    store = Store(redis, Keys("t"), login=limits)
    for user in ("hal", "ivy"):
        await store.accounts.login(user, "pw", "10.0.0.1")
    for _ in range(2):
        with pytest.raises(ClientError) as err:
            await store.accounts.login("hal", "wrong", "10.0.0.5")
        assert err.value.code == "bad_password"
    hal_pair = store.keys.login_failures("hal", "10.0.0.5")
    assert await redis.get(hal_pair) == "2"
    for user in ("hal", "ivy"):
        with pytest.raises(ClientError) as err:
            await store.accounts.login(user, "pw", "10.0.0.5")
        assert err.value.code == "rate_limited" and "from your address" in err.value.message
        assert 0 < err.value.extra["retry_after"] <= 300
    assert await redis.get(hal_pair) == "2"  # given back, not left at 3
    assert 0 < await redis.ttl(hal_pair) <= 300
    assert await redis.get(store.keys.login_failures("ivy", "10.0.0.5")) is None
    assert await redis.get(store.keys.login_failures("ivy")) is None
    owner = await store.accounts.login("ivy", "pw", "10.0.0.1")  # known: exempt
    assert owner.name == "ivy"


async def test_send_appends_publishes_and_logs(
    store: Store, redis: fakeredis.FakeAsyncRedis
) -> None:
    pubsub = listener(redis)
    await pubsub.subscribe("t:{c:#general}:events")
    await pubsub.get_message(timeout=1)  # the subscribe confirmation
    result = await store.send("alice", "#general", "#general", 'say "hi" ü')
    assert not result.duplicate
    published = await pubsub.get_message(timeout=1)
    assert published is not None
    event = json.loads(published["data"])
    assert event == {
        "type": "message",
        "id": result.id,
        "ts": int(result.id.split("-")[0]),
        "from": "alice",
        "to": "#general",
        "text": 'say "hi" ü',
    }
    [entry] = await redis.xrange("t:{c:#general}:stream")
    assert entry == (result.id, {"from": "alice", "to": "#general", "text": 'say "hi" ü', "n": "1"})
    [logged] = await store.messages.log("alice", 10)
    assert logged.id == result.id and logged.text == 'say "hi" ü'
    await pubsub.aclose()


async def test_retried_send_with_same_cid_is_stored_once(
    store: Store, redis: fakeredis.FakeAsyncRedis
) -> None:
    first = await store.send("alice", "#general", "#general", "once", cid="c-1")
    again = await store.send("alice", "#general", "#general", "once", cid="c-1")
    other = await store.send("alice", "#general", "#general", "once", cid="c-2")
    assert again.id == first.id and again.duplicate
    assert other.id != first.id
    assert await redis.xlen("t:{c:#general}:stream") == 2
    assert 0 < await redis.ttl("t:{c:#general}:cid:alice:c-1") <= 300
    assert len(await store.messages.log("alice", 10)) == 2


async def test_direct_messages_are_one_conversation_for_both(store: Store) -> None:
    conv = dm_conversation("Alice", "bob")
    assert conv == dm_conversation("BOB", "alice") == "dm:alice:bob"
    await store.send("Alice", conv, "bob", "hi bob")
    await store.send("bob", conv, "Alice", "hi alice")
    assert await store.cursors.conversations("alice") == ["#general", conv]
    assert await store.cursors.conversations("bob") == ["#general", conv]
    texts = [m.text for m in await store.messages.read_after(conv, None, 10)]
    assert texts == ["hi bob", "hi alice"]


async def test_reply_must_name_a_message_of_that_conversation(store: Store) -> None:
    first = await store.send("alice", "#general", "#general", "question")
    reply = await store.send("bob", "#general", "#general", "answer", reply_to=first.id)
    [_, msg] = await store.messages.read_after("#general", None, 10)
    assert msg.id == reply.id and msg.reply_to == first.id
    with pytest.raises(ClientError) as err:
        await store.send("bob", "dm:alice:bob", "alice", "x", reply_to=first.id)
    assert err.value.code == "not_found"


async def test_reads_page_after_an_id_and_before_an_id(store: Store) -> None:
    ids = [(await store.send("a", "#general", "#general", f"m{i}")).id for i in range(30)]
    page = await store.messages.read_after("#general", ids[9], 5)
    assert [m.id for m in page] == ids[10:15] and all(m.replay for m in page)
    last = await store.messages.read_last("#general", 20)
    assert [m.id for m in last] == ids[10:]
    before = await store.messages.read_last("#general", 3, before=ids[5])
    assert [m.id for m in before] == ids[2:5]
    assert (await store.messages.unread_counts([("#general", ids[19])], 100))[0] == 10
    assert (await store.messages.unread_counts([("#general", ids[19])], 4))[0] == 4
    assert (await store.messages.unread_counts([("#general", None)], 100))[0] == 30


async def test_expired_messages_are_gone_from_reads(
    store: Store, redis: fakeredis.FakeAsyncRedis
) -> None:
    old = f"{now_ms() - 2 * 3600 * 1000}-0"
    await redis.xadd(
        "t:{c:#general}:stream", {"from": "a", "to": "#general", "text": "old"}, id=old
    )
    await store.send("a", "#general", "#general", "new")
    assert [m.text for m in await store.messages.read_last("#general", 20)] == ["new"]
    assert [m.text for m in await store.messages.read_after("#general", None, 20)] == ["new"]
    assert [m.text for m in await store.messages.read_after("#general", "1-0", 20)] == ["new"]
    assert (await store.messages.unread_counts([("#general", None)], 20))[0] == 1


async def test_lifetime_zero_keeps_everything(redis: fakeredis.FakeAsyncRedis) -> None:
    store = Store(redis, Keys("t"), message_ttl_s=0)
    await redis.xadd(
        "t:{c:#general}:stream", {"from": "a", "to": "#general", "text": "x"}, id="5-0"
    )
    assert [m.text for m in await store.messages.read_last("#general", 20)] == ["x"]


async def test_cursors_only_move_forward(store: Store) -> None:
    await store.cursors.advance({"alice": {"#general": "100-5", "dm:alice:bob": "9-0"}})
    await store.cursors.advance({"alice": {"#general": "100-4", "dm:alice:bob": "10-0"}})
    await store.cursors.advance({"alice": {"#general": "99-9"}})
    assert await store.cursors.cursors("alice") == {"#general": "100-5", "dm:alice:bob": "10-0"}
    await store.cursors.advance({"alice": {"#general": "1000-0"}})  # longer number is later
    assert (await store.cursors.cursors("alice"))["#general"] == "1000-0"


async def test_presence_spans_gateways_and_ignores_dead_ones(
    store: Store, redis: fakeredis.FakeAsyncRedis
) -> None:
    await store.presence.heartbeat("gw1", {"alice": 1, "Bob": 2}, ttl_s=15)
    await store.presence.heartbeat("gw2", {"carol": 1}, ttl_s=15)
    assert await store.presence.online(stale_ms=15_000) == ["alice", "Bob", "carol"]
    await store.presence.update("gw1", {"Bob": 0, "dave": 1})
    assert await store.presence.online(stale_ms=15_000) == ["alice", "carol", "dave"]
    await redis.zadd("t:gateways", {"gw2": now_ms() - 60_000})  # gw2 stopped beating
    assert await store.presence.online(stale_ms=15_000) == ["alice", "dave"]
    await store.presence.gateway_gone("gw1")
    assert await store.presence.online(stale_ms=15_000) == []


async def test_a_direct_conversation_is_registered_before_its_first_message(
    store: Store,
) -> None:
    # The send step fails after registering (no such message to reply to; the store's
    # own earlier check is skipped here): registering comes first, so a recipient
    # logging in meanwhile cannot miss the message.
    k = store.keys
    outcomes = Outcomes()
    store.messages.queue(
        "yan", "dm:yan:zoe", "zoe", "hi", channels=[], on_done=outcomes, reply_to="1-0",
        lists=(k.conversations("yan"), k.conversations("zoe")),
    )  # fmt: skip
    (refused,) = await outcomes.wait(1)
    assert isinstance(refused, ClientError) and refused.code == "not_found"
    assert await store.cursors.conversations("zoe") == ["#general", "dm:yan:zoe"]


async def test_concurrent_sends_share_a_batch_and_fail_one_by_one(
    store: Store, redis: fakeredis.FakeAsyncRedis
) -> None:
    first = await store.send("a", "#general", "#general", "first")
    sends = [store.send("a", "#general", "#general", f"m{i}") for i in range(20)]
    sends.insert(7, store.send("b", "#general", "#general", "bad reply", reply_to="1-0"))
    sends.append(store.send("a", "#general", "#general", "good reply", reply_to=first.id))
    results = await asyncio.gather(*sends, return_exceptions=True)
    errors = [r for r in results if isinstance(r, Exception)]
    assert len(errors) == 1 and isinstance(errors[0], ClientError)
    assert errors[0].code == "not_found"
    ids = [r.id for r in results if not isinstance(r, BaseException)]
    assert len(set(ids)) == 21
    assert await redis.xlen("t:{c:#general}:stream") == 22
    logged = [m.text for m in await store.messages.log("a", 100)]
    # (a reply reads the message it answers first, so it may land in a later batch)
    assert len(logged) == 22 and "good reply" in logged


async def test_sends_and_cursors_survive_redis_forgetting_its_scripts(
    store: Store, redis: fakeredis.FakeAsyncRedis
) -> None:
    await store.send("a", "dm:a:b", "b", "before")
    await store.cursors.advance({"a": {"#general": "5-0"}})
    await redis.script_flush()  # as after a restart without persistence
    store.forget_cached()
    after = await store.send("a", "dm:a:b", "b", "after")
    await store.cursors.advance({"a": {"#general": "6-0"}})
    assert [m.id for m in await store.messages.read_after("dm:a:b", None, 10)][-1] == after.id
    assert await store.cursors.cursors("a") == {"#general": "6-0"}


async def test_a_retry_logs_a_stored_message_whose_log_write_was_lost(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a cluster the sender's log (another slot) is written after the step, and
    can be lost there; a single Redis writes it in the step, with the message."""
    first = await store.send("a", "#general", "#general", "keep me", cid="c9")
    again = await store.send("a", "#general", "#general", "keep me", cid="c9")
    assert again.duplicate
    assert [m.id for m in await store.messages.log("a", 10)] == [first.id]  # a plain retry: once

    write_logs = store.messages._after_step
    lost_once = False

    async def lose_the_first_log_write(batch: Any, results: Any) -> None:
        nonlocal lost_once
        if not lost_once:
            lost_once = True
            raise RedisConnectionError("link dropped after the message was stored")
        await write_logs(batch, results)

    monkeypatch.setattr(store.messages, "_after_step", lose_the_first_log_write)
    lost = await store.send("a", "#general", "#general", "log me", cid="c10")
    assert not lost.duplicate  # stored, so acked, though its log entry was lost
    if not is_cluster(store.redis):
        assert [m.id for m in await store.messages.log("a", 10)] == [first.id, lost.id]
        return
    assert [m.id for m in await store.messages.log("a", 10)] == [first.id]
    retry = await store.send("a", "#general", "#general", "log me", cid="c10")
    assert retry.id == lost.id and retry.duplicate
    assert [m.id for m in await store.messages.log("a", 10)] == [first.id, lost.id]


async def test_a_send_waits_for_its_replicas_and_fails_without_them(
    redis: fakeredis.FakeAsyncRedis,
) -> None:
    """--redis-wait-replicas: the ack waits for WAIT on the message's node. These
    Redis have no replica: the message is stored, but its sender is told to send it
    again (same cid, so once); with 0 nothing waits."""
    if isinstance(redis, fakeredis.FakeAsyncRedis):
        pytest.skip("fakeredis has no WAIT")
    waiting = Store(redis, Keys("t"), wait_replicas=1)
    waiting.messages.wait_replicas_ms = 100
    with pytest.raises(Unavailable, match="0 of 1 replicas"):
        await waiting.send("ann", "#general", "#general", "kept", cid="w1")
    with pytest.raises(Unavailable, match="0 of 1 replicas"):
        await waiting.send("ann", "dm:ann:bob", "bob", "kept too", cid="w2")
    plain = Store(redis, Keys("t"))
    again = await plain.send("ann", "#general", "#general", "kept", cid="w1")
    assert again.duplicate  # it was stored the first time
    assert [m.text for m in await plain.messages.read_last("#general", 5)] == ["kept"]


async def test_a_script_refused_in_a_pipeline_is_run_again_alone(
    store: Store, redis: fakeredis.FakeAsyncRedis
) -> None:
    """Redis had no scripts (it restarted), and another process loaded one while this
    pipeline ran: the calls before that were refused, the ones after it ran. Only the
    refused ones run again (running the whole pipeline again stored messages twice),
    and the other commands after them, so what they read is what the scripts did."""
    if is_cluster(redis):
        pytest.skip("SCRIPT LOAD inside a pipeline goes to one node of a cluster")
    scripts, key = store.scripts, "t:{x}:count"
    await redis.script_flush()

    def fill(pipe: Any) -> None:
        scripts.queue(pipe, "login_attempt", [key], [0, 300, "reserve"])  # refused
        pipe.execute_command("SCRIPT", "LOAD", load_lua("login_attempt"))  # someone else's
        scripts.queue(pipe, "login_attempt", [key], [0, 300, "reserve"])  # runs
        pipe.get(key)  # a read after the scripts sees what they all did

    results = await scripts.run_pipeline(fill, ("login_attempt",))
    assert await redis.get(key) == "2"  # once each (3 when the pipeline ran again)
    assert results[0] == [0, 0] and results[2] == [0, 0]
    assert results[3] == "2"

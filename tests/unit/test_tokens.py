"""HTTP tokens and signed file links in the store (fakeredis and a real redis-server)."""

from __future__ import annotations

import asyncio
import json
import time

import fakeredis
import pytest

from gateway.store.keys import Keys
from gateway.store.tokens import LINK_TTL_S, MAX_TOKENS_PER_USER, Tokens, digest_of
from tests.channels import listener

KEYS = Keys("t")


@pytest.fixture
def tokens(redis: fakeredis.FakeAsyncRedis) -> Tokens:
    return Tokens(redis, KEYS, ttl_s=600)


async def test_a_token_stands_for_its_user_and_only_its_digest_is_kept(
    tokens: Tokens, redis: fakeredis.FakeAsyncRedis
) -> None:
    token = await tokens.create("Alice")
    assert await tokens.user_of(token) == "Alice"
    assert await tokens.user_of(token + "x") is None
    assert await tokens.user_of("") is None
    assert await redis.get(KEYS.token(digest_of(token))) == "Alice"
    assert not [k async for k in redis.scan_iter(match=f"*{token}*")]  # never the token


async def test_each_use_extends_a_token(tokens: Tokens, redis: fakeredis.FakeAsyncRedis) -> None:
    token = await tokens.create("alice")
    key = KEYS.token(digest_of(token))
    await redis.expire(key, 5)
    assert await tokens.user_of(token) == "alice"
    assert 590 < await redis.ttl(key) <= 600


async def test_revoking_ends_the_token_and_tells_its_streams(
    tokens: Tokens, redis: fakeredis.FakeAsyncRedis
) -> None:
    token = await tokens.create("alice")
    pubsub = listener(redis)
    await pubsub.subscribe(KEYS.user_channel("alice"))
    await pubsub.get_message(timeout=1)  # the subscribe confirmation
    assert await tokens.revoke(token) == "alice"
    assert await tokens.user_of(token) is None
    assert await tokens.revoke(token) is None  # twice: nothing left to revoke
    event = None
    for _ in range(20):
        event = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.1)
        if event is not None:
            break
    assert event is not None
    assert json.loads(event["data"]) == {"type": "logout", "token": digest_of(token)[:16]}
    await pubsub.aclose()


async def test_a_user_keeps_the_newest_tokens_only(
    tokens: Tokens, redis: fakeredis.FakeAsyncRedis
) -> None:
    made = []
    for _ in range(MAX_TOKENS_PER_USER + 3):
        made.append(await tokens.create("bob"))
        await asyncio.sleep(0.002)  # distinct creation times
    assert await redis.zcard(KEYS.user_tokens("bob")) == MAX_TOKENS_PER_USER
    assert [await tokens.user_of(t) for t in made[:3]] == [None, None, None]
    assert await tokens.user_of(made[3]) == "bob" and await tokens.user_of(made[-1]) == "bob"


async def test_file_links_are_signed_per_file_user_and_expiry(tokens: Tokens) -> None:
    assert tokens.sign("fid1", "ann") is None  # no key loaded yet
    await tokens.ensure_secret()
    now = time.time()
    signed = tokens.sign("fid1", "Ann", now)
    assert signed is not None
    expires, sig = signed
    assert expires == int(now) + LINK_TTL_S
    assert tokens.check("fid1", "ann", str(expires), sig)  # any case of the name
    assert not tokens.check("fid2", "ann", str(expires), sig)
    assert not tokens.check("fid1", "bob", str(expires), sig)
    assert not tokens.check("fid1", "ann", str(expires + 1), sig)
    other = sig[:-1] + ("1" if sig[-1] == "0" else "0")  # it ends in "0" one time in 16
    assert not tokens.check("fid1", "ann", str(expires), other)
    assert not tokens.check("fid1", "ann", "", sig)
    old = tokens.sign("fid1", "ann", now - LINK_TTL_S - 10)
    assert old is not None and not tokens.check("fid1", "ann", str(old[0]), old[1])


async def test_every_gateway_signs_with_the_same_key(redis: fakeredis.FakeAsyncRedis) -> None:
    one, two = Tokens(redis, KEYS, 600), Tokens(redis, KEYS, 600)
    await one.ensure_secret()
    await two.ensure_secret()
    expires, sig = one.sign("f", "ann") or (0, "")
    assert two.check("f", "ann", str(expires), sig)

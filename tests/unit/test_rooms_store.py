"""The rooms store on fakeredis and a real redis-server: the member script's rules,
the user's side, and the bounds."""

from __future__ import annotations

import fakeredis
import pytest

from gateway.errors import ClientError
from gateway.store import Keys, Store
from gateway.store.rooms import MAX_ROOMS_PER_USER

Redis = fakeredis.FakeAsyncRedis


async def test_member_rules_hand_over_and_close(redis: Redis) -> None:
    store = Store(redis, Keys("t"))
    rooms = store.rooms
    await rooms.create("#r", "Own", private=True)
    assert (await rooms.change("public", "#r", "joe", "joe")).status == "forbidden"
    assert (await rooms.change("invite", "#r", "joe", "eve")).status == "forbidden"
    assert (await rooms.change("approve", "#r", "own", "joe")).status == "not_pending"
    assert (await rooms.change("request", "#r", "joe", "joe")).detail == "own"
    assert (await rooms.change("approve", "#r", "own", "joe")).status == "joined"
    assert (await rooms.change("request", "#r", "joe", "joe")).status == "member"
    assert await rooms.of_user("joe") == ["#r"]
    await store.send("joe", "#r", "#r", "hi")
    handed = await rooms.change("leave", "#r", "own", "own")
    assert (handed.status, handed.detail) == ("handed", "joe")
    assert (await rooms.info("#r")).owner == "joe"  # type: ignore[union-attr]
    with pytest.raises(ClientError) as err:
        await store.send("own", "#r", "#r", "still here?")
    assert err.value.code == "forbidden"
    assert (await rooms.change("leave", "#r", "joe", "joe")).status == "closed"
    assert await rooms.info("#r") is None
    assert await redis.exists("t:{c:#r}:stream", "t:{c:#r}:members", "t:{c:#r}:seq") == 0
    assert await rooms.of_user("joe") == [] and await rooms.of_user("own") == []
    assert (await rooms.change("public", "#r", "joe", "joe")).status == "no_room"


async def test_a_user_is_in_a_bounded_number_of_rooms(redis: Redis) -> None:
    store = Store(redis, Keys("t"))
    for i in range(MAX_ROOMS_PER_USER):
        await store.rooms.create(f"#r{i}", "amy", private=False)
    with pytest.raises(ClientError) as err:
        await store.rooms.create("#one-more", "amy", private=False)
    assert err.value.code == "forbidden"
    await store.rooms.create("#theirs", "bob", private=False)
    with pytest.raises(ClientError):
        await store.rooms.change("public", "#theirs", "amy", "amy")
    assert (await store.rooms.change("leave", "#r0", "amy", "amy")).status == "closed"
    assert (await store.rooms.change("public", "#theirs", "amy", "amy")).status == "joined"

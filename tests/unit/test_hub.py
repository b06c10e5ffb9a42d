"""The hub's read of a direct conversation from its stream (a cluster's way of
delivering direct messages in order), with stand-in sessions."""

from __future__ import annotations

import asyncio
from typing import Any

import fakeredis

from gateway.net.hub import Hub, Route
from gateway.protocol import Message
from gateway.store import Keys, Store, now_ms


class FakeSession:
    def __init__(self) -> None:
        self.last_sent: dict[str, tuple[int, int]] = {}
        self.joined_ms = now_ms() - 60_000
        self.got: list[str] = []

    def deliver(self, conversation: str, msg: Message) -> None:
        if conversation in self.last_sent and msg.key <= self.last_sent[conversation]:
            return
        self.got.append(msg.id)
        self.last_sent[conversation] = msg.key


async def test_word_that_comes_while_a_read_is_in_flight_reaches_a_new_route() -> None:
    """All of a channel's sessions leave and a new one comes while a read for the
    old route is in flight: the read that follows it is for the new route's session."""
    redis = fakeredis.FakeAsyncRedis(decode_responses=True)
    keys = Keys("t")
    store = Store(redis, keys)
    hub = Hub("redis://127.0.0.1:1", keys, store, cluster=redis)  # never started
    conversation = "dm:ann:bob"
    sent = [(await store.send("ann", conversation, "bob", f"m{i}")).id for i in range(3)]
    channel = keys.user_channel("bob").encode()
    old = FakeSession()
    hub._routes[channel] = Route(keys.user_channel("bob"), "bob", {old})  # type: ignore[arg-type]

    release = asyncio.Event()
    read_after = store.messages.read_after

    async def slow_read(*args: Any, **kw: Any) -> list[Message]:
        await release.wait()
        return await read_after(*args, **kw)

    store.messages.read_after = slow_read  # type: ignore[method-assign]
    hub._catch_up(channel, conversation)
    await asyncio.sleep(0.01)  # the read is in flight
    del hub._routes[channel]  # bob's last session here left ...
    new = FakeSession()
    hub._routes[channel] = Route(keys.user_channel("bob"), "bob", {new})  # type: ignore[arg-type]
    hub._catch_up(channel, conversation)  # ... and a new one gets word of news
    release.set()
    for _ in range(100):
        if new.got:
            break
        await asyncio.sleep(0.01)
    assert new.got == sent
    await hub.stop()
    await redis.aclose()


class RecordingSession(FakeSession):
    def __init__(self) -> None:
        super().__init__()
        self.order: list[str] = []

    def deliver_run(self, conversation: str, run: Any) -> None:
        self.order += [f"message {m.text}" for m in run.messages]

    def push(self, ev: Any) -> None:
        self.order.append(f"event {type(ev).__name__}")


async def test_an_event_for_a_user_goes_out_after_the_messages_read_before_it() -> None:
    """One read with a room's messages, then a notice on the user's channel: the
    messages are handed over as a run, and the notice after them."""
    redis = fakeredis.FakeAsyncRedis(decode_responses=True)
    keys = Keys("t")
    hub = Hub("redis://127.0.0.1:1", keys, Store(redis, keys))  # never started
    session = RecordingSession()
    general = keys.room_channel("#general").encode()
    mine = keys.user_channel("dave").encode()
    hub._routes[general].sessions.add(session)  # type: ignore[arg-type]
    hub._routes[mine] = Route(keys.user_channel("dave"), "dave", {session})  # type: ignore[arg-type]

    def message(n: int) -> bytes:
        return (
            f'{{"type":"message","id":"{1000 + n}-0","ts":{1000 + n},'
            f'"from":"dave","to":"#general","text":"m{n}"}}'
        ).encode()

    notice = b'{"type":"notice","text":"your scheduled message 1a2b3c4d to #general was sent"}'
    hub._dispatch_batch([(general, message(1)), (general, message(2)), (mine, notice)])
    hub._dispatch_batch([(general, message(3))])
    assert session.order == ["message m1", "message m2", "event Notice", "message m3"]
    await hub.stop()
    await redis.aclose()

"""The session's state machine against stand-ins for the gateway, store and socket."""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.errors import ClientError, Unavailable
from gateway.net.outbox import Flusher
from gateway.net.session import MAX_SENDS_IN_FLIGHT, MAX_UNREAD_BYTES, Session, State
from gateway.protocol import Message
from gateway.settings import GatewaySettings
from gateway.store import SendResult


class FakeTransport:
    def __init__(self) -> None:
        self.data = bytearray()
        self.closing = False

    def write(self, data: bytes) -> None:
        self.data += data

    def get_write_buffer_size(self) -> int:
        return 0

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def abort(self) -> None:
        self.closing = True

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 5555) if name == "peername" else default

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def events(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.data.splitlines() if line]


def live_session(
    store: Any, settings: GatewaySettings | None = None
) -> tuple[Session, FakeTransport]:
    gateway = SimpleNamespace(
        settings=settings or GatewaySettings(),
        store=store,
        flusher=Flusher(0),
        hub=SimpleNamespace(leave=lambda s: None, mark_delivered=lambda *a: None),
        admit=lambda s: True,
        forget=lambda s: None,
        user_left=lambda name: None,
    )
    session = Session(gateway)  # type: ignore[arg-type]
    transport = FakeTransport()
    session.connection_made(transport)  # type: ignore[arg-type]
    session.data_received(b'{"op":"ping"}\n')  # picks JSON lines
    session.user = "amy"
    session._to(State.SYNCING)
    session._to(State.LIVE)
    return session, transport


async def test_live_messages_already_sent_are_not_sent_again() -> None:
    session, transport = live_session(None)
    raw = b'{"type":"message","id":"5-0"}\n'
    msg = Message("5-0", "bob", "#general", "hi", 5, raw=raw)
    session.deliver("#general", msg)
    session.deliver("#general", msg)
    session.deliver("#general", Message("4-0", "bob", "#general", "old", 4, raw=raw))
    await asyncio.sleep(0.01)
    assert transport.data.count(raw) == 1


class QueuingStore:
    """Takes every send as ``Store.send_now`` would and holds its callback, so a
    test answers them when it likes."""

    def __init__(self) -> None:
        self.queued: list[tuple[str, Any]] = []

    def send_now(self, sender: str, target: str, text: str, cid: str | None, done: Any) -> bool:
        self.queued.append((text, done))
        return True


def sends(n: int) -> bytes:
    return b"".join(b'{"op":"send","to":"bob","text":"m%d","rid":%d}\n' % (i, i) for i in range(n))


async def test_sends_are_queued_without_waiting_up_to_a_bound_and_answered_in_order() -> None:
    store = QueuingStore()
    session, transport = live_session(store, GatewaySettings(conn_send_rate=0))
    await asyncio.sleep(0.01)
    transport.data.clear()  # the pong that picked the framing
    session.data_received(sends(100) + b'{"op":"ping","rid":"p"}\n')
    await asyncio.sleep(0.01)
    # No send waited for another's answer, up to the bound; nothing answered yet.
    assert [text for text, _ in store.queued] == [f"m{i}" for i in range(MAX_SENDS_IN_FLIGHT)]
    assert transport.events() == []
    for n in range(10):  # ten answers let ten more in
        store.queued[n][1](SendResult(f"{n + 1}-0", duplicate=False))
    await asyncio.sleep(0.01)
    assert len(store.queued) == MAX_SENDS_IN_FLIGHT + 10
    store.queued[10][1](Unavailable("Redis unreachable"))  # one failed: said, and it goes on
    for n in range(11, 100):
        await asyncio.sleep(0)
        store.queued[n][1](SendResult(f"{n + 1}-0", duplicate=False))
    await asyncio.sleep(0.01)
    events = transport.events()
    # Every send answered in order, and the ping (not a send) only after all of them.
    assert [(ev["type"], ev.get("rid")) for ev in events] == [
        ("error" if n == 10 else "ack", n) for n in range(100)
    ] + [("pong", "p")]
    assert events[10]["code"] == "unavailable"
    assert [ev["id"] for ev in events[:10]] == [f"{n + 1}-0" for n in range(10)]
    assert session.state is State.LIVE and session.busy is None


async def test_a_client_gone_with_sends_in_flight_costs_nothing_later() -> None:
    store = QueuingStore()
    session, transport = live_session(store, GatewaySettings(conn_send_rate=0))
    await asyncio.sleep(0.01)
    transport.data.clear()  # the pong that picked the framing
    session.data_received(sends(5))
    await asyncio.sleep(0.01)
    assert len(store.queued) == 5
    transport.closing = True
    session.connection_lost(None)
    for n, (_, done) in enumerate(store.queued):  # the batch comes back after all
        done(SendResult(f"{n + 1}-0", duplicate=False))
    await asyncio.sleep(0.01)
    assert session.state is State.CLOSED and session.busy is None
    assert transport.events() == []


async def test_long_sends_in_flight_are_bounded_by_their_length_too() -> None:
    store = QueuingStore()
    session, _ = live_session(store, GatewaySettings(conn_send_rate=0))
    text = "x" * 3000
    line = b'{"op":"send","to":"bob","text":"%s"}\n' % text.encode()
    session.data_received(line * 40)
    await asyncio.sleep(0.01)
    held = -(-MAX_UNREAD_BYTES // len(text))  # the first to reach the bound waits there
    assert len(store.queued) == held < MAX_SENDS_IN_FLIGHT
    store.queued[0][1](SendResult("1-0", duplicate=False))
    await asyncio.sleep(0.01)
    assert len(store.queued) == held + 1


@settings(max_examples=60, deadline=None)
@given(
    kinds=st.lists(st.sampled_from(["send", "send", "send", "ping", "refused"]), max_size=60),
    answer_after=st.lists(st.integers(0, 8), min_size=60, max_size=60),
    chunk=st.integers(1, 200),
)
def test_answers_come_in_the_order_asked_however_the_batches_come_back(
    kinds: list[str], answer_after: list[int], chunk: int
) -> None:
    """Sends in flight, pings among them, batches answering a few sends at a time,
    the input split anywhere, a half-close at the end: every request is answered
    once, in the order it was written, and the worker ends."""

    async def scenario() -> None:
        store = QueuingStore()
        session, transport = live_session(store, GatewaySettings(conn_send_rate=0))
        await asyncio.sleep(0)
        transport.data.clear()
        data = b"".join(
            b'{"op":"ping","rid":%d}\n' % i
            if kind == "ping"
            else b'{"op":"send","to":"bob","text":"%s","rid":%d}\n' % (kind.encode(), i)
            for i, kind in enumerate(kinds)
        )
        answered = 0

        def answer(count: int) -> None:
            nonlocal answered
            for text, done in store.queued[answered : answered + count]:
                if text == "refused":
                    done(ClientError("forbidden", "no"))
                else:
                    done(SendResult(f"{answered + 1}-0", duplicate=False))
                answered += 1

        for n, start in enumerate(range(0, len(data), chunk)):
            session.data_received(data[start : start + chunk])
            await asyncio.sleep(0)
            answer(answer_after[n % len(answer_after)])
            await asyncio.sleep(0)
        session.eof_received()
        while session.busy is not None or answered < len(store.queued):
            answer(1)
            await asyncio.sleep(0)
        events = transport.events()
        assert [ev.get("rid") for ev in events] == list(range(len(kinds)))
        expected = {"send": "ack", "ping": "pong", "refused": "error"}
        assert [ev["type"] for ev in events] == [expected[kind] for kind in kinds]
        assert transport.closing  # closed after the last answer

    asyncio.run(scenario())

"""The session's state machine against stand-ins for the gateway, store and socket."""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace
from typing import Any

from gateway.net.outbox import Flusher
from gateway.net.session import Session, State
from gateway.protocol import Message
from gateway.settings import GatewaySettings


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


def live_session(store: Any) -> tuple[Session, FakeTransport]:
    gateway = SimpleNamespace(
        settings=GatewaySettings(),
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

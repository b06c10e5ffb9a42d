"""The reconnecting client against real gateway processes and a real redis-server.

Reconnects are held at a gate (an injected ``sleep``) so that "while it was down"
is a fact of the test, not a matter of timing.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from client.connection import ChatError, Connection
from client.resilient import Backoff, LinkState, LinkStatus, ResilientClient
from tests.support import Deployment


class Gate:
    """An injectable ``sleep`` for the client: reconnect attempts wait until ``open``."""

    def __init__(self) -> None:
        self._open = asyncio.Event()
        self.statuses: list[LinkStatus] = []
        self.down = asyncio.Event()
        self.waiting = asyncio.Event()

    async def sleep(self, _delay: float) -> None:
        await self._open.wait()

    def open(self) -> None:
        self._open.set()

    def on_status(self, status: LinkStatus) -> None:
        self.statuses.append(status)
        if status.state is LinkState.DOWN:
            self.down.set()
        if status.state is LinkState.WAITING:
            self.waiting.set()


async def client_on(
    deployment: Deployment, gateway: str, user: str, gate: Gate | None = None, **kw: Any
) -> ResilientClient:
    """A logged-in ResilientClient that landed on ``gateway`` (SO_REUSEPORT picks)."""
    for _ in range(60):
        client = ResilientClient(
            user, "pw", port=deployment.port,
            on_status=gate.on_status if gate else None,
            sleep=gate.sleep if gate else asyncio.sleep, **kw,
        )  # fmt: skip
        await client.start()
        if client.gateway == gateway:
            return client
        await client.close()
    raise AssertionError(f"never landed on {gateway}")


async def messages(
    client: ResilientClient, count: int, timeout: float = 15.0
) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while len(out) < count:
        ev = await client.next_event(timeout=max(0.0, deadline - loop.time()))
        if ev["type"] == "message":
            out.append(ev)
    return out


@pytest.fixture
async def closing() -> AsyncIterator[list[ResilientClient]]:
    clients: list[ResilientClient] = []
    yield clients
    for client in clients:
        await client.close()


async def test_reconnect_after_kill_shows_missed_messages_once(
    deployment: Deployment, closing: list[ResilientClient]
) -> None:
    bob = await deployment.connect_on("gw2", "bob")
    gate = Gate()
    alice = await client_on(deployment, "gw1", "alice", gate)
    closing.append(alice)

    before = [await bob.send("#general", f"before {i}") for i in range(3)]
    assert [m["id"] for m in await messages(alice, 3)] == before

    deployment.gateways[0].kill()
    await asyncio.wait_for(gate.down.wait(), 10)
    await asyncio.wait_for(gate.waiting.wait(), 10)
    assert not alice.connected
    during = [await bob.send("#general", f"during {i}") for i in range(3)]
    gate.open()
    missed = await messages(alice, 3)
    after = [await bob.send("#general", f"after {i}") for i in range(2)]
    live = await messages(alice, 2)

    assert [m["id"] for m in missed] == during
    assert all(m.get("replay") for m in missed), "the missed ones come from the replay"
    assert [m["id"] for m in live] == after
    # Nothing twice: the next message after all that is the next one bob sends.
    last = await bob.send("#general", "sentinel")
    [next_one] = await messages(alice, 1)
    assert next_one["id"] == last
    assert alice.gateway == "gw2" and alice.reconnects == 1
    states = [s.state for s in gate.statuses]
    assert states[states.index(LinkState.DOWN) :] == [
        LinkState.DOWN, LinkState.WAITING, LinkState.CONNECTING, LinkState.UP,
    ]  # fmt: skip
    waiting = next(s for s in gate.statuses if s.state is LinkState.WAITING)
    assert waiting.attempt == 1 and "reconnecting" in waiting.describe()


async def test_sends_queued_while_down_are_stored_once_in_order(
    deployment: Deployment, closing: list[ResilientClient]
) -> None:
    gate = Gate()
    alice = await client_on(deployment, "gw1", "alice", gate)
    closing.append(alice)
    deployment.gateways[0].kill()
    await asyncio.wait_for(gate.waiting.wait(), 10)

    queued = [alice.send("#general", f"queued {i}") for i in range(3)]
    queued.append(alice.send("bob2", "private while down"))
    assert len(alice.unacked) == 4 and not any(item.done.is_set() for item in queued)
    bob = await deployment.connect_on("gw2", "bob2")
    gate.open()
    assert await alice.flush(timeout=20)

    ids = [await item.wait() for item in queued]
    # ids are unique within a conversation: the DM may share one with #general's
    assert len(set(ids[:3])) == 3 and all(ids) and alice.unacked == []
    history = await bob.history("#general", limit=50)
    texts = [m["text"] for m in history if m["from"] == "alice"]
    assert texts == ["queued 0", "queued 1", "queued 2"]
    assert [m["id"] for m in history if m["from"] == "alice"] == ids[:3]
    [dm] = await bob.history("alice", limit=50)
    assert dm["id"] == ids[3] and dm["text"] == "private while down"


class AckEatingProxy:
    """A TCP proxy in front of the gateways that swallows the first ack it sees and
    cuts that connection: the message is stored, but its sender never hears so."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.armed = True
        self.eaten: list[dict[str, Any]] = []
        self.connections = 0
        self.port = 0
        self._server: asyncio.Server | None = None

    async def start(self) -> AckEatingProxy:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _handle(self, cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
        self.connections += 1
        ur, uw = await asyncio.open_connection("127.0.0.1", self.upstream_port, limit=1 << 20)

        async def up() -> None:
            while data := await cr.read(65536):
                uw.write(data)
                await uw.drain()

        async def down() -> None:
            while line := await ur.readline():
                if self.armed and b'"type":"ack"' in line:
                    self.armed = False
                    self.eaten.append(json.loads(line))
                    return
                cw.write(line)
                await cw.drain()

        tasks = [asyncio.create_task(up()), asyncio.create_task(down())]
        with contextlib.suppress(ConnectionError):
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for w in (cw, uw):
            w.close()
            with contextlib.suppress(ConnectionError):
                await w.wait_closed()


async def test_send_whose_ack_was_lost_is_resent_and_stored_once(
    deployment: Deployment, closing: list[ResilientClient]
) -> None:
    proxy = await AckEatingProxy(deployment.port).start()
    try:
        alice = ResilientClient(
            "alice", "pw", port=proxy.port, backoff=Backoff(initial_s=0.05, max_s=0.2)
        )
        closing.append(alice)
        await alice.start()
        item = alice.send("#general", "only once")
        sid = await item.wait(timeout=20)
    finally:
        await proxy.close()

    reader = await deployment.login("carol")
    history = await reader.history("#general", limit=50)
    assert [m["id"] for m in history if m["text"] == "only once"] == [sid]
    assert proxy.eaten, "the proxy never saw the ack"
    assert proxy.eaten[0]["cid"] == item.cid and proxy.eaten[0]["id"] == sid
    assert item.attempts == 2 and proxy.connections == 2 and alice.reconnects == 1


async def test_refused_password_is_raised_not_retried(deployment: Deployment) -> None:
    first = await deployment.login("dave", "right")
    await first.close()
    client = ResilientClient("dave", "wrong", port=deployment.port)
    with pytest.raises(ChatError) as info:
        await client.start()
    assert info.value.code == "bad_password"
    await client.close()


async def test_seen_is_what_was_delivered(deployment: Deployment, closing: list[Any]) -> None:
    bob: Connection = await deployment.login("bob")
    alice = ResilientClient("alice", "pw", port=deployment.port)
    closing.append(alice)
    await alice.start()
    sid = await bob.send("alice", "hi")
    [msg] = await messages(alice, 1)
    assert msg["id"] == sid and alice.seen.get("bob") == sid
    assert alice.delivered("bob", sid)

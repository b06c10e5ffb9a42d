"""The interactive console, driven through prompt_toolkit's pipe input and a dummy
output, against real gateway processes and a real redis-server."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from prompt_toolkit.application import create_app_session
from prompt_toolkit.input import PipeInput, create_pipe_input
from prompt_toolkit.output import DummyOutput

from client.connection import Connection
from client.console import Console, Options
from client.resilient import ResilientClient
from tests.integration.test_resilient import Gate
from tests.support import Deployment


class GatedConsole(Console):
    """A console whose reconnect attempts wait for ``gate.open()``."""

    gate: Gate | None = None

    def make_client(self, user: str, password: str) -> ResilientClient:
        client = super().make_client(user, password)
        if self.gate is not None:
            gate = self.gate
            client._sleep = gate.sleep

            def both(status: Any) -> None:
                gate.on_status(status)
                self._on_status(status)

            client.on_status = both
        return client


async def until(predicate: Callable[[], bool], what: str, timeout: float = 15.0) -> None:
    for _ in range(int(timeout / 0.02)):
        if predicate():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def shown(console: Console, text: str) -> int:
    return sum(text in line for line in console.transcript)


@asynccontextmanager
async def running_console(
    deployment: Deployment, user: str, gate: Gate | None = None
) -> AsyncIterator[tuple[Console, PipeInput]]:
    with create_pipe_input() as pipe:
        output = DummyOutput()
        with create_app_session(input=pipe, output=output):
            console = GatedConsole(
                Options(port=deployment.port, user=user, password="pw"), pipe, output
            )
            console.gate = gate
            task = asyncio.create_task(console.run())
            try:
                await until(lambda: shown(console, f"logged in as {user}") > 0, "login")
                await until(lambda: console.session is not None, "the prompt")
                yield console, pipe
                pipe.send_text("/quit\r")
                assert await asyncio.wait_for(task, 15) == 0
            finally:
                task.cancel()


async def from_alice(conn: Connection, count: int) -> list[dict[str, Any]]:
    """The next ``count`` messages ``conn`` receives from alice (skipping its own)."""
    out: list[dict[str, Any]] = []
    while len(out) < count:
        out += [m for m in await conn.messages(1) if m["from"] == "alice"]
    return out


def buffer_text(console: Console) -> str:
    assert console.session is not None
    return console.session.default_buffer.text


async def test_typing_is_kept_while_messages_arrive_and_commands_work(
    deployment: Deployment,
) -> None:
    bob = await deployment.login("bob")
    async with running_console(deployment, "alice") as (console, pipe):
        pipe.send_text("hello wor")
        await until(lambda: buffer_text(console) == "hello wor", "typed text")
        one = await bob.send("#general", "one")
        await bob.send("#general", "evil \x1b[2J\x1b]0;pwned\x07 text")
        await until(lambda: shown(console, "bob: evil") > 0, "bob's messages")
        assert buffer_text(console) == "hello wor", "arriving messages kept the typed line"
        [evil] = [line for line in console.transcript if "bob: evil" in line]
        assert "\x1b" not in evil and "\x07" not in evil
        assert evil.endswith("evil \\x1b[2J\\x1b]0;pwned\\x07 text")

        pipe.send_text("ld\r")
        [mine] = await from_alice(bob, 1)
        assert (mine["from"], mine["text"]) == ("alice", "hello world")

        # Short ids are usable: reply to bob's "one" by its number.
        [line] = [line for line in console.transcript if line.endswith("bob: one")]
        number = re.search(r"\[(\d+)\]", line)
        assert number is not None
        pipe.send_text(f"/reply {number.group(1)} thanks\r")
        [reply] = await from_alice(bob, 1)
        assert reply["text"] == "thanks" and reply["reply_to"] == one

        pipe.send_text("/private to bob psst\r")
        [dm] = await from_alice(bob, 1)
        assert (dm["to"], dm["text"]) == ("bob", "psst")
        await until(lambda: shown(console, "(private to bob) alice: psst") == 1, "own private")

        # Tab completes commands, then online names (known from /status).
        pipe.send_text("/sta\t")
        await until(lambda: buffer_text(console) == "/status", "completed command")
        pipe.send_text("\r")
        await until(lambda: shown(console, "online (2): alice, bob") == 1, "status line")
        pipe.send_text("/msg b\t")
        await until(lambda: buffer_text(console) == "/msg bob ", "completed name")
        pipe.send_text("hey\r")
        [dm2] = await from_alice(bob, 1)
        assert dm2["text"] == "hey"

        # The up arrow brings back the previous line.
        pipe.send_text("\x1b[A")
        await until(lambda: buffer_text(console) == "/msg bob hey", "recalled line")
        pipe.send_text("\x15")  # Ctrl-U clears it again

        sender = await deployment.login("mallory")
        await sender.send("alice", "a private word")
        await until(lambda: shown(console, "(private) mallory: a private word") == 1, "dm")
        pipe.send_text("/history 2\r")
        await until(lambda: shown(console, "history of #general: 2 message(s)") == 1, "history")
        pipe.send_text("/nonsense\r")
        await until(lambda: shown(console, "!! error (unknown_op): unknown command") == 1, "err")


async def test_console_reconnects_after_its_gateway_is_killed(deployment: Deployment) -> None:
    gate = Gate()
    async with running_console(deployment, "alice", gate) as (console, pipe):
        assert console.client is not None
        mine = 0 if console.client.gateway == "gw1" else 1
        other = deployment.gateways[1 - mine].name
        bob: Connection = await deployment.connect_on(other, "bob")
        await bob.send("#general", "m1")
        await until(lambda: shown(console, "bob: m1") == 1, "m1")

        pipe.send_text("half-typed")
        deployment.gateways[mine].kill()
        await asyncio.wait_for(gate.waiting.wait(), 10)
        await until(lambda: shown(console, "reconnecting… (attempt 1") == 1, "reconnecting line")
        await bob.send("#general", "m2 while down")
        await bob.send("#general", "m3 while down")
        assert buffer_text(console) == "half-typed"
        pipe.send_text("\x15typed while down\r")
        await until(lambda: shown(console, "sending after reconnecting") == 1, "queued note")

        gate.open()
        await until(lambda: shown(console, f"reconnected to gateway {other}") == 1, "reconnect")
        await bob.send("#general", "m4 after")
        await until(lambda: shown(console, "bob: m4 after") == 1, "m4")
        await until(lambda: shown(console, "alice: typed while down") == 1, "own message")
        for text in ("m1", "m2 while down", "m3 while down", "m4 after"):
            assert shown(console, f"bob: {text}") == 1, text
        history = await bob.history("#general", limit=50)
        assert [m["text"] for m in history if m["from"] == "alice"] == ["typed while down"]

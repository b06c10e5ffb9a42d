"""The ``streams`` client shape: plain asyncio stream clients, as a typical outside
load generator writes them (``--client-shape streams``).

Each client is an ``asyncio.open_connection`` reader/writer pair. It reads with
``await reader.readline()`` and decodes every line with ``json.loads``; a sender
keeps ``window`` sends in flight (a semaphore released by each ``ack``), writing
each send with ``writer.write`` of its own ``json.dumps`` and awaiting ``drain``.
There is no rate and no lag cap: senders are held back by their window alone.
Message texts are ``<tag>:<sender>:<seq>:<send time ns>`` padded with dots to
``text_bytes``.

The work measured is the lean shape's (bench/load.py): the same ``DeliveryCheck``
on every client (exactly once, in order, ids rising), the same figures, the same
server CPU over the send phase only (logins excluded). What differs is what the
clients cost and how they read: a lean client takes a whole socket chunk at a
time and scans it with one regex; a stream client wakes for each line.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Final

from bench.load import (
    GENERAL,
    PASSWORD,
    CostMeter,
    DeliveryCheck,
    Progress,
    Run,
    _send_metrics,
    bounded,
)
from bench.servers import Target

__all__ = ["SCENARIOS", "StreamClient"]

monotonic_ns = time.monotonic_ns


class StreamClient:
    """One JSON-lines connection over asyncio streams."""

    def __init__(self, run: Run, name: str, check: DeliveryCheck | None) -> None:
        self.run = run
        self.name = name
        self.check = check
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.index = -1
        self.to = ""
        self.total = 0
        self.acks = 0
        self.window = asyncio.Semaphore(max(1, run.params.window))
        self.finished = asyncio.Event()

    async def login(self, target: Target, timeout_s: float) -> None:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(target.host, target.port), timeout_s
        )
        self.reader, self.writer = reader, writer
        req = {"op": "login", "rid": 1, "user": self.name, "password": PASSWORD}
        writer.write(json.dumps(req).encode() + b"\n")
        while True:
            line = await asyncio.wait_for(reader.readline(), timeout_s)
            if not line:
                raise ConnectionError(f"{self.name}: closed before synced")
            ev = json.loads(line)
            if ev.get("type") == "synced":
                return
            if ev.get("type") == "error":
                raise ConnectionError(f"{self.name}: error {ev.get('code')}: {ev.get('message')}")

    @property
    def done(self) -> bool:
        return self.acks >= self.total and (self.check is None or self.check.complete)

    async def receive(self) -> None:
        """Read line by line until every expected message came and every send was acked."""
        assert self.reader is not None
        run, check, tag = self.run, self.check, self.run.tag
        reader = self.reader
        try:
            while not self.done:
                line = await reader.readline()
                if not line:
                    run.problems.append(f"{self.name}: connection closed during the run")
                    return
                ev = json.loads(line)
                kind = ev.get("type")
                if kind == "message":
                    parts = str(ev.get("text", "")).split(":")
                    if len(parts) == 4 and parts[0] == tag and check is not None:
                        now = monotonic_ns()
                        ms, _, sq = str(ev["id"]).partition("-")
                        sent = int(parts[3].rstrip("."))
                        check.see(int(parts[1]), int(parts[2]), (int(ms), int(sq)), now - sent)
                        run.last_delivery_ns = now
                elif kind == "ack":
                    self.acks += 1
                    self.window.release()
                elif kind == "error":
                    run.problems.append(f"{self.name}: error {ev.get('code')}: {ev.get('message')}")
        finally:
            self.finished.set()

    async def send(self) -> None:
        """``total`` sends to ``to``, at most ``window`` of them unacked."""
        assert self.writer is not None
        run, writer, window = self.run, self.writer, self.window
        tag, size = run.tag, run.params.text_bytes
        for seq in range(self.total):
            await window.acquire()
            text = f"{tag}:{self.index}:{seq}:{monotonic_ns()}"
            text += "." * (size - len(text))
            writer.write(json.dumps({"op": "send", "to": self.to, "text": text}).encode() + b"\n")
            await writer.drain()
            run.total_sent += 1

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


async def _login_all(
    target: Target, run: Run, clients: list[StreamClient], every: list[StreamClient]
) -> None:
    every.extend(clients)
    p = run.params
    await bounded([partial(c.login, target, p.timeout_s) for c in clients], p.concurrency)


async def _measured(
    target: Target,
    run: Run,
    name: str,
    senders: list[StreamClient],
    everyone: list[StreamClient],
    checks: list[DeliveryCheck],
    sent: int,
    expected: int,
) -> dict[str, float]:
    """Start every reader and every sender, wait until all are done (or nothing
    arrives for ``timeout_s``), check every client; the same figures as the lean shape."""
    p = run.params
    meter = CostMeter(target.server_pids())
    start = monotonic_ns()
    run.last_delivery_ns = start
    readers = [asyncio.create_task(c.receive()) for c in everyone]
    writers = [asyncio.create_task(s.send()) for s in senders]
    tasks = set(readers)
    with Progress(f"{name} {target.label}", expected, lambda: sum(c.counted for c in checks)):
        while tasks:
            done, tasks = await asyncio.wait(tasks, timeout=1.0)
            for t in done:
                if not t.cancelled() and (exc := t.exception()) is not None:
                    run.problems.append(f"{type(exc).__name__}: {exc}")
            idle = (monotonic_ns() - run.last_delivery_ns) / 1e9
            if tasks and idle > p.timeout_s:
                run.problems.append(f"nothing arrived for {p.timeout_s:g} s; giving up")
                break
    end = run.last_delivery_ns
    costs = meter.result()
    for t in [*tasks, *writers]:
        t.cancel()
    for t in [*tasks, *writers]:
        with contextlib.suppress(asyncio.CancelledError, ConnectionError, OSError):
            await t
    for c in everyone:
        if c.check is not None:
            run.problems.extend(c.check.problems(c.name))
        if c.total and c.acks != c.total:
            run.problems.append(f"{c.name}: {c.acks} of {c.total} sends acked")
    return _send_metrics(run, sum(c.counted for c in checks), sent, (end - start) / 1e9, costs)


async def fanout(target: Target, run: Run) -> dict[str, float]:
    """``receivers`` readers and ``senders`` senders in #general, as in bench/load.py."""
    p, t = run.params, run.tag
    senders_idx = range(p.senders)
    everyone: list[StreamClient] = []
    try:
        rx = [
            StreamClient(run, f"{t}r{i}", DeliveryCheck(senders_idx, p.messages, -1, run.latencies))
            for i in range(p.receivers)
        ]
        await _login_all(target, run, rx, everyone)
        tx = [
            StreamClient(run, f"{t}s{i}", DeliveryCheck(senders_idx, p.messages, own=i))
            for i in senders_idx
        ]
        await _login_all(target, run, tx, everyone)
        for i, s in enumerate(tx):
            s.index, s.to, s.total = i, GENERAL, p.messages
        checks = [c.check for c in rx if c.check is not None]
        sent = p.senders * p.messages
        return await _measured(
            target, run, "fanout", tx, everyone, checks, sent, sent * p.receivers
        )
    finally:
        for c in everyone:
            c.close()


async def direct(target: Target, run: Run) -> dict[str, float]:
    """``pairs`` pairs of users, each sending ``messages`` to the other."""
    p, t = run.params, run.tag
    everyone: list[StreamClient] = []
    try:
        clients = []
        for i in range(p.pairs):
            a, b = 2 * i, 2 * i + 1
            for name, own in ((f"{t}a{i}", a), (f"{t}b{i}", b)):
                check = DeliveryCheck((a, b), p.messages, own, run.latencies)
                clients.append(StreamClient(run, name, check))
        await _login_all(target, run, clients, everyone)
        for i, c in enumerate(clients):
            c.index, c.to, c.total = i, clients[i ^ 1].name, p.messages
        checks = [c.check for c in clients if c.check is not None]
        sent = 2 * p.pairs * p.messages
        return await _measured(target, run, "direct", clients, everyone, checks, sent, sent)
    finally:
        for c in everyone:
            c.close()


SCENARIOS: Final[dict[str, Callable[[Target, Run], Awaitable[dict[str, float]]]]] = {
    "fanout": fanout,
    "direct": direct,
}

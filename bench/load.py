"""The benchmark's load: lean JSON-lines clients, the delivery checker, the scenarios.

The bench shares two cores with the servers it measures, so its clients cost as
little as they can: each is a bare ``asyncio.Protocol``; once logged in, a whole
socket chunk is scanned with one compiled regex for the messages of this run
(their text is ``<tag>:<sender>:<seq>:<send time ns>``), and acks are counted with
``bytes.count``. Only lines the fast path does not explain are parsed as JSON.

Every message a connection receives goes through a ``DeliveryCheck``: per sender,
each sequence number must arrive once and in order, and stream ids must rise
(so every receiver sees one order). A loss, a duplicate or a reordering is a
*problem*; a run with any problem fails.

Latency is receive time minus the send time embedded in the text, both read
from the same monotonic clock in this process.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import sys
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from redis.crc import REDIS_CLUSTER_HASH_SLOTS as SLOTS
from redis.crc import key_slot

from bench.servers import Target, cpu_seconds, rss_kb
from gateway.store.keys import Keys, hash_tag

__all__ = [
    "BenchClient",
    "CostMeter",
    "DeliveryCheck",
    "Params",
    "RunResult",
    "percentile",
    "run_scenario",
    "spread_rooms",
]

monotonic_ns = time.monotonic_ns
GENERAL: Final = "#general"
KEYS: Final = Keys()
PASSWORD: Final = "bench-pw"


@dataclass
class Params:
    receivers: int = 200
    senders: int = 4
    messages: int = 500
    pairs: int = 50
    connections: int = 1000
    unread: int = 50
    rate: float = 0.0  # messages/s over all senders; 0 = as fast as acks allow
    window: int = 32  # unacked sends per sender
    max_lag: int = 500  # messages a sender may be ahead of its slowest receiver
    concurrency: int = 200  # logins in flight while setting up
    timeout_s: float = 30.0  # give up when nothing arrives for this long
    text_bytes: int = 0  # pad each message text with dots up to this many bytes (0: none)
    rooms: int = 6  # rooms: public rooms, one sender each, the receivers split over them
    client_shape: str = "lean"  # fanout/direct clients: "lean" protocols or "streams"
    member_rooms: int = 0  # idle: public rooms each user is in (redchat only)
    room_pool: int = 50  # idle: public rooms made for them to be in


# ---------------------------------------------------------------------------
# Checking deliveries
# ---------------------------------------------------------------------------


class DeliveryCheck:
    """What one connection received: exactly once, in order, per sender; ids rising.

    ``senders`` are the indexes this connection must hear from, each sending
    ``per_sender`` messages numbered from 0. ``own`` is checked like the others but
    not counted as a delivery (a sender's echo of its own message).
    """

    __slots__ = (
        "counted",
        "dups",
        "last_id",
        "latencies",
        "next_seq",
        "own",
        "per_sender",
        "received",
        "reordered",
        "seen",
        "unexpected",
    )

    def __init__(
        self,
        senders: Iterable[int],
        per_sender: int,
        own: int = -1,
        latencies: list[int] | None = None,
    ) -> None:
        self.per_sender = per_sender
        self.seen = {s: bytearray(per_sender) for s in senders}
        self.next_seq = dict.fromkeys(self.seen, 0)
        self.own = own
        self.latencies = latencies
        self.last_id = (0, 0)
        self.received = 0  # every message checked
        self.counted = 0  # deliveries (not own)
        self.dups = 0
        self.reordered = 0
        self.unexpected = 0

    def see(self, sender: int, seq: int, sid: tuple[int, int], latency_ns: int) -> None:
        self.received += 1
        seen = self.seen.get(sender)
        if seen is None or not 0 <= seq < self.per_sender:
            self.unexpected += 1
            return
        if seen[seq]:
            self.dups += 1
            return
        seen[seq] = 1
        if seq < self.next_seq[sender] or sid <= self.last_id:
            self.reordered += 1
        self.next_seq[sender] = seq + 1
        if sid > self.last_id:
            self.last_id = sid
        if sender != self.own:
            self.counted += 1
            if self.latencies is not None:
                self.latencies.append(latency_ns)

    @property
    def expected(self) -> int:
        return self.per_sender * len(self.seen)

    @property
    def complete(self) -> bool:
        return self.received - self.dups - self.unexpected >= self.expected

    def missing(self) -> int:
        return sum(len(s) - sum(s) for s in self.seen.values())

    def problems(self, who: str) -> list[str]:
        out = []
        if missing := self.missing():
            out.append(f"{who}: {missing} message(s) lost")
        if self.dups:
            out.append(f"{who}: {self.dups} duplicate(s)")
        if self.reordered:
            out.append(f"{who}: {self.reordered} out of order")
        if self.unexpected:
            out.append(f"{who}: {self.unexpected} unexpected message(s)")
        return out


# ---------------------------------------------------------------------------
# One lean client
# ---------------------------------------------------------------------------


class Run:
    """What the clients of one scenario run share."""

    def __init__(self, tag: str, params: Params) -> None:
        self.tag = tag
        self.params = params
        self.pattern = re.compile(
            rb'"id":"(\d+)-(\d+)"[^\n]*"text":"' + tag.encode() + rb":(\d+):(\d+):(\d+)"
        )
        self.problems: list[str] = []
        self.latencies: list[int] = []
        self.total_sent = 0
        self.rate_start_ns = 0
        self.last_delivery_ns = 0
        self.clients: list[BenchClient] = []

    def text(self, sender: int, seq: int, now_ns: int) -> bytes:
        """A message's text, padded with dots up to ``text_bytes``."""
        text = b"%s:%d:%d:%d" % (self.tag.encode(), sender, seq, now_ns)
        return text + b"." * (self.params.text_bytes - len(text))


ACK: Final = b'"type":"ack"'
NL: Final = b"\n"


class BenchClient(asyncio.Protocol):
    """One JSON-lines connection: logs in, then receives (and maybe sends)."""

    def __init__(self, run: Run, name: str, check: DeliveryCheck | None = None) -> None:
        self.run = run
        self.name = name
        self.check = check
        self.transport: asyncio.Transport | None = None
        self.buf = b""
        self.live = False
        self.closed = False
        self.welcome: dict[str, Any] = {}
        self.logged_in: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.done: asyncio.Future[None] | None = None
        # sending
        self.index = -1
        self.to = b""
        self.total = 0
        self.sent = 0
        self.acks = 0
        self.rate_per_s = 0.0
        self.watchers: list[DeliveryCheck] = []  # the checks that expect this sender
        self.lag_ceiling = run.params.max_lag
        # requests other than sends: rid -> the answer's future (see ``request``)
        self.replies: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.next_rid = 1000

    # -- asyncio.Protocol ---------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if not self.logged_in.done():
            self.logged_in.set_exception(ConnectionError(f"{self.name}: closed before synced"))
        elif self.done is not None and not self.done.done():
            self.run.problems.append(f"{self.name}: connection closed during the run")
            self.done.set_result(None)

    def data_received(self, data: bytes) -> None:
        if self.buf:
            data = self.buf + data
        end = data.rfind(NL) + 1
        if end == 0:
            self.buf = data
            return
        if end < len(data):
            self.buf = data[end:]
            data = data[:end]
        else:
            self.buf = b""
        if not self.live:
            self._slow(data)
            return
        now = monotonic_ns()
        acks = data.count(ACK) if self.total else 0
        found = self.run.pattern.findall(data)
        if len(found) + acks != data.count(NL):
            self._slow(data)
            return
        if found:
            check = self.check
            if check is not None:
                for ms, sq, sender, seq, sent in found:
                    check.see(int(sender), int(seq), (int(ms), int(sq)), now - int(sent))
                self.run.last_delivery_ns = now
        if acks:
            self.acks += acks
            self.pump()
        self._maybe_done()

    def _slow(self, data: bytes) -> None:
        """Lines the fast path could not explain: parse each one."""
        now = monotonic_ns()
        for line in data.split(NL)[:-1]:
            try:
                ev = json.loads(line)
            except ValueError:
                self.run.problems.append(f"{self.name}: unreadable line {line[:80]!r}")
                continue
            kind = ev.get("type")
            reply = self.replies.pop(ev.get("rid"), None) if self.replies else None
            if reply is not None:  # the answer to a ``request``
                if reply.done():  # given up on already
                    continue
                if kind == "error":
                    what = f"{self.name}: error {ev.get('code')}: {ev.get('message')}"
                    reply.set_exception(ConnectionError(what))
                else:
                    reply.set_result(ev)
            elif kind == "message":
                m = self.run.pattern.search(line)
                if m is not None and self.check is not None:
                    ms, sq, sender, seq, sent = m.groups()
                    self.check.see(int(sender), int(seq), (int(ms), int(sq)), now - int(sent))
                    self.run.last_delivery_ns = now
            elif kind == "ack":
                self.acks += 1
                self.pump()
            elif kind == "welcome":
                self.welcome = ev
            elif kind == "synced":
                self.live = True
                if not self.logged_in.done():
                    self.logged_in.set_result(self.welcome)
            elif kind == "error":
                what = f"{self.name}: error {ev.get('code')}: {ev.get('message')}"
                if not self.logged_in.done():
                    self.logged_in.set_exception(ConnectionError(what))
                else:
                    self.run.problems.append(what)
        self._maybe_done()

    def _maybe_done(self) -> None:
        """Done when every expected message came and every send was acked."""
        done = self.done
        if done is None or done.done() or self.acks < self.total:
            return
        if self.check is None or self.check.complete:
            done.set_result(None)

    # -- sending ------------------------------------------------------------
    def write_obj(self, obj: dict[str, Any]) -> None:
        assert self.transport is not None
        self.transport.write(json.dumps(obj).encode() + NL)

    def pump(self) -> None:
        """Send as many messages as the window, the rate and the lag cap allow."""
        if not self.total or self.closed:
            return
        run = self.run
        limit = min(self.total, self.acks + run.params.window)
        if self.rate_per_s:
            elapsed = (monotonic_ns() - run.rate_start_ns) / 1e9
            limit = min(limit, int(self.rate_per_s * elapsed) + 1)
        limit = min(limit, self.lag_ceiling)
        if limit <= self.sent:
            return
        now = monotonic_ns()
        tag = run.tag.encode()
        pad = b"." * (run.params.text_bytes - len(run.text(self.index, self.sent, now)))
        out = [
            b'{"op":"send","to":"%s","text":"%s:%d:%d:%d%s"}\n'
            % (self.to, tag, self.index, seq, now, pad)
            for seq in range(self.sent, limit)
        ]
        assert self.transport is not None
        self.transport.write(b"".join(out))
        run.total_sent += limit - self.sent
        self.sent = limit

    async def request(self, obj: dict[str, Any], timeout_s: float) -> dict[str, Any]:
        """Send an op with a fresh ``rid`` and wait for the answer carrying it (an error
        answer raises ``ConnectionError``)."""
        rid = self.next_rid
        self.next_rid += 1
        answer = asyncio.get_running_loop().create_future()
        self.replies[rid] = answer
        self.write_obj({**obj, "rid": rid})
        return await asyncio.wait_for(answer, timeout_s)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------


def percentile(sorted_values: Sequence[float], q: float) -> float:
    if not sorted_values:
        return 0.0
    i = min(len(sorted_values) - 1, max(0, round(q / 100 * (len(sorted_values) - 1))))
    return float(sorted_values[i])


async def connect(target: Target, client: BenchClient, timeout_s: float = 30.0) -> BenchClient:
    loop = asyncio.get_running_loop()
    await asyncio.wait_for(
        loop.create_connection(lambda: client, target.host, target.port), timeout_s
    )
    return client


async def login(
    target: Target, client: BenchClient, user: str, timeout_s: float = 60.0
) -> BenchClient:
    await connect(target, client, timeout_s)
    client.write_obj({"op": "login", "rid": 1, "user": user, "password": PASSWORD})
    await asyncio.wait_for(client.logged_in, timeout_s)
    return client


def _job(fn: Callable[..., Awaitable[Any]], *args: Any) -> Callable[[], Awaitable[Any]]:
    return lambda: fn(*args)


async def bounded(jobs: Iterable[Callable[[], Awaitable[Any]]], concurrency: int) -> list[Any]:
    """Run the jobs with at most ``concurrency`` in flight; results in order."""
    sem = asyncio.Semaphore(concurrency)

    async def one(job: Callable[[], Awaitable[Any]]) -> Any:
        async with sem:
            return await job()

    return list(await asyncio.gather(*(one(j) for j in jobs)))


class Progress:
    """A one-line progress bar on stderr, only when stderr is a terminal."""

    def __init__(self, label: str, total: int, current: Callable[[], int]) -> None:
        self.label = label
        self.total = max(1, total)
        self.current = current
        self.enabled = sys.stderr.isatty()
        self._task: asyncio.Task[None] | None = None

    async def _loop(self) -> None:
        while True:
            self.draw()
            await asyncio.sleep(0.25)

    def draw(self, final: bool = False) -> None:
        done = min(self.current(), self.total)
        frac = done / self.total
        bar = "#" * int(frac * 30)
        sys.stderr.write(f"\r{self.label:<28} [{bar:<30}] {frac:4.0%} {done}/{self.total}")
        if final:
            sys.stderr.write("\n")
        sys.stderr.flush()

    def __enter__(self) -> Progress:
        if self.enabled:
            self._task = asyncio.get_running_loop().create_task(self._loop())
        return self

    def __exit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            self.draw(final=True)


class CostMeter:
    """CPU seconds used by the server processes and by this process over a phase."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self.start = {name: cpu_seconds(pid) for name, pid in pids.items()}
        self.self_start = time.process_time()

    def result(self) -> dict[str, float]:
        out = {f"cpu_s.{n}": round(cpu_seconds(p) - self.start[n], 2) for n, p in self.pids.items()}
        out["cpu_s.bench"] = round(time.process_time() - self.self_start, 2)
        return out


@dataclass
class RunResult:
    target: str
    scenario: str
    metrics: dict[str, float] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


# ---------------------------------------------------------------------------
# Scenarios
# ---------------------------------------------------------------------------


async def _stream(
    run: Run, label: str, senders: list[BenchClient], counted: list[DeliveryCheck], total: int
) -> tuple[float, float]:
    """Send everything, wait until every check is complete; returns (start, end) seconds."""
    p = run.params
    loop = asyncio.get_running_loop()
    futures = []
    for client in run.clients:
        if client.check is not None:
            client.done = loop.create_future()
            futures.append(client.done)
    per_sender_rate = p.rate / len(senders) if p.rate and senders else 0.0
    for s in senders:
        s.rate_per_s = per_sender_rate
    checked = [c.check for c in run.clients if c.check is not None]
    for s in senders:
        s.watchers = [c for c in checked if s.index in c.next_seq]

    async def ticker() -> None:
        interval = 0.005 if per_sender_rate else 0.02
        while True:
            await asyncio.sleep(interval)
            for s in senders:
                # A sender may lead the slowest of its own receivers by max_lag messages.
                floor = min((w.next_seq[s.index] for w in s.watchers), default=s.sent)
                s.lag_ceiling = floor + p.max_lag
                s.pump()

    start = monotonic_ns()
    run.rate_start_ns = start
    run.last_delivery_ns = start
    tick = asyncio.create_task(ticker())
    with Progress(label, total, lambda: sum(c.counted for c in counted)):
        for s in senders:
            s.pump()
        pending = set(futures)
        while pending:
            _, pending = await asyncio.wait(pending, timeout=1.0)
            idle = (monotonic_ns() - run.last_delivery_ns) / 1e9
            if pending and idle > p.timeout_s:
                run.problems.append(f"nothing arrived for {p.timeout_s:g} s; giving up")
                break
    tick.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await tick
    return start / 1e9, run.last_delivery_ns / 1e9


async def _login_all(
    target: Target, run: Run, specs: list[tuple[str, DeliveryCheck | None]]
) -> list[BenchClient]:
    clients = [BenchClient(run, name, check) for name, check in specs]
    run.clients.extend(clients)
    await bounded([_job(login, target, c, c.name) for c in clients], run.params.concurrency)
    return clients


def _close(clients: Iterable[BenchClient]) -> None:
    for c in clients:
        c.close()


def _latency_metrics(run: Run) -> dict[str, float]:
    lat = sorted(run.latencies)
    return {
        "latency_p50_ms": round(percentile(lat, 50) / 1e6, 2),
        "latency_p99_ms": round(percentile(lat, 99) / 1e6, 2),
        "latency_max_ms": round((lat[-1] if lat else 0) / 1e6, 2),
    }


def _send_metrics(
    run: Run, delivered: int, sent: int, seconds: float, costs: dict[str, float]
) -> dict[str, float]:
    """The figures of a send phase, whichever clients drove it."""
    secs = max(seconds, 1e-9)
    return {
        "deliveries": delivered,
        "seconds": round(secs, 3),
        "deliveries_per_s": round(delivered / secs),
        "server_cpu_us_per_delivery": _cpu_per(costs, delivered),
        "messages_per_s": round(sent / secs, 1),
        **_latency_metrics(run),
        **costs,
    }


def _cpu_per(costs: dict[str, float], deliveries: int) -> float:
    """Server CPU (every process but the bench) per delivery, in microseconds.

    Steadier than a rate when other work shares the machine: it does not count
    time spent waiting for a core.
    """
    servers = sum(v for k, v in costs.items() if k != "cpu_s.bench")
    return round(servers / max(1, deliveries) * 1e6, 2)


def _check_problems(run: Run, clients: list[BenchClient]) -> None:
    for c in clients:
        if c.check is not None:
            run.problems.extend(c.check.problems(c.name))
        if c.total and c.acks != c.total:
            run.problems.append(f"{c.name}: {c.acks} of {c.total} sends acked")


async def fanout(target: Target, run: Run) -> dict[str, float]:
    p = run.params
    t = run.tag
    senders_idx = range(p.senders)
    rx = await _login_all(
        target,
        run,
        [
            (f"{t}r{i}", DeliveryCheck(senders_idx, p.messages, latencies=run.latencies))
            for i in range(p.receivers)
        ],
    )
    tx = await _login_all(
        target,
        run,
        [(f"{t}s{i}", DeliveryCheck(senders_idx, p.messages, own=i)) for i in senders_idx],
    )
    for i, s in enumerate(tx):
        s.index, s.to, s.total = i, GENERAL.encode(), p.messages
    # Senders check what they receive too, but only receivers count as deliveries.
    checks = [c.check for c in rx if c.check is not None]
    sent = p.senders * p.messages
    return await _measured_stream(
        target, run, "fanout", tx, checks, rx + tx, sent, sent * p.receivers
    )


async def direct(target: Target, run: Run) -> dict[str, float]:
    p = run.params
    t = run.tag
    specs: list[tuple[str, DeliveryCheck | None]] = []
    for i in range(p.pairs):
        a, b = 2 * i, 2 * i + 1
        specs.append((f"{t}a{i}", DeliveryCheck((a, b), p.messages, a, run.latencies)))
        specs.append((f"{t}b{i}", DeliveryCheck((a, b), p.messages, b, run.latencies)))
    clients = await _login_all(target, run, specs)
    for i, c in enumerate(clients):
        peer = clients[i ^ 1]
        c.index, c.to, c.total = i, peer.name.encode(), p.messages
    checks = [c.check for c in clients if c.check is not None]
    sent = 2 * p.pairs * p.messages
    return await _measured_stream(target, run, "direct", clients, checks, clients, sent, sent)


def spread_rooms(tag: str, count: int) -> list[str]:
    """``count`` room names whose cluster slots lie near the middles of ``count``
    equal slot ranges, so that any cluster splitting the slots evenly over its
    primaries (as ``start_redis_cluster`` does) holds them as evenly as it can:
    6 rooms are 6 on one shard, 3 + 3 on two, 2 + 2 + 2 on three."""
    names = []
    for k in range(count):
        middle = (2 * k + 1) * SLOTS // (2 * count)
        reach = max(1, SLOTS // (16 * count))
        n = 0
        while True:
            name = f"#{tag}-{k}-{n}"
            if abs(key_slot(hash_tag(KEYS.stream(name)).encode()) - middle) <= reach:
                break
            n += 1
        names.append(name)
    return names


async def rooms(target: Target, run: Run) -> dict[str, float]:
    """Fan-out spread over ``rooms`` public rooms (so over a cluster's shards): sender k
    makes room k and sends to it; receiver j joins room j mod ``rooms``."""
    p = run.params
    t = run.tag
    names = spread_rooms(t, p.rooms)
    rx = await _login_all(
        target,
        run,
        [
            (f"{t}r{j}", DeliveryCheck((j % p.rooms,), p.messages, latencies=run.latencies))
            for j in range(p.receivers)
        ],
    )
    tx = await _login_all(
        target, run, [(f"{t}s{k}", DeliveryCheck((k,), p.messages, own=k)) for k in range(p.rooms)]
    )
    for k, s in enumerate(tx):
        await s.request({"op": "create_room", "room": names[k], "private": False}, p.timeout_s)
        s.index, s.to, s.total = k, names[k].encode(), p.messages
    await bounded(
        [
            _job(c.request, {"op": "join", "room": names[j % p.rooms]}, p.timeout_s)
            for j, c in enumerate(rx)
        ],
        p.concurrency,
    )
    checks = [c.check for c in rx if c.check is not None]
    sent = p.rooms * p.messages
    return await _measured_stream(
        target, run, "rooms", tx, checks, rx + tx, sent, p.receivers * p.messages
    )


async def _measured_stream(
    target: Target,
    run: Run,
    name: str,
    senders: list[BenchClient],
    checks: list[DeliveryCheck],
    everyone: list[BenchClient],
    sent: int,
    expected: int,
) -> dict[str, float]:
    """Send ``sent`` messages, wait for the ``expected`` deliveries that ``checks``
    count, check every client, and report rates, latency and server cost."""
    meter = CostMeter(target.server_pids())
    start, end = await _stream(run, f"{name} {target.label}", senders, checks, expected)
    costs = meter.result()
    _check_problems(run, everyone)
    _close(everyone)
    return _send_metrics(run, sum(c.counted for c in checks), sent, end - start, costs)


async def _create_accounts(target: Target, run: Run, names: list[str]) -> None:
    clients = await _login_all(target, run, [(n, None) for n in names])
    _close(clients)
    await asyncio.sleep(0.1)


async def connect_storm(target: Target, run: Run) -> dict[str, float]:
    """K users with ``unread`` messages waiting log in at once; time until each is synced."""
    p = run.params
    t = run.tag
    poster = (await _login_all(target, run, [(f"{t}p", None)]))[0]
    # A marker first, so each new account's first login leaves its cursor on it.
    poster.write_obj({"op": "send", "to": GENERAL, "text": f"{t} marker"})
    await asyncio.sleep(0.2)
    names = [f"{t}c{i}" for i in range(p.connections)]
    await _create_accounts(target, run, names)
    await asyncio.sleep(1.2)  # redchat saves delivered cursors every 0.5 s
    poster.index, poster.to, poster.total = 0, GENERAL.encode(), p.unread
    poster.pump()
    deadline = time.monotonic() + p.timeout_s
    while poster.acks < p.unread and time.monotonic() < deadline:
        poster.pump()
        await asyncio.sleep(0.01)
    poster.close()
    clients = [BenchClient(run, n, DeliveryCheck((0,), p.unread)) for n in names]
    run.clients.extend(clients)
    meter = CostMeter(target.server_pids())
    times: list[float] = []

    async def storm(c: BenchClient) -> None:
        t0 = monotonic_ns()
        try:
            await login(target, c, c.name, p.timeout_s)
        except (ConnectionError, OSError, TimeoutError) as exc:
            run.problems.append(f"{c.name}: login failed: {exc or type(exc).__name__}")
            return
        times.append((monotonic_ns() - t0) / 1e6)

    start = monotonic_ns()
    with Progress(f"connect {target.label}", len(clients), lambda: len(times)):
        await asyncio.gather(*(storm(c) for c in clients))
    secs = (monotonic_ns() - start) / 1e9
    costs = meter.result()
    for c in clients:
        if not c.live:
            continue
        assert c.check is not None
        unread = c.welcome.get("unread", {}).get(GENERAL)
        if unread != p.unread:
            run.problems.append(f"{c.name}: welcome says {unread} unread, expected {p.unread}")
        run.problems.extend(c.check.problems(c.name))
    _close(clients)
    times.sort()
    return {
        "logins": len(times),
        "seconds": round(secs, 3),
        "logins_per_s": round(len(times) / secs, 1),
        "replayed_per_s": round(sum(c.check.counted for c in clients if c.check) / secs),
        "synced_p50_ms": round(percentile(times, 50), 1),
        "synced_p99_ms": round(percentile(times, 99), 1),
        "synced_max_ms": round(times[-1] if times else 0, 1),
        **costs,
    }


def member_rooms(tag: str, user: int, each: int, pool: int) -> list[str]:
    """The ``each`` rooms of a pool of ``pool`` that user number ``user`` is in:
    ``user``, ``user + 1``, ... modulo ``pool``, so every room gets as many members."""
    return [f"#{tag}-m{(user + k) % pool}" for k in range(each)]


async def _join_rooms(target: Target, run: Run, names: list[str]) -> None:
    """Make ``room_pool`` public rooms (one owner makes them all), then put user number
    i of ``names`` in its ``member_rooms`` of them: each user logs in, joins, leaves."""
    p = run.params
    pool = max(p.room_pool, p.member_rooms)
    owner = (await _login_all(target, run, [(f"{run.tag}o", None)]))[0]
    for k in range(pool):
        room = f"#{run.tag}-m{k}"
        await owner.request({"op": "create_room", "room": room, "private": False}, p.timeout_s)
    owner.close()

    async def one(i: int, name: str) -> None:
        c = BenchClient(run, name)
        await login(target, c, name, p.timeout_s)
        for room in member_rooms(run.tag, i, p.member_rooms, pool):
            await c.request({"op": "join", "room": room}, p.timeout_s)
        c.close()
        joined.append(i)

    joined: list[int] = []
    with Progress(f"join {p.member_rooms} rooms each", len(names), lambda: len(joined)):
        await bounded([_job(one, i, n) for i, n in enumerate(names)], p.concurrency)
    await asyncio.sleep(0.1)


async def idle(target: Target, run: Run) -> dict[str, float]:
    """K logged-in idle connections: resident memory each, per server process. With
    ``member_rooms`` (redchat only), each user is in that many public rooms first."""
    p = run.params
    names = [f"{run.tag}i{i}" for i in range(p.connections)]
    fresh = False
    if p.member_rooms and target.label != "redchat":
        raise ConnectionError(f"{target.label} has no rooms: idle with rooms is redchat only")
    if target.label == "redchat":
        # Accounts first, then fresh gateways: what is left is the cost of connections.
        if p.member_rooms:
            await _join_rooms(target, run, names)
        else:
            await _create_accounts(target, run, names)
        fresh = await asyncio.to_thread(target.restart_gateways)
    await asyncio.sleep(1.0)
    pids = target.server_pids()
    before = {n: rss_kb(pid) for n, pid in pids.items()}
    done: list[BenchClient] = []

    async def one(name: str) -> None:
        c = BenchClient(run, name)
        await login(target, c, name)
        done.append(c)

    start = monotonic_ns()
    with Progress(f"idle {target.label}", len(names), lambda: len(done)):
        await bounded([_job(one, n) for n in names], p.concurrency)
    secs = (monotonic_ns() - start) / 1e9
    await asyncio.sleep(2.0)
    after = {n: rss_kb(pid) for n, pid in pids.items()}
    alive = sum(1 for c in done if not c.closed)
    if alive != len(names):
        run.problems.append(f"{len(names) - alive} idle connection(s) were closed")
    if p.member_rooms and done:
        # After the memory reading: the gateway knows each session's rooms.
        for c in (done[0], done[-1]):
            listed = (await c.request({"op": "rooms"}, p.timeout_s)).get("rooms", [])
            mine = sum(1 for r in listed if r.get("member") and r.get("room") != GENERAL)
            if mine != p.member_rooms:
                run.problems.append(f"{c.name}: in {mine} rooms, expected {p.member_rooms}")
    k = max(1, len(names))
    metrics: dict[str, float] = {
        "connections": alive,
        "rooms_each": p.member_rooms,
        "login_s": round(secs, 2),
        "fresh_processes": 1.0 if fresh else 0.0,
    }
    gws = [n for n in pids if not n.startswith("redis")]
    if gws:
        metrics["rss_kb_per_conn.servers"] = round(sum(after[n] - before[n] for n in gws) / k, 2)
        for n in gws:
            metrics[f"rss_mb.{n}"] = round(after[n] / 1024, 1)
    if "redis" in pids:
        metrics["rss_kb_per_conn.redis"] = round((after["redis"] - before["redis"]) / k, 2)
    _close(done)
    await asyncio.sleep(0.5)
    return metrics


SCENARIOS: Final[dict[str, Callable[[Target, Run], Awaitable[dict[str, float]]]]] = {
    "fanout": fanout,
    "direct": direct,
    "connect": connect_storm,
    "idle": idle,
}
# Scenarios the baseline server cannot run (it knows no rooms): not in ``SCENARIOS``.
REDCHAT_ONLY: Final[dict[str, Callable[[Target, Run], Awaitable[dict[str, float]]]]] = {
    "rooms": rooms,
}


async def run_scenario(target: Target, scenario: str, tag: str, params: Params) -> RunResult:
    run = Run(tag, params)
    result = RunResult(target.label, scenario)
    fn = (SCENARIOS | REDCHAT_ONLY)[scenario]
    if params.client_shape == "streams" and scenario in ("fanout", "direct"):
        from bench import streams

        fn = streams.SCENARIOS[scenario]
    try:
        result.metrics = await fn(target, run)
    except (ConnectionError, OSError, TimeoutError) as exc:
        run.problems.append(f"{type(exc).__name__}: {exc}")
    finally:
        _close(run.clients)
    result.problems = run.problems
    return result

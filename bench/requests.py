"""``redchat-bench requests``: what an HTTP ``POST /send`` costs against a JSON-lines send.

    redchat-bench requests                       # 16 clients, 5 s, 3 runs per framing
    redchat-bench requests --clients 1           # one request at a time: pure latency
    redchat-bench requests --window 8 --json     # 8 in flight per connection

It starts its own redis-server on a free port and ``--gateways`` gateway
processes (``bench.servers.RedchatDeployment``, so never the Redis on 6379), with
production settings except, as in every bench run, the per-connection send cap
and the public-chat rate limit (off). Then, for each framing in turn (the order
alternating between runs, ``--repeat`` runs each, the median reported),
``--clients`` keep-alive connections each send in a closed loop: one request in
flight per connection, or ``--window`` of them (pipelined requests for HTTP,
requests matched by ``rid`` for JSON lines). Acks are counted for ``--seconds``
after ``--warmup`` seconds, and each request's latency is from the first byte
written to its ack parsed.

- JSON lines: each client logs in (``{"op":"login"}``, read until ``synced``),
  then sends ``{"op":"send","to":..,"text":..,"cid":..,"rid":N}`` and waits for
  ``{"type":"ack","rid":N,"id":..}``.
- HTTP/1.1: each client ``POST /connect``s on its connection, then sends
  ``POST /send`` with ``Authorization: Bearer <token>`` and a JSON body
  ``{"to":..,"text":..,"cid":..}`` on the same connection and waits for a 200
  ``{"type":"ack","id":..}``. The client is a minimal one written here (request
  bytes with ``Content-Length``; the answer's status line, headers and
  ``Content-Length`` body), so its own cost stays close to the JSON one.

What is sent: a direct message, not a #general one. A JSON-lines sender is a live
session, so it is delivered every message of the conversations it is in; in
#general each JSON client would get every other client's messages too, a fan-out
the HTTP clients (no live session) never pay, and the comparison would measure
that instead of the framing. So client i of either framing writes to its own
partner user ``<tag>s<i>``, an account made by one JSON-lines login before the
runs and never connected again: both framings do the same store work (one
offline recipient), and a JSON client gets only the echo of its own message,
which is part of what a JSON-lines send costs (and is counted, ``echoes_per_req``).
Both framings send a fresh ``cid`` with each message, as a client that retries
would; every run uses fresh sender accounts.

The two answers leave the gateway differently: an HTTP answer is written at once,
a JSON-lines ack joins the gateway's coalesced writes (``--write-coalesce-s``,
5 ms by default: busy, flushes are at most that far apart). A closed-loop JSON
client is always "busy", so its latency is about one flush interval; to compare
the framings alone, add ``--gateway-arg=--write-coalesce-s=0``.

Figures per framing: requests/s, latency p50 and p99 (ms), and CPU seconds per
1000 requests of the gateways, of the redis-server and of this process (read from
/proc before and after the measured seconds), with the ratio HTTP/JSON. Every ack
must carry an id; an error event, a non-200 answer, a lost connection or a request
still unanswered 10 s after the run are errors: they are printed and the command
exits 1. All of it shares the machine's cores with the bench process itself: run
it alone, e.g. ``flock /tmp/redchat-bench.lock redchat-bench requests``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import sys
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Final

from bench.load import percentile
from bench.report import machine, median_metrics, render_rows, say
from bench.servers import RedchatDeployment, cpu_seconds, raise_fd_limit, run_bench

__all__ = ["main"]

PASSWORD: Final = "bench-pw"
FRAMINGS: Final = ("json", "http")
MESSAGE: Final = b'{"type":"message"'  # events the gateway writes start with their type
DRAIN_S: Final = 10.0  # how long answers to the last requests may take
OPEN_S: Final = 60.0  # how long a connection and its login may take

monotonic_ns = time.monotonic_ns


@dataclass
class Options:
    gateways: int = 1
    uvloop: bool = True
    gateway_args: list[str] = field(default_factory=list)
    clients: int = 16
    window: int = 1
    seconds: float = 5.0
    warmup: float = 1.0
    repeat: int = 3
    text_bytes: int = 32


class Stats:
    """What the clients of one run saw: acks and latencies while measuring, errors always."""

    def __init__(self) -> None:
        self.measuring = False
        self.acks = 0
        self.latencies_ns: list[int] = []
        self.echoes = 0
        self.errors: Counter[str] = Counter()

    def ack(self, latency_ns: int) -> None:
        if self.measuring:
            self.acks += 1
            self.latencies_ns.append(latency_ns)

    def echo(self) -> None:
        if self.measuring:
            self.echoes += 1

    def error(self, what: str) -> None:
        self.errors[what[:200]] += 1


# ---------------------------------------------------------------------------
# Clients: one keep-alive connection each, a closed loop of sends
# ---------------------------------------------------------------------------


class Client(asyncio.Protocol):
    """The closed loop both framings share: ``window`` requests in flight, each
    answer (ack or error) sends the next one until ``stop``."""

    def __init__(self, stats: Stats, window: int, to: str, text: str, name: str) -> None:
        self.stats = stats
        self.window = window
        self.to = to
        self.text = text
        self.name = name
        self.transport: asyncio.Transport | None = None
        self.buf = b""
        self.running = False
        self.in_flight = 0
        self.sent = 0
        self.closed = False
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.drained: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    # -- asyncio.Protocol ----------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if not self.ready.done():
            self.ready.set_exception(ConnectionError(f"{self.name}: closed by the gateway"))
        if self.in_flight:
            self.stats.error(f"connection lost with {self.in_flight} request(s) in flight")
            self.in_flight = 0
        self._check_drained()

    # -- the loop --------------------------------------------------------------------
    def start(self) -> None:
        self.running = True
        for _ in range(self.window):
            self._send_one()

    def stop(self) -> None:
        self.running = False
        self._check_drained()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def _answered(self) -> None:
        self.in_flight -= 1
        if self.running and not self.closed:
            self._send_one()
        else:
            self._check_drained()

    def _check_drained(self) -> None:
        if not self.running and self.in_flight <= 0 and not self.drained.done():
            self.drained.set_result(None)

    def _send_one(self) -> None:
        self.sent += 1
        self.in_flight += 1
        self._write_request(self.sent)

    def _write(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)

    def _cid(self, n: int) -> str:
        return f"{self.name}-{n}"

    def _write_request(self, n: int) -> None:
        raise NotImplementedError

    async def open(self, dep: RedchatDeployment, user: str) -> None:
        raise NotImplementedError


class JsonClient(Client):
    """JSON lines: log in, then ``send`` ops matched to their ``ack`` by rid."""

    def __init__(self, stats: Stats, window: int, to: str, text: str, name: str) -> None:
        super().__init__(stats, window, to, text, name)
        self.pending: dict[int, int] = {}  # rid -> time written (ns)
        self.logged_in = False
        # to and text are plain ASCII names and letters: no escaping needed
        self._head = b'{"op":"send","to":"%s","text":"%s","cid":"' % (to.encode(), text.encode())

    async def open(self, dep: RedchatDeployment, user: str) -> None:
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(OPEN_S):
            await loop.create_connection(lambda: self, dep.host, dep.port)
            login = {"op": "login", "user": user, "password": PASSWORD, "rid": "login"}
            self._write(json.dumps(login).encode() + b"\n")
            await self.ready

    def _write_request(self, n: int) -> None:
        self.pending[n] = monotonic_ns()
        self._write(self._head + b'%s","rid":%d}\n' % (self._cid(n).encode(), n))

    def data_received(self, data: bytes) -> None:
        if self.buf:
            data = self.buf + data
        end = data.rfind(b"\n") + 1
        self.buf = data[end:]
        for line in data[:end].split(b"\n")[:-1]:
            self._line(line)

    def _line(self, line: bytes) -> None:
        if line.startswith(MESSAGE):
            if self.logged_in:
                self.stats.echo()
            return
        now = monotonic_ns()
        try:
            ev = json.loads(line)
        except ValueError:
            self.stats.error(f"json: unreadable line {line[:80]!r}")
            return
        if not isinstance(ev, dict):
            self.stats.error(f"json: not an object: {line[:80]!r}")
            return
        kind, rid = ev.get("type"), ev.get("rid")
        if not self.logged_in:
            if kind == "synced":
                self.logged_in = True
                if not self.ready.done():
                    self.ready.set_result(None)
            elif kind == "error" and not self.ready.done():
                self.ready.set_exception(RuntimeError(f"{self.name}: login failed: {ev}"))
            return
        if kind not in ("ack", "error"):
            return  # an event no request asked for (a notice, say): not an answer
        sent = self.pending.pop(rid, None) if isinstance(rid, int) else None
        if sent is None:
            self.stats.error(f"json: {kind} for no request in flight: {line[:120]!r}")
            return
        if kind == "ack":
            if isinstance(ev.get("id"), str) and ev["id"]:
                self.stats.ack(now - sent)
            else:
                self.stats.error(f"json: ack without an id: {line[:120]!r}")
        else:
            self.stats.error(f"json: error {ev.get('code')}: {ev.get('message')}")
        self._answered()


class HttpClient(Client):
    """HTTP/1.1, kept alive: ``POST /connect`` once, then ``POST /send`` requests,
    pipelined when the window is over 1 (answers come in order)."""

    def __init__(self, stats: Stats, window: int, to: str, text: str, name: str) -> None:
        super().__init__(stats, window, to, text, name)
        self.sent_at: deque[int] = deque()
        self.token = ""
        self.host = b""
        self.on_answer: Callable[[int, dict[bytes, bytes], bytes], None] = self._connected
        self._body_head = b'{"to":"%s","text":"%s","cid":"' % (to.encode(), text.encode())
        self._head = b""

    async def open(self, dep: RedchatDeployment, user: str) -> None:
        loop = asyncio.get_running_loop()
        self.host = f"{dep.host}:{dep.port}".encode()
        async with asyncio.timeout(OPEN_S):
            await loop.create_connection(lambda: self, dep.host, dep.port)
            body = json.dumps({"user": user, "password": PASSWORD}).encode()
            self._write(self._request(b"/connect", b"", body))
            await self.ready
        self._head = b"Authorization: Bearer %s\r\n" % self.token.encode()

    def _request(self, path: bytes, extra_headers: bytes, body: bytes) -> bytes:
        return (
            b"POST %s HTTP/1.1\r\nHost: %s\r\n%sContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (path, self.host, extra_headers, len(body), body)
        )

    def _write_request(self, n: int) -> None:
        body = self._body_head + self._cid(n).encode() + b'"}'
        self.sent_at.append(monotonic_ns())
        self._write(self._request(b"/send", self._head, body))

    def data_received(self, data: bytes) -> None:
        buf = self.buf + data if self.buf else data
        while True:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                break
            head = buf[:end].split(b"\r\n")
            headers: dict[bytes, bytes] = {}
            for line in head[1:]:
                name, _, value = line.partition(b":")
                headers[name.strip().lower()] = value.strip()
            if b"content-length" not in headers:
                self._broken(f"http: an answer without Content-Length: {buf[:200]!r}")
                return
            length = int(headers[b"content-length"])
            if len(buf) < end + 4 + length:
                break
            body = buf[end + 4 : end + 4 + length]
            buf = buf[end + 4 + length :]
            parts = head[0].split(b" ", 2)
            try:
                if not parts[0].startswith(b"HTTP/1."):
                    raise ValueError(parts[0])
                status = int(parts[1])
            except (IndexError, ValueError):
                self._broken(f"http: not a status line: {head[0][:100]!r}")
                return
            if headers.get(b"connection", b"").lower() == b"close":
                self.stats.error(f"http: the gateway closes the connection after a {status}")
            self.on_answer(status, headers, body)
        self.buf = buf

    def _broken(self, what: str) -> None:
        self.stats.error(what)
        self.buf = b""
        self.close()

    def _connected(self, status: int, headers: dict[bytes, bytes], body: bytes) -> None:
        try:
            obj = json.loads(body)
            token = obj["token"] if status == 200 else None
        except (ValueError, KeyError, TypeError):
            token = None
        if not isinstance(token, str) or not token:
            err = RuntimeError(f"{self.name}: POST /connect gave {status} {body[:200]!r}")
            if not self.ready.done():
                self.ready.set_exception(err)
            return
        self.token = token
        self.on_answer = self._acked
        if not self.ready.done():
            self.ready.set_result(None)

    def _acked(self, status: int, headers: dict[bytes, bytes], body: bytes) -> None:
        now = monotonic_ns()
        if not self.sent_at:
            self.stats.error(f"http: an answer to no request: {status} {body[:120]!r}")
            return
        sent = self.sent_at.popleft()
        try:
            obj = json.loads(body)
        except ValueError:
            obj = None
        if not isinstance(obj, dict):
            self.stats.error(f"http: {status} with a body that is no JSON object: {body[:120]!r}")
        elif status != 200:
            self.stats.error(f"http: {status} {obj.get('code')}: {obj.get('message')}")
        elif obj.get("type") != "ack" or not isinstance(obj.get("id"), str) or not obj["id"]:
            self.stats.error(f"http: 200 but no ack with an id: {body[:120]!r}")
        else:
            self.stats.ack(now - sent)
        self._answered()


CLIENTS: Final[dict[str, type[Client]]] = {"json": JsonClient, "http": HttpClient}


# ---------------------------------------------------------------------------
# Runs
# ---------------------------------------------------------------------------


async def _open_all(
    dep: RedchatDeployment, make: Callable[[int], Client], users: list[str]
) -> list[Client]:
    clients = [make(i) for i in range(len(users))]
    gate = asyncio.Semaphore(64)

    async def one(client: Client, user: str) -> None:
        async with gate:
            await client.open(dep, user)

    try:
        await asyncio.gather(*(one(c, u) for c, u in zip(clients, users, strict=True)))
    except BaseException:
        for c in clients:
            c.close()
        raise
    return clients


async def make_partners(dep: RedchatDeployment, names: list[str]) -> None:
    """Create the accounts the direct messages go to: one login each, then gone."""
    stats = Stats()
    clients = await _open_all(dep, lambda i: JsonClient(stats, 1, names[i], "", f"p{i}"), names)
    for c in clients:
        c.close()
    await asyncio.sleep(0.2)  # let the gateways see them go: the partners are offline


def _cpu(pids: dict[str, list[int]]) -> dict[str, float]:
    out = {name: sum(cpu_seconds(p) for p in ps) for name, ps in pids.items()}
    out["bench"] = time.process_time()
    return out


async def run_once(
    dep: RedchatDeployment, framing: str, users: list[str], partners: list[str], opts: Options
) -> tuple[dict[str, float], Counter[str]]:
    """One framing, once: its figures and its errors."""
    stats = Stats()
    kind = CLIENTS[framing]
    text = ("bench " + "x" * opts.text_bytes)[: max(1, opts.text_bytes)]
    clients = await _open_all(
        dep,
        lambda i: kind(stats, opts.window, partners[i], text, f"{users[i]}"),
        users,
    )
    pids: dict[str, list[int]] = {"gateways": dep.gateway_pids()}
    if dep.redis is not None:
        pids["redis"] = [dep.redis.pid]
    try:
        for c in clients:
            c.start()
        await asyncio.sleep(opts.warmup)
        cpu0, t0 = _cpu(pids), time.monotonic()
        stats.measuring = True
        await asyncio.sleep(opts.seconds)
        stats.measuring = False
        cpu1, t1 = _cpu(pids), time.monotonic()
        for c in clients:
            c.stop()
        done, _ = await asyncio.wait([c.drained for c in clients], timeout=DRAIN_S)
        late = sum(c.in_flight for c in clients if c.drained not in done)
        if late:
            stats.error(f"{late} request(s) unanswered {DRAIN_S:g} s after the run")
    finally:
        for c in clients:
            c.close()
    secs = max(t1 - t0, 1e-9)
    lat = sorted(stats.latencies_ns)
    n = stats.acks
    per_k = 1000 / n if n else 0.0
    metrics: dict[str, float] = {
        "requests": n,
        "requests_per_s": round(n / secs, 1),
        "latency_p50_ms": round(percentile(lat, 50) / 1e6, 3),
        "latency_p99_ms": round(percentile(lat, 99) / 1e6, 3),
        "latency_max_ms": round((lat[-1] if lat else 0) / 1e6, 3),
    }
    for name in cpu0:
        used = cpu1[name] - cpu0[name]
        metrics[f"{name}_cpu_s_per_1k"] = round(used * per_k, 4)
        metrics[f"{name}_cores_busy"] = round(used / secs, 2)
    metrics["echoes_per_req"] = round(stats.echoes / n, 3) if n else 0.0
    return metrics, stats.errors


async def run(opts: Options) -> dict[str, Any]:
    dep = RedchatDeployment(opts.gateways, opts.uvloop, opts.gateway_args)
    tag = secrets.token_hex(3)
    partners = [f"{tag}s{i}" for i in range(opts.clients)]
    runs: dict[str, list[dict[str, float]]] = {f: [] for f in FRAMINGS}
    errors: Counter[str] = Counter()
    try:
        await asyncio.to_thread(dep.start)
        await make_partners(dep, partners)
        for r in range(opts.repeat):
            order = FRAMINGS if r % 2 == 0 else FRAMINGS[::-1]
            for framing in order:
                users = [f"{tag}{r}{framing[0]}{i}" for i in range(opts.clients)]
                metrics, errs = await run_once(dep, framing, users, partners, opts)
                runs[framing].append(metrics)
                errors.update(f"{framing}: {e}" for e in errs.elements())
                say(
                    f"run {r + 1}/{opts.repeat} {framing}: {metrics['requests_per_s']:,.0f}"
                    f" req/s, p50 {metrics['latency_p50_ms']:.2f} ms"
                    + (f", {sum(errs.values())} error(s)" if errs else "")
                )
    except BaseException:
        logs = dep.logs()
        if logs.strip():
            print(logs, file=sys.stderr)
        raise
    finally:
        await asyncio.to_thread(dep.stop)
    summary = {f: median_metrics(rs, 4) for f, rs in runs.items()}
    ratio = {
        k: round(v / summary["json"][k], 3)
        for k, v in summary["http"].items()
        if summary["json"].get(k)
    }
    return {
        "options": asdict(opts),
        "machine": machine(),
        "runs": runs,
        "summary": summary,
        "ratio_http_to_json": ratio,
        "ok": not errors,
        "errors": [{"what": what, "count": n} for what, n in errors.most_common()],
    }


# ---------------------------------------------------------------------------
# Output
# ---------------------------------------------------------------------------

ROWS: Final = (
    ("requests_per_s", "requests/s"),
    ("latency_p50_ms", "latency p50, ms"),
    ("latency_p99_ms", "latency p99, ms"),
    ("latency_max_ms", "latency max, ms"),
    ("gateways_cpu_s_per_1k", "gateway CPU s / 1000 req"),
    ("redis_cpu_s_per_1k", "redis CPU s / 1000 req"),
    ("bench_cpu_s_per_1k", "bench CPU s / 1000 req"),
    ("gateways_cores_busy", "gateway cores busy"),
    ("redis_cores_busy", "redis cores busy"),
    ("bench_cores_busy", "bench cores busy"),
    ("echoes_per_req", "echo events per request"),
)


def _fmt(v: float | None) -> str:
    if v is None:
        return "-"
    if abs(v) >= 100:
        return f"{v:,.0f}"
    if abs(v) >= 1:
        return f"{v:,.2f}"
    return f"{v:.4f}".rstrip("0").rstrip(".") if v else "0"


def table(summary: dict[str, dict[str, float]], ratio: dict[str, float]) -> str:
    rows = [["figure", "json", "http", "http/json"]]
    for key, label in ROWS:
        if key not in summary["json"] and key not in summary["http"]:
            continue
        rows.append(
            [
                label,
                _fmt(summary["json"].get(key)),
                _fmt(summary["http"].get(key)),
                f"{ratio[key]:.2f}x" if key in ratio else "-",
            ]
        )
    return render_rows(rows)


def _positive(kind: type[int] | type[float]) -> Callable[[str], Any]:
    def parse(raw: str) -> Any:
        value = kind(raw)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be above 0: {raw}")
        return value

    return parse


def _parser() -> argparse.ArgumentParser:
    d = Options()
    ap = argparse.ArgumentParser(
        prog="redchat-bench requests",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--json", action="store_true", help="print the results as JSON")
    g = ap.add_argument_group("deployment")
    g.add_argument("--gateways", type=_positive(int), default=d.gateways)
    g.add_argument("--uvloop", action=argparse.BooleanOptionalAction, default=d.uvloop)
    g.add_argument("--gateway-arg", action="append", default=[], metavar="ARG")
    load = ap.add_argument_group("load")
    load.add_argument("--clients", type=_positive(int), default=d.clients, help="connections")
    load.add_argument(
        "--window", type=_positive(int), default=d.window, help="requests in flight each"
    )
    load.add_argument("--seconds", type=_positive(float), default=d.seconds, help="measured")
    load.add_argument("--warmup", type=float, default=d.warmup, help="seconds before measuring")
    load.add_argument("--repeat", type=_positive(int), default=d.repeat, help="runs per framing")
    load.add_argument("--text-bytes", type=_positive(int), default=d.text_bytes)
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    opts = Options(
        gateways=args.gateways,
        uvloop=args.uvloop,
        gateway_args=args.gateway_arg,
        clients=args.clients,
        window=args.window,
        seconds=args.seconds,
        warmup=max(0.0, args.warmup),
        repeat=args.repeat,
        text_bytes=args.text_bytes,
    )
    limit = raise_fd_limit()
    if limit < 2 * opts.clients + 100:
        print(f"redchat-bench: open-file limit {limit} too low; raise ulimit -n", file=sys.stderr)
        return 2
    report = run_bench(run(opts))
    if args.json:
        print(json.dumps(report, indent=2))
        return 0 if report["ok"] else 1
    m = report["machine"]
    print(
        f"\nredchat-bench requests: {opts.clients} keep-alive connection(s) per framing,"
        f" window {opts.window}, {opts.seconds:g} s after {opts.warmup:g} s warm-up,"
        f" median of {opts.repeat} run(s); {opts.gateways} gateway(s),"
        f" {'uvloop' if opts.uvloop else 'asyncio'}"
    )
    print(f"machine: {m['cpu']}, {m['cores']} cores; Python {m['python']}\n")
    print(table(report["summary"], report["ratio_http_to_json"]))
    print()
    for framing in FRAMINGS:
        rates = ", ".join(f"{r['requests_per_s']:,.0f}" for r in report["runs"][framing])
        print(f"{framing} runs, requests/s: {rates}")
    total = sum(r["requests"] for rs in report["runs"].values() for r in rs)
    if report["ok"]:
        print(f"check: OK, {total:,.0f} acks counted, each with an id; no errors")
    else:
        count = sum(e["count"] for e in report["errors"])
        print(f"check: FAILED, {count} error(s):")
        for e in report["errors"][:30]:
            print(f"  {e['count']} x {e['what']}")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())

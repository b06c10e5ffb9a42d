"""``redchat-bench attacks``: what hostile clients cost everyone else, measured.

    redchat-bench attacks                        # all five, a few minutes
    redchat-bench attacks --only status,junk     # some of them
    redchat-bench attacks --json

It starts its own redis-server on a free port and ``--gateways`` gateway processes
(``bench.servers.RedchatDeployment``, so never the Redis on 6379), with production
password hashing (``--scrypt-n 16384``) and, as in every bench run, the
per-connection send cap and the public-chat rate limit off (REDCHAT_CONN_SEND_RATE=0,
REDCHAT_RATE_LIMIT=0). Each figure stands next to a reference without the attack:

1. status: another user's send-to-ack latency (p50, p99, max over ``--sends``
   sends to #general, one at a time, for at most ``--send-seconds``) while 0, 1,
   4 and 16 connections of an attacker loop ``{"op":"status"}`` as fast as they
   can (``--window`` requests in flight each). The attacker's user has ``--dms``
   unread direct messages in one conversation, sent through the gateway first.
   Every attack connection is put on the victim's gateway: the worst case.
2. login: a real user's login (connect to ``welcome``) and the answers it gets,
   while ``--flooders`` connections send wrong passwords, every other one for the
   user's own name and the rest for other existing names, one attempt per
   connection: from one address, from a fresh address each time (127.1.x.y, a
   botnet), and from the user's own address (a shared NAT). The user logs in from
   127.0.0.1, where it logged in before; throttle counters are reset in between.
3. memory: the gateways' VmRSS while ``--stallers`` connections (SO_RCVBUF 4 KiB)
   log in with ``since: {"#general": "0-0"}`` on a #general of ``--general``
   messages and never read: before, at the peak, after 10 s, after closing them;
   and whether and when the gateway cut them off (``--stall-timeout-s``).
4. junk: the longest event-loop stall of a gateway while ``--junk-clients``
   connections, never logged in, each write ``--junk-mb`` MB of empty lines,
   random bytes, one endless line, or pings they never read. Measured from
   outside as the largest round trip of a logged-in client on that gateway
   pinging every 10 ms (and of one on the other gateway, for comparison).
5. dms: login and ``status`` times of a user with ``--conversations`` direct
   conversations, each with one message from a different user. Creating that many
   accounts through the gateway is scrypt-bound and throttled, so they are written
   straight into Redis as the send script leaves them: the sender's account hash
   (with a password nothing matches), one stream entry with ``n`` = 1, the ``seq``
   counter, and the conversation in both users' ``dms`` sorted sets (no sender
   logs, no publish: the user is offline). The first login has every
   conversation unread and replays them all; the second has nothing unread.
   Then (5b) the attack of 1 again, by this user: ``--attackers`` up to 4
   connections looping status, one request in flight each.

Gateway processes are found from /proc (the children of a supervisor if one was
started), and a connection's gateway from the kernel's socket tables. Every
figure is a latency on a shared CPU: run it alone, e.g.
``flock /tmp/redchat-bench.lock redchat-bench attacks``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import random
import re
import socket
import struct
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final, TypeVar

from redis.asyncio import Redis

from bench.load import percentile
from bench.report import fmt_value, render_rows, say
from bench.servers import RedchatDeployment, cpu_seconds, raise_fd_limit, rss_kb, run_bench

__all__ = ["main"]

PREFIX: Final = "bench"  # the --prefix RedchatDeployment gives its gateways
PASSWORD: Final = "bench-pw"
GENERAL: Final = "#general"
HOST: Final = "127.0.0.1"
PHASES: Final = ("status", "login", "memory", "junk", "dms")
RUN_ORDER: Final = ("memory", "junk", "status", "login", "dms")  # memory wants #general fresh
MESSAGE: Final = b'{"type":"message"'
FLOOD_REQUEST: Final = b'{"op":"status","rid":"f"}\n'
FLOOD_TAIL: Final = b',"rid":"f"}'
STATUS: Final = b'{"type":"status"'
TCP_ESTABLISHED: Final = 1
STALLER_RCVBUF: Final = 4096
POUR_CHUNK: Final = 1 << 16

monotonic_ns = time.monotonic_ns
T = TypeVar("T")


def _ms(ns: float) -> float:
    return round(ns / 1e6, 2)


# ---------------------------------------------------------------------------
# A client
# ---------------------------------------------------------------------------


class Peer(asyncio.Protocol):
    """One JSON-lines connection: requests answered by rid, a status flood, pings.

    Message events are counted, never parsed; status replies of the flood (rid
    ``"f"``) are counted from their last bytes.
    """

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = b""
        self.closed = False
        self.next_rid = 0
        self.waiting: dict[str, tuple[str, asyncio.Future[dict[str, Any]]]] = {}
        self.welcome: dict[str, Any] = {}
        self.welcome_ns = 0
        self.messages = 0
        self.unasked: list[dict[str, Any]] = []  # events no request waited for
        # the status flood
        self.flooding = False
        self.in_flight = 0
        self.flood_replies = 0
        self.flood_errors = 0
        # pings
        self.next_ping = 0
        self.pings: dict[int, int] = {}  # rid -> send time (ns)
        self.rtts_ns: list[int] = []

    # -- asyncio.Protocol --------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        for _, fut in self.waiting.values():
            if not fut.done():
                fut.set_exception(ConnectionError("closed by the gateway"))
        self.waiting.clear()

    def data_received(self, data: bytes) -> None:
        if self.buf:
            data = self.buf + data
        end = data.rfind(b"\n") + 1
        self.buf = data[end:]
        for line in data[:end].split(b"\n")[:-1]:
            self._line(line)

    def _line(self, line: bytes) -> None:
        if line.startswith(MESSAGE):
            self.messages += 1
            return
        if line.endswith(FLOOD_TAIL):
            self._flood_reply(ok=line.startswith(STATUS))
            return
        try:
            ev = json.loads(line)
        except ValueError:
            self.unasked.append({"type": "unreadable", "line": line[:200].decode(errors="replace")})
            return
        if not isinstance(ev, dict):
            return
        ev["_bytes"] = len(line) + 1
        kind, rid = ev.get("type"), ev.get("rid")
        if kind == "welcome":
            self.welcome, self.welcome_ns = ev, monotonic_ns()
        if kind == "pong" and isinstance(rid, int):
            sent = self.pings.pop(rid, None)
            if sent is not None:
                self.rtts_ns.append(monotonic_ns() - sent)
            return
        wait = self.waiting.get(rid) if isinstance(rid, str) else None
        if wait is None:
            if kind != "welcome":
                self.unasked.append(ev)
            return
        final, fut = wait
        if kind == final or kind == "error":
            del self.waiting[str(rid)]
            if not fut.done():
                fut.set_result(ev)

    # -- requests ------------------------------------------------------------------
    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    async def request(
        self, obj: dict[str, Any], final: str, timeout_s: float = 60.0
    ) -> dict[str, Any]:
        """Send ``obj`` with a fresh rid; the first reply of type ``final`` or an error."""
        if self.closed:
            raise ConnectionError("connection closed")
        self.next_rid += 1
        rid = f"r{self.next_rid}"
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.waiting[rid] = (final, fut)
        self.write(json.dumps({**obj, "rid": rid}).encode() + b"\n")
        try:
            async with asyncio.timeout(timeout_s):
                return await fut
        finally:
            self.waiting.pop(rid, None)

    async def login(
        self, user: str, password: str = PASSWORD, since: dict[str, str] | None = None
    ) -> dict[str, Any]:
        """``synced``, or the error that ended the login."""
        obj: dict[str, Any] = {"op": "login", "user": user, "password": password}
        if since:
            obj["since"] = since
        return await self.request(obj, "synced", timeout_s=300.0)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    # -- the status flood ------------------------------------------------------------
    def start_flood(self, window: int) -> None:
        self.flooding = True
        for _ in range(window):
            self._flood_one()

    def stop_flood(self) -> None:
        self.flooding = False

    def _flood_one(self) -> None:
        self.in_flight += 1
        self.write(FLOOD_REQUEST)

    def _flood_reply(self, ok: bool) -> None:
        self.in_flight -= 1
        if ok:
            self.flood_replies += 1
        else:
            self.flood_errors += 1
        if self.flooding:
            self._flood_one()

    # -- pings -----------------------------------------------------------------------
    async def ping_every(self, interval_s: float, stop: asyncio.Event) -> None:
        while not stop.is_set() and not self.closed:
            self.next_ping += 1
            self.pings[self.next_ping] = monotonic_ns()
            self.write(b'{"op":"ping","rid":%d}\n' % self.next_ping)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(interval_s):
                    await stop.wait()

    def worst_rtt_ms(self) -> float:
        """The longest round trip since the last reset; a ping still unanswered
        counts for as long as it has waited."""
        now = monotonic_ns()
        waits = self.rtts_ns + [now - sent for sent in self.pings.values()]
        return _ms(max(waits, default=0))

    def rtt_ms(self, q: float) -> float:
        return _ms(percentile(sorted(self.rtts_ns), q))

    def reset_pings(self) -> None:
        self.pings.clear()
        self.rtts_ns.clear()


# ---------------------------------------------------------------------------
# Which gateway is which
# ---------------------------------------------------------------------------


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(p) for p in f.read().split()]
    except OSError:
        return []


def _hex_addr(raw: str) -> tuple[str, int]:
    ip, port = raw.split(":")
    if len(ip) == 8:
        return socket.inet_ntop(socket.AF_INET, struct.pack("<I", int(ip, 16))), int(port, 16)
    words = struct.pack("<4I", *(int(ip[i : i + 8], 16) for i in range(0, 32, 8)))
    return socket.inet_ntop(socket.AF_INET6, words), int(port, 16)


class Gateways:
    """The gateway processes of a deployment: their pids, memory, CPU, and which of
    them holds a given client connection."""

    def __init__(self, dep: RedchatDeployment) -> None:
        self.dep = dep

    def pids(self) -> dict[str, int]:
        """Name -> pid; a supervisor's children when it has any (named NAME.1 ...)."""
        out: dict[str, int] = {}
        for name, pid in self.dep.server_pids().items():
            if name == "redis":
                continue
            kids = _children(pid)
            if kids:
                out.update({f"{name}.{i}": kid for i, kid in enumerate(kids, 1)})
            else:
                out[name] = pid
        return out

    def names(self) -> list[str]:
        return sorted(self.pids())

    def rss_kb(self) -> dict[str, int]:
        return {name: rss_kb(pid) for name, pid in self.pids().items()}

    def cpu_s(self) -> dict[str, float]:
        return {name: cpu_seconds(pid) for name, pid in self.pids().items()}

    def which(self, client: tuple[str, int]) -> str | None:
        """The gateway holding the server side of the connection from ``client``
        (its address and port), or None if no gateway has accepted it yet."""
        inode = None
        for table in ("/proc/net/tcp", "/proc/net/tcp6"):
            with contextlib.suppress(OSError), open(table) as f:
                next(f, None)
                for line in f:
                    parts = line.split()
                    local, remote = _hex_addr(parts[1]), _hex_addr(parts[2])
                    if local[1] != self.dep.port or remote[1] != client[1]:
                        continue
                    if remote[0] in (client[0], "::ffff:" + client[0]):
                        inode = parts[9]
        if inode is None:
            return None
        link = f"socket:[{inode}]"
        for name, pid in self.pids().items():
            with contextlib.suppress(OSError):
                for fd in os.listdir(f"/proc/{pid}/fd"):
                    with contextlib.suppress(OSError):
                        if os.readlink(f"/proc/{pid}/fd/{fd}") == link:
                            return name
        return None

    async def wait_which(self, client: tuple[str, int], timeout_s: float = 3.0) -> str | None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            found = await asyncio.to_thread(self.which, client)
            if found is not None:
                return found
            await asyncio.sleep(0.02)
        return None


# ---------------------------------------------------------------------------
# Connections
# ---------------------------------------------------------------------------


async def open_peer(dep: RedchatDeployment, local_ip: str = HOST) -> Peer:
    peer = Peer()
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(10):
        await loop.create_connection(lambda: peer, dep.host, dep.port, local_addr=(local_ip, 0))
    return peer


def _sockname(peer: Peer) -> tuple[str, int]:
    assert peer.transport is not None
    name = peer.transport.get_extra_info("sockname")
    return str(name[0]), int(name[1])


async def open_raw(dep: RedchatDeployment, rcvbuf: int = 0) -> socket.socket:
    """A bare non-blocking socket (for clients that must not read, or pour bytes)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        if rcvbuf:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.setblocking(False)
        async with asyncio.timeout(10):
            await asyncio.get_running_loop().sock_connect(sock, (dep.host, dep.port))
    except BaseException:
        sock.close()
        raise
    return sock


def tcp_state(sock: socket.socket) -> int:
    """The kernel's TCP state of our side (1 established, 7 closed, 8 close-wait)."""
    try:
        return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)[0]
    except OSError:
        return 0


async def place(
    gws: Gateways,
    want: str,
    make: Callable[[], Awaitable[T]],
    where: Callable[[T], tuple[str, int]],
    close: Callable[[T], None],
    tries: int = 100,
) -> T:
    """A connection that landed on gateway ``want`` (SO_REUSEPORT picks by the
    connection's addresses, so other ones are closed and a new one tried)."""
    for _ in range(tries):
        conn = await make()
        if await gws.wait_which(where(conn)) == want:
            return conn
        close(conn)
    raise RuntimeError(f"no connection landed on {want} in {tries} tries")


def _raw_where(sock: socket.socket) -> tuple[str, int]:
    name = sock.getsockname()
    return str(name[0]), int(name[1])


# ---------------------------------------------------------------------------
# Results
# ---------------------------------------------------------------------------

Value = float | int | str


@dataclass
class Section:
    number: str
    title: str
    columns: list[str]
    rows: list[tuple[str, dict[str, Value]]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, case: str, **values: Value) -> None:
        self.rows.append((case, values))

    def table(self) -> str:
        head = ["case", *self.columns]
        rows = [head] + [
            [case] + [fmt_value(v.get(c)) for c in self.columns] for case, v in self.rows
        ]
        return render_rows(rows)


def _lat(ns: list[int]) -> dict[str, Value]:
    s = sorted(ns)
    return {
        "p50_ms": _ms(percentile(s, 50)),
        "p99_ms": _ms(percentile(s, 99)),
        "max_ms": _ms(s[-1] if s else 0),
    }


# ---------------------------------------------------------------------------
# The measurements
# ---------------------------------------------------------------------------


@dataclass
class Options:
    gateways: int = 2
    uvloop: bool = True
    gateway_args: list[str] = field(default_factory=list)
    scrypt_n: int = 1 << 14
    stall_timeout_s: float = 0.0  # 0: the gateway's default
    only: tuple[str, ...] = PHASES
    sends: int = 200
    send_gap_s: float = 0.005
    send_seconds: float = 30.0
    attackers: tuple[int, ...] = (1, 4, 16)
    window: int = 4
    dms: int = 10_000
    flooders: int = 50
    decoys: int = 50
    logins: int = 20
    login_seconds: float = 20.0
    stallers: int = 10
    general: int = 10_000
    junk_clients: int = 4
    junk_mb: float = 4.0
    junk_timeout_s: float = 60.0
    conversations: int = 10_000


class Attacks:
    """One deployment, the clients opened on it, and the five measurements."""

    def __init__(self, opts: Options) -> None:
        self.opts = opts
        extra = [f"--scrypt-n={opts.scrypt_n}", *opts.gateway_args]
        if opts.stall_timeout_s:
            extra.append(f"--stall-timeout-s={opts.stall_timeout_s:g}")
        self.dep = RedchatDeployment(opts.gateways, opts.uvloop, extra)
        self.gws = Gateways(self.dep)
        self.redis: Redis | None = None
        self.peers: list[Peer] = []
        self.socks: list[socket.socket] = []
        self.problems: list[str] = []
        self.sections: list[Section] = []  # filled as the phases go: a failure keeps the rest

    def section(self, number: str, title: str, columns: list[str]) -> Section:
        sec = Section(number, title, columns)
        self.sections.append(sec)
        return sec

    @property
    def stall_timeout_s(self) -> float:
        return self.opts.stall_timeout_s or 30.0

    # -- plumbing ------------------------------------------------------------------
    async def peer(self, local_ip: str = HOST) -> Peer:
        p = await open_peer(self.dep, local_ip)
        self.peers.append(p)
        return p

    async def peer_on(self, gateway: str) -> Peer:
        return await place(self.gws, gateway, self.peer, _sockname, Peer.close)

    async def raw_on(self, gateway: str, rcvbuf: int = 0) -> socket.socket:
        async def make() -> socket.socket:
            sock = await open_raw(self.dep, rcvbuf)
            self.socks.append(sock)
            return sock

        return await place(self.gws, gateway, make, _raw_where, socket.socket.close)

    async def logged_in(
        self, user: str, peer: Peer | None = None, since: dict[str, str] | None = None
    ) -> Peer:
        p = peer or await self.peer()
        ev = await p.login(user, since=since)
        if ev.get("type") != "synced":
            raise RuntimeError(f"login of {user} failed: {ev}")
        return p

    async def create_accounts(self, names: Sequence[str], concurrency: int = 4) -> None:
        sem = asyncio.Semaphore(concurrency)

        async def one(name: str) -> None:
            async with sem:
                (await self.logged_in(name)).close()

        await asyncio.gather(*(one(n) for n in names))

    async def send_many(self, sender: Peer, to: str, count: int, window: int = 64) -> str:
        """``count`` messages through the gateway; the id of the last one."""
        sem = asyncio.Semaphore(window)
        last = "0-0"

        async def one(i: int) -> None:
            nonlocal last
            async with sem:
                ev = await sender.request({"op": "send", "to": to, "text": f"seed {i}"}, "ack")
            if ev.get("type") != "ack":
                raise RuntimeError(f"seeding {to}: {ev}")
            last = max(last, str(ev["id"]), key=_id_key)

        await asyncio.gather(*(one(i) for i in range(count)))
        return last

    def close_all(self) -> None:
        for p in self.peers:
            p.close()
        for s in self.socks:
            s.close()
        self.peers.clear()
        self.socks.clear()

    async def run(self) -> list[Section]:
        """Start the deployment, run the phases asked for, stop it; the sections filled."""
        await asyncio.to_thread(self.dep.start)
        self.redis = Redis.from_url(self.dep.redis_url, decode_responses=True)
        try:
            phases: dict[str, Callable[[], Awaitable[None]]] = {
                "status": self.status_flood,
                "login": self.login_flood,
                "memory": self.memory,
                "junk": self.junk,
                "dms": self.many_dms,
            }
            for name in RUN_ORDER:
                if name not in self.opts.only:
                    continue
                started = time.monotonic()
                say(f"{name} ...")
                try:
                    await phases[name]()
                except (OSError, ConnectionError, TimeoutError, RuntimeError) as exc:
                    self.problems.append(f"{name}: {type(exc).__name__}: {exc}")
                finally:
                    self.close_all()
                say(f"{name} done in {time.monotonic() - started:.0f} s")
                await asyncio.sleep(0.5)
        finally:
            self.close_all()
            await self.redis.aclose()
            self.problems += self.gateway_log_problems()
            await asyncio.to_thread(self.dep.stop)
        return sorted(self.sections, key=lambda sec: sec.number)

    def log_marks(self) -> dict[Path, int]:
        """Where each gateway's log ends now (for ``logged_since``)."""
        return {p: p.stat().st_size for p in sorted(Path(self.dep.dir).glob("gw*.log"))}

    def logged_since(self, marks: dict[Path, int]) -> dict[str, int]:
        """What the gateways logged since ``marks`` (they log WARNING and up), by
        level and first word of the message: {"WARNING slow_consumer": 4}."""
        kinds: Counter[str] = Counter()
        for path in sorted(Path(self.dep.dir).glob("gw*.log")):
            with open(path, errors="replace") as f:
                f.seek(marks.get(path, 0))
                for line in f:
                    m = re.match(r"\S+ \S+ (\w+) \[[^]]*\] [\w.]+: (\S+)", line)
                    if m is not None:
                        kinds[f"{m.group(1)} {m.group(2)}"] += 1
        return dict(kinds)

    def gateway_log_problems(self) -> list[str]:
        """Tracebacks and errors the gateways logged (their logs go with the run)."""
        out = []
        for path in sorted(Path(self.dep.dir).glob("gw*.log")):
            text = path.read_text(errors="replace")
            for m in re.finditer(r"^.*\b(ERROR|CRITICAL)\b.*$|^Traceback.*$", text, re.M):
                out.append(f"{path.stem} log: {m.group(0)[:300]}")
        return out[:20]

    # -- 1. status flood -------------------------------------------------------------
    async def status_flood(self) -> None:
        o = self.opts
        sec = self.section(
            "1",
            f"another user's send-to-ack latency ({o.sends} sends to #general) while an"
            f" attacker with {o.dms:,} unread DMs floods status",
            ["sends", "p50_ms", "p99_ms", "max_ms", "status_per_s", "gw_cpu_pct"],
        )
        victim = await self.logged_in("victim")
        home = await self.gws.wait_which(_sockname(victim))
        if home is None:
            raise RuntimeError("cannot tell the victim's gateway")
        await self.create_accounts(["attacker"])
        poster = await self.logged_in("attackpeer")
        last = await self.send_many(poster, "attacker", o.dms)
        poster.close()
        attackers = []
        for _ in range(max(o.attackers, default=0)):
            a = await self.peer_on(home)
            # From the last DM on: no replay, and the DMs stay unread (status counts them).
            await self.logged_in("attacker", a, since={"attackpeer": last})
            attackers.append(a)
        probe = await attackers[0].request({"op": "status"}, "status") if attackers else {}
        for k in (0, *o.attackers):
            sec.add(
                f"{k} attack connection(s)" if k else "no attacker (reference)",
                **await self._sends_under_flood(victim, home, attackers[:k], o.window),
            )
        errors = sum(a.flood_errors for a in attackers)
        unread = probe.get("unread", {}) if probe else {}
        sec.notes += [
            f"the victim and every attack connection on {home}; {o.window} status requests"
            f" in flight per attack connection; {o.send_gap_s * 1000:g} ms between the"
            " victim's sends; gw_cpu_pct is that gateway's CPU (100 = one core)",
            f"the attacker's status reports unread {unread}, {probe.get('_bytes', 0)} bytes;"
            f" the {o.dms:,} DMs were sent through the gateway (last id {last});"
            f" status errors during the flood: {errors}",
        ]

    async def _sends_under_flood(
        self, victim: Peer, gateway: str, attackers: list[Peer], window: int
    ) -> dict[str, Value]:
        """``victim``'s send-to-ack latency while ``attackers`` loop status (``--sends``
        sends, or as many as fit in ``--send-seconds``); with the status replies per
        second and the CPU of ``gateway`` meanwhile."""
        o = self.opts
        for a in attackers:
            a.start_flood(window)
        await asyncio.sleep(1.0)
        replies0 = sum(a.flood_replies for a in attackers)
        cpu0, t0 = self.gws.cpu_s()[gateway], time.monotonic()
        lat: list[int] = []
        for i in range(o.sends):
            if time.monotonic() - t0 > o.send_seconds:
                break
            start = monotonic_ns()
            ev = await victim.request({"op": "send", "to": GENERAL, "text": f"victim {i}"}, "ack")
            lat.append(monotonic_ns() - start)
            if ev.get("type") != "ack":
                self.problems.append(f"the victim's send was answered {ev}")
            await asyncio.sleep(o.send_gap_s)
        secs = time.monotonic() - t0
        cpu = self.gws.cpu_s()[gateway] - cpu0
        replies = sum(a.flood_replies for a in attackers) - replies0
        for a in attackers:
            a.stop_flood()
        if not await _until(lambda: all(a.in_flight == 0 for a in attackers), 60.0):
            self.problems.append("status replies still missing 60 s after the flood")
        return {
            "sends": len(lat),
            **_lat(lat),
            "status_per_s": round(replies / secs, 1),
            "gw_cpu_pct": round(100 * cpu / secs),
        }

    # -- 2. login flood --------------------------------------------------------------
    async def login_flood(self) -> None:
        o = self.opts
        sec = self.section(
            "2",
            f"a real user's login while {o.flooders} connections send wrong passwords",
            ["logins", "welcome_p50_ms", "welcome_p99_ms", "rate_limited", "guesses_per_s",
             "scrypt_checks", "throttled"],
        )  # fmt: skip
        real = "realuser"
        decoys = [f"decoy{i}" for i in range(o.decoys)]
        await self.create_accounts([real, *decoys])
        fresh = (f"127.1.{i // 250}.{i % 250 + 1}" for i in itertools.count())
        variants: list[tuple[str, Iterator[str] | None]] = [
            ("no flood (reference)", None),
            ("flood from one address", itertools.repeat("127.0.0.2")),
            ("flood, a fresh address per guess", fresh),
            ("flood from the user's own address", itertools.repeat(HOST)),
        ]
        try:
            for label, addresses in variants:
                await self._reset_login_counters()
                await self._login_case(sec, label, addresses, real, decoys)
        finally:
            await self._reset_login_counters()  # for whoever logs in next
        sec.notes += [
            f"the real user logs in one at a time, {o.logins} times spread over"
            f" {o.login_seconds:g} s (fewer if they are slow), from 127.0.0.1 (a known"
            " address); welcome = connect to welcome, of the logins that got in;"
            " rate_limited = answers to the real user",
            f"guesses alternate the user's name and {o.decoys} other existing names;"
            f" scrypt_checks = guesses answered bad_password, throttled = rate_limited,"
            f" over the whole flood; scrypt N = {o.scrypt_n}, 1 scrypt thread",
        ]

    async def _login_case(
        self,
        sec: Section,
        label: str,
        addresses: Iterator[str] | None,
        real: str,
        decoys: list[str],
    ) -> None:
        """The real user's logins while guessers (from ``addresses``) flood, if any."""
        stop = asyncio.Event()
        answers: Counter[str] = Counter()
        guessers = []
        if addresses is not None:
            names = [n for d in decoys for n in (real, d)]
            guessers = [
                asyncio.create_task(self._guess(names, w, addresses, stop, answers))
                for w in range(self.opts.flooders)
            ]
            await asyncio.sleep(1.0)
        counted0, t0 = sum(answers.values()), time.monotonic()
        welcome, outcomes = await self._real_logins(real)
        secs = time.monotonic() - t0
        guesses = sum(answers.values()) - counted0
        stop.set()
        for g in guessers:
            g.cancel()
        await asyncio.gather(*guessers, return_exceptions=True)
        sec.add(
            label,
            logins=len(welcome),
            welcome_p50_ms=_ms(percentile(sorted(welcome), 50)) if welcome else "-",
            welcome_p99_ms=_ms(percentile(sorted(welcome), 99)) if welcome else "-",
            rate_limited=f"{outcomes['rate_limited']}/{sum(outcomes.values())}",
            guesses_per_s=round(guesses / secs) if guessers else "-",
            scrypt_checks=answers["bad_password"] if guessers else "-",
            throttled=answers["rate_limited"] if guessers else "-",
        )
        if other := {k: v for k, v in outcomes.items() if k not in ("ok", "rate_limited")}:
            sec.notes.append(f"{label}: the real user also got {dict(other)}")
        if guessers:
            sec.notes.append(f"{label}: the guesses got {dict(answers)}")

    async def _reset_login_counters(self) -> None:
        assert self.redis is not None
        keys = [k async for k in self.redis.scan_iter(match=f"{PREFIX}:*:fails*", count=1000)]
        if keys:
            await self.redis.delete(*keys)

    async def _guess(
        self,
        names: list[str],
        worker: int,
        addresses: Iterator[str],
        stop: asyncio.Event,
        answers: Counter[str],
    ) -> None:
        for i in itertools.count(worker):
            if stop.is_set():
                return
            peer: Peer | None = None
            try:
                peer = await open_peer(self.dep, next(addresses))
                ev = await peer.request(
                    {"op": "login", "user": names[i % len(names)], "password": f"guess{i}"},
                    "synced",
                    timeout_s=30,
                )
                answers[str(ev.get("code") or ev.get("type"))] += 1
            except (OSError, ConnectionError, TimeoutError) as exc:
                answers[type(exc).__name__] += 1
                await asyncio.sleep(0.05)
            finally:
                if peer is not None:
                    peer.close()

    async def _real_logins(self, user: str) -> tuple[list[int], Counter[str]]:
        """``--logins`` logins one at a time, spread over ``--login-seconds`` (a slow
        one delays the next); connect-to-welcome times, and every answer."""
        o = self.opts
        welcome: list[int] = []
        outcomes: Counter[str] = Counter()
        start_s = time.monotonic()
        spacing = o.login_seconds / max(1, o.logins)
        for i in range(o.logins):
            wait = start_s + i * spacing - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            elif time.monotonic() - start_s > o.login_seconds:
                break
            start = monotonic_ns()
            try:
                peer = await self.peer()
                ev = await peer.login(user)
            except (OSError, ConnectionError, TimeoutError) as exc:
                outcomes[type(exc).__name__] += 1
                continue
            peer.close()
            if ev.get("type") == "synced":
                outcomes["ok"] += 1
                welcome.append(peer.welcome_ns - start)
            else:
                outcomes[str(ev.get("code"))] += 1
        return welcome, outcomes

    # -- 3. memory of stalled replays ----------------------------------------------------
    async def memory(self) -> None:
        o = self.opts
        sec = self.section(
            "3",
            f"gateway memory while {o.stallers} clients replay a {o.general:,}-message #general"
            " and never read",
            ["rss_mb_total", *(f"rss_mb.{n}" for n in self.gws.names())],
        )
        names = [f"staller{i}" for i in range(o.stallers)]
        await self.create_accounts(names)
        poster = await self.logged_in("poster")
        await self.send_many(poster, GENERAL, o.general)
        poster.close()
        await asyncio.sleep(1.5)

        def rss_row(label: str) -> dict[str, int]:
            rss = self.gws.rss_kb()
            sec.add(
                label,
                rss_mb_total=round(sum(rss.values()) / 1024, 1),
                **{f"rss_mb.{n}": round(v / 1024, 1) for n, v in rss.items()},
            )
            return rss

        rss_row("before")
        marks = self.log_marks()
        socks = []
        for name in names:
            sock = await open_raw(self.dep, rcvbuf=STALLER_RCVBUF)
            self.socks.append(sock)
            login: dict[str, Any] = {"op": "login", "user": name, "password": PASSWORD}
            login["since"] = {GENERAL: "0-0"}
            await asyncio.get_running_loop().sock_sendall(sock, json.dumps(login).encode() + b"\n")
            socks.append(sock)
        addrs = [_raw_where(s) for s in socks]
        where = Counter([await self.gws.wait_which(a) or "?" for a in addrs])
        start = time.monotonic()
        cut_at: dict[int, float] = {}
        peak: dict[str, int] = {}
        welcomes: list[dict[str, Any]] = []
        limit = self.stall_timeout_s + 15
        while time.monotonic() - start < limit and len(cut_at) < len(socks):
            await asyncio.sleep(0.5)
            elapsed = time.monotonic() - start
            rss = self.gws.rss_kb()
            if sum(rss.values()) > sum(peak.values()):
                peak = rss
            if not welcomes and elapsed >= 10:
                rss_row("after 10 s of not reading")
                welcomes = [_peek_welcome(s) for s in socks]
            for i, a in enumerate(addrs):
                # Cut off = no gateway holds the socket any more (see the note on RST).
                if i not in cut_at and await asyncio.to_thread(self.gws.which, a) is None:
                    cut_at[i] = elapsed
        sec.add(
            "peak while stalled",
            rss_mb_total=round(sum(peak.values()) / 1024, 1),
            **{f"rss_mb.{n}": round(v / 1024, 1) for n, v in peak.items()},
        )
        await asyncio.sleep(1.0)
        rss_row(f"1 s after the gateway dropped {len(cut_at)}/{len(socks)}")
        still_open = sum(1 for s in socks if tcp_state(s) == TCP_ESTABLISHED)
        for s in socks:
            s.close()
        await asyncio.sleep(2.0)
        rss_row("2 s after the clients closed")
        unread = Counter(str(w.get("unread", {}).get(GENERAL)) for w in welcomes)
        cut = sorted(cut_at.values())
        sec.notes += [
            f"stallers per gateway: {dict(where)}; welcome (peeked, not read) unread #general:"
            f" {dict(unread)}; the gateways logged {self.logged_since(marks) or 'nothing'}",
            f"dropped by the gateway: {len(cut)}/{len(socks)}"
            + (f", {cut[0]:.1f}-{cut[-1]:.1f} s after logging in" if cut else "")
            + f" (stall timeout {self.stall_timeout_s:g} s"
            + (", set with --stall-timeout-s" if o.stall_timeout_s else ", the default")
            + f"; watched for {limit:g} s); on the client side {still_open} of them still"
            " looked open (ESTABLISHED) when dropped: the gateway's close sends no reset,"
            " its unsent bytes wait in the kernel behind a zero window",
        ]

    # -- 4. junk input -------------------------------------------------------------------
    async def junk(self) -> None:
        o = self.opts
        names = self.gws.names()
        home, other = names[0], names[-1] if len(names) > 1 else None
        sec = self.section(
            "4",
            f"event-loop stall: {o.junk_clients} connections each write {o.junk_mb:g} MB"
            " without logging in",
            ["ping_max_ms", "ping_p99_ms", "other_gw_max_ms", "mb_taken", "dropped", "busy_s",
             "gw_cpu_s"],
        )  # fmt: skip
        size = int(o.junk_mb * (1 << 20))
        rng = random.Random(1)
        kinds: list[tuple[str, bytes]] = [
            ("empty lines", b"\n" * size),
            ("random bytes", b"x" + rng.randbytes(size - 1)),
            ("one endless line", b"{" + b"x" * (size - 1)),
            ("pings, replies never read", _repeat(b'{"op":"ping"}\n', size)),
        ]
        pinger = await self.logged_in("pinger1", await self.peer_on(home))
        control = await self.logged_in("pinger2", await self.peer_on(other)) if other else None
        pingers = [p for p in (pinger, control) if p is not None]

        async def pinging(work: Awaitable[T]) -> T:
            for p in pingers:
                p.reset_pings()
            stop = asyncio.Event()
            tasks = [asyncio.create_task(p.ping_every(0.01, stop)) for p in pingers]
            try:
                return await work
            finally:
                stop.set()
                await asyncio.gather(*tasks)

        await pinging(asyncio.sleep(3.0))
        sec.add(
            "no junk, 3 s (reference)",
            ping_max_ms=pinger.worst_rtt_ms(),
            ping_p99_ms=pinger.rtt_ms(99),
            other_gw_max_ms=control.worst_rtt_ms() if control else "-",
        )
        for label, payload in kinds:
            socks = [await self.raw_on(home) for _ in range(o.junk_clients)]
            addrs = [_raw_where(s) for s in socks]
            marks = self.log_marks()
            cpu0, t0 = self.gws.cpu_s()[home], time.monotonic()
            results = await pinging(self._pour_junk(home, socks, payload, t0 + o.junk_timeout_s))
            secs = time.monotonic() - t0
            cut = 0
            for _ in range(16):  # a close waits up to 2 s for a client that does not read
                cut = sum([await asyncio.to_thread(self.gws.which, a) is None for a in addrs])
                if cut == len(addrs):
                    break
                await asyncio.sleep(0.25)
            logged = self.logged_since(marks) or "nothing"
            sec.notes.append(f"{label}: the gateways logged {logged}")
            sec.add(
                label,
                ping_max_ms=pinger.worst_rtt_ms(),
                ping_p99_ms=pinger.rtt_ms(99),
                other_gw_max_ms=control.worst_rtt_ms() if control else "-",
                mb_taken=round(sum(n for n, _ in results) / (1 << 20), 2),
                dropped=f"{cut}/{len(socks)}",
                busy_s=round(secs, 1),
                gw_cpu_s=round(self.gws.cpu_s()[home] - cpu0, 2),
            )
            for s in socks:
                s.close()
            await asyncio.sleep(0.5)
        sec.notes += [
            f"junk connections and the pinger on {home}; other_gw = a pinger on {other};"
            " a ping every 10 ms, max = the longest round trip (an unanswered one counts"
            " as long as it waited); the junk is written from threads",
            "mb_taken = bytes the kernel accepted from the junk clients, summed (each stops"
            " when the gateway drops it); busy_s = from the first byte until the gateway's"
            f" CPU went idle ({o.junk_timeout_s:g} s at most), the time pings were measured;"
            " dropped = junk connections the gateway no longer holds 4 s later at most",
        ]

    async def _pour_junk(
        self, gateway: str, socks: list[socket.socket], payload: bytes, deadline: float
    ) -> list[tuple[int, bool]]:
        """Every socket writes ``payload`` at once, from threads (so the pinger's loop
        here never waits on them); returns once ``gateway`` is done with it all."""
        poured = await asyncio.gather(
            *(asyncio.to_thread(_pour, s, payload, deadline) for s in socks)
        )
        await self._until_idle(gateway, deadline)
        return list(poured)

    async def _until_idle(self, gateway: str, deadline: float) -> None:
        """Until ``gateway`` uses under a tenth of a core for 0.25 s, or ``deadline``."""
        while time.monotonic() < deadline:
            before = self.gws.cpu_s()[gateway]
            await asyncio.sleep(0.25)
            if self.gws.cpu_s()[gateway] - before < 0.025:
                return

    # -- 5. a user with many direct conversations -------------------------------------------
    async def many_dms(self) -> None:
        o = self.opts
        sec = self.section(
            "5",
            f"login and status of a user with {o.conversations:,} direct conversations",
            ["welcome_ms", "synced_ms", "replayed", "reply_kb", "gw_ping_max_ms"],
        )
        owner = "dmowner"
        await self.create_accounts([owner])
        t0 = time.monotonic()
        await self._seed_conversations(owner, o.conversations)
        seeded_s = time.monotonic() - t0
        for label in ("first login: all unread", "second login: nothing unread"):
            peer = await self.peer()
            home = await self.gws.wait_which(_sockname(peer))
            if home is None:
                raise RuntimeError("cannot tell the owner's gateway")
            pinger = await self.logged_in(f"dmpinger-{home}", await self.peer_on(home))
            stop = asyncio.Event()
            pinging = asyncio.create_task(pinger.ping_every(0.01, stop))
            start = monotonic_ns()
            ev = await peer.login(owner)
            synced = monotonic_ns() - start
            stop.set()
            await pinging
            if ev.get("type") != "synced":
                raise RuntimeError(f"login of {owner}: {ev}")
            sec.add(
                label,
                welcome_ms=_ms(peer.welcome_ns - start),
                synced_ms=_ms(synced),
                replayed=peer.messages,
                reply_kb=round(peer.welcome.get("_bytes", 0) / 1024, 1),
                gw_ping_max_ms=pinger.worst_rtt_ms(),
            )
            times: list[int] = []
            sizes: list[int] = []
            pinger.reset_pings()
            stop = asyncio.Event()
            pinging = asyncio.create_task(pinger.ping_every(0.01, stop))
            for _ in range(5):
                start = monotonic_ns()
                st = await peer.request({"op": "status"}, "status", timeout_s=120)
                times.append(monotonic_ns() - start)
                sizes.append(int(st.get("_bytes", 0)))
            stop.set()
            await pinging
            lat = _lat(times)
            sec.add(
                "  then status (x5): p50 / max",
                welcome_ms=lat["p50_ms"],
                synced_ms=lat["max_ms"],
                reply_kb=round(max(sizes) / 1024, 1),
                gw_ping_max_ms=pinger.worst_rtt_ms(),
            )
            await asyncio.sleep(1.5)  # the gateway saves delivered cursors every 0.5 s
            peer.close()
            pinger.close()
            await asyncio.sleep(0.5)
        sec.notes += [
            f"seeded in Redis in {seeded_s:.1f} s (see --help); reply_kb = the welcome"
            " (login rows) or the status reply; gw_ping_max_ms = the longest ping round trip"
            " of another client on the same gateway meanwhile",
        ]
        await self._many_dms_flood(owner)

    async def _many_dms_flood(self, owner: str) -> None:
        """Section 1's attack again, by the user with many conversations."""
        o = self.opts
        counts = [k for k in o.attackers if k <= 4] or [1]
        sec = self.section(
            "5b",
            f"another user's send-to-ack latency ({o.sends} sends to #general) while"
            f" {owner} ({o.conversations:,} conversations) floods status",
            ["sends", "p50_ms", "p99_ms", "max_ms", "status_per_s", "gw_cpu_pct"],
        )
        victim = await self.logged_in("dmvictim")
        home = await self.gws.wait_which(_sockname(victim))
        if home is None:
            raise RuntimeError("cannot tell the victim's gateway")
        attackers = [
            await self.logged_in(owner, await self.peer_on(home)) for _ in range(max(counts))
        ]
        for k in (0, *counts):
            sec.add(
                f"{k} connection(s) of {owner}" if k else "no attacker (reference)",
                **await self._sends_under_flood(victim, home, attackers[:k], window=1),
            )
        sec.notes.append(
            f"as in 1, everyone on {home}; one status request in flight per connection"
        )

    async def _seed_conversations(self, owner: str, count: int, batch: int = 500) -> None:
        """``count`` users, each with one message to ``owner``, written as the gateway's
        send script and account claim leave them (keys as in docs/redis-keys.md)."""
        assert self.redis is not None
        now = int(time.time() * 1000)
        me = owner.lower()
        for first in range(0, count, batch):
            async with self.redis.pipeline(transaction=False) as pipe:
                for i in range(first, min(count, first + batch)):
                    other = f"dmfrom{i}"
                    conv = "dm:" + ":".join(sorted((me, other)))
                    pipe.hset(
                        f"{PREFIX}:{{u:{other}}}:account",
                        mapping={"name": other, "pw": "seeded$no-login", "created": now},
                    )
                    pipe.xadd(
                        f"{PREFIX}:{{c:{conv}}}:stream",
                        {"from": other, "to": owner, "text": f"hello from {other}", "n": 1},
                    )
                    pipe.set(f"{PREFIX}:{{c:{conv}}}:seq", 1)
                    pipe.zadd(f"{PREFIX}:{{u:{me}}}:dms", {conv: now})
                    pipe.zadd(f"{PREFIX}:{{u:{other}}}:dms", {conv: now})
                await pipe.execute()


# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------


def _id_key(sid: str) -> tuple[int, int]:
    ms, _, seq = sid.partition("-")
    return int(ms), int(seq or 0)


def _repeat(unit: bytes, size: int) -> bytes:
    return unit * (size // len(unit))


async def _until(pred: Callable[[], bool], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while not pred():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.02)
    return True


def _pour(sock: socket.socket, payload: bytes, deadline: float) -> tuple[int, bool]:
    """Write ``payload`` (blocking: run in a thread) until done, dropped, or
    ``deadline`` (the gateway stopped reading); (bytes the kernel took, dropped)."""
    view = memoryview(payload)
    sent = 0
    try:
        while sent < len(view):
            left = deadline - time.monotonic()
            if left <= 0:
                break
            sock.settimeout(left)
            sent += sock.send(view[sent : sent + POUR_CHUNK])
    except TimeoutError:
        pass
    except OSError:
        return sent, True
    return sent, False


def _peek_welcome(sock: socket.socket) -> dict[str, Any]:
    """The first line queued for a client that never reads, without reading it."""
    try:
        head = sock.recv(STALLER_RCVBUF, socket.MSG_PEEK)
    except OSError:
        return {}
    line = head.split(b"\n", 1)[0]
    try:
        ev = json.loads(line)
    except ValueError:
        return {}
    return ev if isinstance(ev, dict) else {}


def _ints(raw: str) -> tuple[int, ...]:
    return tuple(int(x) for x in raw.split(",") if x.strip())


def _phases(raw: str) -> tuple[str, ...]:
    wanted = tuple(x.strip() for x in raw.split(",") if x.strip())
    if unknown := set(wanted) - set(PHASES):
        raise argparse.ArgumentTypeError(f"unknown: {', '.join(sorted(unknown))}")
    return wanted


def _parser() -> argparse.ArgumentParser:
    d = Options()
    ap = argparse.ArgumentParser(
        prog="redchat-bench attacks",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--only", type=_phases, default=d.only, help=f"of {','.join(PHASES)}")
    ap.add_argument("--json", action="store_true", help="print the results as JSON")
    g = ap.add_argument_group("deployment")
    g.add_argument("--gateways", type=int, default=d.gateways)
    g.add_argument("--uvloop", action=argparse.BooleanOptionalAction, default=d.uvloop)
    g.add_argument("--scrypt-n", type=int, default=d.scrypt_n, help="default: the gateway's own")
    g.add_argument(
        "--stall-timeout-s", type=float, default=0.0, help="pass to the gateways (0: theirs, 30 s)"
    )
    g.add_argument("--gateway-arg", action="append", default=[], metavar="ARG")
    a = ap.add_argument_group("1. status")
    a.add_argument("--sends", type=int, default=d.sends)
    a.add_argument("--send-seconds", type=float, default=d.send_seconds, help="at most, per case")
    a.add_argument("--attackers", type=_ints, default=d.attackers, help="e.g. 1,4,16")
    a.add_argument("--window", type=int, default=d.window, help="status requests in flight")
    a.add_argument("--dms", type=int, default=d.dms, help="the attacker's unread DMs")
    b = ap.add_argument_group("2. login")
    b.add_argument("--flooders", type=int, default=d.flooders)
    b.add_argument("--decoys", type=int, default=d.decoys, help="other names guessed")
    b.add_argument("--logins", type=int, default=d.logins, help="real logins per case, at most")
    b.add_argument("--login-seconds", type=float, default=d.login_seconds)
    c = ap.add_argument_group("3. memory")
    c.add_argument("--stallers", type=int, default=d.stallers)
    c.add_argument("--general", type=int, default=d.general, help="messages in #general")
    j = ap.add_argument_group("4. junk")
    j.add_argument("--junk-clients", type=int, default=d.junk_clients)
    j.add_argument("--junk-mb", type=float, default=d.junk_mb)
    e = ap.add_argument_group("5. dms")
    e.add_argument("--conversations", type=int, default=d.conversations)
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    opts = Options(
        gateways=args.gateways,
        uvloop=args.uvloop,
        gateway_args=args.gateway_arg,
        scrypt_n=args.scrypt_n,
        stall_timeout_s=args.stall_timeout_s,
        only=args.only,
        sends=args.sends,
        send_seconds=args.send_seconds,
        attackers=args.attackers,
        window=args.window,
        dms=args.dms,
        flooders=args.flooders,
        decoys=args.decoys,
        logins=args.logins,
        login_seconds=args.login_seconds,
        stallers=args.stallers,
        general=args.general,
        junk_clients=args.junk_clients,
        junk_mb=args.junk_mb,
        conversations=args.conversations,
    )
    raise_fd_limit()
    attacks = Attacks(opts)
    started = time.monotonic()
    sections = run_bench(attacks.run())
    took = time.monotonic() - started
    if args.json:
        report = {
            "options": asdict(opts),
            "seconds": round(took, 1),
            "sections": [
                {
                    "number": s.number,
                    "title": s.title,
                    "rows": [{"case": case, **values} for case, values in s.rows],
                    "notes": s.notes,
                }
                for s in sections
            ],
            "problems": attacks.problems,
        }
        print(json.dumps(report, indent=2))
    else:
        print(f"\nredchat-bench attacks: {opts.gateways} gateway(s), took {took:.0f} s")
        for s in sections:
            print(f"\n{s.number}. {s.title}\n")
            print(s.table())
            for note in s.notes:
                print(f"  - {note}")
        if attacks.problems:
            print(f"\nproblems ({len(attacks.problems)}):")
            for p in attacks.problems:
                print(f"  {p}")
    return 1 if attacks.problems else 0


if __name__ == "__main__":
    sys.exit(main())

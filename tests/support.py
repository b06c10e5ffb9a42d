"""Real parts for end-to-end tests: a redis-server on a free port, a Redis Cluster of
them, gateway processes.

Nothing here touches the Redis on 127.0.0.1:6379: every server is started by the
tests on a port the OS picked, with its files in a temporary folder.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from client.connection import ChatError, Connection
from gateway.embedded_redis import (
    RedisClusterProcess,
    RedisProcess,
    free_port,
    redis_answers,
    start_redis_cluster,
    start_redis_server,
)
from gateway.store import make_redis

ROOT = Path(__file__).resolve().parent.parent


def wait_for(predicate: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


class RedisServer:
    """A redis-server child, no snapshots. ``persist`` turns on the append-only file,
    fsynced on every write so a kill -9 loses nothing acknowledged."""

    def __init__(self, workdir: Path, persist: bool = False, port: int | None = None) -> None:
        self.workdir = workdir
        self.persist = persist
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self._redis: RedisProcess | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        self._redis = start_redis_server(
            self.workdir, port=self.port, persist=self.persist, appendfsync="always", save=""
        )
        self.proc = self._redis.proc
        return self

    def ping(self) -> bool:
        return redis_answers(port=self.port)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self._redis is not None:
            self._redis.stop(sig)

    def pause(self) -> None:
        assert self._redis is not None
        self._redis.pause()

    def resume(self) -> None:
        assert self._redis is not None
        self._redis.resume()


class RedisClusterServer:
    """A Redis Cluster of redis-server children (``start_redis_cluster``), no snapshots.
    Nodes go by index in ``nodes``: the primaries first, then their replicas (those of
    primary 0 first). ``persist`` turns on the append-only file, fsynced on every write."""

    def __init__(self, workdir: Path, primaries: int = 3, replicas_per_primary: int = 0,
                 node_timeout_ms: int = 1000, persist: bool = False) -> None:  # fmt: skip
        self.workdir = workdir
        self.primaries = primaries
        self.replicas_per_primary = replicas_per_primary
        self.node_timeout_ms = node_timeout_ms
        self.persist = persist
        self._cluster: RedisClusterProcess | None = None

    @property
    def cluster(self) -> RedisClusterProcess:
        assert self._cluster is not None, "the cluster was not started"
        return self._cluster

    @property
    def nodes(self) -> list[RedisProcess]:
        return self.cluster.nodes

    @property
    def url(self) -> str:
        """A seed for ``RedisCluster.from_url``: the first node that is a primary now."""
        return self.cluster.url

    @property
    def urls(self) -> list[str]:
        return self.cluster.urls

    def start(self) -> RedisClusterServer:
        self._cluster = start_redis_cluster(
            self.workdir,
            primaries=self.primaries,
            replicas_per_primary=self.replicas_per_primary,
            node_timeout_ms=self.node_timeout_ms,
            persist=self.persist,
            appendfsync="always",
            save="",
        )
        return self

    def role_of(self, index: int) -> str:
        """Node ``index``'s ROLE now: "master", "slave", or "down" (exited or not answering)."""
        return self.cluster.role_of(self.nodes[index])

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self._cluster is not None:
            self._cluster.stop(sig)

    def kill(self, index: int) -> None:
        """kill -9 one node."""
        self.cluster.kill(self.nodes[index])

    def restart(self, index: int) -> None:
        """Start a killed node again: it rejoins (as a replica, if it was failed over)."""
        self.cluster.restart(self.nodes[index])

    def primary_for(self, key: str) -> int | None:
        """The index of the node that serves ``key``'s slot now (None: none, as during
        a failover)."""
        import redis as sync_redis
        from redis.crc import key_slot

        slot = key_slot(key.encode())
        for i, node in enumerate(self.nodes):
            if self.role_of(i) != "master":
                continue
            with sync_redis.Redis(port=node.port, socket_timeout=2) as r:
                for start, end, primary, *_ in r.execute_command("CLUSTER", "SLOTS"):
                    if start <= slot <= end and int(primary[1]) == node.port:
                        return i
        return None

    def pause(self, index: int) -> None:
        """SIGSTOP one node: its connections stay open and nothing answers."""
        self.nodes[index].pause()

    def resume(self, index: int) -> None:
        self.nodes[index].resume()


class GatewayProcess:
    """One real gateway process (``python -m gateway``), its log in a file."""

    def __init__(self, name: str, port: int, redis_url: str, prefix: str, logdir: Path,
                 extra: list[str] | None = None) -> None:  # fmt: skip
        self.name = name
        self.port = port
        self.redis_url = redis_url
        self.prefix = prefix
        self.log_path = logdir / f"{name}.log"
        self.extra = extra or []
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, wait: bool = True) -> GatewayProcess:
        args = [
            sys.executable, "-m", "gateway",
            "--port", str(self.port),
            "--redis", self.redis_url,
            "--prefix", self.prefix,
            "--name", self.name,
            "--scrypt-n", "1024",
            "--log-level", "INFO",
            *self.extra,
        ]  # fmt: skip
        env = {k: v for k, v in os.environ.items() if not k.startswith("REDCHAT_")}
        # Tests send in bursts; the per-connection cap has tests of its own (--conn-send-rate).
        env["REDCHAT_CONN_SEND_RATE"] = "0"
        # Likewise the public-chat rate limit (20 an hour); tests/integration/test_moderation.py
        # turns it on with --rate-limit, which wins over this.
        env["REDCHAT_RATE_LIMIT"] = "0"
        self._offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                args, cwd=ROOT, env=env, stdout=log, stderr=log, stdin=subprocess.DEVNULL
            )
        if wait:
            wait_for(self.listening, 15, f"gateway {self.name} to listen")
        return self

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def listening(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"gateway {self.name} exited:\n{self.log_text()[-3000:]}")
        with open(self.log_path, "rb") as f:
            f.seek(self._offset)
            return b"listening on" in f.read()

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """kill -9: no goodbye, no cursor flush."""
        if self.alive():
            assert self.proc is not None
            self.proc.kill()
            self.proc.wait()

    def terminate(self, timeout: float = 15.0) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.terminate()
        return self.proc.wait(timeout)


def start_worker(
    redis: str | RedisServer | RedisClusterServer,
    prefix: str,
    logdir: Path,
    *extra: str,
    name: str = "worker",
) -> subprocess.Popen[bytes]:
    """A real worker process, its log in ``logdir/<name>.log``; returns once it runs
    (it handles SIGTERM from then on). ``redis``: a URL, or a server (with
    ``--redis-cluster`` for a cluster)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("REDCHAT_")}
    redis_url = redis if isinstance(redis, str) else redis.url
    if isinstance(redis, RedisClusterServer):
        extra = ("--redis-cluster", *extra)
    path = logdir / f"{name}.log"
    seen = path.read_text().count("worker running") if path.exists() else 0
    with open(path, "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "worker", "--redis", redis_url, "--prefix", prefix, *extra],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=log,
            stdin=subprocess.DEVNULL,
        )
    wait_for(lambda: path.read_text().count("worker running") > seen, 15, "the worker to run")
    return proc


# Tests that use the ``deployment`` (or ``chat_redis``) fixture run on one Redis and on
# a Redis Cluster (skipped without redis-server 7): a module's with
# ``pytestmark = ON_REDIS_AND_CLUSTER``, or one test's with ``@ON_REDIS_AND_CLUSTER``.
ON_REDIS_AND_CLUSTER = pytest.mark.also_on_cluster


# What the tests run redchat on: one redis-server, or a Redis Cluster.
AnyRedis = RedisServer | RedisClusterServer


async def redis_client(server: AnyRedis) -> Any:
    """A client of the tests' Redis, or of their cluster (redis-py's cluster client,
    ready to route); the caller closes it."""
    if isinstance(server, RedisClusterServer):
        client = make_redis(server.url, cluster=True)
        await client.initialize()  # type: ignore[attr-defined]
        return client
    return Redis.from_url(server.url, decode_responses=True)


class Deployment:
    """N gateway processes sharing one port, on a shared redis-server, under a fresh prefix."""

    def __init__(self, redis: RedisServer | RedisClusterServer, tmp: Path, gateways: int = 2,
                 extra: list[str] | None = None) -> None:  # fmt: skip
        self.redis = redis
        self.tmp = tmp
        flags = list(extra or [])
        if isinstance(redis, RedisClusterServer):
            flags.insert(0, "--redis-cluster")
        self.port = free_port()
        self.prefix = "t" + uuid.uuid4().hex[:10]
        self.gateways = [
            GatewayProcess(f"gw{i + 1}", self.port, redis.url, self.prefix, tmp, flags)
            for i in range(gateways)
        ]
        self._connections: list[Connection] = []
        self._texts: list[TextClient] = []

    def start(self) -> Deployment:
        for gw in self.gateways:
            gw.start(wait=False)
        for gw in self.gateways:
            wait_for(gw.listening, 15, f"gateway {gw.name} to listen")
        return self

    def stop(self) -> None:
        """SIGTERM every gateway still running; one that does not exit in time is a bug."""
        hung = []
        for gw in self.gateways:
            if gw.alive():
                try:
                    gw.terminate(15)
                except subprocess.TimeoutExpired:
                    gw.kill()
                    hung.append(gw.name)
        if hung:
            raise AssertionError(f"gateways {hung} ignored SIGTERM:\n{self.logs()[-3000:]}")

    def logs(self) -> str:
        return "\n".join(f"--- {gw.name}\n{gw.log_text()}" for gw in self.gateways)

    async def connect(self) -> Connection:
        conn = await Connection.open("127.0.0.1", self.port)
        self._connections.append(conn)
        return conn

    async def login(self, user: str, password: str = "pw", **kw: object) -> Connection:
        conn = await self.connect()
        await conn.login(user, password, **kw)  # type: ignore[arg-type]
        return conn

    async def connect_on(self, gateway: str, user: str, password: str = "pw") -> Connection:
        """Log in until the kernel's SO_REUSEPORT spread lands us on ``gateway``."""
        for _ in range(60):
            conn = await self.connect()
            result = await conn.login(user, password)
            if result.welcome["gateway"] == gateway:
                return conn
            await conn.close()
        raise AssertionError(f"never landed on {gateway}")

    async def close_all(self) -> None:
        for conn in self._connections:
            await conn.close()
        for text in self._texts:
            await text.close()

    async def text(self) -> TextClient:
        client = await TextClient.open(self.port)
        self._texts.append(client)
        return client


@contextlib.asynccontextmanager
async def running(dep: Deployment) -> AsyncIterator[Deployment]:
    """Start a deployment; at the end close its clients, stop it (a gateway that
    ignores SIGTERM fails the test) and print its logs, which pytest shows when
    the test failed."""
    dep.start()
    try:
        yield dep
    finally:
        await dep.close_all()
        dep.stop()
        print(dep.logs()[-6000:])


class TextClient:
    """A person with nc: raw bytes in, lines out."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.lines: list[str] = []

    @classmethod
    async def open(cls, port: int) -> TextClient:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        return cls(reader, writer)

    async def send(self, data: bytes | str) -> None:
        self.writer.write(data.encode() if isinstance(data, str) else data)
        await self.writer.drain()

    async def line(self, timeout: float = 5.0) -> str:
        raw = await asyncio.wait_for(self.reader.readline(), timeout)
        if not raw:
            raise ConnectionError("closed")
        text = raw.decode("utf-8", errors="replace").rstrip("\r\n")
        self.lines.append(text)
        return text

    async def expect(self, pattern: str, timeout: float = 5.0) -> str:
        """Read lines until one matches ``pattern`` (a regex); return it."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        rx = re.compile(pattern)
        while True:
            left = deadline - loop.time()
            if left <= 0:
                raise AssertionError(f"no line matching {pattern!r}; got {self.lines[-10:]}")
            try:
                line = await self.line(left)
            except TimeoutError:
                raise AssertionError(
                    f"no line matching {pattern!r}; got {self.lines[-10:]}"
                ) from None
            if rx.search(line):
                return line

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError):
            await self.writer.wait_closed()


async def chat_error(coro: Awaitable[object]) -> ChatError:
    """The ``ChatError`` a request ends in (fails the test if it succeeds)."""
    try:
        await coro
    except ChatError as exc:
        return exc
    raise AssertionError("the request succeeded")


async def next_of(conn: Connection, kind: str, timeout: float = 5.0) -> dict[str, Any]:
    """The next event of type ``kind`` (others are skipped)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        ev = await conn.next_event(timeout=max(0.01, deadline - loop.time()))
        if ev.get("type") == kind:
            return ev


def doc_recipes(heading: str) -> dict[str, list[str]]:
    """The redis-cli lines of docs/redis-keys.md under ``heading`` (its first ``sh``
    block), by the comment line above them: the lines tests run as written."""
    text = (ROOT / "docs" / "redis-keys.md").read_text()
    block = text.split(heading, 1)[1].split("```sh", 1)[1].split("```", 1)[0]
    recipes: dict[str, list[str]] = {}
    current = ""
    for line in block.strip().splitlines():
        if line.startswith("#"):
            current = line.lstrip("# ").strip()
            recipes[current] = []
        elif line.strip():
            recipes.setdefault(current, []).append(line.strip())
    return recipes


class Outcomes:
    """A send's callback (``Messages.queue``, ``Store.send_now``) that keeps what
    each send came to; ``wait`` for them."""

    def __init__(self) -> None:
        self.items: list[Any] = []
        self._came = asyncio.Event()

    def __call__(self, outcome: Any) -> None:
        self.items.append(outcome)
        self._came.set()

    async def wait(self, count: int, timeout: float = 10.0) -> list[Any]:
        async with asyncio.timeout(timeout):
            while len(self.items) < count:
                self._came.clear()
                await self._came.wait()
        return self.items

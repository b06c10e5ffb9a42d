"""One gateway process: the listening socket, its sessions, the hub, presence.

Shutdown, in order (SIGTERM and SIGINT alike):
  1. stop accepting (the other gateways on the port take new clients);
  2. let commands in flight finish, up to the drain timeout;
  3. tell every client and close it; abort whoever has not gone by the timeout;
  4. save delivered cursors, remove this gateway's presence, close Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from typing import Any, Final

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.connection import HiredisRespSerializer

from gateway.aio import stop_tasks
from gateway.hub import Hub
from gateway.keys import Keys
from gateway.protocol import Notice
from gateway.session import Flusher, Session, State
from gateway.settings import GatewaySettings
from gateway.store import REDIS_DOWN, Store

__all__ = ["Gateway", "make_redis"]

log = logging.getLogger("redchat.gateway")

PRESENCE_COALESCE_S: Final = 0.05


class _HiredisPacking:
    """redis-py's asyncio connections pack commands in Python even with hiredis
    installed; on the send path that was a fifth of the gateway's CPU."""

    _packer = HiredisRespSerializer()

    def pack_command(self, *args: Any) -> list[bytes]:
        return self._packer.pack(*args)  # type: ignore[no-any-return]


def make_redis(url: str) -> Redis:
    """A client that fails fast: a send during an outage errors at once instead of
    hanging. When all connections are busy (a login storm) a command waits for one."""
    pool = BlockingConnectionPool.from_url(
        url,
        decode_responses=True,
        socket_connect_timeout=2,
        socket_timeout=5,
        retry=Retry(NoBackoff(), 0),
        max_connections=64,
        timeout=5,
    )
    base = pool.connection_class
    pool.connection_class = type(base.__name__, (_HiredisPacking, base), {})
    return Redis(connection_pool=pool)


class Gateway:
    def __init__(self, settings: GatewaySettings, redis_url: str) -> None:
        self.settings = settings
        self.name = settings.gateway_name
        self.keys = Keys(settings.prefix)
        self.redis = make_redis(redis_url)
        self.store = Store(
            self.redis,
            self.keys,
            message_ttl_s=settings.message_ttl_s,
            history_max_len=settings.history_max_len,
            idempotency_ttl_s=settings.idempotency_ttl_s,
            login_fail_limit=settings.login_fail_limit,
            login_fail_window_s=settings.login_fail_window_s,
            scrypt_n=settings.scrypt_n,
        )
        self.hub = Hub(
            redis_url,
            self.keys,
            self.store,
            cursor_flush_s=settings.cursor_flush_s,
            on_reconnect=self._resync_all,
        )
        self.sessions: set[Session] = set()
        self.flusher = Flusher(settings.write_coalesce_s)
        self.users: Counter[str] = Counter()  # display name -> local connections
        self._per_address: Counter[str] = Counter()
        self._presence_dirty: set[str] = set()
        self._presence_full = True
        self._presence_wake = asyncio.Event()
        self._all_gone = asyncio.Event()
        self._server: asyncio.Server | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._closing = False

    # -- lifecycle ----------------------------------------------------------------
    async def start(self) -> None:
        await self.hub.start()
        if not await self.hub.wait_ready(10):
            log.warning("Redis is not reachable yet; clients get 'unavailable' until it is")
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: Session(self),
            self.settings.host,
            self.settings.port,
            reuse_port=True,
            backlog=4096,
        )
        self._tasks.append(asyncio.create_task(self._presence_forever(), name="presence"))
        log.info("listening on %s:%d", self.settings.host, self.settings.port)

    async def shutdown(self) -> None:
        timeout = self.settings.shutdown_timeout_s
        log.info("shutting down: %d clients to drain within %g s", len(self.sessions), timeout)
        if self._server is not None:
            self._server.close()
        busy = [s._worker for s in self.sessions if s._worker is not None and not s._worker.done()]
        if busy:
            await asyncio.wait(busy, timeout=timeout / 2)
        bye = Notice(f"gateway {self.name} is shutting down; reconnect to continue")
        for session in list(self.sessions):
            session.close_with(bye)
        if self.sessions:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout / 2):
                    await self._all_gone.wait()
        for session in list(self.sessions):
            if session.transport is not None:
                session.transport.abort()
        await asyncio.sleep(0)
        self._closing = True
        self._presence_wake.set()
        await stop_tasks(self._tasks)
        await self.hub.stop()
        with contextlib.suppress(*REDIS_DOWN):
            await self.store.gateway_gone(self.name)
        await self.redis.aclose()
        log.info("stopped")

    # -- sessions -----------------------------------------------------------------
    def admit(self, session: Session) -> bool:
        self.sessions.add(session)
        self._all_gone.clear()
        address = session.peer.rsplit(":", 1)[0]
        self._per_address[address] += 1
        limit = self.settings.max_connections_per_ip
        return not limit or self._per_address[address] <= limit

    def forget(self, session: Session) -> None:
        if session in self.sessions:
            self.sessions.discard(session)
            address = session.peer.rsplit(":", 1)[0]
            self._per_address[address] -= 1
            if self._per_address[address] <= 0:
                del self._per_address[address]
            if not self.sessions:
                self._all_gone.set()

    async def user_joined(self, name: str) -> None:
        """Count the user in and tell Redis now, so /status anywhere shows them at once."""
        self.users[name] += 1
        try:
            await self.store.update_presence(self.name, {name: self.users[name]})
        except REDIS_DOWN:
            self._presence_full = True  # the next heartbeat rewrites it all

    def user_left(self, name: str) -> None:
        self.users[name] -= 1
        if self.users[name] <= 0:
            del self.users[name]
        self._presence_dirty.add(name)
        self._presence_wake.set()

    def _resync_all(self) -> None:
        """The pub/sub link is back: every live session re-reads what it may have missed."""
        self._presence_full = True
        self.store.forget_cached()
        for session in list(self.sessions):
            if session.state is State.LIVE:
                session.resync()

    # -- presence -------------------------------------------------------------------
    async def _presence_forever(self) -> None:
        ttl = self.settings.heartbeat_s * 3
        while not self._closing:
            self._presence_wake.clear()
            dirty, self._presence_dirty = self._presence_dirty, set()
            try:
                if self._presence_full:
                    self._presence_full = False
                    await self.store.heartbeat(self.name, dict(self.users), ttl)
                else:
                    await self.store.heartbeat(self.name, None, ttl)
                    await self.store.update_presence(
                        self.name, {n: self.users.get(n, 0) for n in dirty}
                    )
            except REDIS_DOWN as exc:
                log.warning("could not refresh presence: %s", exc)
                self._presence_full = True
            try:
                # Not wait_for: on 3.11 with uvloop, cancelling it here could hang shutdown.
                async with asyncio.timeout(self.settings.heartbeat_s):
                    await self._presence_wake.wait()
                await asyncio.sleep(PRESENCE_COALESCE_S)
            except TimeoutError:
                pass

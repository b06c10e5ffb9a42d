"""One gateway process: the listening socket, its sessions, the hub, presence, timers.

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
import re
import time
from collections import Counter
from typing import Final
from urllib.parse import quote

from gateway.aio import stop_tasks
from gateway.errors import Unavailable
from gateway.net.hub import Hub
from gateway.net.outbox import Flusher
from gateway.net.session import Session
from gateway.protocol import Notice
from gateway.settings import GatewaySettings
from gateway.store import FileLimits, Keys, LoginLimits, ModerationLimits, Store, make_redis
from gateway.store.redis import ready

__all__ = ["Gateway"]

log = logging.getLogger("redchat.gateway")

PRESENCE_COALESCE_S: Final = 0.05
TIMER_SWEEP_S: Final = 1.0


class Gateway:
    def __init__(self, settings: GatewaySettings, redis_url: str) -> None:
        self.settings = settings
        self.name = settings.gateway_name
        self.keys = Keys(settings.prefix)
        # CLIENT SETNAME takes visible ASCII only; --name may be anything.
        tag = re.sub(r"[^\x21-\x7e]", "_", self.name)
        self.redis = make_redis(
            redis_url, client_name=f"redchat:gateway:{tag}", cluster=settings.redis_cluster
        )
        self.store = Store(
            self.redis,
            self.keys,
            message_ttl_s=settings.message_ttl_s,
            history_max_len=settings.history_max_len,
            idempotency_ttl_s=settings.idempotency_ttl_s,
            login=LoginLimits(
                fail_limit=settings.login_fail_limit,
                per_address=settings.login_fail_per_address,
                per_name=settings.login_fail_per_name,
                window_s=settings.login_fail_window_s,
                scrypt_n=settings.scrypt_n,
                scrypt_threads=settings.scrypt_threads,
                scrypt_queue=settings.scrypt_queue,
            ),
            moderation=ModerationLimits.of(settings, settings.idempotency_ttl_s),
            token_ttl_s=settings.token_ttl_s,
            file_limits=FileLimits.of(settings, settings.max_file_bytes),
            wait_replicas=settings.redis_wait_replicas,
        )
        self.hub = Hub(
            redis_url,
            self.keys,
            self.store,
            cursor_flush_s=settings.cursor_flush_s,
            on_reconnect=self._reconnected,
            client_name=f"redchat:hub:{tag}",
            cluster=self.redis if settings.redis_cluster else None,
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
        self.uploads_in_flight = 0  # bytes of HTTP upload bodies being read or stored
        self._secret_task: asyncio.Task[None] | None = None

    # -- lifecycle ----------------------------------------------------------------
    async def start(self) -> None:
        try:
            await ready(self.redis)
        except Unavailable as exc:
            log.warning("%s", exc)  # the hub keeps trying to read the slot map
        await self.hub.start()
        if not await self.hub.wait_ready(10):
            log.warning("Redis is not reachable yet; clients get 'unavailable' until it is")
        with contextlib.suppress(Unavailable):
            await self.store.tokens.load_secret()  # else file links wait for a first download
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: Session(self),
            self.settings.host,
            self.settings.port,
            reuse_port=True,
            backlog=4096,
        )
        self._tasks.append(asyncio.create_task(self._presence_forever(), name="presence"))
        self._tasks.append(asyncio.create_task(self._timers_forever(), name="timers"))
        log.info("listening on %s:%d", self.settings.host, self.settings.port)

    async def shutdown(self) -> None:
        timeout = self.settings.shutdown_timeout_s
        log.info("shutting down: %d clients to drain within %g s", len(self.sessions), timeout)
        if self._server is not None:
            self._server.close()
        busy = [task for s in self.sessions if (task := s.busy) is not None]
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
        with contextlib.suppress(Unavailable):
            await self.store.presence.gateway_gone(self.name)
        await self.store.close()
        await self.redis.aclose()
        log.info("stopped")

    # -- sessions -----------------------------------------------------------------
    def admit(self, session: Session) -> bool:
        self.sessions.add(session)
        self._all_gone.clear()
        address = session.peer_address
        self._per_address[address] += 1
        limit = self.settings.max_connections_per_ip
        return not limit or self._per_address[address] <= limit

    def reserve_upload(self, nbytes: int) -> bool:
        """Take ``nbytes`` from the budget of upload bytes this gateway holds at once
        (``--max-upload-bytes-in-flight``); one upload is always let in."""
        limit = self.settings.max_upload_bytes_in_flight
        if self.uploads_in_flight and self.uploads_in_flight + nbytes > limit:
            return False
        self.uploads_in_flight += nbytes
        return True

    def release_upload(self, nbytes: int) -> None:
        self.uploads_in_flight = max(0, self.uploads_in_flight - nbytes)

    def file_url(self, fid: str, user: str, base: str) -> str:
        """A link to a file that works with curl alone: signed for ``user``, expiring."""
        base = self.settings.public_url.rstrip("/") or base
        signed = self.store.tokens.sign(fid, user)
        if signed is None:  # Redis was down at start: fetch the key for the next link
            if self._secret_task is None or self._secret_task.done():
                self._secret_task = asyncio.create_task(self.load_link_key())
            return f"{base}/files/{fid}"  # needs a token meanwhile
        expires, signature = signed
        return f"{base}/files/{fid}?u={quote(user)}&e={expires}&s={signature}"

    async def load_link_key(self) -> None:
        """The key file links are signed with, if it was not loaded at start."""
        with contextlib.suppress(Unavailable):
            await self.store.tokens.ensure_secret()

    def forget(self, session: Session) -> None:
        if session in self.sessions:
            self.sessions.discard(session)
            address = session.peer_address
            self._per_address[address] -= 1
            if self._per_address[address] <= 0:
                del self._per_address[address]
            if not self.sessions:
                self._all_gone.set()

    async def user_joined(self, name: str) -> None:
        """Count the user in and tell Redis now, so /status anywhere shows them at once."""
        self.users[name] += 1
        try:
            await self.store.presence.update(self.name, {name: self.users[name]})
        except Unavailable:
            self._presence_full = True  # the next heartbeat rewrites it all

    def user_left(self, name: str) -> None:
        self.users[name] -= 1
        if self.users[name] <= 0:
            del self.users[name]
        self._presence_dirty.add(name)
        self._presence_wake.set()

    def _reconnected(self) -> None:
        """The pub/sub link is back (the hub re-reads what was missed): Redis may
        have restarted, so presence is rewritten and caches are dropped."""
        self._presence_full = True
        self.store.forget_cached()

    async def _timers_forever(self) -> None:
        """Login, idle and stall timeouts of every session, checked once a second:
        one sweep instead of a timer per connection."""
        while not self._closing:
            await asyncio.sleep(TIMER_SWEEP_S)
            now = time.monotonic()
            for session in list(self.sessions):
                session.check_timers(now)

    # -- presence -------------------------------------------------------------------
    async def _presence_forever(self) -> None:
        ttl = self.settings.heartbeat_s * 3
        while not self._closing:
            self._presence_wake.clear()
            dirty, self._presence_dirty = self._presence_dirty, set()
            try:
                if self._presence_full:
                    self._presence_full = False
                    await self.store.presence.heartbeat(self.name, dict(self.users), ttl)
                else:
                    await self.store.presence.heartbeat(self.name, None, ttl)
                    await self.store.presence.update(
                        self.name, {n: self.users.get(n, 0) for n in dirty}
                    )
            except Unavailable as exc:
                log.warning("could not refresh presence: %s", exc)
                self._presence_full = True
            try:
                # Not wait_for: on 3.11 with uvloop, cancelling it here could hang shutdown.
                async with asyncio.timeout(self.settings.heartbeat_s):
                    await self._presence_wake.wait()
                await asyncio.sleep(PRESENCE_COALESCE_S)
            except TimeoutError:
                pass

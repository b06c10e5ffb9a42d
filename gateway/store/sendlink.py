"""The send steps' own connection to a single Redis, one batch at a time.

Why not a redis-py pipeline: a direct message is one ``EVALSHA`` of a batch, and
redis-py's pipeline machinery (a connection from the pool, a timeout and two
layers of parsing per reply) cost 9.5 µs of CPU per command; the same batch
packed by hiredis, written with ``send_packed_command`` and read reply by reply
on one connection costs 3.8 µs (docs/performance.md). The connection is made by
redis-py: it is one of the client's pooled connections, kept until ``close``
gives it back, so it connects exactly as every other one does (URL, TLS,
password, database, client name), and closing the pool closes it.

What it promises:
- One batch in flight: the next waits for the link, and sends made meanwhile
  join it (``Messages`` starts the next batch when one ends), so batches grow
  under load instead of queueing.
- Nothing is sent twice. redis-py retries a pipeline once after a connection
  error, which would store a send without a client id a second time if the first
  had run; here a failed batch fails, each of its sends is answered
  ``unavailable``, and a client's retry with the same ``cid`` is stored once.
  Only the health check (a PING before a batch on a connection idle for the
  pool's ``health_check_interval``) is retried, as on every pooled connection.
- Every wait is bounded by ``timeout_s``: past it the connection is closed (a late
  reply could no longer be matched) and the next batch makes a new one.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Sequence
from typing import Any

import hiredis
from redis.asyncio import Redis
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

__all__ = ["SendLink"]


class SendLink:
    def __init__(self, redis: Redis, timeout_s: float = 5.0) -> None:
        self._pool = redis.connection_pool
        self.timeout_s = timeout_s
        self._conn: AbstractConnection | None = None
        self._lock = asyncio.Lock()

    async def run(self, commands: Sequence[Sequence[Any]]) -> list[Any]:
        """Send ``commands`` in one write; their replies in order, a Redis error
        reply as its redis-py exception (``NoScriptError``, ...). Raises a redis-py
        ``ConnectionError`` or ``TimeoutError`` when the link fails: then any of
        them may have run."""
        data = b"".join(hiredis.pack_command(tuple(c)) for c in commands)
        async with self._lock:
            conn = self._conn
            if conn is None:
                # Kept until close(); the pool still counts it, and closes it with the rest.
                conn = self._conn = await self._pool.get_connection()  # type: ignore[no-untyped-call]
            try:
                async with asyncio.timeout(self.timeout_s):
                    await conn.send_packed_command(data)  # connects, or checks an idle one
                    return [await _reply(conn) for _ in commands]
            except TimeoutError:
                # redis-py closed the connection when its read was cancelled.
                what = f"no reply from Redis within {self.timeout_s:g} s"
                raise RedisTimeoutError(what) from None

    async def close(self) -> None:
        """Give the connection back to the pool."""
        async with self._lock:
            if self._conn is not None:
                await self._pool.release(self._conn)
                self._conn = None


async def _reply(conn: AbstractConnection) -> Any:
    # math.inf: no timeout per reply (redis-py's default makes one each); the batch
    # has one. An error reply is read whole, so the replies after it stay in step.
    try:
        return await conn.read_response(timeout=math.inf)
    except ResponseError as exc:
        return exc

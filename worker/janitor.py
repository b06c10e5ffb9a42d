"""Housekeeping: trims what has outlived the message lifetime, so memory stays
bounded with no traffic, and logs the end of each ban.

Trimming is idempotent (XTRIM MINID), so any number of workers may run it at once
and the result is the same; no claim is needed. Gateways also trim on every send;
this pass covers conversations nobody writes to any more, and the users' logs.
"""

from __future__ import annotations

import asyncio
import logging

from redis.asyncio import Redis

from gateway.errors import Unavailable
from gateway.store import REDIS_DOWN, Keys, now_ms
from gateway.store.moderation import Moderation

__all__ = ["log_ended_bans_forever", "trim_expired", "trim_forever"]

log = logging.getLogger("redchat.janitor")


async def trim_expired(redis: Redis, keys: Keys, message_ttl_s: int, max_len: int) -> int:
    """One pass over every stream: drop entries past the lifetime and over the cap.

    Returns the number of entries removed.
    """
    min_id = f"{now_ms() - message_ttl_s * 1000}-0" if message_ttl_s else None
    removed = 0
    for pattern in (keys.stream_pattern, keys.log_pattern):
        async for key in redis.scan_iter(match=pattern, count=500, _type="stream"):
            if min_id is not None:
                removed += int(await redis.xtrim(key, minid=min_id, approximate=False))
            removed += int(await redis.xtrim(key, maxlen=max_len, approximate=True))
    return removed


async def trim_forever(
    redis: Redis, keys: Keys, message_ttl_s: int, max_len: int, interval_s: float
) -> None:
    while True:
        try:
            removed = await trim_expired(redis, keys, message_ttl_s, max_len)
            if removed:
                log.info("trimmed %d expired messages", removed)
        except REDIS_DOWN as exc:
            log.warning("trim pass failed, Redis unreachable: %s", exc)
        await asyncio.sleep(interval_s)


async def log_ended_bans_forever(moderation: Moderation, interval_s: float = 1.0) -> None:
    """A ban ends by itself (its key expires); this logs it and takes it off the
    operators' index. Each end is logged once, by the worker that removed it."""
    while True:
        try:
            for user in await moderation.ended_bans():
                log.warning("ban ended user=%s", user)
        except Unavailable as exc:
            log.warning("ban pass failed, Redis unreachable: %s", exc)
        await asyncio.sleep(interval_s)

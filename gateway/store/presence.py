"""Presence: which gateways are alive and who is connected to each."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, cast

from redis.asyncio import Redis

from gateway.store.keys import Keys
from gateway.store.redis import boundary
from gateway.store.time import now_ms

__all__ = ["Presence"]


@boundary
class Presence:
    def __init__(self, redis: Redis, keys: Keys) -> None:
        self.redis = redis
        self.keys = keys

    async def heartbeat(self, gateway: str, users: Mapping[str, int] | None, ttl_s: float) -> None:
        """Mark the gateway alive; with ``users`` also rewrite its list of who is on it."""
        key = self.keys.presence(gateway)
        # The list is rewritten in one MULTI, so a reader never sees it empty; the
        # index of gateways is another key (another slot on a cluster), written after.
        async with self.redis.pipeline(transaction=True) as pipe:
            if users is not None:
                pipe.delete(key)
                if users:
                    pipe.hset(key, mapping=dict[Any, Any](users))
            pipe.expire(key, max(1, int(ttl_s)))
            await pipe.execute()
        await self.redis.zadd(self.keys.gateways, {gateway: now_ms()})

    async def update(self, gateway: str, counts: Mapping[str, int]) -> None:
        """Set how many connections each named user has on a gateway (0 removes them)."""
        if not counts:
            return
        key = self.keys.presence(gateway)
        async with self.redis.pipeline(transaction=True) as pipe:
            gone = [name for name, n in counts.items() if n <= 0]
            here = {name: n for name, n in counts.items() if n > 0}
            if gone:
                pipe.hdel(key, *gone)
            if here:
                pipe.hset(key, mapping=cast(dict[Any, Any], here))
            await pipe.execute()

    async def gateway_gone(self, gateway: str) -> None:
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.zrem(self.keys.gateways, gateway)
            pipe.delete(self.keys.presence(gateway))
            await pipe.execute()

    async def online(self, stale_ms: int) -> list[str]:
        """Names online on any live gateway, sorted ignoring case."""
        gateways = await self.redis.zrange(
            self.keys.gateways, now_ms() - stale_ms, "+inf", byscore=True
        )
        if not gateways:
            return []
        async with self.redis.pipeline(transaction=False) as pipe:
            for gw in gateways:
                pipe.hkeys(self.keys.presence(str(gw)))
            results: Sequence[Iterable[str]] = await pipe.execute()
        names = {str(n) for names in results for n in names}
        return sorted(names, key=str.lower)

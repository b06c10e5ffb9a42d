"""Listening to the channels the store publishes on, from a test: SUBSCRIBE on one
Redis (or fakeredis), SSUBSCRIBE through redis-py's cluster pub/sub on a cluster,
where the store publishes with SPUBLISH."""

from __future__ import annotations

from typing import Any

from gateway.store.redis import is_cluster


class Listener:
    def __init__(self, redis: Any) -> None:
        self.pubsub = redis.pubsub()
        self.sharded = is_cluster(redis)

    async def subscribe(self, channel: str) -> None:
        if self.sharded:
            await self.pubsub.ssubscribe(channel)
        else:
            await self.pubsub.subscribe(channel)

    async def get_message(
        self, ignore_subscribe_messages: bool = False, timeout: float = 1.0
    ) -> dict[str, Any] | None:
        if self.sharded:
            got = await self.pubsub.get_sharded_message(
                ignore_subscribe_messages=ignore_subscribe_messages, timeout=timeout
            )
        else:
            got = await self.pubsub.get_message(
                ignore_subscribe_messages=ignore_subscribe_messages, timeout=timeout
            )
        return dict(got) if got is not None else None

    async def aclose(self) -> None:
        await self.pubsub.aclose()


def listener(redis: Any) -> Listener:
    return Listener(redis)

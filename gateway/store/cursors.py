"""Conversations and cursors: what each user reads, and how far it was delivered.

A user's direct conversations are a sorted set scored by last activity (ms,
refreshed at most once a minute by the send path). A conversation whose history
has expired leaves the list, with its cursor, the next time the list is read, so
the list is bounded by what is alive. ``#general`` is everyone's and not listed.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline

from gateway.store.keys import GENERAL, Keys
from gateway.store.redis import Scripts, boundary
from gateway.store.time import now_ms

__all__ = ["Cursors"]

MAX_DIRECT: Final = 1000  # direct conversations a login or status looks at (most recent)
PRUNE_SLACK_MS = 120_000  # the list's scores lag the last message by up to a minute


@boundary
class Cursors:
    def __init__(self, redis: Redis, keys: Keys, scripts: Scripts, message_ttl_s: int) -> None:
        self.redis = redis
        self.keys = keys
        self.scripts = scripts
        self.message_ttl_s = message_ttl_s

    async def conversations(self, user: str) -> list[str]:
        """Every conversation the user reads: #general first, then direct ones."""
        return [GENERAL, *await self.direct(user)]

    async def direct(self, user: str, most: int = MAX_DIRECT) -> list[str]:
        """The user's ``most`` most recently active direct conversations (sorted).

        Their activity lags the last message by at most the send path's refresh
        interval, so a conversation with anything new is among them unless ``most``
        others have been active since: logins and status read a bounded number of
        conversations however many a user has."""
        return (await self.read(user, most))[0]

    async def cursors(self, user: str) -> dict[str, str]:
        raw = await self.redis.hgetall(self.keys.cursors(user))
        return {str(k): str(v) for k, v in raw.items()}

    async def read(self, user: str, most: int = MAX_DIRECT) -> tuple[list[str], dict[str, str]]:
        """``direct`` and ``cursors`` in one round trip (all the user's keys share a
        slot): what a login needs to know what is unread."""
        k = self.keys
        lists, cursors = k.conversations(user), k.cursors(user)

        def fill(pipe: Pipeline) -> None:
            if self.message_ttl_s:
                before = now_ms() - self.message_ttl_s * 1000 - PRUNE_SLACK_MS
                self.scripts.queue(pipe, "prune_conversations", [lists, cursors], [before])
            pipe.zrange(lists, 0, most - 1, desc=True)
            pipe.hgetall(cursors)

        results = await self.scripts.run_pipeline(fill, ("prune_conversations",))
        for result in results:
            if isinstance(result, Exception):
                raise result
        dms, raw = results[-2:]
        return sorted(str(c) for c in dms), {str(a): str(b) for a, b in raw.items()}

    async def advance(self, items: Mapping[str, Mapping[str, str]]) -> None:
        """Save delivered ids: {user: {conversation: id}}; a cursor never moves back."""
        if not items:
            return

        def fill(pipe: Pipeline) -> None:
            for user, convs in items.items():
                args = [x for pair in convs.items() for x in pair]
                self.scripts.queue(pipe, "advance", [self.keys.cursors(user)], args)

        await self.scripts.run_pipeline(fill, ("advance",))

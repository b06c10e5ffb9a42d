"""The hub's pub/sub link on a Redis Cluster: sharded pub/sub, one connection per node.

A sharded channel lives on the shard that owns its slot, so the link keeps one
sharded ``Subscriber`` per primary that owns a subscribed channel, opened when the
first such channel is subscribed. It offers what the hub uses of a ``Subscriber``
(connect, subscribe, unsubscribe, read_batch, close), so the hub runs one code path
on a single Redis and on a cluster.

Where the channels live comes from redis-py's cluster client (its slot map), read
again at every ``connect``. Any one node's link failing fails the whole link: its
node died, a failover made another node the owner, or a slot moved (the node said
MOVED, or dropped the subscription). The hub then does what it does after any
outage: a new link (on a fresh slot map), every channel subscribed again where it
lives now, and what was published meanwhile re-read from the streams.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable
from typing import Any

from redis.asyncio import Redis

from gateway.net.pubsub import Subscriber, SubscriberClosed

__all__ = ["ShardedSubscriber"]

# A node's link that failed: read_batch raises it (the hub reconnects everything).
_Failed = SubscriberClosed


class ShardedSubscriber:
    def __init__(self, url: str, cluster: Redis, *, client_name: str | None = None) -> None:
        self._url = url
        self._cluster: Any = cluster  # a RedisCluster, typed as Redis (see make_cluster)
        self._client_name = client_name
        self._nodes: dict[tuple[str, int], asyncio.Task[Subscriber]] = {}
        self._readers: set[asyncio.Task[None]] = set()
        self._batches: asyncio.Queue[list[tuple[bytes, bytes]] | _Failed] = asyncio.Queue()
        self._closed: str | None = None

    async def connect(self) -> None:
        """Read the slot map afresh (the nodes' links open as channels need them)."""
        try:
            async with asyncio.timeout(5):
                await self._cluster.initialize()  # once per client (its first use)
                await self._cluster.nodes_manager.initialize()
        except Exception as exc:  # redis-py raises several kinds for "no node answers"
            raise SubscriberClosed(f"cannot read the cluster's slot map: {exc}") from exc

    def _address(self, channel: str) -> tuple[str, int]:
        slot = self._cluster.keyslot(channel)
        node = self._cluster.nodes_manager.get_node_from_slot(slot)
        return str(node.host), int(node.port)

    def _by_node(self, channels: Iterable[str]) -> dict[tuple[str, int], list[str]]:
        groups: dict[tuple[str, int], list[str]] = {}
        for channel in channels:
            try:
                address = self._address(channel)
            except Exception as exc:  # no node owns the slot (the map is out of date)
                raise self._fail(f"no node for {channel[:100]!r}: {exc}") from exc
            groups.setdefault(address, []).append(channel)
        return groups

    async def subscribe(self, channels: Iterable[str]) -> None:
        """Subscribe on each channel's node, connecting to it first if need be; waits
        for every confirmation. Raises SubscriberClosed if any node fails."""
        groups = self._by_node(channels)

        async def on(address: tuple[str, int], names: list[str]) -> None:
            sub = await self._node(address)
            await sub.subscribe(names)

        results = await asyncio.gather(
            *(on(address, names) for address, names in groups.items()), return_exceptions=True
        )
        for result in results:
            if isinstance(result, BaseException):
                raise self._fail(str(result)) from result

    def unsubscribe(self, channels: Iterable[str]) -> None:
        for address, names in self._by_node(channels).items():
            task = self._nodes.get(address)
            if task is not None and task.done() and not task.cancelled() and not task.exception():
                task.result().unsubscribe(names)

    def _node(self, address: tuple[str, int]) -> asyncio.Task[Subscriber]:
        if self._closed is not None:
            raise SubscriberClosed(self._closed)
        task = self._nodes.get(address)
        if task is None:
            task = self._nodes[address] = asyncio.create_task(self._open(address))
        return task

    async def _open(self, address: tuple[str, int]) -> Subscriber:
        sub = Subscriber(self._url, client_name=self._client_name, sharded=True, address=address)
        await sub.connect()
        reader = asyncio.create_task(self._read(sub))
        self._readers.add(reader)
        reader.add_done_callback(self._readers.discard)
        return sub

    async def _read(self, sub: Subscriber) -> None:
        try:
            while True:
                self._batches.put_nowait(await sub.read_batch())
        except SubscriberClosed as exc:
            self._batches.put_nowait(exc)

    async def read_batch(self) -> list[tuple[bytes, bytes]]:
        """The next messages from any node; SubscriberClosed once any node's link failed."""
        if self._closed is not None:
            raise SubscriberClosed(self._closed)
        got = await self._batches.get()
        if isinstance(got, SubscriberClosed):
            raise self._fail(str(got))
        return got

    def _fail(self, reason: str) -> SubscriberClosed:
        if self._closed is None:
            self._closed = reason
        self._batches.put_nowait(SubscriberClosed(self._closed))  # wake a waiting reader
        return SubscriberClosed(self._closed)

    async def close(self) -> None:
        self._fail("pub/sub connection closed")
        for reader in list(self._readers):
            reader.cancel()
        tasks = list(self._nodes.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*self._readers, *tasks, return_exceptions=True)
        for task in tasks:
            if task.done() and not task.cancelled() and task.exception() is None:
                with contextlib.suppress(OSError):
                    await task.result().close()
        self._nodes.clear()

"""The Redis connection and the store's boundary: clients, scripts, errors.

``make_redis`` builds the client every process uses. ``Scripts`` loads the Lua in
``lua/*.lua`` and is the one path that calls a script, with one retry after
NOSCRIPT (Redis restarted empty). ``boundary`` wraps the public coroutines of a
store class so that Redis being unreachable leaves the store as exactly one
exception, ``Unavailable``; anything else that escapes is a bug.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, Final, ParamSpec, TypeVar, cast

import hiredis
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.client import Pipeline
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.connection import HiredisRespSerializer
from redis.exceptions import ClusterError, NoScriptError, ReadOnlyError, RedisClusterException
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from gateway.errors import Unavailable

__all__ = [
    "REDIS_DOWN",
    "ScriptBatch",
    "Scripts",
    "boundary",
    "is_cluster",
    "make_redis",
    "publish_command",
    "raise_if_down",
    "unavailable",
]

# What Redis being unreachable looks like from redis-py (a failover replica
# refusing writes included). OSError covers the socket layer under it.
REDIS_DOWN: Final = (
    RedisConnectionError,
    RedisTimeoutError,
    ReadOnlyError,
    OSError,
    # A cluster without a primary for some slot, or none reachable (a failover).
    ClusterError,
    RedisClusterException,
)

P = ParamSpec("P")
R = TypeVar("R")
C = TypeVar("C", bound=type)


class _HiredisPacking:
    """redis-py's asyncio connections pack commands in Python even with hiredis
    installed; on the send path that was a fifth of the gateway's CPU.

    A command whose name is one word (letters and digits) goes to hiredis as it
    is: redis-py's packer first copies every argument through a generator to turn
    a bytearray into bytes (26 arguments a send step), and hiredis refuses a
    bytearray with TypeError, which falls back to that packer."""

    _packer = HiredisRespSerializer()

    def pack_command(self, *args: Any) -> list[bytes]:
        first = args[0]
        if type(first) is str and first.isalnum():  # no space: nothing to split
            try:
                return [hiredis.pack_command(args)]
            except TypeError:
                pass
        return self._packer.pack(*args)  # type: ignore[no-any-return]


def make_redis(
    url: str, client_name: str | None = None, max_connections: int = 64, *, cluster: bool = False
) -> Redis:
    """The client of a gateway or worker.

    - Fails fast: during an outage a command errors at once instead of hanging.
    - When all connections are busy (a login storm) a command waits for one.
    - A connection idle for 2 s is checked with PING before use, and a command
      that fails because its connection was closed (Redis restarted, CLIENT KILL)
      is retried once on a fresh one. Not after a timeout: the command may have
      run. On a single Redis, sends do not come this way: they have a link of
      their own that never sends a batch twice (gateway.store.sendlink). On a
      cluster they do; a send with a ``cid`` is deduplicated, and a send's
      connection was just PINGed or just used.
    - ``client_name`` shows in CLIENT LIST, so an operator sees which process is which.
    - ``cluster``: ``url`` names one node of a Redis Cluster (see ``make_cluster``).
    """
    if cluster:
        return make_cluster(url, client_name, max_connections)
    pool = BlockingConnectionPool.from_url(
        url,
        decode_responses=True,
        socket_connect_timeout=2,
        socket_timeout=5,
        retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
        health_check_interval=2,
        max_connections=max_connections,
        timeout=5,
        client_name=client_name,
    )
    base = pool.connection_class
    pool.connection_class = type(base.__name__, (_HiredisPacking, base), {})
    return Redis(connection_pool=pool)


def make_cluster(url: str, client_name: str | None, max_connections: int) -> Redis:
    """A Redis Cluster client: redis-py's, which discovers the nodes from the one in
    ``url``, follows MOVED and ASK, and finds the new primary after a failover
    (refreshing the slot map after a connection error). The same timeouts as a
    single Redis; ``max_connections`` per node.

    Typed as ``Redis``: it offers the same commands, so the store is one code path.
    What differs (sharded pub/sub, WAIT on the node that has the key) asks
    ``is_cluster``.
    """
    client = RedisCluster.from_url(
        url,
        decode_responses=True,
        socket_connect_timeout=2,
        socket_timeout=5,
        max_connections=max_connections,
        client_name=client_name,
        # Each retry after a connection error first refreshes the slot map, so a
        # failover (a few seconds) is ridden out within one command's attempts.
        retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), 3),
    )
    return cast(Redis, client)


def is_cluster(redis: Redis) -> bool:
    return isinstance(redis, RedisCluster)


async def ready(redis: Redis) -> None:
    """Read a cluster's slot map before the client is first used: redis-py's cluster
    client fails commands that race its own first look. Nothing on a single Redis.
    Raises ``Unavailable`` when no node answers."""
    if not is_cluster(redis):
        return
    try:
        await cast(RedisCluster, redis).initialize()
    except REDIS_DOWN as exc:
        raise unavailable(exc) from exc


def publish_command(redis: Redis) -> str:
    """PUBLISH; on a cluster SPUBLISH, which goes only to the shard that owns the
    channel's slot (PUBLISH would go to every node)."""
    return "SPUBLISH" if is_cluster(redis) else "PUBLISH"


def unavailable(exc: BaseException) -> Unavailable:
    return Unavailable(f"Redis unreachable: {type(exc).__name__}: {exc}")


def boundary(cls: C) -> C:
    """Wrap every public coroutine of ``cls``: Redis errors become ``Unavailable``."""
    for name, fn in list(vars(cls).items()):
        if name.startswith("_") or not inspect.iscoroutinefunction(fn):
            continue
        setattr(cls, name, _wrapped(fn))
    return cls


def _wrapped(fn: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
    @functools.wraps(fn)
    async def call(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return await fn(*args, **kwargs)
        except Unavailable:
            raise
        except REDIS_DOWN as exc:
            raise unavailable(exc) from exc

    return call


def raise_if_down(results: list[Any]) -> list[Any]:
    """A pipeline's results, unless one says Redis is unreachable: that is raised."""
    for result in results:
        if isinstance(result, REDIS_DOWN):
            raise result
    return results


def load_lua(name: str) -> str:
    return resources.files("gateway.store").joinpath("lua", f"{name}.lua").read_text()


class Scripts:
    """Every Lua script, loaded once; called by name, alone or in a pipeline."""

    NAMES: Final = (
        "send",
        "advance",
        "claim",
        "prune_conversations",
        "login_attempt",
        "login_ok",
        "login_begin",
        "login_done",
        "gate",
        "refund",
        "report",
        "schedule_add",
        "schedule_cancel",
        "schedule_claim",
        "schedule_done",
        "room_create",
        "room_member",
    )

    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        # On a cluster, events go by sharded pub/sub: a script publishes with SPUBLISH
        # on a channel of its own keys' slot (Redis refuses any other).
        self.sharded = is_cluster(redis)
        self.publish_command = publish_command(redis)
        self._source = {name: self._load(name) for name in self.NAMES}
        self._sha = {name: redis.register_script(src).sha for name, src in self._source.items()}
        self._filling: dict[int, _Filling] = {}  # pipelines run_pipeline is filling

    def _load(self, name: str) -> str:
        source = load_lua(name)
        if self.sharded:
            source = source.replace("redis.call('PUBLISH',", "redis.call('SPUBLISH',")
        return source

    def publish(self, pipe: Pipeline | Redis, channel: str, payload: str) -> Any:
        """Queue (or, on a client, send) one event outside a script: PUBLISH, or
        SPUBLISH on a cluster (routed to the node that owns the channel's slot)."""
        return pipe.execute_command(self.publish_command, channel, payload)

    async def call(self, name: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        for attempt in range(2):
            try:
                return await self.redis.evalsha(self._sha[name], len(keys), *keys, *args)
            except NoScriptError:
                if attempt:
                    raise
                await self.load((name,))
        raise AssertionError("unreachable")

    def command(self, name: str, keys: Sequence[str], args: Sequence[Any]) -> list[Any]:
        """The EVALSHA command of a script call, for a link that sends its own."""
        return ["EVALSHA", self._sha[name], len(keys), *keys, *args]

    async def load(self, names: Sequence[str]) -> None:
        """Load scripts into Redis (after NOSCRIPT: it restarted empty)."""
        for name in names:
            await self.redis.script_load(self._source[name])

    def queue(self, pipe: Pipeline, name: str, keys: Sequence[str], args: Sequence[Any]) -> None:
        filling = self._filling.get(id(pipe))
        if filling is not None:
            call = len(filling.positions)
            filling.positions.append(len(pipe))
            if call in filling.skip:
                return
        # As a plain command: redis-py's cluster pipeline refuses its evalsha method,
        # yet routes EVALSHA by its keys like any keyed command.
        pipe.execute_command(*self.command(name, keys, args))

    async def run_pipeline(
        self, fill: Callable[[Pipeline], None], names: Sequence[str] = NAMES
    ) -> list[Any]:
        """Run a pipeline that ``fill`` queues (scripts among other commands). Results
        or errors, one per command.

        A script Redis did not have (it restarted empty) is loaded, with ``names``,
        and the pipeline runs once more without the script calls that ran: a
        pipeline is not atomic, and another process's SCRIPT LOAD can land between
        its commands, so that some calls were refused and others ran. Running those
        again stored a message twice (found by the direct-message bench, two
        gateways starting at once). The other commands do run again, so that what
        they read follows the scripts: they must be safe to run twice (reads,
        ``ZADD GT``, ``WAIT``), and ``fill`` must queue the same each time."""
        results, first = await self._fill_and_run(fill, frozenset())
        refused = {
            call
            for call, at in enumerate(first.positions)
            if isinstance(results[at], NoScriptError)
        }
        if refused:
            await self.load(names)
            ran = frozenset(range(len(first.positions))) - refused
            again, _ = await self._fill_and_run(fill, ran)
            skipped = {first.positions[call] for call in ran}
            redone = (at for at in range(len(results)) if at not in skipped)
            for at, result in zip(redone, again, strict=True):
                results[at] = result
        return raise_if_down(results)

    async def _fill_and_run(
        self, fill: Callable[[Pipeline], None], skip: frozenset[int]
    ) -> tuple[list[Any], _Filling]:
        """One pipeline of what ``fill`` queues, leaving out the script calls ``skip``
        (by their order among the script calls)."""
        async with self.redis.pipeline(transaction=False) as pipe:
            filling = self._filling[id(pipe)] = _Filling(skip)
            try:
                fill(pipe)
            finally:
                del self._filling[id(pipe)]
            results: list[Any] = await pipe.execute(raise_on_error=False)
        return results, filling


@dataclass(slots=True)
class _Filling:
    """A pipeline being filled by ``Scripts.run_pipeline``: the script calls to leave
    out, and where each script call was queued (its position among the commands)."""

    skip: frozenset[int]
    positions: list[int] = field(default_factory=list)


class ScriptBatch:
    """Calls of one script made in the same loop turn, from any session, share one
    pipeline: one round trip for all of them. Every caller's future is resolved,
    whatever happens to the batch or to any one caller."""

    def __init__(self, scripts: Scripts, name: str) -> None:
        self.scripts = scripts
        self.name = name
        self._pending: list[tuple[Sequence[str], Sequence[Any], asyncio.Future[Any]]] = []
        self._tasks: set[asyncio.Task[None]] = set()

    async def call(self, keys: Sequence[str], args: Sequence[Any]) -> Any:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        if not self._pending:
            loop.call_soon(self._start)
        self._pending.append((keys, args, future))
        return await future

    def _start(self) -> None:
        batch, self._pending = self._pending, []
        task = asyncio.create_task(self._run(batch))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(
        self, batch: list[tuple[Sequence[str], Sequence[Any], asyncio.Future[Any]]]
    ) -> None:
        results: list[Any] | None = None
        failure: BaseException = Unavailable("the request was interrupted")

        def fill(pipe: Pipeline) -> None:
            for keys, args, _ in batch:
                self.scripts.queue(pipe, self.name, keys, args)

        try:
            results = await self.scripts.run_pipeline(fill, (self.name,))
        except Exception as exc:
            failure = exc
        finally:
            for i, (_, _, future) in enumerate(batch):
                if future.done():  # its caller went away meanwhile
                    continue
                result = failure if results is None else results[i]
                if isinstance(result, BaseException):
                    future.set_exception(result)
                else:
                    future.set_result(result)

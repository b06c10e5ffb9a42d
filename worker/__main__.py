"""``redchat-worker --redis URL``: run the background jobs until SIGTERM or Ctrl-C.

Under the gateway's supervisor it also beats on the supervisor's heartbeat pipe and
leaves when the supervisor dies (the helpers live in ``gateway.__main__``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
from collections.abc import Sequence

from redis.asyncio import Redis
from redis.exceptions import RedisError

from gateway.__main__ import follow_supervisor, start_heartbeat
from gateway.errors import ConfigError, Unavailable
from gateway.logs import configure_logging
from gateway.settings import WorkerSettings, parse_settings
from gateway.store import Keys, Store, make_redis
from gateway.store.moderation import Moderation, ModerationLimits
from gateway.store.redis import Scripts, ready
from worker.janitor import log_ended_bans_forever, trim_forever
from worker.scheduler import FAULT_ENV, SEND_DEDUPE_S, Scheduler

__all__ = ["main"]

log = logging.getLogger("redchat.worker")

STOP_TIMEOUT_S = 5.0

DESCRIPTION = """\
Run the redchat background jobs against the Redis given by --redis (required)
until SIGTERM or Ctrl-C: every --trim-interval-s seconds, trim history past
--message-ttl and --history-max-len, also in conversations nobody writes to any
more; log each ban as it ends; send scheduled messages when they are due (each
exactly once, whichever worker claims it). Any number of workers may run at once. The
worker never starts a Redis of its own: `redchat-gateway --with-worker` runs one
next to the gateways."""

HELP_OVERRIDES = {
    "redis_url": "Redis URL, required: the worker never starts an embedded Redis",
    "data_dir": "unused by the worker (where the gateway's embedded Redis keeps its files)",
}


async def run(settings: WorkerSettings) -> None:
    redis = make_redis(settings.redis_url, cluster=settings.redis_cluster)
    await _ready(redis)
    keys = Keys(settings.prefix)
    jobs = [
        asyncio.create_task(
            trim_forever(
                redis,
                keys,
                settings.message_ttl_s,
                settings.history_max_len,
                settings.trim_interval_s,
            )
        ),
        asyncio.create_task(
            log_ended_bans_forever(
                Moderation(redis, keys, Scripts(redis), ModerationLimits.of(settings))
            )
        ),
    ]
    scheduler = _scheduler(redis, keys, settings)
    scheduling = asyncio.create_task(scheduler.run())
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    start_heartbeat(loop)
    log.info("worker running (trim every %g s)", settings.trim_interval_s)
    await stop.wait()
    log.info("worker stopping")
    # The scheduler finishes the sends it has started (a stop flag, not a cancel).
    scheduler.stop()
    await asyncio.wait([scheduling], timeout=STOP_TIMEOUT_S)
    if not await _cancel([*jobs, scheduling], STOP_TIMEOUT_S):
        log.error("jobs did not stop within %g s; exiting anyway", STOP_TIMEOUT_S)
        os._exit(1)  # whoever sent SIGTERM sees the failure
    with contextlib.suppress(TimeoutError, RedisError, OSError, Unavailable):
        await asyncio.wait_for(scheduler.store.close(), STOP_TIMEOUT_S)
    with contextlib.suppress(TimeoutError, RedisError, OSError):
        await asyncio.wait_for(redis.aclose(), STOP_TIMEOUT_S)
    log.info("worker stopped")


async def _ready(redis: Redis) -> None:
    """On a cluster, the slot map before any job runs; until a node answers."""
    while True:
        try:
            await ready(redis)
            return
        except Unavailable as exc:
            log.warning("%s; trying again", exc)
            await asyncio.sleep(1)


def _scheduler(redis: Redis, keys: Keys, settings: WorkerSettings) -> Scheduler:
    # Sends here remember their client ids a day, not the gateways' 5 minutes: a
    # worker taking over a message long after a crash still stores it once.
    store = Store(
        redis, keys, message_ttl_s=settings.message_ttl_s,
        history_max_len=settings.history_max_len, idempotency_ttl_s=SEND_DEDUPE_S,
        moderation=ModerationLimits.of(settings, SEND_DEDUPE_S),
        wait_replicas=settings.redis_wait_replicas,
    )  # fmt: skip
    return Scheduler(
        store,
        f"{socket.gethostname()}:{os.getpid()}",
        poll_s=settings.schedule_poll_s,
        lease_s=settings.schedule_lease_s,
        max_late_s=settings.schedule_max_late_s,
        fault=os.environ.get(FAULT_ENV),
    )


async def _cancel(jobs: list[asyncio.Task[None]], timeout_s: float) -> bool:
    """Cancel ``jobs`` until they are done; False if they still run after ``timeout_s``.

    One cancel is not always enough on Python 3.11: one that lands in a Redis call
    as the connection drops (as when Redis stops with us) can come out as a
    connection error, which the trim loop catches before it sleeps its interval.
    """
    deadline = asyncio.get_running_loop().time() + timeout_s
    while pending := [job for job in jobs if not job.done()]:
        if asyncio.get_running_loop().time() >= deadline:
            return False
        for job in pending:
            job.cancel()
        await asyncio.wait(pending, timeout=0.1)
    return True


def main(argv: Sequence[str] | None = None) -> int:
    try:
        settings = parse_settings(
            WorkerSettings,
            argv,
            prog="redchat-worker",
            description=DESCRIPTION,
            overrides=HELP_OVERRIDES,
        )
        if not settings.redis_url:
            raise ConfigError("--redis URL is required (or REDCHAT_REDIS)")
    except ConfigError as exc:
        print(f"redchat-worker: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, f"worker@{socket.gethostname()}:{os.getpid()}")
    follow_supervisor()
    asyncio.run(run(settings))
    return 0


if __name__ == "__main__":
    sys.exit(main())

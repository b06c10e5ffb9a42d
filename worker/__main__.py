"""``redchat-worker --redis URL``: run the background jobs until SIGTERM or Ctrl-C."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import sys
from collections.abc import Sequence

from gateway.errors import ConfigError
from gateway.keys import Keys
from gateway.logs import configure_logging
from gateway.server import make_redis
from gateway.settings import WorkerSettings, parse_settings
from worker.janitor import trim_forever

__all__ = ["main"]

log = logging.getLogger("redchat.worker")


async def run(settings: WorkerSettings) -> None:
    redis = make_redis(settings.redis_url)
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
        )
    ]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    log.info("worker running (trim every %g s)", settings.trim_interval_s)
    await stop.wait()
    for job in jobs:
        job.cancel()
    await asyncio.gather(*jobs, return_exceptions=True)
    await redis.aclose()
    log.info("worker stopped")


def main(argv: Sequence[str] | None = None) -> int:
    try:
        settings = parse_settings(WorkerSettings, argv, prog="redchat-worker")
        if not settings.redis_url:
            raise ConfigError("--redis URL is required (or REDCHAT_REDIS)")
    except ConfigError as exc:
        print(f"redchat-worker: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, f"worker@{socket.gethostname()}:{os.getpid()}")
    asyncio.run(run(settings))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Small asyncio helpers shared by the gateway's long-running parts."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable

__all__ = ["stop_tasks"]

log = logging.getLogger("redchat.aio")


async def stop_tasks(tasks: Iterable[asyncio.Task[None]], timeout_s: float = 2.0) -> None:
    """Cancel background loops and wait for them, a bounded time.

    Cancelling alone is not enough to stop a ``while`` loop on Python 3.11: a
    cancellation that lands as its wait completes can be swallowed (``wait_for``
    does this, and so can library code), and the loop goes round again. So every
    loop also checks a stop flag its owner sets first, and this waits at most
    ``timeout_s`` rather than forever.
    """
    pending = [t for t in tasks if not t.done()]
    for t in pending:
        t.cancel()
    if not pending:
        return
    _, still = await asyncio.wait(pending, timeout=timeout_s)
    for t in still:
        log.warning("task %s did not stop within %g s", t.get_name(), timeout_s)

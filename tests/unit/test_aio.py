"""Stopping background loops even when a cancellation gets swallowed."""

from __future__ import annotations

import asyncio
import contextlib

from gateway.aio import stop_tasks


async def test_a_loop_that_swallows_its_cancellation_stops_on_its_flag() -> None:
    stopping = False
    rounds = 0

    async def loop() -> None:
        nonlocal rounds
        while not stopping:
            rounds += 1
            # Swallowed, as 3.11's wait_for does when its wait completes meanwhile.
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.sleep(10)

    task = asyncio.create_task(loop())
    await asyncio.sleep(0)
    stopping = True
    await asyncio.wait_for(stop_tasks([task], timeout_s=1), 5)
    assert task.done() and rounds == 1


async def test_a_task_that_never_stops_cannot_hang_the_caller() -> None:
    release = asyncio.Event()

    async def stubborn() -> None:
        while not release.is_set():
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.sleep(10)

    task = asyncio.create_task(stubborn())
    await asyncio.sleep(0)
    await asyncio.wait_for(stop_tasks([task], timeout_s=0.2), 5)  # returns, bounded
    assert not task.done()
    release.set()
    task.cancel()
    await asyncio.wait([task], timeout=1)
    assert task.done()

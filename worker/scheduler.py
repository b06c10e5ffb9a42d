"""The scheduler: sends each scheduled message when it is due, exactly once, however
many workers run.

One pass: read the due index (what is due by now, soonest first, ``BATCH`` at a
time), claim it (a script on the author's keys per message, one round trip for the
batch), send what this worker claimed, then finish each one (forget it and push the
outcome to every client of the author). Between passes the scheduler sleeps until
the next message is due, at most ``--schedule-poll-s``.

A send goes through the same path as a client's: ``Store.resolve`` then
``Store.send``, so bans, the rate limit, room membership, live delivery, unread
counts and the author's log all apply. A refusal (banned, no longer a member, no
such room) is final: the message is dropped and its author gets a ``notice``.

Exactly once:
- while a lease runs, no other worker can claim the message (``schedule_claim.lua``);
- the send's client id is ``s:<sid>``: a worker that died after sending and before
  finishing leaves a lease that ends after ``--schedule-lease-s``; the worker that
  takes over sends again with the same client id, which the send step stores once
  (the worker keeps client ids ``SEND_DEDUPE_S``, a day, not the gateways' 5 min);
- a cancel cannot win once a worker has claimed the message (see
  ``gateway.store.schedules``), and only the first finish tells the author.

How late is too late: a message claimed for the first time more than
``--schedule-max-late`` after its time (no worker ran, or Redis was down) is not
sent, and its author is told (code ``too_late``). A takeover after a crash is
always sent (it may have gone out already; the client id makes that harmless).

Stopping (SIGTERM): the pass in progress finishes, its sends included; nothing new
is claimed. What a stopped worker held is taken over once its lease ends.

Test hook: ``REDCHAT_SCHEDULER_FAULT=after_send`` makes the worker SIGKILL itself
right after a pass's sends and before finishing them (docs/operations.md).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Sequence
from typing import Final

from gateway.errors import ClientError, Unavailable
from gateway.protocol.events import ScheduleOutcome
from gateway.protocol.values import say_duration
from gateway.store import Store, now_ms
from gateway.store.schedules import Claim, ClaimStatus

__all__ = ["BATCH", "FAULT_ENV", "SEND_DEDUPE_S", "Scheduler"]

log = logging.getLogger("redchat.scheduler")

BATCH: Final = 100  # messages claimed per pass
SEND_DEDUPE_S: Final = 86_400  # how long the worker's sends remember their client ids
MAX_TRIES: Final = 5  # claims of one message ending in a bug before it is dropped
FAULT_ENV: Final = "REDCHAT_SCHEDULER_FAULT"


class Scheduler:
    def __init__(
        self,
        store: Store,
        name: str,
        *,
        poll_s: float = 0.25,
        lease_s: float = 30.0,
        max_late_s: int = 3600,
        fault: str | None = None,
    ) -> None:
        self.store = store
        self.name = name
        self.poll_s = poll_s
        self.lease_ms = round(lease_s * 1000)
        self.max_late_ms = max_late_s * 1000
        self.fault = fault or None
        self._stopping = False
        self._wake = asyncio.Event()
        self._failing = False

    def stop(self) -> None:
        """Finish the pass in progress, then return from ``run``."""
        self._stopping = True
        self._wake.set()

    async def run(self) -> None:
        log.info(
            "scheduler %s running (poll %g s, lease %g s)",
            self.name, self.poll_s, self.lease_ms / 1000,
        )  # fmt: skip
        if self.fault:
            log.warning("fault injection on: %s=%s", FAULT_ENV, self.fault)
        while not self._stopping:
            try:
                handled = await self.run_once()
                if self._failing:
                    self._failing = False
                    log.info("scheduler reaches Redis again")
            except Unavailable as exc:
                if not self._failing:
                    self._failing = True
                    log.warning("scheduler pass failed, Redis unreachable: %s", exc)
                handled = 0
            except Exception:
                log.exception("bug in a scheduler pass")
                handled = 0
            if handled < BATCH:
                await self._sleep()
        log.info("scheduler %s stopped", self.name)

    async def _sleep(self) -> None:
        """Until the next message is due, at most ``poll_s`` (a message scheduled
        meanwhile is found at the next look)."""
        delay = self.poll_s
        if not self._failing:
            try:
                soonest = await self.store.schedules.next_due()
            except Unavailable:
                soonest = None
            if soonest is not None:
                delay = min(delay, max(0.0, (soonest - now_ms()) / 1000))
        if self._stopping:
            return
        self._wake.clear()
        try:
            async with asyncio.timeout(delay):
                await self._wake.wait()
        except TimeoutError:
            pass

    async def run_once(self) -> int:
        """One pass; returns how many due entries it looked at."""
        schedules = self.store.schedules
        now = now_ms()
        due = await schedules.due(now, BATCH)
        if not due:
            return 0
        claims = await schedules.claim(due, self.name, now, self.lease_ms)
        mine = [c for c in claims if c.status is ClaimStatus.CLAIMED]
        for c in mine:
            assert c.job is not None
            log.info(
                "claimed sid=%s user=%s to=%s due=%d late=%dms%s",
                c.job.sid, c.job.author, c.job.to, c.job.at, now - c.job.at,
                f" (takeover, claim {c.tries})" if c.tries > 1 else "",
            )  # fmt: skip
        broken = [(c, None) for c in claims if c.status is ClaimStatus.BROKEN]
        for c, _ in broken:
            log.error("dropped an unreadable scheduled message %s", c.due.member)
        await schedules.finish(broken)
        outcomes = await asyncio.gather(*(self._send(c) for c in mine))
        if self.fault == "after_send" and any(o is not None and o.sent for o in outcomes):
            log.warning("fault injection: SIGKILL after sending, before finishing")
            logging.shutdown()
            os.kill(os.getpid(), signal.SIGKILL)
        await self._finish(mine, outcomes)
        return len(due)

    async def _finish(
        self, claims: Sequence[Claim], outcomes: Sequence[ScheduleOutcome | None]
    ) -> None:
        """What was sent or refused is forgotten; the rest waits for its lease to end."""
        done = [(c, o) for c, o in zip(claims, outcomes, strict=True) if o is not None]
        await self.store.schedules.finish(done)

    async def _send(self, claim: Claim) -> ScheduleOutcome | None:
        """Send one claimed message. The outcome to tell its author, or None to leave
        it claimed, for this or another worker to try again when the lease ends."""
        job = claim.job
        assert job is not None
        late_ms = now_ms() - job.at

        def outcome(sent: bool, **kw: str) -> ScheduleOutcome:
            return ScheduleOutcome(job.sid, job.to, job.at, sent, **kw)

        if claim.tries == 1 and self.max_late_ms and late_ms > self.max_late_ms:
            late = say_duration(late_ms / 1000)
            log.warning("not sent sid=%s user=%s: %s late", job.sid, job.author, late)
            return outcome(False, code="too_late", reason=f"it was due {late} ago")
        try:
            conversation, to = await self.store.resolve(job.author, job.to)
            result = await self.store.send(
                job.author, conversation, to, job.text, cid=f"s:{job.sid}",
                reply_to=job.reply_to, scheduled=True,
            )  # fmt: skip
        except ClientError as exc:
            log.info(
                "not sent sid=%s user=%s to=%s code=%s: %s",
                job.sid, job.author, job.to, exc.code, exc.message,
            )  # fmt: skip
            return outcome(False, code=exc.code, reason=exc.message)
        except Unavailable as exc:
            log.warning("could not send sid=%s (%s); it is tried again later", job.sid, exc)
            return None
        except Exception:
            log.exception("bug sending scheduled message sid=%s (claim %d)", job.sid, claim.tries)
            if claim.tries < MAX_TRIES:
                return None
            return outcome(False, code="internal", reason="the server could not send it")
        log.info(
            "sent sid=%s user=%s to=%s id=%s late=%dms%s",
            job.sid, job.author, to, result.id, late_ms,
            " (sent before: a takeover)" if result.duplicate else "",
        )  # fmt: skip
        return outcome(True, id=result.id)

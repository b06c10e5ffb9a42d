"""Scheduled messages: kept in their author's keys, found through one due index,
claimed by workers under a lease.

    {u:<name>}:sched        hash: sid -> the scheduled message as JSON (the truth)
    {u:<name>}:sched:lease  hash: sid -> "<lease end ms> <tries> <worker>" once claimed
    sched:due               sorted set: "<name>:<sid>" -> when to look at it (ms)

Each script touches one user's keys (one cluster slot). The due index is in a slot
of its own, so it is always written by a command of its own, in an order that can
leave an index entry without a message behind (the scheduler drops it) but never a
message without an entry (it would never be sent):

- add: ZADD the entry, then ``schedule_add.lua``; ZREM it again if the script refused;
- cancel, finish: the script, then ZREM;
- claim: ``schedule_claim.lua``, then ZADD XX moves the entry to the end of the lease,
  so other workers look at it again only if the claimant dies.

Claiming commits: once a worker has claimed a message, ``cancel`` answers that it
was sent, and it is sent, by that worker or, once its lease has ended, by another
one, with the same client id (``s:<sid>``), which the send step stores only once.
So of a cancel and a send exactly one wins, decided by two scripts on one slot.

This module moves data; the rules (how far ahead, how late, who may send where)
are the handler's (``gateway.handlers.schedule``) and the worker's
(``worker.scheduler``).
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any, Final, cast

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline

from gateway.errors import ClientError
from gateway.protocol.events import Cancelled, Event, Scheduled, event_to_dict
from gateway.store.keys import Keys
from gateway.store.redis import Scripts, boundary
from gateway.store.time import now_ms

__all__ = ["CancelResult", "Claim", "ClaimStatus", "Due", "Job", "Schedules", "push_json"]

# An index entry whose message is gone is dropped once it is this old; a younger one
# may belong to a message being added right now (the entry is written first).
GONE_GRACE_MS: Final = 10_000
_SID_TRIES: Final = 5


def push_json(ev: Event) -> str:
    """An event as published on a user's channel: the JSON line clients receive."""
    return json.dumps(event_to_dict(ev), ensure_ascii=False, separators=(",", ":"))


@dataclass(frozen=True, slots=True)
class Job:
    """One scheduled message. ``author`` and ``to`` are display names (``to`` is
    ``#room`` for a room); ``at`` and ``created`` are ms since the epoch."""

    sid: str
    author: str
    to: str
    text: str
    at: int
    reply_to: str | None = None
    created: int = 0

    def to_json(self) -> str:
        d: dict[str, Any] = {"sid": self.sid, "from": self.author, "to": self.to,
                             "text": self.text, "at": self.at}  # fmt: skip
        if self.reply_to:
            d["reply_to"] = self.reply_to
        d["created"] = self.created
        return json.dumps(d, ensure_ascii=False, separators=(",", ":"))

    @classmethod
    def from_json(cls, raw: str) -> Job:
        d = json.loads(raw)
        return cls(
            sid=str(d["sid"]), author=str(d["from"]), to=str(d["to"]), text=str(d["text"]),
            at=int(d["at"]), reply_to=str(d["reply_to"]) if d.get("reply_to") else None,
            created=int(d.get("created") or 0),
        )  # fmt: skip

    def event(self, rid: str | int | None = None) -> Scheduled:
        return Scheduled(self.sid, self.to, self.at, self.text, self.reply_to, rid=rid)


@dataclass(frozen=True, slots=True)
class Due:
    """An entry of the due index: whose message, and when it is to be looked at."""

    user: str  # lower case
    sid: str
    score: int

    @property
    def member(self) -> str:
        return f"{self.user}:{self.sid}"


class ClaimStatus(Enum):
    CLAIMED = "claimed"  # this worker holds it now
    GONE = "gone"  # sent or cancelled meanwhile
    HELD = "held"  # another worker holds an unexpired lease
    BROKEN = "broken"  # claimed, but not readable (edited by hand?): to be dropped


@dataclass(frozen=True, slots=True)
class Claim:
    due: Due
    status: ClaimStatus
    job: Job | None = None  # when claimed
    tries: int = 0  # claims so far, this one included (more than 1: a takeover)
    lease_end: int = 0


class CancelResult(Enum):
    CANCELLED = "cancelled"
    CLAIMED = "claimed"  # a worker has it: sent, or being sent
    UNKNOWN = "unknown"  # no such sid among the user's (never, or sent and gone)


@boundary
class Schedules:
    def __init__(self, redis: Redis, keys: Keys, scripts: Scripts) -> None:
        self.redis = redis
        self.keys = keys
        self.scripts = scripts

    # -- the author's side (gateways) ------------------------------------------------
    async def add(
        self, author: str, to: str, text: str, at: int, reply_to: str | None, max_pending: int
    ) -> Job:
        """Keep a message to send at ``at``; every client of the author is told.
        ``bad_request`` when the author already has ``max_pending`` waiting."""
        k = self.keys
        for _ in range(_SID_TRIES):
            job = Job(secrets.token_hex(4), author, to, text, at, reply_to, now_ms())
            entry = Due(author.lower(), job.sid, at)
            await self.redis.zadd(k.schedule_due, {entry.member: at})
            args = (job.sid, job.to_json(), max_pending, push_json(job.event()))
            added = int(
                await self.scripts.call(
                    "schedule_add", (k.schedules(author),), (*args, k.user_channel(author))
                )
            )
            if added == 1:
                return job
            await self.redis.zrem(k.schedule_due, entry.member)
            if added == -1:
                raise ClientError(
                    "bad_request",
                    f"you have {max_pending} scheduled messages waiting, the most allowed;"
                    " /cancel one first",
                )
        raise AssertionError(f"no free sid in {_SID_TRIES} tries")  # 2^32 ids, 100 in use

    async def pending(self, user: str) -> list[Job]:
        """The user's scheduled messages not sent yet, soonest first."""
        raw = cast(dict[str, str], await self.redis.hgetall(self.keys.schedules(user)))
        return sorted((Job.from_json(v) for v in raw.values()), key=lambda j: (j.at, j.sid))

    async def cancel(self, user: str, sid: str) -> CancelResult:
        k = self.keys
        result = int(
            await self.scripts.call(
                "schedule_cancel",
                (k.schedules(user), k.schedule_leases(user)),
                (sid, push_json(Cancelled(sid)), k.user_channel(user)),
            )
        )
        if result == 1:
            await self.redis.zrem(k.schedule_due, Due(user.lower(), sid, 0).member)
            return CancelResult.CANCELLED
        return CancelResult.CLAIMED if result == -1 else CancelResult.UNKNOWN

    # -- the workers' side -------------------------------------------------------------
    async def due(self, now: int, limit: int) -> list[Due]:
        """Index entries due by ``now``, soonest first."""
        raw = await self.redis.zrange(
            self.keys.schedule_due, "-inf", now, byscore=True, offset=0, num=limit,
            withscores=True,
        )  # fmt: skip
        return [_due(member, score) for member, score in cast(list[tuple[str, float]], raw)]

    async def next_due(self) -> int | None:
        """When the soonest entry is due (ms), None when there is none."""
        raw = await self.redis.zrange(self.keys.schedule_due, 0, 0, withscores=True)
        return int(raw[0][1]) if raw else None

    async def claim(
        self, entries: Sequence[Due], worker: str, now: int, lease_ms: int
    ) -> list[Claim]:
        """Try to claim each entry (one round trip), then move the index entries of
        what is claimed or held to the lease's end, and drop those of what is gone."""
        if not entries:
            return []
        k = self.keys

        def fill(pipe: Pipeline) -> None:
            for e in entries:
                self.scripts.queue(
                    pipe, "schedule_claim",
                    (k.schedules(e.user), k.schedule_leases(e.user)),
                    (e.sid, now, lease_ms, worker),
                )  # fmt: skip

        raw = await self.scripts.run_pipeline(fill, ("schedule_claim",))
        claims = [_claim(e, r) for e, r in zip(entries, raw, strict=True)]
        async with self.redis.pipeline(transaction=False) as pipe:
            for c in claims:
                if c.status is ClaimStatus.GONE:
                    if c.due.score < now - GONE_GRACE_MS:
                        pipe.zrem(k.schedule_due, c.due.member)
                    else:  # perhaps being added: look again later
                        pipe.zadd(k.schedule_due, {c.due.member: now + GONE_GRACE_MS}, xx=True)
                else:
                    pipe.zadd(k.schedule_due, {c.due.member: c.lease_end}, xx=True)
            await pipe.execute()
        return claims

    async def finish(self, done: Sequence[tuple[Claim, Event | None]]) -> list[bool]:
        """Forget claimed messages (sent, or refused for good) and push each one's
        event to every client of its author, in one round trip. For each: False when
        another worker had finished it first (and told the author)."""
        if not done:
            return []
        k = self.keys

        def fill(pipe: Pipeline) -> None:
            for claim, push in done:
                user, sid = claim.due.user, claim.due.sid
                self.scripts.queue(
                    pipe, "schedule_done",
                    (k.schedules(user), k.schedule_leases(user)),
                    (sid, "" if push is None else push_json(push), k.user_channel(user)),
                )  # fmt: skip
                pipe.zrem(k.schedule_due, claim.due.member)

        raw = await self.scripts.run_pipeline(fill, ("schedule_done",))
        for r in raw:
            if isinstance(r, Exception):
                raise r
        return [int(r) == 1 for r in raw[::2]]


def _due(member: str, score: float) -> Due:
    user, _, sid = member.partition(":")
    return Due(user, sid, int(score))


def _claim(entry: Due, raw: Any) -> Claim:
    if isinstance(raw, Exception):
        raise raw
    status, job, tries, lease_end = raw
    match int(status):
        case 1:
            try:
                parsed = Job.from_json(job)
            except (ValueError, KeyError, TypeError):
                return Claim(entry, ClaimStatus.BROKEN, None, int(tries), int(lease_end))
            return Claim(entry, ClaimStatus.CLAIMED, parsed, int(tries), int(lease_end))
        case -1:
            return Claim(entry, ClaimStatus.HELD, None, int(tries), int(lease_end))
    return Claim(entry, ClaimStatus.GONE)

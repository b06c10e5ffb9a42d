"""Moderation: the public-chat rate limit, reports, warnings and bans.

Everything lives in the reported or sending user's keys (one hash tag, one
cluster slot), so each rule is one atomic script and holds across every gateway
and every client at once (docs/redis-keys.md, "Moderation"):

- ``gate.lua`` runs before every send: a banned user is refused; a message to a
  public room takes one from the user's window (``--rate-limit`` per
  ``--rate-window``, a fixed window that starts with the first message and resets
  when it ends). A retry with the same ``cid`` is counted once. Calls made in one
  loop turn share a round trip.
- ``refund.lua`` gives the quota back when the send itself is refused afterwards.
- ``report.lua`` counts one report per reporter, bans at ``--report-threshold``
  for ``--ban-s`` and starts the count again from zero, and publishes the
  ``warning`` on the user's channel, all in one step.

The ``bans`` sorted set is an index for operators beside the per-user ``ban`` key
(the truth); the worker drops ended bans from it and logs their end.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from time import monotonic
from typing import TYPE_CHECKING, Final, cast

from redis.asyncio import Redis

from gateway.errors import ClientError
from gateway.protocol.values import say_duration
from gateway.store.keys import Keys
from gateway.store.redis import REDIS_DOWN, ScriptBatch, Scripts, boundary
from gateway.store.time import now_ms

__all__ = ["Moderation", "ModerationLimits", "ReportResult", "UserState", "banned_error"]

if TYPE_CHECKING:
    from gateway.settings import StoreSettings

log = logging.getLogger("redchat.moderation")

CLEAR_FOR_S: Final = 0.5  # how long "not banned" is trusted without asking Redis


@dataclass(frozen=True, slots=True)
class ModerationLimits:
    rate_limit: int = 20  # public messages per window; 0 turns the limit off
    rate_window_s: int = 3600
    report_threshold: int = 3
    ban_s: int = 14_400
    report_ttl_s: int = 86_400  # reports that led to no ban are forgotten after this
    idempotency_ttl_s: int = 300

    @classmethod
    def of(cls, settings: StoreSettings, idempotency_ttl_s: int = 300) -> ModerationLimits:
        return cls(
            rate_limit=settings.rate_limit,
            rate_window_s=settings.rate_window_s,
            report_threshold=settings.report_threshold,
            ban_s=settings.ban_s,
            report_ttl_s=settings.report_ttl_s,
            idempotency_ttl_s=idempotency_ttl_s,
        )


@dataclass(frozen=True, slots=True)
class ReportResult:
    user: str
    counted: bool
    reports: int
    threshold: int
    banned_until: int | None  # set when this report banned the user, or they were already


@dataclass(frozen=True, slots=True)
class UserState:
    banned_until: int | None  # ms; 0 when banned until an operator lifts it
    quota_used: int
    quota_resets_at: int | None  # ms; None when no window is running


def banned_error(until: int, now: int) -> ClientError:
    if until == 0:
        return ClientError(
            "banned", "you are banned from sending until an operator lifts the ban",
            until=None, retry_after=None,
        )  # fmt: skip
    left_s = max(1, -(-(until - now) // 1000))
    return ClientError(
        "banned",
        f"you are banned from sending; you can send again in {say_duration(left_s)}",
        until=until,
        retry_after=left_s,
    )


@boundary
class Moderation:
    def __init__(
        self, redis: Redis, keys: Keys, scripts: Scripts, limits: ModerationLimits
    ) -> None:
        self.redis = redis
        self.keys = keys
        self.scripts = scripts
        self.limits = limits
        self._gate = ScriptBatch(scripts, "gate")
        # user -> until when (monotonic) they are known not to be banned: a send that
        # does not count against the quota skips Redis meanwhile. Short enough that a
        # ban (or a ban set by hand) holds on every gateway within a second.
        self._clear: dict[str, float] = {}

    # -- before and after a send ---------------------------------------------------
    async def admit(self, user: str, *, counts: bool, cid: str | None) -> bool:
        """Refuse a banned user, or one over the rate limit (when the send ``counts``).
        Returns whether the send took one from the quota (to give back if it fails)."""
        if self.cleared(user, counts=counts):
            return False
        k, lim = self.keys, self.limits
        now = now_ms()
        status, value = await self._gate.call(
            (k.ban(user), k.quota(user), k.quota_cid(user, cid or "")),
            (
                now,
                lim.rate_limit if counts else 0,
                lim.rate_window_s * 1000,
                lim.idempotency_ttl_s * 1000,
                "1" if cid else "0",
            ),
        )
        status, value = int(status), int(value)
        if status >= 0:
            if len(self._clear) >= 100_000:
                self._clear.clear()
            self._clear[user.lower()] = monotonic() + CLEAR_FOR_S
        if status == -1:
            raise banned_error(value, now)
        if status == -2:
            retry_after = max(1, -(-value // 1000))
            raise ClientError(
                "rate_limited",
                f"you can send {lim.rate_limit} messages {_per(lim.rate_window_s)} to public"
                f" rooms; you can send again in {say_duration(retry_after)}",
                retry_after=retry_after,
            )
        return status == 1

    def cleared(self, user: str, *, counts: bool) -> bool:
        """``admit`` would let the send through without asking Redis: the user was
        not banned a moment ago, and the send takes nothing from a quota."""
        if counts and self.limits.rate_limit > 0:
            return False
        return self._clear.get(user.lower(), 0.0) > monotonic()

    def forget(self, user: str) -> None:
        """The user was just banned (a ``warning`` said so): ask Redis next time."""
        self._clear.pop(user.lower(), None)

    async def refund(self, user: str, cid: str | None) -> None:
        """Give back what ``admit`` took for a send that was not stored (best effort)."""
        k = self.keys
        try:
            await self.scripts.call("refund", (k.quota(user), k.quota_cid(user, cid or "")), ())
        except REDIS_DOWN as exc:
            log.warning("could not give back %s's quota for a failed send: %s", user, exc)

    # -- reports -------------------------------------------------------------------
    async def report(self, reporter: str, user: str, reason: str) -> ReportResult:
        """``reporter`` reports ``user`` (display name). Atomic: two reports racing at
        the threshold give one ban."""
        k, lim = self.keys, self.limits
        now = now_ms()
        counted, reports, until = await self.scripts.call(
            "report",
            (k.ban(user), k.reports(user)),
            (
                reporter.lower(),
                f"{now} {reason}".rstrip(),
                lim.report_threshold,
                lim.ban_s * 1000,
                now,
                lim.report_ttl_s * 1000,
                k.user_channel(user),
            ),
        )
        counted, reports, until = bool(counted), int(reports), int(until)
        banned_now = counted and until > 0
        if banned_now:
            self.forget(user)
        if banned_now:
            await self.redis.zadd(k.bans, {user.lower(): until})
        return ReportResult(
            user=user,
            counted=counted,
            reports=reports,
            threshold=lim.report_threshold,
            banned_until=until or None,
        )

    # -- reading -------------------------------------------------------------------
    async def state(self, user: str) -> UserState:
        k = self.keys
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.get(k.ban(user))
            pipe.get(k.quota(user))
            pipe.pttl(k.quota(user))
            ban, used, ttl = await pipe.execute()
        now = now_ms()
        banned_until: int | None = None
        if ban is not None:
            until = _int(ban)
            banned_until = until if until == 0 or until > now else None
        resets_at = now + int(ttl) if used is not None and int(ttl) > 0 else None
        return UserState(banned_until, _int(used) if resets_at else 0, resets_at)

    async def ended_bans(self) -> list[str]:
        """Users whose ban has ended, taken off the operators' index (for the worker)."""
        due = cast(list[str], await self.redis.zrange(self.keys.bans, 0, now_ms(), byscore=True))
        if not due:
            return []
        async with self.redis.pipeline(transaction=False) as pipe:
            for user in due:
                pipe.zrem(self.keys.bans, user)
            removed = await pipe.execute()
        # Several workers may look at once: each end is reported by the one that removed it.
        return [user for user, gone in zip(due, removed, strict=True) if gone]


def _per(window_s: int) -> str:
    named = {60: "a minute", 3600: "an hour", 86_400: "a day"}.get(window_s)
    return named or f"every {say_duration(window_s)}"


def _int(raw: str | None) -> int:
    try:
        return int(raw or 0)
    except ValueError:
        return 0

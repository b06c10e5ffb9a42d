"""Accounts: claiming a name, checking a password, throttling wrong guesses.

Passwords are scrypt hashes with a salt, computed on a small thread pool of
``scrypt_threads`` with at most ``scrypt_queue`` waiting, so a flood of logins
can neither starve the event loop nor queue without bound: past the queue a
login is answered ``rate_limited`` at once.

The throttle (docs/operations.md, "Logins"). The (name, address) counter is taken
atomically before the password is checked, so concurrent guesses cannot all
pass; the looser ones are only checked beforehand and count wrong passwords
afterwards (concurrency there is bounded by the pair counter and the scrypt
queue), so a login storm of right passwords from one address is not mistaken
for guessing:
- per (name, address): ``login_fail_limit`` (5) attempts that were not right per
  ``login_fail_window_s`` (300 s): one address guessing one name;
- per address, any name: ``login_fail_per_address`` (50) per window: one
  address spraying many names;
- per name, any address: ``login_fail_per_name`` (100) per window: a guess
  spread over many addresses. An address the owner logged in from before
  (the last 20 are remembered) is exempt from this one and from the per-address
  one, so a stranger cannot lock the owner out of their own name.

A login is two round trips when all goes well: ``login_begin`` (whether the
address is known, the pair and per-name counters, the pair's reservation and
the account, in one step on the user's slot) and, after a right password,
``login_done`` (the pair's count goes, the address is remembered). The
per-address counter lives in the address's slot, so from an unknown address it
is checked in a call of its own after ``login_begin``. That order is still safe:
that counter is only checked, never reserved, so nothing about it depends on
when; and if it refuses, the pair's reservation is given back as on any other
refusal, so the attempt counts nowhere, as if it had been checked first. While
held, the reservation can only make a concurrent attempt on the same pair wait,
never let one more through. When the user's counters and the address's both
refuse, the refusal is now the user's ("for <name>", with its ``retry_after``).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import os
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Final

from redis.asyncio import Redis

from gateway.errors import ClientError
from gateway.store.keys import Keys
from gateway.store.redis import Scripts, boundary
from gateway.store.time import now_ms

__all__ = ["Account", "Accounts", "hash_password", "verify_password"]

SCRYPT_R: Final = 8
SCRYPT_P: Final = 1
KNOWN_ADDRESSES_KEPT: Final = 20
_CACHE_MAX: Final = 100_000


def hash_password(password: str, n: int) -> str:
    salt = os.urandom(16)
    digest = hashlib.scrypt(
        password.encode(), salt=salt, n=n, r=SCRYPT_R, p=SCRYPT_P, maxmem=256 * n * SCRYPT_R
    )
    b64 = base64.b64encode
    return f"scrypt${n}${SCRYPT_R}${SCRYPT_P}${b64(salt).decode()}${b64(digest).decode()}"


def verify_password(password: str, stored: str) -> bool:
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        expected = base64.b64decode(digest)
        got = hashlib.scrypt(
            password.encode(),
            salt=base64.b64decode(salt),
            n=int(n),
            r=int(r),
            p=int(p),
            maxmem=256 * int(n) * int(r),
            dklen=len(expected),
        )
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got, expected)


@dataclass(frozen=True, slots=True)
class Account:
    name: str  # display case, as first claimed
    new: bool


@dataclass(frozen=True, slots=True)
class LoginLimits:
    fail_limit: int = 5  # per (name, address)
    per_address: int = 50
    per_name: int = 100
    window_s: int = 300
    scrypt_n: int = 1 << 14
    scrypt_threads: int = 1
    scrypt_queue: int = 4096


class _Hasher:
    """scrypt off the event loop, on a bounded pool: at most ``queue`` logins wait,
    each at most ``wait_s``; past either, ``rate_limited`` at once.

    Logins from an address the owner used before go first: a flood of guesses
    from elsewhere (a botnet guessing many names) queues behind them, so the
    people who own the names still get in quickly."""

    def __init__(self, threads: int, queue: int, wait_s: float = 10.0) -> None:
        self._pool = ThreadPoolExecutor(max(1, threads), thread_name_prefix="scrypt")
        self._free = max(1, threads)
        self._lines: tuple[deque[asyncio.Future[None]], ...] = (deque(), deque())
        self._waiting = 0
        self._queue = queue
        self._wait_s = wait_s

    async def run(self, fn: object, *args: object, first: bool = False) -> object:
        if self._waiting >= self._queue:
            raise ClientError("rate_limited", "busy checking passwords; try again", retry_after=1)
        self._waiting += 1
        try:
            async with asyncio.timeout(self._wait_s):
                await self._acquire(first)
        except TimeoutError:
            raise ClientError(
                "rate_limited", "busy checking passwords; try again", retry_after=1
            ) from None
        finally:
            self._waiting -= 1
        try:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self._pool, fn, *args)  # type: ignore[arg-type]
        finally:
            self._release()

    async def _acquire(self, first: bool) -> None:
        if self._free and not any(self._lines):
            self._free -= 1
            return
        line = self._lines[0 if first else 1]
        turn = asyncio.get_running_loop().create_future()
        line.append(turn)
        try:
            await turn
        except BaseException:
            if turn.done() and not turn.cancelled():
                self._release()  # the slot came with the cancel: pass it on
            elif turn in line:
                line.remove(turn)
            raise

    def _release(self) -> None:
        for line in self._lines:
            while line:
                turn = line.popleft()
                if not turn.done():
                    turn.set_result(None)
                    return
        self._free += 1


@boundary
class Accounts:
    def __init__(self, redis: Redis, keys: Keys, scripts: Scripts, limits: LoginLimits) -> None:
        self.redis = redis
        self.keys = keys
        self.scripts = scripts
        self.limits = limits
        self._hasher: _Hasher | None = None
        self._names: dict[str, str] = {}  # lower-case name -> display name

    def _hash(self) -> _Hasher:
        # Made on first use: the semaphore belongs to the running loop.
        if self._hasher is None:
            self._hasher = _Hasher(self.limits.scrypt_threads, self.limits.scrypt_queue)
        return self._hasher

    async def display_name(self, user: str) -> str | None:
        """A name's display case, or None if nobody claimed it (claimed names are cached)."""
        cached = self.cached_name(user)
        if cached is not None:
            return cached
        name = await self.redis.hget(self.keys.account(user), "name")
        if name is None:
            return None
        self._remember(str(name))
        return str(name)

    def cached_name(self, user: str) -> str | None:
        """``display_name`` when this process has seen it (None: ask Redis)."""
        return self._names.get(user.lower())

    async def display_names(self, users: list[str]) -> list[str | None]:
        """``display_name`` of many, the uncached ones in one round trip."""
        # Not ``set - self._names.keys()``: that copies every cached name (up to
        # _CACHE_MAX) at each call, which made logins slower as users came.
        missing = sorted({low for low in (u.lower() for u in users) if low not in self._names})
        if missing:
            async with self.redis.pipeline(transaction=False) as pipe:
                for user in missing:
                    pipe.hget(self.keys.account(user), "name")
                found = await pipe.execute()
            for name in found:
                if name is not None:
                    self._remember(str(name))
        return [self._names.get(u.lower()) for u in users]

    def _remember(self, name: str) -> None:
        if len(self._names) >= _CACHE_MAX:
            self._names.clear()
        self._names[name.lower()] = name

    def forget_cached(self) -> None:
        self._names.clear()

    async def login(self, user: str, password: str, address: str = "") -> Account:
        """Claim ``user`` with ``password``, or check the password of a claimed name."""
        k, lim = self.keys, self.limits
        pair, name_key = k.login_failures(user, address), k.login_failures(user)
        addr_key = k.address_failures(address) if address else None
        denied, retry, known, name, pw_hash = await self.scripts.call(
            "login_begin",
            [k.known_addresses(user), pair, name_key, k.account(user)],
            [address, lim.fail_limit, lim.window_s, lim.per_name],
        )
        if denied:
            raise _throttled(f"for {user}", retry)
        try:
            if addr_key is not None and not known:
                await self._attempt(
                    [addr_key], [lim.per_address, lim.window_s, "check"], "from your address"
                )
            account = await self._check(user, password, name, pw_hash, first=bool(known))
        except ClientError as exc:
            if exc.code == "bad_password":  # a wrong guess: it counts everywhere
                await self._count_failure(name_key, addr_key)
            else:
                await asyncio.shield(self.scripts.call("login_ok", [pair], [0]))
            raise
        except BaseException:
            await asyncio.shield(self.scripts.call("login_ok", [pair], [0]))
            raise
        # The right password: the pair's count goes (the owner is in) and the
        # address is remembered, in one step.
        await self.scripts.call(
            "login_done", [pair, k.known_addresses(user)], [address, now_ms(), KNOWN_ADDRESSES_KEPT]
        )
        return account

    async def _attempt(self, keys: list[str], args: list[int | str], which: str) -> None:
        denied, retry = await self.scripts.call("login_attempt", keys, args)
        if denied:
            raise _throttled(which, retry)

    async def _count_failure(self, name_key: str, addr_key: str | None) -> None:
        window = self.limits.window_s
        await self.scripts.call("login_attempt", [name_key], [0, window, "reserve"])
        if addr_key is not None:
            await self.scripts.call("login_attempt", [addr_key], [0, window, "reserve"])

    async def _check(
        self, user: str, password: str, name: str | None, pw_hash: str | None, first: bool = False
    ) -> Account:
        """Check ``password`` against the account ``login_begin`` read (``pw_hash``
        None: nobody has claimed ``user`` yet, so claim it)."""
        if pw_hash is None:
            account_key = self.keys.account(user)
            pw = await self._hash().run(hash_password, password, self.limits.scrypt_n)
            if await self.scripts.call("claim", [account_key], [user, pw, now_ms()]):
                self._remember(user)
                return Account(user, new=True)
            stored = await self.redis.hmget(account_key, ["name", "pw"])  # theirs, who won
            name, pw_hash = str(stored[0]), str(stored[1])
        name = str(name)
        if await self._hash().run(verify_password, password, pw_hash, first=first):
            self._remember(name)
            return Account(name, new=False)
        raise ClientError("bad_password", f"wrong password for {name}")


def _throttled(which: str, retry: int) -> ClientError:
    return ClientError(
        "rate_limited",
        f"too many failed logins {which}; try again in {int(retry)} s",
        retry_after=int(retry),
    )

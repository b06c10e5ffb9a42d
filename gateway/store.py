"""All of redchat's reads and writes to Redis: accounts, messages, cursors, presence.

The store knows key names only through ``gateway.keys`` and talks to Redis only with
single-slot steps: each Lua script touches the keys of one user or one conversation.
It knows nothing about sockets or sessions. Redis being down surfaces as
``redis.exceptions.ConnectionError`` / ``TimeoutError``; callers decide what the peer
sees.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, cast

from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError
from redis.exceptions import TimeoutError as RedisTimeoutError

from gateway.errors import ClientError
from gateway.keys import GENERAL, Keys, is_room
from gateway.protocol import Message, parse_stream_id

log = logging.getLogger("redchat.store")

__all__ = ["REDIS_DOWN", "Account", "SendResult", "Store", "hash_password", "verify_password"]

# One step: dedupe by client id, check the replied-to message, append, trim, remember
# the client id, publish. KEYS: stream, cid key (the stream again when no cid).
# ARGV: from, to, text, reply_to, cid_ttl_s, has_cid, min_id, max_len, json_tail, channels...
_SEND_LUA: Final = """
if ARGV[6] == '1' then
  local seen = redis.call('GET', KEYS[2])
  if seen then return {0, seen} end
end
if ARGV[4] ~= '' then
  if #redis.call('XRANGE', KEYS[1], ARGV[4], ARGV[4]) == 0 then return {-1, ''} end
end
local id
if ARGV[4] ~= '' then
  id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[8], '*',
    'from', ARGV[1], 'to', ARGV[2], 'text', ARGV[3], 'reply_to', ARGV[4])
else
  id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[8], '*',
    'from', ARGV[1], 'to', ARGV[2], 'text', ARGV[3])
end
if ARGV[7] ~= '' then redis.call('XTRIM', KEYS[1], 'MINID', '~', ARGV[7]) end
if ARGV[6] == '1' then redis.call('SET', KEYS[2], id, 'EX', ARGV[5]) end
local payload = '{"type":"message","id":"' .. id .. '","ts":' ..
  string.match(id, '^(%d+)') .. ARGV[9]
for i = 10, #ARGV do redis.call('PUBLISH', ARGV[i], payload) end
return {1, id}
"""

# Advance cursors only forward. KEYS: cursors hash. ARGV: field, id, field, id, ...
_ADVANCE_LUA: Final = """
local function older(a, b)
  local am, as = string.match(a, '^(%d+)-(%d+)$')
  local bm, bs = string.match(b, '^(%d+)-(%d+)$')
  if #am ~= #bm then return #am < #bm end
  if am ~= bm then return am < bm end
  return tonumber(as) < tonumber(bs)
end
for i = 1, #ARGV, 2 do
  local cur = redis.call('HGET', KEYS[1], ARGV[i])
  if not cur or older(cur, ARGV[i + 1]) then redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
end
return 1
"""

# Count entries after an id, up to a cap, without shipping them. KEYS: stream.
_COUNT_LUA: Final = """
return #redis.call('XRANGE', KEYS[1], ARGV[1], '+', 'COUNT', ARGV[2])
"""

# Claim a name if nobody has. KEYS: account. ARGV: name, pw, created.
_CLAIM_LUA: Final = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'name', ARGV[1], 'pw', ARGV[2], 'created', ARGV[3])
return 1
"""

# What Redis being unreachable looks like, from redis-py or from our own sockets.
REDIS_DOWN: Final = (
    RedisConnectionError,
    RedisTimeoutError,
    ConnectionError,
    TimeoutError,
    OSError,
)

SCRYPT_R: Final = 8
SCRYPT_P: Final = 1


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


_CACHE_MAX: Final = 100_000
# A retry comes within the 5-minute idempotency window: its entry, if written, is recent.
_RETRY_LOG_LOOKBACK: Final = 200


@dataclass(slots=True)
class _PendingSend:
    keys: tuple[str, str]
    args: list[Any]
    log_key: str
    log_fields: dict[str, str]
    register: tuple[str, str, str] | None  # (sender's set, recipient's set, conversation)
    future: asyncio.Future[tuple[int, str]]


def _kinds(batch: list[_PendingSend]) -> list[str]:
    """What each queued pipeline command of a batch is, in order."""
    out: list[str] = []
    for item in batch:
        if item.register is not None:
            out += ["sadd", "sadd"]
        out.append("eval")
    return out


@dataclass(frozen=True, slots=True)
class Account:
    name: str  # display case, as first claimed
    new: bool


@dataclass(frozen=True, slots=True)
class SendResult:
    id: str
    duplicate: bool


Entries = list[tuple[str, dict[str, str]]]


def _entries(raw: Any) -> Entries:
    """redis-py types stream replies loosely; with decode_responses they are these."""
    return cast(Entries, raw or [])


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def entry_to_message(entry: tuple[str, Mapping[str, str]], replay: bool = False) -> Message:
    sid, fields = entry
    return Message(
        id=sid,
        from_=fields.get("from", "?"),
        to=fields.get("to", "?"),
        text=fields.get("text", ""),
        ts=int(sid.partition("-")[0]),
        reply_to=fields.get("reply_to") or None,
        replay=replay,
    )


class Store:
    def __init__(
        self,
        redis: Redis,
        keys: Keys,
        *,
        message_ttl_s: int = 3600,
        history_max_len: int = 100_000,
        idempotency_ttl_s: int = 300,
        login_fail_limit: int = 5,
        login_fail_window_s: int = 60,
        scrypt_n: int = 1 << 14,
    ) -> None:
        self.redis = redis
        self.keys = keys
        self.message_ttl_s = message_ttl_s
        self.history_max_len = history_max_len
        self.idempotency_ttl_s = idempotency_ttl_s
        self.login_fail_limit = login_fail_limit
        self.login_fail_window_s = login_fail_window_s
        self.scrypt_n = scrypt_n
        self._send = redis.register_script(_SEND_LUA)
        self._advance = redis.register_script(_ADVANCE_LUA)
        self._count = redis.register_script(_COUNT_LUA)
        self._claim = redis.register_script(_CLAIM_LUA)
        self._sends: list[_PendingSend] = []
        self._flush_scheduled = False
        self._flushes: set[asyncio.Task[None]] = set()
        self._registered: set[str] = set()  # direct conversations known to be in both sets
        self._names: dict[str, str] = {}  # lower-case name -> display name

    # -- lifetime -------------------------------------------------------------
    def min_id(self) -> str:
        """Oldest id still alive ("0-0" when messages live forever)."""
        if not self.message_ttl_s:
            return "0-0"
        return f"{now_ms() - self.message_ttl_s * 1000}-0"

    def _after(self, after: str | None) -> str:
        """XRANGE start for "after this id", never earlier than the lifetime allows."""
        floor = self.min_id()
        if after is None or parse_stream_id(after) < parse_stream_id(floor):
            return floor
        return "(" + after

    # -- accounts ---------------------------------------------------------------
    async def display_name(self, user: str) -> str | None:
        """A name's display case, or None if nobody claimed it (claimed names are cached)."""
        key = user.lower()
        cached = self._names.get(key)
        if cached is not None:
            return cached
        name = await self.redis.hget(self.keys.account(user), "name")
        if name is None:
            return None
        if len(self._names) >= _CACHE_MAX:
            self._names.clear()
        self._names[key] = str(name)
        return str(name)

    async def login(self, user: str, password: str) -> Account:
        """Claim ``user`` with ``password`` or check the password of an existing name."""
        fails_key = self.keys.login_failures(user)
        fails = await self.redis.get(fails_key)
        if fails is not None and int(fails) >= self.login_fail_limit:
            retry = max(1, int(await self.redis.ttl(fails_key)))
            raise ClientError(
                "rate_limited", f"too many failed logins for {user}", retry_after=retry
            )
        account_key = self.keys.account(user)
        stored = await self.redis.hmget(account_key, ["name", "pw"])
        if stored[1] is None:
            pw = await asyncio.to_thread(hash_password, password, self.scrypt_n)
            if await self._claim(keys=[account_key], args=[user, pw, now_ms()]):
                return Account(user, new=True)
            stored = await self.redis.hmget(account_key, ["name", "pw"])
        name, pw_hash = str(stored[0]), str(stored[1])
        if await asyncio.to_thread(verify_password, password, pw_hash):
            if fails is not None:
                await self.redis.delete(fails_key)
            return Account(name, new=False)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.set(fails_key, 0, ex=self.login_fail_window_s, nx=True)
            pipe.incr(fails_key)
            await pipe.execute()
        raise ClientError("bad_password", f"wrong password for {name}")

    # -- messages ---------------------------------------------------------------
    async def send(
        self,
        sender: str,
        conversation: str,
        to: str,
        text: str,
        *,
        cid: str | None = None,
        reply_to: str | None = None,
    ) -> SendResult:
        """Store a message and publish it, in one atomic step; then log it.

        ``sender`` and ``to`` are display names (``to`` is ``#room`` for rooms).
        Sends made in the same loop turn, from any session, share one pipeline for
        the atomic steps and one for the logs (see ``_flush_sends``).
        """
        k = self.keys
        stream = k.stream(conversation)
        if is_room(conversation):
            channels = [k.room_channel(conversation)]
        else:
            channels = [k.user_channel(sender)]
            if sender.lower() != to.lower():
                channels.append(k.user_channel(to))
        tail = {"from": sender, "to": to, "text": text}
        if reply_to:
            tail["reply_to"] = reply_to
        json_tail = "," + json.dumps(tail, ensure_ascii=False, separators=(",", ":"))[1:]
        min_id = self.min_id() if self.message_ttl_s else ""
        args: list[Any] = [
            sender,
            to,
            text,
            reply_to or "",
            self.idempotency_ttl_s,
            "1" if cid else "0",
            min_id,
            self.history_max_len,
            json_tail,
            *channels,
        ]
        log_fields = {"id": "", "to": to, "text": text}
        if reply_to:
            log_fields["reply_to"] = reply_to
        register = None
        if not is_room(conversation) and conversation not in self._registered:
            register = (k.conversations(sender), k.conversations(to), conversation)
        cid_key = k.sent(conversation, sender, cid) if cid else stream
        pending = _PendingSend(
            keys=(stream, cid_key),
            args=args,
            log_key=k.log(sender),
            log_fields=log_fields,
            register=register,
            future=asyncio.get_running_loop().create_future(),
        )
        self._sends.append(pending)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._start_flush)
        status, sid = await pending.future
        if status == -1:
            raise ClientError("not_found", f"no message {reply_to} in {to}")
        return SendResult(sid, duplicate=status == 0)

    def _start_flush(self) -> None:
        self._flush_scheduled = False
        batch, self._sends = self._sends, []
        task = asyncio.create_task(self._flush_sends(batch))
        self._flushes.add(task)
        task.add_done_callback(self._flushes.discard)

    async def _flush_sends(self, batch: list[_PendingSend]) -> None:
        """One round trip for every atomic step of the batch, one for their logs.

        A direct conversation is registered with both users (SADD) before its
        first message exists, so a recipient logging in meanwhile either finds
        it or is already subscribed when the message is published.
        """
        try:
            results = await self._run_send_scripts(batch)
        except Exception as exc:
            for item in batch:
                item.future.set_exception(exc)
            return
        try:
            await self._write_logs(batch, results)
        except REDIS_DOWN as exc:
            # The messages are stored (that is what an ack promises); only the
            # senders' own logs miss them.
            log.warning("stored %d message(s) but could not log them: %s", len(batch), exc)
        for item, result in zip(batch, results, strict=True):
            if isinstance(result, Exception):
                item.future.set_exception(result)
            else:
                item.future.set_result((int(result[0]), str(result[1])))

    async def _write_logs(self, batch: list[_PendingSend], results: list[Any]) -> None:
        new = [
            (item, str(r[1]))
            for item, r in zip(batch, results, strict=True)
            if not isinstance(r, Exception) and r[0] == 1
        ]
        retried = [
            (item, str(r[1]))
            for item, r in zip(batch, results, strict=True)
            if not isinstance(r, Exception) and r[0] == 0
        ]
        if retried:
            # A retry of a stored message: its first attempt may have died before
            # logging it (the rare path, so the look costs nothing on the common one).
            new += await self._not_logged(retried)
        if not new:
            return
        async with self.redis.pipeline(transaction=False) as pipe:
            for item, sid in new:
                # Capped here; trimmed by lifetime by the worker (reads filter it anyway).
                pipe.xadd(
                    item.log_key,
                    dict(item.log_fields, id=sid),  # type: ignore[arg-type]
                    maxlen=self.history_max_len,
                    approximate=True,
                )
            await pipe.execute()

    async def _not_logged(
        self, retried: list[tuple[_PendingSend, str]]
    ) -> list[tuple[_PendingSend, str]]:
        async with self.redis.pipeline(transaction=False) as pipe:
            for item, _ in retried:
                pipe.xrevrange(item.log_key, count=_RETRY_LOG_LOOKBACK)
            recent: list[Entries] = await pipe.execute()
        return [
            (item, sid)
            for (item, sid), entries in zip(retried, recent, strict=True)
            if all(fields.get("id") != sid for _, fields in entries or [])
        ]

    async def _run_send_scripts(self, batch: list[_PendingSend]) -> list[Any]:
        """The send script for each item (with its SADDs first); a result or an error each."""
        for attempt in range(2):
            async with self.redis.pipeline(transaction=False) as pipe:
                for item in batch:
                    if item.register is not None:
                        own, other, conversation = item.register
                        pipe.sadd(own, conversation)
                        pipe.sadd(other, conversation)
                    pipe.evalsha(self._send.sha, 2, *item.keys, *item.args)
                raw = await pipe.execute(raise_on_error=False)
            results = [r for r, kind in zip(raw, _kinds(batch), strict=True) if kind == "eval"]
            if attempt == 0 and any(isinstance(r, NoScriptError) for r in results):
                await self.redis.script_load(_SEND_LUA)  # Redis restarted empty: load, redo
                continue
            break
        for item in batch:
            if item.register is not None:
                self._remember_registered(item.register[2])
        return results

    def _remember_registered(self, conversation: str) -> None:
        if len(self._registered) >= _CACHE_MAX:
            self._registered.clear()
        self._registered.add(conversation)

    def forget_cached(self) -> None:
        """Redis may have lost data (it restarted): look everything up again."""
        self._registered.clear()
        self._names.clear()

    async def read_after(self, conversation: str, after: str | None, count: int) -> list[Message]:
        """Up to ``count`` live messages after ``after``, oldest first."""
        entries = _entries(
            await self.redis.xrange(
                self.keys.stream(conversation), min=self._after(after), max="+", count=count
            )
        )
        return [entry_to_message(e, replay=True) for e in entries]

    async def read_last(
        self, conversation: str, count: int, before: str | None = None
    ) -> list[Message]:
        """The last ``count`` live messages (before ``before``), oldest first."""
        entries = _entries(
            await self.redis.xrevrange(
                self.keys.stream(conversation),
                max="+" if before is None else "(" + before,
                min=self.min_id(),
                count=count,
            )
        )
        return [entry_to_message(e, replay=True) for e in reversed(entries)]

    async def count_after(self, conversation: str, after: str | None, cap: int) -> int:
        return int(
            await self._count(keys=[self.keys.stream(conversation)], args=[self._after(after), cap])
        )

    async def log(self, user: str, limit: int) -> list[Message]:
        entries = _entries(
            await self.redis.xrevrange(self.keys.log(user), max="+", min=self.min_id(), count=limit)
        )
        out = []
        for _, fields in reversed(entries):
            sid = fields["id"]
            out.append(
                Message(
                    id=sid,
                    from_=user,
                    to=fields.get("to", "?"),
                    text=fields.get("text", ""),
                    ts=int(sid.partition("-")[0]),
                    reply_to=fields.get("reply_to") or None,
                )
            )
        return out

    # -- conversations and cursors -------------------------------------------------
    async def conversations(self, user: str) -> list[str]:
        """Every conversation the user reads: #general first, then direct ones."""
        dms = await self.redis.smembers(self.keys.conversations(user))
        return [GENERAL, *sorted(str(c) for c in dms)]

    async def cursors(self, user: str) -> dict[str, str]:
        raw = await self.redis.hgetall(self.keys.cursors(user))
        return {str(k): str(v) for k, v in raw.items()}

    async def advance_cursors(self, items: Mapping[str, Mapping[str, str]]) -> None:
        """Save delivered ids: {user: {conversation: id}}; a cursor never moves back."""
        if not items:
            return
        for attempt in range(2):
            async with self.redis.pipeline(transaction=False) as pipe:
                for user, convs in items.items():
                    args = [x for pair in convs.items() for x in pair]
                    pipe.evalsha(self._advance.sha, 1, self.keys.cursors(user), *args)
                results = await pipe.execute(raise_on_error=False)
            if attempt == 0 and any(isinstance(r, NoScriptError) for r in results):
                await self.redis.script_load(_ADVANCE_LUA)
                continue
            for r in results:
                if isinstance(r, Exception):
                    raise r
            return

    # -- presence -------------------------------------------------------------
    async def heartbeat(self, gateway: str, users: Mapping[str, int] | None, ttl_s: float) -> None:
        """Mark the gateway alive; with ``users`` also rewrite its list of who is on it."""
        key = self.keys.presence(gateway)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.zadd(self.keys.gateways, {gateway: now_ms()})
            if users is not None:
                pipe.delete(key)
                if users:
                    pipe.hset(key, mapping=dict[Any, Any](users))
            pipe.expire(key, max(1, int(ttl_s)))
            await pipe.execute()

    async def update_presence(self, gateway: str, counts: Mapping[str, int]) -> None:
        """Set how many connections each named user has on a gateway (0 removes them)."""
        if not counts:
            return
        key = self.keys.presence(gateway)
        async with self.redis.pipeline(transaction=True) as pipe:
            gone = [name for name, n in counts.items() if n <= 0]
            here = {name: n for name, n in counts.items() if n > 0}
            if gone:
                pipe.hdel(key, *gone)
            if here:
                pipe.hset(key, mapping=cast(dict[Any, Any], here))
            await pipe.execute()

    async def gateway_gone(self, gateway: str) -> None:
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.zrem(self.keys.gateways, gateway)
            pipe.delete(self.keys.presence(gateway))
            await pipe.execute()

    async def online(self, stale_ms: int) -> list[str]:
        """Names online on any live gateway, sorted ignoring case."""
        gateways = await self.redis.zrange(
            self.keys.gateways, now_ms() - stale_ms, "+inf", byscore=True
        )
        if not gateways:
            return []
        async with self.redis.pipeline(transaction=False) as pipe:
            for gw in gateways:
                pipe.hkeys(self.keys.presence(str(gw)))
            results: Sequence[Iterable[str]] = await pipe.execute()
        names = {str(n) for names in results for n in names}
        return sorted(names, key=str.lower)

"""Messages: the atomic send, history reads in pages, unread counts, the sender's log.

Each conversation is one stream (the source of truth). Every entry carries ``n``,
its number in the conversation (a counter in the same slot), so how many
messages follow an id is a subtraction of two numbers, never a count that grows
with history.

Sends made in the same loop turn, from any session, share one pipeline for their
atomic steps and one for their logs. ``queue`` takes a send and a callback, and
every callback is called once, with the send's result or its error, whatever
happens to the batch (a caller gone meanwhile simply ignores it). On a single
Redis without WAIT the batches go one at a time over the send link, so sends
queued in a given order are stored, and answered, in that order.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, cast

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.exceptions import NoScriptError

from gateway.errors import ClientError, Unavailable
from gateway.protocol.events import (
    FileInfo,
    Message,
    Quote,
    file_from_dict,
    file_json,
    message_json_tail,
)
from gateway.protocol.values import MAX_STREAM_ID, format_stream_id, parse_stream_id
from gateway.store.keys import Keys, hash_tag
from gateway.store.redis import REDIS_DOWN, Scripts, boundary, raise_if_down, unavailable
from gateway.store.sendlink import SendLink
from gateway.store.time import now_ms

__all__ = ["Messages", "SendDone", "SendResult", "entry_to_message"]

log = logging.getLogger("redchat.store")

# A retry comes within the 5-minute idempotency window: its entry, if written, is recent.
_RETRY_LOG_LOOKBACK: Final = 200
_CACHE_MAX: Final = 100_000
WAIT_REPLICAS_MS: Final = 2000  # longest a send waits for its replicas (--redis-wait-replicas)
PAGE: Final = 200  # entries per read: no single command's cost grows with history
KEYS_MAX: Final = 20_000  # (conversation, sender) key sets kept, a few hundred bytes each
LINK_BATCH_MAX: Final = 1000  # sends in one batch on the send link (about 10 ms of Redis)
LEGACY_COUNT_CAP: Final = 1000  # entries written before ``n`` existed are counted up to this

Entries = list[tuple[str, dict[str, str]]]


def _entries(raw: Any) -> Entries:
    """redis-py types stream replies loosely; with decode_responses they are these."""
    return cast(Entries, raw or [])


def entry_to_message(
    entry: tuple[str, Mapping[str, str]], replay: bool = False, replies: int = 0
) -> Message:
    sid, fields = entry
    reply_to = fields.get("reply_to") or None
    quote = None
    if reply_to and "re_from" in fields:
        quote = Quote(fields["re_from"], fields.get("re_text", ""))
    return Message(
        id=sid,
        from_=fields.get("from", "?"),
        to=fields.get("to", "?"),
        text=fields.get("text", ""),
        ts=int(sid.partition("-")[0]),
        reply_to=reply_to,
        replay=replay,
        quote=quote,
        replies=replies,
        scheduled=fields.get("sched") == "1",
        file=_stored_file(fields.get("file")),
    )


def _stored_file(raw: str | None) -> FileInfo | None:
    """The ``file`` field of a stream or log entry. One entry edited by hand (or
    broken) shows as a plain message rather than break a page of history."""
    if not raw:
        return None
    try:
        return file_from_dict(json.loads(raw))
    except (ValueError, TypeError, KeyError):
        log.warning("ignored a malformed file field: %.100r", raw)
        return None


def _id_before(sid: str) -> str:
    ms, seq = parse_stream_id(sid)
    return format_stream_id((ms, seq - 1) if seq else (ms - 1, MAX_STREAM_ID[1]))


@dataclass(frozen=True, slots=True)
class SendResult:
    id: str
    duplicate: bool


# Called once per send with its result, or with the error that refused or lost it:
# a ``ClientError`` (no such message to reply to, not a member), ``Unavailable``.
SendDone = Callable[[SendResult | Exception], None]


@dataclass(slots=True)
class _PendingSend:
    keys: tuple[str, str, str, str, str, str, str]
    args: list[Any]
    log_key: str
    log_fields: dict[str, str]
    touch: tuple[str, str, str] | None  # (sender's list, recipient's list, conversation)
    on_done: SendDone
    # On a cluster: the channels outside the conversation's slot (a direct message's
    # users), published after the step, and the event's JSON after its id and time.
    crossing: tuple[str, ...] = ()
    tail: str = ""


def _outcome(
    item: _PendingSend, result: Any, failure: BaseException | None
) -> SendResult | Exception:
    """A send step's reply (``send.lua``'s status and id) as the sender hears it."""
    if result is None or isinstance(result, BaseException):
        error = result if isinstance(result, BaseException) else failure
        if isinstance(error, REDIS_DOWN):
            return unavailable(error)
        if isinstance(error, Exception):
            return error
        return Unavailable("the send was interrupted")
    status, sid = int(result[0]), str(result[1])
    to, reply_to = item.args[1], item.args[3]
    if status == -1:
        return ClientError("not_found", f"no message {reply_to} in {to}")
    if status == -2:
        return ClientError("forbidden", f"you are not a member of {to}")
    return SendResult(sid, duplicate=status == 0)


def _touches(item: _PendingSend, now: int) -> list[list[Any]]:
    """The ZADDs that list a direct conversation for both its users (none when it
    was listed lately), which go before its step."""
    if item.touch is None:
        return []
    own, other, conversation = item.touch
    return [["ZADD", own, "GT", now, conversation], ["ZADD", other, "GT", now, conversation]]


@boundary
class Messages:
    def __init__(
        self,
        redis: Redis,
        keys: Keys,
        scripts: Scripts,
        *,
        message_ttl_s: int = 3600,
        history_max_len: int = 100_000,
        idempotency_ttl_s: int = 300,
        wait_replicas: int = 0,
    ) -> None:
        self.redis = redis
        self.keys = keys
        self.scripts = scripts
        self.wait_replicas = wait_replicas
        self.wait_replicas_ms = WAIT_REPLICAS_MS
        self.message_ttl_s = message_ttl_s
        self.history_max_len = history_max_len
        self.idempotency_ttl_s = idempotency_ttl_s
        # How often a direct conversation's place in both users' lists is refreshed.
        # A tenth of the lifetime, between 1 s and a minute (a minute when messages live forever).
        self.touch_every_ms = (
            min(60_000, max(1000, message_ttl_s * 100)) if message_ttl_s else 60_000
        )
        self._sends: list[_PendingSend] = []
        self._flush_scheduled = False
        # On a single Redis without WAIT the steps go by a link of their own, one
        # batch at a time (gateway.store.sendlink); the Store sets it.
        self.link: SendLink | None = None
        self._in_flight = False  # a batch is on the link
        self._flushes: set[asyncio.Task[None]] = set()
        self._touched: dict[str, int] = {}  # direct conversation -> when last listed (ms)
        self._keys: dict[tuple[str, str], tuple[str, str, str, str]] = {}  # see _keys_of

    # -- lifetime -------------------------------------------------------------
    def min_id(self) -> str:
        """Oldest id still alive ("0-0" when messages live forever)."""
        if not self.message_ttl_s:
            return "0-0"
        return f"{now_ms() - self.message_ttl_s * 1000}-0"

    def _start_after(self, after: str | None) -> str | None:
        """XRANGE start for "after this id", never earlier than the lifetime allows;
        None when nothing can come after it."""
        floor = self.min_id()
        if after is None:
            return floor
        key = parse_stream_id(after)
        if key >= MAX_STREAM_ID:
            return None
        if key < parse_stream_id(floor):
            return floor
        return "(" + after

    def forget_cached(self) -> None:
        """Redis may have lost data (it restarted): list conversations again."""
        self._touched.clear()

    # -- sending ----------------------------------------------------------------
    def queue(
        self,
        sender: str,
        conversation: str,
        to: str,
        text: str,
        *,
        channels: Sequence[str],
        on_done: SendDone,
        cid: str | None = None,
        reply_to: str | None = None,
        lists: tuple[str, str] | None = None,
        member: str | None = None,
        quote: Quote | None = None,
        scheduled: bool = False,
        file: FileInfo | None = None,
    ) -> None:
        """Store a message and publish it on ``channels``, in one atomic step, with
        the batch this loop turn sends; then log it. ``on_done`` hears how it went.

        ``sender`` and ``to`` are display names (``to`` is ``#room`` for rooms).
        ``lists`` are the two users' conversation lists for a direct conversation.
        ``member``: the step refuses the send unless this name is in the room's members.
        ``quote``: the start of the ``reply_to`` message, kept with the reply.
        ``file``: a file message's file (stored already), kept with the message.
        """
        k = self.keys
        sharded = self.scripts.sharded
        stream, seq, replies, log_key = self._keys_of(conversation, sender)
        stored_file = file_json(file) if file is not None else ""
        in_step, crossing = channels, tuple[str, ...]()
        if sharded:
            # A script may publish only on its own slot's channels: a room's, not the
            # two users' of a direct message, which are published right after it.
            tag = hash_tag(stream)
            in_step = [c for c in channels if hash_tag(c) == tag]
            crossing = tuple(c for c in channels if hash_tag(c) != tag)
        tail = message_json_tail(sender, to, text, reply_to, quote, scheduled, file)
        args: list[Any] = [
            sender,
            to,
            text,
            reply_to or "",
            self.idempotency_ttl_s,
            "1" if cid else "0",
            self.min_id() if self.message_ttl_s else "",
            self.history_max_len,
            tail,
            (member or "").lower(),
            self.message_ttl_s * 1000,
            quote.from_ if quote else "",
            quote.text if quote else "",
            "1" if scheduled else "",
            stored_file,
            "" if sharded else self.history_max_len,  # the log in the step
            *in_step,
        ]
        log_fields = {}
        if sharded:  # the log is written after the step, from these
            log_fields = {"id": "", "to": to, "text": text}
            if reply_to:
                log_fields["reply_to"] = reply_to
            if stored_file:
                log_fields["file"] = stored_file
        touch = None
        if lists is not None and self._due_touch(conversation):
            touch = (lists[0], lists[1], conversation)
        pending = _PendingSend(
            keys=(
                stream,
                k.sent(conversation, sender, cid) if cid else stream,
                seq,
                k.members(conversation) if member else stream,
                replies,
                k.thread(conversation, reply_to) if reply_to else stream,
                stream if sharded else log_key,
            ),
            args=args,
            log_key=log_key,
            log_fields=log_fields,
            touch=touch,
            on_done=on_done,
            crossing=crossing,
            tail=tail,
        )
        self._sends.append(pending)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._start_flush)

    def _keys_of(self, conversation: str, sender: str) -> tuple[str, str, str, str]:
        """The keys every send of ``sender`` to ``conversation`` writes: its stream,
        its counter, its reply counts, the sender's log (built once, not per send)."""
        cache_key = (conversation, sender)
        found = self._keys.get(cache_key)
        if found is None:
            k = self.keys
            found = (
                k.stream(conversation), k.seq(conversation), k.replies(conversation), k.log(sender)
            )  # fmt: skip
            if len(self._keys) >= KEYS_MAX:
                self._keys.clear()
            self._keys[cache_key] = found
        return found

    def _due_touch(self, conversation: str) -> bool:
        last = self._touched.get(conversation)
        return last is None or now_ms() - last >= self.touch_every_ms

    def _start_flush(self) -> None:
        self._flush_scheduled = False
        if self.link is not None:
            if self._in_flight or not self._sends:
                return  # the batch on the link starts the next one when it ends
            self._in_flight = True
            # At most LINK_BATCH_MAX: a batch's time in Redis stays far below the
            # link's timeout however many sends wait (the rest go next, in order).
            batch, self._sends = self._sends[:LINK_BATCH_MAX], self._sends[LINK_BATCH_MAX:]
        else:
            batch, self._sends = self._sends, []
        task = asyncio.create_task(self._flush_sends(batch))
        self._flushes.add(task)
        task.add_done_callback(self._flushes.discard)

    async def _flush_sends(self, batch: list[_PendingSend]) -> None:
        """One round trip for every atomic step of the batch, one for their logs.

        A direct conversation is listed for both users (ZADD) before its first
        message exists, so a recipient logging in meanwhile either finds it or is
        already subscribed when the message is published.
        """
        results: list[Any] | None = None
        failure: BaseException | None = None
        try:
            results, unconfirmed = await self._run_send_scripts(batch)
            try:
                await self._after_step(batch, results)
            except REDIS_DOWN as exc:
                # The messages are stored (that is what an ack promises); only the
                # senders' own logs miss them (and, on a cluster, the live delivery of
                # direct messages: their readers' gateways re-read once their link
                # to that shard is back).
                log.warning(
                    "stored %d message(s) but could not log or publish them: %s", len(batch), exc
                )
            for i, confirmed in unconfirmed.items():
                if not isinstance(results[i], Exception):
                    results[i] = Unavailable(
                        f"the message is stored but {confirmed} of {self.wait_replicas}"
                        " replicas confirmed it; send it again with the same cid"
                    )
        except BaseException as exc:
            failure = exc
            if not isinstance(exc, Exception):
                raise
        finally:
            self._resolve(batch, results, failure)
            if self.link is not None:
                self._in_flight = False
                if self._sends and not self._flush_scheduled:
                    self._flush_scheduled = True
                    asyncio.get_running_loop().call_soon(self._start_flush)

    @staticmethod
    def _resolve(
        batch: list[_PendingSend], results: list[Any] | None, failure: BaseException | None
    ) -> None:
        """Every send's callback hears its result or an error, whatever else happened."""
        for i, item in enumerate(batch):
            outcome = _outcome(item, results[i] if results is not None else None, failure)
            try:
                item.on_done(outcome)
            except Exception:
                log.exception("bug in a send's callback")

    async def _after_step(self, batch: list[_PendingSend], results: list[Any]) -> None:
        """On a cluster, one round trip: the senders' logs (a single Redis writes them
        in the step) and the publishes that cross slots. A retry (status 0) is
        published again: its first attempt may have died between its step and this,
        and readers drop what they already have."""
        if not self.scripts.sharded:
            return
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
        publish = [(item, sid) for item, sid in new + retried if item.crossing]
        if retried:
            # A retry of a stored message: its first attempt may have died before
            # logging it (the rare path, so the look costs nothing on the common one).
            new += await self._not_logged(retried)
        if not new and not publish:
            return
        async with self.redis.pipeline(transaction=False) as pipe:
            for item, sid in publish:
                payload = f'{{"type":"message","id":"{sid}","ts":{sid.partition("-")[0]}{item.tail}'
                for channel in item.crossing:
                    self.scripts.publish(pipe, channel, payload)
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

    async def _run_send_scripts(
        self, batch: list[_PendingSend]
    ) -> tuple[list[Any], dict[int, int]]:
        """The send script for each item (its list updates first): a result or an error
        each; and, with ``wait_replicas``, the items whose replicas did not all confirm
        them (index -> how many did)."""
        now = now_ms()
        waits = self._waits(batch)

        def fill(pipe: Pipeline) -> None:
            for item in batch:
                for command in _touches(item, now):
                    pipe.execute_command(*command)
                self.scripts.queue(pipe, "send", item.keys, item.args)
            # WAIT counts the replicas that have this connection's writes so far, so it
            # follows the scripts on the connection to their node.
            for node, _ in waits:
                target = {} if node is None else {"target_nodes": node}
                pipe.execute_command("WAIT", self.wait_replicas, self.wait_replicas_ms, **target)

        if self.link is not None:
            raw = await self._run_on_link(self.link, batch, now)
        else:
            raw = await self.scripts.run_pipeline(fill, ("send",))
        kinds = [k for item in batch for k in (["zadd", "zadd"] if item.touch else []) + ["send"]]
        results = [r for r, kind in zip(raw[: len(kinds)], kinds, strict=True) if kind == "send"]
        unconfirmed: dict[int, int] = {}
        for (_, indexes), got in zip(waits, raw[len(kinds) :], strict=True):
            confirmed = 0 if isinstance(got, Exception) else int(got)
            if confirmed < self.wait_replicas:
                unconfirmed.update((i, confirmed) for i in indexes)
        for item in batch:
            if item.touch is not None:
                if len(self._touched) >= _CACHE_MAX:
                    self._touched.clear()
                self._touched[item.touch[2]] = now
        return results, unconfirmed

    async def _run_on_link(self, link: SendLink, batch: list[_PendingSend], now: int) -> list[Any]:
        """The batch's commands (as ``fill`` queues them, without WAIT) on the link;
        a step Redis refused with NOSCRIPT runs again alone once the script is loaded."""
        commands: list[list[Any]] = []
        steps: list[int] = []
        for item in batch:
            commands.extend(_touches(item, now))
            steps.append(len(commands))
            commands.append(self.scripts.command("send", item.keys, item.args))
        raw = await link.run(commands)
        refused = [i for i in steps if isinstance(raw[i], NoScriptError)]
        if refused:
            await self.scripts.load(("send",))
            again = await link.run([commands[i] for i in refused])
            for i, result in zip(refused, again, strict=True):
                raw[i] = result
        return raise_if_down(raw)

    def _waits(self, batch: list[_PendingSend]) -> list[tuple[Any, list[int]]]:
        """One WAIT per node the batch writes to (None: the one Redis), with the
        indexes of its items."""
        if not self.wait_replicas:
            return []
        if not self.scripts.sharded:
            return [(None, list(range(len(batch))))]
        nodes: dict[str, tuple[Any, list[int]]] = {}
        cluster: Any = self.redis  # a RedisCluster (typed as Redis, see make_cluster)
        for i, item in enumerate(batch):
            node = cluster.get_node_from_key(item.keys[0])
            nodes.setdefault(node.name, (node, []))[1].append(i)
        return list(nodes.values())

    # -- reading ------------------------------------------------------------------
    async def read_after(
        self, conversation: str, after: str | None, count: int, *, replay: bool = True
    ) -> list[Message]:
        """Up to ``count`` (at most a page) live messages after ``after``, oldest first;
        marked as replayed unless ``replay`` is False (read to be delivered as new)."""
        start = self._start_after(after)
        if start is None:
            return []
        entries = _entries(
            await self.redis.xrange(
                self.keys.stream(conversation), min=start, max="+", count=min(count, PAGE)
            )
        )
        return [entry_to_message(e, replay=replay) for e in entries]

    async def read_last(
        self, conversation: str, count: int, before: str | None = None
    ) -> list[Message]:
        """The last ``count`` (at most a page) live messages before ``before``, oldest first."""
        if before is not None and parse_stream_id(before) == (0, 0):
            return []  # nothing is older than the first possible id
        entries = _entries(
            await self.redis.xrevrange(
                self.keys.stream(conversation),
                max="+" if before is None else "(" + before,
                min=self.min_id(),
                count=min(count, PAGE),
            )
        )
        return [entry_to_message(e, replay=True) for e in reversed(entries)]

    async def read_one(self, conversation: str, message_id: str) -> Message | None:
        """One live message of the conversation, with its reply count (None: no such)."""
        entries = _entries(
            await self.redis.xrange(self.keys.stream(conversation), message_id, message_id)
        )
        if not entries or parse_stream_id(message_id) < parse_stream_id(self.min_id()):
            return None
        (counted,) = await self.with_replies(conversation, [entry_to_message(entries[0])])
        return counted

    async def with_replies(self, conversation: str, messages: list[Message]) -> list[Message]:
        """The messages with their reply counts (one read for the whole page)."""
        if not messages:
            return messages
        counts = await self.redis.hmget(self.keys.replies(conversation), [m.id for m in messages])
        return [
            dataclasses.replace(m, replies=int(n)) if n else m
            for m, n in zip(messages, counts, strict=True)
        ]

    async def thread(self, conversation: str, message_id: str, limit: int) -> list[Message]:
        """The first ``limit`` (at most a page) live replies to a message, oldest first."""
        ids = await self.redis.lrange(
            self.keys.thread(conversation, message_id), 0, min(limit, PAGE) - 1
        )
        if not ids:
            return []
        stream = self.keys.stream(conversation)
        async with self.redis.pipeline(transaction=False) as pipe:
            for sid in ids:
                pipe.xrange(stream, sid, sid)
            found: list[Any] = await pipe.execute()
        floor = parse_stream_id(self.min_id())
        replies = [
            entry_to_message(entries[0])
            for entries in found
            if entries and parse_stream_id(entries[0][0]) >= floor
        ]
        return await self.with_replies(conversation, replies)

    async def start_of_last(self, conversation: str, count: int) -> str | None:
        """The id just before the last ``count`` live messages (None: from the start),
        found a page at a time, so replaying "the newest N" stays in pages."""
        stream, floor = self.keys.stream(conversation), self.min_id()
        top, seen = "+", 0
        while True:
            entries = _entries(
                await self.redis.xrevrange(stream, max=top, min=floor, count=PAGE + 1)
            )
            page = entries[:PAGE]
            if seen + len(page) >= count:
                return _id_before(entries[count - seen - 1][0])
            if len(entries) <= PAGE:
                return None
            seen += PAGE
            top = entries[PAGE][0]

    async def unread_counts(self, wanted: Sequence[tuple[str, str | None]], cap: int) -> list[int]:
        """For each (conversation, after id): live messages after it, at most ``cap``.

        Two single-entry reads per conversation, all in one round trip: the first
        live entry after the id and the last entry; their ``n`` numbers subtract.
        """
        if not wanted:
            return []
        starts = [self._start_after(after) for _, after in wanted]
        async with self.redis.pipeline(transaction=False) as pipe:
            for (conversation, _), start in zip(wanted, starts, strict=True):
                stream = self.keys.stream(conversation)
                pipe.xrange(stream, min=start or "+", max="+", count=1)
                pipe.xrevrange(stream, count=1)
            raw: list[Any] = await pipe.execute()
        counts: list[int] = []
        legacy: list[int] = []
        for i, start in enumerate(starts):
            first, last = _entries(raw[2 * i]), _entries(raw[2 * i + 1])
            if start is None or not first:
                counts.append(0)
                continue
            n_first, n_last = first[0][1].get("n"), last[0][1].get("n") if last else None
            if n_first is None or n_last is None or int(n_last) < int(n_first):
                legacy.append(i)
                counts.append(0)
                continue
            counts.append(min(cap, int(n_last) - int(n_first) + 1))
        for i in legacy:  # written before entries were numbered: a bounded count
            conversation, _ = wanted[i]
            start = starts[i]
            assert start is not None
            entries = await self.redis.xrange(
                self.keys.stream(conversation), min=start, max="+", count=min(cap, LEGACY_COUNT_CAP)
            )
            counts[i] = len(entries or [])
        return counts

    async def last_ids(self, conversations: Sequence[str]) -> list[str | None]:
        """The newest id of each conversation (None when it has no messages)."""
        if not conversations:
            return []
        async with self.redis.pipeline(transaction=False) as pipe:
            for conversation in conversations:
                pipe.xrevrange(self.keys.stream(conversation), count=1)
            raw: list[Any] = await pipe.execute()
        return [_entries(r)[0][0] if r else None for r in raw]

    async def log(self, user: str, limit: int) -> list[Message]:
        entries = _entries(
            await self.redis.xrevrange(
                self.keys.log(user), max="+", min=self.min_id(), count=min(limit, PAGE)
            )
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
                    file=_stored_file(fields.get("file")),
                )
            )
        return out

"""A minimal Redis pub/sub connection for the gateway's one subscription per process.

Why not redis-py's PubSub: it reconnects and resubscribes behind the caller's back,
so the gateway could not know that messages were missed while the link was down;
and it does per-message bookkeeping the fan-out path does not need. This reads
whole socket chunks with hiredis and hands the hub every message of a chunk at once.

Owns: the socket (plain TCP, TLS for ``rediss://``, or a unix socket), RESP encoding
of the commands it sends, subscribe confirmations, and the keepalive that notices a
silently dead link. Must not know about sessions or message contents.

Every wait is bounded: connecting (with AUTH and CLIENT SETNAME) by
``connect_timeout_s``, a subscribe confirmation by ``confirm_timeout_s``, and silence
from Redis by ``dead_after_s`` (``read_batch`` sends a PING after ``keepalive_s``
of silence). Whatever runs out, the link is closed and ``SubscriberClosed`` raised,
so the caller makes a new ``Subscriber``.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections import deque
from collections.abc import Iterable
from typing import Any

import hiredis
from redis.connection import parse_url

__all__ = ["Subscriber", "SubscriberClosed"]


class SubscriberClosed(ConnectionError):
    """The pub/sub link is down; make a new Subscriber."""


def _command(*parts: str | bytes) -> bytes:
    out = [b"*%d\r\n" % len(parts)]
    for p in parts:
        b = p.encode() if isinstance(p, str) else p
        out.append(b"$%d\r\n%s\r\n" % (len(b), b))
    return b"".join(out)


_PING = _command("PING")

_CERT_REQS = {"none": ssl.CERT_NONE, "optional": ssl.CERT_OPTIONAL, "required": ssl.CERT_REQUIRED}
_TLS_OPTIONS = {
    "ssl_cert_reqs",
    "ssl_check_hostname",
    "ssl_ca_certs",
    "ssl_ca_path",
    "ssl_certfile",
    "ssl_keyfile",
    "ssl_password",
    "ssl_min_version",
    "ssl_ciphers",
}


def _tls_context(params: dict[str, Any]) -> ssl.SSLContext:
    """The context redis-py's SSLConnection builds from the same ``rediss://`` URL, so
    the store's connections and this one agree: certificates are verified and the
    host name checked unless the URL says ``ssl_cert_reqs=none``.

    An ``ssl_*`` option this link does not implement is refused rather than ignored:
    silently dropping, say, a minimum TLS version would weaken the link unnoticed.
    """
    unknown = sorted(k for k in params if k.startswith("ssl_") and k not in _TLS_OPTIONS)
    if unknown:
        raise ValueError(f"the pub/sub link does not support {', '.join(unknown)}")
    reqs = str(params.get("ssl_cert_reqs", "required")).lower()
    if reqs not in _CERT_REQS:
        raise ValueError(f"ssl_cert_reqs must be one of {', '.join(_CERT_REQS)}, not {reqs!r}")
    ctx = ssl.create_default_context()
    # check_hostname first: CERT_NONE is refused while it is still on.
    ctx.check_hostname = _CERT_REQS[reqs] != ssl.CERT_NONE and bool(
        params.get("ssl_check_hostname", True)
    )
    ctx.verify_mode = _CERT_REQS[reqs]
    if params.get("ssl_certfile"):
        ctx.load_cert_chain(
            params["ssl_certfile"], params.get("ssl_keyfile"), params.get("ssl_password")
        )
    elif params.get("ssl_keyfile"):
        raise ValueError("ssl_keyfile needs ssl_certfile")
    if params.get("ssl_ca_certs") or params.get("ssl_ca_path"):
        ctx.load_verify_locations(params.get("ssl_ca_certs"), params.get("ssl_ca_path"))
    if params.get("ssl_min_version") is not None:
        ctx.minimum_version = ssl.TLSVersion(params["ssl_min_version"])
    if params.get("ssl_ciphers"):
        ctx.set_ciphers(params["ssl_ciphers"])
    return ctx


class _Confirmations:
    """Per channel, the subscribe calls waiting for Redis's confirmation, oldest first.

    Redis answers each channel of each SUBSCRIBE with one ``subscribe`` reply, in the
    order the commands were sent, so a reply belongs to the oldest waiter of its channel
    and to no other: with subscribe, unsubscribe, subscribe of one channel in flight, the
    first reply must not release the second subscribe, whose SUBSCRIBE Redis may not have
    run yet. A waiter whose caller gave up stays in line as a cancelled future, a
    placeholder that swallows the reply Redis still sends for it.
    """

    def __init__(self) -> None:
        self._lines: dict[bytes, deque[asyncio.Future[None]]] = {}

    def expect(self, names: list[bytes]) -> list[asyncio.Future[None]]:
        loop = asyncio.get_running_loop()
        futs: list[asyncio.Future[None]] = []
        for name in names:  # a name given twice is confirmed twice
            fut: asyncio.Future[None] = loop.create_future()
            self._lines.setdefault(name, deque()).append(fut)
            futs.append(fut)
        return futs

    def confirmed(self, name: bytes) -> None:
        line = self._lines.get(name)
        if not line:
            return  # nobody waits: a subscribe cut short by fail_all
        fut = line.popleft()
        if not line:
            del self._lines[name]
        if not fut.done():
            fut.set_result(None)

    def fail_all(self, exc: BaseException) -> None:
        for line in self._lines.values():
            for fut in line:
                if not fut.done():
                    fut.set_exception(exc)
        self._lines.clear()


class Subscriber:
    """One pub/sub link. ``read_batch`` must be running (in a task of its own) while
    ``subscribe`` waits: it is what reads the confirmations and keeps the link alive.

    ``connect_timeout_s`` bounds connecting, TLS, AUTH and CLIENT SETNAME together;
    ``keepalive_s`` of silence makes ``read_batch`` send a PING, and ``dead_after_s``
    (default twice ``keepalive_s``) of silence closes the link; ``confirm_timeout_s``
    bounds a subscribe; ``client_name`` is set with CLIENT SETNAME so CLIENT LIST shows
    whose link this is. Raises ValueError for a bad URL, TLS option or client name.

    ``sharded`` (on a Redis Cluster): SSUBSCRIBE, one command per channel, on the node
    that owns the channel's slot, ``address`` (host, port) overriding the URL's (its
    password and TLS options still apply). When that node stops owning a slot (a slot
    moved, a failover) it drops the subscription with a ``sunsubscribe`` nobody asked
    for, or refuses with MOVED: either closes the link, since its messages from then
    on go elsewhere.
    """

    def __init__(
        self,
        url: str,
        connect_timeout_s: float = 2.0,
        *,
        keepalive_s: float = 5.0,
        dead_after_s: float | None = None,
        confirm_timeout_s: float = 5.0,
        client_name: str | None = None,
        sharded: bool = False,
        address: tuple[str, int] | None = None,
    ) -> None:
        self._params: dict[str, Any] = parse_url(url)  # type: ignore[no-untyped-call]
        if address is not None:
            self._params.pop("path", None)
            self._params["host"], self._params["port"] = address
        self._sharded = sharded
        self._sub_cmd, self._unsub_cmd = (
            ("SSUBSCRIBE", "SUNSUBSCRIBE") if sharded else ("SUBSCRIBE", "UNSUBSCRIBE")
        )
        self._leaving: dict[bytes, int] = {}  # channel -> SUNSUBSCRIBE replies still due
        self._tls = _tls_context(self._params) if url.startswith("rediss://") else None
        if dead_after_s is None:
            dead_after_s = 2 * keepalive_s
        if not 0 < keepalive_s < dead_after_s:
            raise ValueError("need 0 < keepalive_s < dead_after_s")
        if connect_timeout_s <= 0 or confirm_timeout_s <= 0:
            raise ValueError("timeouts must be positive")
        # Redis's own rule for CLIENT SETNAME: printable ASCII, no spaces.
        if client_name is not None and not (
            client_name and all("!" <= ch <= "~" for ch in client_name)
        ):
            raise ValueError(f"client name must be printable ASCII without spaces: {client_name!r}")
        self._connect_timeout_s = connect_timeout_s
        self._keepalive_s = keepalive_s
        self._dead_after_s = dead_after_s
        self._confirm_timeout_s = confirm_timeout_s
        self._client_name = client_name
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._parser = hiredis.Reader()
        self._confirmations = _Confirmations()
        self._closed: str | None = None  # why the link is down, once it is
        self._last_rx = 0.0  # loop time of the last bytes from Redis
        self._ping_sent_at: float | None = None  # a keepalive PING not answered yet

    async def connect(self) -> None:
        p = self._params
        connected = False
        try:
            async with asyncio.timeout(self._connect_timeout_s):
                if "path" in p:
                    opening = asyncio.open_unix_connection(p["path"], limit=1 << 20)
                else:
                    host = p.get("host", "localhost")
                    opening = asyncio.open_connection(
                        host,
                        int(p.get("port", 6379)),
                        limit=1 << 20,
                        ssl=self._tls,
                        server_hostname=host if self._tls is not None else None,
                    )
                self._reader, self._writer = await opening
                await self._handshake()
            connected = True
        except SubscriberClosed:
            raise
        except OSError as exc:  # TimeoutError included; ssl.SSLError too
            reason = str(exc) or f"no answer within {self._connect_timeout_s:g} s"
            raise SubscriberClosed(f"cannot reach Redis: {reason}") from exc
        finally:
            if not connected:
                self._abort("could not connect")
        self._last_rx = asyncio.get_running_loop().time()

    async def _handshake(self) -> None:
        p = self._params
        if p.get("password"):
            auth = [p["username"], p["password"]] if p.get("username") else [p["password"]]
            await self._call("AUTH", *auth)
        if self._client_name is not None:
            await self._call("CLIENT", "SETNAME", self._client_name)

    async def _call(self, *command: str) -> Any:
        """Send a command before any subscription and return its reply."""
        self._write(_command(*command))
        reply = await self._read_one()
        if isinstance(reply, hiredis.ReplyError):
            raise SubscriberClosed(f"Redis refused {command[0]}: {reply}")
        return reply

    async def _read_one(self) -> Any:
        assert self._reader is not None
        while (reply := self._gets()) is False:
            chunk = await self._reader.read(65536)
            if not chunk:
                raise SubscriberClosed("Redis closed the connection")
            self._parser.feed(chunk)
        return reply

    def _gets(self) -> Any:
        try:
            return self._parser.gets()
        except hiredis.ProtocolError as exc:
            raise self._abort(f"unreadable reply from Redis: {exc}") from exc

    async def subscribe(self, channels: Iterable[str]) -> None:
        """Subscribe and wait until Redis confirms each channel (so nothing is missed).

        Raises SubscriberClosed, and closes the link, if the confirmations do not all
        arrive within ``confirm_timeout_s``.
        """
        names = [c.encode() for c in channels]
        if not names:
            return
        # Written before the waiters are queued: a write that fails leaves no waiter.
        # Channels of different slots cannot share an SSUBSCRIBE: one each.
        if self._sharded:
            self._write(b"".join(_command(self._sub_cmd, name) for name in names))
        else:
            self._write(_command(self._sub_cmd, *names))
        waits = self._confirmations.expect(names)
        deadline = asyncio.timeout(self._confirm_timeout_s)
        try:
            async with deadline:
                for fut in waits:
                    await fut
        except TimeoutError:
            if not deadline.expired():
                raise
            raise self._abort(
                f"no subscribe confirmation within {self._confirm_timeout_s:g} s"
            ) from None
        finally:
            for fut in waits:
                if not fut.done():
                    fut.cancel()  # leave a placeholder for its confirmation
                elif not fut.cancelled():
                    fut.exception()  # retrieved, so asyncio does not log it as lost

    def unsubscribe(self, channels: Iterable[str]) -> None:
        """Fire and forget: read_batch drops Redis's ``unsubscribe`` replies, which can
        never be taken for a ``subscribe`` confirmation."""
        names = [c.encode() for c in channels]
        if not names:
            return
        if self._sharded:
            self._write(b"".join(_command(self._unsub_cmd, name) for name in names))
            for name in names:
                self._leaving[name] = self._leaving.get(name, 0) + 1
        else:
            self._write(_command(self._unsub_cmd, *names))

    def _write(self, data: bytes) -> None:
        if self._closed is not None:
            raise SubscriberClosed(self._closed)
        if self._writer is None or self._writer.is_closing():
            raise SubscriberClosed("pub/sub connection is closed")
        self._writer.write(data)

    async def read_batch(self) -> list[tuple[bytes, bytes]]:
        """Wait for the next chunk from Redis; return every (channel, data) message in it.

        While waiting, sends a PING after ``keepalive_s`` of silence and raises
        SubscriberClosed after ``dead_after_s`` of it.
        """
        if self._reader is None:
            raise SubscriberClosed("not connected")
        loop = asyncio.get_running_loop()
        while True:
            if self._closed is not None:
                raise SubscriberClosed(self._closed)
            batch = self._take_messages()
            if batch:
                return batch
            if self._ping_sent_at is None:
                deadline = self._last_rx + self._keepalive_s
            else:
                # The PING gets its share of time even when this call came late (a
                # busy loop): the silence may be ours, not Redis's.
                deadline = max(
                    self._last_rx + self._dead_after_s,
                    self._ping_sent_at + self._dead_after_s - self._keepalive_s,
                )
            timeout = asyncio.timeout_at(deadline)
            try:
                async with timeout:
                    chunk = await self._reader.read(1 << 18)
            except OSError as exc:
                if not timeout.expired():
                    raise self._abort(str(exc) or type(exc).__name__) from exc
                if self._ping_sent_at is None:
                    self._write(_PING)
                    self._ping_sent_at = loop.time()
                    continue
                silence = loop.time() - self._last_rx
                raise self._abort(f"no answer from Redis for {silence:.1f} s") from None
            if not chunk:
                raise self._abort("Redis closed the connection")
            self._last_rx = loop.time()
            self._ping_sent_at = None
            self._parser.feed(chunk)

    def _take_messages(self) -> list[tuple[bytes, bytes]]:
        """Every complete reply parsed so far: messages returned, confirmations
        handed to their waiters, the rest (unsubscribe, pong) only proof of life."""
        batch: list[tuple[bytes, bytes]] = []
        while (reply := self._gets()) is not False:
            if isinstance(reply, hiredis.ReplyError):
                # E.g. "max number of clients reached": Redis closes the link next.
                raise self._abort(f"Redis refused: {reply}")
            if isinstance(reply, list) and len(reply) == 3:
                kind = reply[0]
                if kind in (b"message", b"smessage"):
                    batch.append((reply[1], reply[2]))
                elif kind in (b"subscribe", b"ssubscribe"):
                    self._confirmations.confirmed(reply[1])
                elif kind == b"sunsubscribe":
                    self._left(reply[1])
        return batch

    def _left(self, name: bytes) -> None:
        due = self._leaving.get(name, 0)
        if due > 1:
            self._leaving[name] = due - 1
        elif due == 1:
            del self._leaving[name]
        else:
            # Not asked for: the node gave the channel's slot away.
            raise self._abort(f"Redis dropped the subscription to {name[:100]!r} (slot moved)")

    def _fail(self, reason: str) -> SubscriberClosed:
        """The link is down: a subscribe still waiting for its confirmation fails too
        (instead of waiting forever), so the caller can reconnect. The first reason
        given is the one every later call reports."""
        if self._closed is None:
            self._closed = reason
        exc = SubscriberClosed(self._closed)
        self._confirmations.fail_all(exc)
        return exc

    def _abort(self, reason: str) -> SubscriberClosed:
        """_fail, and drop the connection at once (no goodbye to a peer that is gone)."""
        exc = self._fail(reason)
        if self._writer is not None:
            self._writer.transport.abort()
        return exc

    async def close(self) -> None:
        self._fail("pub/sub connection closed")
        if self._writer is not None:
            self._writer.close()
            # A TLS goodbye waits for the peer's; a stopped peer never sends it.
            with contextlib.suppress(OSError):
                try:
                    async with asyncio.timeout(self._connect_timeout_s):
                        await self._writer.wait_closed()
                except TimeoutError:
                    self._writer.transport.abort()
            self._writer = None

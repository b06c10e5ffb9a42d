"""A connection's outgoing side: a bounded buffer, coalesced writes, paced replies.

``Outbox`` owns what is queued for one client and nothing else: it does not know
framings or users, so a session and (later) an SSE stream both use it. What is
queued for a client, in this buffer and in the transport's, is bounded by
``max_bytes``: past it the owner's ``on_overflow`` cuts the client off rather
than delay anyone else. The kernel's own send buffer is capped too (``SO_SNDBUF``
in ``tune_socket``), so the bound means what it says.

A reply the client asked for (history, a login's replay) may pass the bound; the
sender then waits, at most ``stall_s``, until the client has read enough of it.
A client that reads nothing for that long is cut off (``on_stall``).

``Flusher`` flushes the outboxes of a gateway together, one socket write each.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import time
from collections.abc import Callable
from typing import Final

__all__ = ["Flusher", "Outbox", "reset_on_close", "tune_socket"]

DRAIN_HIGH_WATER: Final = 256 * 1024


def tune_socket(transport: asyncio.BaseTransport, sndbuf_bytes: int) -> None:
    """Cap the kernel's send buffer and turn on TCP keepalive (dead peers go)."""
    sock = transport.get_extra_info("socket")
    if sock is None:
        return
    try:
        if sndbuf_bytes:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf_bytes)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        for name, value in (("TCP_KEEPIDLE", 60), ("TCP_KEEPINTVL", 10), ("TCP_KEEPCNT", 3)):
            if hasattr(socket, name):
                sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, name), value)
    except OSError:
        pass  # not a TCP socket (a Unix socket in tests): nothing to tune


def reset_on_close(transport: asyncio.BaseTransport) -> None:
    """Closing then sends a reset and drops what the kernel still holds for the peer,
    so a client that stopped reading learns it was cut off (and its memory goes)."""
    sock = transport.get_extra_info("socket")
    if sock is None:
        return
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


class Flusher:
    """Flushes the outboxes of a gateway's sessions together, one socket write each.

    Idle, a write goes out on the next loop turn, as a per-session ``call_soon``
    would. Busy, flushes are at most ``interval_s`` apart: every message that
    arrives in between joins the same write, which turns one ``send()`` per
    message and recipient into one per recipient and interval (a loopback send
    also wakes the reader, so each one costs a context switch on a small box).
    A flush never waits longer than ``interval_s``; 0 turns the coalescing off.
    """

    def __init__(self, interval_s: float) -> None:
        self.interval_s = interval_s
        self._dirty: list[Outbox] = []
        self._scheduled = False
        self._last = 0.0

    def add(self, outbox: Outbox) -> None:
        self._dirty.append(outbox)
        if not self._scheduled:
            self._scheduled = True
            loop = asyncio.get_running_loop()
            due = self._last + self.interval_s
            if due <= loop.time():
                loop.call_soon(self._run)
            else:
                loop.call_at(due, self._run)

    def _run(self) -> None:
        self._scheduled = False
        self._last = asyncio.get_running_loop().time()
        dirty, self._dirty = self._dirty, []
        for outbox in dirty:
            outbox.flush()


class Outbox:
    def __init__(
        self,
        transport: asyncio.Transport,
        flusher: Flusher,
        *,
        max_bytes: int,
        stall_s: float,
        on_overflow: Callable[[], None],
    ) -> None:
        self.transport = transport
        self.flusher = flusher
        self.max_bytes = max_bytes
        self.stall_s = stall_s
        self.on_overflow = on_overflow
        self._out: list[bytes] = []
        self._bytes = 0
        self._scheduled = False
        # Made when the transport first pauses (an Event holds a deque of 760 bytes,
        # and most connections never fill their transport's buffer).
        self._drained: asyncio.Event | None = None
        self.paused_since: float | None = None  # the transport is over its high mark
        self._ended = False  # write_eof: nothing more may be written
        # Replay waits for the client below this mark, well under the outbox bound.
        transport.set_write_buffer_limits(high=min(DRAIN_HIGH_WATER, max_bytes // 4))

    @property
    def closed(self) -> bool:
        return self.transport.is_closing()

    def queued(self) -> int:
        return self.transport.get_write_buffer_size() + self._bytes

    def write(self, data: bytes, bounded: bool = True) -> None:
        """Queue bytes for the client, or cut it off if it is too far behind."""
        if not data or self._ended or self.transport.is_closing():
            return  # already cut off or saying goodbye: nothing more is queued
        if bounded and self.queued() + len(data) > self.max_bytes:
            self.on_overflow()
            return
        self._out.append(data)
        self._bytes += len(data)
        if not self._scheduled:
            self._scheduled = True
            self.flusher.add(self)

    def flush(self) -> None:
        self._scheduled = False
        if not self._out or self._ended or self.transport.is_closing():
            return
        data = b"".join(self._out) if len(self._out) > 1 else self._out[0]
        self._out.clear()
        self._bytes = 0
        self.transport.write(data)

    def discard(self) -> None:
        self._out.clear()
        self._bytes = 0

    def write_now(self, data: bytes) -> None:
        """Flush what is queued, then ``data``: a last word before closing."""
        self.flush()
        if data and not self._ended and not self.transport.is_closing():
            self.transport.write(data)

    def end(self) -> bool:
        """Flush, then half-close (no more writes); False when the transport cannot."""
        self.flush()
        if self._ended or not self.transport.can_write_eof():
            return False
        self._ended = True
        self.transport.write_eof()
        return True

    # -- pacing -----------------------------------------------------------------------
    def pause_writing(self) -> None:
        if self._drained is None:
            self._drained = asyncio.Event()
        self._drained.clear()
        self.paused_since = time.monotonic()

    def resume_writing(self) -> None:
        if self._drained is not None:
            self._drained.set()
        self.paused_since = None

    def release(self) -> None:
        """The connection is gone: nobody waits on it any more."""
        if self._drained is not None:
            self._drained.set()
        self.discard()

    async def drain(self) -> bool:
        """Flush and wait until the client has read below the high mark; False when it
        read nothing for ``stall_s`` (the caller cuts it off)."""
        self.flush()
        drained = self._drained
        if drained is None or drained.is_set():
            return True
        try:
            async with asyncio.timeout(self.stall_s):
                await drained.wait()
        except TimeoutError:
            return False
        return True

    def stalled_for(self, now: float) -> float:
        return 0.0 if self.paused_since is None else now - self.paused_since

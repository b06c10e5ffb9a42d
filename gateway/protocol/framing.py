"""Framing: which protocol a connection speaks, and lines bounded in length.

``detect_framing`` picks the framing from a connection's first bytes.
``LineSplitter`` buffers what arrived and hands out one line at a time, so the
connection decides how much work it does per read. ``Codec`` is the base of the
line framings (JSON lines, text lines): bytes in, one command at a time out;
events in, bytes out.
"""

from __future__ import annotations

import enum
from typing import Final

from gateway.protocol.events import Error, Event
from gateway.protocol.ops import Command, Reject

__all__ = [
    "HTTP_METHODS",
    "TOO_LONG",
    "Codec",
    "Framing",
    "LineSplitter",
    "detect_framing",
]

# Every method a client could open with (RFC 9110 and PATCH), and the HTTP/2
# preface: all of them are HTTP, never chat text.
HTTP_METHODS: Final = (
    b"GET ", b"POST ", b"PUT ", b"DELETE ", b"HEAD ", b"OPTIONS ",
    b"PATCH ", b"CONNECT ", b"TRACE ", b"PRI * HTTP/2",
)  # fmt: skip
_COMPACT_AT: Final = 1 << 16


class Framing(enum.Enum):
    TEXT = "text"
    JSON = "json"
    HTTP = "http"


def detect_framing(data: bytes) -> Framing | None:
    """Pick the framing from a connection's first bytes; None until they decide it."""
    if not data:
        return None
    if data[:1] == b"{":
        return Framing.JSON
    undecided = False
    for method in HTTP_METHODS:
        if data.startswith(method):
            return Framing.HTTP
        if method.startswith(data):
            undecided = True
    return None if undecided else Framing.TEXT


class _TooLong:
    def __repr__(self) -> str:
        return "TOO_LONG"


TOO_LONG: Final = _TooLong()


class LineSplitter:
    """Splits a byte stream into lines of at most ``max_line_bytes``.

    ``push`` buffers bytes; ``next_line`` returns one line, ``TOO_LONG`` once for a
    line past the bound (the rest of it, up to its newline, is dropped without
    being kept), or None when no whole line is buffered.
    """

    def __init__(self, max_line_bytes: int) -> None:
        self.max_line_bytes = max_line_bytes
        self._buf = bytearray()
        self._pos = 0
        self._discarding = False

    @property
    def buffered(self) -> int:
        return len(self._buf) - self._pos

    def push(self, data: bytes) -> None:
        self._buf += data

    def finish(self) -> None:
        """The stream ended: a last line without its newline still counts."""
        if len(self._buf) > self._pos and not self._buf.endswith(b"\n"):
            self._buf += b"\n"

    def next_line(self) -> bytes | _TooLong | None:
        while True:
            nl = self._buf.find(b"\n", self._pos)
            if nl < 0:
                return self._incomplete()
            start, self._pos = self._pos, nl + 1
            if self._discarding:
                self._discarding = False
                continue
            if nl - start > self.max_line_bytes:
                self._compact()
                return TOO_LONG
            line = bytes(self._buf[start:nl])
            self._compact()
            return line[:-1] if line.endswith(b"\r") else line

    def _incomplete(self) -> _TooLong | None:
        pending = len(self._buf) - self._pos
        if self._discarding or pending > self.max_line_bytes:
            self._buf.clear()
            self._pos = 0
            if not self._discarding:
                self._discarding = True
                return TOO_LONG
            return None
        self._compact(force=True)
        return None

    def _compact(self, force: bool = False) -> None:
        if self._pos and (force or self._pos >= _COMPACT_AT or self._pos == len(self._buf)):
            del self._buf[: self._pos]
            self._pos = 0

    def feed(self, data: bytes) -> list[bytes | _TooLong]:
        """Push and take every whole line (for tests)."""
        self.push(data)
        out: list[bytes | _TooLong] = []
        while (line := self.next_line()) is not None:
            out.append(line)
        return out


class Codec:
    """Turns one connection's bytes into commands and its events into bytes."""

    framing: Framing
    login_hint: str = "log in first"

    def __init__(self, max_line_bytes: int = 16_384, max_text_chars: int = 4000) -> None:
        self.max_text_chars = max_text_chars
        self._lines = LineSplitter(max_line_bytes)

    @property
    def buffered(self) -> int:
        return self._lines.buffered

    def push(self, data: bytes) -> None:
        self._lines.push(data)

    def finish(self) -> None:
        self._lines.finish()

    def next(self) -> Command | Error | None:
        """The next request read, an ``Error`` in place of one that could not be
        read, or None when no whole line is buffered."""
        line = self._lines.next_line()
        if line is None:
            return None
        if line is TOO_LONG:
            limit = self._lines.max_line_bytes
            return Error("too_long", f"line longer than {limit} bytes was dropped")
        assert isinstance(line, bytes)
        try:
            return self.parse_line(line)
        except Reject as exc:
            return Error(exc.code, exc.message, rid=getattr(exc, "rid", None))

    def feed(self, data: bytes) -> list[Command | Error]:
        """Push bytes and read every whole request (for tests and fuzzing)."""
        self.push(data)
        out: list[Command | Error] = []
        while (item := self.next()) is not None:
            out.append(item)
        return out

    def parse_line(self, line: bytes) -> Command:
        raise NotImplementedError

    def encode(self, ev: Event) -> bytes:
        raise NotImplementedError


def decode_line(line: bytes) -> str:
    try:
        return line.decode("utf-8")
    except UnicodeDecodeError:
        raise Reject("bad_request", "line is not valid UTF-8") from None

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

from gateway.protocol.events import Error, Event, Message, dumps, event_to_dict
from gateway.protocol.ops import Command, Reject

__all__ = [
    "HTTP_METHODS",
    "TOO_LONG",
    "Codec",
    "Framing",
    "LineSplitter",
    "LiveRun",
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

    One kind of line may be longer: a line whose bytes start with ``wide_prefix``
    (JSON lines: an upload's chunk) is bounded by ``wide_line_bytes`` instead. The
    bound is chosen from the line's first bytes, so the rest of a line is never
    looked at to decide it, and a wide line past its own bound is dropped the same way.
    """

    def __init__(
        self, max_line_bytes: int, wide_prefix: bytes = b"", wide_line_bytes: int = 0
    ) -> None:
        self.max_line_bytes = max_line_bytes
        self.wide_prefix = wide_prefix
        self.wide_line_bytes = max(wide_line_bytes, max_line_bytes)
        self.last_limit = max_line_bytes  # the bound the last TOO_LONG line passed
        self._buf = bytearray()
        self._pos = 0
        self._tail = 0  # where the last line, not yet whole, starts (after the last newline)
        self._discarding = False

    @property
    def buffered(self) -> int:
        return len(self._buf) - self._pos

    @property
    def wide_partial(self) -> int:
        """Bytes of a wide line still arriving (0 when the last bytes are not one)."""
        partial = len(self._buf) - self._tail
        return partial if partial and self._is_wide(self._tail) else 0

    def push(self, data: bytes) -> None:
        nl = data.rfind(b"\n")
        if nl >= 0:
            self._tail = len(self._buf) + nl + 1
        self._buf += data

    def finish(self) -> None:
        """The stream ended: a last line without its newline still counts."""
        if len(self._buf) > self._pos and not self._buf.endswith(b"\n"):
            self._buf += b"\n"
            self._tail = len(self._buf)

    def next_line(self) -> bytes | _TooLong | None:
        while True:
            nl = self._buf.find(b"\n", self._pos)
            if nl < 0:
                return self._incomplete()
            start, self._pos = self._pos, nl + 1
            if self._discarding:
                self._discarding = False
                continue
            limit = self._limit_at(start)
            if nl - start > limit:
                self.last_limit = limit
                self._compact()
                return TOO_LONG
            line = bytes(self._buf[start:nl])
            self._compact()
            return line[:-1] if line.endswith(b"\r") else line

    def _is_wide(self, start: int) -> bool:
        """Whether the line at ``start`` is (or, while shorter than the prefix, may
        still become) a wide line."""
        prefix = self.wide_prefix
        return bool(prefix) and prefix.startswith(self._buf[start : start + len(prefix)])

    def _limit_at(self, start: int) -> int:
        return self.wide_line_bytes if self._is_wide(start) else self.max_line_bytes

    def _incomplete(self) -> _TooLong | None:
        pending = len(self._buf) - self._pos
        limit = self._limit_at(self._pos)
        if self._discarding or pending > limit:
            self._buf.clear()
            self._pos = self._tail = 0
            if not self._discarding:
                self._discarding = True
                self.last_limit = limit
                return TOO_LONG
            return None
        self._compact(force=True)
        return None

    def _compact(self, force: bool = False) -> None:
        if self._pos and (force or self._pos >= _COMPACT_AT or self._pos == len(self._buf)):
            del self._buf[: self._pos]
            self._tail -= self._pos  # never before _pos: it follows the last newline
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
    # Lines starting with these bytes may be this long (see LineSplitter); none here.
    wide_prefix: bytes = b""
    wide_line_bytes: int = 0

    def __init__(self, max_line_bytes: int = 16_384, max_text_chars: int = 4000) -> None:
        self.max_text_chars = max_text_chars
        self._lines = LineSplitter(max_line_bytes, self.wide_prefix, self.wide_line_bytes)

    @property
    def buffered(self) -> int:
        """Bytes read and not yet parsed, which the connection keeps bounded by pausing
        its reads. A wide line still arriving does not count: it can only be parsed
        once it is whole, and it may be longer than that bound (it has its own)."""
        return self._lines.buffered - self._lines.wide_partial

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
            limit = self._lines.last_limit
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

    def encode_live(self, run: LiveRun) -> bytes:
        """Live messages of one conversation, oldest first, for one write."""
        return b"".join(self.encode(msg) for msg in run.messages)


class LiveRun:
    """Live messages of one conversation that arrived together, handed to every local
    session that reads it: what is the same for all of them is worked out once (the
    JSON lines, the messages published as they are sent)."""

    __slots__ = ("_json", "first", "messages")

    def __init__(self, messages: list[Message]) -> None:
        self.messages = messages
        self.first = messages[0].key
        self._json: bytes | None = None

    def json_lines(self) -> bytes:
        if self._json is None:
            self._json = b"".join(m.raw or dumps(event_to_dict(m)) for m in self.messages)
        return self._json


def decode_line(line: bytes) -> str:
    try:
        return line.decode("utf-8")
    except UnicodeDecodeError:
        raise Reject("bad_request", "line is not valid UTF-8") from None

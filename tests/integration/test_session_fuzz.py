"""Hypothesis drives whole sessions, over real sockets, against real gateways.

One deployment per module (a redis-server on a free port, two gateway processes
sharing one port); each example is a fresh connection and a fresh user name.

JSON lines: a session is a ping, some requests before login, a login, some requests
after it, a final ping, written all at once or one at a time (each then followed by a
ping, so that a missing answer shows at once); then a second connection logs in again
as the same user (with a generated ``since``) and pings. Requests are objects with
generated ops, fields and rids (Unicode digits, 5,000-digit numbers, out-of-range and
zero stream ids, lone surrogates, control and bidi characters, huge or deeply nested
JSON, wrong types) or raw lines (empty, malformed, overlong). Properties:
- every line gets exactly one answer, in order: the op's reply or an ``error``,
  carrying the request's rid; a line with no rid that can be read gets its answer
  without one; a line that cannot be read as a request with a usable rid (not
  UTF-8, not JSON, not an object, over the line limit, an unusable rid) gets one
  ``error`` without a rid (``too_long`` past the line limit, else ``bad_request``);
- no answer is ``internal``; error codes are the documented client codes; an
  unknown op is ``unknown_op``; before login nothing that needs a login is served
  and no error reveals more than ``not_logged_in`` (no ``unknown_user`` ...);
- the connection stays open: the final ping gets its pong.

Text lines: commands and plain lines with the same kinds of values. Every line gets
at least one output line; every output line is valid UTF-8, ends in ``\\r\\n``, is
marked as the server's (``** ``, ``!! ``) or is a message line (``12:30:01 [3] ``),
and carries no raw control or bidi character; no ``internal``; ``/ping`` still
answers at the end.

After every example the gateway processes are alive and their logs have no
``Traceback`` and no ``Fatal error``; at the end they stop cleanly on SIGTERM.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import itertools
import json
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Final

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support import Deployment, RedisServer

GENERAL: Final = "#general"
MAX_LINE: Final = 16_384  # --max-line-bytes (default)
HUGE_ID: Final = "99999999999999999999-0"  # past 2**64 ms
MAX_ID: Final = "18446744073709551615-18446744073709551615"
READ_TIMEOUT: Final = 10.0
BAD_LOG: Final = ("Traceback", "Fatal error")

# What a well-behaved gateway may answer a peer's mistake with (docs/protocol.md).
CLIENT_CODES: Final = frozenset(
    {
        "bad_request", "unknown_op", "not_logged_in", "bad_password", "bad_name",
        "unknown_user", "too_long", "rate_limited", "banned", "forbidden", "not_found",
        "exists",
    }
)  # fmt: skip
# Field checks come before the login check; nothing past it (Redis) before login.
GUEST_CODES: Final = frozenset({"bad_request", "bad_name", "too_long", "not_logged_in"})
REPLY: Final = {
    "login": "welcome",  # then `synced`, with the same rid
    "send": "ack",
    "history": "history",
    "log": "log",
    "status": "status",
    "ping": "pong",
    "help": "notice",
    "report": "reported",
}
NEEDS_LOGIN: Final = frozenset({"send", "history", "log", "status", "report"})
UNSOLICITED: Final = frozenset({"message", "warning"})  # pushed, never a reply

# Output a terminal must never get raw: C0, DEL, C1, bidi marks/embeddings/overrides/
# isolates, line and paragraph separators.
UNSAFE: Final = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069]")
TEXT_LINE: Final = re.compile(r"^(\*\* |!! |\d\d:\d\d:\d\d \[\d+\] )")
QUIT_WORDS: Final = frozenset({"quit", "exit", "bye", "q"})


# ---------------------------------------------------------------------------------
# Placeholders, filled in when a session runs
# ---------------------------------------------------------------------------------


def _cut(data: bytes) -> str:
    return repr(data) if len(data) <= 80 else f"{data[:60]!r}...({len(data)} bytes)"


class Bytes:
    """Bytes with a short repr (hypothesis prints dataclasses field by field)."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other.data == self.data

    def __hash__(self) -> int:
        return hash(self.data)


class Tok(enum.Enum):
    FRESH = "a user name never used"
    SELF = "the session's user"
    SEED = "a user that exists"
    PEER = "another user that exists"
    GEN_ID = "an id in #general"
    DM_ID = "an id in a direct conversation of two other users"
    BIGNUM = "a 5,000-digit JSON number"
    DEEP = "JSON nested 5,000 deep"
    WIDE = "a JSON list of 2,000 numbers"
    SINCE_WIDE = "a `since` of 1,001 entries"

    def __repr__(self) -> str:
        return f"Tok.{self.name}"


@dataclass(frozen=True)
class Rep:
    """A long string, short in hypothesis' reports: ``s * n + tail``."""

    s: str
    n: int
    tail: str = ""

    def __repr__(self) -> str:
        return f"Rep({self.s!r}, {self.n}{f', {self.tail!r}' if self.tail else ''})"

    def __str__(self) -> str:
        return self.s * self.n + self.tail


_names = itertools.count()
_RUN = uuid.uuid4().hex[:8]


def fresh_name() -> str:
    return f"fz{_RUN}x{next(_names)}"


@dataclass(frozen=True)
class World:
    seed: str
    peer: str
    gen_id: str
    dm_id: str


@dataclass
class Env:
    world: World
    me: str
    raw: dict[str, str] = field(default_factory=dict)  # placeholder -> raw JSON text

    def fill(self, value: Any) -> Any:
        if isinstance(value, Tok):
            return self._token(value)
        if isinstance(value, Rep):
            return str(value)
        if isinstance(value, dict):
            return {self.fill(k): self.fill(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self.fill(v) for v in value]
        return value

    def _token(self, tok: Tok) -> Any:
        w = self.world
        match tok:
            case Tok.FRESH:
                return fresh_name()
            case Tok.SELF:
                return self.me
            case Tok.SEED:
                return w.seed
            case Tok.PEER:
                return w.peer
            case Tok.GEN_ID:
                return w.gen_id
            case Tok.DM_ID:
                return w.dm_id
            case Tok.WIDE:
                return list(range(2000))
            case Tok.SINCE_WIDE:
                return {f"u{i}": "0-0" for i in range(1001)}
            case Tok.BIGNUM:
                return self._raw("9" * 5000)
            case Tok.DEEP:
                return self._raw("[" * 5000 + "]" * 5000)

    def _raw(self, text: str) -> str:
        key = f"\ue000{len(self.raw)}\ue000"  # replaced after json.dumps
        self.raw[key] = text
        return key

    def dumps(self, obj: Any, ensure_ascii: bool, compact: bool) -> bytes:
        seps = (",", ":") if compact else (", ", ": ")
        line = json.dumps(obj, ensure_ascii=ensure_ascii, separators=seps)
        for key, text in self.raw.items():
            line = line.replace(json.dumps(key, ensure_ascii=ensure_ascii), text)
        # Lone surrogates written raw (ensure_ascii=False) are invalid UTF-8 on the wire.
        return line.encode("utf-8", "surrogatepass")

    def text(self, template: bytes) -> bytes:
        template = template.replace(b"{SELF}", self.me.encode())
        template = template.replace(b"{SEED}", self.world.seed.encode())
        while b"{FRESH}" in template:
            template = template.replace(b"{FRESH}", fresh_name().encode(), 1)
        return template


# ---------------------------------------------------------------------------------
# JSON requests
# ---------------------------------------------------------------------------------

ODD_STRINGS: Final[list[Any]] = [
    "", " ", "\t", "\x00", "\x1b[31m", "\x7f", "\x85", "\u202e", "\u2066x\u2069",
    "\u200f", "\u2028", "\ufeff", "\u200b", "\U000e0041", "\ud800", "\udfff", "a\ud83d",
    "😀", "²", "٣", "１２", "𝟗", Rep("9", 5000), Rep("x", 4001), "\\", '"', "\r", "\n", "a\nb",
]  # fmt: skip
WRONG_TYPES: Final[list[Any]] = [
    None, True, False, 0, -1, 1.5, 1e308, float("nan"), float("inf"), [], {}, [1, "a"],
    {"a": None}, Tok.BIGNUM, Tok.DEEP, Tok.WIDE, [[[[[[[[[[[[[[[[[[[[{}]]]]]]]]]]]]]]]]]]]],
]  # fmt: skip
IDS: Final[list[Any]] = [Tok.GEN_ID, "0-0", Tok.DM_ID, "0-1", MAX_ID, "1732190000000-0"]
ODD_IDS: Final[list[Any]] = [
    HUGE_ID, "18446744073709551616-0", "1732190000000", "1-", "-1", "٣-٣", "²-0", " 1-0",
    "1-0 ", Rep("9", 5000, "-0"), "0x1-0", "1e3-0", "+1-0",
]  # fmt: skip
TARGETS: Final[list[Any]] = [GENERAL, Tok.SEED, Tok.SELF, Tok.PEER, "#GENERAL"]
ODD_TARGETS: Final[list[Any]] = [
    "#nope", "zz-nobody-here", Tok.FRESH, "#", "general", "#general ", Rep("a", 33),
    "#" + "a" * 33, "..", "_", "-", ".a", "Ä", "a b", "a/b", "a*", "a!", "ＡＢ",
]  # fmt: skip
BAD: Final = ODD_STRINGS + WRONG_TYPES


def pool(*values: list[Any]) -> st.SearchStrategy[Any]:
    return st.sampled_from([v for vs in values for v in vs])


def weighted(*choices: tuple[int, st.SearchStrategy[Any]]) -> st.SearchStrategy[Any]:
    """One of the strategies, each as often as its weight says (the first when shrinking)."""
    table = [strategy for weight, strategy in choices for _ in range(weight)]
    return st.integers(0, len(table) - 1).flatmap(lambda k: table[k])


def mostly(good: list[Any], odd: list[Any], bad: list[Any] = BAD) -> st.SearchStrategy[Any]:
    """Mostly a plausible value, else an odd one or one of a wrong type."""
    return weighted((10, pool(good)), (2, pool(odd)), (1, pool(bad)))


def since_values() -> st.SearchStrategy[Any]:
    keys = mostly(  # dict keys: strings only
        [GENERAL, Tok.SEED, Tok.PEER],
        ["#GENERAL", "zz-nobody-here", "#nope", "²"],
        ["", " ", "\x00", "\u202e", "\ud800", Rep("a", 33)],
    )
    return st.one_of(
        st.dictionaries(keys, mostly(IDS, ODD_IDS), max_size=3),
        pool([None, Tok.SINCE_WIDE, [], "x", 0]),
    )


# Texts that are stored: history, log and replays send them back.
TEXTS: Final[list[Any]] = [
    "hi", Rep("x", 4000), "re: ٣", "\u202eevil", "\x1b[2J", "a\x00b", "😀", "\u2028", "a\nb",
    "\x85\x9b", "\u2066\u200f", "\ufeff\u200b", "\U000e0041", "\ud83d\ude00", "١٢٣",
]  # fmt: skip
FIELD_VALUES: Final[dict[str, st.SearchStrategy[Any]]] = {
    "user": mostly(
        [Tok.FRESH, Tok.SEED, Tok.PEER], [Tok.SELF, "zz-nobody-here", Rep("a", 32)], ODD_TARGETS
    ),
    "password": mostly(["pw", "p w", "²", "\u202e", "\x00"], [Rep("x", 1024), Rep("x", 1025), ""]),
    "since": since_values(),
    "to": mostly(TARGETS, ODD_TARGETS),
    "with": mostly(TARGETS, ODD_TARGETS),
    "text": mostly(TEXTS, [Rep("x", 4001), " ", "", "\ud800", "\r\n"]),
    "cid": mostly(["c1", "c2", Rep("x", 64)], [Rep("x", 65), "é", "\x7f", "a b", ""]),
    "reply_to": weighted((4, st.just(Tok.GEN_ID)), (1, mostly(IDS, ODD_IDS))),
    "before": mostly(IDS, ODD_IDS),
    "limit": mostly([1, 20, 200, 201], [0, -1, 2**63, 2**64, 10**30, "5", "²", 1.0]),
    "reason": mostly(["spam", "", Rep("x", 500), "\u202e"], [Rep("x", 501), "\ud800"]),
}
# A field is there n times in n + 1 (1 for optional ones; required ones are left out now
# and then).
PRESENT: Final = {"user": 12, "password": 12, "to": 12, "text": 12, "with": 12}
OP_FIELDS: Final[dict[str, tuple[str, ...]]] = {
    "login": ("user", "password", "since"),
    "send": ("to", "text", "cid", "reply_to"),
    "history": ("with", "before", "limit"),
    "log": ("limit",),
    "report": ("user", "reason"),
}
# Never "quit": the session goes on. None of these is a JSON op (unknown_op).
UNKNOWN_OPS: Final = [
    "nope", "", "LOGIN", "Ping", "reply", "ping ", " ping", "\u202eping", "²", "pіng",
    "quit\x00", "\ud800", Rep("x", 70),
]  # fmt: skip
ANY_FIELD: Final = pool(list(FIELD_VALUES), ["rid2", "", "\ud800", "__proto__", Rep("x", 100)])
# How a rid is made (rid_of): usable ones, echoed in the answer...
GOOD_RIDS: Final = [
    "str", "int", "absent", "neg", "big", "zero", "empty", "²", "٣", "\u202e", "\x00", "😀",
    "quote", "long60",
]  # fmt: skip
# ... null (answered without a rid), and unusable ones (one error without a rid).
BAD_RIDS: Final = ["null", "bool", "float", "list", "obj", "long65", "bigint65", "surrogate"]


@dataclass(frozen=True)
class Req:
    """A request object; its rid is made from the line's place in the session."""

    op: Any
    fields: tuple[tuple[str, Any], ...]
    rid: str  # how the rid is made: see rid_of
    rid_first: bool
    ascii: bool
    compact: bool
    pad: int | None  # spaces before the closing brace, up to this many bytes

    def line(self, env: Env, i: int) -> bytes:
        obj: dict[str, Any] = {}
        rid = rid_of(self.rid, i)
        if self.rid_first and self.rid != "absent":
            obj["rid"] = rid
        obj["op"] = env.fill(self.op)
        for name, value in self.fields:
            obj[env.fill(name)] = env.fill(value)
        if not self.rid_first and self.rid != "absent":
            obj["rid"] = rid
        data = env.dumps(obj, self.ascii, self.compact)
        if self.pad is not None and len(data) < self.pad:
            data = data[:-1] + b" " * (self.pad - len(data)) + b"}"
        return data


class Raw(Bytes):
    """A line as bytes; ``@I@`` becomes the line's place in the session."""

    def __repr__(self) -> str:
        return f"Raw({_cut(self.data)})"

    def line(self, env: Env, i: int) -> bytes:
        return self.data.replace(b"@I@", str(i).encode())


Item = Req | Raw


def rid_of(kind: str, i: int) -> Any:
    """The rid of the i-th line of a session, of a kind in GOOD_RIDS or BAD_RIDS."""
    match kind:
        case "str":
            return f"r{i}"
        case "int":
            return i
        case "neg":
            return -i - 1
        case "big":
            return 10**63 + i  # 64 digits: still a rid
        case "zero":
            return 0
        case "empty":
            return ""
        case "quote":
            return f'"{i}\\'
        case "long60":
            return f"{i:0>60}"
        case "null" | "absent":
            return None
        case "bool":
            return i % 2 == 0
        case "float":
            return i + 0.5
        case "list":
            return [i]
        case "obj":
            return {"rid": i}
        case "long65":
            return f"{i:0>65}"
        case "bigint65":
            return 10**64 + i
        case "surrogate":
            return f"\ud800{i}"
    return f"{kind}{i}"


@st.composite
def requests(draw: st.DrawFn) -> Req:
    op = draw(
        weighted((3, pool(["send", "history"])), (4, pool(list(REPLY))), (1, pool(UNKNOWN_OPS)))
    )
    fields: list[tuple[str, Any]] = []
    for name in OP_FIELDS.get(op, ()):
        if draw(weighted((PRESENT.get(name, 1), st.just(True)), (1, st.just(False)))):
            fields.append((name, draw(FIELD_VALUES[name])))
    for _ in range(draw(st.integers(0, 4)) // 3):  # now and then an extra field
        name = draw(ANY_FIELD)
        fields.append((name, draw(FIELD_VALUES.get(name, pool(ODD_STRINGS, WRONG_TYPES)))))
    return Req(
        op=op,
        fields=tuple(fields),
        rid=draw(weighted((8, pool(GOOD_RIDS)), (1, pool(BAD_RIDS)))),
        rid_first=draw(st.booleans()),
        ascii=draw(st.booleans()),
        compact=draw(st.booleans()),
        pad=draw(weighted((20, st.none()), (1, pool([MAX_LINE, MAX_LINE + 1, 70_000])))),
    )


RAW_LINES: Final = [
    b"", b" ", b"\r", b"\t", b"[]", b"1", b'"x"', b"null", b"{", b"{}", b'{"op":',
    b"\xff\xfe", b"\xed\xa0\x80", b'{"op":"ping"}\x00', b'{"op":"ping","rid":1}{"op":"ping"}',
    b'{"op":"ping","rid":"@I@"}', b'{"op":"ping","rid":"@I@","rid":"@I@"}',
    b'{"op":"log","limit":NaN,"rid":"@I@"}', b'{"op":"ping","rid":Infinity}',
    b'{"op":"log","rid":"@I@","limit":' + b"9" * 5000 + b"}",
    b'{"op":"ping","rid":' + b"1" * 5000 + b"}",
    b'{"op":"history","rid":"@I@","with":' + b"[" * 5000 + b"]" * 5000 + b"}",
    b'{"op":"ping","rid":"@I@","x":' + b'{"a":' * 2000 + b"1" + b"}" * 2000 + b"}",
    b'{"op":"ping","rid":"@I@"}' + b" " * (MAX_LINE - 25),
    b"x" * (MAX_LINE + 1), b"{" + b"x" * 100_000, b'{"op":"ping","rid":"@I@"}\r',
    b'{"op":"ping","rid":"\\ud800"}', b'{"op":"ping","rid":"@I@","x":"\\udfff"}',
    b'{"op":"send","rid":"@I@","to":"#general","text":"\\ud83d\\ude00 pair"}',
]  # fmt: skip

# Sends that are stored (mostly), so that odd texts come back in history, log, replay.
sends: Final = st.builds(
    lambda to, text, reply: Req(
        "send", (("to", to), ("text", text), *reply), "str", False, True, True, None
    ),
    pool(TARGETS),
    pool(TEXTS),
    weighted((3, st.just(())), (1, st.just((("reply_to", Tok.GEN_ID),)))),
)
items: Final = weighted((6, requests()), (2, sends), (1, pool(RAW_LINES).map(Raw)))


# ---------------------------------------------------------------------------------
# What each line must get
# ---------------------------------------------------------------------------------


def _has_surrogate(value: Any) -> bool:
    if isinstance(value, str):
        return any(0xD800 <= ord(c) <= 0xDFFF for c in value)
    if isinstance(value, dict):
        return any(_has_surrogate(k) or _has_surrogate(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_surrogate(v) for v in value)
    return False


@dataclass(frozen=True)
class Expect:
    line: bytes
    readable: bool  # a JSON object with a usable (or no) rid
    rid: Any = None  # None: the answer carries no rid
    op: Any = None
    surrogate: bool = False  # a lone surrogate somewhere: bad_request whatever the op

    def __str__(self) -> str:
        text = self.line.decode("utf-8", "backslashreplace")
        return repr(text if len(text) < 300 else text[:300] + f"... ({len(self.line)} bytes)")


def expect(line: bytes) -> Expect:
    """What docs/protocol.md promises for one line: one answer, echoing its rid."""
    if len(line) > MAX_LINE:
        return Expect(line, readable=False)
    try:
        obj = json.loads(line.decode("utf-8"))
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        return Expect(line, readable=False)
    if not isinstance(obj, dict):
        return Expect(line, readable=False)
    rid = obj.get("rid")
    if rid is not None and (
        isinstance(rid, bool)
        or not isinstance(rid, str | int)
        or len(str(rid)) > 64
        or _has_surrogate(rid)
    ):
        return Expect(line, readable=False)
    return Expect(line, readable=True, rid=rid, op=obj.get("op"), surrogate=_has_surrogate(obj))


class Closed(Exception):
    pass


class Peer:
    """A raw client: exact bytes out, lines in."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, port: int) -> Peer:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 24)
        return cls(reader, writer)

    async def write(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def line(self, timeout: float = READ_TIMEOUT) -> bytes:
        try:
            raw = await asyncio.wait_for(self.reader.readline(), timeout)
        except TimeoutError:  # an OSError too: not a closed connection
            raise
        except (ConnectionError, OSError) as exc:
            raise Closed(repr(exc)) from None
        if not raw:
            raise Closed("the gateway closed the connection")
        return raw

    async def event(self) -> dict[str, Any]:
        """The next event that is not pushed traffic (live or replayed messages)."""
        while True:
            ev = json.loads(await self.line())
            assert isinstance(ev, dict), ev
            if ev.get("type") not in UNSOLICITED:
                return ev

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError):
            await self.writer.wait_closed()


def _same(a: Any, b: Any) -> bool:
    return type(a) is type(b) and a == b


def _short(ev: dict[str, Any]) -> str:
    text = json.dumps(ev, ensure_ascii=True)
    return text if len(text) < 400 else text[:400] + "..."


class Checker:
    """Reads the answers to one connection's lines, in order, and checks each."""

    def __init__(self, peer: Peer) -> None:
        self.peer = peer
        self.logged_in = False

    async def answer(self, exp: Expect) -> None:
        try:
            ev = await self.peer.event()
        except TimeoutError:
            raise AssertionError(f"no answer within {READ_TIMEOUT} s to {exp}") from None
        except Closed as exc:
            raise AssertionError(f"closed ({exc}) waiting for the answer to {exp}") from None
        where = f"answer {_short(ev)} to {exp}"
        if not exp.readable:
            assert ev.get("type") == "error", where
            assert "rid" not in ev, where
            want = "too_long" if len(exp.line) > MAX_LINE else "bad_request"
            assert ev.get("code") == want, where
            return
        if exp.rid is None:
            assert "rid" not in ev, f"a rid nobody sent: {where}"
        else:
            assert _same(ev.get("rid"), exp.rid), f"wrong or missing rid: {where}"
        op = exp.op
        if ev.get("type") == "error":
            code = ev.get("code")
            assert code in CLIENT_CODES, f"code not a client error: {where}"
            assert isinstance(ev.get("message"), str) and ev["message"], where
            if exp.surrogate or not isinstance(op, str):
                assert code == "bad_request", where
            elif op not in REPLY:
                assert code == "unknown_op", where
            elif op in NEEDS_LOGIN and not self.logged_in:
                assert code in GUEST_CODES, f"a guest got past the login check: {where}"
            if self.logged_in:
                assert code != "not_logged_in", where
            return
        assert isinstance(op, str) and op in REPLY, f"a reply to an unknown op: {where}"
        assert ev.get("type") == REPLY[op], f"wrong reply: {where}"
        assert self.logged_in or op not in NEEDS_LOGIN, f"served before login: {where}"
        if op == "login":
            synced = await self.peer.event()
            assert synced.get("type") == "synced", f"{_short(synced)} after {where}"
            assert _same(synced.get("rid"), ev.get("rid")), f"{_short(synced)} after {where}"
            self.logged_in = True

    async def run(self, lines: list[bytes], pipelined: bool) -> None:
        expects = [expect(line) for line in lines]
        if not pipelined:
            # One line at a time, each followed by a ping: a missing answer shows at once
            # (the pong comes in its place) instead of after a timeout.
            for i, (line, exp) in enumerate(zip(lines, expects, strict=True)):
                probe = f'{{"op":"ping","rid":"probe{i}"}}'.encode()
                await self.peer.write(line + b"\n" + probe + b"\n")
                await self.answer(exp)
                await self.answer(expect(probe))
            return

        async def write_all() -> None:
            with contextlib.suppress(ConnectionError, OSError):
                await self.peer.write(b"".join(line + b"\n" for line in lines))

        writing = asyncio.create_task(write_all())
        try:
            for exp in expects:
                await self.answer(exp)
        finally:
            writing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await writing


# ---------------------------------------------------------------------------------
# The deployment
# ---------------------------------------------------------------------------------


@dataclass
class Target:
    dep: Deployment
    world: World
    offsets: dict[str, int] = field(default_factory=dict)

    def new_log(self) -> str:
        """What the gateways logged since the last call."""
        out = []
        for gw in self.dep.gateways:
            data = gw.log_path.read_bytes()
            start = self.offsets.get(gw.name, 0)
            self.offsets[gw.name] = len(data)
            out.append(data[start:].decode("utf-8", "replace"))
        return "\n".join(out)

    def check_health(self, what: str) -> None:
        dead = [gw.name for gw in self.dep.gateways if not gw.alive()]
        assert not dead, f"gateways {dead} died after {what}:\n{self.dep.logs()[-4000:]}"
        log = self.new_log()
        for bad in BAD_LOG:
            assert bad not in log, f"{bad!r} in the gateway log after {what}:\n{log[-6000:]}"


async def _request(peer: Peer, **fields: Any) -> None:
    await peer.write(json.dumps(fields).encode() + b"\n")


async def _login(peer: Peer, user: str, rid: str) -> None:
    await _request(peer, op="login", user=user, password="pw", rid=rid)
    assert (await peer.event())["type"] == "welcome"
    assert (await peer.event())["type"] == "synced"


async def _send(peer: Peer, to: str, text: str, rid: str) -> str:
    await _request(peer, op="send", to=to, text=text, rid=rid)
    ack = await peer.event()
    assert ack["type"] == "ack", ack
    return str(ack["id"])


async def _seed(port: int) -> World:
    seed, peer = fresh_name(), fresh_name()
    a, b = await Peer.open(port), await Peer.open(port)
    try:
        await _login(a, seed, "l1")
        await _login(b, peer, "l2")
        gen_id = await _send(a, GENERAL, "something to reply to", "s1")
        dm_id = await _send(a, peer, "a private word", "s2")
    finally:
        await a.close()
        await b.close()
    return World(seed, peer, gen_id, dm_id)


@pytest.fixture(scope="module")
def target(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    # Fuzzed logins use existing names with wrong passwords; the per-address throttle
    # would otherwise lock every later login out (its own tests are elsewhere).
    extra = ["--login-fail-per-address", "1000000"]
    dep = Deployment(redis_server, tmp_path_factory.mktemp("session_fuzz"), extra=extra)
    dep.start()
    try:
        tgt = Target(dep, asyncio.run(_seed(dep.port)))
        tgt.check_health("seeding")
        yield tgt
    finally:
        dep.stop()  # a gateway ignoring SIGTERM fails here
    logs = dep.logs()
    for bad in BAD_LOG:
        assert bad not in logs, f"{bad!r} in the gateway logs:\n{logs[-6000:]}"


FUZZ: Final = settings(
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


# ---------------------------------------------------------------------------------
# JSON-lines sessions
# ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class JsonSession:
    password: str | Rep
    before: list[Item]
    after: list[Item]
    relogin_since: Any
    pipelined: bool


json_sessions: Final = st.builds(
    JsonSession,
    password=st.sampled_from(["pw", "p w", "²٣", "\u202e!", "\x00\x1b", Rep("x", 1024)]),
    # Short enough that even all-errors stays under the error budget (a burst of 50).
    before=st.lists(items, max_size=8),
    after=st.lists(items, max_size=24),
    relogin_since=since_values(),
    pipelined=st.booleans(),
)


async def run_json_session(tgt: Target, s: JsonSession) -> None:
    env = Env(tgt.world, fresh_name())
    login = {"op": "login", "user": env.me, "password": env.fill(s.password), "rid": "login"}
    lines = [b'{"op":"ping","rid":"hello"}']  # '{' picks JSON lines
    lines += [item.line(env, i) for i, item in enumerate(s.before, 1)]
    lines.append(json.dumps(login).encode())
    lines += [item.line(env, i) for i, item in enumerate(s.after, 100)]
    lines.append(b'{"op":"ping","rid":"final"}')
    peer = await Peer.open(tgt.dep.port)
    try:
        await Checker(peer).run(lines, s.pipelined)
    finally:
        await peer.close()

    # A second connection of the same user: replay what the session left behind.
    relogin = {**login, "rid": "relogin", "since": env.fill(s.relogin_since)}
    if relogin["since"] is None:
        del relogin["since"]
    peer = await Peer.open(tgt.dep.port)
    try:
        lines = [json.dumps(relogin).encode(), b'{"op":"ping","rid":"final"}']
        await Checker(peer).run(lines, s.pipelined)
    finally:
        await peer.close()


@pytest.mark.timeout(300)  # passing takes seconds; shrinking a failure takes longer
@settings(FUZZ, max_examples=120)
@given(session=json_sessions)
def test_json_sessions(target: Target, session: JsonSession) -> None:
    asyncio.run(run_json_session(target, session))
    target.check_health("a JSON session")


# ---------------------------------------------------------------------------------
# Text-lines sessions
# ---------------------------------------------------------------------------------

TEXT_FIXED: Final = [
    "/history ²", "/log ²", "/reply ² x", "/private to", "/private to x", "/private to ",
    "/private to {SEED} hi", "/private {SEED} \u202eevil", "/msg {SEED} ²", "/m", "/p to to to",
    "/private to {SELF} me", "/msg zz-nobody-here hi", "/msg #general hi", "/r 1 x",
    "/reply [1] x", "/reply 1", "/reply 0 x", "/reply 99999999999 x", "/reply -1 x",
    "/reply ٣ x", "/history 0", "/history 201", "/history -1", "/history #general 5",
    "/history {SEED}", "/history {SELF}", "/history zz-nobody-here", "/history #nope",
    "/history a b c", "/history ## 1", "/h ٣", "/log 0", "/log " + "9" * 5000, "/log １",
    "/log 1 2", "/status", "/who x", "/help", "/?", "/ping", "/PING now", "/report",
    "/report {SEED}", "/report {SELF}", "/report zz-nobody-here x", "/report {SEED} \x1b[2J",
    "/login", "/login {FRESH} pw", "/login {SEED} wrong", "/login {SELF}", "/login a\x00 b",
    "/", "//", "///", "// x", "/ x", "hello", "", " ", "\t", "\x1b[31mred", "\u202eevil",
    "\x00", "\x85", "a\u2028b", "\ufeff", "²", "x" * 4001, "/unknown", "/HISTORY 2",
    "/Log 1", "/switch #x", "/quit\x00", "/exit now?",
]  # fmt: skip
TEXT_WORDS: Final = [
    "login", "private", "msg", "m", "p", "reply", "r", "history", "h", "log", "status",
    "who", "help", "?", "ping", "report", "switch", "join", "nope",
]  # fmt: skip
TEXT_ARGS: Final = [
    "²", "٣", "0", "1", "-1", "201", "9" * 5000, "#general", "#nope", "{SEED}", "{SELF}",
    "{FRESH}", "[1]", "to", "x", "\u202e", "\x1b[2J", "\x00", "\ud800", "\t", "😀", "",
]  # fmt: skip
RAW_TEXT: Final = [
    b"\xff\xfe", b"\xed\xa0\x80", b"/log \xff", b"x" * MAX_LINE, b"x" * (MAX_LINE + 1),
    b"/help" + b" " * (MAX_LINE - 5), b"/" + b"x" * 70_000,
]  # fmt: skip


class TextLine(Bytes):
    """A line as bytes; {SELF}, {SEED} and {FRESH} are filled in when it is sent."""

    def __repr__(self) -> str:
        return f"TextLine({_cut(self.data)})"


def _encode(text: str) -> bytes:
    return text.encode("utf-8", "surrogatepass")


def _is_quit(line: bytes) -> bool:
    try:
        text = line.decode("utf-8").removesuffix("\r")
    except UnicodeDecodeError:
        return False
    if not text.startswith("/") or text.startswith("//"):
        return False
    return text[1:].partition(" ")[0].lower() in QUIT_WORDS


def _is_ping(line: bytes) -> bool:
    try:
        text = line.decode("utf-8").removesuffix("\r")
    except UnicodeDecodeError:
        return False
    return text.startswith("/") and text[1:].partition(" ")[0].lower() == "ping"


text_lines: Final = (
    st.one_of(
        st.sampled_from(TEXT_FIXED).map(_encode),
        st.builds(
            lambda word, args: _encode("/" + word + "".join(" " + a for a in args)),
            st.sampled_from(TEXT_WORDS),
            st.lists(st.sampled_from(TEXT_ARGS), max_size=3),
        ),
        st.builds(
            lambda slash, text: _encode(slash + text),
            st.sampled_from(["", "/", "//"]),
            st.text(max_size=40).map(lambda t: t.replace("\n", " ")),
        ),
        st.sampled_from(RAW_TEXT),
    )
    .filter(lambda line: not _is_quit(line))
    .map(TextLine)
)


@dataclass(frozen=True)
class TextSession:
    password: str
    before: list[TextLine]
    after: list[TextLine]


text_sessions: Final = st.builds(
    TextSession,
    password=st.sampled_from(["pw", "p w", "²٣", "\u202e!", "\x1b"]),
    before=st.lists(text_lines, max_size=6),
    after=st.lists(text_lines, max_size=18),
)


def _check_output(raw: bytes, line: bytes) -> str:
    where = f"output {raw[:300]!r} for line {line[:300]!r}"
    assert raw.endswith(b"\r\n"), where
    try:
        text = raw[:-2].decode("utf-8")
    except UnicodeDecodeError:
        raise AssertionError(f"not UTF-8: {where}") from None
    assert TEXT_LINE.match(text), f"not marked as the server's or a message: {where}"
    assert not UNSAFE.search(text), f"raw control or bidi character: {where}"
    assert not text.startswith("!! error (internal)"), where
    return text


async def text_answer(peer: Peer, line: bytes) -> None:
    """Send a line and a /ping; every line before the pong is the line's output. A
    message echo travels through Redis pub/sub and may come after the pong."""
    await peer.write(line + b"\n/ping\n")
    pongs = 2 if _is_ping(line) else 1
    out: list[str] = []
    try:
        while pongs:
            text = _check_output(await peer.line(), line)
            if text == "** pong":
                pongs -= 1
                if not pongs:
                    break
            out.append(text)
        if not out:
            out.append(_check_output(await peer.line(3.0), line))
    except TimeoutError:
        raise AssertionError(f"no output for {line[:300]!r}; got {out}") from None
    except Closed as exc:
        raise AssertionError(f"connection closed ({exc}) after {line[:300]!r}") from None


async def run_text_session(tgt: Target, s: TextSession) -> None:
    env = Env(tgt.world, fresh_name())
    peer = await Peer.open(tgt.dep.port)
    try:
        await peer.write(b"/ping\n")  # not '{' nor an HTTP method: text lines
        assert await peer.line() == b"** pong\r\n"
        login = TextLine(b"/login {SELF} " + _encode(s.password))
        for template in [*s.before, login, *s.after]:
            await text_answer(peer, env.text(template.data))
        await peer.write(b"/ping\n")
        assert await peer.line() == b"** pong\r\n"
    finally:
        await peer.close()


@pytest.mark.timeout(300)
@settings(FUZZ, max_examples=100)
@given(session=text_sessions)
def test_text_sessions(target: Target, session: TextSession) -> None:
    asyncio.run(run_text_session(target, session))
    target.check_health("a text session")


def test_gateways_survived_the_fuzzing(target: Target) -> None:
    target.check_health("the fuzz tests")
    assert all(gw.alive() for gw in target.dep.gateways)

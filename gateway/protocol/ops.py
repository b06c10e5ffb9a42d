"""Commands (client -> server) and the one table of ops.

Each op has one entry in ``OPS``: its JSON name, its text words (the first is the
name shown, the rest are aliases), its usage and help line, how its JSON fields and
its text arguments become a command, and whether it needs a login. The JSON-lines
codec, the text-lines codec and the console client all read this table, so an
alias or a field rule cannot drift between them. ``request_of`` goes the other way,
command -> JSON request, for clients that parse what a person types.

Pure code: a peer's mistake raises ``Reject`` (code, message), which the codecs
turn into an ``error`` event; nothing here does I/O.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Final

from gateway.protocol.events import Rid
from gateway.protocol.values import (
    DEFAULT_LIMIT,
    MAX_CID_CHARS,
    MAX_LIMIT,
    MAX_PASSWORD_CHARS,
    is_stream_id,
    parse_count,
    printable,
    valid_cid,
    valid_name,
)

__all__ = [
    "BY_NAME",
    "BY_WORD",
    "GENERAL",
    "OPS",
    "Command",
    "GetHistory",
    "GetLog",
    "GetStatus",
    "Help",
    "Login",
    "Op",
    "Ping",
    "Quit",
    "Reject",
    "Report",
    "Send",
    "TextContext",
    "help_text",
    "parse_json_request",
    "parse_text_line",
    "request_of",
]

GENERAL: Final = "#general"
MAX_REASON_CHARS: Final = 500


class Reject(Exception):
    """A request that cannot be served as written: becomes an ``error`` event."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


# ---------------------------------------------------------------------------
# Commands
# ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Login:
    OP: ClassVar[str] = "login"
    user: str
    password: str = field(repr=False)
    since: Mapping[str, str] | None = None
    rid: Rid = None


@dataclass(frozen=True, slots=True)
class Send:
    OP: ClassVar[str] = "send"
    to: str
    text: str
    cid: str | None = None
    reply_to: str | None = None
    rid: Rid = None


@dataclass(frozen=True, slots=True)
class GetHistory:
    OP: ClassVar[str] = "history"
    with_: str
    before: str | None = None
    limit: int = DEFAULT_LIMIT
    rid: Rid = None


@dataclass(frozen=True, slots=True)
class GetLog:
    OP: ClassVar[str] = "log"
    limit: int = DEFAULT_LIMIT
    rid: Rid = None


@dataclass(frozen=True, slots=True)
class GetStatus:
    OP: ClassVar[str] = "status"
    rid: Rid = None


@dataclass(frozen=True, slots=True)
class Ping:
    OP: ClassVar[str] = "ping"
    rid: Rid = None


@dataclass(frozen=True, slots=True)
class Quit:
    OP: ClassVar[str] = "quit"
    rid: Rid = None


@dataclass(frozen=True, slots=True)
class Report:
    OP: ClassVar[str] = "report"
    user: str
    reason: str = ""
    rid: Rid = None


@dataclass(frozen=True, slots=True)
class Help:
    OP: ClassVar[str] = "help"
    rid: Rid = None


Command = Login | Send | GetHistory | GetLog | GetStatus | Ping | Quit | Help | Report


# ---------------------------------------------------------------------------
# Field rules, shared by both framings
# ---------------------------------------------------------------------------


def check_text(text: Any, max_chars: int, what: str = "text") -> str:
    if not isinstance(text, str):
        raise Reject("bad_request", f"{what} must be a string")
    if not text.strip():
        raise Reject("bad_request", f"{what} is empty")
    if len(text) > max_chars:
        raise Reject("too_long", f"{what} is longer than {max_chars} characters")
    _check_unicode(text, what)
    return text


def _check_unicode(text: str, what: str) -> None:
    # JSON can carry lone surrogates ("\ud800"), which no UTF-8 encoder accepts.
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise Reject("bad_request", f"{what} is not valid Unicode") from None


def check_name(name: Any, what: str = "user") -> str:
    if not isinstance(name, str) or not valid_name(name):
        raise Reject(
            "bad_name",
            f"{what} must be 1-32 letters, digits, '_', '.' or '-', with a letter or digit",
        )
    return name


def check_target(to: Any, what: str = "'to'") -> str:
    if not isinstance(to, str) or not to:
        raise Reject("bad_request", f"{what} must be '#room' or a user name")
    if to.startswith("#"):
        if not valid_name(to[1:]):
            raise Reject("bad_name", "room names are '#' and 1-32 letters, digits, '_.-'")
        return to.lower()
    return check_name(to, "recipient")


def check_id(value: Any, what: str) -> str:
    if not is_stream_id(value):
        raise Reject("bad_request", f"{what} must be a message id like 1732190000000-0")
    return str(value)


def check_limit(value: Any) -> int:
    if value is None:
        return DEFAULT_LIMIT
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise Reject("bad_request", "limit must be a positive whole number")
    return min(value, MAX_LIMIT)


def check_password(password: Any) -> str:
    if not isinstance(password, str) or not password:
        raise Reject("bad_request", "'password' must be a non-empty string")
    if len(password) > MAX_PASSWORD_CHARS:
        raise Reject("too_long", f"password is longer than {MAX_PASSWORD_CHARS} characters")
    _check_unicode(password, "password")
    return password


def check_reason(reason: Any) -> str:
    if not isinstance(reason, str):
        raise Reject("bad_request", "'reason' must be a string")
    if len(reason) > MAX_REASON_CHARS:
        raise Reject("too_long", f"reason is longer than {MAX_REASON_CHARS} characters")
    _check_unicode(reason, "reason")
    return reason.strip()


def check_cid(cid: Any) -> str | None:
    if cid is None:
        return None
    if not isinstance(cid, str) or not valid_cid(cid):
        raise Reject("bad_request", f"'cid' must be 1-{MAX_CID_CHARS} visible ASCII characters")
    return cid


def check_since(since: Any) -> dict[str, str] | None:
    if since is None:
        return None
    if not isinstance(since, dict) or len(since) > 1000:
        raise Reject("bad_request", "'since' must be an object {conversation: id}")
    return {check_target(conv, "each 'since' key"): check_id(sid, "each 'since' value")
            for conv, sid in since.items()}  # fmt: skip


# ---------------------------------------------------------------------------
# Text arguments
# ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TextContext:
    """What a text line needs beyond itself: where plain lines go, how long a text
    may be, and how a short number shown on screen maps to (conversation, id)."""

    max_text_chars: int = 4000
    room: str = GENERAL
    resolve: Callable[[int], tuple[str, str] | None] = lambda n: None


def _usage(op: str) -> Reject:
    return Reject("bad_request", f"usage: {BY_NAME[op].usage}")


def _text_login(rest: str, ctx: TextContext) -> Command:
    name, _, password = rest.partition(" ")
    if not name or not password.strip():
        raise _usage("login")
    return Login(check_name(name), check_password(password.strip()))


def _text_send(rest: str, ctx: TextContext) -> Command:
    # "/private to bob hi", "/private bob hi", "/msg bob hi"
    first, _, after = rest.partition(" ")
    if first.lower() == "to" and after.strip():
        rest = after.lstrip()
    to, _, text = rest.partition(" ")
    if not to or not text.strip():
        raise _usage("send")
    return Send(check_name(to, "recipient"), check_text(text.strip(), ctx.max_text_chars))


def _text_reply(rest: str, ctx: TextContext) -> Command:
    ref, _, body = rest.partition(" ")
    n = parse_count(ref.removeprefix("[").removesuffix("]"))
    if n is None or not body.strip():
        raise _usage("reply")
    target = ctx.resolve(n)
    if target is None:
        raise Reject("not_found", f"no message [{n}] on this screen")
    conversation, sid = target
    return Send(conversation, check_text(body.strip(), ctx.max_text_chars), reply_to=sid)


def _text_history(rest: str, ctx: TextContext) -> Command:
    with_, limit = ctx.room, None
    args = rest.split()
    if len(args) > 2:
        raise _usage("history")
    for arg in args:
        n = parse_count(arg)
        if n is not None:
            limit = n
        elif arg.startswith("#") or valid_name(arg):
            with_ = check_target(arg, "the conversation")
        else:
            raise _usage("history")
    return GetHistory(with_, limit=check_limit(limit))


def _text_log(rest: str, ctx: TextContext) -> Command:
    if not rest:
        return GetLog()
    n = parse_count(rest)
    if n is None:
        raise _usage("log")
    return GetLog(check_limit(n))


def _text_report(rest: str, ctx: TextContext) -> Command:
    name, _, reason = rest.partition(" ")
    if not name:
        raise _usage("report")
    return Report(check_name(name), check_reason(reason.strip()))


def _no_args(make: Callable[[], Command]) -> Callable[[str, TextContext], Command]:
    return lambda rest, ctx: make()


# ---------------------------------------------------------------------------
# JSON fields
# ---------------------------------------------------------------------------


def _json_login(obj: Mapping[str, Any], ctx: TextContext, rid: Rid) -> Command:
    return Login(
        check_name(obj.get("user")),
        check_password(obj.get("password")),
        check_since(obj.get("since")),
        rid,
    )


def _json_send(obj: Mapping[str, Any], ctx: TextContext, rid: Rid) -> Command:
    reply_to = obj.get("reply_to")
    return Send(
        to=check_target(obj.get("to")),
        text=check_text(obj.get("text"), ctx.max_text_chars),
        cid=check_cid(obj.get("cid")),
        reply_to=None if reply_to is None else check_id(reply_to, "'reply_to'"),
        rid=rid,
    )


def _json_history(obj: Mapping[str, Any], ctx: TextContext, rid: Rid) -> Command:
    before = obj.get("before")
    return GetHistory(
        with_=check_target(obj.get("with"), "'with'"),
        before=None if before is None else check_id(before, "'before'"),
        limit=check_limit(obj.get("limit")),
        rid=rid,
    )


def _json_log(obj: Mapping[str, Any], ctx: TextContext, rid: Rid) -> Command:
    return GetLog(check_limit(obj.get("limit")), rid)


def _json_report(obj: Mapping[str, Any], ctx: TextContext, rid: Rid) -> Command:
    reason = obj.get("reason")
    return Report(check_name(obj.get("user")), check_reason("" if reason is None else reason), rid)


def _json_plain(
    make: Callable[[Rid], Command],
) -> Callable[[Mapping[str, Any], TextContext, Rid], Command]:
    return lambda obj, ctx, rid: make(rid)


# ---------------------------------------------------------------------------
# The table
# ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Op:
    name: str  # the JSON op
    words: tuple[str, ...]  # text words; the first is shown, the rest are aliases
    usage: str
    help: str
    from_json: Callable[[Mapping[str, Any], TextContext, Rid], Command]
    from_text: Callable[[str, TextContext], Command]
    needs_login: bool = True
    console: bool = True  # the console client offers it (it logs in by itself)


OPS: Final[tuple[Op, ...]] = (
    Op("login", ("login",), "/login <name> <password>",
       "log in (the first login claims the name)", _json_login, _text_login,
       needs_login=False, console=False),
    Op("send", ("private", "msg", "m", "p"), "/private to <user> <text>",
       "private message", _json_send, _text_send),
    Op("reply", ("reply", "r"), "/reply <n> <text>",
       "reply to the message shown as [n]", _json_send, _text_reply),
    Op("history", ("history", "h"), "/history [#room|user] [N]",
       "last N messages of a conversation", _json_history, _text_history),
    Op("log", ("log",), "/log [N]", "your own last N messages", _json_log, _text_log),
    Op("status", ("status", "who"), "/status",
       "who you are, who is online, unread counts",
       _json_plain(GetStatus), _no_args(GetStatus)),
    Op("report", ("report",), "/report <user> [reason]",
       "report abuse (enough reports get a user banned from sending)",
       _json_report, _text_report),
    Op("help", ("help", "?"), "/help", "this text",
       _json_plain(Help), _no_args(Help), needs_login=False),
    Op("ping", ("ping",), "/ping", "check the connection is alive",
       _json_plain(Ping), _no_args(Ping), needs_login=False, console=False),
    Op("quit", ("quit", "exit", "bye", "q"), "/quit", "leave",
       _json_plain(Quit), _no_args(Quit), needs_login=False),
)  # fmt: skip

# "reply" is a text-only form of send: its JSON op is "send" with reply_to.
BY_NAME: Final = {op.name: op for op in OPS}
BY_WORD: Final = {word: op for op in OPS for word in op.words}
_JSON_OPS: Final = {name: op for name, op in BY_NAME.items() if name != "reply"}


def op_of(cmd: Command) -> Op:
    return BY_NAME[cmd.OP]


def parse_json_request(obj: Mapping[str, Any], ctx: TextContext, rid: Rid) -> Command:
    op = obj.get("op")
    if not isinstance(op, str):
        raise Reject("bad_request", "missing 'op'")
    spec = _JSON_OPS.get(op)
    if spec is None:
        raise Reject("unknown_op", f"unknown op {printable(op[:40])!r}")
    return spec.from_json(obj, ctx, rid)


def parse_text_line(text: str, ctx: TextContext, *, console: bool = False) -> Command:
    """One line a person typed: a message to ``ctx.room`` or a ``/command``."""
    if not text.strip():
        raise Reject("bad_request", "empty line; type a message or /help")
    if text.startswith("//"):
        return Send(ctx.room, check_text(text[1:], ctx.max_text_chars))
    if not text.startswith("/"):
        return Send(ctx.room, check_text(text, ctx.max_text_chars))
    word, _, rest = text[1:].partition(" ")
    spec = BY_WORD.get(word.lower())
    if spec is None or (console and not spec.console):
        raise Reject("unknown_op", f"unknown command /{printable(word[:40])}; /help lists them")
    return spec.from_text(rest.strip(), ctx)


def help_text(*, console: bool = False, extra: tuple[tuple[str, str], ...] = ()) -> str:
    """The command list, from the table: each op's usage, help and aliases."""
    rows = [("<text>", "send to #general")]
    for spec in OPS:
        if console and not spec.console:
            continue
        aliases = ", ".join("/" + w for w in spec.words[1:])
        rows.append((spec.usage, spec.help + (f" (also {aliases})" if aliases else "")))
    rows += [("//text", "send a line that starts with /"), *extra]
    width = max(len(usage) for usage, _ in rows) + 2
    return "commands:\n" + "\n".join(f"  {usage.ljust(width)}{what}" for usage, what in rows)


def request_of(cmd: Command) -> tuple[str, dict[str, Any]]:
    """A command as a JSON-lines request: (op, fields), for clients. Fields left at
    None are left out; ``with_`` is ``with``."""
    fields: dict[str, Any] = {}
    for f in dataclasses.fields(cmd):
        value = getattr(cmd, f.name)
        if f.name == "rid" or value is None:
            continue
        fields[f.name.rstrip("_")] = dict(value) if isinstance(value, Mapping) else value
    return cmd.OP, fields

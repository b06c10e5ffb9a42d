"""Text lines for people with nc or telnet: commands in, readable lines out.

Messages are numbered per connection (``[12]``) so that ``/reply 12 ...`` can name
one; ``ShortIds`` keeps the last 1000 numbers (the console client uses it too).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Mapping

from gateway.protocol.events import (
    Ack,
    Bye,
    Cancelled,
    Error,
    Event,
    FileInfo,
    HistoryResult,
    Joined,
    JoinRequest,
    Left,
    LinkResult,
    LogResult,
    MembersResult,
    Message,
    Notice,
    Ok,
    Pending,
    Pong,
    Reported,
    ReportWarning,
    RoomResult,
    RoomsResult,
    Scheduled,
    ScheduleList,
    ScheduleOutcome,
    StatusResult,
    Synced,
    ThreadResult,
    Welcome,
)
from gateway.protocol.framing import Codec, Framing, decode_line
from gateway.protocol.ops import GENERAL, Command, TextContext, parse_text_line
from gateway.protocol.values import printable, say_duration

__all__ = [
    "ShortIds",
    "TextCodec",
    "file_text",
    "moderation_lines",
    "reply_text",
    "reported_line",
    "room_lines",
    "schedule_lines",
    "size_text",
    "unread_text",
    "warning_line",
]


class ShortIds:
    """Per-connection numbers for message ids; the last ``keep`` numbers stay usable."""

    def __init__(self, keep: int = 1000) -> None:
        self.keep = keep
        self._numbers: OrderedDict[str, int] = OrderedDict()  # message id -> n
        self._targets: dict[int, tuple[str, str]] = {}  # n -> (conversation, message id)
        self._next = 1

    def number(self, message_id: str, conversation: str) -> int:
        n = self._numbers.get(message_id)
        if n is None:
            n = self._next
            self._next += 1
            self._numbers[message_id] = n
            self._targets[n] = (conversation, message_id)
            if len(self._numbers) > self.keep:
                _, old = self._numbers.popitem(last=False)
                self._targets.pop(old, None)
        return n

    def known(self, message_id: str) -> int | None:
        return self._numbers.get(message_id)

    def target(self, n: int) -> tuple[str, str] | None:
        """(conversation, message id) of the message shown as [n], if still remembered."""
        return self._targets.get(n)


def size_text(size: int) -> str:
    """A byte count as people read it: ``512 B``, ``64 KiB``, ``1.5 MiB``."""
    if size < 1024:
        return f"{size} B"
    value = float(size)
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        value /= 1024
        if value < 1024 or unit == "TiB":
            break
    return f"{value:.0f} {unit}" if value >= 100 or value == int(value) else f"{value:.1f} {unit}"


def file_text(name: str, size: int) -> str:
    """A file in a message line: ``[file] report.pdf (1.2 MiB)``."""
    return f"[file] {printable(name)} ({size_text(size)})"


def unread_text(unread: Mapping[str, int]) -> str:
    parts = [
        f"{n} in {c}" if c.startswith("#") else f"{n} from {c}" for c, n in unread.items() if n
    ]
    return ", ".join(parts) or "none"


def _until(until: int | None, now_ms: float) -> str:
    if until == 0:
        return "until an operator lifts it"
    if until is None:
        return ""
    clock = time.strftime("%H:%M", time.localtime(until / 1000))
    return f"until {clock} (in {say_duration((until - now_ms) / 1000)})"


def moderation_lines(ev: StatusResult, now_ms: float) -> list[str]:
    """The status lines about bans and the rate limit, as people read them."""
    lines = []
    if ev.banned_until is not None:
        lines.append(f"!! you are banned from sending {_until(ev.banned_until, now_ms)}")
    q = ev.quota
    if q is not None:
        line = f"** public messages left: {q.left} of {q.limit}"
        if q.resets_at is not None:
            line += f"; the count starts again in {say_duration((q.resets_at - now_ms) / 1000)}"
        lines.append(line)
    return lines


def warning_line(ev: ReportWarning, now_ms: float) -> str:
    if ev.banned_until is not None:
        return (
            f"!! you were reported by {ev.reports} users: you cannot send "
            f"{_until(ev.banned_until, now_ms)}"
        )
    return (
        f"!! warning: you were reported ({ev.reports} of {ev.threshold}); at {ev.threshold}"
        " reports you cannot send for a while"
    )


def reported_line(ev: Reported, now_ms: float) -> str:
    if not ev.counted:
        if ev.banned_until is not None:
            return f"** {ev.user} is already banned {_until(ev.banned_until, now_ms)}"
        return f"** you have already reported {ev.user}; a report counts once"
    if ev.banned_until is not None:
        return f"** reported {ev.user}: that made {ev.reports}, and {ev.user} is now banned"
    return f"** reported {ev.user} ({ev.reports} of {ev.threshold})"


def reply_text(m: Message, ids: ShortIds) -> str:
    """What goes before a message's text: ``(re [3] bob: "the start of it") `` for
    a reply, ``[2 replies] `` for a message that has some."""
    out = ""
    if m.reply_to:
        ref = ids.known(m.reply_to)
        where = f"[{ref}] " if ref is not None else ""
        if m.quote is not None:
            out = f'(re {where}{m.quote.from_}: "{printable(m.quote.text)}") '
        else:
            out = f"(re {where.strip() or 'an earlier message'}) "
    if m.replies:
        out += f"[{m.replies} repl{'y' if m.replies == 1 else 'ies'}] "
    return out


def when_text(at_ms: int, now_ms: float) -> str:
    """A due time as people read it, in local time: "14:30 (in 10 min)", with the date
    when it is not today."""
    t = time.localtime(at_ms / 1000)
    clock = time.strftime("%H:%M" if t.tm_sec == 0 else "%H:%M:%S", t)
    if time.strftime("%Y%m%d", t) != time.strftime("%Y%m%d", time.localtime(now_ms / 1000)):
        clock = time.strftime("%Y-%m-%d ", t) + clock
    left_s = (at_ms - now_ms) / 1000
    return f"{clock} (in {say_duration(left_s)})" if left_s > 0 else clock


def schedule_lines(
    ev: Scheduled | ScheduleList | Cancelled | ScheduleOutcome, now_ms: float
) -> list[str]:
    """Scheduled messages as people read them (the console client uses these too)."""

    def item(s: Scheduled) -> str:
        return f"{s.sid} {when_text(s.at, now_ms)} to {printable(s.to)}: {printable(s.text)}"

    match ev:
        case Scheduled():
            return [f"** scheduled {item(ev)}  (/cancel {ev.sid} takes it back)"]
        case ScheduleList():
            if not ev.items:
                return ["** no scheduled messages"]
            return [f"** {len(ev.items)} scheduled message(s):"] + [
                f"**   {item(s)}" for s in ev.items
            ]
        case Cancelled():
            return [f"** cancelled scheduled message {ev.sid}"]
        case ScheduleOutcome():
            return [("** " if ev.sent else "!! ") + printable(ev.text)]


class ScheduleEcho:
    """A schedule or a cancel is answered to the client that asked and also pushed to
    every client of the user, that one included, in either order: each is shown once."""

    def __init__(self, keep: int = 256) -> None:
        self.keep = keep
        self._seen: OrderedDict[tuple[str, str], None] = OrderedDict()

    def first(self, kind: str, sid: str) -> bool:
        key = (kind, sid)
        if key in self._seen:
            return False
        self._seen[key] = None
        if len(self._seen) > self.keep:
            self._seen.popitem(last=False)
        return True


def room_lines(ev: RoomEvent) -> list[str]:
    """Rooms' events as people read them (the text framing and the console client)."""
    match ev:
        case RoomResult():
            kind = "private" if ev.private else "public"
            return [
                f"** {ev.room} is yours ({kind}). /invite {ev.room} <user>,"
                f" /link {ev.room} for an invite link"
            ]
        case LinkResult():
            return [f"** invite link for {ev.room}: {ev.token}  (others type: /join {ev.token})"]
        case Joined():
            return [f"** you are in {ev.room}; /switch {ev.room} to talk there"]
        case Pending():
            return [f"** asked to join {ev.room}; its owner will decide"]
        case Left():
            return [f"** you left {ev.room}"]
        case JoinRequest():
            return [
                f"** {printable(ev.user)} asks to join {ev.room}: /approve {ev.room} {ev.user}"
                f" or /deny {ev.room} {ev.user}"
            ]
        case RoomsResult():
            return [f"** rooms ({len(ev.rooms)}):"] + [
                f"**   {r.room} ({'private' if r.private else 'public'}, owner {r.owner},"
                f" {r.members} member{'' if r.members == 1 else 's'}"
                f"{', you are in it' if r.member else ''})"
                for r in ev.rooms
            ]
        case MembersResult():
            lines = [f"** members of {ev.room} ({len(ev.members)}): {', '.join(ev.members)}"]
            if ev.pending:
                lines.append(f"** waiting for your approval: {', '.join(ev.pending)}")
            return lines


RoomEvent = (
    RoomResult | LinkResult | Joined | Pending | Left | JoinRequest | RoomsResult | MembersResult
)


class TextCodec(Codec):
    framing = Framing.TEXT
    login_hint = "log in first: /login <name> <password>"

    def __init__(self, max_line_bytes: int = 16_384, max_text_chars: int = 4000) -> None:
        super().__init__(max_line_bytes, max_text_chars)
        self.user: str | None = None
        self.room = GENERAL
        self.ids = ShortIds()
        self.echo = ScheduleEcho()
        # Where a file message's file can be fetched, set by the session (it knows the
        # address clients reach); None shows files without a link.
        self.file_url: Callable[[FileInfo], str] | None = None

    # -- reading -------------------------------------------------------------
    def parse_line(self, line: bytes) -> Command:
        ctx = TextContext(self.max_text_chars, self.room, self.ids.target)
        return parse_text_line(decode_line(line), ctx)

    # -- writing -------------------------------------------------------------
    def _conversation_of(self, m: Message) -> str:
        if m.to.startswith("#"):
            return m.to
        if self.user is not None and m.from_.lower() == self.user.lower():
            return m.to
        return m.from_

    def _message_line(self, m: Message) -> str:
        n = self.ids.number(m.id, self._conversation_of(m))
        clock = time.strftime("%H:%M:%S", time.localtime(m.ts / 1000))
        if m.to == GENERAL:
            where = ""
        elif m.to.startswith("#"):
            where = f"{m.to} "
        elif self.user is not None and m.from_.lower() == self.user.lower():
            where = f"(private to {m.to}) "
        else:
            where = "(private) "
        if m.file is None:
            body = printable(m.text)
        else:
            body = file_text(m.file.name, m.file.size)
            if self.file_url is not None:
                body += f" {printable(self.file_url(m.file))}"
        return f"{clock} [{n}] {where}{m.from_}: {reply_text(m, self.ids)}{body}"

    def encode(self, ev: Event) -> bytes:
        lines: list[str]
        match ev:
            case Message():
                lines = [self._message_line(ev)]
            case Ack():
                return b""  # the message itself comes back on the user's own stream
            case Welcome():
                self.user = ev.user
                status = "new name claimed" if ev.new else "welcome back"
                lines = [f"** {ev.user} logged in ({status}) on gateway {ev.gateway}."]
                lines.append(f"** unread: {unread_text(ev.unread)}. /help lists commands.")
            case Synced():
                lines = ["** you are up to date"]
            case HistoryResult():
                lines = [f"** history of {ev.with_}: {len(ev.messages)} message(s)"]
                lines += [self._message_line(m) for m in ev.messages]
            case LogResult():
                lines = [f"** your last {len(ev.messages)} message(s)"]
                lines += [self._message_line(m) for m in ev.messages]
            case StatusResult():
                online = ", ".join(ev.online) or "nobody"
                lines = [
                    f"** you are {ev.user} on gateway {ev.gateway}; "
                    f"online ({len(ev.online)}): {online}; unread: {unread_text(ev.unread)}"
                ]
                lines += moderation_lines(ev, time.time() * 1000)
            case Reported():
                lines = [reported_line(ev, time.time() * 1000)]
            case ReportWarning():
                lines = [warning_line(ev, time.time() * 1000)]
            case ThreadResult():
                lines = [f"** thread in {ev.with_}: the message and {len(ev.replies)} repl"
                         f"{'y' if len(ev.replies) == 1 else 'ies'}"]  # fmt: skip
                lines += [self._message_line(m) for m in (ev.message, *ev.replies)]
            case RoomResult() | LinkResult() | Joined() | Pending() | JoinRequest():
                lines = room_lines(ev)
            case RoomsResult() | MembersResult():
                lines = room_lines(ev)
            case Left():
                if self.room == ev.room:
                    self.room = GENERAL
                lines = room_lines(ev)
            case Scheduled() | Cancelled():
                if not self.echo.first(type(ev).__name__, ev.sid):
                    return b""
                lines = schedule_lines(ev, time.time() * 1000)
            case ScheduleList() | ScheduleOutcome():
                lines = schedule_lines(ev, time.time() * 1000)
            case Ok():
                lines = ["** ok"]
            case Error():
                # retry_after and until are in the message already, in words
                extra = "".join(
                    f"; {k}={printable(str(v))}"
                    for k, v in ev.extra.items()
                    if k not in ("retry_after", "until")
                )
                lines = [f"!! error ({ev.code}): {printable(ev.message)}{extra}"]
            case Notice():
                lines = [f"** {printable(line)}" for line in ev.text.splitlines() or [""]]
            case Pong():
                lines = ["** pong"]
            case Bye():
                lines = ["** bye"]
        return "".join(line + "\r\n" for line in lines).encode()

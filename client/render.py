"""How events look on a screen: one line of styled fragments per event.

Pure code: no I/O, no asyncio, no terminal. The interactive console hands the
fragments to prompt_toolkit (class names are styled by ``STYLE``); the scriptable
mode joins their text. Everything another person controls (names, text, error
messages) passes through ``gateway.protocol.printable`` (pure code, shared with the
server's text framing) so control and escape characters are shown escaped, never
interpreted by the terminal.

``ShortIds`` numbers the messages shown in one session ([1], [2], ...) so that
``/reply 2 ...`` can name one, as the gateway's text framing does.
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Mapping
from typing import Any, Final

from gateway.protocol import Quota, Reported, ReportWarning, ShortIds, StatusResult, printable
from gateway.protocol.textlines import (
    file_text,
    moderation_lines,
    reported_line,
    size_text,
    warning_line,
)

__all__ = [
    "STYLE",
    "Fragments",
    "ShortIds",
    "error_line",
    "info_line",
    "message_line",
    "moderation_line",
    "name_class",
    "plain",
    "printable",
    "progress_text",
    "status_line",
    "unread_text",
    "welcome_line",
]

Fragments = list[tuple[str, str]]

_NAME_COLOURS: Final = (
    "ansired", "ansigreen", "ansiyellow", "ansiblue", "ansimagenta", "ansicyan",
    "ansibrightred", "ansibrightgreen", "ansibrightyellow", "ansibrightblue",
    "ansibrightmagenta", "ansibrightcyan",
)  # fmt: skip

STYLE: Final = {
    "time": "ansibrightblack",
    "sid": "ansibrightblack",
    "private": "bold ansimagenta",
    "room": "ansicyan",
    "reply": "italic ansibrightblack",
    "error": "bold ansired",
    "info": "ansibrightblack",
    "link": "ansiyellow",
    "file": "ansiyellow",
    "me": "bold",
    **{f"name{i}": colour for i, colour in enumerate(_NAME_COLOURS)},
}


def name_class(name: str) -> str:
    """A stable style class for a name: the same colour in every session and process."""
    return f"name{zlib.crc32(name.lower().encode()) % len(_NAME_COLOURS)}"


def plain(fragments: Fragments) -> str:
    return "".join(text for _, text in fragments)


def _clock(ts: Any) -> str:
    try:
        return time.strftime("%H:%M:%S", time.localtime(int(ts) / 1000))
    except (TypeError, ValueError, OverflowError, OSError):
        return "--:--:--"


def message_line(m: Mapping[str, Any], me: str, ids: ShortIds) -> Fragments:
    """``12:00:01 [3] (private) bob: (re [1]) text``"""
    sender, to = str(m.get("from", "?")), str(m.get("to", "?"))
    mine = sender.lower() == me.lower()
    conversation = to if to.startswith("#") or mine else sender
    n = ids.number(str(m.get("id", "")), conversation)
    out: Fragments = [("class:time", _clock(m.get("ts")) + " "), ("class:sid", f"[{n}] ")]
    if to.startswith("#"):
        if to != "#general":
            out.append(("class:room", printable(to) + " "))
    elif mine:
        out.append(("class:private", f"(private to {printable(to)}) "))
    else:
        out.append(("class:private", "(private) "))
    style = f"class:{name_class(sender)}" + (" class:me" if mine else "")
    out.append((style, printable(sender)))
    out.append(("", ": "))
    reply_to = m.get("reply_to")
    if reply_to:
        ref = ids.known(str(reply_to))
        where = f"[{ref}] " if ref else ""
        quote = m.get("quote")
        if isinstance(quote, Mapping):
            said = (
                f'{printable(str(quote.get("from", "?")))}: "{printable(str(quote.get("text")))}"'
            )
            out.append(("class:reply", f"(re {where}{said}) "))
        else:
            out.append(("class:reply", f"(re {where.strip() or 'an earlier message'}) "))
    replies = m.get("replies")
    if isinstance(replies, int) and replies > 0:
        out.append(("class:reply", f"[{replies} repl{'y' if replies == 1 else 'ies'}] "))
    file = m.get("file")
    if isinstance(file, Mapping):
        shown = file_text(str(file.get("name", "?")), _count(file.get("size")))
        out.append(("class:file", f"{shown} fid {printable(str(file.get('fid', '?')))}"))
    else:
        out.append(("", printable(str(m.get("text", "")))))
    return out


def unread_text(unread: Mapping[str, Any]) -> str:
    parts = [
        f"{n} in {printable(c)}" if c.startswith("#") else f"{n} from {printable(c)}"
        for c, n in unread.items()
        if n
    ]
    return ", ".join(parts) or "none"


def welcome_line(ev: Mapping[str, Any]) -> Fragments:
    user = printable(str(ev.get("user", "?")))
    gateway = printable(str(ev.get("gateway", "?")))
    unread = unread_text(ev.get("unread") or {})
    if ev.get("resumed"):
        text = f"** reconnected to gateway {gateway}; missed: {unread}"
        return [("class:link", text)]
    how = "new name claimed" if ev.get("new") else "welcome back"
    text = f"** logged in as {user} on gateway {gateway} ({how}); unread: {unread}"
    return [("class:info", text)]


def status_line(ev: Mapping[str, Any]) -> Fragments:
    online = [printable(str(n)) for n in ev.get("online") or []]
    text = (
        f"** you are {printable(str(ev.get('user', '?')))} on gateway "
        f"{printable(str(ev.get('gateway', '?')))}; online ({len(online)}): "
        f"{', '.join(online) or 'nobody'}; unread: {unread_text(ev.get('unread') or {})}"
    )
    return [("class:info", text)]


def _ms(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _count(value: Any) -> int:
    return _ms(value) or 0


def moderation_line(ev: Mapping[str, Any]) -> list[Fragments]:
    """A ``warning`` or ``reported`` event, or a status's ban and quota, in the same
    words as the server's text framing (one wording, in gateway.protocol.textlines)."""
    now = time.time() * 1000
    kind = ev.get("type")
    if kind == "warning":
        warning = ReportWarning(
            _count(ev.get("reports")), _count(ev.get("threshold")), _ms(ev.get("banned_until"))
        )
        return [[("class:error", printable(warning_line(warning, now)))]]
    if kind == "reported":
        reported = Reported(
            str(ev.get("user", "?")), ev.get("counted") is True, _count(ev.get("reports")),
            _count(ev.get("threshold")), _ms(ev.get("banned_until")),
        )  # fmt: skip
        return [[("class:info", printable(reported_line(reported, now)))]]
    q = ev.get("quota")
    quota = None
    if isinstance(q, Mapping):
        quota = Quota(_count(q.get("limit")), _count(q.get("left")), _ms(q.get("resets_at")))
    status = StatusResult("", "", (), {}, banned_until=_ms(ev.get("banned_until")), quota=quota)
    return [
        [("class:error" if line.startswith("!!") else "class:info", printable(line))]
        for line in moderation_lines(status, now)
    ]


def error_line(code: str, message: str) -> Fragments:
    return [("class:error", f"!! error ({printable(code)}): {printable(message)}")]


def info_line(text: str, style: str = "class:info") -> Fragments:
    return [(style, "** " + printable(text))]


def progress_text(what: str, done: int, total: int, width: int = 20) -> str:
    """A transfer as a bar: ``uploading a.bin [########------------] 40% 2 MiB/5 MiB``."""
    share = 1.0 if total <= 0 else min(1.0, max(0.0, done / total))
    filled = int(share * width)
    bar = "#" * filled + "-" * (width - filled)
    return f"{printable(what)} [{bar}] {int(share * 100)}% {size_text(done)}/{size_text(total)}"

"""What a person types into the console, parsed into frozen command objects.

Pure code: no I/O, no asyncio, no terminal. The console (interactive or scripted)
turns each line into one of these and runs it; the syntax mirrors the gateway's
text commands (docs/protocol.md) so people need to learn it once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

__all__ = [
    "COMMANDS",
    "HELP",
    "Command",
    "History",
    "Invalid",
    "Log",
    "Private",
    "Quit",
    "Reply",
    "Say",
    "ShowHelp",
    "Status",
    "parse",
]

GENERAL: Final = "#general"

# Offered by tab completion, in this order.
COMMANDS: Final = ("/private to ", "/msg ", "/reply ", "/history ", "/log ", "/status", "/help",
                   "/quit")  # fmt: skip

HELP: Final = """commands:
  <text>                        send to #general
  /private to <user> <text>     private message (also: /msg <user> <text>)
  /reply <n> <text>             reply to the message shown as [n]
  /history [#room|user] [N]     last N messages of a conversation (default #general)
  /log [N]                      your own last N messages
  /status                       who you are, who is online, unread counts
  /help                         this text
  /quit                         leave (also Ctrl-D)
  //text                        send a line that starts with /
Tab completes commands and online names; the arrow keys recall earlier lines."""


@dataclass(frozen=True, slots=True)
class Say:
    text: str
    to: str = GENERAL


@dataclass(frozen=True, slots=True)
class Private:
    to: str
    text: str


@dataclass(frozen=True, slots=True)
class Reply:
    number: int
    text: str


@dataclass(frozen=True, slots=True)
class History:
    with_: str = GENERAL
    limit: int | None = None


@dataclass(frozen=True, slots=True)
class Log:
    limit: int | None = None


@dataclass(frozen=True, slots=True)
class Status:
    pass


@dataclass(frozen=True, slots=True)
class ShowHelp:
    pass


@dataclass(frozen=True, slots=True)
class Quit:
    pass


@dataclass(frozen=True, slots=True)
class Invalid:
    """A line that is not a valid command; ``message`` says how to write it."""

    message: str


Command = Say | Private | Reply | History | Log | Status | ShowHelp | Quit | Invalid


def _number(word: str) -> int | None:
    return int(word) if word.isdigit() and 0 < len(word) <= 6 else None


def parse(line: str) -> Command | None:
    """One input line -> a command; None for a blank line (nothing to do)."""
    line = line.rstrip("\r\n")
    if not line.strip():
        return None
    if line.startswith("//"):
        return Say(line[1:])
    if not line.startswith("/"):
        return Say(line)
    word, _, rest = line[1:].partition(" ")
    rest = rest.strip()
    match word.lower():
        case "private" | "msg" | "m" | "p":
            if word.lower() == "private" and rest.split(" ", 1)[0].lower() == "to":
                rest = rest[2:].lstrip()
            to, _, text = rest.partition(" ")
            if not to or not text.strip():
                return Invalid("usage: /private to <user> <text>  or  /msg <user> <text>")
            return Private(to, text.strip())
        case "reply" | "r":
            ref, _, text = rest.partition(" ")
            n = _number(ref.lstrip("[").rstrip("]"))
            if n is None or not text.strip():
                return Invalid("usage: /reply <n> <text>, where [n] is shown before a message")
            return Reply(n, text.strip())
        case "history" | "h":
            with_, limit = GENERAL, None
            for arg in rest.split():
                n = _number(arg)
                if n is not None:
                    limit = n
                else:
                    with_ = arg
            return History(with_, limit)
        case "log":
            if rest and _number(rest) is None:
                return Invalid("usage: /log [N]")
            return Log(_number(rest))
        case "status" | "who":
            return Status()
        case "help" | "?":
            return ShowHelp()
        case "quit" | "exit" | "bye" | "q":
            return Quit()
    return Invalid(f"unknown command /{word[:40]}; /help lists them")

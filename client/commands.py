"""What a person types into the console, read with the server's own grammar.

The op table in ``gateway.protocol.ops`` is the one grammar: the console parses
with it (so aliases and field rules cannot drift from the server's text framing)
and turns the command into a JSON request with ``request_of``. Two commands are the
console's own, because they read or write local files: ``/upload`` and
``/download`` (``UploadFile``, ``DownloadFile``). Pure code: no I/O.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from gateway.protocol.ops import (
    GENERAL,
    OPS,
    Command,
    Reject,
    TextContext,
    check_target,
    help_text,
    parse_text_line,
)
from gateway.protocol.values import parse_count

__all__ = ["COMMANDS", "HELP", "DownloadFile", "Invalid", "Local", "UploadFile", "parse"]

UPLOAD_USAGE: Final = "/upload <path> [#room|user]"
DOWNLOAD_USAGE: Final = "/download <n> [path] [-f]"
FORCE_FLAGS: Final = ("-f", "--force")

# Offered by tab completion, in this order.
COMMANDS: Final = (
    *(
        "/private to "
        if op.name == "send"
        else f"/{op.words[0]}" + (" " if "<" in op.usage or "[" in op.usage else "")
        for op in OPS
        if op.console
    ),
    "/upload ",
    "/download ",
)

HELP: Final = help_text(
    console=True,
    extra=(
        (UPLOAD_USAGE, "send a file (default: where your plain lines go); quote a path"
                       " with spaces"),
        (DOWNLOAD_USAGE, "save the file shown as [n] (default: its name, in the current"
                         " folder); -f overwrites"),
        ("Tab", "completes commands and online names"),
        ("Ctrl-D", "leaves, as /quit does"),
    ),
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class UploadFile:
    """``/upload``: send the file at ``path`` to ``to`` (None: where plain lines go)."""

    path: str
    to: str | None = None


@dataclass(frozen=True, slots=True)
class DownloadFile:
    """``/download``: save the file of the message shown as [n]; ``path`` None is the
    file's own name in the current folder; an existing file is kept unless ``force``."""

    n: int
    path: str | None = None
    force: bool = False


Local = UploadFile | DownloadFile


@dataclass(frozen=True, slots=True)
class Invalid:
    """A line that is not a valid command; ``message`` says how to write it."""

    message: str
    code: str = "bad_request"


def parse(
    line: str,
    resolve: Callable[[int], tuple[str, str] | None] = lambda n: None,
    max_text_chars: int = 4000,
    room: str = GENERAL,
) -> Command | Local | Invalid | None:
    """One input line -> a command; None for a blank line (nothing to do).

    ``resolve`` maps a number shown on screen ([12]) to (conversation, message id);
    plain lines go to ``room``.
    """
    line = line.rstrip("\r\n")
    if not line.strip():
        return None
    word, _, rest = line.partition(" ")
    try:
        if word.lower() == "/upload":
            return _upload(rest)
        if word.lower() == "/download":
            return _download(rest)
        ctx = TextContext(max_text_chars, room=room, resolve=resolve)
        return parse_text_line(line, ctx, console=True)
    except Reject as exc:
        return Invalid(exc.message, exc.code)


def _words(rest: str, usage: str) -> list[str]:
    try:
        return shlex.split(rest)
    except ValueError as exc:  # an unclosed quote
        raise Reject("bad_request", f"{exc}; usage: {usage}") from None


def _upload(rest: str) -> UploadFile:
    args = _words(rest, UPLOAD_USAGE)
    if len(args) not in (1, 2) or not args[0]:
        raise Reject("bad_request", f"usage: {UPLOAD_USAGE}")
    to = check_target(args[1], "where to send it") if len(args) == 2 else None
    return UploadFile(args[0], to)


def _download(rest: str) -> DownloadFile:
    args = _words(rest, DOWNLOAD_USAGE)
    force = any(arg in FORCE_FLAGS for arg in args)
    args = [arg for arg in args if arg not in FORCE_FLAGS]
    n = parse_count(args[0].removeprefix("[").removesuffix("]")) if args else None
    if n is None or len(args) > 2 or (len(args) == 2 and not args[1]):
        raise Reject("bad_request", f"usage: {DOWNLOAD_USAGE}")
    return DownloadFile(n, args[1] if len(args) == 2 else None, force)

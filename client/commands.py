"""What a person types into the console, read with the server's own grammar.

The op table in ``gateway.protocol.ops`` is the one grammar: the console parses
with it (so aliases and field rules cannot drift from the server's text framing)
and turns the command into a JSON request with ``request_of``. Pure code: no I/O.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from gateway.protocol.ops import (
    GENERAL,
    OPS,
    Command,
    Reject,
    TextContext,
    help_text,
    parse_text_line,
)

__all__ = ["COMMANDS", "HELP", "Invalid", "parse"]

# Offered by tab completion, in this order.
COMMANDS: Final = tuple(
    "/private to "
    if op.name == "send"
    else f"/{op.words[0]}" + (" " if "<" in op.usage or "[" in op.usage else "")
    for op in OPS
    if op.console
)

HELP: Final = help_text(
    console=True,
    extra=(("Tab", "completes commands and online names"), ("Ctrl-D", "leaves, as /quit does")),
)


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
) -> Command | Invalid | None:
    """One input line -> a command; None for a blank line (nothing to do).

    ``resolve`` maps a number shown on screen ([12]) to (conversation, message id);
    plain lines go to ``room``.
    """
    line = line.rstrip("\r\n")
    if not line.strip():
        return None
    try:
        ctx = TextContext(max_text_chars, room=room, resolve=resolve)
        return parse_text_line(line, ctx, console=True)
    except Reject as exc:
        return Invalid(exc.message, exc.code)

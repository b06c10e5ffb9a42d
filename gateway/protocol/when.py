"""When a scheduled message is due, as a person writes it.

- a span from now: ``90s``, ``10m``, ``2h``, ``1d``, or several at once (``1h30m``);
- a clock time, ``14:30`` or ``14:30:15``: the next time this process's local clock
  shows it (today, or tomorrow once it has passed);
- an ISO 8601 date and time, ``2025-11-21T14:30`` (local time) or with an offset
  (``2025-11-21T14:30+01:00``, ``2025-11-21T13:30Z``).

Pure: the caller passes the current time, so "14:30" means the gateway's local
time in the text framing and the user's in the console client, which sends the
resulting ``at``. Whether the time is too far ahead or has passed is the server's
call (a setting); this module only reads the words.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from typing import Final

__all__ = ["WHEN_HELP", "parse_when"]

WHEN_HELP: Final = "90s, 10m, 2h, 1h30m, 14:30, or an ISO time like 2025-11-21T14:30"

_SPAN_RE: Final = re.compile(r"(?:[0-9]{1,7}[dhms])+")
_PART_RE: Final = re.compile(r"([0-9]+)([dhms])")
_UNIT_S: Final = {"d": 86_400, "h": 3600, "m": 60, "s": 1}
_CLOCK_RE: Final = re.compile(r"([01]?[0-9]|2[0-3]):([0-5][0-9])(?::([0-5][0-9]))?")
_ISO_RE: Final = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}([T ][0-9:.,+\-Z]+)?", re.IGNORECASE)


def parse_when(word: str, now_s: float) -> tuple[int | None, int | None]:
    """``(at_ms, None)`` for a point in time, ``(None, in_s)`` for a span from now.

    ``ValueError`` (with a message for people) for anything else.
    """
    w = word.strip()
    if _SPAN_RE.fullmatch(w.lower()):
        seconds = sum(int(n) * _UNIT_S[unit] for n, unit in _PART_RE.findall(w.lower()))
        if seconds < 1:
            raise ValueError("the time from now must be at least 1 s")
        return None, seconds
    clock = _CLOCK_RE.fullmatch(w)
    if clock:
        return _next_clock(int(clock[1]), int(clock[2]), int(clock[3] or 0), now_s), None
    if _ISO_RE.fullmatch(w):
        try:
            when = datetime.fromisoformat(w.upper())
        except ValueError:
            raise ValueError(f"not a date and time: {w[:40]!r}") from None
        # A naive time is local time: datetime.timestamp() reads it so.
        return round(when.timestamp() * 1000), None
    raise ValueError(f"say when as {WHEN_HELP}; got {w[:40]!r}")


def _next_clock(hour: int, minute: int, second: int, now_s: float) -> int:
    now = datetime.fromtimestamp(now_s)
    today = now.replace(hour=hour, minute=minute, second=second, microsecond=0)
    when = today if today.timestamp() > now_s else today + timedelta(days=1)
    return round(when.timestamp() * 1000)

"""The rules for values a peer sends: names, message ids, numbers, safe text.

Pure functions, shared by every framing and by the console client, so that a value
means the same thing whichever way it arrived.
"""

from __future__ import annotations

import re
from typing import Final

__all__ = [
    "DEFAULT_LIMIT",
    "MAX_CID_CHARS",
    "MAX_LIMIT",
    "MAX_PASSWORD_CHARS",
    "MAX_RID_CHARS",
    "MAX_STREAM_ID",
    "format_stream_id",
    "is_stream_id",
    "parse_count",
    "parse_stream_id",
    "printable",
    "say_duration",
    "valid_cid",
    "valid_name",
    "valid_token",
]

MAX_RID_CHARS: Final = 64
MAX_CID_CHARS: Final = 64
MAX_PASSWORD_CHARS: Final = 1024
MAX_LIMIT: Final = 200
DEFAULT_LIMIT: Final = 20

_NAME_RE: Final = re.compile(r"[A-Za-z0-9_.\-]{1,32}")
_HAS_ALNUM_RE: Final = re.compile(r"[A-Za-z0-9]")
# Visible ASCII only: a cid ends up in a Redis key name and in logs.
_CID_RE: Final = re.compile(rf"[\x21-\x7e]{{1,{MAX_CID_CHARS}}}")
_STREAM_ID_RE: Final = re.compile(r"([0-9]{1,20})-([0-9]{1,20})")
_COUNT_RE: Final = re.compile(r"[0-9]{1,9}")  # ASCII digits only: "²".isdigit() is True
_U64: Final = (1 << 64) - 1
MAX_STREAM_ID: Final = (_U64, _U64)


def valid_name(name: str) -> bool:
    """1-32 of letters, digits, ``_ . -``, with at least one letter or digit
    (``.``, ``..``, ``-`` and ``_`` alone read as paths or nothing, not as names)."""
    return _NAME_RE.fullmatch(name) is not None and _HAS_ALNUM_RE.search(name) is not None


def valid_cid(cid: str) -> bool:
    return _CID_RE.fullmatch(cid) is not None


def parse_stream_id(sid: str) -> tuple[int, int]:
    """``"1732190000000-3"`` -> ``(1732190000000, 3)``: ids compare as these tuples.

    The one place stream ids are parsed; ``ValueError`` for anything that is not one.
    """
    match = _STREAM_ID_RE.fullmatch(sid)
    if match is None:
        raise ValueError(f"not a message id: {sid[:40]!r}")
    key = int(match[1]), int(match[2])
    if key[0] > _U64 or key[1] > _U64:
        raise ValueError(f"message id out of range: {sid[:45]!r}")
    return key


def is_stream_id(sid: object) -> bool:
    if not isinstance(sid, str):
        return False
    try:
        parse_stream_id(sid)
    except ValueError:
        return False
    return True


def format_stream_id(key: tuple[int, int]) -> str:
    return f"{key[0]}-{key[1]}"


def parse_count(word: str) -> int | None:
    """A whole number a person typed (ASCII digits, at most 9 of them), else None."""
    return int(word) if _COUNT_RE.fullmatch(word) else None


# What must never reach a terminal raw: C0 and C1 controls and DEL; bidi marks,
# embeddings, overrides and isolates (LRM, RLM, ALM included); line and paragraph
# separators; invisible characters (zero-width space, word joiner, invisible
# operators, BOM, Mongolian vowel separator) and tag characters. ZWNJ and ZWJ are
# kept between two non-ASCII characters, where scripts and emoji sequences need
# them, and escaped anywhere else.
_UNSAFE_RE: Final = re.compile(
    "[\x00-\x1f\x7f-\x9f\u061c\u180e\u200b\u200e\u200f\u2028-\u202e\u2060-\u206f\ufeff"
    "\ufff9-\ufffb\U000e0000-\U000e007f]"
    "|(?<![^\x00-\x7f])[\u200c\u200d]"
    "|[\u200c\u200d](?![^\x00-\x7f])"
)


def _escape_char(match: re.Match[str]) -> str:
    code = ord(match.group())
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def printable(text: str) -> str:
    """Text safe to put on a terminal: control, bidi and invisible characters escaped."""
    return _UNSAFE_RE.sub(_escape_char, text)


def say_duration(seconds: float) -> str:
    """A time span as a person says it: "45 s", "12 min", "3 h 12 min", "2 days 3 h".
    Spans of a minute or more are rounded up to the minute, so "0 min" never shows."""
    s = max(0, int(-(-seconds // 1)))
    if s < 60:
        return f"{s} s"
    minutes = -(-s // 60)
    days, minutes = divmod(minutes, 24 * 60)
    hours, minutes = divmod(minutes, 60)
    if days:
        unit = "day" if days == 1 else "days"
        return f"{days} {unit} {hours} h" if hours else f"{days} {unit}"
    if hours:
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    return f"{minutes} min"


_TOKEN = re.compile(r"[A-Za-z0-9_-]{16,64}")


def valid_token(token: str) -> bool:
    """An invite token: URL-safe base64, as ``secrets.token_urlsafe`` makes them."""
    return _TOKEN.fullmatch(token) is not None

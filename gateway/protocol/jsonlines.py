"""JSON lines: one JSON object per line, for programs and the console client.

Every line is bounded by ``--max-line-bytes`` but one kind: an upload's ``chunk``,
whose line starts with exactly ``CHUNK_LINE_PREFIX`` (compact JSON, ``op`` first),
may be up to ``CHUNK_LINE_BYTES``: enough for a whole chunk in base64 and its fields.
"""

from __future__ import annotations

import json
from typing import Any, Final

from gateway.protocol.events import Ack, Event, Message, Rid, ack_line, dumps, event_to_dict
from gateway.protocol.framing import Codec, Framing, LiveRun, decode_line
from gateway.protocol.ops import Command, Reject, TextContext, parse_json_request
from gateway.protocol.values import MAX_RID_CHARS

__all__ = ["CHUNK_LINE_BYTES", "CHUNK_LINE_PREFIX", "JsonCodec"]

CHUNK_LINE_PREFIX: Final = b'{"op":"chunk",'
# A full chunk is 87,384 characters of base64; the rest is room for the other fields
# (an upload id, seq, rid) and for encoders that escape '/' as '\/'.
CHUNK_LINE_BYTES: Final = 96 * 1024


class _RejectWithRid(Reject):
    def __init__(self, code: str, message: str, rid: Rid) -> None:
        super().__init__(code, message)
        self.rid = rid


def _has_surrogate(value: Any) -> bool:
    """JSON's \\ud800 escapes decode to lone surrogates, which cannot be sent back."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return True
        return False
    if isinstance(value, dict):
        return any(_has_surrogate(k) or _has_surrogate(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_surrogate(v) for v in value)
    return False


class JsonCodec(Codec):
    framing = Framing.JSON
    wide_prefix = CHUNK_LINE_PREFIX
    wide_line_bytes = CHUNK_LINE_BYTES
    login_hint = 'log in first: {"op":"login","user":"<name>","password":"<password>"}'

    def __init__(self, max_line_bytes: int = 16_384, max_text_chars: int = 4000) -> None:
        super().__init__(max_line_bytes, max_text_chars)
        self._ctx = TextContext(max_text_chars=max_text_chars)

    def parse_line(self, line: bytes) -> Command:
        if not line.strip():
            raise Reject("bad_request", "empty line; send one JSON object per line")
        try:
            obj = json.loads(decode_line(line))
        except (ValueError, RecursionError):
            raise Reject("bad_request", "malformed JSON") from None
        if not isinstance(obj, dict):
            raise Reject("bad_request", "each line must be a JSON object")
        rid = obj.get("rid")
        if rid is not None and (
            isinstance(rid, bool)
            or not isinstance(rid, str | int)
            or len(str(rid)) > MAX_RID_CHARS
            or _has_surrogate(rid)
        ):
            raise Reject("bad_request", f"rid must be a string or number of <= {MAX_RID_CHARS}")
        if b"\\u" in line and _has_surrogate(obj):
            # the rid is fine (checked above), so the answer still carries it
            raise _RejectWithRid(
                "bad_request", "strings must be valid Unicode (no lone surrogates)", rid
            )
        try:
            return parse_json_request(obj, self._ctx, rid)
        except Reject as exc:
            raise _RejectWithRid(exc.code, exc.message, rid) from None

    def encode(self, ev: Event) -> bytes:
        if type(ev) is Ack:
            return ack_line(ev)
        if isinstance(ev, Message) and ev.raw is not None and not ev.replay:
            return ev.raw
        return dumps(event_to_dict(ev))

    def encode_live(self, run: LiveRun) -> bytes:
        return run.json_lines()  # the same bytes for every JSON client

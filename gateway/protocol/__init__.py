"""The wire protocol: bytes in, commands out; events in, bytes out.

Pure: nothing in this package imports asyncio or redis or does I/O, so every path
can be tested byte by byte and fuzzed (tests/unit/test_protocol*.py).

    values.py     rules for names, ids, numbers; ``printable`` for terminals
    events.py     events (server -> client) and their one JSON form
    ops.py        commands (client -> server) and the one op table
    framing.py    framing detection, bounded lines, the codec base
    jsonlines.py  JSON lines      textlines.py  text lines for people

A peer's mistake never raises out of a codec: ``next``/``feed`` return an
``Error`` event in place of the request they could not read.
"""

from gateway.protocol.events import (
    Ack,
    Bye,
    Error,
    Event,
    HistoryResult,
    LogResult,
    Message,
    Notice,
    Pong,
    Quota,
    Reported,
    ReportWarning,
    StatusResult,
    Synced,
    Welcome,
    dumps,
    event_to_dict,
    message_from_dict,
    message_json_tail,
    pushed_from_dict,
)
from gateway.protocol.framing import (
    HTTP_METHODS,
    Codec,
    Framing,
    LineSplitter,
    detect_framing,
    http_not_implemented,
)
from gateway.protocol.jsonlines import JsonCodec
from gateway.protocol.ops import (
    GENERAL,
    OPS,
    Command,
    GetHistory,
    GetLog,
    GetStatus,
    Help,
    Login,
    Ping,
    Quit,
    Report,
    Send,
    help_text,
)
from gateway.protocol.textlines import ShortIds, TextCodec
from gateway.protocol.values import format_stream_id, parse_stream_id, printable, valid_name

HELP_TEXT = help_text()

__all__ = [
    "GENERAL",
    "HELP_TEXT",
    "HTTP_METHODS",
    "OPS",
    "Ack",
    "Bye",
    "Codec",
    "Command",
    "Error",
    "Event",
    "Framing",
    "GetHistory",
    "GetLog",
    "GetStatus",
    "Help",
    "HistoryResult",
    "JsonCodec",
    "LineSplitter",
    "LogResult",
    "Login",
    "Message",
    "Notice",
    "Ping",
    "Pong",
    "Quit",
    "Quota",
    "Report",
    "ReportWarning",
    "Reported",
    "Send",
    "ShortIds",
    "StatusResult",
    "Synced",
    "TextCodec",
    "Welcome",
    "detect_framing",
    "dumps",
    "event_to_dict",
    "format_stream_id",
    "http_not_implemented",
    "message_from_dict",
    "message_json_tail",
    "parse_stream_id",
    "printable",
    "pushed_from_dict",
    "valid_name",
]

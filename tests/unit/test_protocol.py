"""The pure protocol: framing, line splitting, parsing and rendering, byte by byte."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.protocol import (
    Ack,
    Error,
    Framing,
    GetHistory,
    GetLog,
    GetStatus,
    Help,
    HistoryResult,
    JsonCodec,
    LineSplitter,
    Login,
    Message,
    Notice,
    Ping,
    Quit,
    Send,
    StatusResult,
    TextCodec,
    Welcome,
    detect_framing,
    event_to_dict,
    printable,
)
from gateway.protocol.events import compact_json
from gateway.protocol.framing import TOO_LONG


def feed_bytewise(codec: JsonCodec | TextCodec, data: bytes) -> list[object]:
    out: list[object] = []
    for i in range(len(data)):
        out += codec.feed(data[i : i + 1])
    return out


# -- framing -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("first", "framing"),
    [
        (b"{", Framing.JSON),
        (b'{"op":"ping"}\n', Framing.JSON),
        (b"GET / HTTP/1.1\r\n", Framing.HTTP),
        (b"POST ", Framing.HTTP),
        (b"OPTIONS * HTTP/1.1", Framing.HTTP),
        (b"hello\n", Framing.TEXT),
        (b"/login a b\n", Framing.TEXT),
        (b"GE\n", Framing.TEXT),
        (b"GETTING there\n", Framing.TEXT),
        (b"\xff\xfe", Framing.TEXT),
    ],
)
def test_framing_is_picked_by_first_bytes(first: bytes, framing: Framing) -> None:
    assert detect_framing(first) is framing


@pytest.mark.parametrize("prefix", [b"", b"G", b"GE", b"GET", b"POS", b"DELETE", b"OPTIONS"])
def test_framing_waits_while_the_bytes_could_still_be_a_method(prefix: bytes) -> None:
    assert detect_framing(prefix) is None


# -- line splitting --------------------------------------------------------------


def test_lines_whole_bytewise_and_with_trailing_data() -> None:
    data = b"one\r\ntwo\n\nthree"
    whole = LineSplitter(100)
    assert whole.feed(data) == [b"one", b"two", b""]
    assert whole.buffered == len(b"three")
    assert whole.feed(b"\n") == [b"three"]
    bytewise = LineSplitter(100)
    got: list[bytes | None] = []
    for i in range(len(data)):
        got += bytewise.feed(data[i : i + 1])
    assert got == [b"one", b"two", b""]


def test_overlong_line_is_reported_once_and_skipped_without_buffering() -> None:
    s = LineSplitter(10)
    assert s.feed(b"x" * 25) == [TOO_LONG]
    assert s.buffered == 0
    assert s.feed(b"y" * 1000) == []  # still the same long line: dropped, not kept
    assert s.buffered == 0
    assert s.feed(b"zz\nok\n") == [b"ok"]


def test_overlong_line_within_one_chunk() -> None:
    assert LineSplitter(4).feed(b"abcdefgh\nabc\n") == [TOO_LONG, b"abc"]


# -- JSON lines --------------------------------------------------------------------


def test_json_requests_parse_into_commands() -> None:
    c = JsonCodec()
    lines = [
        {"op": "login", "user": "alice", "password": "pw", "since": {"#general": "1-0"}, "rid": 1},
        {"op": "send", "to": "#general", "text": "hi", "cid": "c1", "rid": "a"},
        {"op": "send", "to": "Bob", "text": "psst", "reply_to": "17-3"},
        {"op": "history", "with": "#general", "before": "5-0", "limit": 500},
        {"op": "log", "limit": 3},
        {"op": "status"},
        {"op": "ping", "rid": 7},
        {"op": "quit"},
        {"op": "help"},
    ]
    data = b"".join(json.dumps(line).encode() + b"\n" for line in lines)
    expected = [
        Login("alice", "pw", {"#general": "1-0"}, rid=1),
        Send("#general", "hi", cid="c1", rid="a"),
        Send("Bob", "psst", reply_to="17-3"),
        GetHistory("#general", before="5-0", limit=200),
        GetLog(3),
        GetStatus(),
        Ping(rid=7),
        Quit(),
        Help(),
    ]
    assert c.feed(data) == expected
    assert feed_bytewise(JsonCodec(), data) == expected


@pytest.mark.parametrize(
    ("line", "code"),
    [
        (b"{not json", "bad_request"),
        (b"[1, 2]", "bad_request"),
        (b"   ", "bad_request"),
        (b'{"rid": 1}', "bad_request"),
        (b'{"op": "dance"}', "unknown_op"),
        (b'{"op": "login", "user": "no spaces", "password": "x"}', "bad_name"),
        (b'{"op": "login", "user": "' + b"a" * 33 + b'", "password": "x"}', "bad_name"),
        (b'{"op": "login", "user": "bob"}', "bad_request"),
        (b'{"op": "send", "to": "#general", "text": ""}', "bad_request"),
        (b'{"op": "send", "to": "#general", "text": "   "}', "bad_request"),
        (b'{"op": "send", "to": "#general", "text": 5}', "bad_request"),
        (b'{"op": "send", "to": "#general", "text": "' + b"x" * 5000 + b'"}', "too_long"),
        (b'{"op": "send", "to": "#general", "text": "\\ud800"}', "bad_request"),
        (b'{"op": "send", "to": "#general", "text": "a", "reply_to": "nope"}', "bad_request"),
        (b'{"op": "send", "text": "hi"}', "bad_request"),
        (b'{"op": "history", "with": "#general", "limit": 0}', "bad_request"),
        (b'{"op": "history", "with": "#general", "limit": true}', "bad_request"),
        (b'{"op": "ping", "rid": true}', "bad_request"),
        (b'{"op": "ping", "rid": "' + b"r" * 65 + b'"}', "bad_request"),
        (b'{"op": "send", "to": "#general", "text": "\xff\xfe"}', "bad_request"),
    ],
)
def test_bad_json_requests_become_errors(line: bytes, code: str) -> None:
    [result] = JsonCodec().feed(line + b"\n")
    assert isinstance(result, Error)
    assert result.code == code
    assert result.message


def test_error_echoes_the_rid_of_the_bad_request() -> None:
    [result] = JsonCodec().feed(b'{"op": "send", "rid": "x9", "to": "#general"}\n')
    assert isinstance(result, Error) and result.rid == "x9"


def test_two_commands_in_one_packet_and_one_split_across_packets() -> None:
    c = JsonCodec()
    assert c.feed(b'{"op":"ping","rid":1}\n{"op":"ping","rid":2}\n{"op":"pi') == [
        Ping(rid=1),
        Ping(rid=2),
    ]
    assert c.feed(b'ng","rid":3}') == []
    assert c.feed(b"\n") == [Ping(rid=3)]


def test_connection_goes_on_after_an_overlong_line() -> None:
    c = JsonCodec(max_line_bytes=300)
    results = c.feed(b'{"op":"send","to":"#general","text":"' + b"x" * 400 + b'"}\n{"op":"ping"}\n')
    assert [type(r) for r in results] == [Error, Ping]
    assert isinstance(results[0], Error) and results[0].code == "too_long"


def test_live_messages_reuse_the_published_bytes_but_replays_do_not() -> None:
    raw = b'{"type":"message","id":"1-0"}\n'
    live = Message("1-0", "a", "#general", "hi", 1, raw=raw)
    assert JsonCodec().encode(live) == raw
    replay = Message("1-0", "a", "#general", "hi", 1, replay=True, raw=raw)
    assert json.loads(JsonCodec().encode(replay))["replay"] is True


def test_event_dicts_match_the_contract() -> None:
    m = Message("5-1", "alice", "bob", "hi", 5, reply_to="4-0")
    assert event_to_dict(m) == {
        "type": "message",
        "id": "5-1",
        "from": "alice",
        "to": "bob",
        "text": "hi",
        "ts": 5,
        "reply_to": "4-0",
    }
    assert event_to_dict(Ack("5-1", rid="r", cid="c")) == {
        "type": "ack",
        "id": "5-1",
        "cid": "c",
        "rid": "r",
    }
    err = event_to_dict(Error("rate_limited", "slow down", rid=3, extra={"retry_after": 9}))
    assert err == {
        "type": "error",
        "code": "rate_limited",
        "message": "slow down",
        "retry_after": 9,
        "rid": 3,
    }
    welcome = event_to_dict(Welcome("alice", True, {"#general": 2}, "gw1"))
    assert welcome["new"] is True and welcome["unread"] == {"#general": 2}


# -- text lines ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "command"),
    [
        ("hello there", Send("#general", "hello there")),
        ("//slash at the start", Send("#general", "/slash at the start")),
        ("/login alice secret words", Login("alice", "secret words")),
        ("/private to bob see you", Send("bob", "see you")),
        ("/private bob see you", Send("bob", "see you")),
        ("/msg bob see you", Send("bob", "see you")),
        ("/history", GetHistory("#general", limit=20)),
        ("/history 5", GetHistory("#general", limit=5)),
        ("/history bob 5", GetHistory("bob", limit=5)),
        ("/log", GetLog(20)),
        ("/log 3", GetLog(3)),
        ("/status", GetStatus()),
        ("/help", Help()),
        ("/quit", Quit()),
        ("/QUIT", Quit()),
    ],
)
def test_text_commands(line: str, command: object) -> None:
    c = TextCodec()
    assert c.feed(line.encode() + b"\r\n") == [command]


@pytest.mark.parametrize(
    ("line", "code"),
    [
        (b"", "bad_request"),
        (b"   ", "bad_request"),
        (b"/dance", "unknown_op"),
        (b"/login alice", "bad_request"),
        (b"/login al!ce pw", "bad_name"),
        (b"/private to bob", "bad_request"),
        (b"/msg", "bad_request"),
        (b"/reply 3 hi", "not_found"),
        (b"/reply x hi", "bad_request"),
        (b"\xc3\x28 invalid utf-8", "bad_request"),
        (b"x" * 5000, "too_long"),
    ],
)
def test_bad_text_lines_become_errors(line: bytes, code: str) -> None:
    [result] = TextCodec().feed(line + b"\n")
    assert isinstance(result, Error) and result.code == code


def test_text_reply_uses_the_number_shown_on_screen() -> None:
    c = TextCodec()
    c.encode(Welcome("bob", False, {}, "gw1"))
    shown = c.encode(Message("17-0", "alice", "bob", "lunch?", 17)).decode()
    assert "[1]" in shown and "(private) alice: lunch?" in shown
    assert c.feed(b"/reply 1 yes\n") == [Send("alice", "yes", reply_to="17-0")]
    reply = c.encode(Message("18-0", "bob", "alice", "yes", 18, reply_to="17-0")).decode()
    assert "[2] (private to alice) bob: (re [1]) yes" in reply


def test_text_rendering_marks_errors_notices_and_conversations() -> None:
    c = TextCodec()
    c.encode(Welcome("alice", True, {}, "gw1"))
    general = c.encode(Message("1-0", "bob", "#general", "hi", 1)).decode()
    assert general.endswith("[1] bob: hi\r\n")
    err = c.encode(Error("bad_password", "wrong password")).decode()
    assert err.startswith("!! error (bad_password)")
    assert c.encode(Notice("two\nlines")).decode() == "** two\r\n** lines\r\n"
    status = c.encode(StatusResult("alice", "gw1", ("alice", "bob"), {"bob": 2})).decode()
    assert "gw1" in status and "alice, bob" in status and "2 from bob" in status
    assert c.encode(Ack("1-0")) == b""


def test_control_characters_never_reach_a_terminal_raw() -> None:
    c = TextCodec()
    evil = "hi \x1b[2J\x07\r\x00 \u202egnp.exe \x9b"
    out = c.encode(Message("1-0", "mallory", "#general", evil, 1))
    assert b"\x1b" not in out and b"\x07" not in out and b"\x00" not in out
    assert "\u202e" not in out.decode() and "\x9b" not in out.decode()
    assert out.count(b"\r") == 1  # only the line ending
    assert "\\x1b[2J" in out.decode()
    history = c.encode(HistoryResult("#general", (Message("2-0", "m", "#general", "\x1b]0;x", 2),)))
    assert b"\x1b" not in history


def test_printable_keeps_ordinary_unicode() -> None:
    assert printable("héllo 世界 🙂") == "héllo 世界 🙂"
    assert printable("a\tb") == "a\\x09b"


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


@given(JSON_VALUES)
def test_the_event_encoder_writes_what_json_dumps_writes(value: object) -> None:
    """compact_json builds the C encoder once; its text must be json.dumps's."""
    assert compact_json(value) == json.dumps(value, ensure_ascii=False, separators=(",", ":"))

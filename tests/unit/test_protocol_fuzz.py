"""Hypothesis drives both codecs with arbitrary bytes, split arbitrarily.

Properties, for JSON lines and text lines alike:
- nothing a peer sends makes ``feed`` raise;
- every complete line ends in exactly one command or ``Error`` (an overlong line in
  one ``too_long`` error, however it is split);
- how the bytes are split never changes the result (whole, random chunks, byte by
  byte give the same list).
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.protocol import (
    Ack,
    Codec,
    Command,
    Error,
    Framing,
    JsonCodec,
    Login,
    Message,
    Send,
    TextCodec,
    detect_framing,
    published_from_json,
)
from gateway.protocol.events import (
    ack_line,
    compact_json,
    dumps,
    event_from_json,
    event_to_dict,
    message_json_tail,
)

COMMAND_TYPES = Command.__args__
SMALL_LINE = 64  # small enough that hypothesis easily makes overlong lines

OPS = ["login", "send", "history", "log", "status", "ping", "quit", "help", "nope", ""]
FIELDS = ["op", "rid", "user", "password", "to", "text", "cid", "reply_to", "with", "before",
          "limit", "since"]  # fmt: skip

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False)
    | st.text(max_size=40)
    | st.sampled_from(["#general", "alice", "1732190000000-0", "#x y", "\u202e", "\x00"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=8,
)


@st.composite
def json_lines(draw: st.DrawFn) -> bytes:
    """Lines that look like requests, so the parser goes past "malformed JSON"."""
    obj: dict[str, Any] = {"op": draw(st.sampled_from(OPS))}
    for name in draw(st.lists(st.sampled_from(FIELDS), max_size=5)):
        obj[name] = draw(json_values)
    line = json.dumps(obj, ensure_ascii=draw(st.booleans())).encode()
    if draw(st.booleans()):
        cut = draw(st.integers(0, len(line)))
        line = line[:cut] + draw(st.binary(max_size=4)) + line[cut:]
    return line


text_lines = st.one_of(
    st.sampled_from(
        [
            b"/login a b",
            b"/msg bob hi",
            b"/private to bob x",
            b"/reply 1 x",
            b"/history 5",
            b"/log",
            b"/status",
            b"/help",
            b"/quit",
            b"//x",
            b"/",
            b"",
            b"\r",
            b"hello",
        ]
    ),
    st.text(max_size=30).map(lambda s: ("/" + s).encode("utf-8", "surrogatepass")),
    st.binary(max_size=30),
)


def streams(lines: st.SearchStrategy[bytes]) -> st.SearchStrategy[bytes]:
    return st.one_of(
        st.binary(max_size=400),
        st.lists(lines, max_size=8).map(lambda ls: b"\n".join(ls) + b"\n"),
        st.tuples(st.lists(lines, max_size=6), st.binary(max_size=40)).map(
            lambda t: b"\n".join(t[0]) + b"\n" + t[1]
        ),
    )


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    pieces, start = [], 0
    for p in [*points, len(data)]:
        pieces.append(data[start:p])
        start = p
    return pieces


def run(codec: Codec, chunks: list[bytes]) -> list[Command | Error]:
    out: list[Command | Error] = []
    for chunk in chunks:
        out.extend(codec.feed(chunk))
    return out


def expected_count(data: bytes, max_line: int) -> int:
    """One item per complete line, plus one for a trailing partial line already too long."""
    tail = data.rsplit(b"\n", 1)[-1]
    return data.count(b"\n") + (1 if len(tail) > max_line else 0)


def check(make: type[Codec], data: bytes, cuts: list[int], max_line: int) -> None:
    whole = run(make(max_line, 50), [data])
    chunked = run(make(max_line, 50), split(data, cuts))
    bytewise = run(make(max_line, 50), [data[i : i + 1] for i in range(len(data))])
    assert whole == chunked == bytewise
    assert len(whole) == expected_count(data, max_line)
    for item in whole:
        assert isinstance(item, (Error, *COMMAND_TYPES))
        if isinstance(item, Error):
            assert item.code and item.message


cut_lists = st.lists(st.integers(min_value=0, max_value=10_000), max_size=12)


@settings(max_examples=150, deadline=None)
@given(data=streams(json_lines()), cuts=cut_lists, small=st.booleans())
def test_json_codec_any_bytes_any_split(data: bytes, cuts: list[int], small: bool) -> None:
    check(JsonCodec, data, cuts, SMALL_LINE if small else 16_384)


@settings(max_examples=150, deadline=None)
@given(data=streams(text_lines), cuts=cut_lists, small=st.booleans())
def test_text_codec_any_bytes_any_split(data: bytes, cuts: list[int], small: bool) -> None:
    check(TextCodec, data, cuts, SMALL_LINE if small else 16_384)


@settings(max_examples=100, deadline=None)
@given(data=st.binary(max_size=20))
def test_framing_detection_is_total_and_stable(data: bytes) -> None:
    framing = detect_framing(data)
    if framing is not None:
        # More bytes never change a decision already made.
        assert detect_framing(data + b"x") is framing
    if data[:1] == b"{":
        assert framing is Framing.JSON


@settings(max_examples=100, deadline=None)
@given(
    text=st.text(min_size=1, max_size=60),
    sender=st.sampled_from(["alice", "bob"]),
    to=st.sampled_from(["#general", "#dev", "alice", "bob"]),
)
def test_rendering_any_text_is_safe(text: str, sender: str, to: str) -> None:
    msg = Message("1732190000000-1", sender, to, text, 1732190000000)
    text_codec = TextCodec()
    text_codec.user = "alice"
    rendered = text_codec.encode(msg)
    body = rendered.decode()
    assert body.endswith("\r\n") and body.count("\n") == 1
    assert not any(ord(c) < 0x20 for c in body[:-2])
    line = JsonCodec().encode(msg)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert json.loads(line)["text"] == text


def test_split_helper_keeps_bytes_and_codecs_parse_known_lines() -> None:
    assert b"".join(split(b"abcdef", [2, 2, 9, 0])) == b"abcdef"
    [ping] = run(JsonCodec(), split(b'{"op":"ping","rid":7}\n', [3, 5]))
    assert not isinstance(ping, Error) and ping.rid == 7
    assert isinstance(TextCodec().feed(b"/login a b\n")[0], Login)
    assert isinstance(TextCodec().feed(b"hi\n")[0], Send)


# -- events as published: the plain message's fast path reads what JSON reads --------


# Real names and texts (which take the fast path), and any text at all.
names = st.from_regex(r"[A-Za-z0-9_.-]{1,12}", fullmatch=True) | st.text(max_size=12)
texts = st.from_regex(r" ?[ -~é€😀]{0,40} ?", fullmatch=True) | st.text(max_size=60)
ids = st.tuples(st.integers(0, 2**64 - 1), st.integers(0, 2**64 - 1))


@settings(max_examples=400)
@given(
    sid=ids,
    from_=names,
    to=names,
    text=texts,
    reply_to=st.none() | st.just("1-0"),
    scheduled=st.booleans(),
)
def test_published_messages_read_as_json_reads_them(
    sid: tuple[int, int], from_: str, to: str, text: str, reply_to: str | None, scheduled: bool
) -> None:
    """As send.lua publishes: the id, its time, then the tail the gateway made."""
    tail = message_json_tail(from_, to, text, reply_to, scheduled=scheduled)
    data = f'{{"type":"message","id":"{sid[0]}-{sid[1]}","ts":{sid[0]}{tail}'.encode(
        errors="surrogatepass"
    )
    try:
        expected = event_from_json(data)
    except ValueError:  # a lone surrogate: not UTF-8, refused either way
        with pytest.raises(ValueError):
            published_from_json(data)
        return
    got = published_from_json(data)
    assert isinstance(got, Message) and isinstance(expected, Message)
    assert got == expected and got.raw == expected.raw and got.key == sid


field = st.text(alphabet='ab 0"\\\x01\x1fé\ud800', max_size=5)
near_messages = st.builds(
    '{{"type":"message","id":"{}","ts":{},"from":"{}","to":"{}","text":"{}"}}'.format,
    st.sampled_from(["1-0", "01-0", "1-", "99999999999999999999999-0"]) | field,
    st.sampled_from(["1", "0", "01", "-1", "1.5", "1e3", "99999999999999999999999"]) | field,
    field,
    field,
    field,
).map(lambda text: text.encode(errors="surrogatepass"))


@settings(max_examples=600)
@given(st.binary(max_size=120) | near_messages)
def test_anything_published_reads_as_json_reads_it_or_is_refused(data: bytes) -> None:
    try:
        expected: Any = event_from_json(data)
    except (ValueError, KeyError, TypeError, AttributeError):
        with pytest.raises((ValueError, KeyError, TypeError, AttributeError)):
            published_from_json(data)
        return
    got = published_from_json(data)
    assert got == expected
    if isinstance(got, Message):
        assert got.raw == expected.raw


# -- the hot path's hand-made JSON is the JSON the encoder makes --------------------


@settings(max_examples=300)
@given(
    sid=st.text(max_size=30),
    rid=st.none() | st.integers() | st.text(max_size=64),
    cid=st.none() | st.text(max_size=64),
)
def test_an_ack_line_is_the_encoders_line(sid: str, rid: str | int | None, cid: str | None) -> None:
    ack = Ack(sid, rid=rid, cid=cid)
    assert ack_line(ack) == dumps(event_to_dict(ack))


@settings(max_examples=300)
@given(from_=names, to=names, text=texts)
def test_a_plain_message_tail_is_the_encoders_tail(from_: str, to: str, text: str) -> None:
    tail = message_json_tail(from_, to, text, None)
    assert tail == "," + compact_json({"from": from_, "to": to, "text": text})[1:]

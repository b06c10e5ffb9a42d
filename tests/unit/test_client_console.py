"""Pure parts of the console client: command parsing, rendering, short ids,
duplicate filtering, backoff and completion."""

from __future__ import annotations

import pytest
from prompt_toolkit.completion import CompleteEvent
from prompt_toolkit.document import Document

from client.commands import Invalid, parse
from client.console import ChatCompleter, render_event
from client.render import ShortIds, message_line, name_class, plain
from client.resilient import Backoff, SeenTracker
from gateway.protocol.ops import (
    CreateRoom,
    GetHistory,
    GetLog,
    GetStatus,
    Help,
    Join,
    Quit,
    Send,
    Switch,
)


@pytest.mark.parametrize(
    ("line", "command"),
    [
        ("", None),
        ("   \n", None),
        ("hello there\n", Send("#general", "hello there")),
        ("//not a command", Send("#general", "/not a command")),
        ("/private to bob hi there", Send("bob", "hi there")),
        ("/private bob hi", Send("bob", "hi")),
        ("/msg bob  hi", Send("bob", "hi")),
        ("/private to bob", Invalid("usage: /private to <user> <text>")),
        ("/reply 12 ok", Send("#general", "ok", reply_to="12-0")),
        ("/reply [3] ok", Send("#general", "ok", reply_to="3-0")),
        ("/history", GetHistory("#general")),
        ("/history 5", GetHistory("#general", limit=5)),
        ("/history bob 5", GetHistory("bob", limit=5)),
        ("/log", GetLog()),
        ("/log 7", GetLog(7)),
        ("/status", GetStatus()),
        ("/help", Help()),
        ("/QUIT", Quit()),
    ],
)
def test_parse(line: str, command: object) -> None:
    # The console's numbers [n] map to (conversation, id); here [n] is "#general", "n-0".
    assert parse(line, lambda n: ("#general", f"{n}-0")) == command


@pytest.mark.parametrize(
    "line",
    ["/reply x hi", "/reply 3", "/reply 3 x", "/log many", "/log -1", "/frobnicate", "/login a b"],
)
def test_parse_rejects_with_a_hint(line: str) -> None:
    result = parse(line)
    assert isinstance(result, Invalid) and result.message


def message(sid: str, sender: str, to: str, text: str, **extra: object) -> dict[str, object]:
    return {"type": "message", "id": sid, "from": sender, "to": to, "text": text,
            "ts": 1_700_000_000_000, **extra}  # fmt: skip


def test_message_lines_mark_private_replies_and_escape_control_characters() -> None:
    ids = ShortIds()
    first = plain(message_line(message("1-0", "bob", "#general", "hi"), "alice", ids))
    assert first.endswith("[1] bob: hi")
    dm = plain(message_line(message("2-0", "bob", "alice", "psst\x1b[2J"), "alice", ids))
    assert dm.endswith("[2] (private) bob: psst\\x1b[2J")
    own = plain(message_line(message("3-0", "alice", "bob", "yo", reply_to="2-0"), "alice", ids))
    assert own.endswith("[3] (private to bob) alice: (re [2]) yo")
    evil_name = plain(message_line(message("4-0", "b\x07b", "#general", "x"), "alice", ids))
    assert "\x07" not in evil_name and "b\\x07b" in evil_name
    assert ids.target(2) == ("bob", "2-0") and ids.target(3) == ("bob", "3-0")
    assert ids.target(1) == ("#general", "1-0") and ids.target(99) is None


def test_short_ids_are_stable_and_bounded() -> None:
    ids = ShortIds(keep=3)
    assert [ids.number(f"{i}-0", "#general") for i in range(5)] == [1, 2, 3, 4, 5]
    assert ids.number("4-0", "#general") == 5
    assert ids.target(1) is None and ids.target(2) is None and ids.target(3) is not None


def test_name_colours_are_stable_and_case_blind() -> None:
    assert name_class("Alice") == name_class("alice")
    assert len({name_class(f"user{i}") for i in range(100)}) > 3


def test_render_welcome_unread_errors_and_status() -> None:
    ids = ShortIds()
    [welcome] = render_event(
        {"type": "welcome", "user": "alice", "gateway": "gw1", "new": False,
         "unread": {"#general": 3, "bob": 1}}, "alice", ids,
    )  # fmt: skip
    assert "unread: 3 in #general, 1 from bob" in plain(welcome)
    [resumed] = render_event(
        {"type": "welcome", "user": "alice", "gateway": "gw2", "unread": {}, "resumed": True},
        "alice", ids,
    )  # fmt: skip
    assert "reconnected to gateway gw2" in plain(resumed)
    [error] = render_event({"type": "error", "code": "too_long", "message": "x\x1b"}, "a", ids)
    assert plain(error) == "!! error (too_long): x\\x1b"
    assert ("class:error", "!! error (too_long): x\\x1b") in error
    assert render_event({"type": "ack", "id": "1-0"}, "a", ids) == []


def test_seen_tracker_drops_old_and_repeated_ids_per_conversation() -> None:
    seen = SeenTracker({"#general": "5-0"})
    assert not seen.accept(message("5-0", "bob", "#general", "x"), "alice")
    assert not seen.accept(message("4-9", "bob", "#general", "x"), "alice")
    assert seen.accept(message("5-1", "bob", "#general", "x"), "alice")
    assert not seen.accept(message("5-1", "bob", "#general", "x"), "alice")
    # Direct conversations are named from the reader's side, case-blind.
    assert seen.accept(message("1-0", "Bob", "alice", "x"), "alice")
    assert not seen.accept(message("1-0", "alice", "bob", "x"), "alice")
    assert seen.accept(message("10-0", "alice", "bob", "x"), "alice")
    assert seen.last == {"#general": "5-1", "bob": "10-0"}


def test_backoff_grows_and_is_capped() -> None:
    b = Backoff(initial_s=1.0, factor=2.0, max_s=5.0, jitter=0.0)
    assert [b.delay(n) for n in range(1, 6)] == [1.0, 2.0, 4.0, 5.0, 5.0]
    jittery = Backoff(initial_s=1.0, jitter=0.2)
    assert all(0.8 <= jittery.delay(1) <= 1.2 for _ in range(50))


def completions(text: str, names: set[str]) -> list[str]:
    completer = ChatCompleter(lambda: names)
    doc = Document(text, len(text))
    found = completer.get_completions(doc, CompleteEvent(completion_requested=True))
    return [doc.text[: len(text) + c.start_position] + c.text for c in found]


def test_completion_of_commands_and_names() -> None:
    names = {"bob", "Barbara", "carol"}
    assert completions("/st", names) == ["/status"]
    assert completions("/private to ", names) == [
        "/private to Barbara ", "/private to bob ", "/private to carol ",
    ]  # fmt: skip
    assert completions("/msg b", names) == ["/msg Barbara ", "/msg bob "]
    assert completions("hi @ca", names) == ["hi @carol "]
    assert completions("hi ", names) == []


def test_rooms_in_the_console_parse_render_and_complete() -> None:
    assert parse("hello", room="#den") == Send("#den", "hello")
    assert parse("/switch #Den") == Switch("#den")
    assert parse("/join AbCdEfGhIjKlMnOpQrSt") == Join(token="AbCdEfGhIjKlMnOpQrSt")
    assert parse("/room create #x public") == CreateRoom("#x", private=False)
    ids = ShortIds()
    request = render_event({"type": "join_request", "room": "#den", "user": "joe"}, "own", ids)
    assert "/approve #den joe" in plain(request[0])
    rooms = render_event(
        {"type": "rooms", "rooms": [{"room": "#den", "private": True, "owner": "own",
                                     "members": 2, "member": True}]}, "own", ids,
    )  # fmt: skip
    assert "#den (private, owner own, 2 members, you are in it)" in plain(rooms[1])
    reply = {"type": "message", "id": "2-0", "ts": 2, "from": "joe", "to": "#den", "text": "b",
             "reply_to": "1-0", "quote": {"from": "own", "text": "a"}}  # fmt: skip
    thread = render_event(
        {"type": "thread", "with": "#den", "replies": [reply],
         "message": {"type": "message", "id": "1-0", "ts": 1, "from": "own", "to": "#den",
                     "text": "a", "replies": 1}}, "own", ids,
    )  # fmt: skip
    assert "the message and 1 reply" in plain(thread[0])
    assert plain(thread[1]).endswith("#den own: [1 reply] a")
    assert plain(thread[2]).endswith('#den joe: (re [1] own: "a") b')
    completer = ChatCompleter(lambda: ["joe"], lambda: {"#den", "#dev"})
    got = [c.text for c in completer.get_completions(Document("/switch #de"), CompleteEvent())]
    assert got == ["#den ", "#dev "]

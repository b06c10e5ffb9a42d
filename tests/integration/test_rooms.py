"""Rooms end to end (issue 11): public and private rooms, invite links with the
owner's approval, live membership on every client of a user across two gateway
processes, replay and unread after a reconnect, threads, and /switch."""

from __future__ import annotations

import asyncio

from client.connection import Connection
from tests.support import ON_REDIS_AND_CLUSTER, Deployment, chat_error, next_of

pytestmark = ON_REDIS_AND_CLUSTER


async def _texts(conn: Connection, count: int, room: str) -> list[str]:
    got = [m for m in await conn.messages(count) if m["to"] == room]
    return [m["text"] for m in got]


async def test_invite_link_with_approval_and_denial(deployment: Deployment) -> None:
    dep = deployment
    owner = await dep.connect_on("gw1", "own")
    owner2 = await dep.connect_on("gw2", "own")  # the owner's second client
    joe = await dep.connect_on("gw2", "joe")
    joe2 = await dep.connect_on("gw1", "joe")  # joe's second client, on the other gateway
    eve = await dep.login("eve")

    room = await owner.request("create_room", room="#Team")
    assert (room["room"], room["owner"], room["private"]) == ("#team", "own", True)
    assert (await chat_error(eve.request("create_room", room="#TEAM"))).code == "exists"
    await owner.send("#team", "before joe")
    for conn in (owner, owner2):
        assert (await next_of(conn, "joined"))["room"] == "#team"

    # Non-members: no sending, no history, no members, no joining by name.
    for attempt in (
        joe.send("#team", "let me in"),
        joe.history("#team"),
        joe.request("members", room="#team"),
        joe.request("join", room="#team"),
    ):
        assert (await chat_error(attempt)).code == "forbidden"
    # Only the owner invites, makes links, approves or denies.
    for op, fields in (("invite", {"user": "joe"}), ("link", {}), ("approve", {"user": "joe"}),
                       ("deny", {"user": "joe"})):  # fmt: skip
        assert (await chat_error(eve.request(op, room="#team", **fields))).code == "forbidden"
    assert (await chat_error(joe.request("join", token="A" * 24))).code == "not_found"

    link = await owner.request("link", room="#team")
    token = link["token"]
    assert len(token) >= 16
    assert (await joe.request("join", token=token))["type"] == "pending"
    for conn in (owner, owner2):
        request = await next_of(conn, "join_request")
        assert (request["room"], request["user"]) == ("#team", "joe")
    members = await owner.request("members", room="#team")
    assert members["members"] == ["own"] and members["pending"] == ["joe"]
    # An owner logging in later hears of the open request.
    late = await dep.connect()
    await late.login("own", "pw")
    assert (await next_of(late, "join_request"))["user"] == "joe"

    await owner2.request("approve", room="#team", user="joe")
    for conn in (joe, joe2):  # both of joe's clients, on both gateways, at once
        assert (await next_of(conn, "joined"))["room"] == "#team"
    recent = [m for m in await joe2.messages(1) if m["to"] == "#team"]
    assert [m["text"] for m in recent] == ["before joe"]  # its last messages, as #general's
    await owner.send("#team", "welcome joe")
    assert await _texts(joe, 2, "#team") == ["before joe", "welcome joe"]
    assert await _texts(joe2, 1, "#team") == ["welcome joe"]
    await joe2.send("#team", "thanks")
    assert "thanks" in [m["text"] for m in await joe.history("#team")]
    members = await joe.request("members", room="#team")
    assert members["members"] == ["own", "joe"] and "pending" not in members

    # Denial: eve asks, the owner says no; eve is told, and stays out.
    assert (await eve.request("join", token=token))["type"] == "pending"
    await owner.request("deny", room="#team", user="eve")
    notice = await next_of(eve, "notice")
    assert "turned down" in notice["text"]
    assert (await chat_error(eve.send("#team", "hm"))).code == "forbidden"
    assert (
        await chat_error(owner.request("approve", room="#team", user="eve"))
    ).code == "not_found"
    # A new link makes the old one stale.
    await owner.request("link", room="#team")
    assert (await chat_error(eve.request("join", token=token))).code == "not_found"
    # eve, never a member, got none of #team's live messages.
    await owner.send("#team", "for members")
    await owner.send("#general", "end")
    got = []
    while not got or got[-1].get("text") != "end":
        got.append(await eve.next_event(timeout=5))
    assert [m for m in got if m.get("to") == "#team"] == []


async def test_leaving_and_public_rooms_and_the_owner_leaving(deployment: Deployment) -> None:
    dep = deployment
    ann = await dep.connect_on("gw1", "ann")
    ann2 = await dep.connect_on("gw2", "ann")
    bob = await dep.login("bob")
    await bob.request("create_room", room="#pub", private=False)
    listing = await ann.request("rooms")
    assert {"room": "#pub", "private": False, "owner": "bob", "members": 1, "member": False} in (
        listing["rooms"]
    )
    assert (await ann.request("join", room="#pub"))["type"] == "joined"
    for conn in (ann, ann2):
        assert (await next_of(conn, "joined"))["room"] == "#pub"
    await bob.send("#pub", "hello ann")
    assert await _texts(ann2, 1, "#pub") == ["hello ann"]

    await ann2.request("leave", room="#pub")
    for conn in (ann, ann2):
        assert (await next_of(conn, "left"))["room"] == "#pub"
    await bob.send("#pub", "gone?")
    await bob.send("#general", "marker")
    for conn in (ann, ann2):  # nothing more from #pub reaches either client
        assert [m["to"] for m in await conn.messages(1)] == ["#general"]
    assert (await chat_error(ann.send("#pub", "x"))).code == "forbidden"

    # The owner leaves: the longest member takes over; the last one out closes it.
    await ann.request("join", room="#pub")
    await bob.request("leave", room="#pub")
    assert "you now own #pub" in (await next_of(ann, "notice"))["text"]
    info = [r for r in (await bob.request("rooms"))["rooms"] if r["room"] == "#pub"]
    assert info == [{"room": "#pub", "private": False, "owner": "ann", "members": 1,
                     "member": False}]  # fmt: skip
    await ann.request("leave", room="#pub")
    assert all(r["room"] != "#pub" for r in (await bob.request("rooms"))["rooms"])
    assert (await chat_error(bob.send("#pub", "x"))).code == "not_found"
    again = await bob.request("create_room", room="#pub")  # the name is free again
    assert again["private"] is True
    assert await bob.history("#pub") == []  # and the old history went with the old room
    assert (await chat_error(bob.request("leave", room="#general"))).code == "bad_request"


async def test_rooms_in_unread_and_replay_after_a_reconnect(deployment: Deployment) -> None:
    dep = deployment
    own = await dep.login("own")
    mia = await dep.login("mia")
    await own.request("create_room", room="#club")
    await own.request("invite", room="#club", user="mia")
    assert (await next_of(mia, "joined"))["room"] == "#club"
    await own.send("#club", "one")
    assert await _texts(mia, 1, "#club") == ["one"]
    await asyncio.sleep(0.8)  # mia's cursor is saved
    seen = dict(mia.seen)
    await mia.close()
    # Ids are per conversation: two in one millisecond would tie, in either order.
    for to, text in (("#club", "two"), ("#general", "g"), ("#club", "three")):
        await own.send(to, text)
        await asyncio.sleep(0.005)
    status = await own.status()
    assert "#club" not in status["unread"]  # the sender has read their own messages
    back = await dep.connect()
    result = await back.login("mia", "pw", since=seen)
    assert result.welcome["unread"]["#club"] == 2
    assert [m["text"] for m in result.replayed] == ["two", "g", "three"]  # time order
    await own.send("#club", "four")
    assert await _texts(back, 1, "#club") == ["four"]
    assert (await back.status())["unread"].get("#club") is None


async def test_threads_count_replies_without_rewriting_history(deployment: Deployment) -> None:
    dep = deployment
    amy = await dep.login("amy")
    ben = await dep.login("ben")
    root = await amy.send("#general", "what shall we eat? " + "x" * 100)
    first = await ben.send("#general", "pizza", reply_to=root)
    await amy.send("#general", "sushi", reply_to=root)
    await ben.send("#general", "unrelated")
    live = next(m for m in await amy.messages(4) if m["id"] == first)
    assert live["reply_to"] == root
    assert live["quote"]["from"] == "amy" and live["quote"]["text"].startswith("what shall")
    assert len(live["quote"]["text"]) <= 80
    history = {m["id"]: m for m in await ben.history("#general")}
    assert history[root]["replies"] == 2 and "replies" not in history[first]
    thread = await ben.request("thread", **{"with": "#general", "id": root})
    assert thread["message"]["id"] == root and thread["message"]["replies"] == 2
    assert [m["text"] for m in thread["replies"]] == ["pizza", "sushi"]
    # bad ids; a reply to a message of another conversation
    assert (await chat_error(ben.request("thread", **{"with": "#general", "id": "1-0"}))).code == (
        "not_found"
    )
    dm = await amy.send("ben", "psst")
    assert (await chat_error(ben.send("#general", "re", reply_to=dm))).code == "not_found"
    assert (await chat_error(ben.request("thread", **{"with": "#general", "id": dm}))).code == (
        "not_found"
    )
    assert (await ben.request("thread", **{"with": "amy", "id": dm}))["replies"] == []


async def test_switch_and_room_prefixes_in_the_text_framing(deployment: Deployment) -> None:
    dep = deployment
    own = await dep.login("own")
    await own.request("create_room", room="#den")
    text = await dep.text()
    await text.send("/login tex pw\r\n")
    await text.expect("you are up to date")
    await text.send("/switch #den\r\n")
    await text.expect(r"!! error \(forbidden\)")
    await own.request("invite", room="#den", user="tex")
    await text.expect(r"\*\* you are in #den")
    await text.send("/switch #den\r\n")
    await text.expect(r"plain lines now go to #den")
    await text.send("hello den\r\n")
    line = await text.expect(r"\[\d+\] #den tex: hello den")
    n = line.split("[", 1)[1].split("]", 1)[0]
    await own.send("#general", "in general")
    await text.expect(r"\[\d+\] own: in general")  # #general has no prefix
    await text.send(f"/reply {n} me again\r\n")
    await text.expect(r'#den tex: \(re \[\d+\] tex: "hello den"\) me again')
    await text.send(f"/thread {n}\r\n")
    await text.expect(r"thread in #den: the message and 1 reply")
    await text.send("/switch own\r\n")
    await text.send("direct now\r\n")
    await text.expect(r"\(private to own\) tex: direct now")
    assert [m["text"] for m in await own.history("#den")] == ["hello den", "me again"]

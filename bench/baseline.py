"""The benchmark's baseline: a naive single-process, in-memory broadcast chat server.

It speaks the JSON lines of docs/protocol.md that the benchmark uses (``login``,
``send``, ``ping``, ``quit``; events ``welcome``, replayed ``message``s, ``synced``,
``ack``, live ``message``, ``error``) and nothing else: no Redis, no persistence, no
bounded outboxes, no second process. It is what a careful programmer would write
in an afternoon with asyncio streams: parse each line with ``json``, encode each
message once (``json.dumps`` per message, not per recipient), and ``writer.write``
it to every recipient, one call per message per connection. Nothing is coalesced:
no batching of messages into one write, no timers, no ``drain``; the only
buffering is the transport's own, when a socket's kernel buffer is full. It runs on
uvloop only when the gateways do (``--uvloop``/``--no-uvloop`` is passed to both by
``redchat-bench``). redchat's figures are reported as ratios to this server's,
measured in the same run on the same machine.

Memory: #general's messages (the last ``HISTORY_MAX``) and each user's cursor, so
a login storm can replay unread messages as redchat does. Direct messages are
delivered live to both users' connections and not kept.

Run: ``python -m bench.baseline --port 9000 [--no-uvloop]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final

__all__ = ["BaselineServer", "main"]

GENERAL: Final = "#general"
HISTORY_MAX: Final = 10_000
NEW_USER_HISTORY: Final = 20
MAX_LINE: Final = 16_384


def _dumps(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"


@dataclass
class _User:
    name: str
    password: str
    cursor: int = -1  # index of the last #general message delivered
    conns: set[asyncio.StreamWriter] = field(default_factory=set)


class BaselineServer:
    def __init__(self) -> None:
        self.users: dict[str, _User] = {}
        self.everyone: dict[asyncio.StreamWriter, _User] = {}
        self.history: deque[tuple[int, bytes]] = deque(maxlen=HISTORY_MAX)  # (index, event)
        self._index = itertools.count()
        self._last_ms = 0
        self._seq = 0

    def _next_id(self) -> str:
        ms = time.time_ns() // 1_000_000
        if ms <= self._last_ms:
            self._seq += 1
            ms = self._last_ms
        else:
            self._seq = 0
        self._last_ms = ms
        return f"{ms}-{self._seq}"

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        user: _User | None = None
        try:
            while line := await reader.readline():
                try:
                    req = json.loads(line)
                    op = req["op"]
                except (ValueError, KeyError, TypeError):
                    writer.write(_dumps({"type": "error", "code": "bad_request", "message": "?"}))
                    continue
                rid = req.get("rid")
                if op == "login":
                    user = self._login(req, writer, user)
                elif op == "send" and user is not None:
                    self._send(user, req, writer)
                elif op == "ping":
                    writer.write(_dumps({"type": "pong", "rid": rid}))
                elif op == "quit":
                    writer.write(_dumps({"type": "bye", "rid": rid}))
                    break
                else:
                    writer.write(
                        _dumps({"type": "error", "code": "unknown_op", "message": op, "rid": rid})
                    )
        except (ConnectionError, ValueError, asyncio.LimitOverrunError):
            pass
        finally:
            self.everyone.pop(writer, None)
            if user is not None:
                user.conns.discard(writer)
            writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()

    def _login(
        self, req: dict[str, Any], writer: asyncio.StreamWriter, current: _User | None
    ) -> _User | None:
        rid = req.get("rid")
        name, password = str(req.get("user")), str(req.get("password"))
        if current is not None:
            writer.write(_dumps({"type": "error", "code": "bad_request", "rid": rid}))
            return current
        user = self.users.get(name.lower())
        new = user is None
        if user is None:
            user = self.users[name.lower()] = _User(name, password)
        elif user.password != password:
            writer.write(_dumps({"type": "error", "code": "bad_password", "rid": rid}))
            return None
        if new or user.cursor < 0:
            replay = list(self.history)[-NEW_USER_HISTORY:]
        else:
            replay = [(i, ev) for i, ev in self.history if i > user.cursor]
        unread = {GENERAL: len(replay)} if replay else {}
        writer.write(
            _dumps(
                {
                    "type": "welcome",
                    "user": user.name,
                    "new": new,
                    "unread": unread,
                    "gateway": "baseline",
                    "rid": rid,
                }
            )
        )
        for index, event in replay:
            obj = json.loads(event)
            obj["replay"] = True
            writer.write(_dumps(obj))
            user.cursor = index
        writer.write(_dumps({"type": "synced", "rid": rid}))
        user.conns.add(writer)
        self.everyone[writer] = user
        return user

    def _send(self, user: _User, req: dict[str, Any], writer: asyncio.StreamWriter) -> None:
        to, text = str(req.get("to")), str(req.get("text"))
        sid = self._next_id()
        event = {
            "type": "message",
            "id": sid,
            "ts": int(sid.split("-")[0]),
            "from": user.name,
            "to": to,
            "text": text,
        }
        data = _dumps(event)
        ack: dict[str, Any] = {
            "type": "ack",
            "id": sid,
            "cid": req.get("cid"),
            "rid": req.get("rid"),
        }
        writer.write(_dumps(ack))
        if to == GENERAL:
            index = next(self._index)
            self.history.append((index, data))
            for w, u in self.everyone.items():
                w.write(data)
                u.cursor = index
            return
        peer = self.users.get(to.lower())
        if peer is None:
            writer.write(_dumps({"type": "error", "code": "unknown_user", "rid": req.get("rid")}))
            return
        for w in user.conns | peer.conns:
            w.write(data)


async def serve(host: str, port: int) -> None:
    server = BaselineServer()
    srv = await asyncio.start_server(server.handle, host, port, limit=MAX_LINE, backlog=4096)
    async with srv:
        await srv.serve_forever()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.baseline", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--uvloop", action=argparse.BooleanOptionalAction, default=True)
    args = parser.parse_args(argv)
    runner: Any = asyncio.run
    if args.uvloop:
        try:
            import uvloop
        except ImportError:
            pass
        else:
            runner = uvloop.run
    with contextlib.suppress(KeyboardInterrupt):
        runner(serve(args.host, args.port))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

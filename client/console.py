"""The ``redchat`` console: an interactive chat screen, or a scriptable filter.

- ``Chat`` runs typed commands (``client.commands``) against a
  ``client.resilient.ResilientClient`` and turns everything worth showing into
  event dicts (the server's, plus a few of its own: ``link`` for the connection's
  state, local ``error``s). Both modes share it.
- ``Console`` is the interactive mode (prompt_toolkit): one input line at the
  bottom, events printed above it with ``run_in_terminal`` so that what is being
  typed is never scrambled, a toolbar with the connection's state, tab completion
  of commands and online names, and input history on the arrow keys.
- ``run_script`` is the mode for pipes: lines from stdin, events on stdout as text
  or JSON lines; it ends at end of input once every send was acked.

Rendering is pure and lives in ``client.render``; this module only moves events.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Coroutine, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO, Any, Final

from prompt_toolkit import PromptSession
from prompt_toolkit.application import run_in_terminal
from prompt_toolkit.completion import CompleteEvent, Completer, Completion
from prompt_toolkit.document import Document
from prompt_toolkit.formatted_text import FormattedText
from prompt_toolkit.history import InMemoryHistory
from prompt_toolkit.input import Input
from prompt_toolkit.output import Output
from prompt_toolkit.shortcuts import print_formatted_text
from prompt_toolkit.styles import Style

from client.commands import COMMANDS, HELP, DownloadFile, Invalid, Local, UploadFile, parse
from client.connection import ChatError, ConnectionClosed
from client.files import (
    FileCheckError,
    check_download,
    safe_file_name,
    save_file,
    source_path,
    target_path,
)
from client.render import (
    STYLE,
    Fragments,
    ShortIds,
    error_line,
    info_line,
    message_line,
    moderation_line,
    plain,
    progress_text,
    status_line,
    welcome_line,
)
from client.resilient import Backoff, LinkState, LinkStatus, ResilientClient
from gateway.protocol import GENERAL, dumps, printable
from gateway.protocol.events import room_event_from_dict, schedule_event_from_dict
from gateway.protocol.ops import (
    Command,
    Help,
    Login,
    Ping,
    Quit,
    Send,
    Switch,
    request_of,
)
from gateway.protocol.textlines import ScheduleEcho, room_lines, schedule_lines, size_text

__all__ = ["Chat", "ChatCompleter", "Console", "Options", "render_event", "run_script"]

MAX_UNACKED_IN_SCRIPT: Final = 256
KNOWN_FILES: Final = 1000  # files of messages shown, for /download (as many as ShortIds)
ECHO_WAIT_S: Final = 3.0
PASSWORD_TRIES: Final = 3


@dataclass(frozen=True, slots=True)
class Options:
    host: str = "127.0.0.1"
    port: int = 8000
    user: str | None = None
    password: str | None = None
    json: bool = False
    retries: int | None = None  # reconnect attempts before giving up; None: forever
    backoff: Backoff = field(default_factory=Backoff)
    request_timeout_s: float = 10.0


def read_password_file(path: str) -> str:
    """The first line of the file, without its line ending."""
    text = Path(path).read_text(encoding="utf-8")
    return text.splitlines()[0] if text else ""


# ---------------------------------------------------------------------------
# Shared by both modes
# ---------------------------------------------------------------------------


def _is_request(cmd: Command | Local | Invalid) -> bool:
    """A command that waits for the server (history, status, an upload, ...)."""
    return not isinstance(cmd, Send | Quit | Help | Login | Ping | Invalid)


def render_event(ev: Mapping[str, Any], me: str, ids: ShortIds) -> list[Fragments]:
    """The screen lines of one event dict (possibly none, e.g. for an ack)."""
    kind = ev.get("type")
    if kind == "message":
        return [message_line(ev, me, ids)]
    if kind == "welcome":
        return [welcome_line(ev)]
    if kind in ("history", "log"):
        messages = list(ev.get("messages") or [])
        head = (
            f"history of {ev.get('with', '?')}: {len(messages)} message(s)"
            if kind == "history"
            else f"your last {len(messages)} message(s)"
        )
        return [info_line(head), *(message_line(m, me, ids) for m in messages)]
    if kind == "status":
        return [status_line(ev), *moderation_line(ev)]
    if kind in ("warning", "reported"):
        return moderation_line(ev)
    if kind == "error":
        line = error_line(str(ev.get("code", "?")), str(ev.get("message", "")))
        if ev.get("cid"):
            line.append(("class:error", f" (your message to {ev.get('to', '?')} was not sent)"))
        return [line]
    scheduled = schedule_event_from_dict(ev)
    if scheduled is not None:
        now = time.time() * 1000
        return [
            [("class:error" if line.startswith("!!") else "class:info", printable(line))]
            for line in schedule_lines(scheduled, now)
        ]
    if kind == "notice":
        return [info_line(text) for text in str(ev.get("text", "")).splitlines() or [""]]
    if kind == "connection":
        return [info_line(str(ev.get("text", "")), "class:link")]
    if kind == "thread":
        replies = list(ev.get("replies") or [])
        head = f"thread in {ev.get('with', '?')}: the message and {len(replies)} repl" + (
            "y" if len(replies) == 1 else "ies"
        )
        top = ev.get("message")
        shown = [top] if isinstance(top, Mapping) else []
        return [info_line(head), *(message_line(m, me, ids) for m in [*shown, *replies])]
    room_event = room_event_from_dict(ev)
    if room_event is not None:
        style = "class:link" if kind == "join_request" else "class:info"
        return [[(style, printable(line))] for line in room_lines(room_event)]  # type: ignore[arg-type]
    if kind == "ok":
        return [info_line("ok")]
    return []


class Chat:
    """Runs commands against the client; everything to show goes to ``output``."""

    def __init__(
        self,
        client: ResilientClient,
        output: Callable[[dict[str, Any]], None],
        request_timeout_s: float = 10.0,
    ) -> None:
        self.client = client
        self._sink = output
        self.ids = ShortIds()
        self.online: set[str] = set()
        self.room = GENERAL  # where plain lines go (/switch)
        self.rooms: set[str] = set()  # rooms the user is in, for completion
        self.request_timeout_s = request_timeout_s
        self.echo = ScheduleEcho()  # a schedule's answer and its push: shown once
        self.files: OrderedDict[str, dict[str, Any]] = OrderedDict()  # message id -> file
        # Uploads and downloads under way: what a progress bar shows, and who to tell.
        self.transfers: dict[int, str] = {}
        self.on_progress: Callable[[], None] = lambda: None
        self._transfer_ids = itertools.count(1)

    def output(self, ev: dict[str, Any]) -> None:
        # Number messages here, not when drawing, so /reply works in every mode.
        if ev.get("type") == "message":
            self._number(ev)
            sender = ev.get("from")
            if isinstance(sender, str):
                self.online.add(sender)
        for m in ev.get("messages") or () if ev.get("type") in ("history", "log") else ():
            self._number(m)
        kind = ev.get("type")
        if kind in ("scheduled", "cancelled") and not self.echo.first(kind, str(ev.get("sid"))):
            return
        if kind == "status":
            self.online = {str(n) for n in ev.get("online") or ()}
        elif kind == "joined":
            self.rooms.add(str(ev.get("room")))
        elif kind == "left":
            self.rooms.discard(str(ev.get("room")))
            if self.room == ev.get("room"):
                self.room = GENERAL
        elif kind == "rooms":
            self.rooms = {str(r.get("room")) for r in ev.get("rooms") or () if r.get("member")}
        self._sink(ev)

    def _number(self, m: Mapping[str, Any]) -> None:
        to, sender = str(m.get("to", "")), str(m.get("from", ""))
        mine = sender.lower() == self.client.user.lower()
        conversation = to if to.startswith("#") or mine else sender
        self.ids.number(str(m.get("id", "")), conversation)
        file = m.get("file")
        if isinstance(file, Mapping):  # so that /download <n> finds it
            self.files[str(m.get("id", ""))] = dict(file)
            if len(self.files) > KNOWN_FILES:
                self.files.popitem(last=False)

    def local_error(self, code: str, message: str) -> None:
        self.output({"type": "error", "code": code, "message": message, "local": True})

    def send(self, to: str, text: str, reply_to: str | None = None) -> None:
        self.client.send(to, text, reply_to)
        if not self.client.connected:
            self.output({"type": "connection", "text": "not connected: sending after reconnecting"})

    def parse(self, line: str) -> Command | Local | Invalid | None:
        return parse(line, self.ids.target, room=self.room)

    async def execute(self, cmd: Command | Local | Invalid) -> bool:
        """Run one command; False when it asks to quit."""
        match cmd:
            case Quit():
                return False
            case Send():
                self.send(cmd.to, cmd.text, reply_to=cmd.reply_to)
            case UploadFile():
                await self.upload(cmd)
            case DownloadFile():
                await self.download(cmd)
            case Help():
                self.output({"type": "notice", "text": HELP})
            case Invalid():
                self.local_error(cmd.code, cmd.message)
            case Login() | Ping():
                self.local_error("bad_request", "not available in the console")
            case Switch():
                self.switch(cmd.to)
            case _:  # every other op is a request with one reply
                await self._request(cmd)
        return True

    def switch(self, to: str) -> None:
        """Where plain lines go: a room the user is in, or a user (the console checks
        what it can; the server refuses a send to a room the user is not in)."""
        if to.startswith("#") and to != GENERAL and to not in self.rooms:
            self.local_error("forbidden", f"you are not in {to}; /join it first")
            return
        self.room = to
        self.output({"type": "notice", "text": f"your plain lines now go to {to}"})

    # -- files ----------------------------------------------------------------------
    @contextlib.contextmanager
    def _transfer(self, what: str) -> Iterator[Callable[[int, int], None]]:
        """A progress bar for as long as the transfer runs; yields its update."""
        key = next(self._transfer_ids)

        def update(done: int, total: int) -> None:
            self.transfers[key] = progress_text(what, done, total)
            self.on_progress()

        try:
            yield update
        finally:
            self.transfers.pop(key, None)
            self.on_progress()

    async def upload(self, cmd: UploadFile) -> None:
        path = await asyncio.to_thread(source_path, cmd.path)
        to = cmd.to or self.room
        name = safe_file_name(path.name)
        if not await asyncio.to_thread(path.is_file):
            self.local_error("not_found", f"no file {path}")
            return
        try:
            with self._transfer(f"uploading {name}") as progress:
                ack = await self.client.upload(
                    path, to, name=name, progress=progress, timeout=self.request_timeout_s
                )
        except ChatError as exc:
            reason = str(exc.event.get("message", ""))
            self.local_error(exc.code, f"{name} was not sent: {reason}")
        except (ConnectionClosed, TimeoutError):
            self.local_error("not_connected", f"{name} was not sent: the connection was lost")
        except OSError as exc:
            self.local_error("unreadable", f"cannot read {path}: {exc.strerror or exc}")
        else:
            size = int(ack.get("file", {}).get("size", 0))
            self.output({"type": "notice", "text": f"sent {name} ({size_text(size)}) to {to}"})

    async def download(self, cmd: DownloadFile) -> None:
        target = self.ids.target(cmd.n)
        file = self.files.get(target[1]) if target is not None else None
        if target is None:
            self.local_error("not_found", f"no message [{cmd.n}] on this screen")
            return
        if file is None:
            self.local_error("bad_request", f"message [{cmd.n}] is not a file")
            return
        name = str(file.get("name", ""))
        path = await asyncio.to_thread(target_path, name, cmd.path)
        if not cmd.force and await asyncio.to_thread(path.exists):
            self.local_error("exists", f"{path} exists; add -f to overwrite it")
            return
        try:
            with self._transfer(f"downloading {safe_file_name(name)}") as progress:
                data = await self.client.download(
                    str(file.get("fid", "")), progress=progress, timeout=self.request_timeout_s
                )
            check_download(data, file)
            await asyncio.to_thread(save_file, path, data, cmd.force)
        except ChatError as exc:
            reason = str(exc.event.get("message", ""))
            self.local_error(exc.code, f"{name} was not downloaded: {reason}")
        except (ConnectionClosed, TimeoutError):
            self.local_error("not_connected", f"{name} was not downloaded: the connection was lost")
        except FileCheckError as exc:
            self.local_error("bad_file", f"{name} was not saved: {exc}")
        except FileExistsError:
            self.local_error("exists", f"{path} exists; add -f to overwrite it")
        except OSError as exc:
            self.local_error("unwritable", f"cannot write {path}: {exc.strerror or exc}")
        else:
            text = f"saved {name} ({size_text(len(data))}, sha256 checked) to {path}"
            self.output({"type": "notice", "text": text})

    async def _request(self, cmd: Command) -> None:
        op, fields = request_of(cmd)
        try:
            reply = await self.client.request(op, timeout=self.request_timeout_s, **fields)
        except ChatError as exc:
            self.output(dict(exc.event))
        except (ConnectionClosed, TimeoutError):
            self.local_error("not_connected", f"/{op} needs a connection; try again shortly")
        else:
            self.output(dict(reply))


# ---------------------------------------------------------------------------
# Interactive
# ---------------------------------------------------------------------------

_TARGET_PREFIXES: Final = ("/private to ", "/msg ", "/m ", "/p ", "/history ", "/report ")


class ChatCompleter(Completer):
    """Commands after a leading '/', rooms after '#', online names where a name is
    expected or begun."""

    def __init__(
        self, names: Callable[[], Iterable[str]], rooms: Callable[[], Iterable[str]] = set
    ) -> None:
        self.names = names
        self.rooms = rooms

    def get_completions(
        self, document: Document, complete_event: CompleteEvent
    ) -> Iterator[Completion]:
        text = document.text_before_cursor
        if text.startswith("/") and " " not in text:
            for command in COMMANDS:
                if command.startswith(text.lower()) and command.strip() != text:
                    yield Completion(command, start_position=-len(text))
            return
        word = text.rsplit(" ", 1)[-1]
        if word.startswith("#"):
            for room in sorted({GENERAL, *self.rooms()}):
                if room.startswith(word.lower()) and room != word:
                    yield Completion(room + " ", start_position=-len(word))
            return
        at_target = any(text.lower() == p for p in _TARGET_PREFIXES)
        if not word and not at_target:
            return
        prefix = word.lstrip("@").lower()
        for name in sorted(self.names(), key=str.lower):
            if name.lower().startswith(prefix) and name != word.lstrip("@"):
                yield Completion(name + " ", start_position=-len(word.lstrip("@")))


class Console:
    """The interactive chat screen. ``input``/``output`` default to the terminal."""

    def __init__(
        self, options: Options, input: Input | None = None, output: Output | None = None
    ) -> None:
        self.options = options
        self.input = input
        self.out = output
        self.transcript: list[str] = []  # every line shown, as plain text
        self.link = LinkStatus(LinkState.CONNECTING)
        self.client: ResilientClient | None = None
        self.chat: Chat | None = None
        self.session: PromptSession[str] | None = None
        self.style = Style.from_dict(STYLE)
        self._display: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        self._tasks: set[asyncio.Task[Any]] = set()

    # -- output -----------------------------------------------------------------------
    def show(self, ev: dict[str, Any]) -> None:
        self._display.put_nowait(ev)

    def _print(self, lines: list[Fragments]) -> None:
        output = self.session.output if self.session is not None else self.out
        for line in lines:
            print_formatted_text(FormattedText(line), style=self.style, output=output)

    async def _printer(self) -> None:
        """The one place that draws: in order, above the input line, in batches."""
        me = self.options.user or ""
        done = False
        while not done:
            batch = [await self._display.get()]
            while not self._display.empty():
                batch.append(self._display.get_nowait())
            lines: list[Fragments] = []
            for ev in batch:
                if ev is None:
                    done = True
                    break
                if self.client is not None:
                    me = self.client.user
                ids = self.chat.ids if self.chat is not None else ShortIds()
                lines += render_event(ev, me, ids)
            if not lines:
                continue
            self.transcript += [plain(line) for line in lines]
            await run_in_terminal(lambda lines=lines: self._print(lines))  # type: ignore[misc]

    def _on_status(self, status: LinkStatus) -> None:
        self.link = status
        if status.state in (LinkState.DOWN, LinkState.WAITING, LinkState.FAILED):
            self.show({"type": "connection", "text": status.describe()})
        if self.session is not None:
            self.session.app.invalidate()

    def _toolbar(self) -> FormattedText:
        bars = self.chat.transfers.values() if self.chat is not None else ()
        transfers = "".join(f" · {bar}" for bar in bars)
        if self.link.state is LinkState.UP and self.client is not None:
            pending = len(self.client.unacked)
            waiting = f" · sending {pending}" if pending else ""
            text = f" {self.client.user} @ gateway {self.link.gateway}{waiting}{transfers}"
            return FormattedText([("", text + (" · /help · Tab" if not transfers else ""))])
        return FormattedText([("class:link", " " + self.link.describe() + transfers)])

    def _redraw(self) -> None:
        if self.session is not None:
            self.session.app.invalidate()

    # -- life ---------------------------------------------------------------------
    async def _ask(self, message: str, password: bool = False) -> str:
        # A session of its own, so the password never lands in the input history.
        asker: PromptSession[str] = PromptSession(input=self.input, output=self.out)
        return (await asker.prompt_async(message, is_password=password)).strip()

    async def _login(self) -> ResilientClient | None:
        o = self.options
        user = o.user
        while not user:
            user = await self._ask("name: ")
        self.options = o = replace(o, user=user)
        password = o.password
        for _ in range(PASSWORD_TRIES):
            if not password:
                password = await self._ask(f"password for {user}: ", password=True)
                if not password:
                    continue
            client = self.make_client(user, password)
            try:
                await client.start()
                return client
            except ChatError as exc:
                self._print([error_line(exc.code, str(exc.event.get("message", "")))])
                if exc.code not in ("bad_password", "rate_limited") or o.password:
                    return None
                password = None
            except (OSError, ConnectionClosed, TimeoutError) as exc:
                self._print([error_line("unreachable", f"cannot reach {o.host}:{o.port}: {exc}")])
                return None
        return None

    def make_client(self, user: str, password: str) -> ResilientClient:
        o = self.options
        return ResilientClient(
            user, password, o.host, o.port,
            backoff=o.backoff, on_status=self._on_status, max_attempts=o.retries,
        )  # fmt: skip

    async def run(self) -> int:
        client = await self._login()
        if client is None:
            return 1
        self.client = client
        self.chat = chat = Chat(client, self.show, self.options.request_timeout_s)
        chat.on_progress = self._redraw  # the bottom bar shows transfers' progress
        self.session = session = PromptSession[str](
            input=self.input,
            output=self.out,
            history=InMemoryHistory(),
            completer=ChatCompleter(lambda: chat.online, lambda: chat.rooms),
            complete_while_typing=False,
            bottom_toolbar=self._toolbar,
            style=self.style,
        )
        printer = asyncio.create_task(self._printer())
        pump = asyncio.create_task(self._pump(client, chat))
        self._spawn(self._fill_online(chat))
        try:
            while True:
                try:
                    line = await session.prompt_async(lambda: f"{client.user} {chat.room}> ")
                except (EOFError, KeyboardInterrupt):
                    break
                cmd = chat.parse(line)
                if cmd is None:
                    continue
                if isinstance(cmd, Quit):
                    break
                if _is_request(cmd):
                    self._spawn(chat.execute(cmd))  # keep the prompt responsive
                else:
                    await chat.execute(cmd)
        finally:
            await self._finish(client, pump, printer)
        return 0

    async def _fill_online(self, chat: Chat) -> None:
        """The first status and room list only fill completion; they are not shown."""
        with contextlib.suppress(ChatError, ConnectionClosed, TimeoutError):
            reply = await chat.client.status()
            chat.online = {str(n) for n in reply.get("online") or ()}
            rooms = await chat.client.request("rooms", timeout=chat.request_timeout_s)
            chat.rooms = {str(r.get("room")) for r in rooms.get("rooms") or () if r.get("member")}

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _pump(self, client: ResilientClient, chat: Chat) -> None:
        async for ev in client.events():
            chat.output(ev)

    async def _finish(
        self, client: ResilientClient, pump: asyncio.Task[None], printer: asyncio.Task[None]
    ) -> None:
        if client.unacked:
            self._print([info_line(f"sending {len(client.unacked)} queued message(s)…")])
            if not await client.flush(timeout=5.0):
                self._print([error_line("not_sent", f"{len(client.unacked)} message(s) lost")])
        for task in list(self._tasks):
            task.cancel()
        await client.close()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(pump, 5.0)
        pump.cancel()
        self._display.put_nowait(None)
        with contextlib.suppress(TimeoutError, asyncio.CancelledError):
            await asyncio.wait_for(printer, 5.0)


# ---------------------------------------------------------------------------
# Scriptable
# ---------------------------------------------------------------------------


def _read_lines(
    stream: IO[str], loop: asyncio.AbstractEventLoop, queue: asyncio.Queue[str | None]
) -> None:
    """In a daemon thread (it may block on a terminal or pipe forever): lines -> queue."""
    try:
        for line in stream:
            asyncio.run_coroutine_threadsafe(queue.put(line), loop).result()
    except (RuntimeError, OSError, ValueError):
        return  # the loop has ended, or stdin went away
    with contextlib.suppress(RuntimeError):
        asyncio.run_coroutine_threadsafe(queue.put(None), loop).result()


async def run_script(options: Options, stdin: IO[str], stdout: IO[str], stderr: IO[str]) -> int:
    """Lines from ``stdin`` in, events out; exit once input ended and sends are acked."""
    if not options.user:
        print("redchat: a NAME is needed when stdin is not a terminal", file=stderr)
        return 2
    if not options.password:
        print("redchat: give --password-file or set REDCHAT_PASSWORD", file=stderr)
        return 2
    ids = ShortIds()
    me = options.user

    def write(ev: dict[str, Any]) -> None:
        if options.json:
            stdout.write(dumps(ev).decode())  # the server's own compact JSON lines
        else:
            for line in render_event(ev, me, ids):
                stdout.write(plain(line) + "\n")
        stdout.flush()

    def on_status(status: LinkStatus) -> None:
        # "up" is told by the welcome (``resumed: true`` after a reconnect), in order.
        if status.state in (LinkState.UP, LinkState.CLOSED):
            return
        if options.json:
            write({"type": "connection", "state": status.state.value, "attempt": status.attempt,
                   "delay_s": round(status.delay_s, 3), "reason": status.reason,
                   "gateway": status.gateway})  # fmt: skip
        else:
            print(f"-- {status.describe()}", file=stderr, flush=True)

    client = ResilientClient(
        options.user, options.password, options.host, options.port,
        backoff=options.backoff, on_status=on_status, max_attempts=options.retries,
    )  # fmt: skip
    try:
        await client.start()
    except ChatError as exc:
        write(dict(exc.event))
        return 1
    except (OSError, ConnectionClosed, TimeoutError) as exc:
        print(f"redchat: cannot reach {options.host}:{options.port}: {exc}", file=stderr)
        return 1
    me = client.user
    chat = Chat(client, write, options.request_timeout_s)
    chat.ids = ids
    failed = 0

    async def pump() -> None:
        nonlocal failed
        async for ev in client.events():
            if ev.get("type") == "error" and ev.get("cid"):
                failed += 1
            if ev.get("type") != "ack" or options.json:
                chat.output(ev)

    pumping = asyncio.create_task(pump())
    lines: asyncio.Queue[str | None] = asyncio.Queue(64)
    loop = asyncio.get_running_loop()
    threading.Thread(target=_read_lines, args=(stdin, loop, lines), daemon=True).start()
    sent = []
    while (line := await lines.get()) is not None:
        cmd = chat.parse(line)
        if cmd is None:
            continue
        if _is_request(cmd):
            await client.flush()  # answers reflect the lines above them, as in the script
        before = len(client.unacked)
        if not await chat.execute(cmd):
            break
        if len(client.unacked) > before:
            sent.append(client.unacked[-1])
        if len(client.unacked) > MAX_UNACKED_IN_SCRIPT:
            with contextlib.suppress(Exception):
                await client.unacked[0].wait()
    if not await client.flush():
        print(f"redchat: {len(client.unacked)} message(s) could not be sent", file=stderr)
        failed += len(client.unacked)
    # Show our own messages as everyone else sees them before leaving.
    deadline = loop.time() + ECHO_WAIT_S
    for item in sent:
        if item.id is not None:
            left = max(0.0, deadline - loop.time())
            await client.wait_delivered(item.to, item.id, timeout=left)
    await client.close()
    await pumping
    return 1 if failed else 0


def run_interactive(options: Options) -> int:
    return asyncio.run(Console(options).run())


def run(options: Options) -> int:
    if sys.stdin.isatty() and sys.stdout.isatty() and not options.json:
        return run_interactive(options)
    return asyncio.run(run_script(options, sys.stdin, sys.stdout, sys.stderr))

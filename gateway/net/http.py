"""The HTTP API's asyncio side: answers one connection's requests, in order.

What a request means (routes, bodies, status codes) is ``gateway.protocol.http``.
Commands run through the session's one path (``Session.run``, then ``dispatch``),
the same as JSON and text lines, with a ``RequestConn`` that collects the events a
handler emits instead of writing them; the answer is the reply event's JSON. So
authorization, limits and moderation are written once, and a new op is served
here without touching this module.

``GET /events`` makes the connection a live session (``Session.start_events``):
from then on it is delivered to as a JSON-lines client is, in SSE form.
"""

from __future__ import annotations

import asyncio
import logging
import mimetypes
import time
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import quote

from gateway.errors import ClientError, Unavailable
from gateway.handlers import files, sync
from gateway.handlers.context import Context
from gateway.protocol import Error, Event, Login, Message, event_to_dict
from gateway.protocol.events import file_dict, message_dict
from gateway.protocol.http import (
    HttpCodec,
    HttpReject,
    HttpRequest,
    RouteKind,
    allowed,
    command_of,
    error_body,
    parse_resume,
    route_of,
    status_of,
)
from gateway.protocol.ops import Reject, check_cid, check_target
from gateway.store.files import valid_fid
from gateway.web.assets import SECURITY_HEADERS, asset, not_modified

if TYPE_CHECKING:
    from gateway.net.session import Session

__all__ = ["HttpExchange", "RequestConn"]

log = logging.getLogger("redchat.http")

# Pictures a browser may show in place; anything else (SVG included: it can carry
# script) is downloaded, never opened on this origin.
INLINE_TYPES: Final = frozenset({"image/png", "image/jpeg", "image/gif", "image/webp"})
POLL_MOST: Final = 500  # messages one GET /messages returns; "more" says to ask again


# status (0: a stream under way), body, headers
_Served = tuple[int, dict[str, Any], dict[str, str]]


class RequestConn:
    """``Conn`` for one HTTP request: what a handler emits is kept for the answer."""

    def __init__(self, user: str | None, peer_address: str) -> None:
        self.user = user
        self.peer_address = peer_address
        self.last_sent: dict[str, tuple[int, int]] = {}
        self.events: list[Event] = []

    def send_event(self, ev: Event) -> None:
        self.events.append(ev)

    async def send_paced(self, ev: Event) -> None:
        self.events.append(ev)

    def close_with(self, ev: Event | None = None) -> None:
        if ev is not None:
            self.events.append(ev)

    def switch_to(self, conversation: str) -> None:
        pass  # a request has no "where plain lines go"

    async def begin_sync(self, user: str) -> list[str]:
        raise ClientError("bad_request", "over HTTP, log in with POST /connect")

    def undo_login(self) -> None:
        pass

    def begin_resync(self) -> bool:
        return False

    def finish_sync(self) -> None:
        pass

    async def replay_page(self, conversation: str, page: list[Message]) -> None:
        raise AssertionError("a request does not replay; GET /messages polls")


class _Answer(Exception):
    """Stop serving a request and answer it with this status and body."""

    def __init__(self, status: int, body: dict[str, Any], headers: dict[str, str] | None = None):
        super().__init__(status)
        self.status = status
        self.body = body
        self.headers = headers or {}


def _refuse(status: int, code: str, message: str, **headers: str) -> _Answer:
    return _Answer(status, error_body(code, message), headers)


class HttpExchange:
    """Serves the requests of one HTTP connection (its session's worker calls it)."""

    def __init__(self, session: Session, codec: HttpCodec) -> None:
        self.session = session
        self.codec = codec
        self.gw = session.gw
        self.user: str | None = None  # who the request being served is from, once known
        self.written = 200  # the status of an answer written as it went (a file, a page)

    async def serve(self, item: HttpRequest | HttpReject) -> None:
        try:
            await self._serve(item)
        except asyncio.CancelledError:
            raise
        except Exception:
            # A bug past the point of answering: the connection cannot go on.
            log.exception("bug answering HTTP peer=%s", self.session.peer)
            self.session.abort()

    async def _serve(self, item: HttpRequest | HttpReject) -> None:
        start = time.monotonic()
        if isinstance(item, HttpReject):
            retry = {"Retry-After": str(item.retry_after)} if item.retry_after else {}
            body = error_body(item.code, item.message)
            await self._write(item.status, body, head=False, headers=retry)
            log.info(
                "http %s %s %d user=None peer=%s: %s",
                item.method, item.path[:200], item.status, self.session.peer, item.message,
            )  # fmt: skip
            return
        self.user, self.written = None, 200
        try:
            status, body, headers = await self._route(item)
        except _Answer as answer:
            status, body, headers = answer.status, answer.body, answer.headers
        except ClientError as exc:
            status, body, headers = _reply(Error(exc.code, exc.message, extra=exc.extra), [])
        except Unavailable as exc:
            status, headers = 503, {"Retry-After": "1"}
            body = error_body("unavailable", "chat storage is unreachable; try again shortly")
            log.warning("http unavailable: %s", exc)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("bug serving %s %s peer=%s", item.method, item.path, self.session.peer)
            status, headers = 500, {}
            body = error_body("internal", "internal error; it has been logged")
        if status >= 400 and self.session.count_error():
            headers["Connection"] = "close"
        if status:  # 0: the answer is a stream, already under way
            await self._write(status, body, head=item.head, headers=headers)
        log.info(
            "http %s %s %d user=%s peer=%s %.1fms",
            item.method, item.path[:200], status or self.written, self.user, self.session.peer,
            (time.monotonic() - start) * 1000,
        )  # fmt: skip

    async def _write(
        self, status: int, body: dict[str, Any] | None, *, head: bool,
        headers: dict[str, str] | None = None,
    ) -> None:  # fmt: skip
        close = (headers or {}).pop("Connection", "") == "close"
        data = self.codec.respond(status, body, head=head, headers=headers, close=close)
        await self.session.write_answer(data)

    # -- routes -----------------------------------------------------------------------
    async def _route(self, req: HttpRequest) -> _Served:
        route = route_of(req.path)
        if route is None:
            raise _refuse(404, "not_found", f"no such path: {req.path[:100]}")
        methods = allowed(route)
        if req.method == "OPTIONS":
            return 204, {}, {"Allow": ", ".join(methods)}
        if req.method not in methods:
            raise _refuse(
                405, "bad_request", f"{req.method[:20]} is not allowed on {req.path}",
                Allow=", ".join(methods),
            )  # fmt: skip
        if route.kind is RouteKind.STATIC:
            return await self._static(req, route.op)
        if route.kind is RouteKind.CONNECT:
            return await self._connect(req)
        if route.kind is RouteKind.DOWNLOAD:
            return await self._download(req, route.op)
        token, user = await self._token_user(req)
        conn = RequestConn(user, self.session.peer_address)
        ctx = Context(self.gw, conn)
        if req.head and route.kind is RouteKind.EVENTS:  # the headers of a stream, no stream
            await self.session.write_answer(self.codec.start_stream(user, {}, head=True))
            return 0, {}, {}
        if req.head and route.kind is RouteKind.POLL:
            return 200, {}, {}  # a HEAD has no effects: no poll
        match route.kind:
            case RouteKind.DISCONNECT:
                await self.gw.store.tokens.revoke(token)
                log.info("http logout user=%s peer=%s", user, self.session.peer)
                return 200, {"type": "bye"}, {}
            case RouteKind.POLL:
                self.session.check_read_rate()  # a poll costs what a status does
                messages, more = await sync.poll(ctx, POLL_MOST)
                body = {"type": "messages", "messages": [message_dict(m) for m in messages],
                        "more": more}  # fmt: skip
                return 200, body, {}
            case RouteKind.EVENTS:
                resume = self._resume(req)
                await self.session.start_events(user, token, resume)
                return 0, {}, {}
            case RouteKind.UPLOAD:
                return await self._upload(req, ctx)
        error = await self.session.run(ctx, self._command(req, route.op))
        return _reply(error, conn.events)

    async def _static(self, req: HttpRequest, path: str) -> _Served:
        """The browser page's files (``gateway.web``): revalidated on every use
        (``no-cache``) by their ETag, so a 304 answers a page the browser has, and a
        new release is seen at once. Served with the page's security headers."""
        found = asset(path)
        if found is None:
            raise _refuse(404, "not_found", f"no such path: {req.path[:100]}")
        headers = {"ETag": found.etag, "Cache-Control": "no-cache", **SECURITY_HEADERS}
        if not_modified(req.headers.get("if-none-match"), found.etag):
            status, body = 304, b""
        else:
            status, body = 200, found.body
        self.written = status
        data = self.codec.respond(
            status, body, head=req.head, content_type=found.content_type, headers=headers
        )
        await self.session.write_answer(data)
        return 0, {}, {}

    async def _token_user(self, req: HttpRequest) -> tuple[str, str]:
        """The request's token and the user it stands for; 401 when there is none."""
        token = req.bearer()
        user = await self.gw.store.tokens.user_of(token) if token else None
        self.user = user
        if token is None or user is None:
            raise _refuse(
                401, "not_logged_in",
                "send 'Authorization: Bearer <token>'; POST /connect gives one"
                if token is None else "this token is unknown, expired or revoked",
                **{"WWW-Authenticate": 'Bearer realm="redchat"'},
            )  # fmt: skip
        return token, user

    async def _upload(self, req: HttpRequest, ctx: Context) -> _Served:
        """``POST /files?to=..&name=..``: the body's bytes become a file message."""
        query = req.query
        try:
            to = check_target(query.get("to"))
            name = query.get("name") or ""
            cid = check_cid(query.get("cid"))
        except Reject as exc:
            raise _refuse(400, exc.code, exc.message) from None
        if not name:
            raise _refuse(400, "bad_request", "say the file's name: POST /files?to=..&name=..")
        if "content-length" not in req.headers and "transfer-encoding" not in req.headers:
            raise _refuse(411, "bad_request", "an upload needs its Content-Length")
        if req.headers.get("content-type", "").startswith("multipart/"):
            raise _refuse(
                415, "bad_request", "send the file's bytes as the body, not a form:"
                " curl --data-binary @FILE '.../files?to=..&name=..'",
            )  # fmt: skip
        mime = query.get("mime") or req.headers.get("content-type", "")
        if not mime or mime.startswith("application/x-www-form-urlencoded"):  # curl's default
            mime = mimetypes.guess_type(name)[0] or "application/octet-stream"
        self.session.check_send_rate()
        result, info = await files.send_file(
            ctx, to, name, mime.split(";")[0].strip(), req.body, cid
        )
        return 200, {"type": "ack", "id": result.id, "cid": cid, "file": file_dict(info)}, {}

    async def _download(self, req: HttpRequest, fid: str) -> _Served:
        """``GET /files/<fid>``: the bytes, for whoever may read the conversation; with a
        signed link (``?u=&e=&s=``, what text clients are shown) or a token. Anyone else
        gets 404, as for a file that does not exist."""
        store, query = self.gw.store, req.query
        if "s" in query:
            await store.tokens.ensure_secret()
            user = query.get("u", "")
            if not store.tokens.check(fid, user, query.get("e", ""), query.get("s", "")):
                raise _refuse(401, "not_logged_in", "this link is not valid, or has expired")
            self.user = user
        else:
            _, user = await self._token_user(req)
        found = await store.files.info(fid) if valid_fid(fid) else None
        if found is None or not await files.may_read(store, user, found[0]):
            raise _refuse(404, "not_found", f"no file {fid[:40]}")
        conversation, info = found
        headers = {
            "Content-Type": info.mime,
            "Content-Disposition": _disposition(info.name, inline=info.mime in INLINE_TYPES),
            "X-Content-Type-Options": "nosniff",
            "Cache-Control": "private, max-age=3600",
        }
        await self.session.write_answer(
            self.codec.begin_answer(200, headers, info.size), last=False
        )
        if not req.head:
            sent = 0
            try:
                async for chunk in store.files.chunks(conversation, fid):
                    sent += len(chunk)
                    await self.session.write_answer(self.codec.answer_part(chunk), last=False)
            except (ClientError, Unavailable) as exc:  # expired, or Redis gone, mid-way
                log.warning("file %s: download cut after %d bytes: %s", fid, sent, exc)
            if sent != info.size:  # the answer promised its length: it cannot end well
                log.warning("file %s: %d bytes of %d sent; closing", fid, sent, info.size)
                self.session.abort()
                return 0, {}, {}
        await self.session.write_answer(self.codec.end_answer())
        return 0, {}, {}

    def _command(self, req: HttpRequest, op: str) -> Any:
        try:
            return command_of(req, op, self.codec.ctx)
        except Reject as exc:
            raise _refuse(status_of(exc.code), exc.code, exc.message) from None

    def _resume(self, req: HttpRequest) -> dict[str, str]:
        text = req.headers.get("last-event-id") or req.query.get("last_event_id") or ""
        try:
            return parse_resume(text)
        except Reject as exc:
            raise _refuse(400, exc.code, exc.message) from None

    async def _connect(self, req: HttpRequest) -> _Served:
        cmd = self._command(req, "login")
        assert isinstance(cmd, Login)
        store = self.gw.store
        account = await store.accounts.login(cmd.user, cmd.password, self.session.peer_address)
        self.user = account.name
        token = await store.tokens.create(account.name)
        ctx = Context(self.gw, RequestConn(account.name, self.session.peer_address))
        unread = await sync.unread(ctx)
        log.info("http login user=%s new=%s peer=%s", account.name, account.new, self.session.peer)
        body = {"type": "connected", "token": token, "user": account.name, "new": account.new,
                "unread": unread, "gateway": self.gw.name}  # fmt: skip
        return 200, body, {}


def _reply(error: Error | None, events: list[Event]) -> tuple[int, dict[str, Any], dict[str, str]]:
    """Status, body and headers answering a command: its error, or its reply event
    (with any further events it emitted under ``events``)."""
    error = error or next((e for e in events if isinstance(e, Error)), None)
    if error is not None:
        headers = {}
        if "retry_after" in error.extra:
            headers["Retry-After"] = str(error.extra["retry_after"])
        return status_of(error.code), event_to_dict(error), headers
    if not events:
        return 200, {"type": "ok"}, {}
    body = event_to_dict(events[0])
    if len(events) > 1:
        body["events"] = [event_to_dict(e) for e in events[1:]]
    return 200, body, {}


def _disposition(name: str, inline: bool = False) -> str:
    """``attachment`` (or ``inline``, for a picture) with the name for every client:
    an ASCII fallback, and the exact name in RFC 5987 form."""
    plain = "".join(c if 32 <= ord(c) < 127 and c not in '"\\' else "_" for c in name)
    kind = "inline" if inline else "attachment"
    return f"{kind}; filename=\"{plain}\"; filename*=UTF-8''{quote(name, safe='')}"

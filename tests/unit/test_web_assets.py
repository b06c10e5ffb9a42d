"""The browser page's files (gateway.web.assets): loaded from the package, with a
strong ETag, ``If-None-Match`` read as RFC 9110 says, and a page that a strict
Content-Security-Policy allows (no inline script, style or handler)."""

from __future__ import annotations

import hashlib
import re
from html.parser import HTMLParser

import pytest

from gateway.protocol.http import RouteKind, allowed, route_of
from gateway.web.assets import ASSETS, CSP, SECURITY_HEADERS, asset, etag_of, not_modified


def test_every_asset_loads_with_its_type_and_etag() -> None:
    for path, (file, content_type) in ASSETS.items():
        got = asset(path)
        assert got is not None and got.name == file and got.body
        assert got.content_type == content_type and "charset=utf-8" in content_type
        assert got.etag == etag_of(got.body)
        assert asset(path) is got  # read once
    assert asset("/index.html") is None and asset("/../pyproject.toml") is None


def test_etag_is_a_strong_digest_of_the_bytes() -> None:
    tag = etag_of(b"hello")
    assert tag == '"' + hashlib.sha256(b"hello").hexdigest()[:32] + '"'
    assert etag_of(b"hello!") != tag and etag_of(b"hello") == tag
    assert re.fullmatch(r'"[0-9a-f]{32}"', tag)


@pytest.mark.parametrize(
    ("header", "matches"),
    [
        (None, False),
        ("", False),
        ('"abc"', True),
        ('W/"abc"', True),
        ('"x", "abc"', True),
        ('"x",W/"abc" ', True),
        ("*", True),
        ('"abcd"', False),
        ("abc", False),
        ('"ab"', False),
    ],
)
def test_if_none_match(header: str | None, matches: bool) -> None:
    assert not_modified(header, '"abc"') is matches


def test_routes_serve_the_page_without_a_token() -> None:
    for path in ("/", "/app.js", "/app.css"):
        route = route_of(path)
        assert route is not None and route.kind is RouteKind.STATIC and route.op == path
        assert not route.needs_token
        assert allowed(route) == ["GET", "HEAD", "OPTIONS"]
    assert route_of("/app.map") is None


def test_security_headers() -> None:
    assert SECURITY_HEADERS["Content-Security-Policy"] == CSP
    for directive in (
        "default-src 'self'", "script-src 'self'", "style-src 'self'",
        "img-src 'self' blob: data:", "connect-src 'self'", "frame-ancestors 'none'",
        "base-uri 'none'", "form-action 'self'",
    ):  # fmt: skip
        assert directive in CSP.split("; ")
    assert "unsafe" not in CSP
    assert SECURITY_HEADERS["X-Content-Type-Options"] == "nosniff"
    assert SECURITY_HEADERS["Referrer-Policy"] == "no-referrer"


class _Inline(HTMLParser):
    """What in an HTML page a CSP without 'unsafe-inline' would block or load elsewhere."""

    def __init__(self) -> None:
        super().__init__()
        self.problems: list[str] = []
        self.scripts: list[str] = []
        self.styles: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        for attr, value in attrs:
            if attr.startswith("on"):
                self.problems.append(f"inline handler {attr} on <{tag}>")
            if attr == "style":
                self.problems.append(f"inline style on <{tag}>")
            elsewhere = value and re.match(r"(?i)\s*(javascript:|//|https?:)", value)
            if attr in ("href", "src", "action") and elsewhere:
                self.problems.append(f"{attr}={value!r} on <{tag}>")
        if tag == "style":
            self.problems.append("a <style> element")
        if tag == "script":
            self._in_script = True
            if not found.get("src"):
                self.problems.append("an inline <script>")
            else:
                self.scripts.append(str(found["src"]))
        if tag == "link" and found.get("rel") == "stylesheet":
            self.styles.append(str(found.get("href")))

    def handle_endtag(self, tag: str) -> None:
        if tag == "script":
            self._in_script = False

    def handle_data(self, data: str) -> None:
        if self._in_script and data.strip():
            self.problems.append("script text inside <script>")


def test_page_has_no_inline_script_or_style() -> None:
    page = asset("/")
    assert page is not None
    parser = _Inline()
    parser.feed(page.body.decode("utf-8"))
    assert parser.problems == []
    assert parser.scripts == ["/app.js"] and parser.styles == ["/app.css"]


def test_script_inserts_user_content_as_text_only() -> None:
    script = asset("/app.js")
    assert script is not None
    text = script.body.decode("utf-8")
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(",
                 "new Function", "setAttribute('on", 'setAttribute("on'):  # fmt: skip
        assert sink not in text, sink
    assert "textContent" in text
    assert "localStorage" not in text and "document.cookie" not in text
    assert "sessionStorage" in text

"""The browser page's files, shipped in this package, and their cache validators.

Pure but for reading the package's own files once: ``asset(name)`` gives the bytes,
the media type and a strong ETag (a digest of the bytes, so it changes exactly
when the file does); ``not_modified`` reads ``If-None-Match`` against it.

The page is served with a strict Content-Security-Policy (``CSP``): no inline script
or style, nothing from elsewhere; ``SECURITY_HEADERS`` go with every file.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass
from importlib import resources
from typing import Final

__all__ = [
    "ASSETS",
    "CSP",
    "SECURITY_HEADERS",
    "Asset",
    "asset",
    "etag_of",
    "not_modified",
]

# path served -> (file in this package, media type)
ASSETS: Final = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/app.css": ("app.css", "text/css; charset=utf-8"),
}

CSP: Final = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)
SECURITY_HEADERS: Final = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",  # frame-ancestors, for browsers that predate it
}


@dataclass(frozen=True, slots=True)
class Asset:
    name: str
    body: bytes
    content_type: str
    etag: str  # quoted, as the header carries it


def etag_of(body: bytes) -> str:
    """A strong validator: the first 128 bits of the body's SHA-256, quoted."""
    return '"' + hashlib.sha256(body).hexdigest()[:32] + '"'


def not_modified(if_none_match: str | None, etag: str) -> bool:
    """Whether ``If-None-Match`` names ``etag`` (or is ``*``): the client's copy is
    current. Weak forms (``W/"…"``) match too, as RFC 9110 says for this header."""
    if not if_none_match:
        return False
    for part in if_none_match.split(","):
        tag = part.strip()
        if tag == "*":
            return True
        if tag.startswith("W/"):
            tag = tag[2:]
        if tag == etag:
            return True
    return False


@functools.cache
def asset(path: str) -> Asset | None:
    """The file served at ``path`` (None: not one of the page's); read once."""
    entry = ASSETS.get(path)
    if entry is None:
        return None
    name, content_type = entry
    body = resources.files("gateway.web").joinpath(name).read_bytes()
    return Asset(name, body, content_type, etag_of(body))

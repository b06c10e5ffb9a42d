"""The gateway's exceptions.

    RedchatError
    ├── ClientError        a peer's mistake: becomes an ``error`` event, the connection goes on
    │   └── (code, message, extra fields such as retry_after)
    └── ConfigError        bad settings at start-up: the process exits with the message

Anything else raised while serving a peer is a bug: it is logged with its traceback
and the peer only sees ``internal``. Redis being unreachable is turned into
``ClientError("unavailable")`` where it happens.
"""

from __future__ import annotations

from typing import Any

__all__ = ["ClientError", "ConfigError", "RedchatError"]


class RedchatError(Exception):
    """Root of every exception redchat raises on purpose."""


class ClientError(RedchatError):
    def __init__(self, code: str, message: str, **extra: Any) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.extra = extra


class ConfigError(RedchatError):
    pass

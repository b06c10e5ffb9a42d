"""The gateway's exceptions.

    RedchatError
    ├── ClientError        a peer's mistake: becomes an ``error`` event, the connection goes on
    │   └── (code, message, extra fields such as retry_after)
    ├── Unavailable        Redis could not be reached: raised only by the store's
    │                      boundary (gateway.store.redis), becomes ``unavailable``
    └── ConfigError        bad settings at start-up: the process exits with the message

Anything else raised while serving a peer is a bug: it is logged with its traceback
and the peer only sees ``internal``.
"""

from __future__ import annotations

from typing import Any

__all__ = ["ClientError", "ConfigError", "RedchatError", "Unavailable"]


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


class Unavailable(RedchatError):
    """Redis is unreachable (down, restarting, refusing): try again shortly."""

"""The narrow interfaces a handler sees: the connection it serves, and the gateway."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from gateway.protocol import Event, Message
from gateway.settings import GatewaySettings
from gateway.store import Store

if TYPE_CHECKING:
    from gateway.net.hub import Hub

__all__ = ["Conn", "Context", "Services"]


class Conn(Protocol):
    """The connection a command came from, as far as a handler may see it."""

    user: str | None
    peer_address: str
    last_sent: dict[str, tuple[int, int]]  # conversation -> last id delivered

    def send_event(self, ev: Event) -> None: ...

    async def send_paced(self, ev: Event) -> None:
        """A reply the client asked for (it may pass the outbox bound); returns once
        the client has read enough of it."""

    def close_with(self, ev: Event | None = None) -> None: ...

    def switch_to(self, conversation: str) -> None:
        """Where this connection's plain text lines go from now on."""

    # login and re-sync
    async def begin_sync(self, user: str) -> list[str]:
        """Become ``user``: subscribe, count in presence; live events are held back.
        Returns the user's rooms it subscribed to (besides #general)."""

    def undo_login(self) -> None: ...

    def begin_resync(self) -> bool: ...

    def finish_sync(self) -> None:
        """Go live: deliver what was held back, minus what the replay sent."""

    async def replay_page(self, conversation: str, page: list[Message]) -> None: ...


class Services(Protocol):
    """The gateway, as handlers use it."""

    name: str
    settings: GatewaySettings
    store: Store
    hub: Hub


@dataclass(frozen=True, slots=True)
class Context:
    gw: Services
    conn: Conn

    @property
    def user(self) -> str:
        assert self.conn.user is not None, "dispatch checks the login"
        return self.conn.user

    @property
    def store(self) -> Store:
        return self.gw.store

    @property
    def settings(self) -> GatewaySettings:
        return self.gw.settings

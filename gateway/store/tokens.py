"""Bearer tokens of the HTTP API: made at ``POST /connect``, good on every gateway.

Redis keeps a token's SHA-256, never the token, so whoever reads Redis cannot
act as its user. Each use extends its life (GETEX); a user keeps at most
``MAX_TOKENS_PER_USER``, the oldest going first. Revoking one publishes a
``logout`` event on the user's channel, which ends the live streams opened
with it on any gateway.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import time
from typing import Final

from redis.asyncio import Redis

from gateway.store.keys import Keys
from gateway.store.redis import boundary, publish_command
from gateway.store.time import now_ms

__all__ = ["LINK_TTL_S", "MAX_TOKENS_PER_USER", "Tokens", "digest_of"]

MAX_TOKENS_PER_USER: Final = 100
TOKEN_BYTES: Final = 24  # 192 random bits, 32 characters in base64url
LINK_TTL_S: Final = 86_400  # a file link works this long after it was shown


def digest_of(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


@boundary
class Tokens:
    def __init__(self, redis: Redis, keys: Keys, ttl_s: int) -> None:
        self.redis = redis
        self.keys = keys
        self.ttl_s = ttl_s
        self._secret: bytes | None = None

    async def create(self, user: str) -> str:
        """A new token for ``user`` (display name)."""
        token = secrets.token_urlsafe(TOKEN_BYTES)
        digest = digest_of(token)
        index = self.keys.user_tokens(user)
        await self.redis.set(self.keys.token(digest), user, ex=self.ttl_s)
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.zadd(index, {digest: now_ms()})
            pipe.zrange(index, 0, -MAX_TOKENS_PER_USER - 1)
            pipe.expire(index, self.ttl_s)
            _, old, _ = await pipe.execute()
        if old:
            await self._drop(user, [str(d) for d in old])
        return token

    async def user_of(self, token: str) -> str | None:
        """The display name a token stands for (its life extended), or None."""
        if not token or len(token) > 256:
            return None
        name = await self.redis.getex(self.keys.token(digest_of(token)), ex=self.ttl_s)
        return None if name is None else str(name)

    async def revoke(self, token: str) -> str | None:
        """End a token; the user it stood for, or None when it was no longer good."""
        digest = digest_of(token)
        name = await self.redis.getdel(self.keys.token(digest))
        if name is None:
            return None
        await self._drop(str(name), [digest])
        return str(name)

    # -- signed file links: a download for people with nothing but curl -------------
    async def load_secret(self) -> None:
        """Fetch (or make, once for every gateway) the key file links are signed with."""
        key = self.keys.link_secret
        await self.redis.set(key, secrets.token_hex(32), nx=True)
        value = await self.redis.get(key)
        if value is not None:
            self._secret = str(value).encode()

    async def ensure_secret(self) -> None:
        if self._secret is None:
            await self.load_secret()

    def sign(self, fid: str, user: str, now_s: float | None = None) -> tuple[int, str] | None:
        """(expiry in s since the epoch, signature) of a link to file ``fid`` for ``user``,
        or None while the key is not loaded."""
        if self._secret is None:
            return None
        expires = int(now_s if now_s is not None else time.time()) + LINK_TTL_S
        return expires, self._mac(fid, user, expires)

    def check(self, fid: str, user: str, expires: str, signature: str) -> bool:
        """A link's signature is ours and it has not expired."""
        if self._secret is None or not expires.isascii() or not expires.isdigit():
            return False
        if int(expires) < time.time() or len(expires) > 12:
            return False
        return hmac.compare_digest(self._mac(fid, user, int(expires)), signature)

    def _mac(self, fid: str, user: str, expires: int) -> str:
        assert self._secret is not None
        text = f"{fid}\n{user.lower()}\n{expires}".encode("utf-8", "surrogatepass")
        return hmac.new(self._secret, text, hashlib.sha256).hexdigest()[:32]

    async def _drop(self, user: str, digests: list[str]) -> None:
        event = {"type": "logout", "token": ""}
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.zrem(self.keys.user_tokens(user), *digests)
            for digest in digests:
                pipe.delete(self.keys.token(digest))
                event["token"] = digest[:16]
                pipe.execute_command(
                    publish_command(self.redis),
                    self.keys.user_channel(user),
                    json.dumps(event, separators=(",", ":")),
                )
            await pipe.execute()

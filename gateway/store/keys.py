"""Every Redis key and channel name redchat uses, built in one place.

All names live under one prefix (default ``redchat``) so several deployments can
share a Redis. Keys of one user share the hash tag ``{u:<name>}`` and keys of one
conversation share ``{c:<conversation>}``, so a script never spans two cluster
slots. docs/redis-keys.md describes each of them for operators.

Conversation ids (internal, stable): ``#general`` for rooms, ``dm:<a>:<b>`` for a
direct conversation, where ``a`` and ``b`` are the two lower-cased names, sorted.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["GENERAL", "Keys", "dm_conversation", "hash_tag", "is_room"]

GENERAL = "#general"


def is_room(conversation: str) -> bool:
    return conversation.startswith("#")


def hash_tag(name: str) -> str:
    """What Redis Cluster hashes to place ``name``: the text inside its first ``{...}``
    when that is not empty, else the whole name. Equal tags share a slot."""
    start = name.find("{")
    if start >= 0:
        end = name.find("}", start + 1)
        if end > start + 1:
            return name[start + 1 : end]
    return name


def dm_conversation(a: str, b: str) -> str:
    """The id of the direct conversation between two users (any case, any order)."""
    x, y = sorted((a.lower(), b.lower()))
    return f"dm:{x}:{y}"


@dataclass(frozen=True, slots=True)
class Keys:
    prefix: str = "redchat"

    # -- users -------------------------------------------------------------
    def account(self, user: str) -> str:
        """Hash: name (display case), pw (scrypt), created (ms)."""
        return f"{self.prefix}:{{u:{user.lower()}}}:account"

    def login_failures(self, user: str, address: str | None = None) -> str:
        """String counter of login attempts that were not (yet) right, for a name
        (``address`` None) or for a name from one address; expires with its window."""
        if address is None:
            return f"{self.prefix}:{{u:{user.lower()}}}:fails"
        return f"{self.prefix}:{{u:{user.lower()}}}:fails:{address}"

    def known_addresses(self, user: str) -> str:
        """Sorted set: address -> last successful login (ms); the last few are kept."""
        return f"{self.prefix}:{{u:{user.lower()}}}:addrs"

    def address_failures(self, address: str) -> str:
        """String counter of failed logins from one address, any name."""
        return f"{self.prefix}:{{a:{address}}}:fails"

    def cursors(self, user: str) -> str:
        """Hash: conversation id -> last stream id delivered to any of the user's clients."""
        return f"{self.prefix}:{{u:{user.lower()}}}:cursors"

    def conversations(self, user: str) -> str:
        """Sorted set: direct-conversation id -> last activity (ms, updated lazily);
        pruned when the conversation's history has expired."""
        return f"{self.prefix}:{{u:{user.lower()}}}:dms"

    def log(self, user: str) -> str:
        """Stream of the user's own sent messages (id, to, text, reply_to)."""
        return f"{self.prefix}:{{u:{user.lower()}}}:log"

    def quota(self, user: str) -> str:
        """String: public messages sent in the current rate window; expires when it ends."""
        return f"{self.prefix}:{{u:{user.lower()}}}:quota"

    def quota_cid(self, user: str, cid: str) -> str:
        """String: this client id was already counted against the quota (retries count once)."""
        return f"{self.prefix}:{{u:{user.lower()}}}:qcid:{cid}"

    def file_quota(self, user: str) -> str:
        """String: bytes of files the user stored in the current file-quota window
        (``--file-quota-bytes`` per ``--file-quota-window-s``); expires when it ends."""
        return f"{self.prefix}:{{u:{user.lower()}}}:fileq"

    def ban(self, user: str) -> str:
        """String: when the user's ban ends (ms); expires then. Deleting it lifts the ban."""
        return f"{self.prefix}:{{u:{user.lower()}}}:ban"

    def reports(self, user: str) -> str:
        """Hash: reporter (lower case) -> "<ms> <reason>"; expires --report-ttl after the
        last report, and is emptied when the reports lead to a ban."""
        return f"{self.prefix}:{{u:{user.lower()}}}:reports"

    @property
    def bans(self) -> str:
        """Sorted set: user (lower case) -> ban end (ms). An index for operators; the
        ``ban`` key is the truth. The worker drops ended bans and logs them."""
        return f"{self.prefix}:bans"

    def user_rooms(self, user: str) -> str:
        """Set: the rooms (``#name``) the user is a member of, besides #general. The
        room's ``members`` is the truth; this is the user's side, for logins."""
        return f"{self.prefix}:{{u:{user.lower()}}}:rooms"

    def user_tokens(self, user: str) -> str:
        """Sorted set: digest of each of the user's HTTP tokens -> when it was made (ms);
        the oldest go past ``MAX_TOKENS_PER_USER``. The ``token`` keys are the truth."""
        return f"{self.prefix}:{{u:{user.lower()}}}:tokens"

    @property
    def link_secret(self) -> str:
        """String: the key every gateway signs file links with (made once, SET NX).
        Replacing it makes every file link shown so far stop working."""
        return f"{self.prefix}:linksecret"

    def token(self, digest: str) -> str:
        """String: an HTTP bearer token's SHA-256 (never the token) -> the user's display
        name; expires ``--token-ttl`` after its last use. Deleting it logs that client out."""
        return f"{self.prefix}:token:{digest}"

    def user_channel(self, user: str) -> str:
        """Pub/sub channel for events addressed to one user (direct messages)."""
        return f"{self.prefix}:{{u:{user.lower()}}}:events"

    # -- scheduled messages ------------------------------------------------------
    def schedules(self, user: str) -> str:
        """Hash: sid -> the scheduled message as JSON, until it is sent or cancelled."""
        return f"{self.prefix}:{{u:{user.lower()}}}:sched"

    def schedule_leases(self, user: str) -> str:
        """Hash: sid -> "<lease end ms> <tries> <worker>" once a worker claimed it; a
        claimed message is committed to being sent (a cancel no longer wins)."""
        return f"{self.prefix}:{{u:{user.lower()}}}:sched:lease"

    @property
    def schedule_due(self) -> str:
        """Sorted set: "<user>:<sid>" -> when to look at it (ms): its due time, then the
        end of its lease once claimed. An index in a slot of its own, always written
        in a command of its own; the user's ``schedules`` hash is the truth."""
        return f"{self.prefix}:sched:due"

    # -- conversations -------------------------------------------------------
    def stream(self, conversation: str) -> str:
        """Stream holding the conversation's history (the source of truth)."""
        return f"{self.prefix}:{{c:{conversation}}}:stream"

    def seq(self, conversation: str) -> str:
        """Counter numbering the conversation's messages (the ``n`` field)."""
        return f"{self.prefix}:{{c:{conversation}}}:seq"

    def sent(self, conversation: str, user: str, cid: str) -> str:
        """String: the stream id a client id was stored under (idempotent retries)."""
        return f"{self.prefix}:{{c:{conversation}}}:cid:{user.lower()}:{cid}"

    def room_channel(self, conversation: str) -> str:
        """Pub/sub channel of a room: every message appended to it."""
        return f"{self.prefix}:{{c:{conversation}}}:events"

    def replies(self, conversation: str) -> str:
        """Hash: message id -> how many replies it has (threads); expires with the messages."""
        return f"{self.prefix}:{{c:{conversation}}}:replies"

    def thread(self, conversation: str, message_id: str) -> str:
        """List: the ids of the replies to one message, oldest first."""
        return f"{self.prefix}:{{c:{conversation}}}:re:{message_id}"

    # -- files -------------------------------------------------------------------
    def file(self, conversation: str, fid: str) -> str:
        """Hash: a file sent in the conversation: name, size, sha256, mime, from, created
        (ms), chunks, state (``uploading``, ``finishing``, ``done``). An upload in progress
        expires 10 minutes after its last chunk; a done file with the messages."""
        return f"{self.prefix}:{{c:{conversation}}}:file:{fid}"

    def file_data(self, conversation: str, fid: str) -> str:
        """Hash: chunk index ("0", "1", ...) -> up to 64 KiB of the file's bytes; expires
        with the ``file`` hash."""
        return f"{self.prefix}:{{c:{conversation}}}:fdata:{fid}"

    def file_index(self, fid: str) -> str:
        """String: fid -> the conversation the file was sent in, so a download finds it
        from the fid alone. Written once the file is done; expires with it."""
        return f"{self.prefix}:file:{fid}"

    # -- rooms -------------------------------------------------------------------
    def room(self, room: str) -> str:
        """Hash: owner (lower case), private ("1"/"0"), created (ms). ``room`` is ``#name``."""
        return f"{self.prefix}:{{c:{room}}}:room"

    def members(self, room: str) -> str:
        """Sorted set: member (lower case) -> when they joined (ms)."""
        return f"{self.prefix}:{{c:{room}}}:members"

    def pending(self, room: str) -> str:
        """Sorted set: user (lower case) waiting for the owner's approval -> since (ms)."""
        return f"{self.prefix}:{{c:{room}}}:pending"

    def room_link(self, room: str) -> str:
        """String: the room's current invite token (a new link replaces it)."""
        return f"{self.prefix}:{{c:{room}}}:link"

    def link(self, token: str) -> str:
        """String: invite token -> room; expires with the link."""
        return f"{self.prefix}:link:{token}"

    @property
    def public_rooms(self) -> str:
        """Set: the public rooms, for ``rooms`` listings."""
        return f"{self.prefix}:rooms:public"

    # -- gateways and presence -------------------------------------------------
    @property
    def gateways(self) -> str:
        """Sorted set: gateway name -> last heartbeat (ms)."""
        return f"{self.prefix}:gateways"

    def presence(self, gateway: str) -> str:
        """Hash: user display name -> number of that user's connections on one gateway."""
        return f"{self.prefix}:presence:{gateway}"

    # -- patterns for housekeeping -----------------------------------------------
    @property
    def stream_pattern(self) -> str:
        return f"{self.prefix}:{{*}}:stream"

    @property
    def log_pattern(self) -> str:
        return f"{self.prefix}:{{u:*}}:log"

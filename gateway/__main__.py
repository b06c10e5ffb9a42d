"""``redchat-gateway``: run one gateway, or supervise several plus Redis and a worker.

With ``--processes 1``, a Redis URL and no ``--with-worker``, this process is the
gateway. Otherwise it becomes a supervisor: it starts the embedded Redis when no
URL is given, then N gateway processes that share the port with SO_REUSEPORT (and
a worker with ``--with-worker``), replaces any that exit or stop answering, and on
Ctrl-C or SIGTERM stops them all, Redis last.

The supervisor and its children agree on four things, all set up here:

- **Names.** Gateway ``i`` runs as ``python -m gateway --name <--name or hostname>-<i>``,
  so ``ps`` tells them apart.
- **Restarts.** A child that exits is restarted after a delay that doubles while it
  keeps dying within ``stable_after_s`` of its start (1 s, 2 s, 4 s … at most 30 s)
  and starts again from 1 s once a child has lived that long. Internal knob, for
  tests: ``REDCHAT_RESTART_BACKOFF_S="FIRST,MAX,STABLE"`` (seconds, default ``1,30,30``).
- **Liveness.** Each child gets the write end of a pipe (its number in
  ``REDCHAT_HEARTBEAT_FD``) and writes one byte to it every second from its event
  loop (``start_heartbeat``), so a stalled loop stops beating. A child silent for
  ``REDCHAT_CHILD_TIMEOUT_S`` seconds (default 10; before its first beat it also has
  ``STARTUP_GRACE_S`` to start up) is killed with SIGKILL and replaced.
- **Parent death.** Children get the supervisor's pid in ``REDCHAT_SUPERVISOR_PID``
  and leave, through their usual SIGTERM shutdown, when it dies, even by SIGKILL
  (``follow_supervisor``: PR_SET_PDEATHSIG on Linux, and a thread that polls
  ``os.getppid()`` everywhere). The embedded redis-server, which runs in a session
  of its own, is tied to the supervisor by a tiny "lifeline" process that holds a
  pipe from the supervisor and sends redis-server SIGTERM when that pipe closes.

This module must not import the gateway's networking code at load time: the worker
imports the child-side helpers from here.
"""

from __future__ import annotations

import asyncio
import ctypes
import dataclasses
import io
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from errno import EADDRINUSE

from gateway.embedded_redis import EmbeddedRedis
from gateway.errors import ConfigError
from gateway.logs import configure_logging
from gateway.settings import GatewaySettings, WorkerSettings, env_name, parse_settings

__all__ = [
    "RestartPolicy",
    "Supervisor",
    "follow_supervisor",
    "main",
    "serve",
    "start_heartbeat",
    "watch_parent",
]

log = logging.getLogger("redchat.supervisor")

DESCRIPTION = """\
Run the redchat chat server. Given --redis URL and --processes 1 (the default),
this process is one gateway: it serves chat clients (JSON lines for programs,
text lines for nc or telnet) on --host:--port and keeps all state in that Redis.
Otherwise it is a supervisor: it starts an embedded redis-server with its data in
--data-dir when --redis is empty, then --processes gateways sharing the port, and
a worker with --with-worker; it restarts a child that exits or stops answering,
and on Ctrl-C or SIGTERM stops them all, Redis last."""

SUPERVISOR_PID_ENV = "REDCHAT_SUPERVISOR_PID"
HEARTBEAT_FD_ENV = "REDCHAT_HEARTBEAT_FD"
CHILD_TIMEOUT_ENV = "REDCHAT_CHILD_TIMEOUT_S"
RESTART_BACKOFF_ENV = "REDCHAT_RESTART_BACKOFF_S"

HEARTBEAT_INTERVAL_S = 1.0
CHILD_TIMEOUT_S = 10.0
STARTUP_GRACE_S = 30.0  # a gateway waits up to 10 s for Redis before it listens and beats
PARENT_CHECK_S = 1.0
WATCH_TICK_S = 0.2
BANNER_WAIT_S = 15.0
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


# -- the child side ------------------------------------------------------------------
def follow_supervisor() -> None:
    """In a supervised child: shut down (SIGTERM to ourselves) when the supervisor dies.

    A no-op when ``REDCHAT_SUPERVISOR_PID`` is not set, as in a gateway run by hand.
    """
    raw = os.environ.get(SUPERVISOR_PID_ENV)
    if not raw:
        return
    try:
        supervisor = int(raw)
    except ValueError:
        log.warning("ignoring %s=%r: not a pid", SUPERVISOR_PID_ENV, raw)
        return
    _set_parent_death_signal(signal.SIGTERM)
    threading.Thread(
        target=watch_parent,
        args=(supervisor, PARENT_CHECK_S, _terminate_self),
        name="supervisor-watch",
        daemon=True,
    ).start()


def _set_parent_death_signal(sig: int) -> None:
    """Linux only: the kernel sends ``sig`` when our parent exits, even by SIGKILL."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
            log.debug("prctl(PR_SET_PDEATHSIG) failed: errno %d", ctypes.get_errno())
    except (OSError, AttributeError):
        pass  # the parent-pid watch still covers us


def watch_parent(expected: int, interval_s: float, on_orphaned: Callable[[], None]) -> None:
    """Call ``on_orphaned`` once our parent is no longer ``expected``; checks at once,
    which also covers a supervisor that died before the death signal was set."""
    while os.getppid() == expected:
        time.sleep(interval_s)
    log.warning("supervisor (pid %d) is gone; shutting down", expected)
    on_orphaned()


def _terminate_self() -> None:
    os.kill(os.getpid(), signal.SIGTERM)


def start_heartbeat(
    loop: asyncio.AbstractEventLoop, interval_s: float = HEARTBEAT_INTERVAL_S
) -> None:
    """Write a byte to the supervisor's pipe every ``interval_s`` from ``loop``.

    The beats are a ``call_later`` chain, so a loop that stalls (a SIGSTOP, a busy
    loop, a blocking call) stops beating and the supervisor replaces the process.
    A no-op without ``REDCHAT_HEARTBEAT_FD``.
    """
    raw = os.environ.get(HEARTBEAT_FD_ENV)
    if not raw:
        return
    try:
        fd = int(raw)
        os.set_blocking(fd, False)
    except (ValueError, OSError) as exc:
        log.warning("no heartbeat to the supervisor (%s=%r): %s", HEARTBEAT_FD_ENV, raw, exc)
        return

    def beat() -> None:
        try:
            os.write(fd, b".")
        except BlockingIOError:
            pass  # the supervisor is behind; the pipe already holds plenty of beats
        except OSError:
            return  # the supervisor is gone; follow_supervisor shuts us down
        loop.call_later(interval_s, beat)

    beat()


async def serve(settings: GatewaySettings, redis_url: str) -> None:
    from gateway.net.server import Gateway

    gateway = Gateway(settings, redis_url)
    await gateway.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    start_heartbeat(loop)
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


# -- the supervisor ------------------------------------------------------------------
@dataclass(frozen=True)
class RestartPolicy:
    """Delay before restarting a child: ``first_s``, doubling per quick exit in a row
    up to ``max_s``; a child that lived ``stable_after_s`` starts the count again."""

    first_s: float = 1.0
    max_s: float = 30.0
    stable_after_s: float = 30.0

    def delay_s(self, quick_exits: int) -> float:
        """The delay after ``quick_exits`` earlier exits in a row (0 for the first)."""
        return float(min(self.first_s * 2 ** min(quick_exits, 32), self.max_s))

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> RestartPolicy:
        raw = environ.get(RESTART_BACKOFF_ENV)
        if not raw:
            return cls()
        try:
            first, most, stable = (float(part) for part in raw.split(","))
        except ValueError:
            raise ConfigError(f"{RESTART_BACKOFF_ENV} must be FIRST,MAX,STABLE seconds") from None
        if not 0 <= first <= most or stable < 0:
            raise ConfigError(f"{RESTART_BACKOFF_ENV}: need 0 <= FIRST <= MAX and STABLE >= 0")
        return cls(first, most, stable)


def child_timeout_from_env(environ: Mapping[str, str]) -> float:
    raw = environ.get(CHILD_TIMEOUT_ENV)
    if not raw:
        return CHILD_TIMEOUT_S
    try:
        value = float(raw)
    except ValueError:
        value = 0.0
    if value <= 0:
        raise ConfigError(f"{CHILD_TIMEOUT_ENV} must be a number of seconds above 0")
    return value


@dataclass
class Child:
    """One supervised process and what the supervisor knows about it."""

    name: str
    cmd: list[str]
    env: dict[str, str]
    proc: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    beats: int | None = None  # read end of the heartbeat pipe
    last_beat: float | None = None
    quick_exits: int = 0  # exits in a row, each soon after its start
    restart_at: float = 0.0  # when proc is None: when to start it again


def _env_for(settings: object, **overrides: object) -> dict[str, str]:
    env = dict(os.environ)
    for f in dataclasses.fields(settings):  # type: ignore[arg-type]
        value = overrides.get(f.name, getattr(settings, f.name))
        env[env_name(f)] = str(value).lower() if isinstance(value, bool) else str(value)
    return env


def _check_port_free(host: str, port: int) -> None:
    """SO_REUSEPORT would let us silently share a port with another deployment.

    SO_REUSEADDR (as every server sets) lets the probe bind over connections of an
    earlier run still in TIME_WAIT, yet not over a socket that is listening.
    """
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            hint = (
                "; is another redchat or server listening there?" if exc.errno == EADDRINUSE else ""
            )
            raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror}{hint}") from None


def _answers(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=WATCH_TICK_S).close()
    except OSError:
        return False
    return True


# Runs in its own session, so Ctrl-C does not reach it; stdin is a pipe from the
# supervisor, which closes when the supervisor exits in any way. A process rather
# than a parent-death signal on redis-server: it works on any OS, and how
# redis-server is started belongs to gateway.embedded_redis.
_LIFELINE = """\
import os, signal, sys
pid = int(sys.argv[1])
try:
    target = os.pidfd_open(pid)
except (AttributeError, OSError):
    target = None
sys.stdin.buffer.read()
try:
    if target is None:
        os.kill(pid, signal.SIGTERM)
    else:
        signal.pidfd_send_signal(target, signal.SIGTERM)
except OSError:
    pass
"""


class Supervisor:
    """Runs the children; see the module docstring for what it promises them.

    ``restart`` and ``child_timeout_s`` are internal knobs that ``main`` reads from
    ``REDCHAT_RESTART_BACKOFF_S`` and ``REDCHAT_CHILD_TIMEOUT_S``.
    """

    def __init__(
        self,
        settings: GatewaySettings,
        restart: RestartPolicy | None = None,
        child_timeout_s: float = CHILD_TIMEOUT_S,
    ) -> None:
        self.settings = settings
        self.restart = restart or RestartPolicy()
        self.child_timeout_s = child_timeout_s
        self.redis: EmbeddedRedis | None = None
        self.lifeline: subprocess.Popen[bytes] | None = None
        self.children: dict[str, Child] = {}
        self.stopping = False

    def run(self) -> int:
        s = self.settings
        _check_port_free(s.host, s.port)
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        try:
            url = s.redis_url or self._start_redis()
            host = socket.gethostname()
            for i in range(1, s.processes + 1):
                name = f"{s.name or host}-{i}"
                env = _env_for(s, processes=1, with_worker=False, redis_url=url, name=name)
                self._add(name, [sys.executable, "-m", "gateway", "--name", name], env)
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
                self._add("worker", [sys.executable, "-m", "worker"], worker_env)
            self._watch(url)
        finally:
            self._stop_all()
        return 0

    def _start_redis(self) -> str:
        self.redis = EmbeddedRedis(self.settings.data_dir)
        self.redis.start()
        assert self.redis.proc is not None
        pid = self.redis.proc.pid
        log.info(
            "embedded Redis pid=%d at %s (data in %s, binary %s)",
            pid,
            self.redis.url,
            self.redis.data_dir,
            self.redis.binary,
        )
        self.lifeline = subprocess.Popen(
            [sys.executable, "-I", "-S", "-c", _LIFELINE, str(pid)],
            stdin=subprocess.PIPE,
            start_new_session=True,
        )
        log.debug("Redis lifeline pid=%d", self.lifeline.pid)
        return self.redis.url

    def _add(self, name: str, cmd: list[str], env: dict[str, str]) -> None:
        env[SUPERVISOR_PID_ENV] = str(os.getpid())
        self.children[name] = child = Child(name, cmd, env)
        self._spawn(child)

    def _spawn(self, child: Child) -> None:
        beats, beat_end = os.pipe()
        os.set_blocking(beats, False)
        env = {**child.env, HEARTBEAT_FD_ENV: str(beat_end)}
        try:
            child.proc = subprocess.Popen(
                child.cmd, env=env, stdin=subprocess.DEVNULL, pass_fds=(beat_end,)
            )
        except BaseException:
            os.close(beats)
            raise
        finally:
            os.close(beat_end)
        child.beats, child.last_beat = beats, None
        child.started_at = time.monotonic()
        log.info("started %s pid=%d", child.name, child.proc.pid)

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

    def _watch(self, url: str) -> None:
        s = self.settings
        banner_due: float | None = time.monotonic() + BANNER_WAIT_S
        while not self.stopping:
            time.sleep(WATCH_TICK_S)
            for child in self.children.values():
                if self.stopping:
                    break
                self._check(child)
            if banner_due is not None and not self.stopping:
                if _answers(s.host, s.port):
                    self._banner(url)
                    banner_due = None
                elif time.monotonic() > banner_due:
                    log.warning("nothing answers on %s:%d yet; see the log above", s.host, s.port)
                    banner_due = None

    def _check(self, child: Child) -> None:
        now = time.monotonic()
        if child.proc is None:
            if now >= child.restart_at:
                self._spawn(child)
            return
        self._read_beats(child, now)
        code = child.proc.poll()
        if code is not None:
            self._gone(child, now, _describe_exit(code))
            return
        if child.last_beat is None:
            silent_s, allowed_s = now - child.started_at, self.child_timeout_s + STARTUP_GRACE_S
        else:
            silent_s, allowed_s = now - child.last_beat, self.child_timeout_s
        if silent_s > allowed_s:
            log.warning(
                "%s (pid %d) stopped answering for %.0f s; replacing it",
                child.name,
                child.proc.pid,
                silent_s,
            )
            child.proc.kill()
            child.proc.wait()
            self._gone(child, now, "was killed")

    def _read_beats(self, child: Child, now: float) -> None:
        if child.beats is None:
            return
        try:
            while os.read(child.beats, 4096):
                child.last_beat = now
        except BlockingIOError:
            pass  # drained; EOF (b"") means the child closed it, and poll() will tell

    def _gone(self, child: Child, now: float, how: str) -> None:
        assert child.proc is not None
        ran_s = now - child.started_at
        if ran_s >= self.restart.stable_after_s:
            child.quick_exits = 0
        delay = self.restart.delay_s(child.quick_exits)
        child.quick_exits += 1
        loop_note = (
            f" (crash loop: {child.quick_exits} quick exits in a row)"
            if child.quick_exits > 1
            else ""
        )
        log.warning(
            "%s (pid %d) %s after %.1f s; restarting in %g s%s",
            child.name,
            child.proc.pid,
            how,
            ran_s,
            delay,
            loop_note,
        )
        self._close_beats(child)
        child.proc, child.restart_at = None, now + delay

    def _close_beats(self, child: Child) -> None:
        if child.beats is not None:
            os.close(child.beats)
            child.beats = None

    def _stop_all(self) -> None:
        running = [c for c in self.children.values() if c.proc is not None]
        for child in running:
            assert child.proc is not None
            if child.proc.poll() is None:
                child.proc.send_signal(signal.SIGTERM)
                child.proc.send_signal(signal.SIGCONT)  # a stopped child must see it too
        deadline = time.monotonic() + self.settings.shutdown_timeout_s + 5
        for child in running:
            assert child.proc is not None
            try:
                child.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop in time; killing it", child.name)
                child.proc.kill()
                child.proc.wait()
        for child in self.children.values():
            self._close_beats(child)
        if self.lifeline is not None:
            self.lifeline.kill()  # before Redis stops, so it never signals a reused pid
            self.lifeline.wait()
            if self.lifeline.stdin is not None:
                self.lifeline.stdin.close()
        if self.redis is not None and self.redis.proc is not None:
            self.redis.stop()
            log.info("embedded Redis stopped")


def _describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"


def main(argv: Sequence[str] | None = None) -> int:
    try:
        settings = parse_settings(
            GatewaySettings, argv, prog="redchat-gateway", description=DESCRIPTION
        )
        single = settings.processes == 1 and settings.redis_url and not settings.with_worker
        configure_logging(settings.log_level, settings.gateway_name if single else "supervisor")
        if single:
            follow_supervisor()
            run_gateway(settings, settings.redis_url)
            return 0
        supervisor = Supervisor(
            settings,
            restart=RestartPolicy.from_env(os.environ),
            child_timeout_s=child_timeout_from_env(os.environ),
        )
        return supervisor.run()
    except ConfigError as exc:
        print(f"redchat-gateway: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

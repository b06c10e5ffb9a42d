"""The servers a benchmark run talks to: a redchat deployment it starts, or the baseline.

``RedchatDeployment`` starts a redis-server, or a Redis Cluster of N primaries
(through ``gateway.embedded_redis``, the one launcher), and N gateway processes
sharing one free port (SO_REUSEPORT), all in a temporary folder and never on
6379, with the per-connection send-rate cap off so the bench measures
throughput, not the cap;
``BaselineProcess`` starts ``bench.baseline``; ``External`` is a deployment someone
else runs (no process ids, so no memory or CPU figures). Each knows the pids whose
RSS and CPU the report shows, read from /proc.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

from gateway.embedded_redis import (
    RedisClusterProcess,
    RedisProcess,
    free_port,
    start_redis_cluster,
    start_redis_server,
)

T = TypeVar("T")

__all__ = [
    "BaselineProcess",
    "External",
    "RedchatDeployment",
    "Target",
    "cpu_seconds",
    "raise_fd_limit",
    "rss_kb",
]


def run_bench(main: Coroutine[Any, Any, T], uvloop: bool = True) -> T:
    """Run a bench's main coroutine (on uvloop when installed, unless ``uvloop`` is
    false); SIGTERM takes the Ctrl-C path, whose ``finally`` stops every server started."""
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    runner: Callable[[Coroutine[Any, Any, T]], T] = asyncio.run
    if uvloop:
        with contextlib.suppress(ImportError):
            import uvloop as uv

            runner = uv.run
    return runner(main)


def raise_fd_limit() -> int:
    """Raise the soft limit on open files to the hard one (children inherit it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20
    if soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
    return int(soft)


def rss_kb(pid: int) -> int:
    """Resident set size of a process, from /proc/<pid>/status (0 if unknown)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far, from /proc/<pid>/stat."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / _TICK
    except (OSError, IndexError, ValueError):
        return 0.0


def _listening_inodes(port: int) -> set[str]:
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as f:
            next(f, None)
            for line in f:
                parts = line.split()
                if parts[3] == "0A" and int(parts[1].rsplit(":", 1)[1], 16) == port:
                    inodes.add(parts[9])
    return inodes


def _listens(pid: int, port: int) -> bool:
    """Whether process ``pid`` holds a socket listening on ``port``."""
    inodes = _listening_inodes(port)
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    for fd in fds:
        with contextlib.suppress(OSError):
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
            if link.startswith("socket:[") and link[8:-1] in inodes:
                return True
    return False


def _wait(pred: object, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if pred():  # type: ignore[operator]
            return
        time.sleep(0.05)
    raise RuntimeError(f"timed out waiting for {what}")


def _stop(proc: subprocess.Popen[bytes] | None, timeout_s: float = 10.0) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


class Target:
    """Where a scenario runs: an address, and the processes whose cost we measure."""

    label = "target"
    host = "127.0.0.1"
    port = 0

    def server_pids(self) -> dict[str, int]:
        """Name -> pid of every server process (gateways, redis)."""
        return {}

    def start(self) -> Target:
        return self

    def stop(self) -> None:
        pass

    def restart_gateways(self) -> bool:
        """Fresh server processes (for memory baselines); False if not possible."""
        return False


class External(Target):
    label = "redchat"

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port


class RedchatDeployment(Target):
    """Gateways on one redis-server (``shards`` 0, the default), or on a Redis Cluster
    of ``shards`` primaries without replicas, the gateways then started with
    ``--redis-cluster``."""

    label = "redchat"

    def __init__(
        self,
        gateways: int = 2,
        uvloop: bool = True,
        extra_args: list[str] | None = None,
        shards: int = 0,
    ) -> None:
        self.gateways = gateways
        self.uvloop = uvloop
        self.extra_args = extra_args or []
        self.shards = shards
        self.dir = Path(tempfile.mkdtemp(prefix="redchat-bench-"))
        self.port = free_port()
        self.redis_port = free_port()
        self.redis: RedisProcess | None = None
        self.cluster: RedisClusterProcess | None = None
        self._cluster_url = ""
        self.procs: list[subprocess.Popen[bytes]] = []

    @property
    def redis_url(self) -> str:
        """The redis-server's URL; for a cluster, a seed node's."""
        if self.shards:
            return self._cluster_url
        return f"redis://127.0.0.1:{self.redis_port}/0"

    def redis_pids(self) -> dict[str, int]:
        """``redis`` -> the redis-server's pid; for a cluster, ``redis1``.. -> each node's."""
        if self.cluster is not None:
            return {f"redis{i + 1}": node.pid for i, node in enumerate(self.cluster.nodes)}
        return {} if self.redis is None else {"redis": self.redis.pid}

    def server_pids(self) -> dict[str, int]:
        pids = {f"gw{i + 1}": p.pid for i, p in enumerate(self.procs)}
        return pids | self.redis_pids()

    def gateway_pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def start(self) -> RedchatDeployment:
        if self.shards:
            self.cluster = start_redis_cluster(self.dir / "cluster", primaries=self.shards)
            self._cluster_url = self.cluster.url
        else:
            self.redis = start_redis_server(self.dir, port=self.redis_port, persist=False, save="")
        self._start_gateways()
        return self

    def _start_gateways(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("REDCHAT_")}
        # The per-connection cap and the public-chat rate limit are off: the bench
        # measures throughput. Unknown REDCHAT_ variables are ignored, so this holds
        # for gateways with or without them; --gateway-arg=--rate-limit=N still wins.
        env["REDCHAT_CONN_SEND_RATE"] = "0"
        env["REDCHAT_RATE_LIMIT"] = "0"
        for i in range(1, self.gateways + 1):
            args = [
                sys.executable, "-m", "gateway",
                "--port", str(self.port),
                "--redis", self.redis_url,
                "--prefix", "bench",
                "--name", f"gw{i}",
                "--scrypt-n", "1024",
                "--log-level", "WARNING",
                "--uvloop" if self.uvloop else "--no-uvloop",
                *(["--redis-cluster"] if self.shards else []),
                *self.extra_args,
            ]  # fmt: skip
            with open(self.dir / f"gw{i}.log", "ab") as log:
                proc = subprocess.Popen(
                    args, env=env, stdout=log, stderr=log, stdin=subprocess.DEVNULL
                )
            self.procs.append(proc)
            # One at a time: SO_REUSEPORT only spreads clients over gateways listening.
            _wait(lambda p=proc: self._gateway_up(p), 20, f"gateway gw{i} to listen")

    def _gateway_up(self, proc: subprocess.Popen[bytes]) -> bool:
        if proc.poll() is not None:
            log = (self.dir / f"gw{len(self.procs)}.log").read_text(errors="replace")
            raise RuntimeError(f"gateway exited with {proc.returncode}:\n{log[-2000:]}")
        return _listens(proc.pid, self.port)

    def restart_gateways(self) -> bool:
        for proc in self.procs:
            _stop(proc)
        self.procs = []
        self._start_gateways()
        return True

    def logs(self) -> str:
        return "\n".join(
            f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}"
            for p in sorted(self.dir.glob("gw*.log"))
        )

    def stop(self) -> None:
        for proc in self.procs:
            _stop(proc)
        if self.redis is not None:
            self.redis.stop()
        if self.cluster is not None:
            self.cluster.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


class BaselineProcess(Target):
    label = "baseline"

    def __init__(self, uvloop: bool = True) -> None:
        self.uvloop = uvloop
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def server_pids(self) -> dict[str, int]:
        return {} if self.proc is None else {"baseline": self.proc.pid}

    def start(self) -> BaselineProcess:
        args = [
            sys.executable, "-m", "bench.baseline",
            "--port", str(self.port),
            "--uvloop" if self.uvloop else "--no-uvloop",
        ]  # fmt: skip
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL)
        proc = self.proc
        _wait(lambda: proc.poll() is None and _listens(proc.pid, self.port), 20, "baseline")
        return self

    def restart_gateways(self) -> bool:
        _stop(self.proc)
        self.port = free_port()
        self.start()
        return True

    def stop(self) -> None:
        _stop(self.proc)

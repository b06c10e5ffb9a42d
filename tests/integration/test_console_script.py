"""The scriptable mode (stdin not a terminal) as a real ``redchat`` subprocess."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

from tests.support import ROOT, Deployment

REDCHAT = ROOT / ".venv" / "bin" / "redchat"


async def redchat(
    deployment: Deployment, *args: str, stdin: str = "", password: str | None = "pw",
    tmp: Path | None = None,
) -> tuple[int, str, str]:  # fmt: skip
    argv = [str(REDCHAT)] if REDCHAT.exists() else [sys.executable, "-m", "client"]
    argv += ["--port", str(deployment.port), *args]
    if password is not None:
        assert tmp is not None
        pw = tmp / "password"
        pw.write_text(password + "\n")
        argv += ["--password-file", str(pw)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("REDCHAT_")}
    proc = await asyncio.create_subprocess_exec(
        *argv, cwd=ROOT, env=env,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(stdin.encode()), 30)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_piped_lines_are_sent_and_events_printed(
    deployment: Deployment, tmp_path: Path
) -> None:
    bob = await deployment.login("bob")
    await bob.send("#general", "earlier \x1b[31m")
    lines = "hi everyone\n\n/private to bob yo\n/status\n/reply 1 re earlier\n"
    code, out, err = await redchat(deployment, "alice", stdin=lines, tmp=tmp_path)
    assert code == 0, err

    received = [m for m in await bob.messages(4) if m["from"] == "alice"]
    assert [m["text"] for m in received] == ["hi everyone", "yo", "re earlier"]
    earlier_id = (await bob.history("#general", limit=1, before=received[0]["id"]))[0]["id"]
    assert received[2]["reply_to"] == earlier_id
    shown = out.splitlines()
    assert "logged in as alice" in shown[0] and "new name claimed" in shown[0]
    assert any(line.endswith("[1] bob: earlier \\x1b[31m") for line in shown)
    assert any(line.endswith("] alice: hi everyone") for line in shown)
    assert any(line.endswith("] (private to bob) alice: yo") for line in shown)
    assert any(
        line.endswith('] alice: (re [1] bob: "earlier \\x1b[31m") re earlier') for line in shown
    )
    assert any("online (2): alice, bob" in line for line in shown)
    assert "\x1b" not in out


async def test_json_mode_prints_json_lines_with_acks(
    deployment: Deployment, tmp_path: Path
) -> None:
    code, out, err = await redchat(
        deployment, "alice", "--json", stdin="one\ntwo\n/nope\n", tmp=tmp_path
    )
    assert code == 0, err
    events: list[dict[str, Any]] = [json.loads(line) for line in out.splitlines()]
    kinds = [ev["type"] for ev in events]
    assert kinds[0] == "welcome" and events[0]["user"] == "alice"
    acks = [ev for ev in events if ev["type"] == "ack"]
    mine = [ev for ev in events if ev["type"] == "message"]
    assert [m["text"] for m in mine] == ["one", "two"]
    assert [a["id"] for a in acks] == [m["id"] for m in mine]
    assert len({a["cid"] for a in acks}) == 2
    [error] = [ev for ev in events if ev["type"] == "error"]
    assert error["code"] == "unknown_op"


async def test_refused_login_and_missing_name_fail(deployment: Deployment, tmp_path: Path) -> None:
    claim = await deployment.login("carol", "right")
    await claim.close()
    code, out, _ = await redchat(deployment, "carol", stdin="hi\n", password="wrong", tmp=tmp_path)
    assert code == 1 and "bad_password" in out
    code, _, err = await redchat(deployment, stdin="hi\n", tmp=tmp_path)
    assert code == 2 and "NAME" in err
    code, _, err = await redchat(deployment, "carol", stdin="hi\n", password=None)
    assert code == 2 and "password" in err

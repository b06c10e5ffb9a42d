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

"""``redchat-bench requests`` runs on a tiny load and reports both framings.

It checks that the benchmark works (every ack with an id, no errors); it never
asserts a speed.
"""

from __future__ import annotations

import json
import subprocess
import sys

from tests.support import ROOT


def test_requests_bench_reports_both_framings() -> None:
    tiny = ["--seconds", "1", "--repeat", "1", "--clients", "2"]
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "requests", *tiny, "--json"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.stdout, proc.stderr
    report = json.loads(proc.stdout)
    assert proc.returncode == 0, report["errors"]
    assert report["ok"] is True and report["errors"] == []
    summary = report["summary"]
    assert set(summary) == {"json", "http"}
    for framing in ("json", "http"):
        figures = summary[framing]
        assert figures["requests"] > 0 and figures["requests_per_s"] > 0, figures
        assert figures["latency_p99_ms"] >= figures["latency_p50_ms"] > 0, figures
    # a JSON-lines sender is echoed its own direct message; an HTTP one is not
    assert summary["json"]["echoes_per_req"] > 0.9
    assert summary["http"]["echoes_per_req"] == 0

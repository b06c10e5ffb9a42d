"""What the bench commands share to report: the machine, medians, plain-text tables.

One copy of each, for ``redchat-bench`` (bench/__main__.py), ``requests``,
``attacks`` and ``shards``.
"""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["fmt_value", "machine", "median_metrics", "print_check", "render_rows", "say"]


def machine() -> dict[str, Any]:
    """The CPU model, cores, Python, redis-server and uvloop versions, and the OS."""
    model = "?"
    try:
        with open("/proc/cpuinfo") as f:
            model = next(
                (ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), "?"
            )
    except OSError:
        pass
    redis = "?"
    try:
        from gateway.embedded_redis import find_redis_server

        out = subprocess.run(
            [find_redis_server(), "--version"], capture_output=True, text=True, timeout=5
        ).stdout
        redis = next((w[2:] for w in out.split() if w.startswith("v=")), out.strip())
    except (OSError, subprocess.SubprocessError, RuntimeError, ValueError):
        pass
    try:
        from importlib.metadata import PackageNotFoundError, version

        uv = version("uvloop")
    except (ImportError, PackageNotFoundError):
        uv = "not installed"
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "redis": redis,
        "uvloop": uv,
        "os": platform.platform(terse=True),
    }


def median_metrics(runs: Sequence[Mapping[str, float]], digits: int = 3) -> dict[str, float]:
    """The median of each figure over the runs that have it, in first-seen order."""
    keys: list[str] = []
    for r in runs:
        keys += [k for k in r if k not in keys]
    return {k: round(statistics.median(r[k] for r in runs if k in r), digits) for k in keys}


def fmt_value(v: float | str | None) -> str:
    """A table cell: "-" for none, whole numbers with thousands separators, else 2 decimals."""
    if v is None:
        return "-"
    if isinstance(v, str):
        return v
    if float(v).is_integer():
        return f"{int(v):,}"
    return f"{v:,.2f}"


def render_rows(rows: Sequence[Sequence[str]]) -> str:
    """A plain-text table: the first row is the header, underlined; the first column
    is left-aligned, the others right-aligned."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for n, row in enumerate(rows):
        cells = [row[0].ljust(widths[0])] + [
            c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)
        ]
        lines.append("  ".join(cells).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def say(text: str) -> None:
    """A timestamped progress line on stderr."""
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def print_check(ok: bool, problems: Sequence[str]) -> None:
    """The delivery check's verdict, with the first problems when it failed."""
    if ok:
        print("delivery check: OK, every message exactly once and in order")
        return
    print(f"delivery check: FAILED ({len(problems)} problem(s))")
    for p in problems[:30]:
        print(f"  {p}")

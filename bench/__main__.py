"""``redchat-bench``: measure redchat side by side with a naive baseline server.

    redchat-bench fanout --receivers 200 --senders 4 --messages 500
    redchat-bench fanout --rate-of-max 0.5          # latency at half the top speed
    redchat-bench direct --pairs 50 --messages 200
    redchat-bench connect --connections 1000 --unread 50
    redchat-bench idle --connections 10000 --gateways 1
    redchat-bench fanout --host 10.0.0.5 --port 8000 --no-baseline
    redchat-bench attacks                          # what hostile clients cost others
    redchat-bench requests                         # an HTTP POST /send vs a JSON-lines send
    redchat-bench shards                           # one Redis against clusters of 1-3 shards

``attacks``, ``requests`` and ``shards`` are commands of their own, each with its
own ``--help`` (bench/attacks.py, bench/requests.py, bench/shards.py): ``attacks``
measures latency, memory and stalls under attack on a deployment it starts;
``requests`` what an HTTP send costs against a JSON-lines one; ``shards`` fan-out
and direct messages on one redis-server and on Redis Clusters of 1, 2 and 3 shards,
with each shard's CPU. None has a baseline. The rest of this text is about the others.

By default it starts everything itself, on free ports in a temporary folder: a
redis-server, ``--gateways`` gateway processes sharing one port, and the baseline
(``bench.baseline``, a single-process in-memory broadcast server speaking the
same JSON lines). Each scenario runs on redchat, then on the baseline, ``--repeat``
times alternately; the table shows the median of each figure and redchat's ratio
to the baseline's, so results carry across machines. Every run checks that each
receiver got every message exactly once and in order; any loss, duplicate or
reordering prints the problem and exits 1. See docs/performance.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import sys
from collections.abc import Sequence
from typing import Any

from bench.load import SCENARIOS, Params, RunResult, run_scenario
from bench.report import fmt_value, machine, median_metrics, render_rows
from bench.servers import (
    BaselineProcess,
    External,
    RedchatDeployment,
    Target,
    raise_fd_limit,
    run_bench,
)

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="redchat-bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    d = Params()
    ap.add_argument(
        "scenario",
        choices=sorted(SCENARIOS),
        help="or `attacks`, `requests`, `shards` (each has its own --help)",
    )
    where = ap.add_argument_group("what to measure")
    where.add_argument("--gateways", type=int, default=2, help="gateway processes to start")
    where.add_argument("--host", help="bench a running deployment at this address instead")
    where.add_argument("--port", type=int, default=8000, help="its port (with --host)")
    where.add_argument(
        "--baseline",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also run the naive baseline server and report ratios to it",
    )
    where.add_argument(
        "--uvloop",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="servers (gateways, baseline) use uvloop if installed",
    )
    where.add_argument(
        "--gateway-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="extra argument for each started gateway (repeatable), e.g. --gateway-arg=--x=1",
    )
    where.add_argument("--repeat", type=int, default=1, help="runs per server, alternating")
    load = ap.add_argument_group("load")
    load.add_argument("--receivers", type=int, default=d.receivers, help="fanout receivers")
    load.add_argument("--senders", type=int, default=d.senders, help="fanout senders")
    load.add_argument("--messages", type=int, default=d.messages, help="messages per sender")
    load.add_argument("--pairs", type=int, default=d.pairs, help="direct: pairs of users")
    load.add_argument(
        "--connections", type=int, default=d.connections, help="connect/idle: connections"
    )
    load.add_argument("--unread", type=int, default=d.unread, help="connect: unread per user")
    load.add_argument("--rate", type=float, default=0.0, help="messages/s over all senders")
    load.add_argument(
        "--rate-of-max",
        type=float,
        default=0.0,
        metavar="F",
        help="first measure redchat's top speed, then run at F times it (e.g. 0.5)",
    )
    load.add_argument("--window", type=int, default=d.window, help="unacked sends per sender")
    load.add_argument(
        "--max-lag", type=int, default=d.max_lag, help="messages senders may lead receivers"
    )
    load.add_argument("--text-bytes", type=int, default=0, help="padding per message text")
    load.add_argument("--concurrency", type=int, default=d.concurrency, help="logins in flight")
    load.add_argument("--timeout", type=float, default=d.timeout_s, help="stall timeout, s")
    ap.add_argument("--json", action="store_true", help="print the results as JSON")
    return ap


def _describe(args: argparse.Namespace) -> str:
    match args.scenario:
        case "fanout":
            load = f"{args.receivers} receivers x {args.senders} senders x {args.messages} msgs"
        case "direct":
            load = f"{args.pairs} pairs x 2 x {args.messages} msgs"
        case "connect":
            load = f"{args.connections} logins, {args.unread} unread each"
        case _:
            load = f"{args.connections} idle connections"
    if args.rate:
        load += f", {args.rate:g} msgs/s"
    where = f"{args.host}:{args.port}" if args.host else f"{args.gateways} gateway(s)"
    loop = "uvloop" if args.uvloop else "asyncio"
    return f"{args.scenario}: {load}; redchat on {where}, {loop}, {args.repeat} run(s) each"


def _table(summary: dict[str, dict[str, float]], ratios: dict[str, float]) -> str:
    labels = list(summary)
    keys: list[str] = []
    for m in summary.values():
        keys += [k for k in m if k not in keys]
    rows = [["figure", *labels] + (["ratio"] if ratios else [])]
    for k in keys:
        row = [k] + [fmt_value(summary[lab].get(k)) for lab in labels]
        if ratios:
            row.append(f"{ratios[k]:.2f}x" if k in ratios else "")
        rows.append(row)
    return render_rows(rows)


async def _run(args: argparse.Namespace) -> dict[str, Any]:
    params = Params(
        receivers=args.receivers,
        senders=args.senders,
        messages=args.messages,
        pairs=args.pairs,
        connections=args.connections,
        unread=args.unread,
        rate=args.rate,
        window=args.window,
        max_lag=args.max_lag,
        concurrency=args.concurrency,
        timeout_s=args.timeout,
        text_bytes=args.text_bytes,
    )
    redchat: Target
    if args.host:
        redchat = External(args.host, args.port)
    else:
        redchat = RedchatDeployment(args.gateways, args.uvloop, args.gateway_arg)
    targets: list[Target] = [redchat]
    if args.baseline:
        targets.append(BaselineProcess(args.uvloop))
    results: dict[str, list[RunResult]] = {t.label: [] for t in targets}
    run_tag = secrets.token_hex(3)
    try:
        for t in targets:
            await asyncio.to_thread(t.start)
        if args.rate_of_max and args.scenario in ("fanout", "direct"):
            probe = await run_scenario(redchat, args.scenario, f"x{run_tag}p", params)
            top = probe.metrics.get("deliveries_per_s", 0.0)
            per_msg = args.receivers if args.scenario == "fanout" else 1
            params.rate = args.rate = round(args.rate_of_max * top / per_msg, 1)
            if not args.json:
                print(f"top speed {top:,.0f} deliveries/s; now at {params.rate:g} msgs/s")
        for i in range(args.repeat):
            for t in targets:
                tag = f"x{run_tag}{i}{t.label[0]}"
                results[t.label].append(await run_scenario(t, args.scenario, tag, params))
    finally:
        for t in targets:
            await asyncio.to_thread(t.stop)
    summary = {label: median_metrics([r.metrics for r in rs]) for label, rs in results.items()}
    ratios: dict[str, float] = {}
    if "baseline" in summary:
        base = summary["baseline"]
        for k, v in summary["redchat"].items():
            if base.get(k):
                ratios[k] = round(v / base[k], 3)
    problems = [f"{r.target}: {p}" for rs in results.values() for r in rs for p in r.problems]
    return {
        "scenario": args.scenario,
        "description": _describe(args),
        "params": vars(params),
        "machine": machine(),
        "runs": {label: [r.metrics for r in rs] for label, rs in results.items()},
        "summary": summary,
        "ratio": ratios,
        "ok": not problems,
        "problems": problems,
    }


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["attacks"]:
        from bench.attacks import main as attacks_main

        return attacks_main(argv[1:])
    if argv[:1] == ["requests"]:
        from bench.requests import main as requests_main

        return requests_main(argv[1:])
    if argv[:1] == ["shards"]:
        from bench.shards import main as shards_main

        return shards_main(argv[1:])
    args = _parser().parse_args(argv)
    if args.host and args.scenario == "idle":
        print("redchat-bench: idle needs the process ids; run without --host", file=sys.stderr)
    limit = raise_fd_limit()
    need = args.connections + args.receivers + 2 * args.pairs + 100
    if limit < need:
        print(f"redchat-bench: open-file limit {limit} < {need}; raise ulimit -n", file=sys.stderr)
        return 2
    report = run_bench(_run(args))
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"\nredchat-bench {report['description']}")
        m = report["machine"]
        print(f"machine: {m['cpu']}, {m['cores']} cores; Python {m['python']}, Redis {m['redis']}")
        print()
        print(_table(report["summary"], report["ratio"]))
        print()
        if report["ok"]:
            print("delivery check: OK, every message exactly once and in order")
        else:
            print(f"delivery check: FAILED ({len(report['problems'])} problem(s))")
            for p in report["problems"][:30]:
                print(f"  {p}")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())

"""``redchat-bench``: measure redchat side by side with a naive baseline server.

    redchat-bench fanout --receivers 200 --senders 4 --messages 500
    redchat-bench fanout --rate-of-max 0.5          # latency at half the top speed
    redchat-bench direct --pairs 50 --messages 200
    redchat-bench connect --connections 1000 --unread 50
    redchat-bench idle --connections 10000 --gateways 1 --rooms 5   # redchat only
    redchat-bench fanout --client-shape streams --repeat 3  # readline clients, 50 in flight
    redchat-bench compare --repeat 3               # fan-out with both client shapes
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

Two client shapes for ``fanout`` and ``direct`` (``--client-shape``): ``lean``, the
default, bare asyncio protocols that scan whole socket chunks with one regex
(bench/load.py; window 32, no padding), and ``streams``, asyncio stream clients
reading with ``readline`` and ``json.loads`` per line, as an outside load generator
writes them (bench/streams.py; window 50, texts padded to 40 bytes). ``compare``
runs fan-out with both shapes against the baseline, alternating every run, in one
invocation: one table per shape and one of both side by side.
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
from bench.report import fmt_value, machine, median_metrics, print_check, render_rows
from bench.servers import (
    BaselineProcess,
    External,
    RedchatDeployment,
    Target,
    raise_fd_limit,
    run_bench,
)

__all__ = ["main"]

SHAPES = ("lean", "streams")
# Per client shape: the window and text size when not given.
SHAPE_DEFAULTS: dict[str, dict[str, int]] = {
    "lean": {"window": 32, "text_bytes": 0},
    "streams": {"window": 50, "text_bytes": 40},
}


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="redchat-bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    d = Params()
    ap.add_argument(
        "scenario",
        choices=[*sorted(SCENARIOS), "compare"],
        help="or `attacks`, `requests`, `shards` (each has its own --help); "
        "`compare` is fanout with both client shapes",
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
        "--client-loop",
        choices=("uvloop", "asyncio"),
        default="uvloop",
        help="the event loop of the bench's own clients (uvloop if installed)",
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
    load.add_argument(
        "--client-shape",
        choices=SHAPES,
        default="lean",
        help="fanout/direct clients: lean protocols (default) or asyncio streams with readline",
    )
    load.add_argument("--window", type=int, help="unacked sends per sender (lean: 32, streams: 50)")
    load.add_argument(
        "--max-lag", type=int, default=d.max_lag, help="messages senders may lead receivers"
    )
    load.add_argument(
        "--text-bytes",
        type=int,
        help="pad message texts with dots to this size (lean: 0 = no padding, streams: 40)",
    )
    load.add_argument(
        "--rooms",
        type=int,
        default=d.member_rooms,
        metavar="N",
        help="idle: each user is in N public rooms (redchat only: no baseline)",
    )
    load.add_argument(
        "--room-pool", type=int, default=d.room_pool, help="idle: public rooms made (with --rooms)"
    )
    load.add_argument("--concurrency", type=int, default=d.concurrency, help="logins in flight")
    load.add_argument("--timeout", type=float, default=d.timeout_s, help="stall timeout, s")
    ap.add_argument("--json", action="store_true", help="print the results as JSON")
    return ap


def _shapes(args: argparse.Namespace) -> list[str]:
    """The client shapes this invocation runs: both for ``compare``."""
    return list(SHAPES) if args.scenario == "compare" else [args.client_shape]


def _scenario(args: argparse.Namespace) -> str:
    return "fanout" if args.scenario == "compare" else str(args.scenario)


def _with_baseline(args: argparse.Namespace) -> bool:
    """The baseline runs unless told not to, or for idle users in rooms (it has none)."""
    return bool(args.baseline) and not (args.scenario == "idle" and args.rooms)


def _shape_text(args: argparse.Namespace, shape: str) -> str:
    window = args.window if args.window is not None else SHAPE_DEFAULTS[shape]["window"]
    size = args.text_bytes if args.text_bytes is not None else SHAPE_DEFAULTS[shape]["text_bytes"]
    return f"{shape} clients (window {window}" + (f", texts of {size} bytes)" if size else ")")


def _describe(args: argparse.Namespace) -> str:
    match _scenario(args):
        case "fanout":
            load = f"{args.receivers} receivers x {args.senders} senders x {args.messages} msgs"
        case "direct":
            load = f"{args.pairs} pairs x 2 x {args.messages} msgs"
        case "connect":
            load = f"{args.connections} logins, {args.unread} unread each"
        case _:
            load = f"{args.connections} idle connections"
            if args.rooms:
                load += f", each user in {args.rooms} of {max(args.room_pool, args.rooms)} rooms"
    if args.rate:
        load += f", {args.rate:g} msgs/s"
    if _scenario(args) in ("fanout", "direct"):
        load += "; " + " and ".join(_shape_text(args, s) for s in _shapes(args))
    where = f"{args.host}:{args.port}" if args.host else f"{args.gateways} gateway(s)"
    loop = ("uvloop" if args.uvloop else "asyncio") + f" servers, {args.client_loop} clients"
    against = "" if _with_baseline(args) else ", no baseline"
    return (
        f"{args.scenario}: {load}; redchat on {where}, {loop}{against}, {args.repeat} run(s) each"
    )


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


SIDE_BY_SIDE: tuple[str, ...] = (
    "deliveries_per_s",
    "server_cpu_us_per_delivery",
    "latency_p50_ms",
    "latency_p99_ms",
    "cpu_s.bench",
)


def _side_by_side(shapes: dict[str, dict[str, Any]]) -> str:
    """One row per headline figure; per shape, redchat, the baseline and the ratio."""
    head = ["figure"]
    for shape in shapes:
        head += [f"{shape} redchat", f"{shape} baseline", "ratio"]
    rows = [head]
    for k in SIDE_BY_SIDE:
        row = [k]
        for sh in shapes.values():
            ratio = sh["ratio"].get(k)
            row += [
                fmt_value(sh["summary"].get("redchat", {}).get(k)),
                fmt_value(sh["summary"].get("baseline", {}).get(k)),
                "" if ratio is None else f"{ratio:.2f}x",
            ]
        rows.append(row)
    return render_rows(rows)


def _params(args: argparse.Namespace, shape: str) -> Params:
    given = {"window": args.window, "text_bytes": args.text_bytes}
    per_shape = {k: v if v is not None else SHAPE_DEFAULTS[shape][k] for k, v in given.items()}
    return Params(
        receivers=args.receivers,
        senders=args.senders,
        messages=args.messages,
        pairs=args.pairs,
        connections=args.connections,
        unread=args.unread,
        rate=args.rate,
        max_lag=args.max_lag,
        concurrency=args.concurrency,
        timeout_s=args.timeout,
        client_shape=shape,
        member_rooms=args.rooms,
        room_pool=args.room_pool,
        **per_shape,
    )


def _summarize(results: dict[str, list[RunResult]]) -> dict[str, Any]:
    """Medians per target, redchat's ratios to the baseline's, and every run."""
    summary = {label: median_metrics([r.metrics for r in rs]) for label, rs in results.items()}
    ratios: dict[str, float] = {}
    if "baseline" in summary:
        base = summary["baseline"]
        for k, v in summary["redchat"].items():
            if base.get(k):
                ratios[k] = round(v / base[k], 3)
    runs = {label: [r.metrics for r in rs] for label, rs in results.items()}
    return {"summary": summary, "ratio": ratios, "runs": runs}


async def _run(args: argparse.Namespace) -> dict[str, Any]:
    shapes = _shapes(args)
    scenario = _scenario(args)
    params = {shape: _params(args, shape) for shape in shapes}
    redchat: Target
    if args.host:
        redchat = External(args.host, args.port)
    else:
        redchat = RedchatDeployment(args.gateways, args.uvloop, args.gateway_arg)
    targets: list[Target] = [redchat]
    if _with_baseline(args):
        # The same event loop as the gateways: uvloop only when they run on it.
        targets.append(BaselineProcess(args.uvloop))
    results = {shape: {t.label: list[RunResult]() for t in targets} for shape in shapes}
    run_tag = secrets.token_hex(3)
    try:
        for t in targets:
            await asyncio.to_thread(t.start)
        if args.rate_of_max and scenario in ("fanout", "direct"):
            p = params[shapes[0]]
            probe = await run_scenario(redchat, scenario, f"x{run_tag}p", p)
            top = probe.metrics.get("deliveries_per_s", 0.0)
            per_msg = args.receivers if scenario == "fanout" else 1
            p.rate = args.rate = round(args.rate_of_max * top / per_msg, 1)
            if not args.json:
                print(f"top speed {top:,.0f} deliveries/s; now at {p.rate:g} msgs/s")
        # Round after round, each shape on each server in turn: side by side.
        for i in range(args.repeat):
            for shape in shapes:
                for t in targets:
                    tag = f"x{run_tag}{i}{shape[0]}{t.label[0]}"
                    run = await run_scenario(t, scenario, tag, params[shape])
                    results[shape][t.label].append(run)
    finally:
        for t in targets:
            await asyncio.to_thread(t.stop)
    by_shape = {shape: _summarize(rs) for shape, rs in results.items()}
    problems = [
        f"{shape} {r.target}: {p}" if len(shapes) > 1 else f"{r.target}: {p}"
        for shape, rs in results.items()
        for runs in rs.values()
        for r in runs
        for p in r.problems
    ]
    gateway_logs = redchat.logs() if problems and isinstance(redchat, RedchatDeployment) else ""
    report: dict[str, Any] = {
        "scenario": args.scenario,
        "description": _describe(args),
        "params": {shape: vars(p) for shape, p in params.items()},
        "machine": machine(),
    }
    if args.scenario == "compare":
        report["shapes"] = by_shape
        report["summary"] = {shape: b["summary"] for shape, b in by_shape.items()}
        report["ratio"] = {shape: b["ratio"] for shape, b in by_shape.items()}
    else:
        report |= by_shape[shapes[0]]
        report["params"] = vars(params[shapes[0]])
    return report | {"ok": not problems, "problems": problems, "gateway_logs": gateway_logs}


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
    if "streams" in _shapes(args) and (args.rate or args.rate_of_max):
        print(
            "redchat-bench: the streams shape has no --rate: its window paces it", file=sys.stderr
        )
        return 2
    limit = raise_fd_limit()
    need = args.connections + args.receivers + 2 * args.pairs + 100
    if limit < need:
        print(f"redchat-bench: open-file limit {limit} < {need}; raise ulimit -n", file=sys.stderr)
        return 2
    report = run_bench(_run(args), uvloop=args.client_loop == "uvloop")
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"\nredchat-bench {report['description']}")
        m = report["machine"]
        print(f"machine: {m['cpu']}, {m['cores']} cores; Python {m['python']}, Redis {m['redis']}")
        print()
        if args.scenario == "compare":
            for shape, b in report["shapes"].items():
                print(_shape_text(args, shape) + ":")
                print(_table(b["summary"], b["ratio"]))
                print()
            print(f"both shapes, medians of {args.repeat} run(s) each:")
            print(_side_by_side(report["shapes"]))
        else:
            print(_table(report["summary"], report["ratio"]))
        print()
        print_check(report["ok"], report["problems"])
        if not report["ok"] and report["gateway_logs"]:
            print(report["gateway_logs"][-3000:])
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())

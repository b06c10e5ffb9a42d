"""``redchat-bench shards``: the same load on one Redis and on Redis Clusters of 1, 2, 3 shards.

    redchat-bench shards                          # the defaults: a few minutes on 2 cores
    redchat-bench shards --shards 0,3 --repeat 1  # one redis-server against 3 shards
    redchat-bench shards --scenarios direct --pairs 50 --json

In one invocation it starts, side by side, a deployment per ``--shards`` entry:
0 is the usual single redis-server, N a Redis Cluster of N primaries without
replicas (``gateway.embedded_redis.start_redis_cluster``). Each has ``--gateways``
gateway processes (``--redis-cluster`` on a cluster) sharing one free port, as
``bench.servers.RedchatDeployment`` starts them. After a short unmeasured run of
each scenario on each (the gateways load scripts and connect to every node),
``--repeat`` rounds run every scenario on every deployment in turn, each round
starting with the next deployment; the tables show the medians:

- ``fanout``: ``--receivers`` users in ``#general``, ``--senders`` sending
  ``--messages`` each. ``#general`` is one conversation: on a cluster its stream
  and its channel live on one shard, which does the work of every message; the
  others only see what is per user (the senders' logs, the receivers' cursors).
- ``direct``: ``--pairs`` pairs of users writing ``--dm-messages`` each to their
  partner. Every pair is its own conversation and each user has their own
  channel, so the work spreads over the shards.
- ``rooms``: fan-out spread over ``--rooms`` public rooms, one sender each
  (``--room-messages`` each), the receivers split over them. The room names are
  picked so that their slots spread evenly over 1, 2 or 3 shards (6 rooms: 3 + 3
  on two shards, 2 + 2 + 2 on three). A receiver hears one room, so a message
  has ``receivers / rooms`` deliveries, not ``receivers``.

Figures per deployment and scenario, over the send phase only (logins and room
joins are not counted): deliveries/s; server CPU µs per delivery (every gateway
and every Redis process, from /proc/<pid>/stat); the gateways' CPU seconds; each
Redis process's CPU seconds (per shard); and each shard's CPU ms per 1000
deliveries, with the busiest shard's and the sum over the shards. On a machine
with few cores the totals need not grow with shards (the gateways and this
process share the same cores); the per-shard figures show how the work of Redis
divides.

Every run checks that each receiver got every message exactly once and in order
(as every ``redchat-bench`` scenario does); any problem is printed and the command
exits 1. Lines in the gateways' logs (started with ``--log-level WARNING``) are
printed too, but do not fail the run. Run it alone:
``flock /tmp/redchat-bench.lock redchat-bench shards``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Final

from bench.load import Params, run_scenario
from bench.report import fmt_value, machine, median_metrics, print_check, render_rows, say
from bench.servers import RedchatDeployment, raise_fd_limit, run_bench
from gateway.embedded_redis import find_cluster_redis_server

__all__ = ["main"]

SCENARIOS: Final = ("fanout", "direct", "rooms")
LOG_LINES_SHOWN: Final = 10
WARM_UP_MESSAGES: Final = 20
PER_1K: Final = "redis_ms_per_1k."  # + a Redis process's name: its CPU ms per 1000 deliveries


@dataclass
class Options:
    shards: tuple[int, ...] = (0, 1, 2, 3)
    scenarios: tuple[str, ...] = SCENARIOS
    gateways: int = 2
    uvloop: bool = True
    gateway_args: list[str] = field(default_factory=list)
    repeat: int = 3
    load: Params = field(
        default_factory=lambda: Params(receivers=100, senders=4, messages=500, pairs=20)
    )
    dm_messages: int = 300
    room_messages: int = 1000


def setup_name(shards: int) -> str:
    if shards == 0:
        return "redis-server"
    return f"cluster, {shards} shard" + ("s" if shards > 1 else "")


def params_for(opts: Options, scenario: str) -> Params:
    if scenario == "direct":
        return replace(opts.load, messages=opts.dm_messages)
    if scenario == "rooms":
        return replace(opts.load, messages=opts.room_messages)
    return opts.load


def describe(opts: Options, scenario: str) -> str:
    p = params_for(opts, scenario)
    match scenario:
        case "fanout":
            return (
                f"fanout: {p.receivers} receivers x {p.senders} senders x {p.messages} msgs,"
                " all in #general (one conversation, so on one shard of a cluster)"
            )
        case "direct":
            return (
                f"direct: {p.pairs} pairs x 2 x {p.messages} msgs"
                " (a conversation per pair, spread over the shards)"
            )
        case _:
            return (
                f"rooms: {p.rooms} public rooms x 1 sender x {p.messages} msgs,"
                f" {p.receivers} receivers split over them (rooms spread over the shards)"
            )


def shard_figures(metrics: dict[str, float]) -> dict[str, float]:
    """From a run's figures (``cpu_s.<process>``): the gateways' and Redis's CPU
    seconds, and each Redis process's CPU ms per 1000 deliveries."""
    delivered = max(1.0, metrics.get("deliveries", 0.0))
    gateways = {k: v for k, v in metrics.items() if k.startswith("cpu_s.gw")}
    redis = {k.removeprefix("cpu_s."): v for k, v in metrics.items() if k.startswith("cpu_s.redis")}
    return {
        "total_cpu_s.gateways": round(sum(gateways.values()), 2),
        "total_cpu_s.redis": round(sum(redis.values()), 2),
    } | {f"{PER_1K}{n}": round(v * 1e6 / delivered, 2) for n, v in redis.items()}


def summarize(runs: list[dict[str, float]]) -> dict[str, float]:
    """The median of each figure over the runs; then, of the shards' medians per 1000
    deliveries, the busiest shard's and their sum."""
    out = median_metrics(runs)
    per_k = [v for k, v in out.items() if k.startswith(PER_1K)]
    out["busiest_shard_ms_per_1k"] = max(per_k, default=0.0)
    out["all_shards_ms_per_1k"] = round(sum(per_k), 2)
    return out


def _gateway_log_lines(dep: RedchatDeployment) -> list[str]:
    lines = []
    for path in sorted(dep.dir.glob("gw*.log")):
        text = path.read_text(errors="replace")
        lines += [f"{path.stem}: {ln}" for ln in text.splitlines() if ln.strip()]
    return lines


async def run(opts: Options) -> dict[str, Any]:
    deps = {
        setup_name(n): RedchatDeployment(opts.gateways, opts.uvloop, opts.gateway_args, shards=n)
        for n in opts.shards
    }
    runs: dict[str, dict[str, list[dict[str, float]]]] = {
        name: {s: [] for s in opts.scenarios} for name in deps
    }
    problems: list[str] = []
    logs: dict[str, list[str]] = {}
    run_tag = secrets.token_hex(3)
    try:
        # All at once: a cluster takes seconds to agree it is up.
        started = await asyncio.gather(
            *(asyncio.to_thread(dep.start) for dep in deps.values()), return_exceptions=True
        )
        for error in started:
            if isinstance(error, BaseException):
                raise error
        say(f"started {', '.join(deps)}; {opts.gateways} gateway(s) each")
        # A short unmeasured run of each scenario first: the gateways' first sends
        # load scripts, fill caches and open connections (to every node of a cluster).
        for name, dep in deps.items():
            for scenario in opts.scenarios:
                load = params_for(opts, scenario)
                warm = replace(load, messages=min(load.messages, WARM_UP_MESSAGES))
                tag = f"w{run_tag}{dep.shards}{scenario[0]}"
                result = await run_scenario(dep, scenario, tag, warm)
                problems += [f"{name}, {scenario} (warm-up): {p}" for p in result.problems]
        say("warmed up")
        for r in range(opts.repeat):
            # Each round starts with a different deployment, so drift spreads over them.
            order = list(deps.items())
            order = order[r % len(order) :] + order[: r % len(order)]
            for name, dep in order:
                for scenario in opts.scenarios:
                    tag = f"x{run_tag}{r}-{dep.shards}{scenario[0]}"
                    result = await run_scenario(dep, scenario, tag, params_for(opts, scenario))
                    metrics = result.metrics | shard_figures(result.metrics)
                    runs[name][scenario].append(metrics)
                    problems += [f"{name}, {scenario}: {p}" for p in result.problems]
                    say(
                        f"run {r + 1}/{opts.repeat} {name} {scenario}:"
                        f" {metrics.get('deliveries_per_s', 0):,.0f} deliveries/s"
                        + (f", {len(result.problems)} problem(s)" if result.problems else "")
                    )
    except BaseException:
        for name, dep in deps.items():
            if text := dep.logs().strip():
                print(f"gateway logs of {name}:\n{text}", file=sys.stderr)
        raise
    finally:
        for name, dep in deps.items():
            logs[name] = _gateway_log_lines(dep)
            await asyncio.to_thread(dep.stop)
    summary = {name: {s: summarize(rs) for s, rs in per.items()} for name, per in runs.items()}
    return {
        "options": asdict(opts),
        "machine": machine(),
        "descriptions": {s: describe(opts, s) for s in opts.scenarios},
        "runs": runs,
        "summary": summary,
        "ok": not problems,
        "problems": problems,
        "gateway_logs": logs,
    }


def _per_shard(m: dict[str, float], prefix: str) -> str:
    values = [v for k, v in m.items() if k.startswith(prefix)]
    return " / ".join(f"{v:.2f}" for v in values) if values else "-"


def table(summary: dict[str, dict[str, dict[str, float]]], scenario: str) -> str:
    rows = [
        [
            "setup",
            "deliveries/s",
            "server µs/delivery",
            "gateways CPU s",
            "Redis CPU s per shard",
            "Redis ms/1k per shard",
            "busiest",
            "sum",
        ]
    ]
    for name, per in summary.items():
        m = per.get(scenario, {})
        rows.append(
            [
                name,
                fmt_value(m.get("deliveries_per_s")),
                fmt_value(m.get("server_cpu_us_per_delivery")),
                fmt_value(m.get("total_cpu_s.gateways")),
                _per_shard(m, "cpu_s.redis"),
                _per_shard(m, PER_1K),
                fmt_value(m.get("busiest_shard_ms_per_1k")),
                fmt_value(m.get("all_shards_ms_per_1k")),
            ]
        )
    return render_rows(rows)


def _list(kind: Callable[[str], Any], allowed: Sequence[Any] | None = None) -> Callable[[str], Any]:
    def parse(raw: str) -> tuple[Any, ...]:
        try:
            values = tuple(kind(x.strip()) for x in raw.split(",") if x.strip())
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from exc
        if not values:
            raise argparse.ArgumentTypeError("give at least one")
        if allowed is not None and (unknown := [v for v in values if v not in allowed]):
            raise argparse.ArgumentTypeError(f"not one of {', '.join(allowed)}: {unknown}")
        if len(set(values)) != len(values):
            raise argparse.ArgumentTypeError("each only once")
        return values

    return parse


def _shard_count(raw: str) -> int:
    n = int(raw)
    if not 0 <= n <= 16:
        raise ValueError(f"shards must be 0 (one redis-server) to 16: {raw}")
    return n


def _parser() -> argparse.ArgumentParser:
    d = Options()
    p = d.load
    ap = argparse.ArgumentParser(
        prog="redchat-bench shards",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--json", action="store_true", help="print the results as JSON")
    g = ap.add_argument_group("deployments")
    g.add_argument(
        "--shards",
        type=_list(_shard_count),
        default=d.shards,
        metavar="N,..",
        help="one deployment per entry: 0 is one redis-server, N a cluster of N primaries"
        " (default: 0,1,2,3)",
    )
    g.add_argument(
        "--gateways", type=int, default=d.gateways, help="gateways per deployment (%(default)s)"
    )
    g.add_argument("--uvloop", action=argparse.BooleanOptionalAction, default=d.uvloop)
    g.add_argument(
        "--gateway-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="extra argument for each started gateway (repeatable)",
    )
    g.add_argument(
        "--repeat",
        type=int,
        default=d.repeat,
        help="runs per deployment; the median is shown (%(default)s)",
    )
    load = ap.add_argument_group("load")
    load.add_argument(
        "--scenarios",
        type=_list(str, SCENARIOS),
        default=d.scenarios,
        metavar="S,..",
        help=f"of {','.join(SCENARIOS)} (default: all)",
    )
    load.add_argument(
        "--receivers", type=int, default=p.receivers, help="fanout, rooms (%(default)s)"
    )
    load.add_argument("--senders", type=int, default=p.senders, help="fanout (%(default)s)")
    load.add_argument(
        "--messages", type=int, default=p.messages, help="fanout: per sender (%(default)s)"
    )
    load.add_argument(
        "--rooms", type=int, default=p.rooms, help="rooms: how many, a sender each (%(default)s)"
    )
    load.add_argument(
        "--pairs", type=int, default=p.pairs, help="direct: pairs of users (%(default)s)"
    )
    load.add_argument(
        "--dm-messages", type=int, default=d.dm_messages, help="direct: per user (%(default)s)"
    )
    load.add_argument(
        "--room-messages", type=int, default=d.room_messages, help="rooms: per sender (%(default)s)"
    )
    load.add_argument(
        "--window", type=int, default=p.window, help="unacked sends per sender (%(default)s)"
    )
    load.add_argument(
        "--max-lag",
        type=int,
        default=p.max_lag,
        help="messages senders may lead receivers (%(default)s)",
    )
    load.add_argument(
        "--timeout", type=float, default=p.timeout_s, help="stall timeout, s (%(default)s)"
    )
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    opts = Options(
        shards=args.shards,
        scenarios=args.scenarios,
        gateways=args.gateways,
        uvloop=args.uvloop,
        gateway_args=args.gateway_arg,
        repeat=max(1, args.repeat),
        load=Params(
            receivers=args.receivers,
            senders=args.senders,
            messages=args.messages,
            rooms=max(1, args.rooms),
            pairs=args.pairs,
            window=args.window,
            max_lag=args.max_lag,
            timeout_s=args.timeout,
        ),
        dm_messages=args.dm_messages,
        room_messages=args.room_messages,
    )
    if any(opts.shards) and find_cluster_redis_server() is None:
        print(
            "redchat-bench shards: a Redis Cluster needs redis-server 7 or newer on PATH;"
            " run with --shards 0 for the single redis-server only",
            file=sys.stderr,
        )
        return 2
    limit = raise_fd_limit()
    need = args.receivers + max(args.senders, args.rooms) + 2 * args.pairs + 100
    if limit < need:
        print(f"redchat-bench: open-file limit {limit} < {need}; raise ulimit -n", file=sys.stderr)
        return 2
    report = run_bench(run(opts))
    if args.json:
        print(json.dumps(report, indent=2))
        return 0 if report["ok"] else 1
    m = report["machine"]
    print(
        f"\nredchat-bench shards: {opts.gateways} gateway(s) per deployment,"
        f" {'uvloop' if opts.uvloop else 'asyncio'}, median of {opts.repeat} run(s);"
        " CPU over the send phase"
    )
    print(f"machine: {m['cpu']}, {m['cores']} cores; Python {m['python']}, Redis {m['redis']}")
    for scenario in opts.scenarios:
        print(f"\n{report['descriptions'][scenario]}\n")
        print(table(report["summary"], scenario))
    print()
    for name, lines in report["gateway_logs"].items():
        if lines:
            print(f"gateway log lines on {name}: {len(lines)}")
            for ln in lines[:LOG_LINES_SHOWN]:
                print(f"  {ln[:300]}")
    print_check(report["ok"], report["problems"])
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())

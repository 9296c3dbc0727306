"""Media-path capacity: N emulated Twilio calls against each side (bench/sides.py), per N.

For each side and each N: start the server (a fresh process, or supervisor and workers, per N;
one process on core 0, `--workers 2` on both cores), start N callers in a separate process on
core 1 (with the fake OpenAI server), arrivals spread over --ramp-s, a steady window of
--steady-s, departures spread over --depart-s. Figures per N: server CPU-seconds per
call-minute and RSS per call in the steady window (every process of the side), the callers'
own CPU, media wire->pipeline latency from the probe, p99 lateness (steady, arrivals,
departures), frames dropped, and for `voicecli serve` sides the calls each worker carried.
Pass = steady p99 lateness <= 40 ms, nothing dropped, no call lost. Each side's N values are a
list, or `search` (the default): the largest passing N, by growth then bisection (search.py).

    python bench/capacity.py --voicecli 6,8,10 --baseline 4,6 --workers1 '' --workers2 '' [--steady-s 15]
    python bench/capacity.py --baseline search --voicecli '' --workers1 search --workers2 search
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench import sides
from bench.common import (
    BENCH_DIR,
    CLIENT_CPU,
    PYTHON,
    fmt,
    free_port,
    pct,
    stop,
    table,
    tree_cpu_seconds,
    tree_rss_mb,
    wait_http,
)
from bench.search import capacity_search

LATENESS_BAR_MS = 40.0
SERVERS = tuple(sides.SIDES)
# Where each side's search starts when nothing measured in this run says better.
SEARCH_START = {"baseline": 4, "voicecli": 8, "workers1": 8, "workers2": 16}


class FakeOpenAI:
    """The fake OpenAI-compatible server, on the callers' core, for the whole run."""

    def __init__(self, logs: Path):
        self.port = free_port()
        self.log = open(logs / "fake_openai.log", "w")
        self.proc = subprocess.Popen(
            [PYTHON, str(BENCH_DIR / "fake_openai.py"), "--port", str(self.port), "--cpu", str(CLIENT_CPU)],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        wait_http(f"{self.url_root}/healthz", proc=self.proc)

    @property
    def url_root(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        return f"{self.url_root}/v1"

    def close(self) -> None:
        stop(self.proc)
        self.log.close()


def _cpu_between(before: dict[int, float], after: dict[int, float]) -> float:
    # Processes alive at both readings (a worker replaced mid-window would only count in part).
    return sum(after[pid] - before[pid] for pid in before.keys() & after.keys())


def run_one(server: str, n: int, fake: FakeOpenAI, args: argparse.Namespace, logs: Path) -> dict[str, Any]:
    """One server (a fresh process, or supervisor and workers), N calls: the figures for that N."""
    log = open(logs / f"{server}_{n}.log", "w")
    try:
        srv = sides.start(server, free_port(), fake.base_url, log, args.log_level)
    except BaseException:
        log.close()
        raise
    url = srv.url
    try:
        srv.wait_ready(sides.WORKERS.get(server, 1))
        time.sleep(1.0)
        idle_rss = tree_rss_mb(srv.proc.pid)
        start = time.monotonic() + 1.5
        last_arrival = start + (n - 1) * args.ramp_s / n
        steady = (last_arrival + args.settle_s, last_arrival + args.settle_s + args.steady_s)
        out = logs / f"callers_{server}_{n}.json"
        callers = subprocess.Popen(
            [
                PYTHON,
                str(BENCH_DIR / "callers.py"),
                "--url",
                url,
                "--n",
                str(n),
                "--start-at",
                str(start),
                "--ramp-s",
                str(args.ramp_s),
                "--window",
                str(steady[0]),
                str(steady[1]),
                "--depart-at",
                str(steady[1]),
                "--depart-s",
                str(args.depart_s),
                "--cpu",
                str(CLIENT_CPU),
                "--out",
                str(out),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        time.sleep(max(0.0, steady[0] - 0.5 - time.monotonic()))
        srv.reset_probe()
        time.sleep(max(0.0, steady[0] - time.monotonic()))
        pids = srv.pids()
        cpu0, t0 = tree_cpu_seconds(pids), time.monotonic()
        load0 = tree_cpu_seconds([callers.pid, fake.proc.pid])
        rss = []
        while time.monotonic() < steady[1]:
            rss.append(tree_rss_mb(srv.proc.pid))
            time.sleep(min(1.0, max(0.0, steady[1] - time.monotonic())))
        cpu1, t1 = tree_cpu_seconds(pids), time.monotonic()
        load1 = tree_cpu_seconds([callers.pid, fake.proc.pid])
        callers.wait(timeout=args.ramp_s + args.depart_s + args.steady_s + 120)
        probe = srv.probe(steady[0], steady[1])
        result = json.loads(out.read_text())
        spread = srv.spread(n)
    finally:
        srv.close()
        log.close()
    server_cpu, load_cpu = _cpu_between(cpu0, cpu1), _cpu_between(load0, load1)
    busy = server_cpu / (t1 - t0)
    peak_rss = max(rss) if rss else float("nan")
    dropped = result["sent_in_steady"] - probe["reached"]
    late = result["lateness_steady"]["p99"]
    ok = result["connected"] == n and not result["failures"] and dropped == 0 and late <= LATENESS_BAR_MS
    return {
        "server": server,
        "n": n,
        "ok": ok,
        "cpu_pct": busy * 100,
        "cpu_s_per_call_min": busy * 60 / n,
        "idle_rss_mb": idle_rss,
        "rss_mb": peak_rss,
        "rss_per_call_mb": (peak_rss - idle_rss) / n,
        "wire_p50_ms": pct(probe["wire_ms"], 50),
        "wire_p99_ms": pct(probe["wire_ms"], 99),
        "handoff_p50_ms": pct(probe["handoff_ms"], 50),
        "handoff_p99_ms": pct(probe["handoff_ms"], 99),
        "late_steady_p99_ms": late,
        "late_arrivals_p99_ms": result["lateness_arrivals"]["p99"],
        "late_departures_p99_ms": result["lateness_departures"]["p99"],
        "turn_steady_p50_ms": result["turn_steady"]["p50"],
        "gc_max_ms": probe["gc_max_ms"],
        "sent_in_steady": result["sent_in_steady"],
        "dropped": dropped,
        "connected": result["connected"],
        "failures": result["failures"][:5],
        "caller_lag_p99_ms": result["caller_lag_p99_ms"],
        "caller_cpu_s": result["caller_cpu_s"],
        # The callers and the fake OpenAI server share the machine: their CPU in the steady
        # window, as % of one core and as a share of all the CPU the run used.
        "load_cpu_pct": load_cpu / (t1 - t0) * 100,
        "load_cpu_share": load_cpu / (load_cpu + server_cpu) if load_cpu + server_cpu else float("nan"),
        "cores": sorted(srv.cores),
        "spread": spread,
    }


def failed_row(server: str, n: int, error: str) -> dict[str, Any]:
    """A run that could not be measured (the server did not start, say): a failure at this N."""
    nan = float("nan")
    row: dict[str, Any] = {key: nan for key in ROW_FIGURES}
    row.update(server=server, n=n, ok=False, dropped="-", failures=[error], spread=None, cores=[], connected=0)
    return row


ROW_FIGURES = (
    "cpu_pct",
    "cpu_s_per_call_min",
    "idle_rss_mb",
    "rss_mb",
    "rss_per_call_mb",
    "wire_p50_ms",
    "wire_p99_ms",
    "handoff_p50_ms",
    "handoff_p99_ms",
    "late_steady_p99_ms",
    "late_arrivals_p99_ms",
    "late_departures_p99_ms",
    "turn_steady_p50_ms",
    "gc_max_ms",
    "load_cpu_pct",
    "load_cpu_share",
    "caller_lag_p99_ms",
)


def capacity(rows: list[dict[str, Any]], server: str, reply_ms: float = math.inf) -> int:
    """Issue 6's capacity; with `reply_ms`, also replying within it (p50, caller's last word to reply)."""
    return max(
        (
            r["n"]
            for r in rows
            if r["server"] == server and r["ok"] and (reply_ms == math.inf or r["turn_steady_p50_ms"] <= reply_ms)
        ),
        default=0,
    )


def render(rows: list[dict[str, Any]]) -> str:
    headers = [
        "server",
        "cores",
        "N",
        "ok",
        "CPU % core",
        "CPU-s/call-min",
        "RSS MB (idle)",
        "RSS/call MB",
        "wire->pipeline p50/p99 ms",
        "handoff->pipeline p50/p99 ms",
        "lateness p99 steady",
        "arrivals",
        "departures",
        "turn p50 ms",
        "longest GC ms",
        "dropped",
        "callers CPU % core",
        "calls per worker",
    ]
    body = [
        [
            r["server"],
            ",".join(map(str, r["cores"])) or "-",
            r["n"],
            "yes" if r["ok"] else "NO",
            fmt(r["cpu_pct"], 0),
            fmt(r["cpu_s_per_call_min"], 2),
            f"{fmt(r['rss_mb'], 0)} ({fmt(r['idle_rss_mb'], 0)})",
            fmt(r["rss_per_call_mb"], 1),
            f"{fmt(r['wire_p50_ms'])}/{fmt(r['wire_p99_ms'])}",
            f"{fmt(r['handoff_p50_ms'])}/{fmt(r['handoff_p99_ms'])}",
            fmt(r["late_steady_p99_ms"], 0),
            fmt(r["late_arrivals_p99_ms"], 0),
            fmt(r["late_departures_p99_ms"], 0),
            fmt(r["turn_steady_p50_ms"], 0),
            fmt(r["gc_max_ms"], 0),
            r["dropped"],
            fmt(r["load_cpu_pct"], 0),
            spread_text(r["spread"]),
        ]
        for r in rows
    ]
    return table(headers, body)


def at_capacity(rows: list[dict[str, Any]], server: str, key: str) -> float:
    """One figure of `server`'s row at its capacity (NaN when no N passed)."""
    n = capacity(rows, server)
    hit = [r for r in rows if r["server"] == server and r["n"] == n]
    return hit[0][key] if hit else float("nan")


# A reply bound for a second capacity figure: the turn detector runs at low priority in voicecli,
# so a saturated core shows first as slower replies, not late audio.
REPLY_MS = 1000.0


def _ratio(a: float, b: float) -> float:
    return a / b if b and not math.isnan(b) else float("nan")


def ratios(cap: dict[str, int]) -> dict[str, float]:
    """Capacity ratios this run can give: voicecli and each workers side over the baseline,
    and two workers over one."""
    out = {}
    if "baseline" in cap:
        out = {f"{side}/baseline": _ratio(cap[side], cap["baseline"]) for side in cap if side != "baseline"}
    if "workers1" in cap and "workers2" in cap:
        out["workers2/workers1"] = _ratio(cap["workers2"], cap["workers1"])
    return out


def spread_text(spread: dict[str, int] | None) -> str:
    return " ".join(f"{k}:{v}" for k, v in spread.items()) if spread else "-"


def compare(rows: list[dict[str, Any]]) -> str:
    """Each measured side's capacity and its figures there, then the capacity ratios."""
    measured = [s for s in SERVERS if any(r["server"] == s for r in rows)]
    cap = {s: capacity(rows, s) for s in measured}

    def line(name: str, fn: Any) -> list[str]:
        return [name, *(fn(s) for s in measured)]

    body = [
        line("capacity, calls (steady p99 lateness <= 40 ms, nothing dropped)", lambda s: str(cap[s])),
        line(f"the same, replying within {REPLY_MS:.0f} ms (p50)", lambda s: str(capacity(rows, s, REPLY_MS))),
        line("first failing N tried", lambda s: str(first_fail(rows, s) or "-")),
        line("CPU-s per call-minute at capacity", lambda s: fmt(at_capacity(rows, s, "cpu_s_per_call_min"), 2)),
        line("server CPU at capacity, % of one core", lambda s: fmt(at_capacity(rows, s, "cpu_pct"), 0)),
        line("RSS per call at capacity, MB", lambda s: fmt(at_capacity(rows, s, "rss_per_call_mb"), 1)),
        line("callers + fake OpenAI at capacity: % of a core (share of all CPU)", lambda s: _load(rows, s)),
        line("calls per worker at capacity", lambda s: spread_text(at_capacity_row(rows, s).get("spread"))),
    ]
    out = [table(["", *measured], body)]
    ratio_rows = [[name, fmt(value, 2), RATIO_TARGETS.get(name, "")] for name, value in ratios(cap).items()]
    if ratio_rows:
        out += ["", table(["capacity ratio", "measured", "target"], ratio_rows)]
    return "\n".join(out)


def _load(rows: list[dict[str, Any]], server: str) -> str:
    share = 100 * at_capacity(rows, server, "load_cpu_share")
    return f"{fmt(at_capacity(rows, server, 'load_cpu_pct'), 0)} ({fmt(share, 0)} %)"


RATIO_TARGETS = {"voicecli/baseline": ">= 1.5", "workers2/workers1": ">= 1.5"}


def first_fail(rows: list[dict[str, Any]], server: str) -> int | None:
    """The smallest failing N tried above the capacity (what bounds the search)."""
    cap = capacity(rows, server)
    return min((r["n"] for r in rows if r["server"] == server and not r["ok"] and r["n"] > cap), default=None)


def at_capacity_row(rows: list[dict[str, Any]], server: str) -> dict[str, Any]:
    n = capacity(rows, server)
    return next((r for r in rows if r["server"] == server and r["n"] == n), {})


def _plan(value: str) -> tuple[str, list[int] | int | None]:
    """A side's N values: '' (skip), 'search' or 'search:START', or a comma-separated list."""
    value = value.strip()
    if not value:
        return "skip", None
    if value.startswith("search"):
        start = value.partition(":")[2]
        return "search", int(start) if start else None
    return "list", [int(x) for x in value.split(",") if x.strip()]


def _progress(row: dict[str, Any]) -> str:
    return (
        f"{row['server']:8} N={row['n']:3}  {'ok ' if row['ok'] else 'NO '} CPU {row['cpu_pct']:5.1f}%  "
        f"{row['cpu_s_per_call_min']:.2f} CPU-s/call-min  {row['rss_per_call_mb']:.1f} MB/call  "
        f"late p99 {row['late_steady_p99_ms']:.0f} ms (arr {row['late_arrivals_p99_ms']:.0f}, "
        f"dep {row['late_departures_p99_ms']:.0f})  wire p99 {row['wire_p99_ms']:.1f} ms  "
        f"dropped {row['dropped']}  failures {len(row['failures'])}  callers CPU {row['load_cpu_pct']:.0f}%  "
        f"per worker {spread_text(row['spread'])}"
        + (f"  ({row['failures'][0]})" if row["failures"] and row["connected"] != row["n"] else "")
    )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for side, about in sides.SIDES.items():
        parser.add_argument(
            f"--{side}",
            default="search",
            help=f"{about}: N values (comma-separated), 'search' or 'search:START' (default), '' to skip",
        )
    parser.add_argument("--grow", type=float, default=2.0, help="search: N grows by this until a failure")
    parser.add_argument(
        "--seeded-grow",
        type=float,
        default=1.25,
        help="search: the growth for a side started from another side's capacity in this run "
        "(workers1 from voicecli, workers2 from 1.5 x workers1)",
    )
    parser.add_argument("--resolution", type=int, default=1, help="search: stop when pass and fail are this close")
    parser.add_argument("--max-n", type=int, default=120, help="search: never try more calls than this")
    parser.add_argument("--ramp-s", type=float, default=10.0, help="arrivals spread over this (default 10 s)")
    parser.add_argument("--settle-s", type=float, default=3.0)
    parser.add_argument("--steady-s", type=float, default=20.0)
    parser.add_argument("--depart-s", type=float, default=10.0)
    parser.add_argument("--log-level", default="info", help="every server's log level (voicecli's default: info)")
    parser.add_argument("--out", type=Path, default=None, help="write the rows as JSON here")
    parser.add_argument("--voicecli-args", default="", help="extra flags for serve_voicecli.py, e.g. --as-committed")
    args = parser.parse_args(argv)
    sides.EXTRA_ARGS["voicecli"] = args.voicecli_args.split()
    logs = Path(tempfile.mkdtemp(prefix="voicecli-bench-logs-"))
    print(f"# capacity (logs in {logs})", flush=True)
    fake = FakeOpenAI(logs)
    rows: list[dict[str, Any]] = []
    searches: dict[str, list[tuple[int, bool]]] = {}

    def measure(server: str, n: int) -> bool:
        try:
            row = run_one(server, n, fake, args, logs)
        except sides.SideUnavailable:
            raise
        except Exception as exc:  # a side that cannot run fails this N; the others go on
            row = failed_row(server, n, f"{type(exc).__name__}: {exc}")
        rows.append(row)
        print(_progress(row), flush=True)
        return bool(row["ok"])

    skipped: dict[str, str] = {}

    def _measure_side(server: str, how: str, what: Any) -> None:
        if how == "list":
            for n in what:
                measure(server, n)
        elif how == "search":
            start, seeded = _seed(server, rows, what)
            grow = args.seeded_grow if seeded else args.grow
            _, searches[server] = capacity_search(
                lambda n: measure(server, n), start, grow=grow, resolution=args.resolution, max_n=args.max_n
            )

    try:
        for server in SERVERS:
            how, what = _plan(getattr(args, server))
            try:
                _measure_side(server, how, what)
            except sides.SideUnavailable as exc:
                print(f"{server:8} skipped: {exc}", flush=True)
                skipped[server] = str(exc)
    finally:
        fake.close()
    print()
    print(render(rows))
    print()
    print(compare(rows))
    measured = [s for s in SERVERS if any(r["server"] == s for r in rows)]
    cap = {s: capacity(rows, s) for s in measured}
    report = {
        "rows": rows,
        "capacity": cap,
        "ratios": ratios(cap),
        "searches": searches,
        "skipped": skipped,
        "logs": str(logs),
    }
    if args.out:
        args.out.write_text(json.dumps(report, indent=2))
    return report


def _seed(server: str, rows: list[dict[str, Any]], start: int | None) -> tuple[int, bool]:
    """Where a side's search starts, and whether that came from another side's capacity here."""
    if start is not None:
        return start, False
    if server == "workers1" and capacity(rows, "voicecli"):
        return capacity(rows, "voicecli"), True
    if server == "workers2" and capacity(rows, "workers1"):
        return math.ceil(1.5 * capacity(rows, "workers1")), True
    return SEARCH_START[server], False


if __name__ == "__main__":
    main()

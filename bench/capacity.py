"""Media-path capacity: N emulated Twilio calls against voicecli and against the baseline.

For each server and each N: start the server pinned to core 0 (a fresh process per N), start
N callers in a separate process on core 1 (with the fake OpenAI server), arrivals spread over
--ramp-s, a steady window of --steady-s, departures spread over --depart-s. Figures per N:
server CPU-seconds per call-minute and RSS per call in the steady window, media wire->pipeline
latency from the probe, p99 lateness (steady, arrivals, departures), frames dropped.
Capacity = the largest N tried with steady p99 lateness <= 40 ms, nothing dropped, no call lost.

    python bench/capacity.py --voicecli 6,8,10 --baseline 4,6 [--steady-s 15]
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import (  # noqa: E402
    BENCH_DIR,
    CLIENT_CPU,
    PYTHON,
    SERVER_CPU,
    cpu_seconds,
    fmt,
    free_port,
    pct,
    rss_mb,
    server_env,
    stop,
    table,
    wait_http,
)

LATENESS_BAR_MS = 40.0
SERVERS = {"voicecli": "serve_voicecli.py", "baseline": "serve_baseline.py"}
# Extra server flags per side (capacity.py --voicecli-args="--as-committed" for an A/B run).
EXTRA_ARGS: dict[str, list[str]] = {"voicecli": [], "baseline": []}


class FakeOpenAI:
    """The fake OpenAI-compatible server, on the callers' core, for the whole run."""

    def __init__(self, logs: Path):
        self.port = free_port()
        self.log = open(logs / "fake_openai.log", "w")  # noqa: SIM115
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


def _post(url: str) -> None:
    req = urllib.request.Request(url, data=b"", method="POST")
    with urllib.request.urlopen(req, timeout=5):
        pass


def _get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=30) as resp:
        return json.loads(resp.read())


def run_one(server: str, n: int, fake: FakeOpenAI, args: argparse.Namespace, logs: Path) -> dict[str, Any]:
    """One server process, N calls: the figures for that N."""
    port = free_port()
    log = open(logs / f"{server}_{n}.log", "w")  # noqa: SIM115
    cmd = [
        PYTHON,
        str(BENCH_DIR / SERVERS[server]),
        "--port",
        str(port),
        "--fake-url",
        fake.base_url,
        "--cpu",
        str(SERVER_CPU),
        "--probe",
        "--log-level",
        args.log_level,
        *EXTRA_ARGS[server],
    ]
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=server_env())
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{url}/healthz", proc=proc)
        time.sleep(1.0)
        idle_rss = rss_mb(proc.pid)
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
        _post(f"{url}/bench/probe/reset")
        time.sleep(max(0.0, steady[0] - time.monotonic()))
        cpu0, t0 = cpu_seconds(proc.pid), time.monotonic()
        rss = []
        while time.monotonic() < steady[1]:
            rss.append(rss_mb(proc.pid))
            time.sleep(min(1.0, max(0.0, steady[1] - time.monotonic())))
        cpu1, t1 = cpu_seconds(proc.pid), time.monotonic()
        callers.wait(timeout=args.ramp_s + args.depart_s + args.steady_s + 120)
        probe = _get_json(f"{url}/bench/probe?since={steady[0]}&until={steady[1]}")
        result = json.loads(out.read_text())
    finally:
        stop(proc)
        log.close()
    busy = (cpu1 - cpu0) / (t1 - t0)
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
    }


def capacity(rows: list[dict[str, Any]], server: str, reply_ms: float = math.inf) -> int:
    """Issue 6's capacity; with `reply_ms`, also replying within it (p50, caller's last word to reply)."""
    return max(
        (r["n"] for r in rows if r["server"] == server and r["ok"] and r["turn_steady_p50_ms"] <= reply_ms),
        default=0,
    )


def render(rows: list[dict[str, Any]]) -> str:
    headers = [
        "server",
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
    ]
    body = [
        [
            r["server"],
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


def compare(rows: list[dict[str, Any]]) -> str:
    """Capacity and CPU per call-minute for both servers, and the ratios."""
    out = []
    cap = {s: capacity(rows, s) for s in SERVERS}
    ratio = cap["voicecli"] / cap["baseline"] if cap["baseline"] else float("nan")
    cv, cb = (at_capacity(rows, s, "cpu_s_per_call_min") for s in ("voicecli", "baseline"))
    mv, mb = (at_capacity(rows, s, "rss_per_call_mb") for s in ("voicecli", "baseline"))
    out.append(
        table(
            ["", "voicecli", "baseline", "ratio (voicecli/baseline)"],
            [
                [
                    "capacity, calls (steady p99 lateness <= 40 ms, nothing dropped)",
                    cap["voicecli"],
                    cap["baseline"],
                    fmt(ratio, 2),
                ],
                [
                    f"the same, replying within {REPLY_MS:.0f} ms (p50)",
                    capacity(rows, "voicecli", REPLY_MS),
                    capacity(rows, "baseline", REPLY_MS),
                    "",
                ],
                ["CPU-s per call-minute at capacity", fmt(cv, 2), fmt(cb, 2), fmt(cv / cb if cb else float("nan"), 2)],
                ["RSS per call at capacity, MB", fmt(mv, 1), fmt(mb, 1), fmt(mv / mb if mb else float("nan"), 2)],
            ],
        )
    )
    return "\n".join(out)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--voicecli", default="8,12,14,16,18", help="comma-separated N values ('' to skip)")
    parser.add_argument("--baseline", default="4,6,8", help="comma-separated N values ('' to skip)")
    parser.add_argument("--ramp-s", type=float, default=10.0, help="arrivals spread over this (default 10 s)")
    parser.add_argument("--settle-s", type=float, default=3.0)
    parser.add_argument("--steady-s", type=float, default=20.0)
    parser.add_argument("--depart-s", type=float, default=10.0)
    parser.add_argument("--log-level", default="info", help="both servers' log level (voicecli's default: info)")
    parser.add_argument("--out", type=Path, default=None, help="write the rows as JSON here")
    parser.add_argument("--voicecli-args", default="", help="extra flags for serve_voicecli.py, e.g. --as-committed")
    args = parser.parse_args(argv)
    EXTRA_ARGS["voicecli"] = args.voicecli_args.split()
    logs = Path(tempfile.mkdtemp(prefix="voicecli-bench-logs-"))
    print(f"# capacity (logs in {logs})", flush=True)
    fake = FakeOpenAI(logs)
    rows: list[dict[str, Any]] = []
    try:
        for server in ("baseline", "voicecli"):
            for n in [int(x) for x in getattr(args, server).split(",") if x.strip()]:
                row = run_one(server, n, fake, args, logs)
                rows.append(row)
                print(
                    f"{server:8} N={n:3}  {'ok ' if row['ok'] else 'NO '} CPU {row['cpu_pct']:5.1f}%  "
                    f"{row['cpu_s_per_call_min']:.2f} CPU-s/call-min  {row['rss_per_call_mb']:.1f} MB/call  "
                    f"late p99 {row['late_steady_p99_ms']:.0f} ms (arr {row['late_arrivals_p99_ms']:.0f}, "
                    f"dep {row['late_departures_p99_ms']:.0f})  wire p99 {row['wire_p99_ms']:.1f} ms  "
                    f"dropped {row['dropped']}  failures {len(row['failures'])}",
                    flush=True,
                )
    finally:
        fake.close()
    print()
    print(render(rows))
    print()
    print(compare(rows))
    report = {"rows": rows, "capacity": {s: capacity(rows, s) for s in SERVERS}, "logs": str(logs)}
    if args.out:
        args.out.write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()

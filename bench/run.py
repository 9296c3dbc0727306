"""Every voicecli benchmark in one run: capacity against the baseline, CLI, webhook, turn latency.

    pip install -e '.[bench]'
    python bench/run.py            # the full run (about 12 minutes on 2 cores)
    python bench/run.py --quick    # a few N values, shorter windows (about 5 minutes)
    python bench/run.py --only capacity --voicecli 8,12 --baseline 6

Prints each section's table, then a summary against issue 6's targets; writes the figures to
bench/results/latest.json.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
import traceback
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench import capacity, cli_latency, turn_latency, webhook  # noqa: E402
from bench.common import BENCH_DIR, fmt, table  # noqa: E402

SECTIONS = ("capacity", "cli", "webhook", "turn")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer N values and shorter windows")
    parser.add_argument("--only", default=",".join(SECTIONS), help=f"comma-separated subset of {', '.join(SECTIONS)}")
    parser.add_argument("--voicecli", default=None, help="N values for voicecli (comma-separated)")
    parser.add_argument("--baseline", default=None, help="N values for the baseline (comma-separated)")
    parser.add_argument("--steady-s", type=float, default=None)
    parser.add_argument("--out", type=Path, default=BENCH_DIR / "results" / "latest.json")
    args = parser.parse_args()
    only = {s.strip() for s in args.only.split(",") if s.strip()}
    report: dict[str, Any] = {"started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), "quick": args.quick}

    def section(name: str, fn: Any, argv: list[str]) -> None:
        # One failing section must not cost the others' figures.
        try:
            report[name] = fn(argv)
        except Exception:  # noqa: BLE001
            traceback.print_exc()
            report.setdefault("errors", []).append(name)
        print(flush=True)

    if "capacity" in only:
        cap_args = [
            "--voicecli",
            args.voicecli or ("8,14,18" if args.quick else "8,12,14,16,18"),
            "--baseline",
            args.baseline or ("4,6" if args.quick else "4,6,8"),
            "--steady-s",
            str(args.steady_s or (10 if args.quick else 15)),
        ]
        if args.quick:
            cap_args += ["--ramp-s", "5", "--depart-s", "5"]
        section("capacity", capacity.main, cap_args)
    if "cli" in only:
        section("cli", cli_latency.main, ["--repeat", "5" if args.quick else "10"])
    if "webhook" in only:
        section("webhook", webhook.main, ["--seconds", "5" if args.quick else "10"])
    if "turn" in only:
        section("turn", turn_latency.main, ["--seconds", "20" if args.quick else "36"])

    print(summary(report))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, default=str))
    print(f"\nfigures written to {args.out}")


def _met(ok: bool) -> str:
    return "met" if ok else "MISSED"


def summary(report: dict[str, Any]) -> str:
    """Issue 6's targets against what this run measured."""
    rows = []
    if "capacity" in report:
        rows_ = report["capacity"]["rows"]
        cap = report["capacity"]["capacity"]

        def at(server: str, key: str) -> float:
            return capacity.at_capacity(rows_, server, key)

        ratio = cap["voicecli"] / cap["baseline"] if cap["baseline"] else float("nan")
        cpu_v, cpu_b = at("voicecli", "cpu_s_per_call_min"), at("baseline", "cpu_s_per_call_min")
        rss_v = at("voicecli", "rss_per_call_mb")
        ok_v = [r for r in rows_ if r["server"] == "voicecli" and r["ok"]]
        arr = max((r["late_arrivals_p99_ms"] for r in ok_v), default=float("nan"))
        dep = max((r["late_departures_p99_ms"] for r in ok_v), default=float("nan"))
        rows += [
            [
                "steady capacity, one process",
                f"voicecli {cap['voicecli']}, baseline {cap['baseline']} (x{fmt(ratio, 2)})",
                ">= 1.5x baseline",
                _met(ratio >= 1.5),
            ],
            ["concurrent calls on this machine", str(cap["voicecli"]), ">= 50", _met(cap["voicecli"] >= 50)],
            [
                "CPU-s per call-minute at capacity",
                f"voicecli {fmt(cpu_v, 2)}, baseline {fmt(cpu_b, 2)}",
                "<= 2",
                _met(cpu_v <= 2),
            ],
            ["RSS per call at capacity", f"{fmt(rss_v, 1)} MB", "<= 15 MB", _met(rss_v <= 15)],
            [
                "p99 lateness while calls arrive / leave (passing N)",
                f"{fmt(arr, 0)} / {fmt(dep, 0)} ms",
                "<= 40 ms",
                _met(not math.isnan(arr) and arr <= 40 and dep <= 40),
            ],
        ]
    if "turn" in report:
        runner = report["turn"]["p50"]["runner"]
        rows.append(
            [
                "runner's share of turn latency (p50)",
                f"{fmt(runner, 0)} ms (detector {fmt(report['turn']['p50']['detector'], 0)} ms)",
                "<= 20 ms",
                _met(runner <= 20),
            ]
        )
    if "cli" in report:
        ms = report["cli"]["ms"]
        floor = ms["minimal Typer app --help"]
        for name, limit in (
            ("voicecli --help", 1.5),
            ("voicecli config get provider", 1.5),
            ("voicecli calls --json", 2.0),
        ):
            rows.append(
                [
                    name,
                    f"{fmt(ms[name], 0)} ms (x{fmt(ms[name] / floor, 2)} Typer)",
                    f"<= {limit}x",
                    _met(ms[name] / floor <= limit),
                ]
            )
    if "webhook" in report:
        w = report["webhook"]
        rows.append(["webhook, 50 clients", f"{fmt(w['rps'], 0)} req/s, p99 {fmt(w['p99_ms'], 1)} ms", "-", "-"])
    return "# summary against issue 6's targets\n" + table(["figure", "measured", "target", ""], rows)


if __name__ == "__main__":
    main()

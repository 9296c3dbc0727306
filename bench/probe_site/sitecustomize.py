"""The media-path probe (bench/probe.py) inside `voicecli serve` and every worker it starts.

Bench only: capacity.py puts this folder first on PYTHONPATH, with BENCH_PROBE_DIR set, for the
`voicecli serve --workers N` sides. Python imports `sitecustomize` at start-up in every process
(the supervisor and each `python -m voicecli.server.worker`). Nothing happens until `voicecli.server.app`
is imported; then its `create_app` is wrapped, so only a process that serves (never the
supervisor, which must not import pipecat) installs the probe. Each such process answers the
probe on a port of its own (a thread with a tiny HTTP server: the workers share the serving
port, so a request there would reach one of them at random) and names that port in
BENCH_PROBE_DIR/<pid>.json once its app has started.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import os
import sys

_TARGET = "voicecli.server.app"


class _PatchAfterImport(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name != _TARGET:
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None:
            return spec
        exec_module = spec.loader.exec_module

        def exec_and_patch(module):
            exec_module(module)
            _wrap_create_app(module)

        spec.loader.exec_module = exec_and_patch  # type: ignore[method-assign]
        return spec


def _wrap_create_app(server) -> None:
    create_app = server.create_app

    def probed_create_app(state):
        app = create_app(state)
        _install(app)
        return app

    server.create_app = probed_create_app


def _install(app) -> None:
    import asyncio
    import json
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
    from pathlib import Path
    from urllib.parse import parse_qs, urlsplit

    from bench import probe

    probe.install()
    loop_box: list[asyncio.AbstractEventLoop] = []

    async def snapshot(since: float, until: float) -> dict:
        return probe.snapshot(since, until)

    async def reset() -> dict:
        probe.reset()
        return {"ok": True}

    class Handler(BaseHTTPRequestHandler):
        def _answer(self, coro) -> None:
            # Read the probe's arrays on the event loop's own thread: never mid-append.
            body = json.dumps(asyncio.run_coroutine_threadsafe(coro, loop_box[0]).result(30)).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            query = parse_qs(urlsplit(self.path).query)
            self._answer(snapshot(float(query["since"][0]), float(query["until"][0])))

        def do_POST(self) -> None:
            self._answer(reset())

        def log_message(self, *args) -> None:
            pass

    async def started(app) -> None:
        loop_box.append(asyncio.get_running_loop())
        httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=httpd.serve_forever, name="bench-probe", daemon=True).start()
        where = Path(os.environ["BENCH_PROBE_DIR"]) / f"{os.getpid()}.json"
        where.write_text(json.dumps({"pid": os.getpid(), "port": httpd.server_address[1]}))

    app.on_startup.append(started)


if os.environ.get("BENCH_PROBE_DIR"):
    sys.meta_path.insert(0, _PatchAfterImport())

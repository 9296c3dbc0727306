"""The servers capacity.py measures ("sides"), each started fresh for one N, and what they report.

- `baseline`: pipecat's twilio-chatbot example (serve_baseline.py), one process on core 0;
- `voicecli`: voicecli's app as `serve` builds it, in one bench process (serve_voicecli.py), core 0;
- `workers1`, `workers2`: the real `voicecli serve --workers N` command in a temporary project:
  one worker on core 0, or two workers on both cores (shared with the callers, whose own CPU
  share every row reports). The media-path probe reaches every worker through
  bench/probe_site/sitecustomize.py; call records name their worker in `instance`.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from bench.common import BENCH_DIR, PYTHON, ROOT, SERVER_CPU, VOICECLI, server_env, stop, tree_pids, wait_http

SIDES: dict[str, str] = {
    "baseline": "pipecat's twilio-chatbot example, one process, core 0",
    "voicecli": "voicecli's app in one bench process (serve_voicecli.py), core 0",
    "workers1": "voicecli serve --workers 1, core 0",
    "workers2": "voicecli serve --workers 2, cores 0-1 (shared with the callers)",
}
SCRIPTS = {"baseline": "serve_baseline.py", "voicecli": "serve_voicecli.py"}
WORKERS = {"workers1": 1, "workers2": 2}
# Extra server flags per script side (capacity.py --voicecli-args="--as-committed" for an A/B run).
EXTRA_ARGS: dict[str, list[str]] = {"voicecli": [], "baseline": []}


class SideUnavailable(RuntimeError):
    """This checkout cannot run the side at all (no `serve --workers` yet): skip it, at any N."""


@functools.cache
def serve_has_workers() -> bool:
    """Whether this checkout's `voicecli serve` takes --workers."""
    out = subprocess.run([VOICECLI, "serve", "--help"], capture_output=True, text=True, env=_clean_env())
    return "--workers" in out.stdout


def _clean_env() -> dict[str, str]:
    # Only what the bench sets reaches the server: no signature checks, no stray database.
    prefixes = ("TWILIO_", "EXOTEL_", "VOBIZ_", "VOICECLI_", "TELEPHONY_")
    env = {k: v for k, v in server_env().items() if not k.startswith(prefixes) and k != "PUBLIC_BASE_URL"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, (str(ROOT), os.environ.get("PYTHONPATH"))))
    return env


def _get_json(url: str, headers: dict[str, str] | None = None) -> Any:
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=30) as resp:
        return json.loads(resp.read())


def _post(url: str) -> None:
    with urllib.request.urlopen(urllib.request.Request(url, data=b"", method="POST"), timeout=30):
        pass


@dataclass
class Server:
    """One started side: its process (a supervisor, for workers), URL and probe."""

    side: str
    proc: subprocess.Popen
    url: str
    project: Path | None = None
    probe_dir: Path | None = None
    cores: set[int] = field(default_factory=lambda: {SERVER_CPU})

    def pids(self) -> list[int]:
        return tree_pids(self.proc.pid)

    def _probe_urls(self) -> list[str]:
        if self.probe_dir is None:
            return [f"{self.url}/bench/probe"]
        ports = [json.loads(p.read_text())["port"] for p in sorted(self.probe_dir.glob("*.json"))]
        return [f"http://127.0.0.1:{port}/probe" for port in ports]

    def wait_ready(self, workers: int) -> None:
        wait_http(f"{self.url}/healthz", proc=self.proc)
        # Every worker serving, not only the first: /healthz answers from any one of them.
        deadline = time.monotonic() + 120
        while self.probe_dir is not None and len(list(self.probe_dir.glob("*.json"))) < workers:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{self.side}: not every worker started (exit code {self.proc.poll()})")
            time.sleep(0.2)

    def reset_probe(self) -> None:
        for url in self._probe_urls():
            _post(url + ("/reset" if self.probe_dir is None else ""))

    def probe(self, since: float, until: float) -> dict[str, Any]:
        """The probe's figures for [since, until), every worker's together."""
        merged: dict[str, Any] = {"reached": 0, "deserialized": 0, "wire_ms": [], "handoff_ms": [], "gc_max_ms": 0.0}
        for url in self._probe_urls():
            got = _get_json(f"{url}?since={since}&until={until}")
            merged["reached"] += got["reached"]
            merged["deserialized"] += got["deserialized"]
            merged["wire_ms"] += got["wire_ms"]
            merged["handoff_ms"] += got["handoff_ms"]
            merged["gc_max_ms"] = max(merged["gc_max_ms"], got["gc_max_ms"])
        return merged

    def spread(self, n: int) -> dict[str, int] | None:
        """Calls per carrier (`instance`'s last part: w1, w2, or the instance), from GET /api/calls."""
        if self.project is None:
            return None
        token = (self.project / ".voicecli" / "api_token").read_text().strip()
        rows = _get_json(f"{self.url}/api/calls?limit={min(1000, max(1, n))}", {"Authorization": f"Bearer {token}"})
        # "/w1", "/w2": a worker of the instance; no suffix: the instance is its only process.
        carriers = Counter(
            (r.get("instance") or "?").rpartition("/")[2] if "/" in (r.get("instance") or "") else "one" for r in rows
        )
        return dict(sorted(carriers.items()))

    def close(self) -> None:
        stop(self.proc, grace=15.0)  # workers drain first
        for path in (self.project, self.probe_dir):
            if path is not None:
                shutil.rmtree(path, ignore_errors=True)


def start(side: str, port: int, fake_url: str, log: TextIO, log_level: str) -> Server:
    """Start `side` on 127.0.0.1:`port` (not yet ready: call wait_ready)."""
    url = f"http://127.0.0.1:{port}"
    if side in SCRIPTS:
        cmd = [PYTHON, str(BENCH_DIR / SCRIPTS[side]), "--port", str(port), "--fake-url", fake_url]
        cmd += ["--cpu", str(SERVER_CPU), "--probe", "--log-level", log_level, *EXTRA_ARGS[side]]
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=server_env())
        return Server(side, proc, url)
    workers = WORKERS[side]
    if workers > 1 and not serve_has_workers():
        raise SideUnavailable(f"{side}: this checkout's `voicecli serve` has no --workers option yet")
    from bench.serve_voicecli import write_project

    project = write_project(Path(tempfile.mkdtemp(prefix=f"voicecli-bench-{side}-")), fake_url)
    probe_dir = Path(tempfile.mkdtemp(prefix="voicecli-bench-probe-"))
    env = _clean_env()
    env.update(
        TWILIO_MAX_CONCURRENT="10000",
        BENCH_PROBE_DIR=str(probe_dir),
        PYTHONPATH=os.pathsep.join((str(BENCH_DIR / "probe_site"), env["PYTHONPATH"])),
    )
    cmd = [VOICECLI, "serve", "--agent", "bench", "--port", str(port), "--log-level", log_level]
    if serve_has_workers():
        cmd += ["--workers", str(workers)]
    cores = set(range(min(workers, os.cpu_count() or 1)))

    def pin() -> None:
        os.sched_setaffinity(0, cores)  # the workers inherit it

    proc = subprocess.Popen(cmd, cwd=project, stdout=log, stderr=subprocess.STDOUT, env=env, preexec_fn=pin)
    return Server(side, proc, url, project, probe_dir, cores)

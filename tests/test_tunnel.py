"""`serve --tunnel` with a fake ngrok agent that pyngrok really starts, and `--update-webhook`.

The fake follows ../shared/protocols.md D4: it prints the three start-up log lines, serves the
agent API on 127.0.0.1, and hands out a made-up public URL that nothing ever fetches.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path
from xml.etree import ElementTree

import aiohttp

from tests.conftest import TWILIO_NUMBER, TWILIO_SID, twilio_env, twilio_voice_url
from tests.processes import serving

PUBLIC = "https://abc123.ngrok-free.app"
NGROK_TOKEN = "ngrok-test-token-never-printed-42"

FAKE_NGROK = '''#!{python}
"""A fake ngrok v3 agent for pyngrok (protocols.md D4); logs what it is asked to a JSON-lines file."""
import http.server, json, os, sys, threading, time

LOG = os.environ.get("FAKE_NGROK_LOG")
PUBLIC = os.environ.get("FAKE_NGROK_URL", "https://fake.ngrok-free.app")
endpoints = {{}}


def note(**entry):
    if LOG:
        with open(LOG, "a") as handle:
            handle.write(json.dumps(entry) + "\\n")


class Api(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def reply(self, status, body=None):
        data = b"" if body is None else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        note(method="GET", path=self.path)
        items = list(endpoints.values())
        if self.path.startswith(("/api/endpoints", "/api/tunnels")):
            self.reply(200, {{"endpoints": items, "tunnels": items, "uri": self.path}})
        else:
            self.reply(200, {{"status": "online"}})

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{{}}")
        note(method="POST", path=self.path, body=body)
        name = body.get("name", "tunnel")
        upstream = body.get("upstream") or {{"url": body.get("addr")}}
        item = {{"name": name, "id": "ep_fake", "uri": f"/api/endpoints/{{name}}", "url": PUBLIC,
                "public_url": PUBLIC, "proto": "https", "upstream": upstream,
                "config": {{"addr": upstream.get("url")}}, "metrics": {{}}}}
        endpoints[name] = item
        self.reply(201, item)

    def do_DELETE(self):
        note(method="DELETE", path=self.path)
        endpoints.pop(self.path.rsplit("/", 1)[-1], None)
        self.reply(204)


def main():
    args = sys.argv[1:]
    note(argv=["<token>" if a == os.environ.get("FAKE_NGROK_TOKEN") else a for a in args])
    if "--version" in args:
        print("ngrok version 3.20.0")
        return
    if args[:2] == ["config", "add-authtoken"]:
        print("Authtoken saved to configuration file")
        return
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Api)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    t = "t=2026-01-01T00:00:00+0000 lvl=info"
    print(f'{{t}} msg="starting web service" obj=web addr=127.0.0.1:{{port}} allow_hosts=[]', flush=True)
    print(f'{{t}} msg="client session established" obj=tunnels.session', flush=True)
    print(f'{{t}} msg="tunnel session started" obj=tunnels.session', flush=True)
    parent = os.getppid()
    while os.getppid() == parent:  # never outlive whoever started us, even if it is killed
        time.sleep(0.2)


main()
'''


def write_fake_ngrok(where: Path) -> Path:
    """The fake agent as an executable file, and a v3 config beside it (XDG layout)."""
    path = where / "bin" / "ngrok"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(FAKE_NGROK.format(python=sys.executable))
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


def ngrok_env(project: Path, token: str | None = NGROK_TOKEN, **extra: str) -> dict[str, str]:
    """An environment where pyngrok finds only the fake agent and a config under tmp."""
    fake = write_fake_ngrok(project)
    xdg = project / "xdg"
    (xdg / "ngrok").mkdir(parents=True, exist_ok=True)
    (xdg / "ngrok" / "ngrok.yml").write_text('version: "3"\n')
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("TWILIO_", "VOICECLI_", "NGROK_", "PYNGROK_", "EXOTEL_", "VOBIZ_"))
        and k != "PUBLIC_BASE_URL"
    }
    env.update(
        PYNGROK_NGROK_PATH=str(fake),
        XDG_CONFIG_HOME=str(xdg),
        FAKE_NGROK_URL=PUBLIC,
        FAKE_NGROK_LOG=str(project / "ngrok.jsonl"),
    )
    env.update(extra)
    if token:
        env.update(NGROK_AUTHTOKEN=token, FAKE_NGROK_TOKEN=token)
    return env


def ngrok_log(project: Path) -> list[dict]:
    path = project / "ngrok.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


async def wait_for_output(project: Path, proc: subprocess.Popen[bytes], text: str) -> str:
    """The serve log once it contains `text` (polled without blocking the event loop)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        out = (project / "serve.log").read_text(errors="replace")
        if text in out:
            return out
        assert proc.poll() is None, out[-3000:]
        await asyncio.sleep(0.1)
    raise AssertionError(f"{text!r} never printed:\n{out[-3000:]}")


def local_url(project: Path) -> str:
    [server] = json.loads((project / ".voicecli" / "server.json").read_text())["servers"]
    return server["url"]


async def test_serve_tunnel_prints_and_serves_the_tunnels_urls(project: Path) -> None:
    env = ngrok_env(project)
    with serving(project, env, "--tunnel") as proc:
        out = await wait_for_output(project, proc, "Check the setup")
        url = local_url(project)
        # The banner: the tunnel, and the webhook and stream URLs built from it.
        assert f"ngrok tunnel: {PUBLIC} -> {url}" in out
        assert f"{PUBLIC}/telephony/twilio/inbound/demo" in out
        assert "wss://abc123.ngrok-free.app/ws/twilio/demo" in out
        assert "wss://abc123.ngrok-free.app/ws/exotel/demo" in out
        # The TwiML the server answers points Twilio at the tunnel's host.
        form = {"CallSid": "CA" + "2" * 32, "From": "+15551230000", "To": "+15559870000"}
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{url}/telephony/twilio/inbound/demo", data=form) as resp:
                assert resp.status == 200
                stream = ElementTree.fromstring(await resp.text()).find("./Connect/Stream")
        assert stream is not None and stream.get("url") == "wss://abc123.ngrok-free.app/ws/twilio/demo"
        # pyngrok opened the tunnel to the port the server bound, and it was recorded for doctor.
        [opened] = [e for e in ngrok_log(project) if e.get("method") == "POST"]
        assert opened["body"]["upstream"]["url"] == url
        recorded = json.loads((project / ".voicecli" / "tunnel.json").read_text())
        assert recorded["public_url"] == PUBLIC and recorded["api_url"].startswith("http://127.0.0.1:")
        proc.send_signal(signal.SIGINT)
        assert await asyncio.to_thread(proc.wait, 30) == 0
    log = ngrok_log(project)
    assert any(e.get("method") == "DELETE" for e in log)  # closed on exit
    assert ["start", "--none", "--log", "stdout", "--authtoken", "<token>"] == log[0]["argv"]
    assert not (project / ".voicecli" / "tunnel.json").exists()
    assert NGROK_TOKEN not in (project / "serve.log").read_text()


async def test_update_webhook_points_the_twilio_number_at_the_tunnel(project: Path, fake_twilio) -> None:
    env = ngrok_env(project, **twilio_env(fake_twilio, TWILIO_PHONE_NUMBER=TWILIO_NUMBER))
    with serving(project, env, "--tunnel", "--update-webhook") as proc:
        out = await wait_for_output(project, proc, "vobiz: paste")
        want = f"{PUBLIC}/telephony/twilio/inbound/demo"
        assert twilio_voice_url(fake_twilio) == want
        [update] = fake_twilio.find("POST", "/IncomingPhoneNumbers/")
        assert update["path"].startswith(f"/2010-04-01/Accounts/{TWILIO_SID}/")
        assert update["fields"] == {"VoiceUrl": want, "VoiceMethod": "POST"}
        assert f"Twilio number {TWILIO_NUMBER}: voice URL changed from https://demo.twilio.com/welcome/voice/" in out
        # The others: the exact URL to paste, and where.
        assert f"exotel: paste {PUBLIC}/telephony/exotel/inbound/demo" in out
        assert f"vobiz: paste {PUBLIC}/telephony/vobiz/inbound/demo" in out
        assert f"Hangup URL: {PUBLIC}/telephony/vobiz/status" in out
    text = (project / "serve.log").read_text()
    assert NGROK_TOKEN not in text and env["TWILIO_AUTH_TOKEN"] not in text


def run_cli(project: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "voicecli", *args], cwd=project, env=env, capture_output=True, text=True, timeout=60
    )


def test_no_auth_token_is_a_clear_error(project: Path) -> None:
    result = run_cli(project, ngrok_env(project, token=None), "serve", "--agent", "demo", "--port", "0", "--tunnel")
    assert result.returncode == 1
    assert "--tunnel needs an ngrok auth token" in result.stderr and "NGROK_AUTHTOKEN" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert not ngrok_log(project)  # the agent never started


def test_the_token_in_ngroks_config_is_enough(project: Path) -> None:
    env = ngrok_env(project, token=None)
    (project / "xdg" / "ngrok" / "ngrok.yml").write_text('version: "3"\nagent:\n  authtoken: from-config-file\n')
    (project / "bin" / "ngrok").write_text('#!/bin/sh\necho \'t=x lvl=eror msg="boom" err="session closed"\'\n')
    result = run_cli(project, env, "serve", "--agent", "demo", "--port", "0", "--tunnel")
    # Past the token check: the (broken) agent ran and its own error is reported, cleanly.
    assert result.returncode == 1
    assert "ngrok could not open a tunnel: session closed" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_an_agent_binary_that_cannot_run_is_a_clear_error(project: Path) -> None:
    env = ngrok_env(project)
    (project / "bin" / "ngrok").chmod(0o644)  # present (so pyngrok never downloads) but not runnable
    result = run_cli(project, env, "serve", "--agent", "demo", "--port", "0", "--tunnel")
    assert result.returncode == 1
    assert "cannot run the ngrok agent" in result.stderr and "PYNGROK_NGROK_PATH" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def test_doctor_passes_against_serve_tunnel_update_webhook(project: Path, fake_twilio) -> None:
    # The fake tunnel's "public" URL is the server's own address, so /healthz through it is real.
    port = free_port()
    public = f"http://127.0.0.1:{port}"
    env = ngrok_env(project, **twilio_env(fake_twilio, TWILIO_PHONE_NUMBER=TWILIO_NUMBER), FAKE_NGROK_URL=public)
    (project / "agents" / "sales.toml").unlink()  # its cloud keys are another check (test_doctor.py)
    with serving(project, env, "--tunnel", "--update-webhook", "--port", str(port)) as proc:
        await wait_for_output(project, proc, "vobiz: paste")
        assert twilio_voice_url(fake_twilio) == f"{public}/telephony/twilio/inbound/demo"
        doctor = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "voicecli", "doctor",
            cwd=project, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        out = (await asyncio.wait_for(doctor.communicate(), 60))[0].decode()
        assert doctor.returncode == 0, out
        for line in ("tunnel active", "reachable through PUBLIC_BASE_URL", "twilio number webhook", "agent demo"):
            row = next(r for r in out.splitlines() if line in r)
            assert "\u2502 ok " in row, row
        assert NGROK_TOKEN not in out and env["TWILIO_AUTH_TOKEN"] not in out
        proc.send_signal(signal.SIGINT)
        assert await asyncio.to_thread(proc.wait, 30) == 0


async def test_a_failed_webhook_update_stops_serve_and_closes_the_tunnel(project: Path, fake_twilio) -> None:
    env = ngrok_env(project, **twilio_env(fake_twilio, TWILIO_PHONE_NUMBER="+15550001111"))
    # Awaited, not blocking: this event loop serves the fake Twilio API meanwhile.
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "voicecli", "serve", "--agent", "demo", "--port", "0", "--tunnel", "--update-webhook",
        cwd=project, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    stderr = (await asyncio.wait_for(proc.communicate(), 60))[1].decode()
    assert proc.returncode == 1 and "Traceback" not in stderr
    assert f"+15550001111 is not a number of Twilio account {TWILIO_SID}" in stderr
    assert any(e.get("method") == "DELETE" for e in ngrok_log(project))
    assert not (project / ".voicecli" / "tunnel.json").exists()

"""Post-call webhooks: every server process sends the outbox's due events, at least once.

The store writes each event to its outbox in the transaction of the record change it
reports (store/outbox.py), so nothing is lost to a crash. Here each process claims due
deliveries (one process at a time per delivery), POSTs them signed, and records what came of
each try: retried with exponential backoff on connection errors, timeouts, 408, 429 and 5xx
for `webhook_retry_hours`, failed at once on any other answer but 2xx. A slow or absent
receiver never touches a call: sending runs on its own task and HTTP client.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from typing import TYPE_CHECKING

import aiohttp
from loguru import logger

from voicecli.runtime import WEBHOOK_SECRET_FILE, write_private
from voicecli.signing import signature

if TYPE_CHECKING:
    from voicecli.server.state import ServerState
    from voicecli.settings import Settings
    from voicecli.store import CallStore
    from voicecli.store.outbox import Delivery, Outcome

TRY_TIMEOUT_S = 10.0
FIRST_RETRY_S = 1.0  # then doubling, up to webhook_backoff_max_s
POLL_S = 0.5  # how soon a new event goes out
BATCH = 8  # deliveries sent at once by one process
RETRIED_STATUSES = frozenset({408, 429})  # and every 5xx


def backoff_s(tries: int, cap_s: float) -> float:
    """The wait after the `tries`-th failed try: 1 s, 2 s, 4 s, ... at most `cap_s`."""
    return min(cap_s, FIRST_RETRY_S * 2 ** min(tries - 1, 40))


async def webhook_secret(settings: Settings, store: CallStore) -> str:
    """VOICECLI_WEBHOOK_SECRET, else the store's (every instance signs alike), seeded from and
    written to `.voicecli/webhook_secret` (0600) so the user can give it to the receiver."""
    given = settings.env.get("VOICECLI_WEBHOOK_SECRET")
    if given:
        return given
    path = settings.state_dir / WEBHOOK_SECRET_FILE
    try:
        on_file = path.read_text(encoding="utf-8").strip() or None
    except OSError:
        on_file = None
    secret = await store.shared_secret("webhook_secret", on_file or secrets.token_urlsafe(32))
    if secret != on_file:
        await asyncio.to_thread(write_private, path, secret + "\n")
    return secret


class WebhookSender:
    """Sends this process's share of the outbox until stopped."""

    def __init__(self, state: ServerState, secret: str):
        self.state, self.secret = state, secret
        self._task: asyncio.Task[None] | None = None
        self._http: aiohttp.ClientSession | None = None

    def start(self) -> None:
        self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TRY_TIMEOUT_S))
        self._task = asyncio.create_task(self._run(), name="webhook-sender")

    async def stop(self) -> None:
        # What is in flight is dropped: its claim lapses and another process (or the next
        # start) sends it again. At least once, never lost.
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._http is not None:
            await self._http.close()

    async def _run(self) -> None:
        store, holder = self.state.store, self.state.holder
        while True:
            if store.unwritable:  # claims are writes: wait for the store watch to see it back
                await asyncio.sleep(POLL_S)
                continue
            try:
                due = await store.claim_deliveries(holder, BATCH)
            except Exception as exc:  # a store that cannot be read now: try again shortly
                logger.warning(f"webhook outbox not read: {type(exc).__name__}: {exc}")
                due = []
            if due:
                await asyncio.gather(*(self._send(delivery) for delivery in due))
                continue
            await asyncio.sleep(POLL_S)

    async def _send(self, delivery: Delivery) -> None:
        outcome, error, retry_in_s = await self._try(delivery)
        log = logger.bind(call_id=delivery.call_id)
        if outcome == "delivered":
            log.info(f"webhook {delivery.event} delivered ({delivery.id})")
        else:
            log.warning(f"webhook {delivery.event} {'will be retried' if outcome == 'retry' else 'failed'}: {error}")
        try:
            await self.state.store.record_attempt(delivery.id, self.state.holder, outcome, error, retry_in_s)
        except Exception as exc:  # unrecorded: the claim lapses and the event is sent again
            log.warning(f"webhook attempt not recorded: {type(exc).__name__}: {exc}")

    async def _try(self, delivery: Delivery) -> tuple[Outcome, str | None, float]:
        assert self._http is not None
        timestamp = int(time.time())
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "voicecli-webhooks",
            "X-Voicecli-Event": delivery.event,
            "X-Voicecli-Delivery": delivery.id,
            "X-Voicecli-Signature": signature(self.secret, timestamp, delivery.body),
        }
        try:
            async with self._http.post(
                delivery.url, data=delivery.body.encode(), headers=headers, allow_redirects=False
            ) as resp:
                status = resp.status
        except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
            return self._retry_or_fail(delivery, f"{type(exc).__name__}: {exc}".rstrip(": "))
        if 200 <= status < 300:
            return "delivered", None, 0.0
        if status in RETRIED_STATUSES or status >= 500:
            return self._retry_or_fail(delivery, f"HTTP {status}")
        return "failed", f"HTTP {status} (not retried: only 408, 429 and 5xx are)", 0.0

    def _retry_or_fail(self, delivery: Delivery, error: str) -> tuple[Outcome, str | None, float]:
        settings = self.state.settings
        tries = delivery.tries + 1
        wait_s = backoff_s(tries, float(settings.get("webhook_backoff_max_s")))
        window_s = float(settings.get("webhook_retry_hours")) * 3600
        if time.time() + wait_s > delivery.retry_from + window_s:
            return "failed", f"{error}; gave up after {tries} tries", 0.0
        return "retry", error, wait_s

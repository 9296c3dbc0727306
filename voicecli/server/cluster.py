"""This process's place among every worker and instance sharing one store.

`Membership` joins the store as a holder, keeps its lease alive from a thread of its own
(a busy event loop never lets it lapse), sweeps away dead holders (their calls become
`interrupted`, their slots come back), and hands this process the events others send it
(settings changed, a hang-up callback for a call it carries).
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from loguru import logger

from voicecli.runtime import pid_alive
from voicecli.store import LEASE_S, RENEW_S, Event, Holder, SQLiteCallStore

if TYPE_CHECKING:
    from voicecli.store import CallStore

# How often a process looks for events: SQLite cannot wake it; PostgreSQL's NOTIFY does, so
# its poll is only the fallback should a notification be missed.
SQLITE_POLL_S = 0.25
NOTIFY_POLL_S = 5.0
DEAD_REASON = "its server stopped unexpectedly"


class LeaseKeeper(threading.Thread):
    """Renews one holder's lease every RENEW_S on its own connection and event loop.

    `on_lapse` is called (on the server's loop) when the lease is gone: the row was reaped,
    or no renewal succeeded for LEASE_S. The keeper then stops; the owner decides what next.

    On SQLite only a reaped row ends the lease: whoever could reap this process writes the
    same file, so a file locked or read-only for everyone reaps no one, and its live calls go on.
    """

    def __init__(self, store: CallStore, holder: str, loop: asyncio.AbstractEventLoop, on_lapse: Callable[[], None]):
        super().__init__(name=f"voicecli-lease-{holder}", daemon=True)
        self.store, self.holder, self.loop, self.on_lapse = store, holder, loop, on_lapse
        self.lapses_unrenewed = not isinstance(store, SQLiteCallStore)
        self._stopping = threading.Event()

    def run(self) -> None:
        asyncio.run(self._keep())

    async def _keep(self) -> None:
        connection = self.store.lease_connection()
        last_renewed = time.monotonic()
        try:
            while not self._stopping.wait(RENEW_S):
                try:
                    renewed = await connection.renew(self.holder)
                except Exception as exc:  # the database is unreachable: retry until the lease runs out
                    logger.warning(f"lease renewal failed: {type(exc).__name__}: {exc}")
                    renewed = None
                if renewed:
                    last_renewed = time.monotonic()
                elif renewed is False or (self.lapses_unrenewed and time.monotonic() - last_renewed >= LEASE_S):
                    self.loop.call_soon_threadsafe(self.on_lapse)
                    return
        finally:
            await connection.close()

    def stop(self) -> None:
        self._stopping.set()


class Membership:
    """Join, keep the lease, sweep the dead, deliver events; `stop` leaves cleanly."""

    def __init__(
        self,
        store: CallStore,
        holder: Holder,
        on_event: Callable[[Event], object],
        on_lapse: Callable[[], object],
        on_rejoin: Callable[[], None],
    ):
        self.store, self.holder = store, holder
        self.on_event, self.on_lapse, self.on_rejoin = on_event, on_lapse, on_rejoin
        self._keeper: LeaseKeeper | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._last_event = 0
        self._poll_s = SQLITE_POLL_S if isinstance(store, SQLiteCallStore) else NOTIFY_POLL_S

    async def start(self, recover: bool) -> None:
        """Join the store; with `recover`, end the calls of servers that are gone (start-up recovery)."""
        await self.store.join(self.holder)
        self._last_event = await self.store.last_event()
        if recover:
            ended = await self.sweep()
            if ended:
                logger.warning(f"{ended} call(s) left open by a server that was killed: marked interrupted")
        self._start_keeper()
        self._tasks = [asyncio.create_task(self._sweeping()), asyncio.create_task(self._pumping())]

    def _start_keeper(self) -> None:
        self._keeper = LeaseKeeper(self.store, self.holder.id, asyncio.get_running_loop(), self._lapsed)
        self._keeper.start()

    async def sweep(self) -> int:
        """Reap holders known dead, then expired ones; how many of their calls were ended."""
        dead: list[str] = []
        if isinstance(self.store, SQLiteCallStore):
            # One machine by construction: a holder whose process is gone is dead now, not in
            # LEASE_S (a `serve` killed and started again recovers its calls at once).
            host = socket.gethostname()
            dead = [h.id for h in await self.store.holders() if h.host == host and not pid_alive(h.pid)]
        ended = await self.store.reap(dead, DEAD_REASON) if dead else 0
        return ended + await self.store.maintain(DEAD_REASON)

    async def _sweeping(self) -> None:
        while True:
            await asyncio.sleep(RENEW_S)
            if self.store.unwritable:
                continue  # the store watch tries a write every second meanwhile
            try:
                ended = await self.sweep()
            except Exception as exc:
                logger.warning(f"could not sweep the store: {type(exc).__name__}: {exc}")
                continue
            if ended:
                logger.warning(f"{ended} call(s) of a server that stopped unexpectedly: marked interrupted")

    async def _pumping(self) -> None:
        while True:
            try:
                events = await self.store.events_after(self._last_event, self.holder.id)
            except Exception as exc:
                logger.warning(f"could not read events from the store: {type(exc).__name__}: {exc}")
                events = []
            for event in events:
                self._last_event = event.id
                try:
                    outcome = self.on_event(event)
                    if asyncio.iscoroutine(outcome):
                        await outcome
                except Exception:
                    logger.exception(f"event {event.kind} could not be handled")
            await self.store.wait_for_events(self._poll_s)

    def _lapsed(self) -> None:
        # Kept with the others: an unreferenced task may be collected mid-run, and stop cancels it.
        self._tasks.append(asyncio.create_task(self._rejoin()))

    async def _rejoin(self) -> None:
        outcome = self.on_lapse()
        if asyncio.iscoroutine(outcome):
            await outcome
        while True:
            try:
                await self.store.join(self.holder)
                break
            except Exception as exc:
                logger.warning(f"cannot rejoin the store yet: {type(exc).__name__}: {exc}")
                await asyncio.sleep(RENEW_S)
        logger.info("lease on the store taken again: admitting calls")
        self.on_rejoin()
        self._start_keeper()

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._keeper is not None:
            self._keeper.stop()
            await asyncio.to_thread(self._keeper.join, RENEW_S + 1)
        try:
            await self.store.leave(self.holder.id)
        except Exception as exc:  # the store is gone: the lease runs out by itself
            logger.warning(f"could not leave the store cleanly: {type(exc).__name__}: {exc}")

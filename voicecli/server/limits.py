"""Per-provider concurrency slots, held in the shared store, and the cap on unproven upgrades.

A slot is taken by an outbound dial (a reservation, named by the call's id, that the call's
own stream later claims on whichever worker or instance it reaches, so a call is never
counted twice) or by an inbound stream once it has proved it is a call. The store checks and
takes in one transaction, so simultaneous streams on every worker and instance together
never exceed the limit. Every slot is given back exactly once however the call ends
(`Slot.release` is idempotent); a holder that dies has its slots given back by the reaper.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from voicecli.store import CallStore, SlotCount

# Upgrades from one client address that may wait for their `start` at once. They hold no
# slot; the cap only keeps one client from holding thousands of idle sockets.
UNPROVEN_PER_CLIENT = 10


@dataclass
class Slot:
    """One held place under a provider's limit; release() is idempotent."""

    limiter: SlotLimiter
    id: str
    provider: str
    reserved_for: str | None = None  # a dial's call id until its stream claims the slot
    released: bool = False

    async def release(self) -> None:
        if self.released:
            return
        self.released = True  # before the await: a second release never reaches the store
        self.limiter._forget(self)
        await self.limiter.store().release_slot(self.id)


@dataclass
class SlotLimiter:
    """Takes and gives back this process's slots in the store, against limits read live."""

    store: Callable[[], CallStore]
    holder: str
    limit_of: Callable[[str], int]
    # This process's own slots, for /healthz and its tests; limits count the whole cluster.
    local: Counter[str] = field(default_factory=Counter)
    reservations: dict[str, Slot] = field(default_factory=dict)
    # Set while this process's lease has lapsed: others may have taken its slots back.
    suspended: bool = False

    async def take(self, provider: str, claim: str | None = None, reserve: str | None = None) -> Slot | None:
        """A slot: `claim`'s dial reservation if there is one, else a new one under the limit."""
        if self.suspended:
            return None
        local = self.reservations.pop(claim, None) if claim else None
        store = self.store()
        taking = asyncio.ensure_future(
            store.take_slot(provider, self.limit_of(provider), self.holder, claim=claim, reserve=reserve)
        )
        try:
            slot_id = await asyncio.shield(taking)
        except asyncio.CancelledError:
            # The request went away mid-take: the store may still have given a slot; give it back.
            if (given := await taking) is not None:
                await store.release_slot(given)
            raise
        if local is not None and local.id == slot_id:
            local.reserved_for = None  # our own dial's reservation: already counted here
            return local
        if local is not None:  # claimed elsewhere meanwhile, or refused: ours is gone
            local.released = True
            self._forget(local)
        if slot_id is None:
            return None
        slot = Slot(self, slot_id, provider, reserve)
        self.local[provider] += 1
        if reserve:
            self.reservations[reserve] = slot
        return slot

    async def release_reservation(self, call_id: str) -> bool:
        """Give back a dial's reservation no stream claimed (on any instance); whether one was."""
        local = self.reservations.pop(call_id, None)
        if local is not None:
            local.released = True
            self._forget(local)
        return await self.store().release_reservation(call_id)

    async def counts(self) -> dict[str, SlotCount]:
        """Slots held per provider by every live worker and instance."""
        return await self.store().slot_counts()

    async def may_upgrade(self, provider: str) -> bool:
        """Whether a stream upgrade may wait for its proof: room under the limit, or a dial waiting."""
        count = (await self.counts()).get(provider)
        return count is None or count.held < self.limit_of(provider) or count.reserved > 0

    def in_use(self, provider: str) -> int:
        """This process's held slots for `provider` (dial reservations included)."""
        return self.local[provider]

    def _forget(self, slot: Slot) -> None:
        if slot.reserved_for and self.reservations.get(slot.reserved_for) is slot:
            del self.reservations[slot.reserved_for]
        self.local[slot.provider] -= 1
        if self.local[slot.provider] <= 0:
            del self.local[slot.provider]


@dataclass
class UnprovenCap:
    """Counts, per client address, the stream upgrades still waiting to prove they are calls."""

    per_client: int = UNPROVEN_PER_CLIENT
    waiting: Counter[str] = field(default_factory=Counter)

    def enter(self, client: str) -> bool:
        if self.waiting[client] >= self.per_client:
            return False
        self.waiting[client] += 1
        return True

    def leave(self, client: str) -> None:
        self.waiting[client] -= 1
        if self.waiting[client] <= 0:
            del self.waiting[client]

"""Per-provider concurrency slots, and the cap on streams that have not yet proved themselves.

A slot is taken by an outbound dial (a reservation, named by the call's id, that the
call's own stream later claims, so a call is never counted twice) or by an inbound stream
once it has proved it is a call. Check-and-take has no await in between, so a burst of
simultaneous streams on one event loop can never exceed the limit. Every slot is given
back exactly once however the call ends (`Slot.release` is idempotent).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

# Upgrades from one client address that may wait for their `start` at once. They hold no
# slot; the cap only keeps one client from holding thousands of idle sockets.
UNPROVEN_PER_CLIENT = 10


@dataclass
class Slot:
    """One held place under a provider's limit; release() is idempotent."""

    limiter: SlotLimiter
    provider: str
    call_id: str | None = None
    released: bool = False

    def release(self) -> None:
        if not self.released:
            self.released = True
            self.limiter.active[self.provider] -= 1
            if self.call_id and self.limiter.reservations.get(self.call_id) is self:
                del self.limiter.reservations[self.call_id]


@dataclass
class SlotLimiter:
    """Counts held slots per provider against a limit read at each request (it can change live)."""

    limit_of: Callable[[str], int]
    active: dict[str, int] = field(default_factory=dict)
    reservations: dict[str, Slot] = field(default_factory=dict)

    def try_acquire(self, provider: str, call_id: str | None = None) -> Slot | None:
        """A slot if the provider is under its limit; with call_id, a reservation for a dial."""
        held = self.active.get(provider, 0)
        if held >= self.limit_of(provider):
            return None
        self.active[provider] = held + 1
        slot = Slot(self, provider, call_id)
        if call_id:
            self.reservations[call_id] = slot
        return slot

    def may_upgrade(self, provider: str) -> bool:
        """Whether a stream upgrade may wait for its proof: room under the limit, or a dial waiting."""
        return self.in_use(provider) < self.limit_of(provider) or self.reserved(provider) > 0

    def claim(self, call_id: str) -> Slot | None:
        """The reservation a dial made for `call_id`, handed over to its stream."""
        slot = self.reservations.pop(call_id, None)
        if slot is not None:
            slot.call_id = None
        return slot

    def in_use(self, provider: str) -> int:
        return self.active.get(provider, 0)

    def reserved(self, provider: str) -> int:
        return sum(1 for s in self.reservations.values() if s.provider == provider)


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

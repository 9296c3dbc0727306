"""Per-provider concurrency slots.

A slot is taken when a media WebSocket upgrade arrives, or when an outbound dial starts
(a reservation, named by the call's id, that the call's own stream later takes over, so a
call is never counted twice). Every slot is given back exactly once however the call ends.
Check-and-take has no await in between, so a burst of simultaneous upgrades on one event
loop can never exceed the limit.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field


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
class Pass:
    """Admission of a stream that can only be a dialled call's (the provider is otherwise full).

    It holds no slot: the stream must claim its call's reservation once its `start` names
    the call, or be closed.
    """

    limiter: SlotLimiter
    provider: str
    released: bool = False

    def release(self) -> None:
        if not self.released:
            self.released = True
            self.limiter.passes[self.provider] -= 1


@dataclass
class SlotLimiter:
    """Counts held slots per provider against a limit read at each request (it can change live)."""

    limit_of: Callable[[str], int]
    active: dict[str, int] = field(default_factory=dict)
    reservations: dict[str, Slot] = field(default_factory=dict)
    passes: dict[str, int] = field(default_factory=dict)

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

    def admit(self, provider: str) -> Slot | Pass | None:
        """At a stream upgrade: a slot, or a pass when a dialled call may be the one arriving."""
        slot = self.try_acquire(provider)
        if slot is not None:
            return slot
        waiting = sum(1 for s in self.reservations.values() if s.provider == provider)
        if waiting > self.passes.get(provider, 0):
            self.passes[provider] = self.passes.get(provider, 0) + 1
            return Pass(self, provider)
        return None

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

"""The pipeline's lifecycle as an explicit state machine (pure: no I/O, no asyncio).

States: ``starting`` -> ``running`` <-> ``paused``, then ``stopping`` -> ``stopped``, or
``failed`` from anywhere but the end. Every transition not in `TRANSITIONS` raises
`IllegalTransition`, so a control request that makes no sense (resume a running pipeline, pause a
stopped one) gets a clear answer instead of silently doing something. The migration *phase*
(connecting, schema, copy, streaming, switchover, ...) is a separate, orthogonal value kept by the
metrics collector: a pipeline can be ``paused`` in phase ``streaming``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, TypeAlias

from pgmigrator.errors import PgMigratorError

State: TypeAlias = Literal["starting", "running", "paused", "stopping", "stopped", "failed"]

STATES: tuple[State, ...] = ("starting", "running", "paused", "stopping", "stopped", "failed")

TRANSITIONS: dict[State, frozenset[State]] = {
    "starting": frozenset({"running", "stopping", "failed"}),
    "running": frozenset({"paused", "stopping", "failed"}),
    "paused": frozenset({"running", "stopping", "failed"}),
    "stopping": frozenset({"stopped", "failed"}),
    "stopped": frozenset(),
    "failed": frozenset(),
}

TERMINAL: frozenset[State] = frozenset({"stopped", "failed"})


class IllegalTransition(PgMigratorError):
    """A lifecycle change that the state machine does not allow (e.g. resume while running)."""


@dataclass(frozen=True, slots=True)
class Change:
    old: State
    new: State
    at: float  # time.time() of the change
    reason: str


Listener = Callable[[Change], None]


class Lifecycle:
    """Thread-safe holder of the current state; listeners hear every accepted change."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._state: State = "starting"
        self._lock = threading.Lock()
        self._listeners: list[Listener] = []
        self._clock = clock
        self.history: list[Change] = []

    @property
    def state(self) -> State:
        return self._state

    @property
    def paused(self) -> bool:
        return self._state == "paused"

    def subscribe(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def can(self, new: State) -> bool:
        return new in TRANSITIONS[self._state]

    def to(self, new: State, reason: str = "") -> Change:
        """Move to ``new`` or raise `IllegalTransition` naming the current state."""
        with self._lock:
            old = self._state
            if new not in TRANSITIONS[old]:
                allowed = ", ".join(sorted(TRANSITIONS[old])) or "none (it has ended)"
                raise IllegalTransition(
                    f"cannot go from {old} to {new}",
                    hint=f"from {old} the pipeline can go to: {allowed}",
                )
            self._state = new
            change = Change(old, new, self._clock(), reason)
            self.history.append(change)
        for listener in self._listeners:
            listener(change)
        return change

    def pause(self, reason: str = "requested") -> Change:
        return self.to("paused", reason)

    def resume(self, reason: str = "requested") -> Change:
        if self._state != "paused":
            raise IllegalTransition(
                f"cannot resume: the pipeline is {self._state}, not paused",
                hint="only a paused pipeline can be resumed",
            )
        return self.to("running", reason)

    def stop(self, reason: str = "requested") -> Change | None:
        """Begin stopping; a no-op when already stopping or ended (signals may repeat)."""
        if self._state in ("stopping", *TERMINAL):
            return None
        return self.to("stopping", reason)

    def fail(self, reason: str) -> Change | None:
        if self._state in TERMINAL:
            return None
        return self.to("failed", reason)

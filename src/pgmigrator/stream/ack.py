"""The acknowledgement tracker: how far the slot may be flushed (DESIGN.md rule 4).

The bus publishes events in chunks, each chunk optionally carrying a *mark*: the end LSN of the
last source transaction whose events are all in or before that chunk. A sink acknowledges a mark
once it has delivered everything up to it. The flush LSN is the minimum mark acknowledged by every
durable sink; with no durable sink, it is the last mark published (live sinks are at-most-once).
Positions only move forward.
"""

from __future__ import annotations

from collections.abc import Iterable

from pgmigrator.lsn import ZERO, Lsn


class AckTracker:
    def __init__(self, durable: Iterable[str], start: Lsn = ZERO) -> None:
        self.start = start
        self.published = start
        self._acked: dict[str, Lsn] = dict.fromkeys(durable, start)

    def reset(self, start: Lsn) -> None:
        """Start every position at ``start`` (the slot's confirmed position), before any publish."""
        self.start = self.published = start
        self._acked = dict.fromkeys(self._acked, start)

    def add(self, sink: str) -> None:
        """A durable sink joining while streaming: it owes nothing published before it joined."""
        self._acked.setdefault(sink, self.published)

    def remove(self, sink: str) -> None:
        self._acked.pop(sink, None)

    def publish(self, mark: Lsn) -> None:
        if mark > self.published:
            self.published = mark

    def ack(self, sink: str, mark: Lsn) -> None:
        current = self._acked.get(sink)
        if current is not None and mark > current:
            self._acked[sink] = mark

    def acked(self, sink: str) -> Lsn | None:
        return self._acked.get(sink)

    def flush_lsn(self) -> Lsn:
        """The minimum acknowledged across durable sinks (the published mark when there are none)."""
        if not self._acked:
            return self.published
        return min(self._acked.values())

    def caught_up(self) -> bool:
        """Whether every durable sink acknowledged everything published."""
        return self.flush_lsn() >= self.published

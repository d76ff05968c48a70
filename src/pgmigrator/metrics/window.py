"""Sliding-window throughput: how many rows (or bytes) per second over the last minute.

Values are summed into fixed one-second buckets (the size is configurable), so memory stays
bounded at ``window_s / bucket_s`` buckets however many times :meth:`SlidingWindow.add` is
called. The rate divides what the retained buckets hold by the time they cover; right after the
first value arrives that span is shorter than the window, so a pipeline that has been copying for
ten seconds shows its real speed rather than a sixth of it. The span is never taken below one
second, which keeps a single early burst from showing up as an absurd spike.

The window itself is not thread-safe: :class:`~pgmigrator.metrics.collector.Collector` guards it
with its own lock. Time comes from an injected clock (or an explicit ``now``) so tests never sleep.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable

MIN_SPAN_S = 1.0
"""The shortest span a rate is computed over, to damp the spike of a first burst."""


class SlidingWindow:
    """Per-second buckets of a counter over the last ``window_s`` seconds."""

    __slots__ = ("_buckets", "_clock", "_first_at", "_n", "bucket_s", "total", "window_s")

    def __init__(
        self,
        window_s: float = 60.0,
        *,
        bucket_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if bucket_s <= 0 or window_s < bucket_s:
            raise ValueError(f"bad window: window_s={window_s}, bucket_s={bucket_s}")
        self.window_s = window_s
        self.bucket_s = bucket_s
        self._n = max(1, round(window_s / bucket_s))
        self._clock = clock
        # (bucket index, summed value), oldest first; indexes only grow.
        self._buckets: deque[list[float]] = deque()
        self._first_at: float | None = None
        self.total = 0.0
        """Everything ever added, expired buckets included."""

    def add(self, value: float, now: float | None = None) -> None:
        """Count ``value`` at time ``now`` (default: the clock)."""
        if now is None:
            now = self._clock()
        idx = math.floor(now / self.bucket_s)
        if self._first_at is None:
            self._first_at = now
        self.total += value
        buckets = self._buckets
        if buckets and idx <= buckets[-1][0]:
            # Same bucket, or a clock that stepped back: never reorder, just add to the newest.
            buckets[-1][1] += value
        else:
            buckets.append([idx, value])
        self._evict(idx)

    def arm(self, now: float | None = None) -> None:
        """Start measuring at ``now`` if nothing was added yet.

        Work that began before its first report (a table COPY reporting every few thousand rows)
        is then averaged over the time it really took, not over the minimum span.
        """
        if self._first_at is None:
            self._first_at = self._clock() if now is None else now

    def window_sum(self, now: float | None = None) -> float:
        """The sum of the values still inside the window."""
        if now is None:
            now = self._clock()
        self._evict(math.floor(now / self.bucket_s))
        return sum(b[1] for b in self._buckets)

    def span(self, now: float | None = None) -> float:
        """Seconds the rate is averaged over: the window, or less if the first value is recent."""
        if now is None:
            now = self._clock()
        if self._first_at is None:
            return 0.0
        window_start = (math.floor(now / self.bucket_s) - self._n + 1) * self.bucket_s
        start = max(window_start, self._first_at)
        return min(max(now - start, MIN_SPAN_S), float(self._n * self.bucket_s))

    def rate(self, now: float | None = None) -> float:
        """Per-second average over the window; 0.0 before any value or once all expired."""
        if now is None:
            now = self._clock()
        total = self.window_sum(now)
        if total == 0:
            return 0.0
        return total / self.span(now)

    def reset(self) -> None:
        """Forget everything, the lifetime total included."""
        self._buckets.clear()
        self._first_at = None
        self.total = 0.0

    def _evict(self, current_idx: int) -> None:
        oldest_kept = current_idx - self._n + 1
        buckets = self._buckets
        while buckets and buckets[0][0] < oldest_kept:
            buckets.popleft()

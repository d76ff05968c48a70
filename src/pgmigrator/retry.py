"""Retries with exponential backoff and jitter: one pure policy for every retrying loop.

`RetryPolicy` says how long to wait before each new attempt (``initial_s`` times ``multiplier``
to the power of the retry number, capped at ``max_s``, each delay scaled by a random factor in
``[1 - jitter, 1 + jitter]`` so that many clients do not retry in lockstep) and how many attempts
an operation gets (``max_attempts``, counting the first; 0 means no limit). Whether an error is
worth another attempt at all is decided by :func:`pgmigrator.errors.is_retryable`.

`Backoff` is the stateful companion for loops that reconnect (follow): it counts consecutive
failures, hands out the next delay, and starts over once an attempt has stayed healthy.
Nothing here sleeps or does I/O; callers sleep the delays they get.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass, field

from pgmigrator.errors import PgMigratorError, is_retryable


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Backoff parameters; picklable, so worker processes receive it as is."""

    initial_s: float = 0.5
    max_s: float = 30.0
    multiplier: float = 2.0
    jitter: float = 0.2
    max_attempts: int = 10

    def __post_init__(self) -> None:
        if self.initial_s < 0 or self.max_s < self.initial_s:
            raise ValueError("retry delays need 0 <= initial_s <= max_s")
        if self.multiplier < 1:
            raise ValueError("retry multiplier must be at least 1")
        if not 0 <= self.jitter < 1:
            raise ValueError("retry jitter must be in [0, 1)")
        if self.max_attempts < 0:
            raise ValueError("retry max_attempts must be 0 (no limit) or more")

    def base_delay(self, retry: int) -> float:
        """The delay before retry number ``retry`` (1 = the second attempt), without jitter."""
        if retry < 1:
            raise ValueError("retry numbers start at 1")
        # stop multiplying once past the cap: no float overflow for long outages
        delay = self.initial_s
        for _ in range(retry - 1):
            if delay >= self.max_s:
                break
            delay *= self.multiplier
        return min(delay, self.max_s)

    def delay(self, retry: int, rng: random.Random | None = None) -> float:
        """The jittered delay before retry number ``retry``; never above ``max_s``."""
        base = self.base_delay(retry)
        if self.jitter == 0:
            return base
        factor = (rng or random).uniform(1 - self.jitter, 1 + self.jitter)
        return min(base * factor, self.max_s)

    def delays(self, rng: random.Random | None = None) -> Iterator[float]:
        """Delays before the 2nd, 3rd, ... attempt: ``max_attempts - 1`` of them, endless if 0."""
        retry = 1
        while self.max_attempts == 0 or retry < self.max_attempts:
            yield self.delay(retry, rng)
            retry += 1

    def allows(self, attempt: int) -> bool:
        """Whether another attempt may follow attempt number ``attempt`` (1-based)."""
        return self.max_attempts == 0 or attempt < self.max_attempts

    def should_retry(self, exc: BaseException, attempt: int) -> bool:
        """Retry after ``exc`` failed attempt ``attempt``: a retryable error and attempts left."""
        return is_retryable(exc) and self.allows(attempt)


@dataclass(slots=True)
class Backoff:
    """Consecutive-failure counter over a policy, for loops that keep reconnecting.

    ``failed(healthy_for_s)`` records a failure of an attempt that had been running for that
    long and returns the delay to wait, or ``None`` once the attempts are used up. An attempt
    that ran longer than ``healthy_after_s`` (default: the policy's ``max_s``) counts as a
    recovery: the failure count starts over, so a blip after hours of streaming waits
    ``initial_s`` rather than the maximum.
    """

    policy: RetryPolicy
    healthy_after_s: float | None = None
    rng: random.Random | None = None
    failures: int = field(default=0, init=False)

    def failed(self, healthy_for_s: float = 0.0) -> float | None:
        threshold = self.policy.max_s if self.healthy_after_s is None else self.healthy_after_s
        if healthy_for_s >= threshold:
            self.failures = 0
        self.failures += 1
        if not self.policy.allows(self.failures):
            return None
        return self.policy.delay(self.failures, self.rng)

    def reset(self) -> None:
        self.failures = 0


def exhausted(exc: PgMigratorError, attempts: int) -> PgMigratorError:
    """The error to raise once ``attempts`` tries in a row failed with the retryable ``exc``."""
    return PgMigratorError(
        f"{exc.message} (gave up after {attempts} attempts in a row)",
        hint=(exc.hint + "; " if exc.hint else "")
        + "raise retry.max_attempts (0 retries forever) to wait longer for the server",
        retryable=False,
    )

"""Retry policy shared by the sinks that retry (webhook, exec, pg_table): exponential backoff with jitter.

``delay(n)`` for the n-th retry (1-based) is ``initial_s * multiplier**(n-1)``, capped at ``max_s``,
then spread by ``±jitter`` (a fraction) so that many senders do not retry in lockstep.
``attempts`` counts every try including the first; 0 means try forever.
"""

from __future__ import annotations

import random
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class BackoffOptions(BaseModel):
    """How often and how patiently a sink retries."""

    model_config = ConfigDict(extra="forbid")

    initial_s: float = Field(default=0.5, gt=0, le=3600)
    max_s: float = Field(default=30.0, gt=0, le=3600)
    multiplier: float = Field(default=2.0, ge=1.0, le=10.0)
    jitter: float = Field(default=0.2, ge=0.0, le=1.0)
    attempts: int = Field(default=10, ge=0)

    def delay(self, retry: int, rng: random.Random | None = None) -> float:
        """Seconds to wait before retry number ``retry`` (1 = the first retry)."""
        base = min(self.max_s, self.initial_s * self.multiplier ** max(0, retry - 1))
        if self.jitter == 0:
            return base
        spread = base * self.jitter
        return max(0.0, base + (rng or _RNG).uniform(-spread, spread))

    def exhausted(self, tries: int) -> bool:
        """Whether ``tries`` attempts already made use up the budget."""
        return self.attempts > 0 and tries >= self.attempts


_RNG = random.Random()


def fold_flat(data: Any, prefix: str, into: str) -> Any:
    """Move flat option keys ``<prefix><name>`` into the nested mapping ``into``.

    ``--sink TYPE:key=value`` options are flat: ``retry_attempts=5`` becomes
    ``{"retry": {"attempts": 5}}`` and ``header.X-Tenant=acme`` ``{"headers": {"X-Tenant": ...}}``.
    """
    if not isinstance(data, dict) or not any(str(k).startswith(prefix) for k in data):
        return data
    out = {k: v for k, v in data.items() if not str(k).startswith(prefix)}
    nested = dict(out.get(into) or {})
    nested.update({str(k)[len(prefix) :]: v for k, v in data.items() if str(k).startswith(prefix)})
    out[into] = nested
    return out

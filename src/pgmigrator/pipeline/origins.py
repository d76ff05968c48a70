"""Loop prevention for bidirectional replication: the transactions our own appliers wrote.

Every destination transaction of an applier is tagged with its replication origin; the reader of
the opposite direction drops the transactions that come back carrying one of them (DESIGN.md
rule 6). This holds which origins are ours and counts what was dropped.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pgmigrator.lsn import Lsn


@dataclass
class OriginFilter:
    """Drop the transactions that carry one of ``origins`` (ours): nothing loops back.

    PostgreSQL 15's pgoutput has no ``origin`` option (16+), so the filter runs here, on the
    Origin message the server sends at the start of every transaction written under a
    replication origin. Only the named origins are dropped: changes that other replication
    (a native subscription, another tool) wrote into the source still flow.
    """

    origins: frozenset[str]
    transactions: int = 0  # dropped so far
    rows: int = 0  # changes inside them
    last_lsn: Lsn = field(default_factory=lambda: Lsn(0))  # end of the last one dropped
    streams: set[int] = field(default_factory=set)  # streamed transactions being dropped

    def drops(self, origin: str) -> bool:
        return origin in self.origins

    def dropped(self, end_lsn: Lsn) -> None:
        self.transactions += 1
        if end_lsn > self.last_lsn:
            self.last_lsn = end_lsn

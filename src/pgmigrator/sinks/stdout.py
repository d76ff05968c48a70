"""The ``stdout`` sink: one JSON document per line on standard output (logs go to stderr).

``send`` returns once the batch is written and flushed to the file descriptor, so the slot only
advances past what the reading process was handed (durable in the sense of DESIGN.md rule 4: a
pipe consumer that crashes loses what it read but had not processed, like any pipe).
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict

from pgmigrator.errors import SinkError
from pgmigrator.sinks.base import Event, SinkContext, register


class StdoutOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StdoutSink:
    durable = True

    def __init__(self, name: str) -> None:
        self.name = name
        self._fd = -1

    async def start(self) -> None:
        self._fd = sys.stdout.fileno()

    async def send(self, events: Sequence[Event]) -> None:
        data = b"\n".join([e.body for e in events]) + b"\n"
        await asyncio.to_thread(self._write, data)

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(self._fd, view) :]
        except BrokenPipeError as exc:
            raise SinkError(
                "standard output was closed by the reading process",
                hint="keep the consumer of the pipe running; unacknowledged events are replayed",
            ) from exc

    async def close(self) -> None:
        return None


@register("stdout", StdoutOptions)
def build_stdout_sink(name: str, options: Any, ctx: SinkContext) -> StdoutSink:
    return StdoutSink(name)

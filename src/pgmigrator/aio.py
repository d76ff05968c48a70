"""Small asyncio helpers shared by the pipelines."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable
from typing import TypeVar

from pgmigrator.errors import PgMigratorError

_T = TypeVar("_T")


async def wait_for(aw: Awaitable[_T], timeout: float | None) -> _T:
    """``asyncio.wait_for`` with Python 3.12's semantics, on 3.11 too.

    Python 3.11's ``wait_for`` can swallow a cancellation that arrives as the awaited thing
    completes (the caller then never learns it was cancelled, and a task group or a shutdown
    waits forever); 3.12 rebuilt it on ``asyncio.timeout``, as here. Raises `TimeoutError`.
    """
    async with asyncio.timeout(timeout):
        return await aw


async def wait_event(event: asyncio.Event, seconds: float) -> bool:
    """Wait up to ``seconds`` for ``event``; True once it is set."""
    with contextlib.suppress(TimeoutError):
        await wait_for(event.wait(), seconds)
    return event.is_set()


def first_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The error to act on from a task group: ours first (it knows whether to retry), else the first."""
    leaves: list[BaseException] = []

    def walk(exc: BaseException) -> None:
        if isinstance(exc, BaseExceptionGroup):
            for inner in exc.exceptions:
                walk(inner)
        else:
            leaves.append(exc)

    walk(group)
    return next((e for e in leaves if isinstance(e, PgMigratorError)), leaves[0])

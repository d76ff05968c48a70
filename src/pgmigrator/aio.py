"""Small asyncio helpers shared by the pipelines."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

_T = TypeVar("_T")


async def wait_for(aw: Awaitable[_T], timeout: float | None) -> _T:
    """``asyncio.wait_for`` with Python 3.12's semantics, on 3.11 too.

    Python 3.11's ``wait_for`` can swallow a cancellation that arrives as the awaited thing
    completes (the caller then never learns it was cancelled, and a task group or a shutdown
    waits forever); 3.12 rebuilt it on ``asyncio.timeout``, as here. Raises `TimeoutError`.
    """
    async with asyncio.timeout(timeout):
        return await aw

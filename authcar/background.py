"""Background tasks a component owns: stopped together at shutdown, quietly."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any


async def cancel_and_wait(tasks: list[asyncio.Task[Any]]) -> None:
    """Cancel every task, wait until each has ended (whatever it raised), and forget them."""
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
    tasks.clear()

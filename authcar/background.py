"""Background tasks a component owns (stopped together at shutdown, quietly), and the directory
watch that certificate and policy reloads share."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import watchfiles


async def cancel_and_wait(tasks: list[asyncio.Task[Any]]) -> None:
    """Cancel every task, wait until each has ended (whatever it raised), and forget them."""
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
    tasks.clear()


async def watch_directories(
    directories: Sequence[str | os.PathLike[str]],
    on_change: Callable[[], Awaitable[object]],
    on_watch_failed: Callable[[Exception], None],
    *,
    stop: asyncio.Event,
    poll_interval: float,
    settle_ms: int,
) -> None:
    """Call `on_change` whenever an entry of the directories changes, and every `poll_interval`
    seconds without events, until `stop` is set.

    Directories are watched, not files: a Kubernetes Secret or ConfigMap update swaps the `..data`
    symlink, which replaces directory entries and never writes to the old files. Events within
    `settle_ms` of each other are one change (the several steps of a swap). The timed calls cover
    layouts inotify cannot follow; if watching fails altogether (directory gone, inotify limits
    exhausted), `on_watch_failed` is told and only polling remains.
    """
    try:
        async for _changes in watchfiles.awatch(
            *directories,
            watch_filter=None,  # the default filter skips dot-files, and `..data` is one
            recursive=False,
            step=settle_ms,
            debounce=max(2_000, settle_ms),
            rust_timeout=max(1, round(poll_interval * 1000)),
            yield_on_timeout=True,
            stop_event=stop,
        ):
            await on_change()
    except (OSError, RuntimeError) as exc:
        on_watch_failed(exc)
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), poll_interval)
            if not stop.is_set():
                await on_change()

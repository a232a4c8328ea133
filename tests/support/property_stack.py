"""The security stack (tests/security/stack.py: provider and sidecar as processes, the byte-recording
upstream) driven from synchronous Hypothesis tests.

Hypothesis runs each example as a plain call, so the upstream's event loop runs in a thread of its
own and each example hands it coroutines. One stack serves a whole module: starting the provider
and the sidecar costs about a second, an example a few milliseconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections.abc import Coroutine, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

from tests.security.stack import Stack, running_stack
from tests.support.rawhttp import RawResponse, send_raw
from tests.support.recording_upstream import ReceivedRequest

T = TypeVar("T")
LOG_WAIT = 10.0  # generous upper bound for an access-log line to follow its answer


class ThreadedStack:
    def __init__(self, stack: Stack, loop: asyncio.AbstractEventLoop) -> None:
        self.stack = stack
        self.loop = loop
        self.log_offset = 0  # where the log stood when the last exchange began

    def run(self, coroutine: Coroutine[Any, Any, T], timeout: float = 30) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def exchange(self, request: bytes) -> tuple[RawResponse, list[ReceivedRequest]]:
        """Send one request on a new connection; the answer, and every request the upstream received
        for it once the sidecar has closed all upstream connections."""
        self.run(self._reset())
        self.log_offset = self.stack.log_size()
        response = self.run(send_raw(self.stack.port, request))
        self.run(self.stack.upstream.quiet())
        assert not self.stack.upstream.problems(), self.stack.upstream.describe()
        return response, self.stack.upstream.requests()

    async def _reset(self) -> None:
        await self.stack.upstream.quiet()
        self.stack.upstream.reset()

    def log_line(self, request_id: str) -> dict[str, Any]:
        """The access-log line of a request of the last exchange (written just after the answer:
        waited for)."""
        deadline = time.monotonic() + LOG_WAIT
        while True:
            for line in self.stack.log_since(self.log_offset).splitlines():
                if request_id in line and line.startswith("{"):
                    entry = json.loads(line)
                    if entry.get("request_id") == request_id and "event" not in entry:
                        return dict(entry)
            if time.monotonic() > deadline:
                raise AssertionError(f"no access-log line for {request_id}")
            time.sleep(0.01)


@contextlib.contextmanager
def threaded_stack(log_dir: Path, env: Mapping[str, str] | None = None) -> Iterator[ThreadedStack]:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="property-stack", daemon=True)
    thread.start()
    context = running_stack(log_dir, env={"AUTHCAR_ACCESS_LOG": "true", **(env or {})})
    try:
        stack = asyncio.run_coroutine_threadsafe(context.__aenter__(), loop).result(60)
        try:
            yield ThreadedStack(stack, loop)
        finally:
            asyncio.run_coroutine_threadsafe(context.__aexit__(None, None, None), loop).result(60)
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()

"""A limit on repeated log lines: an outage or a flood of bad input logs a trickle, not a line per request."""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Callable

LOG_INTERVAL = 10.0  # seconds between two log lines about the same kind of event


class LogLimiter:
    """At most one log line per kind of event per interval, each saying how many were left out."""

    def __init__(self, interval: float = LOG_INTERVAL, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = interval
        self.clock = clock
        self.last: dict[str, float] = {}
        self.suppressed: Counter[str] = Counter()

    def __call__(self, kind: str) -> int | None:
        """None: stay quiet; else log, mentioning this many lines left out since the last one."""
        now = self.clock()
        if now - self.last.get(kind, -math.inf) < self.interval:
            self.suppressed[kind] += 1
            return None
        self.last[kind] = now
        return self.suppressed.pop(kind, 0)

"""AUTHCAR_RATE_LIMIT (`100/s`, `6000/m`, `10/h`) and AUTHCAR_RATE_LIMIT_BURST, parsed and bounded.

Shared vocabulary: the configuration checks the settings with it and the rate-limit stage builds its
limit from it; it imports nothing of authcar. Its bounds are no looser than the store's
(`authcar.store.base.check_rate`; tests/test_rate_spec.py holds them to it), so a limit that passes
here is one every backend accepts.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

# At most a million requests at once, a million a second, and a burst that refills within a year.
MAX_BURST = 1_000_000
MAX_RATE = 1_000_000.0
MAX_REFILL = 366 * 24 * 3600.0
PERIODS = {"s": 1, "m": 60, "h": 3600}
# ASCII digits only ([0-9], not \d, which also matches other scripts' digits); at most 7 of them,
# enough for MAX_BURST, so a huge number is refused by the rule, not by arithmetic.
_SPEC = re.compile(r"\s*([0-9]{1,7})\s*/\s*([smhSMH])\s*")
EXAMPLES = "e.g. 100/s, 6000/m or 10/h"


@dataclass(frozen=True, slots=True)
class RateSpec:
    """`count` requests per `period` seconds on average, at most `burst` at once."""

    count: int
    period: int  # seconds: 1, 60 or 3600
    burst: int

    @property
    def rate(self) -> float:
        """Requests per second, as the store's GCRA step takes it."""
        return self.count / self.period


def parse_rate(text: str) -> tuple[int, int]:
    """`<count>/<s|m|h>` as (count, period seconds); ValueError with a reason otherwise."""
    match = _SPEC.fullmatch(text)
    if match is None:
        raise ValueError(f"{text[:40]!r} is not <count>/<s|m|h> ({EXAMPLES})")
    count, period = int(match[1]), PERIODS[match[2].lower()]
    if count == 0:
        raise ValueError(f"{text!r} allows nothing; leave the setting unset for no limit")
    if count > MAX_BURST:
        raise ValueError(f"{text!r}: at most {MAX_BURST} requests per period")
    if count / period > MAX_RATE:
        raise ValueError(f"{text!r} is more than {MAX_RATE:g} requests per second")
    return count, period


def rate_spec(text: str, burst: int | None) -> RateSpec:
    """The limit the settings describe; `burst` None means the rate's count. ValueError names what
    is wrong (the caller says which setting)."""
    count, period = parse_rate(text)
    if burst is None:
        burst = count
    check_burst(burst, count / period)
    return RateSpec(count, period, burst)


def check_burst(burst: int, rate: float) -> None:
    if isinstance(burst, bool) or not isinstance(burst, int):
        raise ValueError(f"must be a whole number, not {burst!r}")
    if not 1 <= burst <= MAX_BURST:
        raise ValueError(f"must be from 1 to {MAX_BURST}, not {burst}")
    if burst / rate > MAX_REFILL:
        days = math.ceil(MAX_REFILL / 86400)
        raise ValueError(f"a burst of {burst} takes more than {days} days to refill at this rate")

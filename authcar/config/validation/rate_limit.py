"""The rate limit: AUTHCAR_RATE_LIMIT's form and bounds, and a burst that the store accepts. A burst
without a rate, or a limit each worker would count on its own, is a warning."""

from __future__ import annotations

from authcar.config.problems import Problem
from authcar.config.settings import Settings, env_name
from authcar.config.validation.checks import problem
from authcar.rate_spec import check_burst, parse_rate


def validate_rate_limit(s: Settings) -> list[Problem]:
    if s.rate_limit is None:
        return []
    try:
        count, period = parse_rate(s.rate_limit)
    except ValueError as error:
        return [problem("rate_limit", str(error))]
    if s.rate_limit_burst is None:
        return []
    try:
        check_burst(s.rate_limit_burst, count / period)
    except ValueError as error:
        return [problem("rate_limit_burst", str(error), also=("rate_limit",))]
    return []


def rate_limit_warnings(s: Settings) -> list[Problem]:
    if s.rate_limit is None:
        if s.rate_limit_burst is None:
            return []
        return [
            problem("rate_limit_burst", f"has no effect without {env_name('rate_limit')}", ("rate_limit",))
        ]
    if s.redis_url is None and s.workers > 1:
        text = (
            f"with the in-memory store each of the {s.workers} workers counts on its own, so a caller"
            f" gets up to {s.workers} times the limit; set {env_name('redis_url')} to share one"
        )
        return [problem("rate_limit", text, also=("workers", "redis_url"))]
    return []

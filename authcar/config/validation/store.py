"""Shared state: the Redis URL and the settings that refine it. Without a URL the store is in this
process's memory, and the other AUTHCAR_REDIS_* settings do nothing (a warning says so)."""

from __future__ import annotations

from authcar.config.problems import Problem
from authcar.config.settings import Settings, env_name
from authcar.config.validation.checks import problem
from authcar.redis_url import (
    DEFAULT_KEY_PREFIX,
    DEFAULT_TIMEOUT,
    RedisTarget,
    check_key_prefix,
    check_timeout,
    parse_redis_url,
)

# The settings that only mean something with a URL, and their defaults.
REFINEMENTS = {
    "redis_password": None,
    "redis_ca_file": None,
    "redis_key_prefix": DEFAULT_KEY_PREFIX,
    "redis_timeout": DEFAULT_TIMEOUT,
}


def validate_store(s: Settings) -> list[Problem]:
    problems: list[Problem] = []
    target: RedisTarget | None = None
    if s.redis_url is not None:
        try:
            target = parse_redis_url(s.redis_url)
        except ValueError as error:  # names AUTHCAR_REDIS_URL, its password redacted
            problems.append(Problem("redis_url", str(error)))
    for name, check in (("redis_key_prefix", check_key_prefix), ("redis_timeout", check_timeout)):
        try:
            check(getattr(s, name))
        except ValueError as error:
            problems.append(problem(name, str(error)))
    if s.redis_ca_file is not None:
        if target is not None and not target.tls:
            text = f"needs a rediss:// {env_name('redis_url')} (the URL is {target})"
            problems.append(problem("redis_ca_file", text, also=("redis_url",)))
        elif not s.redis_ca_file.is_file():
            problems.append(problem("redis_ca_file", f"{s.redis_ca_file} does not exist or is not a file"))
    return problems


# The slowest store call that still lets a revocation reach every replica within its one second
# (authcar/revocation.py's worst_delay with its 0.25 s poll: a refresh is two calls, seen by the
# next refresh after the write; tests/config/test_store_settings.py checks the two agree).
PROMPT_TIMEOUT = 0.25


def store_warnings(s: Settings) -> list[Problem]:
    if s.redis_url is not None:
        if s.redis_timeout <= PROMPT_TIMEOUT:
            return []
        return [
            problem(
                "redis_timeout",
                f"{s.redis_timeout:g} s per call is more than the {PROMPT_TIMEOUT:g} s that lets a"
                " revocation reach every replica within a second: a Redis that slow leaves the list"
                " unconfirmed, and requests then get 503 revocation_unavailable (or pass, with"
                f" {env_name('revocation_fail_open')}=true)",
                ("revocation_fail_open",),
            )
        ]
    return [
        problem(
            name, f"has no effect without {env_name('redis_url')} (the store is in memory)", ("redis_url",)
        )
        for name, default in REFINEMENTS.items()
        if getattr(s, name) != default
    ]

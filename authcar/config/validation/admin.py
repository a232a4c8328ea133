"""The admin API: its token, and the one shared revocation list it writes."""

from __future__ import annotations

import re

from authcar.config.problems import Problem
from authcar.config.settings import Settings, env_name
from authcar.config.validation.checks import problem

MIN_ADMIN_TOKEN_LENGTH = 32
# RFC 6750 §2.1 b64token: what a Bearer credential may hold, so the token fits the header as it is.
B64TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")


def validate_admin(s: Settings) -> list[Problem]:
    if s.admin_token is None:
        return []
    problems: list[Problem] = []
    # Never the token itself in a message: only what is wrong with it.
    if len(s.admin_token) < MIN_ADMIN_TOKEN_LENGTH:
        text = f"must be at least {MIN_ADMIN_TOKEN_LENGTH} characters (it is {len(s.admin_token)})"
        problems.append(problem("admin_token", text))
    if not B64TOKEN.fullmatch(s.admin_token):
        text = "may hold only letters, digits and - . _ ~ + / (then = padding): a bearer token (RFC 6750)"
        problems.append(problem("admin_token", text))
    if s.workers > 1 and s.redis_url is None:
        # Each worker's memory store would hold its own list: a revocation would reach one of them.
        text = (
            f"with {env_name('workers')} > 1 needs {env_name('redis_url')}: each worker's memory"
            " would hold a revocation list of its own"
        )
        problems.append(problem("admin_token", text, also=("workers", "redis_url")))
    return problems


def admin_warnings(s: Settings) -> list[Problem]:
    if s.revocation_fail_open and s.redis_url is None:
        text = f"has no effect without {env_name('redis_url')}: a memory store is never out of reach"
        return [problem("revocation_fail_open", text, ("redis_url",))]
    return []

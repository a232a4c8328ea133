"""Sizes, counts and timeouts: each bounds a resource, so none may be zero (or, where 0 means "no
limit", negative), and the request-head limits must let real clients and applications through."""

from __future__ import annotations

from authcar.config.problems import Problem
from authcar.config.settings import Settings
from authcar.config.validation.checks import greater_than_zero, not_negative, problem

MIN_HEAD_BYTES = 1024


def validate_limits(s: Settings) -> list[Problem]:
    problems = greater_than_zero(
        s,
        "max_header_bytes",
        "max_header_count",
        "upstream_connect_timeout",
        "upstream_read_timeout",
        "upstream_max_connections",
        "upstream_keepalive_timeout",
        "upstream_max_header_bytes",
        "keepalive_timeout",
        "request_header_timeout",
        "request_body_timeout",
        "response_send_timeout",
        "max_connections",
    )
    problems += not_negative(
        s,
        "max_body_bytes",
        "shutdown_delay",
        "shutdown_grace_period",
        "request_body_min_rate",
        "request_buffer_bytes",
    )
    if s.max_header_bytes < MIN_HEAD_BYTES:
        problems.append(
            problem("max_header_bytes", f"below {MIN_HEAD_BYTES} bytes no real client gets through")
        )
    if s.upstream_max_header_bytes < MIN_HEAD_BYTES:
        problems.append(
            problem(
                "upstream_max_header_bytes", f"below {MIN_HEAD_BYTES} bytes few real responses get through"
            )
        )
    return problems

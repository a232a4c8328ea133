"""Opaque tokens (RFC 7662): how long answers are reused and how many calls may be in flight.
Per-issuer endpoints and credentials are checked with the issuers."""

from __future__ import annotations

from authcar.config.problems import Problem
from authcar.config.settings import Settings
from authcar.config.validation.checks import greater_than_zero


def validate_introspection(s: Settings) -> list[Problem]:
    return greater_than_zero(
        s, "introspection_cache_ttl", "introspection_negative_ttl", "introspection_max_concurrency"
    )

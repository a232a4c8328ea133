"""The application behind the sidecar: an origin on localhost, nothing more."""

from __future__ import annotations

from urllib.parse import urlsplit

from authcar.config.problems import Problem
from authcar.config.settings import Settings
from authcar.config.validation.checks import problem


def validate_upstream(s: Settings) -> list[Problem]:
    upstream = urlsplit(s.upstream)
    if upstream.scheme not in ("http", "https") or not upstream.hostname:
        return [problem("upstream", f"{s.upstream!r} is not an http:// or https:// URL with a host")]
    if upstream.query or upstream.fragment or upstream.username:
        return [problem("upstream", "must not carry a query, fragment or credentials")]
    try:
        upstream.port  # noqa: B018 - raises on an out-of-range port
    except ValueError:
        return [problem("upstream", f"{s.upstream!r} has an invalid port")]
    return []

"""When a session's access token is refreshed: shortly before it expires, by a margin that scales
with its lifetime. A fixed margin does not fit every provider: 60 s before the end of a token that
lives 60 s (or 30 s) would refresh on every request. A fifth of the lifetime, at most a minute, keeps
a freshly refreshed token fresh for four fifths of its life, whatever the provider issues."""

from __future__ import annotations

MARGIN_FRACTION = 0.2
MAX_MARGIN = 60.0  # seconds: long tokens are refreshed a minute ahead, enough for a slow provider


def refresh_margin(lifetime: float) -> float:
    """How long before its expiry a token of `lifetime` seconds is refreshed."""
    return min(MAX_MARGIN, max(0.0, lifetime) * MARGIN_FRACTION)


def refresh_due(issued_at: float, expires_at: float, now: float) -> bool:
    """Whether a token obtained at `issued_at` (when its answer arrived) and valid until `expires_at`
    (issued_at + expires_in) should be refreshed at `now`."""
    return now >= expires_at - refresh_margin(expires_at - issued_at)

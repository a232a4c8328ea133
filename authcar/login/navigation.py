"""Whether a request is a person's browser opening a page (send it to sign in) or a program calling an
API (answer 401 JSON): content negotiation and Fetch Metadata, never the path.

A page load is a GET (or HEAD) whose Accept names HTML explicitly (`*/*` is what programs send) and
prefers it to JSON, with no `X-Requested-With` (what XHR libraries add) and, where the browser sends
Fetch Metadata, `Sec-Fetch-Mode: navigate` to a `document`. `fetch()` from a page says
`Sec-Fetch-Mode: cors` (or `same-origin`), so a single-page app's API calls get 401 JSON it can act
on instead of a redirect to the provider that it cannot follow. Whether a token came with the request
is the caller's to add: any token attempt is an API call.
"""

from __future__ import annotations

from collections.abc import Iterable

HTML_TYPES = frozenset({"text/html", "application/xhtml+xml"})
JSON_TYPES = frozenset({"application/json", "application/problem+json"})
MAX_MEDIA_RANGES = 64  # an Accept header longer than any browser's is read no further
PAGE_METHODS = frozenset({"GET", "HEAD"})


def header_values(headers: Iterable[tuple[bytes, bytes]], name: bytes) -> list[str]:
    return [value.decode("latin-1") for key, value in headers if key.lower() == name]


def quality(parameters: list[str]) -> float:
    for parameter in parameters:
        key, _, value = parameter.partition("=")
        if key.strip().lower() == "q":
            try:
                q = float(value.strip())
            except ValueError:
                return 0.0
            return q if 0.0 <= q <= 1.0 else 0.0  # also refuses nan and inf
    return 1.0


def preference(accept: str, types: frozenset[str]) -> float:
    """The highest q the Accept value gives one of `types` by name (wildcards do not count)."""
    best = 0.0
    for media_range in accept.split(",")[:MAX_MEDIA_RANGES]:
        media_type, *parameters = media_range.split(";")
        if media_type.strip().lower() in types:
            best = max(best, quality(parameters))
    return best


def is_page_load(method: str, headers: Iterable[tuple[bytes, bytes]]) -> bool:
    headers = list(headers)
    if method.upper() not in PAGE_METHODS or header_values(headers, b"x-requested-with"):
        return False
    modes, destinations = header_values(headers, b"sec-fetch-mode"), header_values(headers, b"sec-fetch-dest")
    if any(mode.strip().lower() != "navigate" for mode in modes):
        return False
    if any(destination.strip().lower() != "document" for destination in destinations):
        return False
    accept = ",".join(header_values(headers, b"accept"))
    html = preference(accept, HTML_TYPES)
    return html > 0 and html >= preference(accept, JSON_TYPES)


def return_to(raw_path: bytes, query_string: bytes) -> str:
    """The URL a page load asked for, as it arrived, to come back to after signing in (the redirect
    policy then decides whether it may be followed)."""
    target = raw_path.decode("latin-1")
    return f"{target}?{query_string.decode('latin-1')}" if query_string else target

"""AUTHCAR_CLAIM_HEADERS: which identity header carries which claim, and what no claim may name.

Below both of its users: configuration validation reports every bad entry at start, and
identity_headers builds the headers from the parsed entries. It knows header names only (from
authcar.headers), nothing of tokens or requests.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from authcar.headers import FRAMING_NAMES, IDENTITY_NAMES, REQUEST_OVERRIDE_NAMES, TRUSTED_ONLY_PREFIXES

USER_HEADER = b"x-auth-request-user"
GROUPS_HEADER = b"x-auth-request-groups"
ASSERTION_HEADER = b"x-auth-request-jwt"
SIDECAR_HEADERS = frozenset({USER_HEADER, GROUPS_HEADER, ASSERTION_HEADER})
# Read by authentication or carrying the caller's credentials: never replaced by a claim.
CREDENTIAL_HEADERS = frozenset({b"authorization", b"cookie", b"proxy-authorization"})

# Letters, digits and single inner hyphens: `_` and `.` are read as `-` by some frameworks and
# dropped by some proxies, so a name using them would not reliably reach the application.
HEADER_NAME = re.compile(r"[A-Za-z0-9]+(?:-[A-Za-z0-9]+)*")


@dataclass(frozen=True, slots=True)
class ClaimHeader:
    """One `Header=claim.path` entry of AUTHCAR_CLAIM_HEADERS."""

    name: bytes  # lower case, as sent upstream
    claim: str  # dotted claim path, as for AUTHCAR_ROLES_CLAIM


def parse_claim_header(entry: str) -> ClaimHeader:
    """Parse one entry; ValueError says what is wrong with it."""
    name, separator, claim = entry.partition("=")
    name, claim = name.strip(), claim.strip()
    if not separator or not name or not claim:
        raise ValueError(f"{entry!r} is not Header=claim.path")
    if not HEADER_NAME.fullmatch(name):
        raise ValueError(f"{name!r} is not a header name of letters, digits and single '-'")
    if any(c.isspace() for c in claim):
        raise ValueError(f"{claim!r} is not a claim path (no spaces)")
    lower = name.lower().encode("ascii")
    if lower in SIDECAR_HEADERS:
        raise ValueError(f"{name} is set by the sidecar itself")
    if lower in REQUEST_OVERRIDE_NAMES:
        raise ValueError(f"{name} overrides the request's path or method; it never carries a claim")
    forwarding = lower.startswith(TRUSTED_ONLY_PREFIXES) and lower not in IDENTITY_NAMES
    if lower in FRAMING_NAMES or lower in CREDENTIAL_HEADERS or forwarding:
        raise ValueError(f"{name} is a request header the sidecar manages, not one for a claim")
    return ClaimHeader(lower, claim)


def parse_claim_headers(entries: Iterable[str]) -> tuple[ClaimHeader, ...]:
    """Parse AUTHCAR_CLAIM_HEADERS; ValueError listing every problem."""
    entries = tuple(entries)
    problems = claim_header_problems(entries)
    if problems:
        raise ValueError("; ".join(problems))
    return tuple(parse_claim_header(entry) for entry in entries)


def claim_header_problems(entries: Iterable[str]) -> list[str]:
    """Every problem in AUTHCAR_CLAIM_HEADERS, for configuration validation."""
    problems: list[str] = []
    seen: set[bytes] = set()
    for entry in entries:
        try:
            header = parse_claim_header(entry)
        except ValueError as exc:
            problems.append(str(exc))
            continue
        if header.name in seen:
            problems.append(f"{entry.partition('=')[0].strip()} is configured twice")
        seen.add(header.name)
    return problems

"""Answers a provider gives when it is broken in ways that are still HTTP 200 and JSON-labelled.

    huge     the endpoint's real answer with 4 MiB of padding: well-formed, just far too big
    nested   JSON nested 50,000 levels deep, which a recursive parser cannot finish

Both fail an OIDC endpoint only (see app.Modes); the admin calls that switch them off keep working.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from tests.idp.provider import IdP

HUGE_PADDING = 4 * 1024 * 1024
NESTING = 50_000
DOCUMENT_MODES = frozenset({"huge", "nested"})


def real_answer(idp: IdP, endpoint: str) -> Mapping[str, Any]:
    """What the endpoint would say when well (for introspection: an active token)."""
    if endpoint == "discovery":
        return idp.discovery()
    if endpoint == "jwks":
        return idp.keys
    return MappingProxyType({"active": True, "sub": "padded", "iss": idp.issuer, "token_type": "Bearer"})


def fault_document(mode: str, idp: IdP, endpoint: str) -> bytes:
    if mode == "huge":
        return json.dumps({**real_answer(idp, endpoint), "padding": "x" * HUGE_PADDING}).encode()
    if mode == "nested":
        return b'{"a":' * NESTING + b"1" + b"}" * NESTING
    raise ValueError(f"no document for mode {mode!r}")

"""What the provider's redirect to `/oauth2/callback` says, before anything is trusted: the code,
or the provider's error, with the `state` that finds the login-state cookie and the `iss` that
RFC 9207 adds against mix-up (a code from one provider presented as another's)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import parse_qsl

MAX_QUERY_BYTES = 8192
MAX_PARAMETER_CHARS = 2048
ERROR_CODE = re.compile(r"[\x20-\x21\x23-\x5b\x5d-\x7e]{1,64}")  # RFC 6749 section 4.1.2.1


class CallbackRefused(Exception):
    """Not a callback that can finish a login. `status` is 400 (malformed) or 403 (not ours);
    `reason` is a stable code; nothing from the request is in the message."""

    def __init__(self, status: int, reason: str, description: str) -> None:
        super().__init__(f"{reason}: {description}")
        self.status = status
        self.reason = reason
        self.description = description


@dataclass(frozen=True)
class Callback:
    state: str
    code: str | None  # None when the provider answered an error
    error: str | None = None  # the provider's error code (RFC 6749 4.1.2.1), e.g. access_denied


def parse_callback(query: str, *, issuer: str, issuer_sends_iss: bool) -> Callback:
    """The callback's parameters, each at most once. `issuer_sends_iss`: the provider's discovery
    says `authorization_response_iss_parameter_supported`, so a missing `iss` is refused too."""
    if len(query) > MAX_QUERY_BYTES:
        raise CallbackRefused(400, "malformed", "the callback's query is too long")
    params: dict[str, str] = {}
    for name, value in parse_qsl(query, keep_blank_values=True):
        if name in params:
            raise CallbackRefused(400, "malformed", f"the {name} parameter is repeated")
        if len(value) > MAX_PARAMETER_CHARS:
            raise CallbackRefused(400, "malformed", f"the {name} parameter is too long")
        params[name] = value
    state = params.get("state")
    if not state:
        raise CallbackRefused(403, "no_state", "the callback has no state: it is not a login we began")
    given_issuer = params.get("iss")
    if (given_issuer is not None or issuer_sends_iss) and given_issuer != issuer:
        raise CallbackRefused(403, "wrong_issuer", "the callback comes from another identity provider")
    error = params.get("error")
    if error is not None:
        if not ERROR_CODE.fullmatch(error):
            raise CallbackRefused(400, "malformed", "the provider's error code is malformed")
        return Callback(state, None, error)
    code = params.get("code")
    if not code:
        raise CallbackRefused(400, "malformed", "the callback has neither a code nor an error")
    return Callback(state, code)

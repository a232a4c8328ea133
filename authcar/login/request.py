"""The authorization request a login begins with (RFC 6749 4.1.1 with PKCE S256, RFC 7636, and the
OpenID Connect nonce): where `/oauth2/start` sends the browser."""

from __future__ import annotations

from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from authcar.login.state import LoginAttempt


def authorization_url(
    endpoint: str, *, client_id: str, redirect_uri: str, scopes: str, attempt: LoginAttempt
) -> str:
    """`endpoint` (from discovery) with the request's parameters; a query the endpoint already has
    is kept (RFC 6749 3.1), and none of our parameters may be in it twice."""
    params = {
        "response_type": "code",
        "client_id": client_id,
        "redirect_uri": redirect_uri,
        "scope": scopes,
        "state": attempt.state,
        "nonce": attempt.nonce,
        "code_challenge": attempt.code_challenge,
        "code_challenge_method": "S256",
    }
    parts = urlsplit(endpoint)
    if params.keys() & {name for name, _ in parse_qsl(parts.query, keep_blank_values=True)}:
        raise ValueError(f"the authorization endpoint's query already names a login parameter: {endpoint!r}")
    query = "&".join(part for part in (parts.query, urlencode(params)) if part)
    return urlunsplit(parts._replace(query=query, fragment=""))

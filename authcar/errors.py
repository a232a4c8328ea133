"""Outcomes that stop a request, as types, rendered to the client in one place.

The body is always JSON `{"error", "error_description", "request_id"}`; nothing in it comes from
the upstream or from secrets, so an error can never leak identity data or key material.
"""

from __future__ import annotations

import json
from typing import ClassVar

from starlette.responses import Response

from authcar.types import Headers, Send

# RFC 6750 §3.1 error codes for the WWW-Authenticate challenge (not secrets).
INVALID_TOKEN = "invalid_token"  # noqa: S105
INSUFFICIENT_SCOPE = "insufficient_scope"


class GatewayError(Exception):
    status = 500
    code = "internal_error"
    description = "the request could not be handled"

    def __init__(self, description: str | None = None, *, code: str | None = None) -> None:
        if description is not None:
            self.description = description
        if code is not None:
            self.code = code
        super().__init__(self.description)

    def extra_headers(self) -> Headers:
        return []


class BadRequest(GatewayError):
    status = 400
    code = "bad_request"
    description = "the request is malformed"


class Unauthorized(GatewayError):
    status = 401
    code = "unauthorized"
    description = "authentication is required"

    def __init__(
        self, description: str | None = None, *, code: str | None = None, token_error: str | None = None
    ) -> None:
        super().__init__(description, code=code)
        # RFC 6750 §3.1: no `error` attribute when the request carried no token at all.
        self.token_error = token_error

    def extra_headers(self) -> Headers:
        if self.token_error:
            return bearer_challenge(self.token_error, self.description)
        return bearer_challenge()


class Revoked(Unauthorized):
    """The token (or certificate subject) is on the revocation list (authcar/revocation.py)."""

    code = "revoked"
    description = "the token has been revoked"

    def __init__(self) -> None:
        super().__init__(token_error=INVALID_TOKEN)


class Forbidden(GatewayError):
    status = 403
    code = "forbidden"
    description = "the request is not allowed"


class InsufficientScope(Forbidden):
    """RFC 6750 §3.1: the token is valid but lacks scopes this service requires."""

    code = INSUFFICIENT_SCOPE
    description = "the token lacks a required scope"

    def __init__(self, required: frozenset[str]) -> None:
        super().__init__()
        self.required = required

    def extra_headers(self) -> Headers:
        return bearer_challenge(INSUFFICIENT_SCOPE, self.description, scope=" ".join(sorted(self.required)))


class PolicyDenied(Forbidden):
    """The policy refused an identified caller. The client learns no more; the log gets the rule."""

    code = "policy_denied"
    description = "the policy does not allow this request"

    def __init__(self, reason: str, rule: tuple[str, ...]) -> None:
        super().__init__()
        self.reason = reason
        self.rule = rule


class NotFound(GatewayError):
    status = 404
    code = "not_found"
    description = "no such sidecar endpoint"


class MethodNotAllowed(GatewayError):
    status = 405
    code = "method_not_allowed"
    description = "this method is not accepted by the sidecar"


class RequestTimeout(GatewayError):
    """The client was too slow sending its request (head or body); the connection is closed."""

    status = 408
    code = "request_header_timeout"
    description = "the request did not arrive in time"


class PayloadTooLarge(GatewayError):
    status = 413
    code = "body_too_large"
    description = "the request body is larger than allowed"


class URITooLong(GatewayError):
    status = 414
    code = "uri_too_long"
    description = "the request target is longer than allowed"


class RateLimited(GatewayError):
    """The caller used up its rate limit (authcar/rate_limit.py). `headers`: the IETF RateLimit-Policy
    and RateLimit fields, given by the stage that knows the limit."""

    status = 429
    code = "rate_limited"
    description = "too many requests; retry later"

    def __init__(self, retry_after: int, headers: Headers) -> None:
        super().__init__()
        self.retry_after = retry_after
        self.headers = headers

    def extra_headers(self) -> Headers:
        return [(b"retry-after", str(self.retry_after).encode()), *self.headers]


class HeadersTooLarge(GatewayError):
    status = 431
    code = "headers_too_large"
    description = "the request headers are larger than allowed"


class BadGateway(GatewayError):
    status = 502
    code = "upstream_unavailable"
    description = "the application could not be reached"


class ServiceUnavailable(GatewayError):
    status = 503
    code = "unavailable"
    description = "the sidecar is not ready"
    retry_after = 1  # seconds

    def __init__(
        self, description: str | None = None, *, code: str | None = None, retry_after: int | None = None
    ) -> None:
        super().__init__(description, code=code)
        if retry_after is not None:
            self.retry_after = retry_after

    def extra_headers(self) -> Headers:
        # Every cause is passing (a busy pool, a shutdown handing over to another pod, a store that
        # comes back): try again soon, or when the cause says it will have passed.
        return [(b"retry-after", str(self.retry_after).encode())]


class GatewayTimeout(GatewayError):
    status = 504
    code = "upstream_timeout"
    description = "the application did not answer in time"


# The upstream leg. Each failure is raised as its own type where it is found (authcar.http1,
# authcar.upstream); the status, code, description and Retry-After come from the client-facing class
# it also is. `kind` labels authcar_upstream_errors_total and the access log's upstream_error.


class UpstreamError(GatewayError):
    """A failure talking to the application. `detail` is for logs and tests, never for the client."""

    kind: ClassVar[str] = "other"

    def __init__(self, detail: str = "") -> None:
        super().__init__()
        self.detail = detail or self.description


class UpstreamFailed(UpstreamError, BadGateway):
    """Anything the other types do not name (a bug in forwarding, an unexpected exception)."""

    kind = "other"
    code = "upstream_error"
    description = "the request could not be forwarded"


class UpstreamConnectFailed(UpstreamError, BadGateway):
    kind = "connect_failed"
    code = "upstream_unavailable"
    description = "cannot connect to the application"


class UpstreamConnectTimeout(UpstreamError, BadGateway):
    kind = "connect_timeout"
    code = "upstream_connect_timeout"
    description = "timed out connecting to the application"


class UpstreamPoolExhausted(UpstreamError, ServiceUnavailable):
    """Every pooled connection stayed busy: the sidecar's own limit, not the application's failure
    to accept (that is UpstreamConnectTimeout). Passing, hence 503 with Retry-After."""

    kind = "pool_exhausted"
    code = "upstream_pool_exhausted"
    description = "every connection to the application is busy"


class UpstreamTimeout(UpstreamError, GatewayTimeout):
    kind = "read_timeout"
    code = "upstream_timeout"
    description = "the application did not answer in time"


class UpstreamReset(UpstreamError, BadGateway):
    kind = "reset"
    code = "upstream_reset"
    description = "the application closed the connection"


class UpstreamProtocolError(UpstreamError, BadGateway):
    kind = "protocol"
    code = "upstream_protocol_error"
    description = "the application sent an invalid response"


class UpstreamHeaderTooLarge(UpstreamError, BadGateway):
    kind = "header_too_large"
    code = "upstream_header_too_large"
    description = "the application's response head is larger than allowed"


class UpstreamWebSocketRejected(UpstreamError, BadGateway):
    kind = "websocket_rejected"
    code = "websocket_rejected"

    def __init__(self, status: int) -> None:
        self.description = f"the application refused the WebSocket (status {status})"
        super().__init__()


def bearer_challenge(error: str | None = None, description: str = "", **params: str) -> Headers:
    """The RFC 6750 §3 `WWW-Authenticate` header: no `error` attribute when there is no error."""
    challenge = 'Bearer realm="authcar"'
    if error is not None:
        challenge += f', error="{error}", error_description="{quote(description)}"'
    for name, value in params.items():
        challenge += f', {name}="{quote(value)}"'
    return [(b"www-authenticate", challenge.encode("latin-1", "replace"))]


def quote(text: str) -> str:
    """Make text safe inside an RFC 7230 quoted-string in a header."""
    return "".join(c for c in text if c.isprintable() and c not in '"\\')[:200]


def error_body(error: GatewayError, request_id: str) -> bytes:
    return json.dumps(
        {"error": error.code, "error_description": error.description, "request_id": request_id},
        separators=(",", ":"),
    ).encode()


def error_headers(error: GatewayError, body: bytes, request_id: str, *, close: bool = False) -> Headers:
    headers: Headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"cache-control", b"no-store"),
        (b"x-request-id", request_id.encode()),
        *error.extra_headers(),
    ]
    if close:
        headers.append((b"connection", b"close"))
    return headers


async def send_error(send: Send, error: GatewayError, request_id: str, *, head: bool = False) -> int:
    """Answer with the error; returns the number of body bytes sent."""
    body = error_body(error, request_id)
    # Closing after a 4xx for a body we did not read keeps the connection from desynchronising.
    close = error.status in (400, 408, 413, 414, 431)
    await send(
        {
            "type": "http.response.start",
            "status": error.status,
            "headers": error_headers(error, body, request_id, close=close),
        }
    )
    await send({"type": "http.response.body", "body": b"" if head else body})
    return 0 if head else len(body)


def error_response(error: GatewayError, request_id: str) -> Response:
    """The error as a Starlette response, for the sidecar's own Starlette apps (reserved, admin)."""
    body = error_body(error, request_id)
    headers = error_headers(error, body, request_id)
    # The names are unique, so a dict loses nothing; with Content-Type and -Length given, Starlette
    # adds neither.
    return Response(body, error.status, {n.decode("latin-1"): v.decode("latin-1") for n, v in headers})


def raw_error_response(error: GatewayError, request_id: str) -> bytes:
    """A complete HTTP/1.1 response, for errors found before there is an ASGI request."""
    body = error_body(error, request_id)
    reason = {
        400: b"Bad Request",
        408: b"Request Timeout",
        414: b"URI Too Long",
        431: b"Request Header Fields Too Large",
    }.get(error.status, b"Error")
    lines = [b"HTTP/1.1 %d %s" % (error.status, reason)]
    lines += [name + b": " + value for name, value in error_headers(error, body, request_id, close=True)]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body

"""Endpoints the sidecar serves itself on the public listener (login flow, assertion keys).

`GET /.well-known/authcar/jwks.json` publishes the public key of the upstream assertion
(X-Auth-Request-Jwt), without authentication: the application verifies with it. The login endpoints
arrive with a later stage; until then every other reserved path answers a JSON 404, so nothing under
the reserved prefixes ever reaches the application by accident.
"""

from __future__ import annotations

from collections.abc import Sequence

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from authcar.assertion import AssertionSigner
from authcar.errors import NotFound, error_response
from authcar.headers import new_request_id

JWKS_PATH = "/.well-known/authcar/jwks.json"
# Verifiers cache the keys for a while and refetch on an unknown `kid` (a key generated at a restart):
# a few minutes keeps both the fetches and the time a key change takes to be seen small.
JWKS_CACHE_CONTROL = "public, max-age=300"


def build_reserved_app(
    assertion_signer: AssertionSigner | None = None, login_routes: Sequence[Route] = ()
) -> Starlette:
    """`login_routes`: browser login's endpoints (authcar/login/flow.py), when AUTHCAR_LOGIN is on."""
    routes: list[Route] = list(login_routes)
    if assertion_signer is not None:
        jwks_body = assertion_signer.jwks_json()

        async def jwks(request: Request) -> Response:
            return Response(
                jwks_body, media_type="application/json", headers={"cache-control": JWKS_CACHE_CONTROL}
            )

        routes.append(Route(JWKS_PATH, jwks, methods=["GET"]))

    async def not_found(request: Request, exc: Exception) -> Response:
        # The gate put its request id in the scope (gate.with_request_id).
        return error_response(NotFound(), request.headers.get("x-request-id") or new_request_id())

    # Another method on a reserved path is as unknown as another path: 404 for both.
    return Starlette(routes=routes, exception_handlers={404: not_found, 405: not_found})

"""Endpoints the sidecar serves itself on the public listener (login flow, assertion keys).

They arrive with later stages; until then every reserved path answers a JSON 404, so nothing under
the reserved prefixes ever reaches the application by accident.
"""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response


def build_reserved_app() -> Starlette:
    async def not_found(request: Request, exc: Exception) -> Response:
        return JSONResponse(
            {
                "error": "not_found",
                "error_description": "no such sidecar endpoint",
                "request_id": request.headers.get("x-request-id", ""),
            },
            status_code=404,
        )

    return Starlette(routes=[], exception_handlers={404: not_found, 405: not_found})

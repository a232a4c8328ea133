"""Refusals as one exception type, rendered in one JSON shape: the same one authcar answers with.

`{"error": "<code>", "error_description": "...", "request_id": "..."}`, plus `fields` (what is wrong
with each input field) for validation errors.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

# Starlette's own refusals (routing), by status.
HTTP_CODES: Mapping[int, tuple[str, str]] = MappingProxyType(
    {
        404: ("not_found", "no such resource"),
        405: ("method_not_allowed", "this resource does not support the method"),
    }
)


class ApiError(Exception):
    def __init__(
        self, status: int, code: str, description: str, *, fields: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(description)
        self.status = status
        self.code = code
        self.description = description
        self.fields = dict(fields or {})


def request_id(scope: Mapping[str, Any]) -> str:
    for name, value in scope.get("headers", ()):
        if name == b"x-request-id":
            return value.decode("latin-1")
    return ""


def error_response(
    scope: Mapping[str, Any],
    status: int,
    code: str,
    description: str,
    *,
    fields: Mapping[str, str] | None = None,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    body: dict[str, Any] = {"error": code, "error_description": description, "request_id": request_id(scope)}
    if fields:
        body["fields"] = dict(fields)
    return JSONResponse(body, status_code=status, headers=headers)


async def render_api_error(request: Request, error: Exception) -> Response:
    assert isinstance(error, ApiError)
    return error_response(request.scope, error.status, error.code, error.description, fields=error.fields)


async def render_http_error(request: Request, error: Exception) -> Response:
    assert isinstance(error, HTTPException)
    code, description = HTTP_CODES.get(error.status_code, ("http_error", str(error.detail)))
    return error_response(request.scope, error.status_code, code, description, headers=error.headers)


async def render_internal_error(request: Request, error: Exception) -> Response:
    # Never a traceback on the wire; ServerErrorMiddleware has logged it.
    return error_response(request.scope, 500, "internal_error", "the request could not be handled")

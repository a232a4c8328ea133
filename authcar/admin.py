"""The admin listener: liveness, readiness with a reason per dependency, Prometheus metrics, and the
admin API under /api/ (authcar/admin_api.py) when AUTHCAR_ADMIN_TOKEN is set; without it /api/ is 404."""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from authcar.admin_api import AdminAPI
from authcar.errors import NotFound, error_response
from authcar.headers import new_request_id

if TYPE_CHECKING:
    from authcar.app import Sidecar


API_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]


def build_admin_app(sidecar: Sidecar) -> Starlette:
    async def healthz(request: Request) -> Response:
        # Alive means the event loop answers; dependencies belong to readiness, not to restarts.
        return JSONResponse({"status": "ok"})

    async def readyz(request: Request) -> Response:
        checks = await sidecar.readiness()
        ready = all(check["ok"] for check in checks.values())
        return JSONResponse({"ready": ready, "checks": checks}, status_code=200 if ready else 503)

    async def metrics(request: Request) -> Response:
        return Response(
            generate_latest(sidecar.metrics.exposition_registry()), media_type=CONTENT_TYPE_LATEST
        )

    async def not_found(request: Request, exc: Exception) -> Response:
        # Admin requests have no request id of their own; an error body always carries one.
        return error_response(NotFound(), new_request_id())

    routes = [
        Route("/healthz", healthz, methods=["GET", "HEAD"]),
        Route("/readyz", readyz, methods=["GET", "HEAD"]),
        Route("/metrics", metrics, methods=["GET"]),
    ]
    token = sidecar.settings.admin_token
    if token is not None:
        # Every method and path under /api/: the API authenticates before it says what exists.
        api = AdminAPI(token, sidecar.revocations)
        routes.append(Route("/api/{rest:path}", api.handle, methods=API_METHODS))
    return Starlette(
        routes=routes,
        exception_handlers={404: not_found, 405: not_found},
    )

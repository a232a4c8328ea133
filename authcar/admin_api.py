"""The admin API under /api/ on the admin listener, behind `Authorization: Bearer $AUTHCAR_ADMIN_TOKEN`.

    POST   /api/v1/revocations  {"jti"|"sub"|"sid": "<value>", "expires_in": <seconds>}  201 + entry
    GET    /api/v1/revocations                                                        200 + list
    DELETE /api/v1/revocations  the same JSON as POST (expires_in checked, not used)  204

Every request is authenticated before anything else is looked at, so a caller without the token
learns nothing about which endpoints exist. The token is compared as SHA-256 digests with
`hmac.compare_digest`: constant time, whatever the lengths. A body is at most MAX_BODY_BYTES,
decoded through authcar.jsonlimits, and every mistake is a 400 with its own code. Answers are the
errors.py JSON bodies.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import time
from email.utils import formatdate
from typing import Any

from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response

from authcar.errors import (
    INVALID_TOKEN,
    BadRequest,
    GatewayError,
    NotFound,
    PayloadTooLarge,
    ServiceUnavailable,
    Unauthorized,
    error_response,
)
from authcar.headers import new_request_id
from authcar.jsonlimits import JSONLimits, JSONRejected, decode_object
from authcar.loglimit import LogLimiter
from authcar.revocation import (
    DEFAULT_EXPIRES_IN,
    KINDS,
    MAX_EXPIRES_IN,
    MAX_VALUE_BYTES,
    Revocation,
    RevocationList,
    retry_after,
)
from authcar.store import StoreFull, StoreUnavailable

log = logging.getLogger("authcar.admin")

REVOCATIONS_PATH = "/api/v1/revocations"
MAX_BODY_BYTES = 4096
# One object of a kind and an expiry (depth 2: a list or object as a value is a wrong type, not a
# parse error). Strings count as written: 255 UTF-8 bytes may take 6 characters each (`\u00e9`).
BODY_LIMITS = JSONLimits(max_bytes=MAX_BODY_BYTES, max_depth=2, max_members=8, max_string=2048)
MEMBERS = frozenset({*KINDS, "expires_in"})


def parse_revocation(body: bytes) -> Revocation:
    """The entry a POST or DELETE body names, or BadRequest with a code saying what is wrong."""
    try:
        document = decode_object(body, BODY_LIMITS)
    except JSONRejected as rejected:
        raise BadRequest(f"the body must be a JSON object: {rejected.detail}", code="invalid_json") from None
    unknown = sorted(set(document) - MEMBERS)
    if unknown:
        raise BadRequest(
            f"unknown member {unknown[0][:40]!r}; expected one of jti, sub, sid and optionally expires_in",
            code="unknown_member",
        )
    kinds = [kind for kind in KINDS if kind in document]
    if not kinds:
        raise BadRequest("the body names no jti, sub or sid", code="missing_kind")
    if len(kinds) > 1:
        raise BadRequest("the body names more than one of jti, sub and sid", code="several_kinds")
    kind = kinds[0]
    value = document[kind]
    if not isinstance(value, str):
        raise BadRequest(f"{kind} must be a string", code="invalid_value_type")
    if not value:
        raise BadRequest(f"{kind} must not be empty", code="empty_value")
    if len(value.encode("utf-8")) > MAX_VALUE_BYTES:
        raise BadRequest(f"{kind} is longer than {MAX_VALUE_BYTES} UTF-8 bytes", code="value_too_long")
    if not value.isprintable():
        raise BadRequest(f"{kind} holds control or non-printable characters", code="invalid_value")
    expires_in = document.get("expires_in", DEFAULT_EXPIRES_IN)
    # json gives int or float, never NaN or infinity (jsonlimits refuses them); bool is an int.
    if isinstance(expires_in, bool) or not isinstance(expires_in, int | float):
        raise BadRequest("expires_in must be a number of seconds", code="invalid_expires_in")
    if not 0 < expires_in <= MAX_EXPIRES_IN:
        raise BadRequest(
            f"expires_in must be more than 0 and at most {MAX_EXPIRES_IN:g} seconds",
            code="invalid_expires_in",
        )
    return Revocation(kind, value, float(expires_in))


def described(entry: Revocation, now: float) -> dict[str, Any]:
    return {
        "kind": entry.kind,
        "value": entry.value,
        "expires_in": round(entry.expires_in, 3),
        "expires_at": formatdate(now + entry.expires_in, usegmt=True),
    }


class AdminAPI:
    """The /api/ tree, for one admin token and the worker's revocation list."""

    def __init__(self, token: str, revocations: RevocationList) -> None:
        self.digest = hashlib.sha256(token.encode()).digest()
        self.revocations = revocations
        self.quiet = LogLimiter()

    async def handle(self, request: Request) -> Response:
        request_id = new_request_id()
        try:
            self.authenticate(request)
            if request.url.path != REVOCATIONS_PATH:
                raise NotFound("no such admin endpoint")
            if request.method == "GET":
                return await self.list_revocations()
            if request.method == "POST":
                return await self.revoke(await read_body(request))
            if request.method == "DELETE":
                return await self.unrevoke(await read_body(request))
            raise NotFound("no such admin endpoint")
        except GatewayError as error:
            return error_response(error, request_id)
        except StoreFull:
            soonest = await self.soonest_expiry()
            full = ServiceUnavailable(
                "the revocation list is full; an entry must expire or be deleted first",
                code="revocation_list_full",
                retry_after=soonest,
            )
            return error_response(full, request_id)
        except StoreUnavailable as exc:
            log.error("admin_store_unavailable", extra={"error": str(exc), "request_id": request_id})
            unavailable = ServiceUnavailable("the shared store is unreachable", code="store_unavailable")
            return error_response(unavailable, request_id)

    def authenticate(self, request: Request) -> None:
        scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not credentials.strip():
            raise Unauthorized("the admin token is required", code="no_credentials")
        given = hashlib.sha256(credentials.strip().encode("utf-8", "surrogateescape")).digest()
        if not hmac.compare_digest(given, self.digest):
            left_out = self.quiet("wrong_token")
            if left_out is not None:
                client = request.client.host if request.client else ""
                log.warning("admin_token_refused", extra={"client": client, "suppressed": left_out})
            raise Unauthorized(
                "the admin token is not valid", code="invalid_admin_token", token_error=INVALID_TOKEN
            )

    async def list_revocations(self) -> Response:
        entries = await self.revocations.listed()
        now = time.time()
        listed = [described(entry, now) for entry in entries]
        return JSONResponse(
            {"revocations": listed, "count": len(listed)}, headers={"cache-control": "no-store"}
        )

    async def revoke(self, body: bytes) -> Response:
        entry = parse_revocation(body)
        await self.revocations.add(entry)
        log.info("revoked", extra={"kind": entry.kind, "value": entry.value, "expires_in": entry.expires_in})
        return JSONResponse(
            described(entry, time.time()), status_code=201, headers={"cache-control": "no-store"}
        )

    async def unrevoke(self, body: bytes) -> Response:
        entry = parse_revocation(body)
        await self.revocations.remove(entry.kind, entry.value)
        log.info("unrevoked", extra={"kind": entry.kind, "value": entry.value})
        return Response(status_code=204)

    async def soonest_expiry(self) -> int:
        try:
            return retry_after(await self.revocations.soonest_expiry())
        except StoreUnavailable:
            return 1


async def read_body(request: Request) -> bytes:
    """The whole body, at most MAX_BODY_BYTES (413 above, before reading on when it says so)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise PayloadTooLarge(f"the body is larger than {MAX_BODY_BYTES} bytes")
    body = bytearray()
    try:
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_BODY_BYTES:
                raise PayloadTooLarge(f"the body is larger than {MAX_BODY_BYTES} bytes")
    except ClientDisconnect:
        raise BadRequest("the body ended early", code="invalid_json") from None
    return bytes(body)

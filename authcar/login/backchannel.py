"""OpenID Connect Back-Channel Logout 1.0: `POST /oauth2/backchannel_logout`, where the provider
tells us, server to server, that a person signed out there (or was signed out by an administrator).

    body        application/x-www-form-urlencoded, exactly one `logout_token`, at most 16 KiB (413)
    token       the login issuer's signature, exact issuer, audience = our client id, expiry (the
                same JWT validator as every token), then what makes it a logout token (tokens.py:
                the back-channel event, no nonce, a recent `iat`, a `sid` and/or a `sub`)
    replay      its `jti` is remembered in the shared store for as long as it could be accepted,
                so the same token is refused on every replica (400) once its sessions ended; a
                retry of a delivery the store failed midway (503) is finished, not refused
    effect      every session made under the provider's `sid` ends, on every replica (the records
                are in the shared store); with only a `sub`, or when no session carries the `sid`
                (providers that omit `sid` from ID tokens), every session of the subject ends; a
                `sid` whose sessions ended here already (sign-out) ends no other

The answer is 200 when the sessions ended (none left is success too), 400 with a reason for a
token that is not a valid logout token, 503 when the store cannot confirm it (the sessions may still
live: the provider should retry). No cookie is read or set: the caller is not a browser.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from urllib.parse import parse_qsl

from starlette.requests import Request
from starlette.responses import Response

from authcar.claims import TokenRejected
from authcar.errors import BadRequest, GatewayError, PayloadTooLarge, ServiceUnavailable, error_response
from authcar.login.provider import LoginProvider
from authcar.login.tokens import LOGOUT_TOKEN_MAX_AGE, LoginTokenRejected, LogoutRequest, check_logout_token
from authcar.store import Store, StoreUnavailable
from authcar.store.sessions import SessionRecords, digest

log = logging.getLogger("authcar.login")

MAX_BODY_BYTES = 16 * 1024  # a logout token is well under 2 KiB
FORM = "application/x-www-form-urlencoded"
# A token's `iat` may not be older than LOGOUT_TOKEN_MAX_AGE (plus leeway either side): its jti must
# be remembered at least that long for a replay to meet it.
REPLAY_MARGIN = 5.0
# The jti marker: PENDING from the first delivery until its sessions ended, then DONE. Only a DONE
# one is a replay: a delivery the store failed midway (the marker written, the ending or the marker's
# removal not) is finished by the provider's retry instead of being refused for good.
PENDING, DONE = b"pending", b"done"


class BackChannelLogout:
    def __init__(
        self,
        provider: LoginProvider,
        records: SessionRecords,
        store: Store,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.provider = provider
        self.records = records
        self.store = store
        self.clock = clock

    async def endpoint(self, request: Request) -> Response:
        request_id = request.headers.get("x-request-id", "")
        try:
            ended = await self.logout(request)
        except GatewayError as error:
            return error_response(error, request_id)
        return Response(
            b'{"sessions_ended":%d}' % ended,
            200,
            {"content-type": "application/json", "cache-control": "no-store"},
        )

    async def logout(self, request: Request) -> int:
        token = await self.logout_token(request)
        leeway = self.provider.issuer.policy.leeway
        try:
            claims = await self.provider.verified_logout_token(token)
            asked = check_logout_token(
                claims, client_id=self.provider.client_id, now=self.clock(), leeway=leeway
            )
        except (TokenRejected, LoginTokenRejected) as exc:
            if exc.reason == "keys_unavailable":
                raise ServiceUnavailable(
                    "the provider's keys are not known yet", code="keys_unavailable"
                ) from None
            log.warning("backchannel_logout_refused", extra={"reason": exc.reason})
            raise BadRequest("the logout token is not valid", code="invalid_logout_token") from None
        marker = "logout-jti:" + digest(f"{self.provider.issuer.url} {asked.jti}")
        ttl = LOGOUT_TOKEN_MAX_AGE + 2 * leeway + REPLAY_MARGIN
        try:
            # A marker still PENDING is an earlier delivery the store failed midway (or one under
            # way): ending the same sessions again is harmless, refusing would leave them alive.
            first = await self.store.set_if_absent(marker, PENDING, ttl)
            if not first and await self.store.get(marker) != PENDING:
                log.warning("backchannel_logout_refused", extra={"reason": "replayed"})
                raise BadRequest("this logout token was used already", code="logout_token_replayed")
            ended = await self.end_sessions(asked)
            await self.store.set(marker, DONE, ttl)
        except StoreUnavailable:
            raise ServiceUnavailable(
                "the sessions cannot be ended now", code="session_store_unavailable"
            ) from None
        log.info("backchannel_logout", extra={"subject": asked.sub or "", "sessions": ended})
        return ended

    async def end_sessions(self, asked: LogoutRequest) -> int:
        ended = 0
        known = False
        if asked.sid is not None:
            # A sid we indexed but whose sessions ended already (signed out here, then the provider
            # tells every client) ends nothing more: the subject's other devices live on.
            known = await self.records.knows_provider_session(asked.sid)
            ended = await self.records.end_provider_session(asked.sid)
        if asked.sub is not None and (asked.sid is None or not known):
            ended = await self.records.end_subject(asked.sub)
        return ended

    async def logout_token(self, request: Request) -> str:
        media_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()
        if media_type != FORM:
            raise BadRequest("the body must be a form with a logout_token", code="bad_logout_request")
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_BODY_BYTES:
                raise PayloadTooLarge("the logout request is too large", code="body_too_large")
        try:
            fields = parse_qsl(body.decode("ascii"), keep_blank_values=True, strict_parsing=True)
        except (UnicodeDecodeError, ValueError):
            fields = []
        tokens = [value for name, value in fields if name == "logout_token"]
        if len(tokens) != 1 or not tokens[0]:
            raise BadRequest("the body must carry exactly one logout_token", code="bad_logout_request")
        return tokens[0]

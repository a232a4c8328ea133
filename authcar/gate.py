"""The request pipeline: every request on the public listener passes through `Gate.__call__`.

    1. frame     request id, header rules (hop-by-hop, identity headers, X-Forwarded-*), body limits
    2. route     one path normalisation (ambiguous paths: 400); reserved endpoints (/oauth2/*,
                 /.well-known/authcar/*) go to the sidecar's own app; forward-auth (/oauth2/auth)
                 instead decides the request a trusted gateway describes (authcar/forward_auth.py)
    3. authn     who is calling (authcar/authn/chain.py): public path, token, browser session,
                 certificate, or 401 (a page load without a session: 302 to sign in, authcar/login/);
                 then the revocation list (authcar/revocation.py): 401 revoked, or 503 when it
                 cannot be confirmed; then the rate limit (authcar/rate_limit.py), per subject
                 or client address: 429
    4. authz     may they do this (authcar/policy/): one decision against one policy version;
                 dry run lets a denial through, logged
    5. inject    identity headers and the signed assertion (authcar/identity_headers.py)
    6. forward   to the upstream, streaming; WebSockets bridged. Forward-auth answers 200 with the
                 identity headers instead, for the gateway to copy: nothing is forwarded
    7. record    one access-log line and the metrics, from the request's RequestRecord

The gate is given its parts (authcar/app.py passes the real ones; tests/test_gate.py stand-ins), and
each stage writes what it learns into the request's one RequestRecord rather than into variables
that the error handlers rewrite. Any exception before forwarding becomes an error answer:
authentication or authorization failures deny, everything else is a 502. Nothing ever answers with a
traceback.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol
from urllib.parse import unquote

from authcar.authn.certificate import certificate_of, client_cert_header
from authcar.config import Settings
from authcar.errors import (
    BadGateway,
    BadRequest,
    Forbidden,
    GatewayError,
    HeadersTooLarge,
    MethodNotAllowed,
    PayloadTooLarge,
    PolicyDenied,
    RateLimited,
    ServiceUnavailable,
    Unauthorized,
    send_error,
)
from authcar.exchange import Exchange
from authcar.extensions import TARGET_AUTHORITY_EXTENSION
from authcar.forward_auth import Description, ForwardAuth
from authcar.headers import Framed, HeaderRules, request_id_from
from authcar.identity import ANONYMOUS, Identity
from authcar.loglimit import LogLimiter
from authcar.observe import AccessEntry, AccessLog, Metrics
from authcar.paths import PublicPaths, normalise_path
from authcar.policy import Policy, authorize
from authcar.types import ASGIApp, Headers, Receive, Scope, Send

if TYPE_CHECKING:
    from authcar.tracing import RequestTrace, Tracing

log = logging.getLogger("authcar.gate")

WELL_KNOWN_PREFIX = "/.well-known/authcar/"
# TRACE echoes the request, with the identity headers the sidecar adds, back to the caller (XST);
# CONNECT would turn the sidecar into a tunnel. Neither has a place in front of an application.
REFUSED_METHODS = frozenset({"TRACE", "CONNECT"})
# HTTP/2 and later arrive over TLS ALPN or not at all; a request line claiming them is not served.
SERVED_VERSIONS = frozenset({"1.0", "1.1"})
WEBSOCKET_SCHEMES = {"ws": "http", "wss": "https"}

# How a request ended, as the access log and the `authcar_requests` metric name it: let through by
# the policy (for a caller or for anyone), denied, let through by dry run despite a denial, answered
# by the sidecar's own endpoints, refused by the rate limit, or failed (bad request, upstream
# failure, a bug, shutdown).
Decision = Literal["allow", "anonymous", "deny", "dry_run_allow", "sidecar", "rate_limited", "error"]
PASSED = frozenset({"allow", "anonymous", "dry_run_allow"})


# The parts the gate uses, as narrow as it uses them (app.py passes the real ones; tests may pass
# stand-ins). Header rules, metrics and the access log are passed as they are: they need no I/O.
class Authenticator(Protocol):
    """authcar.authn.chain.Authentication: who is calling, or Unauthorized/Forbidden."""

    async def authenticate(self, scope: Scope, path: str) -> Identity: ...


class RevocationCheck(Protocol):
    """authcar.revocation.RevocationList: Revoked (401) or ServiceUnavailable (503), without I/O."""

    def check(self, identity: Identity) -> None: ...


class Limiter(Protocol):
    """authcar.rate_limit.RateLimiter: returns within the limit, raises RateLimited over it."""

    async def admit(self, identity: Identity, client: str) -> None: ...


class PolicyHolder(Protocol):
    """authcar.policy.reload.PolicySource: the policy version serving now."""

    @property
    def current(self) -> Policy: ...

    def explain_denial(self, identity: Identity) -> None: ...


class IdentityInjector(Protocol):
    """authcar.identity_headers.IdentityHeaders: what the application is told about the caller."""

    def headers_for(self, identity: Identity, method: str, path: str) -> Headers: ...


class Forwarder(Protocol):
    """authcar.upstream.Upstream: the request to the application and its answer back."""

    async def forward(
        self, scope: Scope, receive: Receive, send: Send, framed: Framed, exchange: Exchange
    ) -> None: ...

    async def forward_websocket(
        self, scope: Scope, receive: Receive, send: Send, framed: Framed, exchange: Exchange
    ) -> None: ...


class LoginHooks(Protocol):
    """authcar.login.flow.BrowserLogin, when AUTHCAR_LOGIN is on: what browser login adds to a
    request that is not one of its own endpoints."""

    def challenge(self, scope: Scope, error: GatewayError) -> GatewayError: ...

    def forward_auth_challenge(
        self, decided: Scope, described_url: str, error: GatewayError
    ) -> GatewayError: ...

    def session_headers(self, scope: Scope) -> Headers: ...

    def without_own_cookies(self, headers: Headers) -> Headers: ...


@dataclass(frozen=True, slots=True)
class GateOptions:
    """The settings the gate itself reads, and nothing else of the configuration."""

    reserved_prefix: str
    max_header_count: int
    max_body_bytes: int  # 0: no limit
    role_prefix: str
    dry_run: bool
    dry_run_paths: tuple[str, ...]
    forward_client_cert: bool

    @classmethod
    def from_settings(cls, settings: Settings) -> GateOptions:
        return cls(
            reserved_prefix=settings.reserved_prefix,
            max_header_count=settings.max_header_count,
            max_body_bytes=settings.max_body_bytes,
            role_prefix=settings.policy_role_prefix,
            dry_run=settings.dry_run,
            dry_run_paths=settings.dry_run_paths,
            forward_client_cert=settings.tls_forward_client_cert,
        )


@dataclass(slots=True)
class RequestRecord:
    """One request's outcome as the pipeline learns it; the record step turns it into the access
    line and the metrics. Stages fill in what they find; what is left at its default did not happen."""

    started: float  # time.perf_counter() when the gate took the request
    exchange: Exchange = field(default_factory=Exchange)
    request_id: str = ""  # "" until framing settles on one
    client: str = ""  # the real client as trusted proxies tell it (the peer until framing)
    peer: str = ""  # the address the connection comes from
    decision: Decision = "error"
    identity: Identity = ANONYMOUS
    roles: tuple[str, ...] = ()  # the caller's roles, as the policy saw them
    rule: tuple[str, ...] = ()  # the policy line that decided
    reason: str = ""  # why a request was refused, or why a denial was let through
    policy_version: str = ""
    forward_auth: bool = False  # a gateway's forward-auth request (/oauth2/auth)
    described: Description | None = None  # the request it asks about, once its description is vetted
    trace: RequestTrace | None = None  # its spans, when tracing is on (authcar/tracing.py)

    @property
    def status(self) -> int:
        exchange = self.exchange
        return exchange.status or (499 if exchange.client_gone else 0)


class Gate:
    """The public listener's ASGI app, built from the parts it uses (see authcar/app.py)."""

    def __init__(
        self,
        *,
        header_rules: HeaderRules,
        authentication: Authenticator,
        revocations: RevocationCheck,
        policy: PolicyHolder,
        identity_headers: IdentityInjector,
        upstream: Forwarder,
        reserved_app: ASGIApp,
        metrics: Metrics,
        access_log: AccessLog,
        options: GateOptions,
        rate_limit: Limiter | None = None,
        login: LoginHooks | None = None,
        tracing: Tracing | None = None,
    ) -> None:
        self.header_rules = header_rules
        self.authentication = authentication
        self.revocations = revocations
        self.policy = policy
        self.identity_headers = identity_headers
        self.upstream = upstream
        self.reserved_app = reserved_app
        self.metrics = metrics
        self.access_log = access_log
        self.options = options
        self.rate_limit = rate_limit
        self.login = login
        self.tracing = tracing
        self.reserved_prefixes = (options.reserved_prefix, WELL_KNOWN_PREFIX)
        self.max_body_bytes = options.max_body_bytes
        self.role_prefix = options.role_prefix
        self.dry_run = options.dry_run
        self.dry_run_paths = PublicPaths.from_entries(options.dry_run_paths) or None
        self.forward_auth = ForwardAuth(options.reserved_prefix, REFUSED_METHODS)
        self.quiet = LogLimiter()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http" or kind == "websocket":
            await self.handle(scope, receive, send, websocket=kind == "websocket")
        elif kind == "lifespan":
            await self.lifespan(receive, send)

    async def handle(self, scope: Scope, receive: Receive, send: Send, *, websocket: bool) -> None:
        outcome = RequestRecord(started=time.perf_counter())
        trace = outcome.trace = self.tracing.begin(scope) if self.tracing is not None else None
        client = scope.get("client")
        outcome.client = outcome.peer = client[0] if client else ""
        exchange = outcome.exchange
        self.metrics.in_flight.inc()
        try:
            # 1. frame
            framed = self.frame(scope)
            outcome.request_id = framed.request_id
            outcome.client = framed.client_ip

            # 2. route
            if not scope["path"].startswith("/"):
                # `OPTIONS *` (asterisk-form): there is no path to authorize or to forward.
                raise BadRequest("the request target must be a path", code="bad_request_target")
            if scope.get("method") in REFUSED_METHODS:
                raise MethodNotAllowed()
            # The request the stages decide: this one, or the one a forward-auth request describes.
            decided = scope
            described = None
            if not websocket and self.forward_auth.recognises(scope.get("raw_path") or b""):
                outcome.forward_auth = True
                trusted = self.header_rules.is_trusted(outcome.peer)
                described = outcome.described = self.forward_auth.describe(scope, trusted=trusted)
                decided, path = described.scope(scope), described.path
            else:
                # One normalisation (ambiguous paths are 400): what is checked is what is forwarded.
                path = self.checked_path(scope)
                if path.startswith(self.reserved_prefixes):
                    outcome.decision = "sidecar"
                    own_scope, own_send = with_request_id(scope, send, framed.request_id, exchange)
                    await self.reserved_app(own_scope, receive, own_send)
                    return

            # 3. authn
            if trace is None or not trace.recording:
                identity = await self.authentication.authenticate(decided, path)
            else:
                with trace.stage("authenticate") as span:
                    identity = await self.authentication.authenticate(decided, path)
                    span.set_attribute("authcar.auth.source", identity.source)
            outcome.identity = identity
            self.revocations.check(identity)  # cached tokens too: it reads the identity, not the token
            if self.rate_limit is not None:
                await self.rate_limit.admit(identity, outcome.client)

            # 4. authz
            method = decided.get("method", "GET")  # a WebSocket handshake is a GET
            decision_started = time.time_ns() if trace is not None and trace.recording else 0
            request, verdict = authorize(self.policy.current, identity, method, path, self.role_prefix)
            if decision_started:
                trace.decided(decision_started, verdict.allowed, verdict.rule, verdict.policy_version)
            outcome.roles, outcome.rule = request.roles, verdict.rule
            outcome.policy_version = verdict.policy_version
            if verdict.allowed:
                self.metrics.count_decision("allow")
                outcome.decision = "anonymous" if identity.is_anonymous else "allow"
            elif self.is_dry_run(method, path):
                self.metrics.count_decision("dry_run_allow")
                outcome.decision, outcome.reason = "dry_run_allow", verdict.reason
            else:
                self.metrics.count_decision("deny")
                outcome.reason = verdict.reason
                self.policy.explain_denial(identity)
                if identity.is_anonymous:
                    # Signing in might help: ask for credentials rather than refuse outright.
                    raise Unauthorized("a bearer token is required", code="no_credentials")
                raise PolicyDenied(verdict.reason, verdict.rule)

            # 5. inject
            identity_headers = self.identity_headers.headers_for(identity, method, path)
            if self.login is not None:
                identity_headers = [*identity_headers, *self.login.session_headers(decided)]
            if described is not None:
                # 6. (forward-auth) answer: the gateway copies the headers onto the request it holds.
                await answer_forward_auth(send, identity_headers, framed.request_id_bytes, exchange)
                return
            framed.headers.extend(identity_headers)
            if self.login is not None:
                # The session id is the browser's bearer secret: the application never sees it.
                framed.headers[:] = self.login.without_own_cookies(framed.headers)
            if self.options.forward_client_cert and (certificate := certificate_of(scope)) is not None:
                framed.headers.append(client_cert_header(certificate))

            # 6. forward
            upstream_span = None
            if trace is not None:
                upstream_span = trace.upstream(method, path, framed.headers)
            try:
                if websocket:
                    await self.upstream.forward_websocket(scope, receive, send, framed, exchange)
                else:
                    await self.upstream.forward(scope, receive, send, framed, exchange)
            finally:
                if upstream_span is not None:
                    upstream_span.set_attribute("http.response.status_code", exchange.status)
                    upstream_span.end()
        except GatewayError as error:
            # A client that left mid-upload gets no answer; log it as such, not as the app's failure.
            exchange.status = 499 if exchange.client_gone else error.status
            if outcome.decision in PASSED:
                outcome.decision = "error"
            if isinstance(error, Unauthorized | Forbidden):
                outcome.decision = "deny"
                outcome.reason = outcome.reason or error.code
            elif isinstance(error, RateLimited):
                outcome.decision = "rate_limited"
            if self.login is not None and not websocket:
                if outcome.described is not None:
                    # The gateway keeps its 401 and learns where to send a person to sign in.
                    error = self.login.forward_auth_challenge(
                        outcome.described.scope(scope), outcome.described.url, error
                    )
                elif not outcome.forward_auth:
                    # A person's page load is sent to sign in instead of getting the 401.
                    error = self.login.challenge(scope, error)
                exchange.status = 499 if exchange.client_gone else error.status
            await self.reject(scope, send, error, outcome, websocket)
        except Exception:
            # A bug, not a verdict: never let it through as a 500 with a traceback. One request
            # that trips it is logged in full; a flood of them logs a trickle with the count.
            left_out = self.quiet("unhandled")
            if left_out is not None:
                log.exception(
                    "unhandled error in the gate",
                    extra={"request_id": outcome.request_id, "suppressed": left_out},
                )
            exchange.status = 502
            outcome.decision = "error"
            error = BadGateway("the sidecar failed to handle the request", code="internal_error")
            await self.reject(scope, send, error, outcome, websocket)
        except asyncio.CancelledError:
            # The server cancels requests still running when the shutdown grace period ends. The
            # client gets a clean 503 if nothing was sent yet (uvicorn would log a traceback and
            # answer a text/plain 500); the task ends here either way.
            exchange.status = 503
            outcome.decision = "error"
            error = ServiceUnavailable("the sidecar is shutting down", code="shutting_down")
            await self.reject(scope, send, error, outcome, websocket)
        finally:
            self.metrics.in_flight.dec()
            # 7. record
            self.record(scope, outcome)
            if trace is not None:
                trace.end(
                    status=outcome.status,
                    path=scope.get("raw_path", b"").decode("latin-1"),
                    client=outcome.client,
                    decision=outcome.decision,
                    request_id=outcome.request_id,
                )

    def is_dry_run(self, method: str, path: str) -> bool:
        """A denial here is logged and let through (AUTHCAR_DRY_RUN, AUTHCAR_DRY_RUN_PATHS)."""
        return self.dry_run or (self.dry_run_paths is not None and self.dry_run_paths.matches(method, path))

    def frame(self, scope: Scope) -> Framed:
        raw_headers = scope["headers"]
        # The protocol enforces the limit while parsing; this catches any other server we run under.
        if len(raw_headers) > self.options.max_header_count:
            raise HeadersTooLarge("too many request headers")
        version = scope.get("http_version", "1.1")
        if version not in SERVED_VERSIONS:
            # The parser takes any digit.digit; a version we do not speak has no agreed framing.
            raise BadRequest(f"HTTP/{version} is not served here", code="unsupported_http_version")
        scheme = scope.get("scheme", "http")
        # A WebSocket's scope says ws/wss; the application's X-Forwarded-Proto means http/https.
        scheme = WEBSOCKET_SCHEMES.get(scheme, scheme)
        framed = self.header_rules.frame(raw_headers, scope.get("client"), scheme)
        if not framed.host and version == "1.1":
            raise BadRequest("an HTTP/1.1 request needs a Host header", code="missing_host")
        authority = scope["extensions"].get(TARGET_AUTHORITY_EXTENSION) if "extensions" in scope else None
        if authority is not None and authority.lower() != framed.host.encode("ascii").lower():
            # The target's authority is the request's host (RFC 9112 §3.2.2): two hosts, one request.
            raise BadRequest("the request target names another host than Host", code="bad_host")
        if framed.chunked and version == "1.0":
            # RFC 9112 §6.1: HTTP/1.0 has no chunked coding; such framing is faulty whatever follows.
            raise BadRequest("Transfer-Encoding in an HTTP/1.0 request", code="bad_transfer_encoding")
        if scope["type"] == "websocket" and (framed.chunked or framed.content_length):
            # A handshake has no body: bytes after its head would reach the application unchecked.
            raise BadRequest("a WebSocket handshake cannot carry a body", code="bad_request")
        if (
            self.max_body_bytes
            and framed.content_length is not None
            and framed.content_length > self.max_body_bytes
        ):
            raise PayloadTooLarge()
        return framed

    def checked_path(self, scope: Scope) -> str:
        raw_path: bytes | None = scope.get("raw_path")
        if raw_path is None:
            # A server that gives only the decoded path leaves nothing safe to check and forward.
            raise BadRequest("the server gave no raw request path", code="bad_request_target")
        path = normalise_path(raw_path)
        normalised = path.encode("ascii")
        if normalised != raw_path:
            scope["raw_path"] = normalised
            scope["path"] = unquote(path)
        return path

    async def reject(
        self, scope: Scope, send: Send, error: GatewayError, outcome: RequestRecord, websocket: bool
    ) -> None:
        """Answer with the error, over HTTP or as a refused WebSocket handshake.

        A request that failed before framing settled on a request id answers with the client's, if
        well-formed, else a new one; the record keeps the id the client was given.
        """
        request_id = outcome.request_id = outcome.request_id or request_id_from(scope["headers"])
        try:
            if websocket:
                sent = await send_error(wrap_websocket_send(send), error, request_id)
            else:
                sent = await send_error(send, error, request_id, head=scope.get("method") == "HEAD")
        except (RuntimeError, OSError):
            # The response had already started (e.g. a bug after the status line), or the client is
            # gone (uvicorn's ClientDisconnected is an OSError): nothing left to say.
            sent = 0
        outcome.exchange.bytes_out = sent

    def record(self, scope: Scope, outcome: RequestRecord) -> None:
        """The request's metrics and access line, from its record (and the scope it ended with:
        the path logged is the normalised one that was checked and forwarded)."""
        duration = time.perf_counter() - outcome.started
        exchange = outcome.exchange
        status = outcome.status
        metrics = self.metrics
        metrics.count_request(status, outcome.decision)
        if outcome.forward_auth:
            metrics.count_forward_auth(status, outcome.decision)
        metrics.request_duration.observe(duration)
        if exchange.upstream_seconds:
            metrics.upstream_duration.observe(exchange.upstream_seconds)
        if exchange.error and not exchange.client_caused:
            metrics.upstream_errors.labels(kind=exchange.error).inc()
        access_log = self.access_log
        if not access_log.enabled:
            return
        tls = scope.get("extensions", {}).get("tls")
        described = outcome.described
        if described is not None:
            # What was decided is the described request: its method and normalised path.
            method, path = described.method, described.path
        else:
            method = scope.get("method", "GET") if scope["type"] == "http" else "WEBSOCKET"
            path = scope.get("raw_path", b"").decode("latin-1") or scope.get("path", "")
        access_log.write(
            AccessEntry(
                time=time.time(),
                request_id=outcome.request_id,
                client=outcome.client,
                method=method,
                path=path,
                status=status,
                bytes_in=exchange.bytes_in,
                bytes_out=exchange.bytes_out,
                duration=duration,
                upstream=exchange.upstream_seconds,
                decision=outcome.decision,
                subject=outcome.identity.subject,
                upstream_error=exchange.error,
                client_cert=(tls["client_cert_name"] or "") if tls is not None else "",
                roles=outcome.roles,
                rule=outcome.rule,
                reason=outcome.reason,
                policy=outcome.policy_version,
                peer=outcome.peer if outcome.peer != outcome.client else "",
                forward_auth=(described.source if described is not None else "refused")
                if outcome.forward_auth
                else "",
                trace_id=outcome.trace.trace_id if outcome.trace is not None else "",
            )
        )

    async def lifespan(self, receive: Receive, send: Send) -> None:
        # The server drives start and stop of the sidecar itself; a lifespan from elsewhere is a no-op.
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return


async def answer_forward_auth(
    send: Send, identity_headers: Headers, request_id: bytes, exchange: Exchange
) -> None:
    """200 without a body: the identity headers for the gateway to copy, never to be cached (they
    hold a short-lived assertion bound to one request)."""
    headers = [
        *identity_headers,
        (b"content-length", b"0"),
        (b"cache-control", b"no-store"),
        (b"x-request-id", request_id),
    ]
    exchange.status = 200
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": b""})


def with_request_id(scope: Scope, send: Send, request_id: str, exchange: Exchange) -> tuple[Scope, Send]:
    """The sidecar's own endpoints see the request id the gate settled on, and answer with it.

    The client's X-Request-Id may have been malformed and replaced; the endpoints must neither echo
    that nor answer without one. The answer's status and body size are recorded for the log line
    and metrics.
    """
    rid = request_id.encode()
    headers = [(name, value) for name, value in scope["headers"] if name != b"x-request-id"]
    headers.append((b"x-request-id", rid))

    async def send_with_id(message: dict[str, Any]) -> None:  # type: ignore[override]
        if message["type"] in ("http.response.start", "websocket.http.response.start"):
            exchange.status = message["status"]
            own = [(n, v) for n, v in message.get("headers", ()) if n.lower() != b"x-request-id"]
            message = {**message, "headers": [*own, (b"x-request-id", rid)]}
        elif message["type"] in ("http.response.body", "websocket.http.response.body"):
            exchange.bytes_out += len(message.get("body", b""))
        elif message["type"] == "websocket.accept":
            exchange.status = 101
        elif message["type"] == "websocket.close" and not exchange.status:
            exchange.status = 403  # a close before accept is answered 403 by the server
        await send(message)

    return {**scope, "headers": headers}, send_with_id


def wrap_websocket_send(send: Send) -> Send:
    """Turn http.response.* messages into the WebSocket denial-response extension's messages."""

    async def websocket_send(message: dict[str, Any]) -> None:  # type: ignore[override]
        await send({**message, "type": "websocket." + message["type"]})

    return websocket_send

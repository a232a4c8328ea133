"""OpenTelemetry traces of every request, on when OTEL_EXPORTER_OTLP_ENDPOINT (or
OTEL_EXPORTER_OTLP_TRACES_ENDPOINT) is set; read by the SDK's own standard variables otherwise.

    SERVER  "GET"            the request as the client sent it: method, normalised path, status,
                             decision; continues the client's W3C `traceparent`
      INTERNAL "authenticate"  who is calling (and, as CLIENT children, the provider calls it made:
                               JWKS fetches, introspection, userinfo)
      INTERNAL "authorize"     the policy decision: matched rule, policy version
      CLIENT   "GET"           the exchange with the application, whose `traceparent` names it

Spans leave through the SDK's batch processor: a bounded queue drained by its own thread, so a
request only appends to a queue; a full queue drops spans, counted in
authcar_trace_spans_dropped_total. Off (no endpoint), none of this is imported and the gate pays one
`is None` per request. The SDK is given our provider explicitly, never installed as the process's
global one.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Mapping
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

import httpx
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.propagators.textmap import Getter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from authcar import __version__
from authcar.compat import batch_queue_length
from authcar.otel_env import otlp_protocol
from authcar.types import Headers, Scope

if TYPE_CHECKING:
    from authcar.observe import Metrics

TRACE_HEADERS = frozenset({b"traceparent", b"tracestate"})
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"})
SPAN_SLOT = "authcar.trace"  # httpx request extension: the client span of a provider call
# W3C Trace Context 3.3: what a tracestate may hold. The SDK logs a warning quoting every header that
# breaks these rules (or is too long), so a client could write a line of its choosing into our log
# with each request; HeaderGetter hands the SDK only a tracestate it takes silently.
TRACESTATE_MEMBER = re.compile(
    r"(?P<key>[a-z][_0-9a-z*/-]{0,255}|[a-z0-9][_0-9a-z*/-]{0,240}@[a-z][_0-9a-z*/-]{0,13})"
    r"=[\x20-\x2b\x2d-\x3c\x3e-\x7e]{0,255}[\x21-\x2b\x2d-\x3c\x3e-\x7e]"
)
MAX_TRACESTATE_CHARS = 8192  # the SDK's limit (W3C asks for at least 512)
MAX_TRACESTATE_MEMBERS = 32
MAX_TRACEPARENT_CHARS = 512  # the SDK's limit


def build_exporter(environ: Mapping[str, str]) -> SpanExporter:
    """The OTLP exporter of the protocol asked for; it reads its endpoint, headers, certificate and
    timeout from the standard variables itself."""
    if otlp_protocol(environ) == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter

        return GrpcExporter()
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter

    return HttpExporter()


class CountedBatchProcessor(SpanProcessor):
    """The SDK's batch processor, counting the spans its full queue drops (it drops the oldest)."""

    def __init__(self, exporter: SpanExporter, metrics: Metrics) -> None:
        self.inner = BatchSpanProcessor(exporter)
        self.capacity = BatchSpanProcessor._default_max_queue_size()
        self.metrics = metrics

    def on_start(self, span: Span, parent_context: otel_context.Context | None = None) -> None:
        self.inner.on_start(span, parent_context)

    def on_end(self, span: ReadableSpan) -> None:
        if span.context.trace_flags.sampled and batch_queue_length(self.inner) >= self.capacity:
            self.metrics.trace_spans_dropped.inc()
        self.inner.on_end(span)

    def shutdown(self) -> None:
        self.inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self.inner.force_flush(timeout_millis)


class HeaderGetter(Getter[Headers]):
    """W3C trace context from ASGI headers (lower-case byte names)."""

    def get(self, carrier: Headers, key: str) -> list[str] | None:
        name = key.encode("latin-1")
        values = [value.decode("latin-1") for header, value in carrier if header == name]
        if not values:
            return None
        if name == b"traceparent" and len(values[0]) > MAX_TRACEPARENT_CHARS:
            return None  # not a traceparent: a new trace begins, as the SDK would, without its warning
        if name == b"tracestate" and not quiet_tracestate(values):
            return None  # the SDK would drop it whole, with a warning that quotes it
        return values

    def keys(self, carrier: Headers) -> list[str]:
        return [name.decode("latin-1") for name, _ in carrier]


def quiet_tracestate(values: list[str]) -> bool:
    """Whether the SDK takes these tracestate headers as they are, with nothing to warn about."""
    if sum(len(value) for value in values) + len(values) - 1 > MAX_TRACESTATE_CHARS:
        return False
    keys: set[str] = set()
    for value in values:
        for member in value.split(","):
            member = member.strip(" \t")
            if not member:
                continue
            match = TRACESTATE_MEMBER.fullmatch(member)
            if match is None or match["key"] in keys:
                return False
            keys.add(match["key"])
    return len(keys) <= MAX_TRACESTATE_MEMBERS


def address_of(url: httpx.URL) -> dict[str, Any]:
    """The semantic conventions' server.address and server.port of a URL (its scheme's default port
    when it names none)."""
    return {"server.address": url.host, "server.port": url.port or (443 if url.scheme == "https" else 80)}


class Tracing:
    """One per process: the provider, its exporter, and what the request path calls."""

    def __init__(self, provider: TracerProvider, upstream_url: str) -> None:
        self.provider = provider
        self.upstream_url = upstream_url.rstrip("/")
        self.upstream_address = address_of(httpx.URL(upstream_url))
        self.tracer = provider.get_tracer("authcar", __version__)
        self.propagator = TraceContextTextMapPropagator()
        self.getter = HeaderGetter()

    @classmethod
    def from_environ(cls, environ: Mapping[str, str], metrics: Metrics, *, upstream_url: str) -> Tracing:
        attributes: dict[str, Any] = {"service.version": __version__}
        if not environ.get("OTEL_SERVICE_NAME"):
            attributes["service.name"] = "authcar"
        # TracerProvider reads OTEL_TRACES_SAMPLER(_ARG) and the span limits from the environment.
        provider = TracerProvider(resource=Resource.create(attributes))
        provider.add_span_processor(CountedBatchProcessor(build_exporter(environ), metrics))
        return cls(provider, upstream_url)

    def begin(self, scope: Scope) -> RequestTrace:
        headers = scope["headers"]
        parent = None
        if any(name == b"traceparent" for name, _ in headers):
            parent = self.propagator.extract(headers, getter=self.getter)
        method = scope.get("method", "GET")
        span = self.tracer.start_span(
            method if method in METHODS else "HTTP",
            context=parent,
            kind=SpanKind.SERVER,
            attributes={
                "http.request.method": method if method in METHODS else "_OTHER",
                "url.scheme": scope.get("scheme", "http"),
                "network.protocol.version": scope.get("http_version", "1.1"),
            },
        )
        return RequestTrace(self, span)

    def instrument(self, client: httpx.AsyncClient) -> None:
        """Provider calls made on `client` inside a request become CLIENT spans of it (background
        calls, such as the periodic JWKS refresh, belong to no request and are not traced)."""
        client.event_hooks["request"].append(self.provider_call_started)
        client.event_hooks["response"].append(self.provider_call_answered)

    async def provider_call_started(self, request: httpx.Request) -> None:
        if not trace.get_current_span().is_recording():
            return
        url = request.url
        request.extensions[SPAN_SLOT] = self.tracer.start_span(
            request.method,
            kind=SpanKind.CLIENT,
            attributes={
                "http.request.method": request.method,
                **address_of(url),
                "url.full": str(url.copy_with(query=None)),  # a query may carry credentials
            },
        )

    async def provider_call_answered(self, response: httpx.Response) -> None:
        span = response.request.extensions.get(SPAN_SLOT)
        if span is not None:
            span.set_attribute("http.response.status_code", response.status_code)
            if response.status_code >= 400:
                span.set_status(Status(StatusCode.ERROR))
            span.end()

    async def close(self) -> None:
        # Flushing waits on the exporter's thread: not on the event loop.
        await asyncio.to_thread(self.provider.shutdown)


class RequestTrace:
    """One request's spans. When the sampler chose to record it (`recording`), `server` is current
    (contextvars) from begin() to end(), so spans started while the request runs are its children;
    when not, no child span is made at all (the SDK's spans cost microseconds each even unrecorded)
    and the application is still told the trace, with the sampled flag off."""

    __slots__ = ("recording", "server", "token", "tracing")

    def __init__(self, tracing: Tracing, server: trace.Span) -> None:
        self.tracing = tracing
        self.server = server
        self.recording = server.is_recording()
        self.token = otel_context.attach(trace.set_span_in_context(server)) if self.recording else None

    @property
    def trace_id(self) -> str:
        context = self.server.get_span_context()
        return format(context.trace_id, "032x") if context.is_valid else ""

    def stage(self, name: str) -> AbstractContextManager[trace.Span]:
        """A child span around a stage, current while it runs."""
        return self.tracing.tracer.start_as_current_span(name, kind=SpanKind.INTERNAL)

    def decided(self, started_ns: int, allowed: bool, rule: tuple[str, ...], policy_version: str) -> None:
        """The policy decision, as a span of the time it took (it awaits nothing)."""
        span = self.tracing.tracer.start_span("authorize", start_time=started_ns)
        span.set_attributes(
            {
                "authcar.decision": "allow" if allowed else "deny",
                "authcar.policy.rule": ", ".join(rule),
                "authcar.policy.version": policy_version,
            }
        )
        span.end()

    def upstream(self, method: str, path: str, headers: Headers) -> trace.Span | None:
        """The CLIENT span of the exchange with the application (`path`: the normalised path it is
        sent, without the query); `headers`, the forwarded request's, lose the client's trace
        headers and carry this span's instead (unrecorded: the request's, and no span)."""
        tracing = self.tracing
        carrier: dict[str, str] = {}
        if not self.recording:
            tracing.propagator.inject(carrier, context=trace.set_span_in_context(self.server))
            replace_trace_headers(headers, carrier)
            return None
        span = tracing.tracer.start_span(
            method if method in METHODS else "HTTP",
            kind=SpanKind.CLIENT,
            attributes={
                "http.request.method": method if method in METHODS else "_OTHER",
                "url.full": tracing.upstream_url + path,
                **tracing.upstream_address,
            },
        )
        tracing.propagator.inject(carrier, context=trace.set_span_in_context(span))
        replace_trace_headers(headers, carrier)
        return span

    def end(self, *, status: int, path: str, client: str, decision: str, request_id: str) -> None:
        server = self.server
        if not self.recording:
            server.end()
            return
        server.set_attributes(
            {
                "http.response.status_code": status,
                "url.path": path,
                "client.address": client,
                "authcar.decision": decision,
                "authcar.request_id": request_id,
            }
        )
        if status >= 500:
            server.set_status(Status(StatusCode.ERROR))
            server.set_attribute("error.type", str(status))
        server.end()
        if self.token is not None:
            otel_context.detach(self.token)


def replace_trace_headers(headers: Headers, carrier: Mapping[str, str]) -> None:
    """The forwarded headers without the client's trace headers, with ours."""
    headers[:] = [(name, value) for name, value in headers if name not in TRACE_HEADERS]
    headers.extend((name.encode("latin-1"), value.encode("latin-1")) for name, value in carrier.items())

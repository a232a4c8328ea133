"""Logs and metrics.

Events (startup, reloads, shutdown) go through `logging` with a JSON formatter. The per-request access
line bypasses `logging`: it is one `json.dumps` into a buffer flushed every half second (as Envoy's
access log does), because a logging call per request costs as much as a tenth of the forwarding.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import sys
import time
from json.encoder import encode_basestring_ascii as escape_json  # type: ignore[attr-defined]
from typing import IO, Any, NamedTuple

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.multiprocess import MultiProcessCollector

from authcar import __version__

EVENT_LOGGER = "authcar"

# Seconds between additions of the per-request counts to the Prometheus counters (see Metrics).
FLUSH_INTERVAL = 1.0
LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)

# Attributes every LogRecord has; anything else passed in `extra=` becomes a field of the JSON line.
STANDARD_RECORD_FIELDS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": format_time(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in STANDARD_RECORD_FIELDS and not key.startswith("_") and key != "color_message":
                entry[key] = value
        if record.exc_info and record.exc_info[0] is not None:
            entry["error_type"] = record.exc_info[0].__name__
            entry["traceback"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, separators=(",", ":"))


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        extras = " ".join(
            f"{k}={v}"
            for k, v in vars(record).items()
            if k not in STANDARD_RECORD_FIELDS and not k.startswith("_") and k != "color_message"
        )
        line = f"{format_time(record.created)} {record.levelname:<7} {record.name}: {record.getMessage()}"
        line = f"{line} {extras}" if extras else line
        if record.exc_info and record.exc_info[0] is not None:
            line += "\n" + self.formatException(record.exc_info)
        return line


SECONDS_FORMAT = "%Y-%m-%dT%H:%M:%S"


def format_time(created: float) -> str:
    seconds = time.strftime(SECONDS_FORMAT, time.gmtime(created))
    return f"{seconds}.{int(created % 1 * 1000):03d}Z"


def configure_logging(log_format: str, level: str, stream: IO[str] | None = None) -> None:
    """Route authcar's and uvicorn's loggers to one handler in the chosen format."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
    # uvicorn's own access log would duplicate ours. uvicorn formats each access message when the
    # logger has handlers anywhere up the tree, so cut it off from the root entirely.
    access = logging.getLogger("uvicorn.access")
    access.propagate = False
    access.disabled = True
    logging.getLogger("uvicorn.error").addFilter(drop_uvicorn_lifecycle)


# Each of the two uvicorn servers (public and admin listener) announces its own start and stop, so
# every line came twice; authcar's `listening`, `draining` and `stopped` events say it once.
UVICORN_LIFECYCLE = frozenset(
    {"Started server process [%d]", "Shutting down", "Finished server process [%d]"}
)


def drop_uvicorn_lifecycle(record: logging.LogRecord) -> bool:
    return record.msg not in UVICORN_LIFECYCLE


# uvicorn reports these as errors, but for authcar they are deliberate: a response cut short because
# the upstream failed mid-stream (closing is the only honest signal left, and the access line records
# `*_mid_stream`), and a WebSocket handshake answered with an HTTP denial.
INTENDED_ABORTS = frozenset(
    {
        "ASGI callable returned without completing response.",
        "ASGI callable returned without completing handshake.",
    }
)


def drop_intended_aborts(record: logging.LogRecord) -> bool:
    return record.msg not in INTENDED_ABORTS


class AccessEntry(NamedTuple):
    """The facts of one answered request, kept raw until the batch is formatted."""

    time: float
    request_id: str  # validated or generated: [A-Za-z0-9._:-] only
    client: str  # an IP address: the real client as trusted proxies tell it, else the peer
    method: str  # a method the parser accepted, or WEBSOCKET
    path: str  # raw path, without the query string (queries often carry tokens)
    status: int
    bytes_in: int
    bytes_out: int
    duration: float  # seconds
    upstream: float  # seconds
    decision: str
    subject: str
    upstream_error: str
    client_cert: str
    roles: tuple[str, ...] = ()  # the caller's roles, as the policy saw them
    rule: tuple[str, ...] = ()  # the policy line that decided (Casbin's explain)
    reason: str = ""  # why a request was refused (an error code), or why a denial was let through
    policy: str = ""  # the policy version that decided
    peer: str = ""  # the connection's address, when a trusted proxy told another `client`
    # A forward-auth request (/oauth2/auth): where its description came from (x-forwarded,
    # x-original, path), or "refused"; method and path are then the described request's.
    forward_auth: str = ""
    trace_id: str = ""  # with tracing on: the request's trace (32 hex digits)


FLUSH_ENTRIES = 256

# Only path, subject, client_cert, roles and rule can hold arbitrary text and get JSON-escaped; every
# other field is a number, one of our own words, or a value already validated to a safe alphabet.
JSON_LINE = (
    '{"time":"%s","request_id":"%s","client":"%s","method":"%s","path":%s,"status":%d,'
    '"bytes_in":%d,"bytes_out":%d,"duration_ms":%.3f,"upstream_ms":%.3f,"decision":"%s","subject":%s'
)


class AccessLog:
    """One line per request, buffered and flushed on a timer and at shutdown.

    The request path only appends an AccessEntry; lines are formatted in batches when flushed, which
    keeps the per-request cost to a tuple and the formatting work cache-friendly.
    """

    def __init__(
        self, enabled: bool, log_format: str, stream: IO[str] | None = None, flush_interval: float = 0.5
    ):
        self.enabled = enabled
        self.json = log_format == "json"
        self.stream = stream or sys.stdout
        self.flush_interval = flush_interval
        self.buffer: list[AccessEntry] = []
        self.flush_handle: asyncio.TimerHandle | None = None
        self.second = -1
        self.second_text = ""

    def write(self, entry: AccessEntry) -> None:
        self.buffer.append(entry)
        if len(self.buffer) >= FLUSH_ENTRIES:
            # Under load, small regular batches: one huge batch would stall every request behind it.
            self.flush()
            return
        if self.flush_handle is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                self.flush()
                return
            self.flush_handle = loop.call_later(self.flush_interval, self.flush)

    def timestamp(self, now: float) -> str:
        """format_time(now), formatting the date and time only once per second."""
        second = int(now)
        if second != self.second:
            self.second = second
            self.second_text = time.strftime(SECONDS_FORMAT, time.gmtime(second))
        return f"{self.second_text}.{int(now % 1 * 1000):03d}Z"

    def format(self, e: AccessEntry) -> str:
        if not self.json:
            line = (
                f"{self.timestamp(e.time)} {e.client} {e.method} {e.path} {e.status} {e.bytes_out}B "
                f"{e.duration * 1000:.3f}ms id={e.request_id} decision={e.decision}"
            )
            if e.subject:
                line += f" subject={e.subject}"
            if e.roles:
                line += f" roles={','.join(e.roles)}"
            if e.rule:
                line += f" rule={','.join(e.rule)}"
            if e.reason:
                line += f" reason={e.reason}"
            if e.upstream_error:
                line += f" upstream_error={e.upstream_error}"
            if e.peer:
                line += f" peer={e.peer}"
            if e.forward_auth:
                line += f" forward_auth={e.forward_auth}"
            if e.trace_id:
                line += f" trace_id={e.trace_id}"
            return line
        line = JSON_LINE % (
            self.timestamp(e.time),
            e.request_id,
            e.client,
            e.method,
            escape_json(e.path),
            e.status,
            e.bytes_in,
            e.bytes_out,
            e.duration * 1000,
            e.upstream * 1000,
            e.decision,
            escape_json(e.subject),
        )
        if e.roles:
            line += ',"roles":[' + ",".join([escape_json(role) for role in e.roles]) + "]"
        if e.rule:
            line += ',"rule":[' + ",".join([escape_json(field) for field in e.rule]) + "]"
        if e.reason:
            line += ',"reason":"' + e.reason + '"'
        if e.policy:
            line += ',"policy":"' + e.policy + '"'
        if e.upstream_error:
            line += ',"upstream_error":"' + e.upstream_error + '"'
        if e.client_cert:
            line += ',"client_cert":' + escape_json(e.client_cert)
        if e.peer:
            line += ',"peer":"' + e.peer + '"'
        if e.forward_auth:
            line += ',"forward_auth":"' + e.forward_auth + '"'
        if e.trace_id:
            line += ',"trace_id":"' + e.trace_id + '"'
        return line + "}"

    def flush(self) -> None:
        if self.flush_handle is not None:
            self.flush_handle.cancel()
            self.flush_handle = None
        if not self.buffer:
            return
        entries, self.buffer = self.buffer, []
        text = "\n".join([self.format(entry) for entry in entries]) + "\n"
        try:
            self.stream.write(text)
            self.stream.flush()
        except (OSError, ValueError):
            pass  # a closed stdout must not take requests down with it

    def close(self) -> None:
        if self.flush_handle is not None:
            self.flush_handle.cancel()
        self.flush()


def multiprocess_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


class Metrics:
    """Every metric authcar exports, registered on its own registry (no process-global state)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.multiprocess = multiprocess_dir() is not None
        r = self.registry
        self.requests = Counter(
            "authcar_requests",
            "Requests answered, by status code and decision",
            ["status", "decision"],
            registry=r,
        )
        self.request_duration = Histogram(
            "authcar_request_duration_seconds",
            "Whole request time in the sidecar, until the last byte of the answer",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.upstream_duration = Histogram(
            "authcar_upstream_response_seconds",
            "Time from sending the request upstream until its response headers arrived",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.in_flight = Gauge(
            "authcar_in_flight_requests",
            "Requests being handled now",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.upstream_errors = Counter(
            "authcar_upstream_errors", "Failures talking to the upstream, by kind", ["kind"], registry=r
        )
        self.tls_reloads = Counter(
            "authcar_tls_reloads", "Certificate reloads, by result", ["result"], registry=r
        )
        self.tls_expiry = Gauge(
            "authcar_tls_certificate_expiry_timestamp_seconds",
            "Expiry (unix time) of the certificate being served",
            registry=r,
            multiprocess_mode="min",
        )
        self.token_validations = Counter(
            "authcar_token_validations",
            "Bearer token checks by result: valid, valid_cached, or the reason for refusal",
            ["result"],
            registry=r,
        )
        self.introspection_duration = Histogram(
            "authcar_introspection_seconds",
            "Token introspection calls to the identity provider, by result (cache hits excluded)",
            ["result"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.store_duration = Histogram(
            "authcar_store_seconds",
            "Calls to the shared store (Redis), by operation and result: ok, unavailable (timeout,"
            " connection, failover; each use then answers as documented) or refused",
            ["operation", "result"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.jwks_fetches = Counter(
            "authcar_jwks_fetches",
            "Key set fetches from the identity provider, by result",
            ["result"],
            registry=r,
        )
        self.trace_spans_dropped = Counter(
            "authcar_trace_spans_dropped",
            "Spans dropped because the export queue was full (OTEL_BSP_MAX_QUEUE_SIZE): the collector"
            " is slower than the traffic, or unreachable",
            registry=r,
        )
        self.info = Gauge(
            "authcar_build_info", "Version of authcar", ["version"], registry=r, multiprocess_mode="max"
        )
        self.info.labels(version=__version__).set(1)
        self.policy_reloads = Counter(
            "authcar_policy_reloads",
            "Policy loads and reloads, by result (a failure keeps the last good policy serving)",
            ["result"],
            registry=r,
        )
        self.policy_last_reload_success = Gauge(
            "authcar_policy_last_reload_success",
            "1 if the last policy load or reload succeeded, 0 if it was refused",
            registry=r,
            multiprocess_mode="min",  # one worker that refused a policy is worth an alert
        )
        self.policy_rules = Gauge(
            "authcar_policy_rules",
            "Rules (p lines) in the policy being served",
            registry=r,
            multiprocess_mode="max",
        )
        self.policy_info = Gauge(
            "authcar_policy_info",
            "1 for the version (hash of model.conf and policy.csv) being served",
            ["version"],
            registry=r,
            multiprocess_mode="max",
        )
        # Tasks alive in the worker's event loop (each connection, request, background job): a count
        # that keeps rising under steady load is a leak. Sampled at every flush, i.e. at each scrape.
        self.event_loop_tasks = Gauge(
            "authcar_event_loop_tasks",
            "asyncio tasks alive in the worker's event loop, sampled at each scrape and every second",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.authz_decisions = Counter(
            "authcar_authz_decisions",
            "Authorization decisions: allow, deny, or dry_run_allow (denied, let through by dry run)",
            ["decision"],
            registry=r,
        )
        self.forward_auth_requests = Counter(
            "authcar_forward_auth_requests",
            "Forward-auth requests (/oauth2/auth) answered, by status and decision (a subset of"
            " authcar_requests)",
            ["status", "decision"],
            registry=r,
        )
        self.client_timeouts = Counter(
            "authcar_client_timeouts",
            "Client connections closed for slowness: head_silent (nothing sent), head, body, send (unread)",
            ["phase"],
            registry=r,
        )
        self.connection_limit_reached = Counter(
            "authcar_connection_limit_reached",
            "Times a worker held AUTHCAR_MAX_CONNECTIONS and stopped accepting until one closed",
            registry=r,
        )
        self.store_fail_open = Counter(
            "authcar_store_fail_open",
            "Requests let through because a check that needs the shared store could not be made, by use",
            ["use"],
            registry=r,
        )
        self.revocations = Gauge(
            "authcar_revocations",
            "Live revocations (jti, sub, sid) in the worker's copy of the revocation list",
            registry=r,
            multiprocess_mode="max",
        )
        self.revocation_refresh_failures = Counter(
            "authcar_revocation_refresh_failures",
            "Polls of the revocation list that the store did not answer (requests fail closed after 1 s)",
            registry=r,
        )
        # Label lookups take a lock and a dict hit; the hot path reuses the children.
        # The two counters every request touches are counted in plain dicts and added to the
        # Prometheus counters (a lock per increment) in batches: at every scrape, and every
        # FLUSH_INTERVAL for the other workers' files in multiprocess mode.
        self.pending_requests: dict[tuple[int, str], int] = {}
        self.pending_tokens: dict[str, int] = {}
        self.pending_decisions: dict[str, int] = {}
        self.pending_forward_auth: dict[tuple[int, str], int] = {}

    def count_request(self, status: int, decision: str) -> None:
        pending = self.pending_requests
        key = (status, decision)
        pending[key] = pending.get(key, 0) + 1

    def count_forward_auth(self, status: int, decision: str) -> None:
        pending = self.pending_forward_auth
        key = (status, decision)
        pending[key] = pending.get(key, 0) + 1

    def count_token(self, result: str) -> None:
        pending = self.pending_tokens
        pending[result] = pending.get(result, 0) + 1

    def count_decision(self, decision: str) -> None:
        pending = self.pending_decisions
        pending[decision] = pending.get(decision, 0) + 1

    def set_policy(self, version: str, rules: int, previous_version: str = "") -> None:
        """The policy being served: its version and size."""
        self.policy_rules.set(rules)
        if previous_version and previous_version != version:
            if self.multiprocess:
                # Removing a label is not supported across worker files; 0 says "no longer served".
                self.policy_info.labels(version=previous_version).set(0)
            else:
                self.policy_info.remove(previous_version)
        self.policy_info.labels(version=version).set(1)

    def flush(self) -> None:
        """Add the pending counts to the Prometheus counters."""
        requests, self.pending_requests = self.pending_requests, {}
        for (status, decision), count in requests.items():
            self.requests.labels(status=str(status), decision=decision).inc(count)
        tokens, self.pending_tokens = self.pending_tokens, {}
        for result, count in tokens.items():
            self.token_validations.labels(result=result).inc(count)
        forward_auth, self.pending_forward_auth = self.pending_forward_auth, {}
        for (status, decision), count in forward_auth.items():
            self.forward_auth_requests.labels(status=str(status), decision=decision).inc(count)
        decisions, self.pending_decisions = self.pending_decisions, {}
        for decision, count in decisions.items():
            self.authz_decisions.labels(decision=decision).inc(count)
        with contextlib.suppress(RuntimeError):  # no running loop: the last flush at exit
            self.event_loop_tasks.set(len(asyncio.all_tasks()))

    async def flush_periodically(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_INTERVAL)
            self.flush()

    def exposition_registry(self) -> CollectorRegistry:
        """What /metrics renders: this process's registry, or all workers' files in multiprocess mode."""
        self.flush()
        if not self.multiprocess:
            return self.registry
        registry = CollectorRegistry()
        MultiProcessCollector(registry)
        return registry

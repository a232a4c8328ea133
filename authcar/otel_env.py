"""Whether tracing is asked for, read from OpenTelemetry's own standard variables: importable without
the SDK, which authcar loads only when an OTLP endpoint is set (authcar/tracing.py)."""

from __future__ import annotations

from collections.abc import Mapping

ENDPOINT_VARIABLES = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
PROTOCOL_VARIABLES = ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL")
PROTOCOLS = ("http/protobuf", "grpc")


def tracing_wanted(environ: Mapping[str, str]) -> bool:
    return any(environ.get(name) for name in ENDPOINT_VARIABLES)


def otlp_protocol(environ: Mapping[str, str]) -> str:
    return next((environ[name] for name in PROTOCOL_VARIABLES if environ.get(name)), "http/protobuf")


def protocol_problem(environ: Mapping[str, str]) -> str | None:
    """Why the OTLP protocol asked for cannot be used, or None."""
    protocol = otlp_protocol(environ)
    if tracing_wanted(environ) and protocol not in PROTOCOLS:
        return f"OTEL_EXPORTER_OTLP_PROTOCOL={protocol!r}: authcar exports {' or '.join(PROTOCOLS)}"
    return None

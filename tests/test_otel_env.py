"""Whether tracing is asked for, and the OTLP protocols authcar can export with, from OpenTelemetry's
standard variables; check-config names a protocol it cannot use."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from authcar.otel_env import otlp_protocol, protocol_problem, tracing_wanted

ROOT = Path(__file__).resolve().parent.parent


def test_tracing_is_on_with_an_endpoint_of_either_name() -> None:
    assert not tracing_wanted({})
    assert not tracing_wanted({"OTEL_EXPORTER_OTLP_ENDPOINT": ""})
    assert tracing_wanted({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"})
    assert tracing_wanted({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4318/v1/traces"})


def test_the_traces_protocol_wins_over_the_general_one_and_http_protobuf_is_the_default() -> None:
    assert otlp_protocol({}) == "http/protobuf"
    assert otlp_protocol({"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}) == "grpc"
    both = {"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf"}
    assert otlp_protocol(both) == "http/protobuf"


def test_a_protocol_authcar_cannot_export_is_a_problem_only_when_tracing_is_on() -> None:
    json_protocol = {"OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"}
    assert protocol_problem(json_protocol) is None  # tracing is off: nothing is exported
    on = {**json_protocol, "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}
    assert "http/json" in (protocol_problem(on) or "")
    assert protocol_problem({**on, "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}) is None


def test_check_config_reports_the_protocol() -> None:
    environ = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "AUTHCAR_"))},
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318",
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/json",
        "AUTHCAR_ALLOW_ANONYMOUS": "true",
        "AUTHCAR_POLICY_DIR": str(ROOT / "policies"),
    }
    result = subprocess.run(
        [sys.executable, "-m", "authcar", "check-config"],
        capture_output=True,
        text=True,
        env=environ,
        cwd=ROOT,
        timeout=60,
        check=False,
    )
    assert result.returncode != 0
    assert "OTEL_EXPORTER_OTLP_PROTOCOL='http/json'" in result.stderr

"""Tracing's configuration from the standard ``OTEL_*`` variables (``l9.telemetry``): off
unless an exporter is named, a bad value a clear error naming the variable."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from l9.telemetry import TelemetryConfigError, exporters_wanted
from tests.conftest import ROOT, run_l9


@pytest.mark.parametrize(
    ("env", "wanted"),
    [
        ({}, ()),
        ({"OTEL_TRACES_EXPORTER": "none"}, ()),
        ({"OTEL_TRACES_EXPORTER": " "}, ()),
        ({"OTEL_TRACES_EXPORTER": "otlp"}, ("otlp",)),
        ({"OTEL_TRACES_EXPORTER": "OTLP, console,otlp"}, ("otlp", "console")),
        ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_SDK_DISABLED": "true"}, ()),
        ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"}, ("otlp",)),
        ({"OTEL_TRACES_EXPORTER": "console", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}, ("console",)),
    ],
)
def test_tracing_is_on_only_when_an_exporter_is_named(env: dict[str, str], wanted: tuple[str, ...]) -> None:
    assert exporters_wanted(env) == wanted


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"OTEL_TRACES_EXPORTER": "jaeger"}, "OTEL_TRACES_EXPORTER: unknown exporter(s) jaeger"),
        ({"OTEL_TRACES_EXPORTER": "otlp,zipkin"}, "OTEL_TRACES_EXPORTER: unknown exporter(s) zipkin"),
        (
            {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"},
            "OTEL_EXPORTER_OTLP_PROTOCOL: 'grpc' is not available here",
        ),
        (
            {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/json"},
            "OTEL_EXPORTER_OTLP_PROTOCOL: 'http/json' is not available here",
        ),
    ],
)
def test_a_value_it_cannot_follow_is_an_error_naming_the_variable(env: dict[str, str], named: str) -> None:
    with pytest.raises(TelemetryConfigError) as raised:
        exporters_wanted(env)
    assert named in str(raised.value)


def test_agent_run_with_a_bad_exporter_exits_2_with_one_line() -> None:
    env = {**os.environ, "OTEL_TRACES_EXPORTER": "jaeger"}
    done = run_l9("agent", "run", "planner", env=env, timeout=120)
    assert done.returncode == 2, done.stderr
    assert "OTEL_TRACES_EXPORTER: unknown exporter(s) jaeger" in done.stderr
    assert "Traceback" not in done.stderr


CONSOLE = """
import bus.tracing
from l9.telemetry import tracing

with tracing("probe") as on:
    assert on is not None and on.exporters == ("console",)
    tracer = bus.tracing.tracer()
    assert tracer is not None
    with tracer.start_as_current_span("probe span"):
        pass
assert bus.tracing.tracer() is None  # off again once the block is over
"""


def test_console_exporter_writes_each_span_as_one_json_line_on_stderr_at_shutdown() -> None:
    env = {**os.environ, "OTEL_TRACES_EXPORTER": "console", "OTEL_SERVICE_NAME": ""}
    env.pop("OTEL_SERVICE_NAME")
    done = subprocess.run(
        [sys.executable, "-c", CONSOLE], env=env, cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    (line,) = [json.loads(x) for x in done.stderr.splitlines() if x.startswith("{") and '"probe span"' in x]
    assert line["name"] == "probe span"
    assert line["resource"]["attributes"]["service.name"] == "l9-probe"

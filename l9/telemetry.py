"""Traces of an L9 process, configured by the standard ``OTEL_*`` environment variables.

Off by default: a process traces only when ``OTEL_TRACES_EXPORTER`` names an exporter
(and ``OTEL_SDK_DISABLED`` is not ``true``). Then:

* ``otlp``: spans go to an OpenTelemetry collector over OTLP/HTTP (protobuf), at
  ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` or ``OTEL_EXPORTER_OTLP_ENDPOINT`` (default
  ``http://localhost:4318``), with ``OTEL_EXPORTER_OTLP_HEADERS`` and the other variables the
  exporter reads; ``OTEL_EXPORTER_OTLP_PROTOCOL`` may only be ``http/protobuf`` (the gRPC
  exporter is not installed);
* ``console``: one JSON object per span on stderr (for a look without a collector).

``OTEL_SERVICE_NAME`` names the service (default ``l9-<agent>``), ``OTEL_RESOURCE_ATTRIBUTES``
adds resource attributes, ``OTEL_TRACES_SAMPLER`` / ``OTEL_TRACES_SAMPLER_ARG`` sample and
``OTEL_BSP_*`` tune the batch span processor, all as the OpenTelemetry SDK reads them.
What is traced is in ``bus.tracing``; the auditor's PostgreSQL statements are spans too
(``opentelemetry-instrumentation-asyncpg``), its commits' inside their ``audit commit`` span.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from opentelemetry import trace
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter

import bus.tracing

EXPORTERS = ("otlp", "console")


class TelemetryConfigError(ValueError):
    """An ``OTEL_*`` variable this process cannot follow (the message names it)."""


@dataclass
class Tracing:
    """Tracing of this process, on: :meth:`shutdown` exports what is left, at exit."""

    provider: TracerProvider
    exporters: tuple[str, ...]

    def shutdown(self) -> None:
        bus.tracing.disable()
        self.provider.shutdown()


def exporters_wanted(env: dict[str, str] | None = None) -> tuple[str, ...]:
    """The exporters ``OTEL_TRACES_EXPORTER`` names (none: tracing off); a bad value raises."""
    env = dict(os.environ) if env is None else env
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return ()
    names = [n.strip().lower() for n in env.get("OTEL_TRACES_EXPORTER", "").split(",") if n.strip()]
    if not names or names == ["none"]:
        return ()
    unknown = [n for n in names if n not in EXPORTERS]
    if unknown:
        raise TelemetryConfigError(
            f"OTEL_TRACES_EXPORTER: unknown exporter(s) {', '.join(unknown)}; "
            f"use {', '.join(EXPORTERS)} or none"
        )
    protocol = env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or env.get("OTEL_EXPORTER_OTLP_PROTOCOL")
    if "otlp" in names and protocol and protocol.strip() != "http/protobuf":
        raise TelemetryConfigError(
            f"OTEL_EXPORTER_OTLP_PROTOCOL: {protocol!r} is not available here; use http/protobuf"
        )
    return tuple(dict.fromkeys(names))


def _json_line(span: ReadableSpan) -> str:
    return str(span.to_json(indent=None)) + "\n"


def _exporter(name: str) -> SpanExporter:
    if name == "console":
        return ConsoleSpanExporter(out=sys.stderr, formatter=_json_line)
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter()


def configure_tracing(service: str, *, database: bool = False) -> Tracing | None:
    """Trace this process as ``l9-<service>`` when the environment asks for it (see the module
    doc), its asyncpg statements too with ``database`` (the auditor's: its commits); None when
    it does not. Raises :class:`TelemetryConfigError` on a bad variable."""
    names = exporters_wanted()
    if not names:
        return None
    attributes = {} if os.environ.get("OTEL_SERVICE_NAME") else {SERVICE_NAME: f"l9-{service}"}
    provider = TracerProvider(resource=Resource.create(attributes))
    for name in names:
        provider.add_span_processor(BatchSpanProcessor(_exporter(name)))
    trace.set_tracer_provider(provider)
    bus.tracing.enable(provider)
    if database:
        from opentelemetry.instrumentation.asyncpg import AsyncPGInstrumentor

        instrumentor = AsyncPGInstrumentor()  # type: ignore[no-untyped-call]
        if not instrumentor.is_instrumented_by_opentelemetry:
            instrumentor.instrument(tracer_provider=provider)
    return Tracing(provider, names)


@contextmanager
def tracing(service: str, *, database: bool = False) -> Iterator[Tracing | None]:
    """:func:`configure_tracing` for the time of the block; what is left is exported at its end."""
    handle = configure_tracing(service, database=database)
    try:
        yield handle
    finally:
        if handle is not None:
            handle.shutdown()

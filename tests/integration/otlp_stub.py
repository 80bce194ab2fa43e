"""A stub of an OpenTelemetry collector: OTLP/HTTP (protobuf) traces, kept in memory.

``POST /v1/traces`` with an ``application/x-protobuf`` body (``Content-Encoding: gzip`` or
``deflate`` honoured) is decoded as an ``ExportTraceServiceRequest`` and answered 200 with an
empty ``ExportTraceServiceResponse``, as a collector does; each span it held is kept as a
:class:`StubSpan`. Anything else is answered 4xx and noted in :attr:`OtlpStub.refused`.

    with OtlpStub() as collector:
        env["OTEL_EXPORTER_OTLP_ENDPOINT"] = collector.endpoint
        ...
        spans = collector.spans()
"""

from __future__ import annotations

import gzip
import threading
import zlib
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

TRACES_PATH = "/v1/traces"
PROTOBUF = "application/x-protobuf"
#: The largest body accepted (an exporter's batch is far smaller).
MAX_BODY = 64 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class StubSpan:
    """One span as the collector received it (ids in lower-case hex)."""

    trace_id: str
    span_id: str
    parent_span_id: str  # "" for a root span
    name: str
    kind: int  # OTLP's Span.SpanKind: 1 internal, 2 server, 3 client, 4 producer, 5 consumer
    service: str  # the resource attribute service.name ("" if absent)
    attributes: dict[str, Any] = field(default_factory=dict)
    links: list[tuple[str, str]] = field(default_factory=list)  # (trace id, span id) of each link


def any_value(value: Any) -> Any:
    """The Python value of an OTLP ``AnyValue`` (lists for arrays, dicts for key-value lists)."""
    which = value.WhichOneof("value")
    if which is None:
        return None
    if which == "array_value":
        return [any_value(v) for v in value.array_value.values]
    if which == "kvlist_value":
        return attributes_of(value.kvlist_value.values)
    return getattr(value, which)


def attributes_of(key_values: Any) -> dict[str, Any]:
    """A repeated OTLP ``KeyValue`` as a dict."""
    return {kv.key: any_value(kv.value) for kv in key_values}


def spans_of(request: ExportTraceServiceRequest) -> list[StubSpan]:
    """Every span an export request holds, with the service.name of its resource."""
    found: list[StubSpan] = []
    for resource_spans in request.resource_spans:
        service = attributes_of(resource_spans.resource.attributes).get("service.name", "")
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                found.append(
                    StubSpan(
                        trace_id=span.trace_id.hex(),
                        span_id=span.span_id.hex(),
                        parent_span_id=span.parent_span_id.hex(),
                        name=span.name,
                        kind=int(span.kind),
                        service=str(service),
                        attributes=attributes_of(span.attributes),
                        links=[(link.trace_id.hex(), link.span_id.hex()) for link in span.links],
                    )
                )
    return found


def decoded_body(raw: bytes, encoding: str) -> bytes:
    """``raw`` as sent with ``Content-Encoding: encoding`` (identity, gzip or deflate)."""
    encoding = encoding.strip().lower()
    if encoding in ("", "identity"):
        return raw
    if encoding in ("gzip", "x-gzip"):
        return gzip.decompress(raw)
    if encoding == "deflate":
        return zlib.decompress(raw)
    raise ValueError(f"unsupported Content-Encoding {encoding!r}")


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the exporter's session expects
    server: _Server

    def do_POST(self) -> None:
        if self.path.split("?", 1)[0] != TRACES_PATH:
            self._refuse(404, f"POST {self.path}: not {TRACES_PATH}")
            return
        content_type = self.headers.get("Content-Type", "").split(";", 1)[0].strip().lower()
        if content_type != PROTOBUF:
            self._read_body()  # drained: the connection stays usable
            self._refuse(415, f"Content-Type {content_type!r}, not {PROTOBUF}")
            return
        try:
            body = decoded_body(self._read_body(), self.headers.get("Content-Encoding", ""))
            request = ExportTraceServiceRequest()
            request.ParseFromString(body)
        except Exception as exc:  # a bad body is the client's error: shown in refused
            self._refuse(400, f"undecodable body: {type(exc).__name__}: {exc}")
            return
        self.server.stub.received(spans_of(request))
        self._answer(200, PROTOBUF, ExportTraceServiceResponse().SerializeToString())

    def do_GET(self) -> None:
        self._refuse(405, f"GET {self.path}")

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").strip().lower() == "chunked":
            chunks: list[bytes] = []
            while True:
                size = int(self.rfile.readline().split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()  # the CRLF after the chunk
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            raise ValueError(f"body of {length} bytes")
        return self.rfile.read(length)

    def _refuse(self, status: int, why: str) -> None:
        self.server.stub.note_refused(why)
        self._answer(status, "text/plain", why.encode())

    def _answer(self, status: int, content_type: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # quiet: pytest shows what the test asserts


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, stub: OtlpStub) -> None:
        self.stub = stub
        super().__init__(("127.0.0.1", 0), _Handler)


class OtlpStub:
    """The collector stub: on 127.0.0.1 (a free port) from :meth:`start` (or ``with``) until
    :meth:`stop`, serving in a daemon thread; what it received in :meth:`spans`."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._spans: list[StubSpan] = []
        self._refused: list[str] = []
        self._exports = 0
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> OtlpStub:
        if self._server is None:
            self._server = _Server(self)
            self._thread = threading.Thread(
                target=self._server.serve_forever,
                kwargs={"poll_interval": 0.1},
                name="otlp-stub",
                daemon=True,
            )
            self._thread.start()
        return self

    def stop(self) -> None:
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is not None:
            server.shutdown()
            server.server_close()
        if thread is not None:
            thread.join(timeout=5)

    def __enter__(self) -> OtlpStub:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("the OTLP stub is not running")
        return int(self._server.server_address[1])

    @property
    def endpoint(self) -> str:
        """The base URL for ``OTEL_EXPORTER_OTLP_ENDPOINT`` (the exporter adds ``/v1/traces``)."""
        return f"http://127.0.0.1:{self.port}"

    # -- what it received (any thread) --

    def received(self, spans: list[StubSpan]) -> None:
        with self._lock:
            self._spans.extend(spans)
            self._exports += 1

    def note_refused(self, why: str) -> None:
        with self._lock:
            self._refused.append(why)

    def spans(self) -> list[StubSpan]:
        """Every span received so far, in the order received (a copy)."""
        with self._lock:
            return list(self._spans)

    @property
    def exports(self) -> int:
        """How many export requests were accepted."""
        with self._lock:
            return self._exports

    @property
    def refused(self) -> list[str]:
        """Why each refused request was refused (a copy)."""
        with self._lock:
            return list(self._refused)

    def clear(self) -> None:
        with self._lock:
            self._spans.clear()
            self._refused.clear()
            self._exports = 0

"""OpenTelemetry spans sent to an OTLP/HTTP endpoint (protobuf), one per reconcile call.

The request is built from the official protobuf definitions (opentelemetry-proto) rather
than through the SDK's exporter: spans here already happened, with their own start and end
times and ids, and the SDK exporter reports a refused connection as a log line and a
FAILURE value after retrying, where the user should get one clear line naming the endpoint.

Each call is its own trace (a root span), as a reconcile is in controller-runtime's view:
one unit of work. Ids are derived from the trace file (binary build id, pid, attach time)
and the span's number, so sending a file twice sends the same ids and backends merge them.

Attribute names (OpenTelemetry semantic conventions where one exists):
- resource: service.name (the target's name), process.pid, process.command_args,
  process.executable.path/.name, process.executable.build_id.gnu (or .go), process.runtime
  .name/.version (Go), k8s.pod.name/k8s.namespace.name/k8s.pod.uid/k8s.container.name/
  k8s.node.name when the header names a pod; tracer.* for the binary facts and the tracer.
- span: code.function.name (and code.function, its name before semconv 1.30, which older
  backends index), thread.id, error.type, error.message; the reconciled object as
  k8s.object.namespace/k8s.object.name (no convention exists for it; k8s.namespace.name is
  the operator pod's namespace, on the resource); tracer.goroutine.id, tracer.span.id,
  tracer.status, tracer.outcome, tracer.result.requeue, tracer.result.requeue_after_ns,
  tracer.args, tracer.return, tracer.unfinished. A panic also gets the `exception` event.
"""

from __future__ import annotations

import hashlib
import os
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import (
    AnyValue,
    ArrayValue,
    InstrumentationScope,
    KeyValue,
)
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span, Status

from tracer.errors import UserError
from tracer.exports import spans as sp
from tracer.exports.source import TraceStream

DEFAULT_ENDPOINT = "http://localhost:4318/v1/traces"
# ~600 bytes a span: 2,000 spans is about 1.2 MB, under receivers' usual 4 MB limit.
BATCH = 2000
TIMEOUT_S = 10.0
RETRIES = 4  # on 429/502/503/504: the receiver asks to slow down
SAMPLED_LOCAL = 0x101  # W3C "sampled" flag, and "the parent is known not to be remote"


def _value(v: object) -> AnyValue:
    if isinstance(v, bool):
        return AnyValue(bool_value=v)
    if isinstance(v, int):
        return AnyValue(int_value=v)
    if isinstance(v, float):
        return AnyValue(double_value=v)
    if isinstance(v, list | tuple):
        return AnyValue(array_value=ArrayValue(values=[_value(x) for x in v]))
    return AnyValue(string_value=str(v))


def _attributes(attrs: dict[str, object]) -> list[KeyValue]:
    return [KeyValue(key=k, value=_value(v)) for k, v in attrs.items() if v is not None]


def resource_attributes(header: dict) -> dict[str, object]:
    target = header.get("target") or {}
    binary = header.get("binary") or {}
    attrs: dict[str, object] = {
        "service.name": target.get("name") or os.path.basename(binary.get("path") or "")
        or "unknown_service",
        "process.pid": target.get("pid"),
        "process.command_args": target.get("argv") or None,
        "process.executable.path": binary.get("path"),
        "process.executable.name": os.path.basename(binary["path"]) if binary.get("path")
        else None,
    }
    build_id = binary.get("build_id")
    if build_id:
        # tracer writes the GNU build-id as hex, else Go's own build ID (slash-separated).
        gnu = all(c in "0123456789abcdef" for c in build_id.lower())
        attrs["process.executable.build_id." + ("gnu" if gnu else "go")] = build_id
    if binary.get("language") == "go":
        attrs["process.runtime.name"] = "go"
        attrs["process.runtime.version"] = binary.get("go_version")
    attrs.update(_kubernetes(target))
    for fact in ("language", "stripped", "dwarf", "pie"):
        attrs[f"tracer.binary.{fact}"] = binary.get(fact)
    attrs["tracer.version"] = header.get("tracer_version")
    attrs["tracer.backend"] = header.get("backend")
    attrs["tracer.probe"] = header.get("probe")
    attrs["tracer.functions"] = header.get("functions") or None
    return attrs


def _kubernetes(target: dict) -> dict[str, object]:
    """The operator's pod, when the trace was taken through one: `target.pod` as a name (with
    `target.namespace`) or as an object with name, namespace, uid, container, node."""
    pod = target.get("pod")
    if not pod:
        return {}
    if isinstance(pod, str):
        pod = {"name": pod, "namespace": target.get("namespace"),
               "container": target.get("container")}
    return {
        "k8s.pod.name": pod.get("name"),
        "k8s.namespace.name": pod.get("namespace"),
        "k8s.pod.uid": pod.get("uid"),
        "k8s.container.name": pod.get("container"),
        "k8s.node.name": pod.get("node"),
    }


def span_attributes(span: dict) -> dict[str, object]:
    function = span.get("function")
    request = span.get("request") or {}
    result = span.get("result")
    failure = span.get("panic") or span.get("error") or {}
    attrs: dict[str, object] = {
        "code.function.name": function,
        "code.function": function,
        "k8s.object.namespace": request.get("namespace") or None,
        "k8s.object.name": request.get("name"),
        "thread.id": span.get("thread"),
        "tracer.goroutine.id": span.get("goroutine"),
        "tracer.span.id": span.get("id"),
        "tracer.status": span.get("status"),
        "tracer.outcome": sp.kind(span),
        "error.type": failure.get("type"),
        "error.message": failure.get("message"),
        "tracer.args": span.get("args"),
        "tracer.return": span.get("return"),
    }
    if result is not None:
        attrs["tracer.result.requeue"] = bool(result.get("requeue"))
        attrs["tracer.result.requeue_after_ns"] = int(result.get("requeue_after_ns") or 0)
    if span.get("end_ns") is None:
        attrs["tracer.unfinished"] = True
    return attrs


class _Ids:
    """Deterministic ids: the same file and span give the same ids on every export."""

    def __init__(self, header: dict) -> None:
        target = header.get("target") or {}
        binary = header.get("binary") or {}
        clock = header.get("clock") or {}
        self.seed = (f"{binary.get('build_id')}|{target.get('pid')}|"
                     f"{clock.get('realtime_ns')}|{clock.get('monotonic_ns')}")

    def _raw(self, span: dict, span_id: object) -> bytes:
        # Span ids are unique per run; a file of several pods' runs tells them by the pod.
        where = (span.get("k8s") or {}).get("pod", "")
        return hashlib.sha256(f"{self.seed}|{where}|{span_id}".encode()).digest()

    def __call__(self, span: dict) -> tuple[bytes, bytes, bytes]:
        """(trace id, span id, parent span id): a step (child span) is in its reconcile's
        trace, under the reconcile's span; a reconcile is a trace of its own."""
        raw = self._raw(span, span.get("id"))
        if span.get("parent") is None:
            return raw[:16], raw[16:24], b""
        parent = self._raw(span, span["parent"])
        return parent[:16], raw[16:24], parent[16:24]


def to_proto(span: dict, offset: int, run_end: int, ids: _Ids) -> Span:
    trace_id, span_id, parent_id = ids(span)
    end = span.get("end_ns")
    end_wall = (end if end is not None else max(run_end, span["start_ns"])) + offset
    out = Span(
        trace_id=trace_id,
        span_id=span_id,
        parent_span_id=parent_id,
        flags=SAMPLED_LOCAL,
        name=sp.short_function(span.get("function") or "call"),
        kind=Span.SpanKind.SPAN_KIND_INTERNAL,
        start_time_unix_nano=span["start_ns"] + offset,
        end_time_unix_nano=end_wall,
        attributes=_attributes(span_attributes(span)),
    )
    panic, error = span.get("panic"), span.get("error")
    if panic:
        out.events.append(Span.Event(
            time_unix_nano=end_wall, name="exception",
            attributes=_attributes({"exception.type": panic.get("type"),
                                    "exception.message": panic.get("message")})))
    failure = panic or error
    if failure:
        out.status.CopyFrom(Status(code=Status.StatusCode.STATUS_CODE_ERROR,
                                   message=failure.get("message") or failure.get("type") or ""))
    return out


def requests(stream: TraceStream, batch: int = BATCH) -> Iterator[tuple[int, bytes]]:
    """(spans, serialized ExportTraceServiceRequest) per batch. Unfinished calls are held back
    to the end: they end when the run ended, known only once the whole file is read."""
    header = stream.header
    resource = Resource(attributes=_attributes(resource_attributes(header)))
    scope = InstrumentationScope(name="tracer", version=str(header.get("tracer_version") or ""))
    offset = stream.clock_offset
    ids = _Ids(header)

    def request(spans: list[Span]) -> tuple[int, bytes]:
        message = ExportTraceServiceRequest(resource_spans=[ResourceSpans(
            resource=resource, scope_spans=[ScopeSpans(scope=scope, spans=spans)])])
        return len(spans), message.SerializeToString()

    pending: list[Span] = []
    unfinished: list[dict] = []
    for span in stream.spans():
        if span.get("end_ns") is None:
            unfinished.append(span)
            continue
        pending.append(to_proto(span, offset, 0, ids))
        if len(pending) >= batch:
            yield request(pending)
            pending = []
    run_end = stream.end_ns()
    pending.extend(to_proto(span, offset, run_end, ids) for span in unfinished)
    for i in range(0, len(pending), batch):
        yield request(pending[i:i + batch])


def check_endpoint(endpoint: str) -> str:
    parts = urllib.parse.urlsplit(endpoint)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise UserError(f"--endpoint {endpoint} is not an http:// or https:// URL "
                        f"(e.g. {DEFAULT_ENDPOINT})")
    return endpoint


def env_headers() -> dict[str, str]:
    """OTEL_EXPORTER_OTLP_(TRACES_)HEADERS, as the OpenTelemetry SDKs read it: k=v,k2=v2."""
    raw = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_HEADERS",
                         os.environ.get("OTEL_EXPORTER_OTLP_HEADERS", ""))
    headers = {}
    for item in raw.split(","):
        key, sep, value = item.partition("=")
        if sep and key.strip():
            headers[urllib.parse.unquote(key.strip())] = urllib.parse.unquote(value.strip())
    return headers


@dataclass
class Sent:
    spans: int = 0
    requests: int = 0
    rejected: int = 0
    messages: list[str] | None = None


class Sender:
    def __init__(self, endpoint: str, headers: dict[str, str] | None = None) -> None:
        self.endpoint = check_endpoint(endpoint)
        self.headers = {**(headers or {}), "Content-Type": "application/x-protobuf"}
        self.sent = Sent(messages=[])

    def _fail(self, why: str) -> UserError:
        before = f" (after {self.sent.spans} spans were sent)" if self.sent.spans else ""
        return UserError(f"cannot send spans to {self.endpoint}: {why}{before}")

    def post(self, spans: int, body: bytes) -> None:
        for attempt in range(RETRIES + 1):
            req = urllib.request.Request(self.endpoint, data=body, headers=self.headers,
                                         method="POST")
            try:
                with urllib.request.urlopen(req, timeout=TIMEOUT_S) as response:
                    reply = response.read()
                break
            except urllib.error.HTTPError as exc:
                if exc.code in (429, 502, 503, 504) and attempt < RETRIES:
                    time.sleep(_retry_after(exc.headers.get("Retry-After"), attempt))
                    continue
                raise self._fail(f"HTTP {exc.code} {exc.reason}") from None
            except urllib.error.URLError as exc:
                reason = exc.reason
                if isinstance(reason, ConnectionRefusedError):
                    raise self._fail("connection refused (is an OTLP/HTTP receiver "
                                     "listening there?)") from None
                if isinstance(reason, socket.gaierror):
                    raise self._fail(f"unknown host ({reason.strerror})") from None
                raise self._fail(str(getattr(reason, "strerror", None) or reason)) from None
            except TimeoutError:
                raise self._fail(f"no answer within {TIMEOUT_S:.0f} s") from None
            except (ConnectionError, OSError) as exc:
                raise self._fail(exc.strerror or str(exc)) from None
        self.sent.spans += spans
        self.sent.requests += 1
        self._partial(reply)

    def _partial(self, reply: bytes) -> None:
        """A receiver may accept a request yet reject some spans (OTLP partial success)."""
        if not reply:
            return
        response = ExportTraceServiceResponse()
        try:
            response.ParseFromString(reply)
        except Exception:  # noqa: BLE001 - a reply that is not protobuf carries no count
            return
        partial = response.partial_success
        if partial.rejected_spans or partial.error_message:
            self.sent.rejected += partial.rejected_spans
            if partial.error_message:
                self.sent.messages.append(partial.error_message)


def _retry_after(header: str | None, attempt: int) -> float:
    try:
        return min(float(header), 5.0) if header else min(0.5 * 2 ** attempt, 5.0)
    except ValueError:
        return min(0.5 * 2 ** attempt, 5.0)


def send_otlp(stream: TraceStream, endpoint: str, headers: dict[str, str] | None = None,
              batch: int = BATCH) -> Sent:
    sender = Sender(endpoint, headers)
    for count, body in requests(stream, batch):
        sender.post(count, body)
    return sender.sent

"""`tracer export --format otlp`, received by a real OTLP/HTTP receiver on loopback and decoded
with the official protobuf definitions."""

from __future__ import annotations

import math
import socket

from click.testing import CliRunner
from export_support import assert_one_line_error, read_trace_lines, run_cli, wall_offset
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from tracer.front.export_cmd import export


def send(trace, receiver, *extra: str) -> str:
    result = CliRunner().invoke(export, [str(trace), "--format", "otlp", "--endpoint",
                                         receiver.url, *extra])
    assert result.exit_code == 0, result.output
    return result.output


def value(any_value):
    kind = any_value.WhichOneof("value")
    if kind == "array_value":
        return [value(v) for v in any_value.array_value.values]
    return getattr(any_value, kind)


def attrs(items) -> dict:
    return {kv.key: value(kv.value) for kv in items}


def received(receiver) -> list[tuple[dict, Span]]:
    """(resource attributes, span) for every span in every request."""
    out = []
    for path, headers, body in receiver.requests:
        assert path == "/v1/traces"
        assert headers["Content-Type"] == "application/x-protobuf"
        request = ExportTraceServiceRequest()
        request.ParseFromString(body)
        for rs in request.resource_spans:
            resource = attrs(rs.resource.attributes)
            for ss in rs.scope_spans:
                assert ss.scope.name == "tracer"
                out.extend((resource, span) for span in ss.spans)
    return out


def test_every_call_arrives_with_its_times_and_attributes(go_trace, otlp_receiver):
    header, spans, _ = read_trace_lines(go_trace)
    send(go_trace, otlp_receiver)
    got = received(otlp_receiver)
    assert len(got) == len(spans)
    offset = wall_offset(header)
    by_id = {}
    for resource, span in got:
        a = attrs(span.attributes)
        by_id[a["tracer.span.id"]] = (resource, span, a)
    assert set(by_id) == {s["id"] for s in spans}

    for s in spans:
        resource, span, a = by_id[s["id"]]
        assert span.name == s["function"].rsplit("/", 1)[-1]
        assert span.kind == Span.SpanKind.SPAN_KIND_INTERNAL
        assert span.start_time_unix_nano == s["start_ns"] + offset
        assert span.end_time_unix_nano == s["end_ns"] + offset
        assert len(span.trace_id) == 16 and len(span.span_id) == 8 and not span.parent_span_id
        assert a["code.function.name"] == s["function"] == a["code.function"]
        assert a["k8s.object.namespace"] == s["request"]["namespace"]
        assert a["k8s.object.name"] == s["request"]["name"]
        assert a["tracer.goroutine.id"] == s["goroutine"]
        assert a["thread.id"] == s["thread"]
        assert a["tracer.status"] == s["status"]
        failure = s["panic"] or s["error"]
        if failure:
            assert span.status.code == Status.StatusCode.STATUS_CODE_ERROR
            assert a["error.type"] == failure["type"]
            assert a.get("error.message") == failure["message"]
            assert span.status.message == (failure["message"] or failure["type"])
        else:
            assert span.status.code == Status.StatusCode.STATUS_CODE_UNSET
            assert "error.type" not in a
        events = [e.name for e in span.events]
        assert events == (["exception"] if s["panic"] else [])
        if s["panic"]:
            exc = attrs(span.events[0].attributes)
            assert exc["exception.type"] == s["panic"]["type"]
            assert exc["exception.message"] == s["panic"]["message"]
        if s["result"] is None:
            assert "tracer.result.requeue" not in a
        else:
            assert a["tracer.result.requeue"] == s["result"]["requeue"]
            assert a["tracer.result.requeue_after_ns"] == s["result"]["requeue_after_ns"]

    # Every kind of outcome was there to check.
    statuses = {s["status"] for s in spans}
    assert {"ok", "error", "panic"} <= statuses
    assert any(s["result"] and s["result"]["requeue_after_ns"] for s in spans)
    # Each call is its own trace; ids are unique.
    assert len({span.trace_id for _, span in got}) == len(spans)
    assert len({span.span_id for _, span in got}) == len(spans)


def test_the_resource_names_the_service_and_the_binary(go_trace, otlp_receiver):
    header, _, _ = read_trace_lines(go_trace)
    send(go_trace, otlp_receiver)
    resources = [r for r, _ in received(otlp_receiver)]
    resource = resources[0]
    assert all(r == resource for r in resources)
    assert resource["service.name"] == header["target"]["name"]
    assert resource["process.pid"] == header["target"]["pid"]
    assert resource["process.command_args"] == header["target"]["argv"]
    assert resource["process.executable.path"] == header["binary"]["path"]
    assert resource["process.executable.build_id.gnu"] == header["binary"]["build_id"]
    assert resource["process.runtime.name"] == "go"
    assert resource["process.runtime.version"] == header["binary"]["go_version"]
    for fact in ("language", "stripped", "dwarf", "pie"):
        assert resource[f"tracer.binary.{fact}"] == header["binary"][fact]
    assert resource["tracer.functions"] == header["functions"]
    assert not any(key.startswith("k8s.") for key in resource), "no pod in this header"


def test_large_traces_go_in_batches_and_ids_are_stable(go_trace, otlp_receiver):
    _, spans, _ = read_trace_lines(go_trace)
    send(go_trace, otlp_receiver, "--batch-size", "100")
    assert len(otlp_receiver.requests) == math.ceil(len(spans) / 100)
    first = [(s.trace_id, s.span_id) for _, s in received(otlp_receiver)]
    otlp_receiver.requests.clear()
    send(go_trace, otlp_receiver, "--batch-size", "100")
    assert [(s.trace_id, s.span_id) for _, s in received(otlp_receiver)] == first
    assert len(first) == len(spans)


def test_unfinished_calls_end_when_the_run_ended(unfinished_trace, otlp_receiver):
    header, spans, end = read_trace_lines(unfinished_trace)
    send(unfinished_trace, otlp_receiver)
    offset = wall_offset(header)
    got = {attrs(s.attributes)["tracer.span.id"]: s for _, s in received(otlp_receiver)}
    assert len(got) == len(spans)
    unfinished = [s for s in spans if s["status"] == "unfinished"]
    assert unfinished
    for s in unfinished:
        span = got[s["id"]]
        assert attrs(span.attributes)["tracer.unfinished"] is True
        assert span.end_time_unix_nano == end["clock"]["monotonic_ns"] + offset
        assert span.status.code == Status.StatusCode.STATUS_CODE_UNSET


def test_native_calls_carry_arguments_and_return(native_trace, otlp_receiver):
    header, spans, _ = read_trace_lines(native_trace)
    send(native_trace, otlp_receiver)
    got = {attrs(s.attributes)["tracer.span.id"]: (r, s) for r, s in received(otlp_receiver)}
    assert len(got) == len(spans)
    for s in spans:
        resource, span = got[s["id"]]
        a = attrs(span.attributes)
        assert a["tracer.args"] == s["args"] and a["tracer.return"] == s["return"]
        assert a["thread.id"] == s["thread"] and "tracer.goroutine.id" not in a
        assert "k8s.object.name" not in a
        assert span.name == "reconcile"
    assert "process.runtime.name" not in resource


def test_an_endpoint_refusing_connections_is_one_line(go_trace, tmp_path):
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/v1/traces"
    result = run_cli("export", str(go_trace), "--format", "otlp", "--endpoint", url)
    assert_one_line_error(result, url, "connection refused")


def test_a_receiver_answering_an_error_is_one_line(go_trace, otlp_receiver):
    otlp_receiver.status = 400
    result = run_cli("export", str(go_trace), "--format", "otlp", "--endpoint", otlp_receiver.url)
    assert_one_line_error(result, otlp_receiver.url, "HTTP 400")


def test_a_bad_endpoint_is_one_line(go_trace):
    result = run_cli("export", str(go_trace), "--format", "otlp", "--endpoint", "localhost:4318")
    assert_one_line_error(result, "localhost:4318", "http://")

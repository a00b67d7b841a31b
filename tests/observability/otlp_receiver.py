"""An OTLP/HTTP trace receiver for tests (http.server + the OTLP messages xds-protos
ships), reading Content-Length or chunked bodies (Envoy sends chunked), and `flat()` to
turn what it got into plain dicts to compare."""
from __future__ import annotations

import http.server
import threading
import time

from google.protobuf import unknown_fields
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest, ExportTraceServiceResponse)

KINDS = {1: "INTERNAL", 2: "SERVER", 3: "CLIENT", 4: "PRODUCER", 5: "CONSUMER"}


class Receiver:
    def __init__(self, status: int = 200, port: int = 0):
        self.requests: list[tuple[str, dict, ExportTraceServiceRequest]] = []
        requests = self.requests

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):
                if self.headers.get("transfer-encoding", "").lower() == "chunked":
                    body = b""
                    while True:
                        n = int(self.rfile.readline().strip().split(b";")[0], 16)
                        if n == 0:
                            self.rfile.readline()
                            break
                        body += self.rfile.read(n)
                        self.rfile.readline()
                else:
                    body = self.rfile.read(int(self.headers.get("content-length", 0)))
                msg = ExportTraceServiceRequest.FromString(body)
                requests.append((self.path, {k.lower(): v for k, v in self.headers.items()},
                                 msg))
                out = ExportTraceServiceResponse().SerializeToString()
                self.send_response(status)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

            def log_message(self, *a):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.port = self.server.server_address[1]
        self.address = ("127.0.0.1", self.port)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def spans(self) -> list[dict]:
        return [s for _p, _h, m in list(self.requests) for s in flat(m)]

    def wait_spans(self, n: int, timeout: float = 15.0, where=None) -> list[dict]:
        deadline = time.monotonic() + timeout
        while True:
            spans = [s for s in self.spans() if where is None or where(s)]
            if len(spans) >= n:
                return spans
            assert time.monotonic() < deadline, f"{len(spans)} spans, wanted {n}"
            time.sleep(0.05)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _value(v):
    kind = v.WhichOneof("value")
    return getattr(v, kind) if kind else None


def _flags(span) -> int | None:
    for f in unknown_fields.UnknownFieldSet(span):
        if f.field_number == 16:
            return f.data
    return None


def flat(msg: ExportTraceServiceRequest) -> list[dict]:
    out = []
    for rs in msg.resource_spans:
        resource = {a.key: _value(a.value) for a in rs.resource.attributes}
        for ss in rs.instrumentation_library_spans:
            for s in ss.spans:
                out.append({
                    "resource": resource, "scope": ss.instrumentation_library.name,
                    "trace_id": s.trace_id.hex(), "span_id": s.span_id.hex(),
                    "parent_span_id": s.parent_span_id.hex(), "trace_state": s.trace_state,
                    "name": s.name, "kind": KINDS.get(s.kind, s.kind),
                    "start": s.start_time_unix_nano, "end": s.end_time_unix_nano,
                    "attributes": {a.key: _value(a.value) for a in s.attributes},
                    "events": [e.name for e in s.events], "status": s.status.code,
                    "flags": _flags(s)})
    return out

"""Shared by the HTTP/2 and gRPC tests: an in-process grpcio server with raw-bytes
handlers (no generated stubs needed) and config builders for HTTP/2 upstreams. A module of
its own, not conftest.py: test modules import it by name, and `conftest` is ambiguous
once several test folders are collected together."""
from __future__ import annotations

import hashlib
import time
from concurrent import futures

import pytest

grpc = pytest.importorskip("grpc")

from harness import cluster, free_port  # noqa: E402

SERVICE = "test.Echo"
BIG = 64 * 1024 * 1024
H2_OPTIONS = {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
    "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
    "explicit_http_config": {"http2_protocol_options": {}}}}


def h2_cluster(name: str, port: int, **extra) -> dict:
    return cluster(name, [("127.0.0.1", port)], typed_extension_protocol_options=H2_OPTIONS,
                   **extra)


def _unary(request: bytes, context) -> bytes:
    if request == b"fail":
        context.abort(grpc.StatusCode.NOT_FOUND, "nope: caf\u00e9 100%")
    context.set_trailing_metadata((("x-trailer", "t1"),))
    return request[::-1]


def _sleep(request: bytes, context) -> bytes:
    time.sleep(float(request.decode()))
    return b"slept"


def _server_stream(request: bytes, context):
    n, size = (int(x) for x in request.decode().split(","))
    for i in range(n):
        yield bytes([i % 256]) * size


def _client_stream(requests, context) -> bytes:
    h = hashlib.sha256()
    n = 0
    for r in requests:
        h.update(r)
        n += 1
    return b"%d:%s" % (n, h.hexdigest().encode())


def _bidi(requests, context):
    for r in requests:
        yield b"echo:" + r


def _metadata(request: bytes, context) -> bytes:
    return repr(sorted((m.key, m.value) for m in context.invocation_metadata())).encode()


@pytest.fixture(scope="module")
def grpc_server():
    """A grpcio server on a free port; yields the port."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=32),
                         options=[("grpc.max_receive_message_length", BIG),
                                  ("grpc.max_send_message_length", BIG)])
    handlers = {
        "Unary": grpc.unary_unary_rpc_method_handler(_unary),
        "Sleep": grpc.unary_unary_rpc_method_handler(_sleep),
        "Metadata": grpc.unary_unary_rpc_method_handler(_metadata),
        "ServerStream": grpc.unary_stream_rpc_method_handler(_server_stream),
        "ClientStream": grpc.stream_unary_rpc_method_handler(_client_stream),
        "Bidi": grpc.stream_stream_rpc_method_handler(_bidi),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    port = free_port()
    server.add_insecure_port("127.0.0.1:%d" % port)
    server.start()
    yield port
    server.stop(0)


def channel(port: int):
    return grpc.insecure_channel("127.0.0.1:%d" % port,
                                 options=[("grpc.max_receive_message_length", BIG),
                                          ("grpc.max_send_message_length", BIG)])

"""gRPC end to end: a grpcio client -> proxyd (h2c, AUTO codec) -> a grpcio server over
proxyd's HTTP/2 upstream pool. All four call kinds, trailers, large messages,
deadlines and gRPC-shaped local replies."""
from __future__ import annotations

import hashlib
import time

import grpc
import pytest

from h2_helpers import SERVICE, channel, h2_cluster
from harness import bootstrap, closed_port, free_port, listener, route, virtual_host


def _config(grpc_port: int, port: int, **route_extra) -> dict:
    routes = [route("/%s/Sleep" % SERVICE, "grpc", **route_extra),
              route("/%s/" % SERVICE, "grpc"),
              route("/dead.Service/", "dead")]
    return bootstrap([listener(port, virtual_hosts=[virtual_host(routes)])],
                     [h2_cluster("grpc", grpc_port), h2_cluster("dead", closed_port())])


@pytest.fixture(scope="module")
def proxy(grpc_server, tmp_path_factory):
    from harness import Proxyd, write_config
    port = free_port()
    path = write_config(tmp_path_factory.mktemp("grpc"),
                        _config(grpc_server, port, max_grpc_timeout="1s"))
    px = Proxyd(path, concurrency=1).start()
    yield px
    px.cleanup()


@pytest.fixture
def ch(proxy):
    c = channel(proxy.port)
    yield c
    c.close()


def _m(name: str) -> str:
    return "/%s/%s" % (SERVICE, name)


def test_unary_with_trailers(ch):
    call = ch.unary_unary(_m("Unary"))
    resp, info = call.with_call(b"hello", timeout=10)
    assert resp == b"olleh"
    assert ("x-trailer", "t1") in info.trailing_metadata()
    assert info.code() == grpc.StatusCode.OK


def test_error_status_and_message_pass_through(ch):
    with pytest.raises(grpc.RpcError) as e:
        ch.unary_unary(_m("Unary"))(b"fail", timeout=10)
    assert e.value.code() == grpc.StatusCode.NOT_FOUND
    assert e.value.details() == "nope: caf\u00e9 100%"


def test_request_metadata_reaches_server(ch):
    out = ch.unary_unary(_m("Metadata"))(b"", metadata=(("x-client", "c1"),), timeout=10)
    assert b"('x-client', 'c1')" in out
    assert b"x-request-id" in out and b"x-forwarded-proto" in out


def test_server_streaming_large_messages(ch):
    n, size = 5, 3 * 1024 * 1024
    got = list(ch.unary_stream(_m("ServerStream"))(b"%d,%d" % (n, size), timeout=30))
    assert [len(m) for m in got] == [size] * n
    assert [m[0] for m in got] == list(range(n))


def test_client_streaming_large_messages(ch):
    msgs = [bytes([i]) * (2 * 1024 * 1024 + i) for i in range(4)]
    out = ch.stream_unary(_m("ClientStream"))(iter(msgs), timeout=30)
    assert out == b"4:" + hashlib.sha256(b"".join(msgs)).hexdigest().encode()


def test_bidi_ping_pong(ch):
    """Each request waits for the previous answer: only works if proxyd relays both
    directions at once."""
    import queue
    q: queue.Queue = queue.Queue()
    q.put(b"m0")

    def requests():
        for i in range(1, 6):
            item = q.get(timeout=10)
            yield item
        return

    replies = []
    for i, r in enumerate(ch.stream_stream(_m("Bidi"))(requests(), timeout=30)):
        replies.append(r)
        if i < 4:
            q.put(b"m%d" % (i + 1))
    assert replies == [b"echo:m%d" % i for i in range(5)]


def test_many_concurrent_calls_share_one_connection(ch):
    call = ch.unary_unary(_m("Unary"))
    futs = [call.future(b"x%d" % i, timeout=20) for i in range(200)]
    assert [f.result() for f in futs] == [(b"x%d" % i)[::-1] for i in range(200)]


def test_max_grpc_timeout_caps_the_deadline(ch):
    t0 = time.monotonic()
    with pytest.raises(grpc.RpcError) as e:
        ch.unary_unary(_m("Sleep"))(b"3", timeout=10)
    assert time.monotonic() - t0 < 2.0
    # Envoy: route timeout -> 504 -> grpc-status UNAVAILABLE, message from the local reply
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE
    assert e.value.details() == "upstream request timeout"


def test_grpc_timeout_header_shorter_than_max(proxy):
    """The request's own grpc-timeout (150 ms, under max_grpc_timeout 1 s) bounds the
    upstream call. Sent by a raw HTTP/2 client with no deadline of its own, so only
    proxyd can end the call: a gRPC-shaped local reply, UNAVAILABLE as Envoy maps 504."""
    from h2client import H2Client
    with H2Client(proxy.port) as c:
        t0 = time.monotonic()
        sid = c.request("POST", _m("Sleep"), [("content-type", "application/grpc"),
                                              ("te", "trailers"), ("grpc-timeout", "150m")],
                        body=b"\x00\x00\x00\x00\x012")
        r = c.wait(sid, timeout=5)
        took = time.monotonic() - t0
    assert 0.1 < took < 0.6
    fields = dict(r.headers + r.trailers)
    assert r.status == 200 and fields["grpc-status"] == "14"
    assert fields["grpc-message"] == "upstream request timeout"


def test_sleep_within_deadline_succeeds(ch):
    assert ch.unary_unary(_m("Sleep"))(b"0.05", timeout=5) == b"slept"


def test_no_route_is_unimplemented(ch):
    with pytest.raises(grpc.RpcError) as e:
        ch.unary_unary("/other.Service/Call")(b"", timeout=5)
    assert e.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_no_upstream_is_unavailable(ch):
    with pytest.raises(grpc.RpcError) as e:
        ch.unary_unary("/dead.Service/Call")(b"", timeout=5)
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "remote connection failure" in e.value.details()  # Envoy 1.40 words it so


def test_client_cancel_resets_upstream_stream(ch):
    fut = ch.unary_unary(_m("Sleep")).future(b"0.25", timeout=10)
    time.sleep(0.05)
    fut.cancel()
    assert fut.cancelled()
    # the connection stays usable for other calls
    assert ch.unary_unary(_m("Unary"))(b"ab", timeout=5) == b"ba"

"""The internal HTTP and gRPC clients (proxyd/upstream/async_client.py, grpc_client.py)
against real servers: tests/upstream_server.py for HTTP/1.1, grpcio servers for gRPC
over the cluster's HTTP/2 pool (plain and TLS); cluster stats as Envoy counts them."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
from google.protobuf import wrappers_pb2

from harness import Upstream, closed_port
from side_services import GrpcServer, Worker, cluster_config

from proxyd.upstream.async_client import AsyncClient, AsyncClientError
from proxyd.upstream.grpc_client import GrpcClient, GrpcError

SV = wrappers_pb2.StringValue
ROOT = Path(__file__).resolve().parents[2]
CLIENT_SCRIPT = """
from gevent import monkey; monkey.patch_all()
import json
from google.protobuf import wrappers_pb2
from side_services import Worker, cluster_config
from proxyd.upstream.grpc_client import GrpcClient
SV = wrappers_pb2.StringValue
w = Worker()
try:
    w.set_clusters(cluster_config("gt", %(port)d, h2=True, transport_socket=json.loads(%(tls)r)))
    client = GrpcClient(w.cluster_manager, "gt", timeout=5)
    print(client.unary("/test.Echo/Unary", SV(value="s"), SV).value)
    print(w.value("cluster.gt.ssl.handshake"))
finally:
    w.close()
"""


@pytest.fixture
def worker():
    w = Worker()
    yield w
    w.close()


@pytest.fixture(scope="module")
def upstream():
    u = Upstream("side")
    yield u
    u.stop()


def _unary(req, ctx):
    md = dict(ctx.invocation_metadata())
    return SV(value="echo:%s:%s" % (req.value, md.get("x-tag", "")))


def _server_stream(req, ctx):
    for i in range(int(req.value)):
        yield SV(value="m%d" % i)


def _bidi(it, ctx):
    for req in it:
        yield SV(value=req.value.upper())


def _fail(req, ctx):
    ctx.abort(grpc.StatusCode.PERMISSION_DENIED, "nope: %s" % req.value)


def _slow(req, ctx):
    time.sleep(float(req.value))
    return SV(value="late")


def _big(req, ctx):
    return SV(value="x" * int(req.value))


METHODS = {
    "/test.Echo/Unary": ("unary_unary", _unary, SV, SV.SerializeToString),
    "/test.Echo/ServerStream": ("unary_stream", _server_stream, SV, SV.SerializeToString),
    "/test.Echo/Bidi": ("stream_stream", _bidi, SV, SV.SerializeToString),
    "/test.Echo/Fail": ("unary_unary", _fail, SV, SV.SerializeToString),
    "/test.Echo/Slow": ("unary_unary", _slow, SV, SV.SerializeToString),
    "/test.Echo/Big": ("unary_unary", _big, SV, SV.SerializeToString),
}


@pytest.fixture(scope="module")
def grpc_server():
    s = GrpcServer(METHODS)
    yield s
    s.stop()


def test_http1_request_through_the_cluster_pool_counts_cluster_stats(worker, upstream):
    worker.set_clusters(cluster_config("side", upstream.port))
    client = AsyncClient(worker.cluster_manager)
    r = client.send("side", "POST", "/check?x=1", [("x-a", "1")], b"hello", timeout=5)
    assert r.status == 200
    echo = json.loads(r.body)
    assert echo["method"] == "POST" and echo["path"] == "/check?x=1"
    hdrs = {k.lower(): v for k, v in echo["headers"]}
    assert hdrs["host"] == "side" and hdrs["x-a"] == "1" and hdrs["content-length"] == "5"
    r2 = client.send("side", "GET", "/?status=403", timeout=5)
    assert r2.status == 403
    assert json.loads(r2.body)["conn_requests"] == 2   # the pooled connection was reused
    assert worker.value("cluster.side.upstream_rq_total") == 2
    assert worker.value("cluster.side.upstream_rq_200") == 1
    assert worker.value("cluster.side.upstream_rq_403") == 1
    assert worker.value("cluster.side.upstream_rq_4xx") == 1
    assert worker.value("cluster.side.upstream_cx_total") == 1
    assert worker.value("cluster.side.upstream_rq_active") == 0


def test_http1_timeout_connect_failure_and_unknown_cluster(worker, upstream):
    worker.set_clusters(cluster_config("side", upstream.port),
                        cluster_config("dead", closed_port()))
    client = AsyncClient(worker.cluster_manager)
    with pytest.raises(AsyncClientError) as e:
        client.send("side", "GET", "/?delay=3", timeout=0.2)
    assert e.value.reason == "timeout"
    assert worker.value("cluster.side.upstream_rq_timeout") == 1
    assert worker.value("cluster.side.upstream_rq_504") == 1
    with pytest.raises(AsyncClientError) as e:
        client.send("dead", "GET", "/", timeout=2)
    assert e.value.reason == "connect_failure"
    assert worker.value("cluster.dead.upstream_cx_connect_fail") == 1
    assert worker.value("cluster.dead.upstream_rq_503") == 1
    with pytest.raises(AsyncClientError) as e:
        client.send("nowhere", "GET", "/")
    assert e.value.reason == "no_cluster"
    # after the timeout the client still works (the timed-out connection was dropped)
    assert client.send("side", "GET", "/", timeout=5).status == 200


def test_grpc_unary_streaming_and_bidi(worker, grpc_server):
    worker.set_clusters(cluster_config("g", grpc_server.port, h2=True))
    client = GrpcClient(worker.cluster_manager, "g", timeout=5,
                        initial_metadata=[("x-tag", "t1")])
    assert client.unary("/test.Echo/Unary", SV(value="a"), SV).value == "echo:a:t1"
    s = client.stream("/test.Echo/ServerStream", SV)
    s.send(SV(value="3"), end_stream=True)
    got = []
    while (m := s.recv()) is not None:
        got.append(m.value)
    assert got == ["m0", "m1", "m2"] and s.status == 0
    b = client.stream("/test.Echo/Bidi", SV)
    for w in ("x", "y"):
        b.send(SV(value=w))
        assert b.recv().value == w.upper()   # interleaved: a reply before the next send
    b.close_send()
    assert b.recv() is None and b.status == 0
    # many calls share one HTTP/2 connection
    for i in range(20):
        assert client.unary("/test.Echo/Unary", SV(value=str(i)), SV).value.startswith("echo:")
    assert worker.value("cluster.g.upstream_cx_total") == 1
    assert worker.value("cluster.g.upstream_rq_total") == 23
    assert worker.value("cluster.g.upstream_rq_200") == 23
    big = client.unary("/test.Echo/Big", SV(value="300000"), SV)   # beyond one window
    assert len(big.value) == 300000


def test_grpc_errors_deadline_and_unavailable(worker, grpc_server):
    worker.set_clusters(cluster_config("g", grpc_server.port, h2=True),
                        cluster_config("dead", closed_port(), h2=True))
    client = GrpcClient(worker.cluster_manager, "g", timeout=5)
    with pytest.raises(GrpcError) as e:
        client.unary("/test.Echo/Fail", SV(value="q"), SV)
    assert e.value.status == 7 and e.value.message == "nope: q"
    with pytest.raises(GrpcError) as e:
        client.unary("/test.Echo/Slow", SV(value="3"), SV, timeout=0.2)
    assert e.value.status == 4
    assert worker.value("cluster.g.upstream_rq_timeout") == 1
    with pytest.raises(GrpcError) as e:
        client.unary("/test.Echo/Nope", SV(value="q"), SV)
    assert e.value.status == 12    # UNIMPLEMENTED from the server
    with pytest.raises(GrpcError) as e:
        GrpcClient(worker.cluster_manager, "dead", timeout=2).unary(
            "/test.Echo/Unary", SV(value="a"), SV)
    assert e.value.status == 14
    with pytest.raises(GrpcError) as e:
        GrpcClient(worker.cluster_manager, "missing").unary("/test.Echo/Unary", SV(), SV)
    assert e.value.status == 14
    # the connection still serves after a cancelled (timed-out) stream
    assert client.unary("/test.Echo/Unary", SV(value="z"), SV).value == "echo:z:"


def test_grpc_over_tls_cluster(worker, tmp_path):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID
    import datetime
    import ipaddress
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "authz.local")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(1)
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.DNSName("authz.local"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False)
            .sign(key, hashes.SHA256()))
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    (tmp_path / "ca.pem").write_bytes(cert_pem)
    creds = grpc.ssl_server_credentials([(key_pem, cert_pem)])
    server = GrpcServer(METHODS, credentials=creds)
    try:
        tls = {"name": "envoy.transport_sockets.tls", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3."
                     "UpstreamTlsContext",
            "sni": "authz.local",
            "common_tls_context": {
                "alpn_protocols": ["h2"],
                "validation_context": {"trusted_ca": {"filename": str(tmp_path / "ca.pem")}}}}}
        # the worker's ssl is gevent's (monkey-patched); so is this client's process
        script = CLIENT_SCRIPT % {"tls": json.dumps(tls), "port": server.port}
        out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                             timeout=60, cwd=str(ROOT), env={**os.environ, "PYTHONPATH": "%s:%s"
                                                            % (ROOT, ROOT / "tests")})
        assert out.returncode == 0, out.stderr[-3000:]
        assert out.stdout.split() == ["echo:s:", "1"]
    finally:
        server.stop()

"""The HTTP/1.1 data path end to end: methods, bodies and their framing, bodiless
responses, 100-continue, hop-by-hop headers, the x-forwarded-*/x-request-id/
x-envoy-upstream-service-time headers, and curl as a client."""
import re
import shutil
import socket
import subprocess
import time

import pytest

from harness import Conn, free_port, http, simple_config

UUID4 = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")


@pytest.fixture(scope="module")
def px(module_proxyd_factory, upstream):
    return module_proxyd_factory(simple_config(free_port(), upstream.port, use_remote_address=True))


def test_get_is_proxied(px):
    r = http(px.port, path="/hello?x=1")
    assert r.status == 200
    echo = r.json()
    assert (echo["method"], echo["path"], echo["server"]) == ("GET", "/hello?x=1", "shared")
    assert r.header("server") == "envoy"
    assert r.header("date")


def test_post_body_reaches_upstream(px):
    r = http(px.port, "POST", "/submit", body=b"a=1&b=2")
    echo = r.json()
    assert (r.status, echo["method"], echo["body"], echo["body_len"]) == (200, "POST", "a=1&b=2", 7)


@pytest.mark.parametrize("method", ["PUT", "PATCH", "DELETE", "OPTIONS"])
def test_other_methods(px, method):
    r = http(px.port, method, "/m", body=b"xyz")
    assert r.status == 200
    assert (r.json()["method"], r.json()["body"]) == (method, "xyz")


def test_chunked_request_body(px):
    with Conn(px.port) as c:
        c.send(b"POST /chunked HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
               b"5\r\nhello\r\n")
        time.sleep(0.05)
        c.send(b"6\r\n world\r\n0\r\n\r\n")
        r = c.read_response()
    assert r.status == 200
    echo = r.json()
    assert echo["body"] == "hello world"
    sent = dict(echo["headers"])
    assert sent.get("transfer-encoding") == "chunked"
    assert "content-length" not in sent


def test_chunked_response_body(px):
    with Conn(px.port) as c:
        r = c.request("GET", "/?size=100000&chunked=1&chunk=7000")
    assert r.status == 200
    assert r.header("transfer-encoding") == "chunked"
    assert r.header("content-length") is None
    assert len(r.body) == 100000
    assert r.body[:32] == b"0123456789abcdef" * 2


def test_content_length_response_body(px):
    r = http(px.port, path="/?size=12345")
    assert r.header("content-length") == "12345"
    assert r.header("transfer-encoding") is None
    assert len(r.body) == 12345


def test_close_delimited_upstream_body_is_reframed(px):
    """An upstream body that ends at close reaches an HTTP/1.1 client chunked, and the
    client's connection stays usable."""
    with Conn(px.port) as c:
        r = c.request("GET", "/?size=5000&eof=1")
        assert r.status == 200 and len(r.body) == 5000
        assert r.header("transfer-encoding") == "chunked"
        assert c.request("GET", "/again").status == 200


def test_streaming_response_arrives_before_it_ends(px):
    """A slow upstream body is relayed as it comes, not buffered until the end."""
    with Conn(px.port) as c:
        c.send(b"GET /?size=4&chunk=1&interval=0.5&chunked=1 HTTP/1.1\r\nHost: a\r\n\r\n")
        t0 = time.monotonic()
        first = c.f.readline()
        assert first.startswith(b"HTTP/1.1 200")
        assert time.monotonic() - t0 < 1.0


def test_head_has_no_body(px):
    with Conn(px.port) as c:
        r = c.request("HEAD", "/?size=1000")
        assert r.status == 200
        assert r.header("content-length") == "1000"
        r2 = c.request("GET", "/after-head")  # framing intact: the next response parses
        assert r2.json()["path"] == "/after-head"


@pytest.mark.parametrize("status", [204, 304])
def test_bodiless_statuses(px, status):
    with Conn(px.port) as c:
        r = c.request("GET", "/?status=%d" % status)
        assert r.status == status
        assert r.header("transfer-encoding") is None
        assert r.header("content-length") in (None, "0")
        assert c.request("GET", "/after").json()["path"] == "/after"


def test_expect_100_continue(px):
    """proxyd answers 100 Continue itself, then the final response; the upstream does
    not see the Expect header."""
    with Conn(px.port) as c:
        c.send(b"PUT /up HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
        line = c.f.readline()
        assert line == b"HTTP/1.1 100 Continue\r\n"
        assert c.f.readline() == b"\r\n"
        c.send(b"hello")
        r = c.read_response()
    assert r.status == 200
    echo = r.json()
    assert echo["body"] == "hello"
    assert "expect" not in dict(echo["headers"])


def test_upstream_interim_100_is_not_relayed_twice(px):
    """An upstream's own 100 Continue is swallowed; the client sees one final response."""
    with Conn(px.port) as c:
        c.send(b"POST /?continue=1 HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nok")
        r = c.read_response(skip_interim=False)
    assert r.status == 200 and r.json()["body"] == "ok"


def test_request_hop_by_hop_headers_removed(px):
    r = http(px.port, path="/hop", headers=[
        ("Connection", "keep-alive, X-Private"), ("X-Private", "secret"), ("Keep-Alive", "timeout=5"),
        ("Proxy-Connection", "keep-alive"), ("TE", "trailers"), ("Trailer", "X-T"),
        ("Proxy-Authorization", "Basic eA=="), ("X-Kept", "yes")])
    sent = dict(r.json()["headers"])
    for name in ("connection", "x-private", "keep-alive", "proxy-connection", "te", "trailer",
                 "proxy-authorization"):
        assert name not in sent, name
    assert sent["x-kept"] == "yes"


def test_response_hop_by_hop_headers_removed(px):
    r = http(px.port, path="/?hdr=Connection:x-up-private&hdr=X-Up-Private:1&hdr=Keep-Alive:timeout=9"
             "&hdr=Proxy-Connection:keep-alive&hdr=X-Kept:yes")
    names = [k for k, _ in r.headers]
    for name in ("x-up-private", "keep-alive", "proxy-connection"):
        assert name not in names, name
    assert r.header("connection") in (None, "keep-alive")
    assert r.header("x-kept") == "yes"


def test_forwarding_headers(px):
    r = http(px.port, path="/fwd")
    sent = dict(r.json()["headers"])
    assert sent["x-forwarded-for"] == "127.0.0.1"
    assert sent["x-forwarded-proto"] == "http"
    assert UUID4.match(sent["x-request-id"]), sent["x-request-id"]
    assert int(r.header("x-envoy-upstream-service-time")) >= 0


def test_x_forwarded_for_is_appended(px):
    r = http(px.port, path="/fwd", headers=[("X-Forwarded-For", "203.0.113.7")])
    assert dict(r.json()["headers"])["x-forwarded-for"] == "203.0.113.7, 127.0.0.1"


def test_request_ids_are_unique(px):
    ids = {dict(http(px.port, path="/id").json()["headers"])["x-request-id"] for _ in range(5)}
    assert len(ids) == 5


def test_upstream_service_time_measures_upstream(px):
    r = http(px.port, path="/?delay=0.3")
    assert 250 <= int(r.header("x-envoy-upstream-service-time")) < 3000


def test_http10_client(px):
    with Conn(px.port) as c:
        c.send(b"GET /ten HTTP/1.0\r\n\r\n")
        r = c.read_response()
        assert r.status == 200 and r.json()["path"] == "/ten"
        assert r.version == "HTTP/1.1"
        assert c.is_closed()


def test_connection_close_is_honoured(px):
    with Conn(px.port) as c:
        r = c.request("GET", "/bye", headers=[("Connection", "close")])
        assert r.status == 200 and r.header("connection") == "close"
        assert c.is_closed()


def test_client_closing_mid_response_does_not_hurt_the_worker(px):
    s = socket.create_connection(("127.0.0.1", px.port))
    s.sendall(b"GET /?size=50000000 HTTP/1.1\r\nHost: a\r\n\r\n")
    s.recv(1000)
    s.close()
    assert http(px.port, path="/still-fine").status == 200


curl = pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")


@curl
def test_curl_get(px):
    out = subprocess.run(["curl", "-sS", "-i", "-H", "X-Hello: curl", px.url + "/from-curl"],
                         capture_output=True, text=True, timeout=20)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("HTTP/1.1 200")
    assert '"/from-curl"' in out.stdout and '"x-hello", "curl"' in out.stdout


@curl
def test_curl_post_chunked_and_keepalive(px, tmp_path):
    data = tmp_path / "data.bin"
    data.write_bytes(b"z" * 300000)
    out = subprocess.run(["curl", "-sS", "-H", "Transfer-Encoding: chunked", "--data-binary",
                          "@%s" % data, px.url + "/upload", px.url + "/second", "-w",
                          "\\n%{num_connects}\\n"], capture_output=True, text=True, timeout=20)
    assert out.returncode == 0, out.stderr
    assert '"body_len": 300000' in out.stdout
    assert out.stdout.rstrip().endswith("\n0")  # the second transfer reused the connection


@curl
def test_curl_head_and_100_continue(px, tmp_path):
    out = subprocess.run(["curl", "-sS", "-I", px.url + "/?size=777"], capture_output=True,
                         text=True, timeout=20)
    assert out.returncode == 0 and "content-length: 777" in out.stdout.lower()
    big = tmp_path / "big"
    big.write_bytes(b"q" * 2_000_000)
    out = subprocess.run(["curl", "-sS", "-v", "-H", "Expect: 100-continue", "-T", str(big),
                          px.url + "/put"], capture_output=True, text=True, timeout=20)
    assert out.returncode == 0, out.stderr
    assert "HTTP/1.1 100 Continue" in out.stderr
    assert '"body_len": 2000000' in out.stdout


def test_nginx_upstream_static_file(nginx_factory, proxyd_factory):
    """A real server as the upstream: a 5 MiB static file and nginx's own keep-alive."""
    import hashlib
    import os as _os
    data = _os.urandom(5 * 1024 * 1024)
    ngx = nginx_factory({"blob.bin": data})
    px = proxyd_factory(simple_config(free_port(), ngx.port))
    with Conn(px.port) as c:
        r = c.request("GET", "/blob.bin")
        assert r.status == 200
        assert hashlib.sha256(r.body).digest() == hashlib.sha256(data).digest()
        r = c.request("GET", "/hello")
        assert (r.status, r.body) == (200, b"hello from nginx\n")
        assert c.request("GET", "/missing").status == 404

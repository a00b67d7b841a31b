"""Network filters in front of the HTTP connection manager in one filter chain, through a
proxyd process, with real clients and a real upstream:

- envoy.filters.network.rbac + HCM: a denied source address (127.0.0.2) is closed before
  any HTTP is parsed, other sources get HTTP (keep-alive, several requests); Envoy's
  `<stat_prefix>.rbac.{allowed,denied}` and the HCM's connection counters.
- envoy.filters.network.local_ratelimit + HCM: one token per connection, so an admitted
  connection serves any number of requests and the one after the last token is closed.
- rbac + local_ratelimit + HCM, and rbac + tcp_proxy (a sniffer before another terminal
  filter) keep working side by side.
"""
from __future__ import annotations

import socket
import subprocess
import time
import urllib.request

import pytest

from harness import Proxyd, bootstrap, cluster, free_port, hcm, write_config

RBAC = "type.googleapis.com/envoy.extensions.filters.network.rbac.v3.RBAC"
NLRL = "type.googleapis.com/envoy.extensions.filters.network.local_ratelimit.v3.LocalRateLimit"
TCP = "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"
HCM = "envoy.filters.network.http_connection_manager"

DENY_127_0_0_2 = {"name": "envoy.filters.network.rbac", "typed_config": {
    "@type": RBAC, "stat_prefix": "net_rbac",
    "rules": {"action": "DENY", "policies": {"bad_source": {
        "permissions": [{"any": True}],
        "principals": [{"direct_remote_ip": {"address_prefix": "127.0.0.2",
                                             "prefix_len": 32}}]}}}}}


def _listener(name, port, filters):
    return {"name": name, "address": {"socket_address": {"address": "127.0.0.1",
                                                         "port_value": port}},
            "filter_chains": [{"filters": filters}]}


def _hcm(prefix):
    return {"name": HCM, "typed_config": hcm(stat_prefix=prefix)}


def _nlrl(prefix, tokens):
    return {"name": "envoy.filters.network.local_ratelimit", "typed_config": {
        "@type": NLRL, "stat_prefix": prefix,
        "token_bucket": {"max_tokens": tokens, "fill_interval": "3600s"}}}


@pytest.fixture(scope="module")
def px(upstream, tmp_path_factory):
    d = tmp_path_factory.mktemp("hcm_chain")
    ports = [free_port() for _ in range(4)]
    listeners = [
        _listener("rbac_http", ports[0], [DENY_127_0_0_2, _hcm("rbac_http")]),
        _listener("nlrl_http", ports[1], [_nlrl("nlrl_http", 2), _hcm("nlrl_http")]),
        _listener("both_http", ports[2], [dict(DENY_127_0_0_2, typed_config=dict(
            DENY_127_0_0_2["typed_config"], stat_prefix="both_rbac")),
            _nlrl("both_rl", 1), _hcm("both_http")]),
        _listener("rbac_tcp", ports[3], [dict(DENY_127_0_0_2, typed_config=dict(
            DENY_127_0_0_2["typed_config"], stat_prefix="tcp_rbac")),
            {"name": "tcp", "typed_config": {"@type": TCP, "stat_prefix": "rbac_tcp",
                                             "cluster": "upstream"}}]),
    ]
    p = Proxyd(write_config(d, bootstrap(listeners,
                                         [cluster("upstream", [("127.0.0.1", upstream.port)])],
                                         free_port())), concurrency=1)
    p.start()
    p.chain_ports = ports
    yield p
    p.cleanup()


def _connect(port, source="127.0.0.1"):
    s = socket.create_connection(("127.0.0.1", port), timeout=5, source_address=(source, 0))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def _read_response(s, buf=b""):
    """One HTTP/1.1 response (content-length framed) from `s`: (head, body, rest); (b"",
    b"", b"") when the server closed first."""
    while b"\r\n\r\n" not in buf:
        try:
            chunk = s.recv(65536)
        except ConnectionResetError:
            return b"", b"", b""
        if not chunk:
            return b"", b"", b""
        buf += chunk
    head, _, rest = buf.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        k, _, v = line.partition(b":")
        if k.strip().lower() == b"content-length":
            length = int(v)
    while len(rest) < length:
        chunk = s.recv(65536)
        assert chunk, "closed in the body"
        rest += chunk
    return head, rest[:length], rest[length:]


def _requests(port, n, source="127.0.0.1"):
    """`n` keep-alive GETs on one connection: the status lines (empty once closed)."""
    out = []
    with _connect(port, source) as s:
        rest = b""
        for i in range(n):
            try:
                s.sendall(b"GET /chain/%d HTTP/1.1\r\nhost: x\r\n\r\n" % i)
            except OSError:
                out.append(b"")
                continue
            head, _, rest = _read_response(s, rest)
            out.append(head.split(b"\r\n", 1)[0])
    return out


def _closed_without_bytes(port, source, request=b"GET / HTTP/1.1\r\nhost: x\r\n\r\n"):
    with _connect(port, source) as s:
        try:
            s.sendall(request)
        except OSError:
            return True
        data = b""
        while True:
            try:
                chunk = s.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            data += chunk
        return data == b""


def _stats(px, deadline_for=None):
    """Admin /stats as a dict; with `deadline_for` ({name: value}) poll until they hold."""
    deadline = time.monotonic() + 10
    while True:
        text = urllib.request.urlopen(px.admin_url + "/stats", timeout=5).read().decode()
        stats = dict(line.split(": ", 1) for line in text.splitlines() if ": " in line)
        if not deadline_for or all(stats.get(k) == v for k, v in deadline_for.items()) \
                or time.monotonic() > deadline:
            return stats
        time.sleep(0.05)


def _delta(before, after, name):
    return int(after.get(name, "0")) - int(before.get(name, "0"))


def test_rbac_denies_source_before_http_and_allows_others(px):
    port = px.chain_ports[0]
    before = _stats(px)
    assert _requests(port, 3) == [b"HTTP/1.1 200 OK"] * 3
    assert _closed_without_bytes(port, "127.0.0.2")
    assert _requests(port, 1, "127.0.0.3") == [b"HTTP/1.1 200 OK"]
    want = int(before.get("http.rbac_http.downstream_cx_destroy", "0")) + 3
    after = _stats(px, {"http.rbac_http.downstream_cx_active": "0",
                        "http.rbac_http.downstream_cx_destroy": str(want)})
    d = lambda name: _delta(before, after, name)  # noqa: E731
    assert d("net_rbac.rbac.denied") == 1
    assert d("net_rbac.rbac.allowed") == 2
    # the denied connection was the HCM's too (made with the chain), closed locally,
    # and never reached a codec or a request
    assert d("http.rbac_http.downstream_cx_total") == 3
    assert d("http.rbac_http.downstream_cx_http1_total") == 2
    assert d("http.rbac_http.downstream_rq_total") == 4
    assert d("http.rbac_http.downstream_cx_destroy_local") == 1
    assert d("http.rbac_http.downstream_cx_destroy_remote") == 2


def test_rbac_denies_before_any_http_is_parsed(px):
    """A denied source's bytes never reach the codec: garbage that the HCM would answer
    with a 400 gets nothing but the close."""
    port = px.chain_ports[0]
    before = _stats(px).get("http.rbac_http.downstream_cx_protocol_error", "0")
    assert _closed_without_bytes(port, "127.0.0.2", b"NOT HTTP AT ALL\r\n\r\n")
    after = _stats(px, {"http.rbac_http.downstream_cx_active": "0"})
    assert after.get("http.rbac_http.downstream_cx_protocol_error", "0") == before


def test_local_ratelimit_token_per_connection(px):
    port = px.chain_ports[1]
    # two tokens: two connections, each serving several requests
    assert _requests(port, 3) == [b"HTTP/1.1 200 OK"] * 3
    assert _requests(port, 2) == [b"HTTP/1.1 200 OK"] * 2
    assert _closed_without_bytes(port, "127.0.0.1")
    stats = _stats(px, {"http.nlrl_http.downstream_cx_active": "0",
                        "http.nlrl_http.downstream_cx_destroy": "3"})
    assert stats["local_rate_limit.nlrl_http.rate_limited"] == "1"
    assert stats["http.nlrl_http.downstream_rq_total"] == "5"
    assert stats["http.nlrl_http.downstream_cx_total"] == "3"
    assert stats["http.nlrl_http.downstream_cx_destroy_local"] == "1"


def test_rbac_then_local_ratelimit_then_hcm(px):
    port = px.chain_ports[2]
    # RBAC decides on the first bytes; the rate limit took its token at connection open,
    # before them: a denied connection spends the one token too (as in Envoy)
    assert _closed_without_bytes(port, "127.0.0.2")
    assert _closed_without_bytes(port, "127.0.0.1")
    stats = _stats(px, {"http.both_http.downstream_cx_active": "0",
                        "http.both_http.downstream_cx_destroy": "2"})
    assert stats["both_rbac.rbac.denied"] == "1"
    assert stats["local_rate_limit.both_rl.rate_limited"] == "1"
    assert stats.get("http.both_http.downstream_rq_total", "0") == "0"


def test_rbac_before_tcp_proxy_still_works(px):
    port = px.chain_ports[3]
    with _connect(port) as s:
        s.sendall(b"GET /tcp HTTP/1.1\r\nhost: x\r\n\r\n")
        head, _, _ = _read_response(s)
    assert head.startswith(b"HTTP/1.1 200")
    assert _closed_without_bytes(port, "127.0.0.2")
    stats = _stats(px, {"tcp_rbac.rbac.denied": "1"})
    assert stats["tcp_rbac.rbac.denied"] == "1"
    assert stats["tcp_rbac.rbac.allowed"] == "1"


def _nghttp(*args):
    return subprocess.run(["nghttp", "-v", "-n", "-t", "10", *args],
                          capture_output=True, text=True, timeout=30)


def test_h2c_behind_rbac(px):
    """HTTP/2 prior knowledge through the chain: the codec AUTO sniff reads through it,
    two requests share one connection; a denied source gets nothing."""
    port = px.chain_ports[0]
    before = _stats(px)
    url = "http://127.0.0.1:%d/h2" % port
    r = _nghttp(url, url + "?second")
    assert r.returncode == 0 and r.stdout.count(":status: 200") == 2, r
    denied = subprocess.run(["curl", "-s", "--max-time", "10", "--http2-prior-knowledge",
                             "--interface", "127.0.0.2", url],
                            capture_output=True, text=True, timeout=30)
    assert denied.returncode != 0 and denied.stdout == ""
    n = lambda s, k: int(s.get(k, "0"))  # noqa: E731
    after = _stats(px, {"http.rbac_http.downstream_cx_active": "0"})
    assert n(after, "http.rbac_http.downstream_cx_http2_total") - \
        n(before, "http.rbac_http.downstream_cx_http2_total") == 1
    assert n(after, "http.rbac_http.downstream_rq_http2_total") - \
        n(before, "http.rbac_http.downstream_rq_http2_total") == 2
    assert n(after, "net_rbac.rbac.denied") - n(before, "net_rbac.rbac.denied") == 1


def test_reset_before_any_byte_is_a_remote_close(px):
    """A client that resets the connection before sending anything: the HCM counts a
    remote close, and the worker logs no filter failure."""
    import struct
    port = px.chain_ports[0]
    before = _stats(px)
    s = _connect(port)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()                                 # RST
    want = int(before.get("http.rbac_http.downstream_cx_destroy", "0")) + 1
    after = _stats(px, {"http.rbac_http.downstream_cx_destroy": str(want)})
    assert _delta(before, after, "http.rbac_http.downstream_cx_destroy_remote") == 1
    assert _delta(before, after, "http.rbac_http.downstream_cx_destroy_local") == 0
    assert "network_filter_failed" not in px.log()

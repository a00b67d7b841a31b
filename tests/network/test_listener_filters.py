"""proxy_protocol, http_inspector and original_dst listener filters, through a proxyd
process with real senders: HAProxy (`send-proxy` / `send-proxy-v2` with a unique-id
TLV), curl (`--haproxy-protocol`, `--http2-prior-knowledge`), and handcrafted headers."""
from __future__ import annotations

import json
import shutil
import socket
import struct
import subprocess
import time

import pytest

from harness import free_port, kill_group, wait_port
from proxyd.listener.filters import http_inspector, proxy_protocol

PP = "type.googleapis.com/envoy.extensions.filters.listener.proxy_protocol.v3.ProxyProtocol"
HI = "type.googleapis.com/envoy.extensions.filters.listener.http_inspector.v3.HttpInspector"
OD = "type.googleapis.com/envoy.extensions.filters.listener.original_dst.v3.OriginalDst"

CONFIG = """
admin: {address: {socket_address: {address: 127.0.0.1, port_value: %(admin)d}}}
static_resources:
  clusters:
  - name: upstream
    connect_timeout: 1s
    load_assignment:
      cluster_name: upstream
      endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address:
        {address: 127.0.0.1, port_value: %(upstream)d}}}}]}]
  listeners:
  - name: tcp
    address: {socket_address: {address: 127.0.0.1, port_value: %(tcp)d}}
    listener_filters:
    - name: od
      typed_config: {"@type": "%(od)s"}
    - name: pp
      typed_config:
        "@type": %(pp)s
        rules: [{tlv_type: 5, on_tlv_present: {key: uid, metadata_namespace: hap}}]
    filter_chains:
    - filters:
      - name: tcp
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: tcp
          cluster: upstream
          access_log:
          - name: f
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
              path: %(dir)s/tcp.log
              log_format: {json_format: {remote: "%%DOWNSTREAM_REMOTE_ADDRESS%%",
                direct: "%%DOWNSTREAM_DIRECT_REMOTE_ADDRESS%%", local: "%%DOWNSTREAM_LOCAL_ADDRESS%%",
                uid: "%%DYNAMIC_METADATA(hap:uid)%%"}}
  - name: http
    address: {socket_address: {address: 127.0.0.1, port_value: %(http)d}}
    listener_filters:
    - name: pp
      typed_config: {"@type": "%(pp)s", allow_requests_without_proxy_protocol: true, stat_prefix: al}
    - name: hi
      typed_config: {"@type": "%(hi)s"}
    filter_chains:
    - filter_chain_match: {application_protocols: [h2c]}
      filters:
      - name: hcm
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: h2
          codec_type: HTTP2
          route_config:
            virtual_hosts: [{name: vh, domains: ["*"], routes: [{match: {prefix: /},
              direct_response: {status: 200, body: {inline_string: "h2c chain"}}}]}]
          http_filters: [{name: r, typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}]
    - filter_chain_match: {application_protocols: [http/1.0, http/1.1]}
      filters:
      - name: hcm
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: h1
          use_remote_address: true
          route_config:
            virtual_hosts: [{name: vh, domains: ["*"], routes: [{match: {prefix: /}, route: {cluster: upstream}}]}]
          http_filters:
          - name: rbac
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC
              rules:
                action: DENY
                policies:
                  banned: {permissions: [{any: true}], principals: [{remote_ip: {address_prefix: 6.6.6.6, prefix_len: 32}}]}
          - name: r
            typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}
    - filters:
      - name: echo
        typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.network.echo.v3.Echo}
"""

REQ = b"GET /pp HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n"


def v2_header(src, dst, sport, dport, tlvs=b"", cmd=0x21):
    body = socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack("!HH", sport, dport) + tlvs
    return proxy_protocol.V2_SIGNATURE + bytes([cmd, 0x11]) + struct.pack("!H", len(body)) + body


def exchange(port, data, timeout=3.0):
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    out = b""
    try:
        s.sendall(data)
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            out += chunk
    except ConnectionResetError:
        out += b"<reset>"
    except socket.timeout:
        out += b"<timeout>"
    finally:
        s.close()
    return out


def stats(px) -> dict:
    s = socket.create_connection(("127.0.0.1", px.admin_port), timeout=5)
    s.sendall(b"GET /stats HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
    data = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    s.close()
    body = data.split(b"\r\n\r\n", 1)[1].decode()
    return dict(ln.split(": ", 1) for ln in body.splitlines() if ": " in ln)


def log_lines(path, n, deadline=10.0):
    end = time.monotonic() + deadline
    while True:
        lines = path.read_text().splitlines() if path.exists() else []
        if len(lines) >= n or time.monotonic() > end:
            return [json.loads(x) for x in lines]
        time.sleep(0.05)


@pytest.fixture
def px(proxyd_factory, upstream, tmp_path):
    ports = {"admin": free_port(), "tcp": free_port(), "http": free_port()}
    cfg = CONFIG % dict(ports, upstream=upstream.port, dir=tmp_path, pp=PP, hi=HI, od=OD)
    p = proxyd_factory(cfg)
    p.ports_by_name = ports
    p.dir = tmp_path
    return p


def test_parser_units():
    h = proxy_protocol.parse(b"PROXY TCP6 ::1 2001:db8::2 1 2\r\nrest")
    assert (h.length, h.version, h.src, h.dst) == (32, 1, ("::1", 1), ("2001:db8::2", 2))
    assert proxy_protocol.parse(b"PROX") is proxy_protocol._NEED_MORE
    assert proxy_protocol.parse(b"GET / HTTP/1.1\r\n") is None
    with pytest.raises(proxy_protocol.ProxyProtocolError):
        proxy_protocol.parse(b"PROXY TCP4 ::1 1.2.3.4 1 2\r\n")
    assert http_inspector.inspect(b"GET /x HT") is http_inspector._NEED_MORE
    assert http_inspector.inspect(b"POST /x HTTP/1.0\r\n") == "http/1.0"
    assert http_inspector.inspect(b"hello world\r\n") is None


@pytest.mark.skipif(shutil.which("haproxy") is None, reason="haproxy is not installed")
@pytest.mark.parametrize("mode", ["send-proxy", "send-proxy-v2"])
def test_haproxy_sends_the_client_address(px, tmp_path, mode):
    front = free_port()
    cfg = tmp_path / ("haproxy-%s.cfg" % mode)
    cfg.write_text(f"""
global
    log stderr format raw local0 emerg
defaults
    mode tcp
    timeout connect 2s
    timeout client 10s
    timeout server 10s
frontend f
    bind 127.0.0.1:{front}
    unique-id-format req-%rt
    default_backend b
backend b
    server s 127.0.0.1:{px.ports_by_name['tcp']} {mode} proxy-v2-options unique-id
""")
    proc = subprocess.Popen(["haproxy", "-f", str(cfg), "-db"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_port(front)
        c = socket.create_connection(("127.0.0.1", front), timeout=5)
        client = "127.0.0.1:%d" % c.getsockname()[1]
        c.sendall(REQ)
        data = b""
        while True:
            chunk = c.recv(65536)
            if not chunk:
                break
            data += chunk
        c.close()
        assert data.startswith(b"HTTP/1.1 200")
    finally:
        kill_group(proc)
    # (wait_port's own connection through haproxy is logged too)
    end = time.monotonic() + 10
    while True:
        entries = [e for e in log_lines(tmp_path / "tcp.log", 1) if e["remote"] == client]
        if entries or time.monotonic() > end:
            break
        time.sleep(0.05)
    assert entries, "no access-log entry has the client's address"      # not haproxy's
    entry = entries[0]
    assert entry["direct"] != client                      # haproxy's own connection
    assert entry["local"] == "127.0.0.1:%d" % front       # the address haproxy served
    if mode == "send-proxy-v2":
        assert entry["uid"].startswith("req-")            # the TLV (PP2_TYPE_UNIQUE_ID)
    else:
        assert entry["uid"] is None
    version = "v2" if mode.endswith("v2") else "v1"
    assert int(stats(px)["proxy_proto.versions.%s.found" % version]) >= 1


def test_curl_haproxy_protocol_and_http_inspector(px):
    port = px.ports_by_name["http"]
    out = subprocess.run(["curl", "-s", "--haproxy-protocol", "http://127.0.0.1:%d/a" % port],
                         capture_output=True, timeout=20)
    assert json.loads(out.stdout)["path"] == "/a"
    out = subprocess.run(["curl", "-s", "--http2-prior-knowledge", "http://127.0.0.1:%d/" % port],
                         capture_output=True, timeout=20)
    assert out.stdout == b"h2c chain"
    assert exchange(port, b"hello\r\n", timeout=1.0) == b"hello\r\n<timeout>"   # echo chain
    s = stats(px)
    assert s["proxy_proto.al.versions.v1.found"] == "1"
    assert s["proxy_proto.al.not_found_allowed"] == "2"
    assert (s["http_inspector.http11_found"], s["http_inspector.http2_found"],
            s["http_inspector.http_not_found"]) == ("1", "1", "1")


def test_header_address_is_the_remote_address_for_xff_and_rbac(px):
    port = px.ports_by_name["http"]
    r = exchange(port, b"PROXY TCP4 1.2.3.4 5.6.7.8 1111 2222\r\n" + REQ)
    body = json.loads(r.split(b"\r\n\r\n", 1)[1])
    assert dict(body["headers"])["x-forwarded-for"] == "1.2.3.4"
    r = exchange(port, b"PROXY TCP4 6.6.6.6 5.6.7.8 1111 2222\r\n" + REQ)
    assert r.startswith(b"HTTP/1.1 403")


def test_rejections_close_and_count(px):
    port = px.ports_by_name["tcp"]
    assert exchange(port, REQ) in (b"", b"<reset>")
    assert exchange(port, b"PROXY TCP4 1.2.3.4 x 1 2\r\n" + REQ) in (b"", b"<reset>")
    good = exchange(port, v2_header("9.8.7.6", "5.4.3.2", 3333, 4444, cmd=0x20) + REQ)
    assert good.startswith(b"HTTP/1.1 200")               # LOCAL: addresses unchanged
    s = stats(px)
    assert s["proxy_proto.not_found_disallowed"] == "1"
    assert s["proxy_proto.versions.v1.error"] == "1"
    assert s["downstream_cx_proxy_proto_error"] == "2"     # both (as Envoy counts)
    assert s["proxy_proto.versions.v2.found"] == "1"
    # rejected connections never became connections (as Envoy counts)
    assert s["listener.127.0.0.1_%d.downstream_cx_total" % port] == "1"
    entry = log_lines(px.dir / "tcp.log", 1)[-1]
    assert entry["remote"] == entry["direct"]

"""proxy_protocol and http_inspector listener filters side by side with real Envoy 1.40:
the same answers (or resets) for v1, v2, LOCAL, UNKNOWN, missing and malformed headers,
the addresses and TLV metadata access logs see, the filter chain http_inspector picks,
and the same stats."""
from __future__ import annotations

import re
import socket
import struct
import time

TEMPLATE = """
admin: {address: {socket_address: {address: 127.0.0.1, port_value: $admin}}}
static_resources:
  clusters:
  - name: upstream
    connect_timeout: 1s
    load_assignment:
      cluster_name: upstream
      endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address:
        {address: 127.0.0.1, port_value: $upstream}}}}]}]
  listeners:
  - name: tcp
    address: {socket_address: {address: 127.0.0.1, port_value: $listener}}
    listener_filters:
    - name: pp
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.filters.listener.proxy_protocol.v3.ProxyProtocol
        rules: [{tlv_type: 0xE0, on_tlv_present: {key: foo, metadata_namespace: ns}}]
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
              path: $dir/tcp.log
              log_format: {text_format_source: {inline_string: "%DOWNSTREAM_REMOTE_ADDRESS% %DOWNSTREAM_DIRECT_REMOTE_ADDRESS_WITHOUT_PORT% %DOWNSTREAM_LOCAL_ADDRESS% %DYNAMIC_METADATA(ns:foo)%\\n"}}
  - name: allow
    address: {socket_address: {address: 127.0.0.1, port_value: $other}}
    listener_filters:
    - name: pp
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.filters.listener.proxy_protocol.v3.ProxyProtocol
        allow_requests_without_proxy_protocol: true
        disallowed_versions: [V2]
        stat_prefix: al
    - name: hi
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.filters.listener.http_inspector.v3.HttpInspector
    filter_chains:
    - filter_chain_match: {application_protocols: [h2c]}
      filters:
      - name: hcm
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: h2
          codec_type: HTTP2
          route_config:
            virtual_hosts: [{name: vh, domains: ["*"], routes: [{match: {prefix: /}, direct_response: {status: 200, body: {inline_string: h2c}}}]}]
          http_filters: [{name: r, typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}]
    - filter_chain_match: {application_protocols: [http/1.1]}
      filters:
      - name: hcm
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: h1
          access_log:
          - name: f
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
              path: $dir/http.log
              log_format: {text_format_source: {inline_string: "%PROTOCOL% %DOWNSTREAM_REMOTE_ADDRESS% %DOWNSTREAM_LOCAL_ADDRESS%\\n"}}
          route_config:
            virtual_hosts: [{name: vh, domains: ["*"], routes: [{match: {prefix: /}, direct_response: {status: 200, body: {inline_string: h1}}}]}]
          http_filters: [{name: r, typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}]
    - filters:
      - name: echo
        typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.network.echo.v3.Echo}
"""

REQ = b"GET /x HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n"
H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def v2(src, dst, sport, dport, tlvs=b"", cmd=0x21, fam=0x11):
    body = socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack("!HH", sport, dport) + tlvs
    return b"\r\n\r\n\x00\r\nQUIT\n" + bytes([cmd, fam]) + struct.pack("!H", len(body)) + body


TCP_CASES = [
    ("v1", b"PROXY TCP4 1.2.3.4 5.6.7.8 1111 2222\r\n" + REQ),
    ("v1-tcp6", b"PROXY TCP6 2001:db8::1 2001:db8::2 1111 2222\r\n" + REQ),
    ("v2-tlv", v2("9.8.7.6", "5.4.3.2", 3333, 4444, tlvs=b"\xe0\x00\x03abc\xe1\x00\x01z") + REQ),
    ("v2-local", v2("9.8.7.6", "5.4.3.2", 3333, 4444, cmd=0x20) + REQ),
    ("v1-unknown", b"PROXY UNKNOWN\r\n" + REQ),
    ("v2-unix", b"\r\n\r\n\x00\r\nQUIT\n\x21\x31\x00\xd8" + b"\x00" * 216 + REQ),
    ("v2-unspec", b"\r\n\r\n\x00\r\nQUIT\n\x21\x00\x00\x00" + REQ),
    ("none", REQ),
    ("bad-v1", b"PROXY TCP4 1.2.3.4 x 1 2\r\n" + REQ),
    ("bad-v1-family", b"PROXY TCP4 ::1 ::2 1 2\r\n" + REQ),
    ("bad-v2-version", b"\r\n\r\n\x00\r\nQUIT\n\x99\x11\x00\x0c" + b"x" * 12 + REQ),
    ("bad-v2-short", v2("1.1.1.1", "2.2.2.2", 1, 2)[:14] + b"\x00\x04abcd" + REQ),
]
ALLOW_CASES = [
    ("h1", REQ),
    ("v1-h1", b"PROXY TCP4 1.2.3.4 5.6.7.8 1111 2222\r\n" + REQ),
    ("h2c", H2_PREFACE + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"),
    ("echo", b"hello world\r\n"),
    ("v2-disallowed", v2("9.8.7.6", "5.4.3.2", 3333, 4444) + REQ),
]


def _exchange(port, data, timeout=1.5):
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    out = b""
    try:
        s.sendall(data)
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            out += chunk
    except (ConnectionResetError, BrokenPipeError):
        out += b"<closed>"
    except socket.timeout:
        out += b"<open>"
    finally:
        s.close()
    if out in (b"", b"<closed>"):
        return "closed"
    head = out.split(b"\r\n", 1)[0]
    if head.startswith(b"HTTP/"):
        return head.decode()
    if out.startswith(b"\x00"):             # an HTTP/2 frame (the server's SETTINGS)
        return "h2 frames"
    return out.decode("latin-1")


def _lines(side, name, n):
    deadline = time.monotonic() + 8        # Envoy flushes access logs every second
    while True:
        lines = side.read(name).splitlines()
        if len(lines) >= n or time.monotonic() > deadline:
            return lines


def _stats(side):
    text = side.admin("/stats").body.decode()
    out = {}
    for ln in text.splitlines():
        k, _, v = ln.partition(": ")
        if k.startswith(("proxy_proto.", "http_inspector.", "downstream_cx_proxy_proto_error")):
            out[k] = v
        for name in ("listener", "other"):
            prefix = "listener.127.0.0.1_%d." % side.ports[name]
            if k.startswith(prefix) and k.endswith(("downstream_cx_total", "no_filter_chain_match")) \
                    and ".worker_" not in k:
                out["listener.%s.%s" % (name, k[len(prefix):])] = v
    return out


def test_listener_filters_match_envoy(pair_factory):
    pair = pair_factory(TEMPLATE)

    def run(side):
        tcp = [(name, _exchange(side.ports["listener"], data)) for name, data in TCP_CASES]
        allow = [(name, _exchange(side.ports["other"], data)) for name, data in ALLOW_CASES]
        return tcp, allow

    envoy, proxyd = pair.both(run)
    assert [r for _, r in envoy[0]][:5] == ["HTTP/1.1 200 X"] * 5   # the upstream's reason
    assert proxyd == envoy

    def logs(side):
        # the ephemeral ports of unchanged addresses differ between the sides
        local = "127.0.0.1:%d" % side.ports["listener"]
        tcp = [re.sub(r"^127\.0\.0\.1:\d+ ", "peer ", ln).replace(local, "listener")
               for ln in _lines(side, "tcp.log", 5)]
        http = [re.sub(r"127\.0\.0\.1:\d+", "addr", ln) for ln in _lines(side, "http.log", 2)]
        return sorted(tcp), sorted(http)

    envoy_logs, proxyd_logs = pair.both(logs)
    assert "9.8.7.6:3333 127.0.0.1 5.4.3.2:4444 abc" in envoy_logs[0]
    assert proxyd_logs == envoy_logs
    envoy_stats, proxyd_stats = pair.both(_stats)
    assert envoy_stats["proxy_proto.versions.v2.found"] == "2"
    assert proxyd_stats == envoy_stats

"""TLS config errors from `proxyd check`, certificates re-read by a hot restart, and HTTP
to a TLS upstream through the router."""
from __future__ import annotations

import http.server
import json
import shutil
import socket
import ssl
import threading
import time

import pytest
import yaml

from certs import CA, cn_of
from harness import bootstrap, cluster, free_port, listener, route, run_cli, write_config
from test_downstream_tls import chain, direct, handshake, tls_listener
from tlsutil import UPSTREAM_TLS, downstream_tls, stats


def check_errors(tmp_path, config) -> list[str]:
    path = write_config(tmp_path, config)
    r = run_cli("check", "-c", path)
    assert r.returncode == 1, r.stdout
    return [line for line in r.stderr.splitlines() if line.startswith(str(path))]


def line_of(text: str, needle: str, nth: int = 0) -> int:
    return [i for i, line in enumerate(text.splitlines(), 1) if needle in line][nth]


def test_unreadable_and_mismatched_files_are_located_errors(pki, tmp_path):
    cfg = bootstrap([tls_listener(free_port(), [
        chain(direct("a"), downstream_tls((str(tmp_path / "missing.crt"), pki.a[1])),
              server_names=["a.example.com"]),
        chain(direct("b"), downstream_tls((pki.a[0], pki.wild[1])))])])
    text = yaml.safe_dump(cfg, sort_keys=False)
    errors = check_errors(tmp_path, text)
    assert len(errors) == 2, errors
    missing, mismatch = errors
    assert missing.startswith("%s:%d:" % (tmp_path / "proxyd.yaml", line_of(text, "missing.crt")))
    assert missing.endswith("common_tls_context.tls_certificates[0].certificate_chain.filename: "
                            "cannot read '%s': No such file or directory" % (tmp_path / "missing.crt"))
    assert "filter_chains[1].transport_socket.typed_config.common_tls_context.tls_certificates[0]: " \
           "the private key does not match the certificate" in mismatch


def test_unreadable_key_and_bad_ca(pki, tmp_path):
    unreadable = tmp_path / "garbage.key"
    unreadable.write_text("not a key\n")
    cfg = bootstrap([tls_listener(free_port(), [
        chain(direct("a"), downstream_tls((pki.a[0], str(unreadable)), ca=pki.a[1]))],
        inspector=False)])
    errors = check_errors(tmp_path, cfg)
    assert any("tls_certificates[0]: certificate_chain or private_key is not valid PEM" in e
               for e in errors), errors


def test_cluster_tls_errors(pki, tmp_path):
    bad_ca = {"name": "envoy.transport_sockets.tls", "typed_config": {
        "@type": UPSTREAM_TLS,
        "common_tls_context": {"validation_context": {"trusted_ca": {"filename": pki.a[1]}}}}}
    wrong_kind = downstream_tls(pki.a)
    cfg = bootstrap([listener(free_port())],
                    [cluster("upstream", [("127.0.0.1", 1)], transport_socket=bad_ca),
                     cluster("other", [("127.0.0.1", 1)], transport_socket=wrong_kind)])
    errors = check_errors(tmp_path, cfg)
    assert any("clusters[0].transport_socket.typed_config.common_tls_context.validation_context"
               ".trusted_ca: trusted_ca holds no usable CA certificate" in e for e in errors), errors
    assert any("clusters[1].transport_socket.typed_config: a cluster needs UpstreamTlsContext, "
               "not DownstreamTlsContext" in e for e in errors), errors


def test_filter_chain_match_errors(pki, tmp_path):
    cfg = bootstrap([tls_listener(free_port(), [
        chain(direct("a"), downstream_tls(pki.a), server_names=["a.example.com"]),
        chain(direct("b"), downstream_tls(pki.a), server_names=["a.example.com"]),
        chain(direct("c"), downstream_tls(pki.a), server_names=["a.*.com"])], inspector=False)])
    errors = check_errors(tmp_path, cfg)
    text = "\n".join(errors)
    assert "filter_chains[1].filter_chain_match: multiple filter chains with the same matching " \
           "rules are defined (filter_chains[0] has the same filter_chain_match)" in text
    assert "filter_chains[2].filter_chain_match.server_names[0]: invalid server name 'a.*.com'" in text
    assert "needs the envoy.filters.listener.tls_inspector listener filter" in text


def test_run_refuses_bad_certificate(pki, tmp_path, proxyd_factory):
    from harness import ProxydError
    cfg = bootstrap([tls_listener(free_port(), [
        chain(direct("a"), downstream_tls((pki.a[0], pki.wild[1])))], inspector=False)])
    with pytest.raises(ProxydError, match="the private key does not match the certificate"):
        proxyd_factory(cfg)


def test_hot_restart_reads_new_certificate_files(pki, tmp_path, proxyd_factory):
    crt, key = tmp_path / "live.crt", tmp_path / "live.key"
    shutil.copy(pki.a[0], crt)
    shutil.copy(pki.a[1], key)
    port = free_port()
    px = proxyd_factory(bootstrap([tls_listener(
        port, [chain(direct("x"), downstream_tls((str(crt), str(key))))], inspector=False)]))
    assert cn_of(handshake(port)[0]) == "a.example.com"
    shutil.copy(pki.dflt[0], crt)
    shutil.copy(pki.dflt[1], key)
    # running workers keep what they loaded with their config
    assert cn_of(handshake(port)[0]) == "a.example.com"
    r = run_cli("reload", "--runtime-dir", px.runtime_dir, timeout=60)
    assert r.returncode == 0, r.stderr + r.stdout
    deadline = time.monotonic() + 20
    while True:
        try:
            if cn_of(handshake(port)[0]) == "default.test":
                break
        except OSError:
            pass
        assert time.monotonic() < deadline, "the new master still serves the old certificate"
        time.sleep(0.1)


class _TlsHttpUpstream:
    """A TLS HTTP/1.1 server in a thread that echoes the SNI it saw."""

    def __init__(self, cert, key, alpn=("http/1.1",)):
        sni = self.sni = []

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self):
                body = json.dumps({"path": self.path, "sni": sni[-1] if sni else None,
                                   "alpn": self.connection.selected_alpn_protocol()}).encode()
                self.send_response(200)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *a):
                pass

        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert, key)
        ctx.set_alpn_protocols(list(alpn))
        ctx.sni_callback = lambda s, name, c: sni.append(name)
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.socket = ctx.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


def _upstream_tls(ca=None, sni="upstream.test", alpn=()):
    common = {}
    if ca:
        common["validation_context"] = {"trusted_ca": {"filename": ca}}
    if alpn:
        common["alpn_protocols"] = list(alpn)
    return {"name": "envoy.transport_sockets.tls",
            "typed_config": {"@type": UPSTREAM_TLS, "sni": sni, "common_tls_context": common}}


def _get(port, path="/"):
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"GET %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" % path.encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


def test_http_to_tls_upstream(pki, proxyd_factory):
    up = _TlsHttpUpstream(*pki.up)
    try:
        port, port_bad = free_port(), free_port()
        other_ca = CA(pki.dir, "unrelated CA")
        px = proxyd_factory(bootstrap(
            [listener(port),
             listener(port_bad, name="bad", stat_prefix="bad", routes=[route(cluster="bad")])],
            [cluster("upstream", [("127.0.0.1", up.port)],
                     transport_socket=_upstream_tls(pki.ca_path, alpn=["http/1.1"])),
             cluster("bad", [("127.0.0.1", up.port)],
                     transport_socket=_upstream_tls(str(other_ca.cert_path)))]))
        status, body = _get(port, "/over/tls")
        assert status == 200, body
        echo = json.loads(body)
        assert echo == {"path": "/over/tls", "sni": "upstream.test", "alpn": "http/1.1"}
        status, _ = _get(port_bad)  # the upstream's certificate is not signed by this CA
        assert status == 503
        s = stats(px)
        assert s["cluster.upstream.ssl.handshake"] >= 1
        assert s["cluster.bad.ssl.connection_error"] >= 1
    finally:
        up.stop()

"""Downstream TLS end to end: curl and Python ssl clients against a real proxyd."""
from __future__ import annotations

import json
import shutil
import socket
import ssl
import subprocess

import pytest

from certs import cn_of
from tlsutil import TLS_INSPECTOR, downstream_tls, stats, wait_stat
from harness import bootstrap, cluster, free_port, hcm, route, virtual_host

pytestmark = pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")


def direct(body: str) -> dict:
    return hcm(virtual_hosts=[virtual_host([{"match": {"prefix": "/"},
                                              "direct_response": {"status": 200,
                                                                  "body": {"inline_string": body}}}])])


def chain(typed_hcm, tls=None, **match) -> dict:
    fc = {"filters": [{"name": "envoy.filters.network.http_connection_manager",
                       "typed_config": typed_hcm}]}
    if tls:
        fc["transport_socket"] = tls
    if match:
        fc["filter_chain_match"] = match
    return fc


def tls_listener(port, chains, inspector=True) -> dict:
    lst = {"name": "tls", "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
           "filter_chains": chains}
    if inspector:
        lst["listener_filters"] = [TLS_INSPECTOR]
    return lst


def curl(*args, timeout=10):
    return subprocess.run(["curl", "-sS", "--max-time", str(timeout), *args],
                          capture_output=True, text=True, timeout=timeout + 5)


def handshake(port, server_name=None, alpn=None, ca=None, cert=None):
    """(peer cert DER, selected ALPN, HTTP/1.1 response text) from a Python ssl client."""
    ctx = ssl.create_default_context(cafile=ca) if ca else ssl._create_unverified_context()
    if not ca:
        ctx.check_hostname = False
    if alpn:
        ctx.set_alpn_protocols(alpn)
    if cert:
        ctx.load_cert_chain(*cert)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with ctx.wrap_socket(raw, server_hostname=server_name) as s:
            der = s.getpeercert(binary_form=True)
            proto = s.selected_alpn_protocol()
            s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            data = b""
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
    return der, proto, data.decode("latin-1")


def test_https_http11_through_hcm(pki, upstream, proxyd_factory):
    port = free_port()
    px = proxyd_factory(bootstrap(
        [tls_listener(port, [chain(hcm(), downstream_tls(pki.a, alpn=["http/1.1"]))], inspector=False)],
        [cluster("upstream", [("127.0.0.1", upstream.port)])]))
    r = curl("--cacert", pki.ca_path, "--resolve", "a.example.com:%d:127.0.0.1" % port,
             "-H", "X-Test: 1", "--data-binary", "hello body",
             "https://a.example.com:%d/echo/path?q=1" % port)
    assert r.returncode == 0, r.stderr
    echo = json.loads(r.stdout)
    assert echo["path"] == "/echo/path?q=1"
    assert echo["body_len"] == len("hello body")
    # keep-alive over TLS: two requests on one connection
    r = curl("--cacert", pki.ca_path, "--resolve", "a.example.com:%d:127.0.0.1" % port,
             "https://a.example.com:%d/one" % port, "https://a.example.com:%d/two" % port)
    assert r.returncode == 0, r.stderr
    s = stats(px)
    assert s["listener.127.0.0.1_%d.ssl.handshake" % port] == 2
    assert s["listener.127.0.0.1_%d.ssl.no_certificate" % port] == 2


def test_alpn_h2_negotiated(pki, proxyd_factory):
    """ALPN h2 is offered by the chain and chosen by the handshake (the HCM then speaks h2)."""
    port = free_port()
    proxyd_factory(bootstrap([tls_listener(
        port, [chain(direct("ok"), downstream_tls(pki.a, alpn=["h2", "http/1.1"]))])]))
    _der, proto, _ = handshake(port, "a.example.com", alpn=["h2", "http/1.1"])
    assert proto == "h2"
    _der, proto, resp = handshake(port, "a.example.com", alpn=["http/1.1"])
    assert proto == "http/1.1" and resp.startswith("HTTP/1.1 200") and resp.endswith("ok")


def test_curl_http2_over_tls(pki, proxyd_factory):
    port = free_port()
    proxyd_factory(bootstrap([tls_listener(
        port, [chain(direct("over h2"), downstream_tls(pki.a, alpn=["h2", "http/1.1"]))])]))
    r = curl("--http2", "-w", "\n%{http_version}", "--cacert", pki.ca_path,
             "--resolve", "a.example.com:%d:127.0.0.1" % port, "https://a.example.com:%d/" % port)
    assert r.returncode == 0, r.stderr
    assert r.stdout == "over h2\n2", r.stdout


def test_sni_selects_chain(pki, proxyd_factory):
    port = free_port()
    proxyd_factory(bootstrap([tls_listener(port, [
        chain(direct("chain-a"), downstream_tls(pki.a), server_names=["a.example.com"]),
        chain(direct("chain-wild"), downstream_tls(pki.wild), server_names=["*.wild.example.com"]),
        chain(direct("chain-default"), downstream_tls(pki.dflt)),
    ])]))
    for host, body, cn in (("a.example.com", "chain-a", "a.example.com"),
                           ("x.wild.example.com", "chain-wild", "*.wild.example.com"),
                           ("deep.x.wild.example.com", "chain-wild", "*.wild.example.com"),
                           ("other.test", "chain-default", "default.test")):
        der, _, resp = handshake(port, host)
        assert cn_of(der) == cn and resp.endswith(body), host
    # curl verifies the certificate it gets against the name it asked for
    r = curl("--cacert", pki.ca_path, "--resolve", "a.example.com:%d:127.0.0.1" % port,
             "https://a.example.com:%d/" % port)
    assert r.returncode == 0 and r.stdout == "chain-a", r.stderr
    r = curl("--cacert", pki.ca_path, "--resolve", "b.wild.example.com:%d:127.0.0.1" % port,
             "https://b.wild.example.com:%d/" % port)
    assert r.returncode == 0 and r.stdout == "chain-wild", r.stderr
    der, _, resp = handshake(port, None)  # no SNI at all
    assert cn_of(der) == "default.test"


def test_alpn_and_transport_protocol_select_chain(pki, proxyd_factory):
    """transport_protocol is matched before application_protocols (Envoy's order)."""
    port = free_port()
    px = proxyd_factory(bootstrap([tls_listener(port, [
        chain(direct("custom-alpn"), downstream_tls(pki.a, alpn=["x-custom"]),
              transport_protocol="tls", application_protocols=["x-custom"]),
        chain(direct("tls-any"), downstream_tls(pki.a), transport_protocol="tls"),
        chain(direct("plain"), transport_protocol="raw_buffer"),
    ])]))
    assert handshake(port, "a.example.com", alpn=["x-custom"])[2].endswith("custom-alpn")
    assert handshake(port, "a.example.com", alpn=["http/1.1"])[2].endswith("tls-any")
    assert handshake(port, "a.example.com")[2].endswith("tls-any")
    r = curl("http://127.0.0.1:%d/" % port)
    assert r.returncode == 0 and r.stdout == "plain", r.stderr
    assert stats(px)["listener.127.0.0.1_%d.ssl.handshake" % port] == 3


def test_no_matching_chain_closes(pki, proxyd_factory):
    port = free_port()
    px = proxyd_factory(bootstrap([tls_listener(port, [
        chain(direct("a"), downstream_tls(pki.a), server_names=["a.example.com"])])]))
    with pytest.raises((ssl.SSLError, OSError)):
        handshake(port, "nope.example.com")
    assert wait_stat(px, "listener.127.0.0.1_%d.no_filter_chain_match" % port, 1) == 1


def test_client_certificate_required(pki, proxyd_factory):
    port = free_port()
    px = proxyd_factory(bootstrap([tls_listener(port, [
        chain(direct("authenticated"), downstream_tls(pki.a, ca=pki.ca_path, require_client=True))],
        inspector=False)]))
    base = ["--cacert", pki.ca_path, "--resolve", "a.example.com:%d:127.0.0.1" % port,
            "https://a.example.com:%d/" % port]
    r = curl(*base)
    assert r.returncode != 0 and r.stdout == ""
    r = curl("--cert", pki.client[0], "--key", pki.client[1], *base)
    assert r.returncode == 0 and r.stdout == "authenticated", r.stderr
    # a certificate from another CA is refused too
    from certs import CA
    other = CA(pki.dir, "other CA").issue("stranger", [], client=True)
    r = curl("--cert", str(other[0]), "--key", str(other[1]), *base)
    assert r.returncode != 0
    p = "listener.127.0.0.1_%d.ssl." % port
    assert wait_stat(px, p + "connection_error", 2) == 2
    assert stats(px)[p + "handshake"] == 1


def test_tls_versions(pki, proxyd_factory):
    port = free_port()
    proxyd_factory(bootstrap([tls_listener(port, [
        chain(direct("v13"), downstream_tls(pki.a, tls_minimum_protocol_version="TLSv1_3"))],
        inspector=False)]))
    r = curl("--tlsv1.2", "--tls-max", "1.2", "-k", "https://127.0.0.1:%d/" % port)
    assert r.returncode != 0
    r = curl("--tlsv1.3", "-k", "https://127.0.0.1:%d/" % port)
    assert r.returncode == 0 and r.stdout == "v13", r.stderr


def test_handshake_timeout(pki, proxyd_factory):
    """A client that connects and never says hello is closed after the handshake timeout."""
    port = free_port()
    lst = tls_listener(port, [chain(direct("x"), downstream_tls(pki.a))], inspector=False)
    lst["filter_chains"][0]["transport_socket_connect_timeout"] = "0.3s"
    px = proxyd_factory(bootstrap([lst]))
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        assert s.recv(1) == b""
    assert wait_stat(px, "listener.127.0.0.1_%d.ssl.connection_error" % port, 1) == 1


NET_RBAC_DENY_NOTHING = {
    "name": "envoy.filters.network.rbac", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.rbac.v3.RBAC",
        "stat_prefix": "tls_rbac",
        "rules": {"action": "DENY", "policies": {"bad_source": {
            "permissions": [{"any": True}],
            "principals": [{"direct_remote_ip": {"address_prefix": "127.0.0.2",
                                                 "prefix_len": 32}}]}}}}}


def test_https_h1_and_h2_behind_network_rbac(pki, upstream, proxyd_factory):
    """TLS under a chain with a network filter in front of the HCM: the chain reads the
    decrypted bytes; ALPN still picks the codec; keep-alive works on both."""
    port = free_port()
    fc = chain(hcm(), downstream_tls(pki.a, alpn=["h2", "http/1.1"]))
    fc["filters"].insert(0, NET_RBAC_DENY_NOTHING)
    px = proxyd_factory(bootstrap([tls_listener(port, [fc], inspector=False)],
                                  [cluster("upstream", [("127.0.0.1", upstream.port)])]))
    base = "https://a.example.com:%d" % port
    common = ("--cacert", pki.ca_path, "--resolve", "a.example.com:%d:127.0.0.1" % port,
              "-o", "/dev/null", "-w", "%{http_code} %{http_version}\n")
    r = curl("--http1.1", *common, base + "/one", "-o", "/dev/null", base + "/two")
    assert r.returncode == 0 and r.stdout == "200 1.1\n200 1.1\n", (r.stdout, r.stderr)
    r = curl("--http2", *common, base + "/h2")
    assert r.returncode == 0 and r.stdout == "200 2\n", (r.stdout, r.stderr)
    r = curl("--http1.1", "--interface", "127.0.0.2", *common, base + "/denied")
    assert r.returncode != 0
    assert wait_stat(px, "tls_rbac.rbac.denied", 1) == 1
    s = stats(px)
    assert s["tls_rbac.rbac.allowed"] == 2
    assert s["http.ingress_http.downstream_cx_http1_total"] == 1
    assert s["http.ingress_http.downstream_cx_http2_total"] == 1
    assert s["http.ingress_http.downstream_rq_total"] == 3

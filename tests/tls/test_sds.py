"""SDS secrets from the bootstrap (static_resources.secrets) and from a watched file
(sds_config.path_config_source), proxyd beside real Envoy on the same bootstrap: the
certificate served, rotation (new connections get the new certificate, an open keep-alive
connection goes on undrained), a bad secret rejected with the old one kept, Envoy's
`sds.<name>.*` and `server_ssl_socket_factory.*` stats, and the errors `proxyd check`
shares with Envoy."""
from __future__ import annotations

import http.client
import json
import os
import ssl
import time
import urllib.request

import pytest

import real_envoy
from certs import cn_of
from harness import Proxyd, free_port, run_cli, write_config

SECRET = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"
DOWNSTREAM_TLS = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext"


def _tls_listener(name, port, sds_ref):
    hcm = {"@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager."
                    "v3.HttpConnectionManager",
           "stat_prefix": name,
           "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {
               "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}],
           "route_config": {"virtual_hosts": [{"name": "v", "domains": ["*"], "routes": [
               {"match": {"prefix": "/"},
                "direct_response": {"status": 200, "body": {"inline_string": name}}}]}]}}
    return {"name": name,
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
            "filter_chains": [{
                "transport_socket": {"name": "envoy.transport_sockets.tls", "typed_config": {
                    "@type": DOWNSTREAM_TLS,
                    "common_tls_context": {"tls_certificate_sds_secret_configs": [sds_ref]}}},
                "filters": [{"name": "envoy.filters.network.http_connection_manager",
                             "typed_config": hcm}]}]}


def secret(name, cert_key) -> dict:
    return {"name": name, "tls_certificate": {"certificate_chain": {"filename": str(cert_key[0])},
                                              "private_key": {"filename": str(cert_key[1])}}}


def write_secret_file(path, name, cert_key=None, bad=False) -> None:
    """Atomically replace the watched SDS file (a rename onto it, as Envoy watches)."""
    s = secret(name, cert_key) if cert_key else {"name": name}
    if bad:
        s["tls_certificate"] = {"certificate_chain": {"inline_string": "not a certificate"},
                                "private_key": {"inline_string": "not a key"}}
    s["@type"] = SECRET
    tmp = str(path) + ".tmp"
    with open(tmp, "w") as f:
        json.dump({"resources": [s]}, f)
    os.replace(tmp, path)


def config(pki, sds_file, admin, ports) -> dict:
    src = {"path_config_source": {"path": str(sds_file)}, "resource_api_version": "V3"}
    return {"node": {"id": "n1", "cluster": "c1"},
            "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin}}},
            "static_resources": {
                "secrets": [secret("staticcert", pki.a)],
                "listeners": [_tls_listener("filesds", ports[0], {"name": "filecert", "sds_config": src}),
                              _tls_listener("static", ports[1], {"name": "staticcert"})]}}


def connect(port) -> http.client.HTTPSConnection:
    ctx = ssl._create_unverified_context()
    conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=5, context=ctx)
    conn.connect()
    return conn


def get(conn) -> tuple[int, bytes, str | None]:
    conn.request("GET", "/")
    r = conn.getresponse()
    return r.status, r.read(), r.getheader("connection")


def served_cn(port) -> str:
    conn = connect(port)
    try:
        return cn_of(conn.sock.getpeercert(binary_form=True))
    finally:
        conn.close()


def wait(pred, timeout=20.0, what="condition"):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = pred()
            if last:
                return last
        except OSError as e:
            last = e
        time.sleep(0.05)
    raise AssertionError("timed out waiting for %s (last: %r)" % (what, last))


def sds_stats(admin, port) -> dict:
    """sds.filecert.* counters and the file listener's ssl socket factory counters, with
    the listener address taken out so proxyd's and Envoy's compare."""
    st = real_envoy.admin_stats(admin)
    out = {k: v for k, v in st.items() if k.startswith("sds.filecert.") and
           not k.endswith(("update_time", ".version"))}
    p = "listener.127.0.0.1_%d.server_ssl_socket_factory." % port
    out.update({"listener." + k[len(p):]: v for k, v in st.items() if k.startswith(p)})
    return out


@pytest.fixture
def pair(pki, tmp_path):
    """(proxyd, envoy or None) each on its own copy of the same bootstrap and SDS file."""
    if real_envoy.unusable_reason():
        pytest.skip(real_envoy.unusable_reason())
    pki.b = pki.ca.issue("b", ["b.example.com"])
    nodes = {}
    for kind in ("proxyd", "envoy"):
        d = tmp_path / kind
        d.mkdir()
        sds_file = d / "sds.json"
        write_secret_file(sds_file, "filecert", pki.dflt)
        admin, ports = free_port(), [free_port(), free_port()]
        cfg = config(pki, sds_file, admin, ports)
        nodes[kind] = {"admin": admin, "ports": ports, "sds": sds_file, "dir": d, "cfg": cfg}
    px = Proxyd(write_config(nodes["proxyd"]["dir"], nodes["proxyd"]["cfg"]), concurrency=2)
    env = real_envoy.Envoy.of(nodes["envoy"]["cfg"], nodes["envoy"]["dir"], nodes["envoy"]["admin"])
    try:
        px.start()
        env.start(timeout=30)
        nodes["proxyd"]["proc"], nodes["envoy"]["proc"] = px, env
        yield nodes
    finally:
        px.cleanup()
        env.cleanup()


def test_static_and_file_secrets_rotate_like_envoy(pair, pki):
    for kind, n in pair.items():
        assert served_cn(n["ports"][0]) == "default.test", kind
        assert served_cn(n["ports"][1]) == "a.example.com", kind
    first = {k: sds_stats(n["admin"], n["ports"][0]) for k, n in pair.items()}
    assert first["proxyd"] == first["envoy"]
    assert first["proxyd"]["sds.filecert.update_success"] == 1
    assert first["proxyd"]["listener.ssl_context_update_by_sds"] == 1
    # an open keep-alive connection across the rotation
    held = {k: connect(n["ports"][0]) for k, n in pair.items()}
    for kind, conn in held.items():
        assert get(conn)[:2] == (200, b"filesds"), kind
    for n in pair.values():
        write_secret_file(n["sds"], "filecert", pki.b)
    for kind, n in pair.items():
        wait(lambda: served_cn(n["ports"][0]) == "b.example.com", what="%s rotated" % kind)
        status, body, connection = get(held[kind])
        assert (status, body) == (200, b"filesds") and connection != "close", (kind, connection)
        assert cn_of(held[kind].sock.getpeercert(binary_form=True)) == "default.test"
        assert served_cn(n["ports"][1]) == "a.example.com", kind
    second = {k: sds_stats(n["admin"], n["ports"][0]) for k, n in pair.items()}
    assert second["proxyd"] == second["envoy"], second
    assert second["proxyd"]["listener.ssl_context_update_by_sds"] == 2
    # a secret that does not load is rejected; the last good one keeps serving
    for n in pair.values():
        write_secret_file(n["sds"], "filecert", bad=True)
    for kind, n in pair.items():
        wait(lambda: real_envoy.admin_stats(n["admin"])["sds.filecert.update_rejected"] == 1,
             what="%s rejected the bad secret" % kind)
        assert served_cn(n["ports"][0]) == "b.example.com", kind
        status, body, connection = get(held[kind])
        assert (status, body) == (200, b"filesds") and connection != "close", kind
    third = {k: sds_stats(n["admin"], n["ports"][0]) for k, n in pair.items()}
    assert third["proxyd"] == third["envoy"]
    for conn in held.values():
        conn.close()


def test_config_dump_shows_secrets_redacted(pair):
    dumps = {}
    for kind, n in pair.items():
        with urllib.request.urlopen("http://127.0.0.1:%d/config_dump" % n["admin"], timeout=5) as r:
            dump = json.load(r)
        dumps[kind] = [c for c in dump["configs"] if c["@type"].endswith("SecretsConfigDump")][0]
    for kind, d in dumps.items():
        static = d["static_secrets"][0]
        assert static["name"] == "staticcert", kind
        assert static["secret"]["tls_certificate"]["private_key"] == {"filename": "[redacted]"}, kind
        active = d["dynamic_active_secrets"][0]
        assert active["name"] == "filecert" and "last_updated" in active, kind
        key = active["secret"]["tls_certificate"]["private_key"]
        assert key == {"inline_bytes": "W3JlZGFjdGVkXQ=="}, (kind, key)   # "[redacted]"
    # the files the secret names are shown read, as Envoy shows them
    assert dumps["proxyd"]["dynamic_active_secrets"][0]["secret"] == \
        dumps["envoy"]["dynamic_active_secrets"][0]["secret"]


def check_errors(tmp_path, cfg) -> list[str]:
    r = run_cli("check", "-c", str(write_config(tmp_path, cfg)))
    assert r.returncode != 0
    return r.stdout.splitlines() + r.stderr.splitlines()


def test_unknown_static_secret_and_missing_node_are_config_errors(pki, tmp_path):
    if real_envoy.unusable_reason():
        pytest.skip(real_envoy.unusable_reason())
    sds_file = tmp_path / "sds.json"
    write_secret_file(sds_file, "filecert", pki.dflt)
    cfg = config(pki, sds_file, free_port(), [free_port(), free_port()])
    cfg["static_resources"]["listeners"][1]["filter_chains"][0]["transport_socket"][
        "typed_config"]["common_tls_context"]["tls_certificate_sds_secret_configs"][0]["name"] = "nosuch"
    errors = check_errors(tmp_path, cfg)
    assert any("Unknown static secret: nosuch" in e for e in errors), errors
    env = real_envoy.validate(write_config(tmp_path, cfg, "envoy.yaml"))
    assert "Unknown static secret: nosuch" in env.stdout + env.stderr
    cfg = config(pki, sds_file, free_port(), [free_port(), free_port()])
    del cfg["node"]
    errors = check_errors(tmp_path, cfg)
    needle = "TlsCertificateSdsApi: node 'id' and 'cluster' are required"
    assert any(needle in e for e in errors), errors
    env = real_envoy.validate(write_config(tmp_path, cfg, "envoy.yaml"))
    assert needle in env.stdout + env.stderr


def test_secret_that_never_comes_refuses_handshakes_like_envoy(pki, tmp_path):
    """sds_config over gRPC to a control plane that is not there, initial_fetch_timeout 1 s:
    the server goes LIVE without the secret, and each handshake on the listener is refused
    and counted as downstream_context_secrets_not_ready, as Envoy does."""
    if real_envoy.unusable_reason():
        pytest.skip(real_envoy.unusable_reason())
    from harness import closed_port
    src = {"api_config_source": {"api_type": "GRPC", "transport_api_version": "V3",
                                 "grpc_services": [{"envoy_grpc": {"cluster_name": "sds"}}]},
           "resource_api_version": "V3", "initial_fetch_timeout": "1s"}
    nodes = {}
    for kind in ("proxyd", "envoy"):
        admin, port = free_port(), free_port()
        cfg = {"node": {"id": "n1", "cluster": "c1"},
               "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin}}},
               "static_resources": {
                   "listeners": [_tls_listener("nosecret", port, {"name": "never", "sds_config": src})],
                   "clusters": [{
                       "name": "sds", "type": "STATIC", "connect_timeout": "1s",
                       "typed_extension_protocol_options": {
                           "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                               "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3."
                                        "HttpProtocolOptions",
                               "explicit_http_config": {"http2_protocol_options": {}}}},
                       "load_assignment": {"cluster_name": "sds", "endpoints": [{"lb_endpoints": [
                           {"endpoint": {"address": {"socket_address": {
                               "address": "127.0.0.1", "port_value": closed_port()}}}}]}]}}]}}
        d = tmp_path / kind
        d.mkdir()
        nodes[kind] = {"admin": admin, "port": port, "dir": d, "cfg": cfg}
    px = Proxyd(write_config(nodes["proxyd"]["dir"], nodes["proxyd"]["cfg"]))
    env = real_envoy.Envoy.of(nodes["envoy"]["cfg"], nodes["envoy"]["dir"], nodes["envoy"]["admin"])
    try:
        px.start(timeout=30)
        env.start(timeout=30)
        for kind, n in nodes.items():
            for _ in range(2):
                with pytest.raises((ssl.SSLError, OSError)):
                    served_cn(n["port"])
        got = {}
        for kind, n in nodes.items():
            p = "listener.127.0.0.1_%d.server_ssl_socket_factory." % n["port"]
            wait(lambda: real_envoy.admin_stats(n["admin"]).get(
                p + "downstream_context_secrets_not_ready") == 2, what="%s not ready x2" % kind)
            st = real_envoy.admin_stats(n["admin"])
            got[kind] = {k.replace(p, "listener."): v for k, v in st.items()
                         if k.startswith((p, "sds.never.")) and
                         not k.endswith(("update_time", ".version", "update_attempt",
                                         "update_failure")) and
                         # Envoy's per-subscription gRPC mux gauges: proxyd has only the
                         # global control_plane.connected_state
                         ".control_plane." not in k}
        assert got["proxyd"] == got["envoy"], got
        assert got["proxyd"]["sds.never.init_fetch_timeout"] == 1
    finally:
        px.cleanup()
        env.cleanup()


class _TlsUpstream:
    """A TLS HTTP/1.1 server that closes each connection after its response (so every
    request through proxyd makes a new upstream handshake)."""

    def __init__(self, cert, key):
        import http.server
        import threading

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self):
                self.send_response(200)
                self.send_header("content-length", "2")
                self.send_header("connection", "close")
                self.end_headers()
                self.wfile.write(b"up")
                self.close_connection = True

            def log_message(self, *a):
                pass

        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert, key)
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.socket = ctx.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


def test_upstream_validation_context_from_sds_rotates(pki, tmp_path):
    """A cluster's UpstreamTlsContext takes its trusted CA from a watched SDS file: the
    cluster warms until it is read, a CA that does not sign the upstream's certificate
    fails new handshakes (503), the right one again succeeds; each change is one
    client_ssl_socket_factory.ssl_context_update_by_sds."""
    from certs import CA as _CA
    from harness import bootstrap, cluster, http, listener
    up = _TlsUpstream(*pki.up)
    other = _CA(tmp_path, "other CA")
    sds_file = tmp_path / "ca.json"

    def write_ca(ca_path):
        tmp = str(sds_file) + ".tmp"
        with open(tmp, "w") as f:
            json.dump({"resources": [{"@type": SECRET, "name": "upstream_ca", "validation_context": {
                "trusted_ca": {"filename": str(ca_path)}}}]}, f)
        os.replace(tmp, sds_file)

    write_ca(pki.ca_path)
    port = free_port()
    tls = {"name": "envoy.transport_sockets.tls", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
        "sni": "upstream.test",
        "common_tls_context": {"validation_context_sds_secret_config": {
            "name": "upstream_ca",
            "sds_config": {"path_config_source": {"path": str(sds_file)},
                           "resource_api_version": "V3"}}}}}
    cfg = bootstrap([listener(port)], [cluster("upstream", [("127.0.0.1", up.port)],
                                               transport_socket=tls)])
    cfg["node"] = {"id": "n1", "cluster": "c1"}
    px = Proxyd(write_config(tmp_path, cfg))
    try:
        px.start(timeout=30)
        from tlsutil import stats
        f = "cluster.upstream.client_ssl_socket_factory."
        assert http(port).status == 200
        assert stats(px)[f + "ssl_context_update_by_sds"] == 1
        write_ca(other.cert_path)
        wait(lambda: http(port).status == 503, what="unrelated CA refuses the upstream")
        s = stats(px)
        assert s[f + "ssl_context_update_by_sds"] == 2 and s["cluster.upstream.ssl.connection_error"] >= 1
        write_ca(pki.ca_path)
        wait(lambda: http(port).status == 200, what="the right CA again")
        assert stats(px)[f + "ssl_context_update_by_sds"] == 3
        assert stats(px)["sds.upstream_ca.update_success"] == 3
    finally:
        px.cleanup()
        up.stop()


def test_rotation_under_load_drops_no_handshake(pki, tmp_path):
    """Clients handshake back to back on two workers while the SDS file rotates the
    certificate five times: every handshake succeeds, and each certificate is served."""
    import threading
    sds_file = tmp_path / "sds.json"
    certs = [pki.dflt, pki.a] * 3
    write_secret_file(sds_file, "filecert", certs[0])
    cfg = config(pki, sds_file, free_port(), [free_port(), free_port()])
    port = cfg["static_resources"]["listeners"][0]["address"]["socket_address"]["port_value"]
    px = Proxyd(write_config(tmp_path, cfg), concurrency=2)
    seen, failures, stop = {}, [], threading.Event()
    lock = threading.Lock()

    def client():
        while not stop.is_set():
            try:
                conn = connect(port)
                cn = cn_of(conn.sock.getpeercert(binary_form=True))
                status = get(conn)[0]
                conn.close()
                with lock:
                    seen[cn] = seen.get(cn, 0) + 1
                if status != 200:
                    failures.append(status)
            except (OSError, ssl.SSLError, http.client.HTTPException) as e:
                failures.append(repr(e))
    try:
        px.start(timeout=30)
        threads = [threading.Thread(target=client) for _ in range(3)]
        for t in threads:
            t.start()
        for i, ck in enumerate(certs[1:], 1):
            names = {"default.test", "a.example.com"}
            want = (names - {served_cn(port)}).pop()
            write_secret_file(sds_file, "filecert", ck)
            wait(lambda: served_cn(port) == want, what="rotation %d" % i)
            before = sum(seen.values())
            wait(lambda: sum(seen.values()) > before + 20, what="handshakes after rotation %d" % i)
        stop.set()
        for t in threads:
            t.join(10)
        total = sum(seen.values())
        print("handshakes=%d failures=%d by certificate=%s" % (total, len(failures), seen))
        assert failures == [], failures[:5]
        assert set(seen) == {"default.test", "a.example.com"}
        assert stats_of(px)["sds.filecert.update_success"] == len(certs)
    finally:
        stop.set()
        px.cleanup()


def stats_of(px):
    from tlsutil import stats
    return stats(px)


def test_key_rotation_of_files_a_secret_names_like_envoy(pki, tmp_path):
    """A watched-file secret whose certificate and key are one PEM file: replacing that
    file rotates the certificate served (Envoy re-reads the files an SDS secret names);
    a replacement that does not load counts key_rotation_failed and changes nothing."""
    if real_envoy.unusable_reason():
        pytest.skip(real_envoy.unusable_reason())
    pki.b = pki.ca.issue("b", ["b.example.com"])

    def write_pem(path, cert_key=None):
        data = b"garbage\n" if cert_key is None else \
            open(cert_key[0], "rb").read() + open(cert_key[1], "rb").read()
        tmp = str(path) + ".tmp"
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)

    nodes = {}
    for kind in ("proxyd", "envoy"):
        d = tmp_path / kind
        d.mkdir()
        pem = d / "server.pem"
        write_pem(pem, pki.dflt)
        sds_file = d / "sds.json"
        write_secret_file(sds_file, "filecert", (pem, pem))
        admin, ports = free_port(), [free_port(), free_port()]
        nodes[kind] = {"admin": admin, "ports": ports, "pem": pem, "dir": d,
                       "cfg": config(pki, sds_file, admin, ports)}
    px = Proxyd(write_config(nodes["proxyd"]["dir"], nodes["proxyd"]["cfg"]), concurrency=2)
    env = real_envoy.Envoy.of(nodes["envoy"]["cfg"], nodes["envoy"]["dir"], nodes["envoy"]["admin"])
    try:
        px.start(timeout=30)
        env.start(timeout=30)
        held = {}
        for kind, n in nodes.items():
            assert served_cn(n["ports"][0]) == "default.test", kind
            held[kind] = connect(n["ports"][0])
            write_pem(n["pem"], pki.b)
        for kind, n in nodes.items():
            wait(lambda: served_cn(n["ports"][0]) == "b.example.com", what="%s rotated" % kind)
            status, body, connection = get(held[kind])
            assert (status, body) == (200, b"filesds") and connection != "close", kind
        got = {k: sds_stats(n["admin"], n["ports"][0]) for k, n in nodes.items()}
        assert got["proxyd"] == got["envoy"], got
        assert got["proxyd"]["listener.ssl_context_update_by_sds"] == 2
        for n in nodes.values():
            write_pem(n["pem"])
        for kind, n in nodes.items():
            # one per data source naming the file (certificate_chain and private_key)
            wait(lambda: real_envoy.admin_stats(n["admin"])["sds.filecert.key_rotation_failed"] == 2,
                 what="%s key_rotation_failed" % kind)
            assert served_cn(n["ports"][0]) == "b.example.com", kind
        got = {k: sds_stats(n["admin"], n["ports"][0]) for k, n in nodes.items()}
        assert got["proxyd"] == got["envoy"], got
        for conn in held.values():
            conn.close()
    finally:
        px.cleanup()
        env.cleanup()

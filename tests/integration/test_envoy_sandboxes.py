"""Envoy's example sandboxes as an operator moving from Envoy runs them: front-proxy's two
unnamed listeners, zipkin's %REQ(...)% response header, dynamic-config-fs's watched files
with a single-object `filters:`, the stats their scripts wait for, and a config the
workers cannot build (which must never leave a port that nobody serves)."""
from __future__ import annotations

import json
import re
import socket
import ssl
import subprocess
import sys
import time
import urllib.request

import pytest

import harness as H
from hot_restart import hr_helpers as HR

pytestmark = pytest.mark.timeout(90)

HCM, ROUTER = H.HCM_TYPE, H.ROUTER_TYPE
UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


def admin_get(px, path: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(px.admin_url + path, timeout=5) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def stats(px) -> dict[str, str]:
    _, body = admin_get(px, "/stats")
    return dict(line.split(": ", 1) for line in body.decode().splitlines() if ": " in line)


def front_proxy(port_a: int, port_b: int, admin: int, tls_inspector: bool = False) -> str:
    """Envoy's front-proxy layout: two listeners without names; the first echoes the
    trace id as Envoy's zipkin front proxy does."""
    inspector = f'''
    listener_filters:
    - name: envoy.filters.listener.tls_inspector
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector''' \
        if tls_inspector else ""
    return f'''\
admin:
  address: {{socket_address: {{address: 127.0.0.1, port_value: {admin}}}}}
static_resources:
  listeners:
  - address:
      socket_address: {{address: 127.0.0.1, port_value: {port_a}}}{inspector}
    traffic_direction: outbound
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": {HCM}
          codec_type: auto
          stat_prefix: ingress_http
          route_config:
            name: local_route
            virtual_hosts:
            - name: backend
              domains: ["*"]
              routes:
              - match: {{prefix: "/"}}
                direct_response: {{status: 200, body: {{inline_string: "plain"}}}}
                response_headers_to_add:
                - header: {{key: x-b3-traceid, value: "%REQ(x-b3-traceid)%"}}
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {{"@type": {ROUTER}}}
  - address:
      socket_address: {{address: 127.0.0.1, port_value: {port_b}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": {HCM}
          codec_type: auto
          stat_prefix: ingress_https
          route_config:
            virtual_hosts:
            - name: backend
              domains: ["*"]
              routes:
              - match: {{prefix: "/"}}
                direct_response: {{status: 200, body: {{inline_string: "second"}}}}
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {{"@type": {ROUTER}}}
'''


def test_two_unnamed_listeners_are_both_served(proxyd_factory):
    a, b, admin = H.free_port(), H.free_port(), H.free_port()
    px = proxyd_factory(front_proxy(a, b, admin), concurrency=2)
    ra = H.http(a, headers=[("x-b3-traceid", "80f198ee56343ba864fe8b2a57d3eff7")], timeout=5)
    rb = H.http(b, timeout=5)
    assert (ra.status, ra.body, rb.status, rb.body) == (200, b"plain", 200, b"second")
    # zipkin's front proxy: the trace id comes back through %REQ(...)%
    assert ra.header("x-b3-traceid") == "80f198ee56343ba864fe8b2a57d3eff7"
    _, body = admin_get(px, "/listeners")
    listed = [line.split("::") for line in body.decode().split()]
    assert sorted(addr for _, addr in listed) == sorted(["127.0.0.1:%d" % a, "127.0.0.1:%d" % b])
    names = [name for name, _ in listed]
    assert all(UUID.match(n) for n in names) and len(set(names)) == 2
    # the sandboxes' Docker health check greps this
    assert stats(px)["listener_manager.workers_started"] == "1"


def test_config_dump_order_is_envoys(proxyd_factory):
    a, b, admin = H.free_port(), H.free_port(), H.free_port()
    px = proxyd_factory(front_proxy(a, b, admin))
    status, body = admin_get(px, "/config_dump")
    configs = json.loads(body)["configs"]
    assert status == 200
    assert [c["@type"].rsplit(".", 1)[1] for c in configs] == [  # as Envoy 1.40 answers
        "BootstrapConfigDump", "ClustersConfigDump", "ListenersConfigDump",
        "ScopedRoutesConfigDump", "RoutesConfigDump", "SecretsConfigDump"]
    assert configs[4]["static_route_configs"][0]["route_config"]["name"] == "local_route"
    # a descriptive field is shown as Envoy shows it
    assert configs[2]["static_listeners"][0]["listener"]["traffic_direction"] == "OUTBOUND"
    _, body = admin_get(px, "/config_dump?include_eds")
    assert [c["@type"].rsplit(".", 1)[1] for c in json.loads(body)["configs"]][1:3] == [
        "ClustersConfigDump", "EndpointsConfigDump"]


def test_tls_inspector_stats(proxyd_factory):
    a, b, admin = H.free_port(), H.free_port(), H.free_port()
    px = proxyd_factory(front_proxy(a, b, admin, tls_inspector=True))
    assert H.http(a, timeout=5).status == 200           # plain text: tls_not_found
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    ctx.set_alpn_protocols(["h2", "http/1.1"])
    for server_name in ("front.example.com", None):    # sni_found, then sni_not_found
        with socket.create_connection(("127.0.0.1", a), timeout=5) as raw:
            with pytest.raises((ssl.SSLError, OSError)):  # the chain is plain text
                ctx.wrap_socket(raw, server_hostname=server_name).close()
    deadline = time.monotonic() + 10
    want = {"tls_inspector.tls_found": "2", "tls_inspector.tls_not_found": "1",
            "tls_inspector.sni_found": "1", "tls_inspector.sni_not_found": "1",
            "tls_inspector.alpn_found": "2", "tls_inspector.alpn_not_found": "0",
            "tls_inspector.client_hello_too_large": "0"}
    while True:
        got = {k: v for k, v in stats(px).items() if k in want}
        if got == want or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert got == want


# --- dynamic-config-fs -------------------------------------------------------------------
FS_BOOTSTRAP = '''\
node:
  cluster: test-cluster
  id: test-id
dynamic_resources:
  cds_config:
    path_config_source:
      path: {cds}
  lds_config:
    path_config_source:
      path: {lds}
admin:
  address:
    socket_address: {{address: 127.0.0.1, port_value: {admin}}}
'''

# Envoy's examples/dynamic-config-fs/configs/lds.yaml: `filters:` is one object.
FS_LDS = '''\
resources:
- "@type": type.googleapis.com/envoy.config.listener.v3.Listener
  name: listener_0
  address:
    socket_address:
      address: 127.0.0.1
      port_value: {port}
  filter_chains:
  - filters:
      name: envoy.http_connection_manager
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
        stat_prefix: ingress_http
        http_filters:
        - name: envoy.router
          typed_config:
            "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
        route_config:
          name: local_route
          virtual_hosts:
          - name: local_service
            domains:
            - "*"
            routes:
            - match:
                prefix: "/"
              route:
                cluster: example_proxy_cluster
'''

FS_CDS = '''\
resources:
- "@type": type.googleapis.com/envoy.config.cluster.v3.Cluster
  name: example_proxy_cluster
  type: static
  load_assignment:
    cluster_name: example_proxy_cluster
    endpoints:
    - lb_endpoints:
      - endpoint:
          address:
            socket_address:
              address: 127.0.0.1
              port_value: {upstream}
'''


def test_dynamic_config_fs(tmp_path, upstream, proxyd_factory):
    port, admin = H.free_port(), H.free_port()
    lds, cds = tmp_path / "lds.yaml", tmp_path / "cds.yaml"
    lds.write_text(FS_LDS.format(port=port))
    cds.write_text(FS_CDS.format(upstream=upstream.port))
    px = proxyd_factory(FS_BOOTSTRAP.format(lds=lds, cds=cds, admin=admin))
    r = H.http(port, path="/from-fs", timeout=5)
    assert r.status == 200 and r.json()["path"] == "/from-fs"
    # The example's verify script reads the dump; the dynamic listener carries Router.
    status, body = admin_get(px, "/config_dump")
    assert status == 200, body
    configs = json.loads(body)["configs"]
    assert [c["@type"].rsplit(".", 1)[1] for c in configs] == [
        "BootstrapConfigDump", "ClustersConfigDump", "ListenersConfigDump",
        "ScopedRoutesConfigDump", "RoutesConfigDump", "SecretsConfigDump"]
    assert configs[1]["dynamic_active_clusters"][0]["cluster"]["name"] == "example_proxy_cluster"
    (dyn,) = configs[2]["dynamic_listeners"]
    hcm = dyn["active_state"]["listener"]["filter_chains"][0]["filters"][0]["typed_config"]
    assert hcm["http_filters"][0]["typed_config"]["@type"].endswith("router.v3.Router")


# --- a config the workers cannot build ---------------------------------------------------
def unbuildable(port: int) -> dict:
    """Valid to `check`, but no worker can open the access log."""
    cfg = H.simple_config(port, routes=[{"match": {"prefix": "/"}, "direct_response": {
        "status": 200, "body": {"inline_string": "v1"}}}])
    hcm = cfg["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    hcm["access_log"] = [{"name": "envoy.access_loggers.file", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
        "path": "/proc/no/such/dir/access.log"}}]
    return cfg


def refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except ConnectionRefusedError:
        return True
    return False


def test_unbuildable_config_is_refused_at_start(tmp_path):
    port = H.free_port()
    path = H.write_config(tmp_path, unbuildable(port))
    assert H.run_cli("check", "-c", path).returncode == 0
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "proxyd", "run", "-c", str(path), "--concurrency", "2",
                        "--runtime-dir", str(tmp_path / "rt")], capture_output=True, text=True,
                       cwd=str(H.REPO), timeout=60)
    assert r.returncode == 1, r.stderr
    assert "cannot build the config: access_log[0].typed_config:" in r.stderr
    assert time.monotonic() - t0 < 30   # no respawn loop holding the port
    assert refused(port)


def test_unbuildable_config_at_reload_keeps_the_old_one(tmp_path):
    port = H.free_port()
    cfg = H.simple_config(port, routes=[{"match": {"prefix": "/"}, "direct_response": {
        "status": 200, "body": {"inline_string": "v1"}}}])
    with H.Proxyd(H.write_config(tmp_path, cfg), concurrency=2) as px:
        master = px.pid
        HR.rewrite(px, unbuildable(port))
        rl = HR.reload(px)
        assert rl.rc == 1, rl
        assert "cannot build the config" in rl.stderr + rl.stdout
        assert H.http(port, timeout=5).body == b"v1"
        assert HR.status(px)["pid"] == master

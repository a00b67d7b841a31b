"""Thrift through real Envoy 1.40 and through proxyd on the same bootstrap: the same
thrift.<prefix>.* counters and gauges, and the same cluster.<c>.thrift.* counters."""
from __future__ import annotations

import time

import pytest
from thrift.Thrift import TApplicationException

from real_envoy import Envoy, admin_stats
from harness import free_port, wait_port

from .conftest import client, thrift_bootstrap
from .test_thrift_proxy import session

ROUTES = [{"match": {"service_name": "Calc"}, "route": {"cluster": "calc", "strip_service_name": True}},
          {"match": {"method_name": "add", "invert": True}, "route": {"cluster": "calc"}}]


def exercise(calc, port, handler, transport, protocol) -> None:
    c, trans = client(calc, port, transport, protocol, service="Calc")
    try:
        session(c, calc, handler)                 # Calc:* -> the service route, stripped
    finally:
        trans.close()
    c, trans = client(calc, port, transport, protocol)
    try:
        assert c.echo("plain").endswith(":plain")
        with pytest.raises(TApplicationException) as e:
            c.add(1, 1)                           # plain "add": no route
        assert e.value.message == "no route for method 'add'"
    finally:
        trans.close()


def stats(admin: int) -> dict:
    deadline = time.monotonic() + 5
    while True:
        st = admin_stats(admin, "thrift.th.")
        if st.get("thrift.th.request_active") == 0 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    st.update({k: v for k, v in admin_stats(admin, "cluster.calc.thrift.").items()})
    return st


@pytest.mark.parametrize("transport,protocol,passthrough", [
    ("framed", "binary", False), ("header", "compact", False), ("unframed", "compact", False),
    ("framed", "compact", True), ("header", "binary", True)])
def test_stats_match_envoy(proxyd_factory, calc, thrift_server, tmp_path, transport, protocol,
                           passthrough):
    up, handler = thrift_server(transport, protocol)
    results = {}
    for side in ("envoy", "proxyd"):
        handler.fired.clear()
        handler.fired_event.clear()
        port, admin = free_port(), free_port()
        cfg = thrift_bootstrap(port, admin, ROUTES, {"calc": up}, payload_passthrough=passthrough)
        envoy = Envoy.of(cfg, tmp_path, admin).start() if side == "envoy" else None
        if envoy is None:
            proxyd_factory(cfg)
        try:
            wait_port(port)
            exercise(calc, port, handler, transport, protocol)
            results[side] = stats(admin)
        finally:
            if envoy is not None:
                envoy.cleanup()
    e, p = results["envoy"], results["proxyd"]
    assert {k: v for k, v in e.items() if k.startswith("thrift.")} == \
        {k: v for k, v in p.items() if k.startswith("thrift.")}
    assert {k: e.get(k) for k in p if k.startswith("cluster.")} == \
        {k: v for k, v in p.items() if k.startswith("cluster.")}
    assert p["thrift.th.response_error"] == 1 and p["thrift.th.route_missing"] == 1
    assert (p["thrift.th.request_passthrough"], p["thrift.th.response_passthrough"]) == \
        ((6, 5) if passthrough else (0, 0))


def test_refused_upstream_and_garbage_match_envoy(proxyd_factory, calc, tmp_path):
    """A refused upstream (INTERNAL_ERROR, connection closed) and an HTTP request sent to
    the Thrift port (a decoding error): the same thrift.th.* stats."""
    import socket
    from harness import closed_port
    results = {}
    for side in ("envoy", "proxyd"):
        port, admin = free_port(), free_port()
        cfg = thrift_bootstrap(port, admin, [{"match": {"method_name": ""}, "route": {"cluster": "calc"}}],
                               {"calc": closed_port()})
        envoy = Envoy.of(cfg, tmp_path, admin).start() if side == "envoy" else None
        if envoy is None:
            proxyd_factory(cfg)
        try:
            wait_port(port)
            c, trans = client(calc, port, "framed", "binary")
            try:
                with pytest.raises(TApplicationException) as e:
                    c.ping()
                assert e.value.type == TApplicationException.INTERNAL_ERROR
            finally:
                trans.close()
            with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                assert s.recv(100) == b""
            results[side] = stats(admin)
        finally:
            if envoy is not None:
                envoy.cleanup()
    e, p = results["envoy"], results["proxyd"]
    assert {k: v for k, v in p.items() if k.startswith("thrift.")} == \
        {k: v for k, v in e.items() if k.startswith("thrift.")}


def test_header_routes_match_envoy(proxyd_factory, calc, thrift_server, tmp_path):
    """Routes on header-transport info headers (Envoy lower-cases their keys): the same
    server answers each call through Envoy and through proxyd."""
    a, _ = thrift_server("header", "binary", "A")
    b, _ = thrift_server("header", "binary", "B")
    routes = [{"match": {"method_name": "echo", "headers": [{"name": "x-tenant", "exact_match": "gold"}]},
               "route": {"cluster": "b"}},
              {"match": {"method_name": "", "headers": [{"name": "x-region", "prefix_match": "eu-"}]},
               "route": {"cluster": "b"}},
              {"match": {"method_name": ""}, "route": {"cluster": "a"}}]
    calls = [({}, "echo"), ({b"X-Tenant": b"gold"}, "echo"), ({b"x-tenant": b"silver"}, "echo"),
             ({b"x-region": b"eu-west"}, "echo"), ({b"x-region": b"us-east"}, "echo")]
    results = {}
    for side in ("envoy", "proxyd"):
        port, admin = free_port(), free_port()
        cfg = thrift_bootstrap(port, admin, routes, {"a": a, "b": b})
        envoy = Envoy.of(cfg, tmp_path, admin).start() if side == "envoy" else None
        if envoy is None:
            proxyd_factory(cfg)
        try:
            wait_port(port)
            c, trans = client(calc, port, "header", "binary")
            got = []
            try:
                for headers, _ in calls:
                    for k, v in headers.items():
                        c._iprot.set_header(k, v)
                    got.append(c.echo("x").split(":")[0])
            finally:
                trans.close()
            results[side] = got
        finally:
            if envoy is not None:
                envoy.cleanup()
    assert results["proxyd"] == results["envoy"] == ["A", "B", "A", "B", "A"]


def test_request_mirror_policies_match_envoy(proxyd_factory, calc, thrift_server, tmp_path):
    """Every routed call is also sent to the shadow cluster, whose replies are dropped: the
    client sees only the main server, the shadow server sees the calls, and the stats
    (thrift.th.*, cluster.*.thrift.*) are Envoy's."""
    a, _ = thrift_server("framed", "binary", "A")
    shadow_port, shadow = thrift_server("framed", "binary", "S")
    routes = [{"match": {"method_name": ""}, "route": {
        "cluster": "a", "request_mirror_policies": [
            {"cluster": "shadow"},
            {"cluster": "shadow", "runtime_fraction": {"default_value": {"numerator": 0},
                                                       "runtime_key": "mirror.off"}},
            {"cluster": "shadow", "runtime_fraction": {"default_value": {"numerator": 0}}}]}}]
    results = {}
    for side in ("envoy", "proxyd"):
        shadow.fired.clear()
        shadow.fired_event.clear()
        port, admin = free_port(), free_port()
        cfg = thrift_bootstrap(port, admin, routes, {"a": a, "shadow": shadow_port})
        envoy = Envoy.of(cfg, tmp_path, admin).start() if side == "envoy" else None
        if envoy is None:
            proxyd_factory(cfg)
        try:
            wait_port(port)
            c, trans = client(calc, port, "framed", "binary")
            try:
                assert [c.echo(str(i)) for i in range(3)] == ["A:0", "A:1", "A:2"]
                assert c.add(1, 2) == 3
                c.fire("mirror me")
                assert shadow.fired_event.wait(5)
                time.sleep(0.2)
                assert shadow.fired == ["mirror me"] * 2     # no key: always; 0% under a key: never
            finally:
                trans.close()
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:        # the shadow's replies come in late
                st = stats(admin)
                st.update(admin_stats(admin, "cluster.shadow.thrift."))
                if st.get("cluster.shadow.thrift.upstream_resp_reply") == 8:
                    break
                time.sleep(0.05)
            results[side] = st
        finally:
            if envoy is not None:
                envoy.cleanup()
    e, p = results["envoy"], results["proxyd"]
    assert {k: v for k, v in p.items() if k.startswith("thrift.")} == \
        {k: v for k, v in e.items() if k.startswith("thrift.")}
    shadow_keys = {k for k in set(e) | set(p) if k.startswith("cluster.shadow.")}
    assert {k: p.get(k) for k in shadow_keys} == {k: e.get(k) for k in shadow_keys}
    assert p["cluster.shadow.thrift.upstream_rq_call"] == 8


@pytest.mark.parametrize("down,up", [(("framed", "compact"), ("unframed", "binary")),
                                     (("header", "binary"), ("framed", "compact"))])
def test_translation_to_the_upstream_protocol_matches_envoy(proxyd_factory, calc, thrift_server,
                                                            tmp_path, down, up):
    """A cluster's ThriftProtocolOptions: the client speaks one transport/protocol, the
    server another; calls (with an IDL exception and a oneway) work through both proxies
    with the same stats."""
    port_up, handler = thrift_server(*up)
    results = {}
    for side in ("envoy", "proxyd"):
        handler.fired.clear()
        handler.fired_event.clear()
        port, admin = free_port(), free_port()
        cfg = thrift_bootstrap(port, admin, ROUTES, {"calc": port_up})
        cfg["static_resources"]["clusters"][0]["typed_extension_protocol_options"] = {
            "envoy.filters.network.thrift_proxy": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network.thrift_proxy.v3."
                         "ThriftProtocolOptions",
                "transport": up[0].upper(), "protocol": up[1].upper()}}
        envoy = Envoy.of(cfg, tmp_path, admin).start() if side == "envoy" else None
        if envoy is None:
            proxyd_factory(cfg)
        try:
            wait_port(port)
            exercise(calc, port, handler, *down)
            results[side] = stats(admin)
        finally:
            if envoy is not None:
                envoy.cleanup()
    e, p = results["envoy"], results["proxyd"]
    assert {k: v for k, v in p.items() if k.startswith("thrift.")} == \
        {k: v for k, v in e.items() if k.startswith("thrift.")}
    assert {k: e.get(k) for k in p if k.startswith("cluster.")} == \
        {k: v for k, v in p.items() if k.startswith("cluster.")}


def test_max_requests_per_connection_matches_envoy(proxyd_factory, calc, thrift_server, tmp_path):
    """After max_requests_per_connection calls the connection closes (the last reply still
    arrives) and downstream_cx_max_requests counts it, through Envoy and proxyd alike."""
    from thrift.transport.TTransport import TTransportException
    up, _ = thrift_server("framed", "binary")
    results = {}
    for side in ("envoy", "proxyd"):
        port, admin = free_port(), free_port()
        cfg = thrift_bootstrap(port, admin, [{"match": {"method_name": ""}, "route": {"cluster": "calc"}}],
                               {"calc": up}, max_requests_per_connection=2)
        envoy = Envoy.of(cfg, tmp_path, admin).start() if side == "envoy" else None
        if envoy is None:
            proxyd_factory(cfg)
        try:
            wait_port(port)
            c, trans = client(calc, port, "framed", "binary")
            try:
                assert c.add(1, 1) == 2 and c.add(2, 2) == 4
                with pytest.raises((TTransportException, OSError, EOFError)):
                    c.add(3, 3)
            finally:
                trans.close()
            results[side] = stats(admin)
        finally:
            if envoy is not None:
                envoy.cleanup()
    e, p = results["envoy"], results["proxyd"]
    assert {k: v for k, v in p.items() if k.startswith("thrift.")} == \
        {k: v for k, v in e.items() if k.startswith("thrift.")}
    assert p["thrift.th.downstream_cx_max_requests"] == 1


def test_access_log_matches_envoy(proxyd_factory, calc, thrift_server, tmp_path):
    """ThriftProxy.access_log: one line per call (oneway included, a missing route too),
    with the upstream host, bytes and header-transport headers as Envoy writes them."""
    up, _ = thrift_server("header", "binary")
    fmt = ("%UPSTREAM_HOST% %UPSTREAM_CLUSTER% %RESPONSE_FLAGS% %RESPONSE_CODE% %BYTES_RECEIVED% "
           "%BYTES_SENT% %REQ(x-tenant)% %PROTOCOL% %DOWNSTREAM_LOCAL_ADDRESS%\n")
    results = {}
    for side in ("envoy", "proxyd"):
        port, admin = free_port(), free_port()
        log = tmp_path / ("%s-access.log" % side)
        cfg = thrift_bootstrap(port, admin, [{"match": {"method_name": "add", "invert": True},
                                              "route": {"cluster": "calc"}}], {"calc": up},
                               access_log=[{"name": "f", "typed_config": {
                                   "@type": "type.googleapis.com/envoy.extensions.access_loggers.file."
                                            "v3.FileAccessLog",
                                   "path": str(log), "log_format": {"text_format_source": {
                                       "inline_string": fmt}}}}])
        envoy = Envoy.of(cfg, tmp_path, admin).start() if side == "envoy" else None
        if envoy is None:
            proxyd_factory(cfg)
        try:
            wait_port(port)
            c, trans = client(calc, port, "header", "binary")
            try:
                c._iprot.set_header(b"X-Tenant", b"gold")
                assert c.echo("x").endswith(":x")
                assert c.ping() is None
                c.fire("f")
                with pytest.raises(TApplicationException):
                    c.add(1, 2)
            finally:
                trans.close()
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and not (log.exists() and
                                                        len(log.read_text().splitlines()) >= 4):
                time.sleep(0.05)
            results[side] = log.read_text().replace(str(port), "<port>").splitlines()
        finally:
            if envoy is not None:
                envoy.cleanup()
    assert results["proxyd"] == results["envoy"]
    assert len(results["proxyd"]) == 4 and results["proxyd"][0].split()[6] == "gold"

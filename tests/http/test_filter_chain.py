"""The HTTP filter chain end to end, on HTTP/1.1 and HTTP/2: a Python test filter
(filters/status_filter.py, loaded by file path) pauses, buffers, resumes from timers,
answers from both sides, raises, reads per-route config and is disabled per route; the
router answers what no route matches. Real proxyd, real upstream, real sockets."""
from __future__ import annotations

import json
import os
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from harness import bootstrap, cluster, free_port, hcm, http

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "http2"))
from h2client import H2Client  # noqa: E402

FILTER = str(Path(__file__).parent / "filters" / "status_filter.py") + ":StatusFilter"
TYPED_STRUCT = "type.googleapis.com/xds.type.v3.TypedStruct"
PYTHON = "type.googleapis.com/proxyd.filters.http.python.v1.Python"
PER_ROUTE = "type.googleapis.com/proxyd.filters.http.python.v1.PythonPerRoute"


def per_route(greeting):
    return {"status": {"@type": TYPED_STRUCT, "type_url": PER_ROUTE,
                       "value": {"config": {"greeting": greeting}}}}


def config(port, admin_port, upstream_port, log_path):
    up = lambda prefix, **kw: dict({"match": {"prefix": prefix},  # noqa: E731
                                    "route": {"cluster": "upstream"}}, **kw)
    routes = [
        up("/configured", name="configured", typed_per_filter_config=per_route("route")),
        up("/disabled", typed_per_filter_config={"status": {
            "@type": "type.googleapis.com/envoy.config.route.v3.FilterConfig", "disabled": True}}),
        {"match": {"prefix": "/rerouted"}, "direct_response": {"status": 200, "body": {
            "inline_string": "rerouted by the filter"}}},
        up("/up", name="up"),
    ]
    h = hcm(virtual_hosts=[{"name": "vh", "domains": ["*"], "routes": routes,
                            "typed_per_filter_config": per_route("vhost")}],
            stat_prefix="ingress", access_log=[{
                "name": "file", "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
                    "path": log_path, "log_format": {"text_format_source": {"inline_string":
                        "%REQ(:PATH)% %RESPONSE_CODE% %DYNAMIC_METADATA(status_filter:modes)% "
                        "%FILTER_STATE(status_filter.route:PLAIN)%\n"}}}}])
    h["http_filters"].insert(0, {"name": "status", "typed_config": {
        "@type": TYPED_STRUCT, "type_url": PYTHON,
        "value": {"module": FILTER, "stat_prefix": "status", "config": {"greeting": "filter"}}}})
    return bootstrap([{"name": "l", "address": {"socket_address": {"address": "127.0.0.1",
                                                                   "port_value": port}},
                       "filter_chains": [{"filters": [{
                           "name": "envoy.filters.network.http_connection_manager",
                           "typed_config": h}]}]}],
                     [cluster("upstream", [("127.0.0.1", upstream_port)])], admin_port)


@pytest.fixture(scope="module")
def px(upstream, tmp_path_factory):
    from harness import Proxyd, write_config
    d = tmp_path_factory.mktemp("filter_chain")
    log = str(d / "access.log")
    p = Proxyd(write_config(d, config(free_port(), free_port(), upstream.port, log)))
    p.start()
    p.access_log = log
    yield p
    p.cleanup()


class Reply:
    def __init__(self, status, headers, body):
        self.status, self.headers, self.body = status, headers, body

    def header(self, name):
        return self.headers.get(name)

    def json(self):
        return json.loads(self.body)


def call(px, proto, path, mode="", body=None, trailers=None):
    headers = [("x-mode", mode)] if mode else []
    if proto == "h1":
        r = http(px.port, "POST" if body is not None else "GET", path, headers, body)
        return Reply(r.status, dict(r.headers), r.body)
    with H2Client(px.port) as c:
        if trailers is None:
            sid = c.request("POST" if body is not None else "GET", path, headers, body)
        else:
            sid = c.request("POST", path, headers, body, end_stream=False)
            c.codec.send_headers(sid, trailers, True)
            c._flush()
        r = c.wait(sid)
        if r.reset_code is not None:
            return Reply(None, {}, b"")
        return Reply(r.status, dict(r.headers), bytes(r.body))


PROTOS = ["h1", "h2"]


@pytest.mark.parametrize("proto", PROTOS)
def test_pause_on_headers_resumes_from_a_timer(px, proto):
    t0 = time.monotonic()
    r = call(px, proto, "/up/p", "pause", body=b"paused body")
    assert r.status == 200
    assert time.monotonic() - t0 >= 0.04          # the timer held the request
    assert r.json()["body"] == "paused body"      # the body waited, then went on whole
    assert r.header("x-status-filter") == "vhost"


@pytest.mark.parametrize("proto", PROTOS)
def test_stop_all_buffers_the_body_until_resumed(px, proto):
    r = call(px, proto, "/up/s", "stop-all", body=b"x" * 5000)
    assert r.status == 200 and r.json()["body_len"] == 5000


@pytest.mark.parametrize("proto", PROTOS)
def test_buffered_body_is_changed_before_the_upstream_sees_it(px, proto):
    r = call(px, proto, "/up/b", "buffer", body=b"make me loud " * 200)
    assert r.status == 200
    assert r.json()["body"] == "MAKE ME LOUD " * 200


@pytest.mark.parametrize("proto", PROTOS)
def test_no_buffer_drops_data_and_the_filter_supplies_the_end(px, proto):
    r = call(px, proto, "/up/n", "no-buffer", body=b"secret" * 100)
    assert r.status == 200 and r.json()["body"] == "dropped"


def test_request_trailers_stopped_then_resumed_on_h2(px):
    r = call(px, "h2", "/up/t", "trailers-stop", body=b"with trailers",
             trailers=[("x-checksum", "1")])
    assert r.status == 200 and r.json()["body"] == "with trailers"


@pytest.mark.parametrize("proto", PROTOS)
def test_encoder_pause_and_buffer(px, proto):
    r = call(px, proto, "/up/e?size=40", "encode-pause")
    assert r.status == 200 and r.body == b"0123456789abcdef" * 2 + b"01234567"
    r = call(px, proto, "/up/e?size=20", "encode-buffer")
    assert r.status == 200 and r.body == (b"0123456789abcdef0123")[::-1]


@pytest.mark.parametrize("proto", PROTOS)
def test_local_reply_from_the_encoder_side(px, proto):
    r = call(px, proto, "/up/r", "encode-reply")
    assert r.status == 418 and r.body == b"teapot from the encoder"


@pytest.mark.parametrize("proto", PROTOS)
def test_local_reply_from_the_decoder_runs_the_encoder_filters(px, proto):
    r = call(px, proto, "/up/d", "reply")
    assert r.status == 403 and r.body == b"denied by the status filter"
    assert r.header("x-status-filter") == "vhost"


@pytest.mark.parametrize("proto", PROTOS)
def test_filter_answers_an_unrouted_request_and_router_answers_404(px, proto):
    r = call(px, proto, "/unrouted/x")
    assert r.status == 200 and r.body == b"answered without a route"
    r = call(px, proto, "/nothing-here")
    assert r.status == 404                           # the router's NR
    assert r.header("x-status-filter") == "filter"   # no route: the filter's own config


@pytest.mark.parametrize("proto", PROTOS)
def test_reroute_after_changing_the_path(px, proto):
    r = call(px, proto, "/up/anything", "reroute")
    assert r.status == 200 and r.body == b"rerouted by the filter"


@pytest.mark.parametrize("proto", PROTOS)
def test_per_route_config_most_specific_wins_and_disable(px, proto):
    r = call(px, proto, "/configured/x")
    assert r.header("x-status-filter") == "route" and r.header("x-status-levels") == "2"
    r = call(px, proto, "/up/x")
    assert r.header("x-status-filter") == "vhost" and r.header("x-status-levels") == "1"
    r = call(px, proto, "/disabled/x", "reply")      # the filter is not even created
    assert r.status == 200 and r.header("x-status-filter") is None


@pytest.mark.parametrize("proto", PROTOS)
def test_buffering_past_the_limit_answers_413(px, proto):
    big = b"y" * ((1 << 20) + 1000)      # past Envoy's 1 MiB per_connection_buffer_limit_bytes
    r = call(px, proto, "/up/big", "buffer", body=big)
    assert r.status == 413 and r.body == b"Payload Too Large"
    r = call(px, proto, "/up/big", "", body=big)            # streamed, not buffered: fine
    assert r.status == 200 and r.json()["body_len"] == len(big)


@pytest.mark.parametrize("proto", PROTOS)
def test_a_raising_filter_answers_500_and_the_connection_survives(px, proto):
    r = call(px, proto, "/up/x", "raise")
    assert r.status == 500
    r = call(px, proto, "/up/x", "raise-encode")
    assert r.status == 500
    assert call(px, proto, "/up/x").status == 200
    with open(px.log_path) as f:
        log = f.read()
    assert "status filter was told to raise" in log


def _stats(px) -> dict:
    out = {}
    text = urllib.request.urlopen(px.admin_url + "/stats", timeout=5).read().decode()
    for line in text.splitlines():
        name, _, value = line.partition(": ")
        out[name] = value
    return out


def test_per_filter_stats_and_access_log_fields(px):
    call(px, "h1", "/up/stats", "pause")
    stats = _stats(px)
    assert int(stats["http.ingress.python.status.requests"]) >= 1
    assert int(stats["http.ingress.python.status.paused"]) >= 1
    assert "http.ingress.python.status.errors" in stats
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        lines = Path(px.access_log).read_text().splitlines() if os.path.exists(px.access_log) else []
        if any(line.startswith("/up/stats ") for line in lines):
            break
        time.sleep(0.1)
    line = next(line for line in lines if line.startswith("/up/stats "))
    assert line == "/up/stats 200 pause up"

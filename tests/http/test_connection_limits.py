"""HCM common_http_protocol_options max_requests_per_connection and
max_connection_duration through a real proxyd: HTTP/1.1 connections end after their
last response says Connection: close (curl opens a new one and goes on), idle ones
after drain_timeout; HTTP/2 connections get the GOAWAY notice, still serve what the
client sent, then the final GOAWAY and the close; Envoy's counters, and no drain_close
(they are not listener drains)."""
from __future__ import annotations

import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from harness import Conn, bootstrap, cluster, free_port, listener

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "http2"))
from h2client import H2Client  # noqa: E402

MAX_SID = 0x7FFFFFFF


def _stats(admin_port: int) -> dict:
    txt = urllib.request.urlopen("http://127.0.0.1:%d/stats" % admin_port, timeout=5).read()
    return {k: v for k, _, v in (line.partition(": ") for line in txt.decode().splitlines())}


@pytest.fixture
def px(upstream, proxyd_factory):
    admin = free_port()
    ports = {"mrpc": free_port(), "mcd": free_port()}
    cfg = bootstrap(
        [listener(ports["mrpc"], name="mrpc", stat_prefix="mrpc", drain_timeout="0.5s",
                  common_http_protocol_options={"max_requests_per_connection": 2}),
         listener(ports["mcd"], name="mcd", stat_prefix="mcd", drain_timeout="0.5s",
                  common_http_protocol_options={"max_connection_duration": "1s"})],
        [cluster("upstream", [("127.0.0.1", upstream.port)])], admin)
    p = proxyd_factory(cfg)
    p.admin, p.ports = admin, ports
    return p


def _until_closed(h, within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while not h.closed and time.monotonic() < deadline:
        h.pump(0.2)


def test_http1_max_requests_per_connection(px):
    with Conn(px.ports["mrpc"]) as c:
        assert c.request(path="/1").header("connection") is None
        assert c.request(path="/2").header("connection") == "close"
        assert c.is_closed(5)
    st = _stats(px.admin)
    assert st["http.mrpc.downstream_cx_max_requests_reached"] == "1"
    assert st["http.mrpc.downstream_cx_drain_close"] == "0"


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl missing")
def test_curl_reconnects_after_max_requests(px):
    url = "http://127.0.0.1:%d/" % px.ports["mrpc"]
    args = ["curl", "-sS", "-w", "%{http_code}\n"]
    for _ in range(5):
        args += [url, "-o", "/dev/null"]
    out = subprocess.run(args, capture_output=True, timeout=30)
    assert out.stdout.split() == [b"200"] * 5, out
    st = _stats(px.admin)
    assert st["http.mrpc.downstream_cx_total"] == "3"   # 2 + 2 + 1 requests
    assert st["http.mrpc.downstream_cx_max_requests_reached"] == "2"


def test_http2_max_requests_per_connection(px):
    with H2Client(px.ports["mrpc"]) as h:
        assert h.get("/1").status == 200 and h.goaways == []
        assert h.get("/2").status == 200
        assert [g[:2] for g in h.goaways] == [(MAX_SID, 0)]    # the notice
        assert h.get("/3").status == 200                       # still served
        _until_closed(h)
        assert h.closed and [g[:2] for g in h.goaways] == [(MAX_SID, 0), (5, 0)]
    st = _stats(px.admin)
    assert st["http.mrpc.downstream_cx_max_requests_reached"] == "2"
    assert st["http.mrpc.downstream_cx_drain_close"] == "0"


def test_max_connection_duration(px):
    port = px.ports["mcd"]
    with Conn(port) as c:   # idle past the duration: closed after drain_timeout
        assert c.request(path="/a").status == 200
        assert c.is_closed(8)
    with Conn(port) as c:   # busy past it: this response closes the connection
        r = c.request(path="/a?delay=1.5")
        assert (r.status, r.header("connection")) == (200, "close")
        assert c.is_closed(5)
    with H2Client(port) as h:
        r = h.get("/a?delay=2")   # outlives the notice and the final GOAWAY
        assert r.status == 200 and r.reset_code is None
        _until_closed(h)
        assert h.closed and [g[:2] for g in h.goaways] == [(MAX_SID, 0), (1, 0)]
    st = _stats(px.admin)
    assert st["http.mcd.downstream_cx_max_duration_reached"] == "3"
    assert st["http.mcd.downstream_cx_idle_timeout"] == "0"
    assert st["http.mcd.downstream_cx_drain_close"] == "0"

"""A response streaming across a reload completes from the old master; new requests see
the new config; the old master leaves as soon as its last request is done."""
import threading
import time

from harness import Conn, free_port, http
from hr_helpers import STREAM_PATH, alive, config, pattern_body, reload, rewrite, wait_gone

STREAM_SIZE = 30000


def test_stream_survives_reload_and_new_config_applies(upstream_factory, proxyd_factory):
    up = upstream_factory("stream")
    port = free_port()
    px = proxyd_factory(config(port, up.port, body="v1"), concurrency=2, drain_time_s=15)
    assert http(port, path="/version").body == b"v1"
    old = px.pid

    conn = Conn(port, timeout=20)
    got = {}

    def read_stream():
        t0 = time.monotonic()
        got["resp"] = conn.read_response()
        got["seconds"] = time.monotonic() - t0
        got["done_at"] = time.monotonic()

    conn.request("GET", STREAM_PATH, read=False)
    reader = threading.Thread(target=read_stream, daemon=True)
    reader.start()
    time.sleep(0.3)

    rewrite(px, config(port, up.port, body="v2"))
    r = reload(px)
    reloaded_at = time.monotonic()
    assert r.rc == 0, r
    assert r.epoch == 1 and r.pid != old
    for _ in range(5):
        resp = http(port, path="/version")
        assert (resp.status, resp.body) == (200, b"v2")
    assert alive(old), "the old master left while its stream was in flight"

    reader.join(20)
    resp = got["resp"]
    assert resp.status == 200
    assert resp.body == pattern_body(STREAM_SIZE)
    assert got["done_at"] > reloaded_at, "the stream did not span the reload"

    # The streamed response went out as keep-alive before the drain began, so a client
    # may reuse the connection: that request is answered (old config) and then closed.
    again = conn.request("GET", "/version")
    assert (again.status, again.body) == (200, b"v1")
    assert (again.header("connection") or "").lower() == "close"
    assert conn.is_closed()
    conn.close()

    assert wait_gone(old, 5), "the old master did not exit once its last request was done"
    px.proc.wait(5)
    assert http(port, path="/version").body == b"v2"

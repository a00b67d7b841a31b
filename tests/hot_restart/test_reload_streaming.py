"""A response streaming across a reload completes from the old master; new requests see
the new config; the old master leaves as soon as its last request is done."""
import socket
import threading
import time

from harness import Conn, bootstrap, cluster, free_port, http, listener, route
from hr_helpers import alive, pattern_body, reload, rewrite, version_route, wait_gone

CHUNK = 1000
INTERVAL = 0.1
MIN_STREAM_S = 3.0


class Trickle(threading.Thread):
    """An upstream that answers one request with a chunked body, CHUNK bytes every
    INTERVAL, for at least MIN_STREAM_S and until `release` is set (so the stream
    outlasts the reload however long the machine makes it take)."""

    def __init__(self):
        super().__init__(daemon=True)
        self.lsock = socket.create_server(("127.0.0.1", 0))
        self.port = self.lsock.getsockname()[1]
        self.release = threading.Event()
        self.sent = 0
        self.finished = threading.Event()
        self.start()

    def run(self):
        conn, _ = self.lsock.accept()
        with conn:
            f = conn.makefile("rb")
            while f.readline() not in (b"\r\n", b""):
                pass
            conn.sendall(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
            t0 = time.monotonic()
            while time.monotonic() - t0 < MIN_STREAM_S or not self.release.is_set():
                data = pattern_body(self.sent + CHUNK)[self.sent:]
                conn.sendall(b"%x\r\n%s\r\n" % (len(data), data))
                self.sent += len(data)
                time.sleep(INTERVAL)
            conn.sendall(b"0\r\n\r\n")
            self.finished.set()
            f.close()
        self.lsock.close()


def _config(port, trickle_port, body):
    routes = [version_route(body), route("/stream", cluster="trickle")]
    return bootstrap([listener(port, routes=routes)],
                     [cluster("trickle", [("127.0.0.1", trickle_port)], connect_timeout="5s")])


def test_stream_survives_reload_and_new_config_applies(proxyd_factory):
    trickle = Trickle()
    port = free_port()
    px = proxyd_factory(_config(port, trickle.port, "v1"), concurrency=2, drain_time_s=30)
    assert http(port, path="/version").body == b"v1"
    old = px.pid

    conn = Conn(port, timeout=60)
    got = {}

    def read_stream():
        got["resp"] = conn.read_response()
        got["done_at"] = time.monotonic()

    conn.request("GET", "/stream", read=False)
    reader = threading.Thread(target=read_stream, daemon=True)
    reader.start()
    time.sleep(0.3)

    rewrite(px, _config(port, trickle.port, "v2"))
    r = reload(px)
    reloaded_at = time.monotonic()
    assert r.rc == 0, r
    assert r.epoch == 1 and r.pid != old
    for _ in range(5):
        resp = http(port, path="/version")
        assert (resp.status, resp.body) == (200, b"v2")
    assert alive(old), "the old master left while its stream was in flight"
    assert "resp" not in got, "the stream ended before the reload did"

    time.sleep(0.5)
    trickle.release.set()
    reader.join(30)
    resp = got["resp"]
    assert resp.status == 200
    assert trickle.finished.is_set() and trickle.sent > MIN_STREAM_S / INTERVAL * CHUNK / 2
    assert resp.body == pattern_body(trickle.sent)
    assert got["done_at"] > reloaded_at

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

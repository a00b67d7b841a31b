"""Circuit breakers: Envoy's defaults hold for every cluster, configured thresholds
override them, and the counts are shared by the worker processes."""
import re
import socket
import subprocess
import threading
import time
import urllib.request

from harness import Conn, cluster, free_port, http, simple_config

THRESHOLDS = "circuit_breakers"


def _stats(admin_port: int) -> dict:
    txt = urllib.request.urlopen("http://127.0.0.1:%d/stats" % admin_port, timeout=5).read()
    return {k: v for k, _, v in (line.partition(": ") for line in txt.decode().splitlines())}


def _config(upstream_port: int, admin: int, thresholds=None, **hcm):
    c = cluster("upstream", [("127.0.0.1", upstream_port)], connect_timeout="5s")
    if thresholds is not None:
        c[THRESHOLDS] = {"thresholds": thresholds}
    return simple_config(free_port(), clusters=[c], admin_port=admin, **hcm)


class CountingUpstream:
    """HTTP/1.1 upstream that holds each request for `delay` seconds and records how
    many connections were open at once."""

    def __init__(self, delay: float):
        self.delay = delay
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(4096)
        self.port = self.sock.getsockname()[1]
        self.lock = threading.Lock()
        self.open = self.peak = self.total = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            with self.lock:
                self.open += 1
                self.total += 1
                self.peak = max(self.peak, self.open)
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    def _serve(self, c):
        buf = b""
        try:
            while True:
                while b"\r\n\r\n" not in buf:
                    data = c.recv(65536)
                    if not data:
                        return
                    buf += data
                _, _, buf = buf.partition(b"\r\n\r\n")
                time.sleep(self.delay)
                c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        except OSError:
            pass
        finally:
            with self.lock:
                self.open -= 1
            c.close()

    def close(self):
        self.sock.close()


def test_one_http2_connection_cannot_fan_out_past_1024_upstream_connections(proxyd_factory):
    """1,500 concurrent streams on one downstream connection, no circuit_breakers
    configured: Envoy's default max_connections (1024) holds; the other requests wait
    as pending (within max_pending_requests 1024) and are all served. (The listener
    allows 2,000 concurrent streams: Envoy's default of 1,024 would itself cap them.)"""
    up = CountingUpstream(delay=1.0)
    admin = free_port()
    px = proxyd_factory(_config(up.port, admin,
                                http2_protocol_options={"max_concurrent_streams": 2000}))
    try:
        out = subprocess.run(["h2load", "-n", "1500", "-c", "1", "-m", "1500", "-t", "1",
                              px.url + "/fan-out"], capture_output=True, text=True, timeout=120)
        assert "1500 succeeded" in out.stdout, out.stdout[-2000:]
        assert re.search(r"status codes: 1500 2xx", out.stdout), out.stdout[-2000:]
        assert up.peak <= 1024, (up.total, up.peak)   # open at once: what the breaker bounds
        stats = _stats(admin)
        assert int(stats["cluster.upstream.upstream_cx_overflow"]) > 0
        assert int(stats["cluster.upstream.upstream_rq_pending_total"]) >= 1500 - 1024
        assert stats["cluster.upstream.upstream_rq_pending_overflow"] == "0"
        assert stats["cluster.upstream.upstream_rq_pending_active"] == "0"
        assert stats["cluster.upstream.circuit_breakers.default.rq_open"] == "0"
    finally:
        up.close()


def test_pending_overflow_answers_503_uo(proxyd_factory):
    """max_pending_requests 0 over HTTP/1: a request with no idle connection overflows,
    as in Envoy 1.40 (503, x-envoy-overloaded, upstream_rq_pending_overflow)."""
    up = CountingUpstream(delay=0)
    admin = free_port()
    px = proxyd_factory(_config(up.port, admin, [{"max_pending_requests": 0}],
                                access_log=[_stdout_log("%RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS%")]))
    try:
        r = http(px.port, path="/p")
        assert r.status == 503
        assert r.header("x-envoy-overloaded") == "true"
        assert r.body == b"upstream connect error or disconnect/reset before headers. reset reason: overflow"
        stats = _stats(admin)
        assert stats["cluster.upstream.upstream_rq_pending_overflow"] == "1"
        assert up.total == 0
        _wait_for(lambda: "UO upstream_reset_before_response_started{overflow}" in px.log())
    finally:
        up.close()


def _stdout_log(fmt: str) -> dict:
    return {"name": "envoy.access_loggers.stdout",
            "typed_config": {"@type": "type.googleapis.com/envoy.extensions.access_loggers."
                                      "stream.v3.StdoutAccessLog",
                             "log_format": {"text_format_source": {"inline_string": fmt + "\n"}}}}


def _wait_for(check, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not met in %.0f s" % timeout
        time.sleep(0.05)


def test_max_requests_is_shared_by_workers_and_gauges_follow(proxyd_factory):
    """max_requests 1 with two workers: while one slow request is in flight, every
    other request overflows, whichever worker takes it; rq_open and remaining_rq
    (track_remaining) follow the shared count."""
    up = CountingUpstream(delay=1.5)
    admin = free_port()
    px = proxyd_factory(_config(up.port, admin, [
        {"max_requests": 1, "track_remaining": True},
        {"priority": "HIGH", "max_connections": 7, "track_remaining": True}]), concurrency=2)
    prefix = "cluster.upstream.circuit_breakers.default."
    try:
        stats = _stats(admin)
        assert stats[prefix + "rq_open"] == "0" and stats[prefix + "remaining_rq"] == "1"
        assert stats[prefix + "remaining_cx"] == "1024"
        assert stats[prefix + "remaining_cx_pools"] == str(2 ** 64 - 1)
        assert stats["cluster.upstream.circuit_breakers.high.rq_open"] == "0"
        assert stats["cluster.upstream.circuit_breakers.high.remaining_cx"] == "7"
        slow = []
        t = threading.Thread(target=lambda: slow.append(http(px.port, path="/slow")))
        t.start()
        _wait_for(lambda: _stats(admin)[prefix + "rq_open"] == "1")
        assert _stats(admin)[prefix + "remaining_rq"] == "0"
        statuses = []
        for i in range(6):
            with Conn(px.port) as c:  # new connections: both workers take some
                statuses.append(c.request("GET", "/other/%d" % i).status)
        t.join()
        assert slow[0].status == 200
        assert statuses == [503] * 6
        stats = _stats(admin)
        assert stats["cluster.upstream.upstream_rq_active_overflow"] == "6"
        assert stats[prefix + "rq_open"] == "0" and stats[prefix + "remaining_rq"] == "1"
        assert http(px.port, path="/after").status == 200
    finally:
        up.close()


def test_max_connections_queues_requests_until_a_connection_is_free(proxyd_factory):
    """max_connections 2: eight concurrent requests share two upstream connections."""
    up = CountingUpstream(delay=0.2)
    admin = free_port()
    px = proxyd_factory(_config(up.port, admin, [{"max_connections": 2}]))
    try:
        results = []
        threads = [threading.Thread(target=lambda i=i: results.append(http(px.port, path="/q/%d" % i)))
                   for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert [r.status for r in results] == [200] * 8
        assert up.total == 2
        stats = _stats(admin)
        assert int(stats["cluster.upstream.upstream_cx_overflow"]) >= 6
        assert stats["cluster.upstream.circuit_breakers.default.cx_open"] == "1"
    finally:
        up.close()


def test_unsupported_threshold_fields_are_refused(tmp_path):
    from harness import run_cli, write_config
    path = write_config(tmp_path, _config(1, free_port(), [{"retry_budget": {"budget_percent": {"value": 20}}}]))
    out = run_cli("check", "-c", str(path))
    assert out.returncode != 0 and "retry_budget" in out.stdout + out.stderr

"""/stats?filter= is RE2 (as Envoy's admin), matched in bounded steps: a pattern that
backtracks for hours in Python's re cannot freeze the master (issue 21, item 3)."""
import threading
import time
import urllib.parse
import urllib.request

from harness import free_port, simple_config

BACKTRACKING = ["upstream_([a-z_]+)+!", "([a-z_]+)+!"]  # Python's re: 11 s, and hours


def _get(url: str, timeout: float = 10.0):
    t0 = time.monotonic()
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.status, r.read(), time.monotonic() - t0


def test_backtracking_filter_answers_fast_and_ready_stays_responsive(upstream, proxyd_factory):
    admin = free_port()
    px = proxyd_factory(simple_config(free_port(), upstream.port, admin_port=admin))
    base = "http://127.0.0.1:%d" % admin
    ready = []
    stop = threading.Event()

    def poll_ready():
        while not stop.is_set():
            try:
                status, _, took = _get(base + "/ready", timeout=5)
            except OSError:
                status, took = None, 5.0
            ready.append((status, took))
            time.sleep(0.02)

    poller = threading.Thread(target=poll_ready)
    poller.start()
    try:
        for pattern in BACKTRACKING:
            for fmt in ("text", "json", "prometheus"):
                status, body, took = _get("%s/stats?format=%s&filter=%s"
                                          % (base, fmt, urllib.parse.quote(pattern)))
                assert status == 200 and b"upstream_rq" not in body, (fmt, body[:200])
                assert took < 3.0, (pattern, fmt, took)  # milliseconds here; margin for load
        time.sleep(0.1)
    finally:
        stop.set()
        poller.join()
    assert ready and all(status == 200 for status, _ in ready), ready
    assert max(took for _, took in ready) < 1.0, ready
    # a filter that matches still works, on RE2 syntax
    status, body, _ = _get(base + "/stats?filter=" + urllib.parse.quote(r"^cluster\.upstream\.upstream_rq_total$"))
    assert body.decode().splitlines() == ["cluster.upstream.upstream_rq_total: 0"]

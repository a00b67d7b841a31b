"""100 MiB bodies streamed through proxyd in both directions while the resident memory
of the master and every worker stays small (bodies are never held whole)."""
import hashlib
import threading
import time

import pytest

from harness import Conn, free_port, process_rss, simple_config

SIZE = 100 * 1024 * 1024
PATTERN = b"0123456789abcdef"
RSS_GROWTH_LIMIT = 40 * 1024 * 1024


class RssSampler:
    """Samples the summed RSS of `pids` every 50 ms in a thread; `peak` is the max."""

    def __init__(self, pids):
        self.pids = pids
        self.peak = process_rss(pids)
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self):
        while not self._stop.wait(0.05):
            self.peak = max(self.peak, process_rss(self.pids))

    def stop(self) -> int:
        self._stop.set()
        self._t.join()
        return self.peak


@pytest.fixture
def px(upstream_factory, proxyd_factory):
    up = upstream_factory("big")
    px = proxyd_factory(simple_config(free_port(), up.port), concurrency=2)
    return px


def _pids(px):
    return [px.pid] + px.worker_pids()


@pytest.mark.timeout(120)
def test_100mib_upload_streamed(px):
    block = PATTERN * 4096  # 64 KiB
    expected = hashlib.sha256()
    for _ in range(SIZE // len(block)):
        expected.update(block)
    baseline = process_rss(_pids(px))
    sampler = RssSampler(_pids(px))
    with Conn(px.port, timeout=60) as c:
        c.send(b"POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n" % SIZE)
        for _ in range(SIZE // len(block)):
            c.send(block)
        r = c.read_response()
    peak = sampler.stop()
    echo = r.json()
    assert (r.status, echo["body_len"], echo["body_sha256"]) == (200, SIZE, expected.hexdigest())
    assert peak - baseline < RSS_GROWTH_LIMIT, "proxy RSS grew by %d MiB" % ((peak - baseline) >> 20)


@pytest.mark.timeout(120)
def test_100mib_chunked_upload_streamed(px):
    block = PATTERN * 4096
    baseline = process_rss(_pids(px))
    sampler = RssSampler(_pids(px))
    with Conn(px.port, timeout=60) as c:
        c.send(b"POST /upload HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n")
        chunk = b"%x\r\n%s\r\n" % (len(block), block)
        for _ in range(SIZE // len(block)):
            c.send(chunk)
        c.send(b"0\r\n\r\n")
        r = c.read_response()
    peak = sampler.stop()
    assert r.status == 200 and r.json()["body_len"] == SIZE
    assert peak - baseline < RSS_GROWTH_LIMIT, "proxy RSS grew by %d MiB" % ((peak - baseline) >> 20)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("chunked", [False, True])
def test_100mib_download_streamed(px, chunked):
    baseline = process_rss(_pids(px))
    sampler = RssSampler(_pids(px))
    with Conn(px.port, timeout=60) as c:
        c.send(b"GET /?size=%d%s HTTP/1.1\r\nHost: a\r\n\r\n" % (SIZE, b"&chunked=1" if chunked else b""))
        r = c.read_response()
    peak = sampler.stop()
    assert r.status == 200 and len(r.body) == SIZE
    assert r.body[:16] == PATTERN and r.body[-16:] == PATTERN
    del r
    assert peak - baseline < RSS_GROWTH_LIMIT, "proxy RSS grew by %d MiB" % ((peak - baseline) >> 20)


@pytest.mark.timeout(120)
def test_slow_reader_does_not_make_the_worker_buffer(px):
    """A client that reads a 100 MiB response slowly: the worker's RSS stays small
    while the upstream is held back by TCP flow control."""
    baseline = process_rss(_pids(px))
    sampler = RssSampler(_pids(px))
    with Conn(px.port, timeout=60) as c:
        c.sock.setsockopt(__import__("socket").SOL_SOCKET, __import__("socket").SO_RCVBUF, 65536)
        c.send(b"GET /?size=%d HTTP/1.1\r\nHost: a\r\n\r\n" % SIZE)
        time.sleep(3)  # read nothing for a while
        peak_idle = sampler.peak
        got = 0
        while got < 1024 * 1024:
            got += len(c.sock.recv(65536))
    peak = sampler.stop()
    assert peak_idle - baseline < RSS_GROWTH_LIMIT
    assert peak - baseline < RSS_GROWTH_LIMIT

"""HTTP/2 uploads to an upstream that never reads: request DATA is acknowledged only as
the upstream takes it, so a client can send no more than the windows we advertised
(Envoy 1.40's 16 MiB stream and connection windows by default) and the worker's memory
stays bounded, per stream and per connection. proxyd used to advertise 256 MiB and took
(and held) a 250 MB upload whole."""
from __future__ import annotations

import select
import socket
import threading
import time

import psutil
import pytest

from h2client import H2Client
from harness import bootstrap, cluster, free_port, listener, route, virtual_host
from proxyd.http.codec import http2 as h2c

WINDOW = 16 * 1024 * 1024


@pytest.fixture
def black_hole():
    """A TCP upstream that accepts and never reads (small receive buffers)."""
    lsock = socket.socket()
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(16)
    held = []

    def accept():
        try:
            while True:
                held.append(lsock.accept()[0])
        except OSError:
            pass
    threading.Thread(target=accept, daemon=True).start()
    yield lsock.getsockname()[1]
    lsock.close()
    for c in held:
        c.close()


def _upload(port: int, streams: int, limit: int) -> int:
    """Upload on `streams` streams of one connection until `limit` bytes are sent or
    nothing moved for 1.5 s; returns the bytes the proxy let us send."""
    codec = h2c.Http2Codec(True)
    s = socket.create_connection(("127.0.0.1", port), timeout=3)
    sids = []
    for i in range(streams):
        sid = codec.next_stream_id()
        codec.send_headers(sid, [(":method", "POST"), (":scheme", "http"), (":authority", "x"),
                                 (":path", "/blackhole/%d" % i)], False)
        sids.append(sid)
    s.sendall(codec.data_to_send())
    chunk = b"x" * 16384
    sent = 0
    try:
        while sent < limit:
            while select.select([s], [], [], 0)[0]:
                data = s.recv(65536)
                if not data:
                    return sent
                codec.receive(data)
            moved = False
            for sid in sids:
                win = min(codec.window(sid), len(chunk))
                if win > 0:
                    codec.send_data(sid, chunk[:win], False)
                    sent += win
                    moved = True
            if moved:
                s.sendall(codec.data_to_send())
            elif not select.select([s], [], [], 1.5)[0]:
                return sent
    except socket.timeout:
        return sent  # our socket buffers are full: the proxy stopped reading
    finally:
        s.close()
    return sent


def test_upload_to_an_upstream_that_never_reads_is_bounded(black_hole, upstream,
                                                           proxyd_factory):
    """One 250 MB upload, then four on one connection: each connection sends at most
    the connection window (16 MiB, plus what sits in socket buffers) and the worker
    grows by about that; a good client is served meanwhile."""
    routes = [route("/blackhole/", "blackhole"), route("/", "upstream")]
    px = proxyd_factory(bootstrap(
        [listener(free_port(), virtual_hosts=[virtual_host(routes)])],
        [cluster("blackhole", [("127.0.0.1", black_hole)]),
         cluster("upstream", [("127.0.0.1", upstream.port)])]))
    worker = psutil.Process(px.worker_pids()[0])
    for streams in (1, 4):
        rss0 = worker.memory_info().rss
        t0 = time.monotonic()
        sent = _upload(px.port, streams, 250_000_000)
        assert time.monotonic() - t0 < 20
        rss1 = worker.memory_info().rss
        assert sent < WINDOW + 16_000_000, (streams, sent)
        assert rss1 - rss0 < 40e6, (streams, rss0, rss1)
        with H2Client(px.port) as good:
            assert good.get("/good").status == 200

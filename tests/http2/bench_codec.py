"""h2 vs jh2 in proxyd's HTTP/2 codec path (server side of one request: HEADERS in,
HEADERS + 20-byte DATA out), the path every downstream HTTP/2 request takes.

    python3 tests/http2/bench_codec.py [requests]

Each implementation is loaded by re-executing proxyd/http/codec/http2.py with its
IMPL swapped, so exactly the code proxyd runs is measured. The client's bytes are made
beforehand; only the server side is timed. Prints microseconds per request (best of 5).
"""
from __future__ import annotations

import sys
import time
import types
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "proxyd" / "http" / "codec" / "http2.py"
REQ = [(":method", "GET"), (":scheme", "http"), (":authority", "127.0.0.1:10000"),
       (":path", "/small"), ("user-agent", "h2load nghttp2/1.52.0"), ("accept", "*/*"),
       ("accept-encoding", "gzip, deflate")]
RESP = [(":status", "200"), ("content-type", "text/plain"), ("content-length", "20"),
        ("date", "Thu, 26 Nov 2026 02:00:00 GMT"), ("server", "envoy"),
        ("x-envoy-upstream-service-time", "1")]


def load(impl: str):
    mod = types.ModuleType("h2codec_" + impl)
    exec(compile(SRC.read_text().replace('IMPL = "jh2"', 'IMPL = "%s"' % impl), str(SRC), "exec"),
         mod.__dict__)
    return mod


def run(m, n: int) -> float:
    client = m.Http2Codec(True)
    server = m.Http2Codec(False)
    server.receive(client.data_to_send())
    client.receive(server.data_to_send())
    chunks = []
    for _ in range(n):
        sid = client.next_stream_id()
        client.send_headers(sid, REQ, True)
        chunks.append(client.data_to_send())
    body = b"x" * 20
    t0 = time.perf_counter()
    for data in chunks:
        for ev in server.receive(data):
            if ev[0] == m.HEADERS:
                sid = ev[1]
                server.send_headers(sid, RESP, False)
                server.send_data(sid, body, True)
        server.data_to_send()
    return (time.perf_counter() - t0) / n * 1e6


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 5000
    for impl in ("h2", "jh2"):
        m = load(impl)
        best = min(run(m, n) for _ in range(5))
        print("%-4s %7.1f us/request (server side)" % (impl, best))


if __name__ == "__main__":
    main()

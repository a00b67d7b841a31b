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


sys.path.insert(0, str(SRC.parents[3]))


def load(impl: str):
    mod = types.ModuleType("h2codec_" + impl)
    src = SRC.read_text().replace('IMPL = "jh2"', 'IMPL = "%s"' % impl)
    if impl == "h2":  # jh2 vendors hyperframe; h2 uses the separate package
        src = src.replace('IMPL + ".hyperframe.frame"', '"hyperframe.frame"')
    exec(compile(src, str(SRC), "exec"), mod.__dict__)
    return mod


def run(m, n: int, batch: int = 500) -> float:
    """Server-side microseconds per request; the client opens `batch` streams at a time
    (under the server's stream limit) and reads the answers between batches."""
    client = m.Http2Codec(True)
    server = m.Http2Codec(False)
    server.receive(client.data_to_send())
    client.receive(server.data_to_send())
    body = b"x" * 20
    spent = 0.0
    for done in range(0, n, batch):
        chunks = []
        for _ in range(min(batch, n - done)):
            client.send_headers(client.next_stream_id(), REQ, True)
            chunks.append(client.data_to_send())
        t0 = time.perf_counter()
        out = []
        for data in chunks:
            for ev in server.receive(data):
                if ev[0] == m.HEADERS:
                    sid = ev[1]
                    server.send_headers(sid, RESP, False)
                    server.send_data(sid, body, True)
            out.append(server.data_to_send())
        spent += time.perf_counter() - t0
        client.receive(b"".join(out))
    return spent / n * 1e6


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 5000
    for impl in ("h2", "jh2"):
        m = load(impl)
        best = min(run(m, n) for _ in range(5))
        print("%-4s %7.1f us/request (server side)" % (impl, best))


if __name__ == "__main__":
    main()

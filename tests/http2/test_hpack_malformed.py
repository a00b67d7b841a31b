"""Malformed HPACK from a client ends that connection with GOAWAY COMPRESSION_ERROR and
nothing else: no worker dies, nothing but structured log lines reach stdout/stderr, even
with RUST_BACKTRACE=1 (jh2's Rust decoder used to panic on truncated blocks, printing a
backtrace and sometimes crashing the worker with SIGSEGV)."""
from __future__ import annotations

import json
import socket
import struct

import pytest

from harness import free_port, simple_config

from proxyd.http.codec import http2 as h2c

COMPRESSION_ERROR = 0x9
SETTINGS = b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"

# header blocks, each sent alone in HEADERS (END_STREAM|END_HEADERS) on stream 1
MALFORMED = {
    "indexed, integer cut": b"\xff",
    "indexed, continuation cut": b"\xff\x80",
    "index 0": b"\x80",
    "index past the tables": b"\xbe",
    "index after a size update to 0": b"\x20\xbe",
    "integer overflow": b"\xff\xff\xff\xff\xff\xff\xff\xff\x7f",
    "literal name index past the tables": b"\x7f\x30\x01a",
    "literal, name index cut": b"\x40\x7f",
    "literal, no name": b"\x40",
    "literal, value missing": b"\x40\x01a",
    "literal, length past the block": b"\x40\x05ab",
    "literal without indexing, cut": b"\x00\x7f",
    "never indexed, empty": b"\x10",
    "huffman length cut": b"\x40\xff",
    "huffman past the block": b"\x40\x83\xff\xff",
    "huffman EOS": b"\x40\x84\xff\xff\xff\xff\x01a",
    "table size update over the limit": b"\x3f\xe2\xff\x03",  # 65537
    "table size update cut": b"\x3f",
    "table size update after a field": b"\x82\x20",
}
ROUNDS = 15  # x 19 blocks + the original frame: 300 connections


def _headers_frame(block: bytes, sid: int = 1) -> bytes:
    return struct.pack(">I", len(block))[1:] + b"\x01\x05" + struct.pack(">I", sid) + block


def _goaways(data: bytes) -> list[int]:
    """The error codes of the GOAWAY frames in `data` (a server's frames)."""
    codes, pos = [], 0
    while pos + 9 <= len(data):
        length = int.from_bytes(data[pos:pos + 3], "big")
        if data[pos + 3] == 0x7 and pos + 9 + length <= len(data):
            codes.append(struct.unpack(">I", data[pos + 13:pos + 17])[0])
        pos += 9 + length
    return codes


def _exchange(port: int, payload: bytes) -> bytes:
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    got = b""
    try:
        s.sendall(h2c.PREFACE + SETTINGS + payload)
        while True:
            d = s.recv(65536)
            if not d:
                break
            got += d
    except ConnectionResetError:
        pass
    finally:
        s.close()
    return got


@pytest.fixture
def proxyd(upstream, proxyd_factory):
    return proxyd_factory(simple_config(free_port(), upstream.port), concurrency=2,
                          extra_args=["--log-format", "json"], env={"RUST_BACKTRACE": "1"})


def test_malformed_hpack_gets_goaway_and_no_worker_dies(proxyd):
    workers = sorted(proxyd.worker_pids())
    original = (b"\x00\x00\x04\x99\x00\x00\x00\x00\x01junk" * 2 +
                b"\x00\x00\x01\x01\x05\x00\x00\x00\x02\xff")  # test_h2_proxy's garbage
    for _ in range(ROUNDS):
        assert _goaways(_exchange(proxyd.port, original)), "no GOAWAY for the garbage frame"
        for name, block in MALFORMED.items():
            codes = _goaways(_exchange(proxyd.port, _headers_frame(block)))
            assert codes == [COMPRESSION_ERROR], (name, codes)
    assert sorted(proxyd.worker_pids()) == workers
    log = proxyd.log().splitlines()
    assert log, "no log lines at all"
    for line in log:
        json.loads(line)  # raises on anything but a structured log line (a panic, a trace)
    assert "panicked" not in proxyd.log()

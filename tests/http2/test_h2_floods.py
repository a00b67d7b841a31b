"""HTTP/2 frame floods, bounded as Envoy bounds them (proxyd/http/codec/http2_limits.py):
PINGs or SETTINGS from a client that never reads its answers, and frames that carry
nothing (empty DATA, PRIORITY, WINDOW_UPDATE). Each ends that connection with GOAWAY
ENHANCE_YOUR_CALM (or a reset, once the socket is full; Envoy aborts without one) at
Envoy's thresholds (checked against Envoy 1.40: 6 WINDOW_UPDATEs, 101 PRIORITY, 2 empty
DATA frames trip them, one fewer does not), counts Envoy's `http2.*` stat, costs bounded
memory, and leaves other clients served."""
from __future__ import annotations

import socket
import struct
import time
import urllib.request

import psutil
import pytest

from h2client import H2Client
from harness import free_port, simple_config

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
ENHANCE_YOUR_CALM = 0xB


def _frame(kind: int, flags: int, sid: int, payload: bytes = b"") -> bytes:
    return struct.pack(">I", len(payload))[1:] + bytes((kind, flags)) + struct.pack(">I", sid) \
        + payload


PING = _frame(0x6, 0, 0, b"12345678")
SETTINGS = _frame(0x4, 0, 0, b"\x00\x03\x00\x00\x00\x64")  # MAX_CONCURRENT_STREAMS 100
GET = b"\x82\x86\x84\x01\x01x"
POST = b"\x83\x86\x84\x01\x01x"
BIG_PATH = b"/?size=16000000"


def _stats(admin_port: int) -> dict:
    txt = urllib.request.urlopen("http://127.0.0.1:%d/stats" % admin_port, timeout=5).read()
    return {k: v for k, _, v in (line.partition(": ") for line in txt.decode().splitlines())}


@pytest.fixture(scope="module")
def proxy(upstream, module_proxyd_factory):
    admin = free_port()
    px = module_proxyd_factory(simple_config(free_port(), upstream.port, admin_port=admin))
    px.admin = admin
    px.worker = psutil.Process(px.worker_pids()[0])
    return px


def _counted(px, before: dict) -> dict:
    """The counters that moved since `before` (the module shares one proxyd)."""
    now = _stats(px.admin)
    return {k: int(v) - int(before.get(k, 0)) for k, v in now.items()
            if v.isdigit() and int(v) != int(before.get(k, 0))}


def _read_all(s: socket.socket, timeout: float = 5.0) -> bytes:
    s.settimeout(timeout)
    out = b""
    try:
        while d := s.recv(65536):
            out += d
    except OSError:
        pass
    return out


def _goaway_codes(data: bytes) -> list[int]:
    codes, pos = [], 0
    while pos + 9 <= len(data):
        length = int.from_bytes(data[pos:pos + 3], "big")
        if data[pos + 3] == 0x7 and pos + 9 + length <= len(data):
            codes.append(struct.unpack(">I", data[pos + 13:pos + 17])[0])
        pos += 9 + length
    return codes


@pytest.mark.parametrize("frame,what", [(PING, "PING"), (SETTINGS, "SETTINGS")],
                         ids=["ping", "settings"])
def test_control_frames_to_a_client_that_never_reads(proxy, frame, what):
    """The client asks for a 16 MB body it does not read (so the socket fills and
    the answers to its frames can only queue), then sends 40,000 PINGs (SETTINGS):
    past max_outbound_control_frames (1000) queued answers the connection ends, where
    proxyd used to read 2.7 million PINGs and queue +45 MB of answers."""
    rss0 = proxy.worker.memory_info().rss
    before = _stats(proxy.admin)
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect(("127.0.0.1", proxy.port))
    s.sendall(PREFACE + _frame(0x4, 0, 0, b"\x00\x04\x7f\xff\xff\xff")  # stream window 2^31-1
              + _frame(0x8, 0, 0, struct.pack(">I", 0x7FFFFFFF - 65535))
              + _frame(0x1, 0x5, 1, b"\x82\x86\x04" + bytes((len(BIG_PATH),)) + BIG_PATH
                       + b"\x01\x01x"))
    time.sleep(1.0)  # the body fills the socket buffers
    sent = 0
    s.settimeout(5)
    with H2Client(proxy.port) as good:
        try:
            for _ in range(40):
                s.sendall(frame * 1000)
                sent += 1000
        except OSError:
            pass  # reset by the proxy: what we want
        assert good.get("/good").status == 200
    s.close()
    moved = _counted(proxy, before)
    assert moved.get("http2.outbound_control_flood") == 1, (what, sent, moved)
    assert "http.ingress_http.downstream_cx_protocol_error" not in moved
    assert proxy.worker.memory_info().rss < rss0 + 20e6


@pytest.mark.parametrize("frames,stat", [
    # a POST, then DATA frames with nothing in them and no END_STREAM
    (_frame(0x1, 0x4, 1, POST) + _frame(0x0, 0, 1) * 2, "inbound_empty_frames_flood"),
    # PRIORITY frames: over 100 x (1 + streams opened)
    (_frame(0x2, 0, 3, b"\x00\x00\x00\x00\x10") * 101, "inbound_priority_frames_flood"),
    # WINDOW_UPDATE frames: over 5 + 2 x (streams + 10 x DATA frames sent)
    (_frame(0x8, 0, 0, b"\x00\x00\x00\x01") * 6, "inbound_window_update_frames_flood"),
], ids=["empty", "priority", "window_update"])
def test_inbound_frames_that_carry_nothing(proxy, frames, stat):
    before = _stats(proxy.admin)
    s = socket.create_connection(("127.0.0.1", proxy.port), timeout=5)
    s.sendall(PREFACE + _frame(0x4, 0, 0) + frames)
    got = _read_all(s)
    s.close()
    assert _goaway_codes(got) == [ENHANCE_YOUR_CALM]
    moved = _counted(proxy, before)
    assert moved.get("http2." + stat) == 1, moved
    assert "http.ingress_http.downstream_cx_protocol_error" not in moved  # as Envoy
    with H2Client(proxy.port) as good:
        assert good.get("/good").status == 200


def test_ordinary_traffic_stays_under_the_limits(proxy):
    """Requests with bodies, PINGs answered and WINDOW_UPDATEs for received DATA, on one
    connection: none of the limits trips."""
    before = _stats(proxy.admin)
    with H2Client(proxy.port) as c:
        for i in range(300):
            if i % 3 == 0:
                c.codec.ping(b"%08d" % i)
            r = c.wait(c.request("POST", "/p%d?size=100000" % i, body=b"x" * 1000))
            assert r.status == 200 and len(r.body) == 100000
        assert c.goaway is None and not c.closed
    assert [k for k in _counted(proxy, before) if k.endswith("flood")] == []

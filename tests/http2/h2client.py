"""A small blocking HTTP/2 (h2c prior knowledge) client for tests, on proxyd's own
sans-IO codec: several streams on one connection, explicit control over
flow-control acknowledgements, resets, and a view of every event received."""
from __future__ import annotations

import socket
import time

from proxyd.http.codec import http2 as h2c


class Response:
    def __init__(self):
        self.headers: list = []
        self.status = 0
        self.body = bytearray()
        self.trailers: list = []
        self.ended = False
        self.reset_code = None
        self.end_time = None

    def header(self, name, default=None):
        for k, v in self.headers:
            if k == name:
                return v
        return default


class H2Client:
    def __init__(self, port: int, host: str = "127.0.0.1", timeout: float = 10.0,
                 window: int | None = None, auto_ack: bool = True):
        opts = h2c.Http2Options()
        opts.initial_stream_window_size = window or 65535
        opts.initial_connection_window_size = window or 65535
        self.codec = h2c.Http2Codec(True, opts)
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.responses: dict[int, Response] = {}
        self.goaway = None      # the last GOAWAY: (last_stream_id, error_code)
        self.goaways: list = []  # every GOAWAY, with the time it arrived
        self.closed = False
        self.auto_ack = auto_ack
        self.unacked: dict[int, int] = {}
        self.authority = "%s:%d" % (host, port)
        self._flush()

    def _flush(self) -> None:
        data = self.codec.data_to_send()
        if data:
            self.sock.sendall(data)

    def request(self, method="GET", path="/", headers=(), body: bytes | None = None,
                end_stream: bool = True) -> int:
        sid = self.codec.next_stream_id()
        h = [(":method", method), (":scheme", "http"), (":authority", self.authority),
             (":path", path)] + list(headers)
        self.responses[sid] = Response()
        self.codec.send_headers(sid, h, end_stream and not body)
        if body:
            self.send_body(sid, body, end_stream)
        self._flush()
        return sid

    def send_body(self, sid: int, body: bytes, end_stream: bool = True) -> None:
        off = 0
        while off < len(body) or (not body and end_stream):
            win = self.codec.window(sid)
            if win <= 0:
                self._flush()
                self.pump(0.5)
                continue
            size = min(win, self.codec.max_frame, len(body) - off)
            last = off + size >= len(body)
            self.codec.send_data(sid, body[off:off + size], end_stream and last)
            off += size
            if not body:
                break
        self._flush()

    def reset(self, sid: int, code: int = h2c.CANCEL) -> None:
        self.codec.reset(sid, code)
        self._flush()

    def ack(self, sid: int) -> None:
        n = self.unacked.pop(sid, 0)
        self.codec.acknowledge(sid, n)
        self._flush()

    def pump(self, timeout: float = 5.0) -> bool:
        """Read once (up to `timeout`); False on EOF or timeout."""
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(65536)
        except socket.timeout:
            return False
        except OSError:
            data = b""
        if not data:
            self.closed = True
            return False
        for ev in self.codec.receive(data):
            self._on(ev)
        self._flush()
        return True

    def _on(self, ev) -> None:
        kind = ev[0]
        if kind == h2c.GOAWAY:
            self.goaway = (ev[1], ev[2])
            self.goaways.append((ev[1], ev[2], time.monotonic()))
            return
        if kind in (h2c.WINDOW, h2c.SETTINGS):
            return
        r = self.responses.get(ev[1])
        if r is None:
            return
        if kind == h2c.HEADERS:
            r.headers = ev[2]
            r.status = int(dict(ev[2])[":status"])
        elif kind == h2c.DATA:
            r.body += ev[2]
            if self.auto_ack:
                self.codec.acknowledge(ev[1], ev[3])
            else:
                self.unacked[ev[1]] = self.unacked.get(ev[1], 0) + ev[3]
        elif kind == h2c.TRAILERS:
            r.trailers = ev[2]
        elif kind == h2c.END:
            r.ended = True
            r.end_time = time.monotonic()
        elif kind == h2c.RESET:
            r.reset_code = ev[2]
            r.end_time = time.monotonic()

    def wait(self, sid: int, timeout: float = 10.0) -> Response:
        r = self.responses[sid]
        deadline = time.monotonic() + timeout
        while not r.ended and r.reset_code is None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("stream %d did not end" % sid)
            if not self.pump(left) and self.closed:
                raise ConnectionError("connection closed before stream %d ended" % sid)
        return r

    def get(self, path="/", headers=(), timeout: float = 10.0) -> Response:
        return self.wait(self.request("GET", path, headers), timeout)

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
